"""``prompt`` (ADR 0074): once the cluster has settled after the heal, every
operation of the probe waves is answered on its first attempt within the
clients' attempt timeout (``KvHarness.settled``; ``TxnHarness.settled`` for
transactions). The check is only trusted because broken protocols fail it
(tests/test_raft_mutants.py: ``raft-drop-queued-reads`` and
``raft-commit-forgets-pending``, which the plain liveness check passes); here:
it is what catches them, it replays and shrinks like any property, and each
excusal is the paper's reason on a pinned seed that needs it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from replicaio.check.pbft import PbftChecker
from replicaio.protocols.pbft.messages import ViewChangeStarted, ViewStarted
from replicaio.sim.kv_harness import KvWorkload, kv_options
from replicaio.sim.options import SimOptions
from replicaio.sim.shrink import fails, shrink
from replicaio.sim.simulator import Simulator
from replicaio.sim.txn_harness import TxnWorkload, txn_options

ALL_FAULTS = ("crash", "partition", "loss", "dup", "reorder")
NEMESIS = KvWorkload(nemesis_every_us=2_000_000)  # the swarms' (kv_cli)


def run(protocol: str, options: SimOptions, f: int) -> tuple[set[str], dict[str, object]]:
    result = Simulator(protocol, options, f=f, record=False).run()
    return {violation["property"] for violation in result.violations}, result.stats


def test_the_probes_catch_what_the_liveness_check_passes() -> None:
    """``prompt_waves=0`` is the check before ADR 0074: every client completes
    one operation after the heal. The queued reads the variant drops are timed
    out by SMR and retried by the clients, so that passes; a probe wave finds
    the read its client had to retry."""
    options = kv_options(1, 3, ALL_FAULTS, KvWorkload())
    assert run("raft-drop-queued-reads", options, 1)[0] == {"prompt"}
    plain = replace(options, extra={"kv": KvWorkload(prompt_waves=0).as_extra()})
    assert run("raft-drop-queued-reads", plain, 1)[0] == set()
    violations, stats = run("raft", options, 1)
    assert violations == set()
    assert stats["prompt_probes"] == 5 * KvWorkload().clients
    assert 0 < int(str(stats["prompt_latency_max_us"])) <= KvWorkload().attempt_timeout_us


def test_a_prompt_violation_replays_and_shrinks() -> None:
    """The options alone decide the run (the probes are in the workload, in the
    options' ``extra``), so the shrinker keeps a change while ``prompt`` still
    fails; a few steps suffice to show it."""
    options = kv_options(1, 3, ALL_FAULTS, KvWorkload())
    assert fails("raft-drop-queued-reads", 1, options, "prompt")
    result = shrink("raft-drop-queued-reads", options, "prompt", f=1, runs_max=6)
    assert result.steps >= 1
    assert fails("raft-drop-queued-reads", 1, result.options, "prompt")
    assert not fails("raft", 1, result.options, "prompt")


def test_the_checker_knows_when_the_correct_replicas_share_an_active_view() -> None:
    checker = PbftChecker(byzantine=(3,), f=1)
    up = [0, 1, 2]
    assert not checker.stable(up)  # nothing heard yet
    for node in (0, 1, 2, 3):
        checker.on_output(node, ViewStarted(node, 1, 1), 0)
    assert checker.stable(up) and checker.primary(up) == 1
    checker.on_output(2, ViewChangeStarted(2, 2), 0)  # a lone suspicion
    assert not checker.stable(up) and checker.primary(up) == -1
    assert checker.stable([0, 1])  # (2 kept down: not asked)
    checker.on_output(3, ViewChangeStarted(3, 5), 0)  # a Byzantine replica's say: ignored
    for node in (0, 1, 2):
        checker.on_output(node, ViewStarted(node, 2, 2), 0)
    assert checker.stable(up) and checker.primary(up) == 2


def test_a_wave_begun_during_a_lone_view_change_is_not_held() -> None:
    """PBFT, n = 4, node 3 kept down (``degraded``): node 1 restarted behind,
    suspected the primary alone and left view 0; nodes 0 and 2 stay in it, and
    without node 1 no quorum of view 0 remains. They join only when a request
    times out at them (OSDI 1999, 4.4): the first wave is the traffic that does
    it, not held to ``prompt``; the waves after the view change are, and pass."""
    faults = (*ALL_FAULTS, "sync", "degraded")
    options = kv_options(260, 4, faults, NEMESIS, protocol="pbft")
    violations, stats = run("pbft", options, 1)
    assert violations == set()
    assert int(str(stats["prompt_waves_unsettled"])) >= 1
    assert stats["prompt_probes"] == 5 * KvWorkload().clients  # every held wave ran


def test_a_byzantine_primary_is_excused_the_first_attempt() -> None:
    """A silent Byzantine primary drops the first attempts; the client's
    retransmission to every replica, and the view change it starts, are the
    paper's remedy (4.1, 4.4): excused, and counted."""
    options = kv_options(9, 4, (*ALL_FAULTS, "slow"), NEMESIS, byzantine=1, protocol="pbft")
    assert "pbft_silent_primary" in options.behaviours[0]
    violations, stats = run("pbft", options, 1)
    assert violations == set()
    assert int(str(stats["prompt_probes_excused"])) >= 1


def test_a_backup_does_not_time_requests_it_refused() -> None:
    """PBFT, n = 4, node 0 Byzantine and silent (ADR 0074, finding 3). Node 1
    forwarded five requests to node 2 while it believed node 2 the primary;
    node 2, a backup of view 3 by then, batched them with its own clients',
    was refused the batch (not the primary) and refused them to node 1 (a
    forwarded request is never forwarded again), whose clients had given up.
    Before the fix it timed them all the same (``Pbft.submit`` watched every
    request of its batch): at 7.3 s, in a quiet cluster, it suspected its
    correct primary, and with node 0 silent nodes 1 and 3 were no quorum of
    view 3: no service until view 5 at 10.5 s, four probes of the first wave
    timed out. Now it times only what SMR relayed (``RelayWatch``), leaves no
    view in the quiet, and every probe is answered promptly."""
    options = kv_options(246, 4, (*ALL_FAULTS, "slow"), NEMESIS, byzantine=1, protocol="pbft")
    assert "pbft_silent_primary" in options.behaviours[0]
    result = Simulator("pbft", options, f=1, record=False).run()
    assert result.violations == []
    assert result.stats["prompt_probes"] == 5 * KvWorkload().clients
    assert result.counters.get("smr_forward_refused", 0) >= 5  # (the refused requests)


@pytest.mark.parametrize(("protocol", "nodes", "seed"), [("pbft", 4, 25), ("minbft", 3, 9)])
def test_clients_through_one_front_are_held_and_the_front_answers_their_reads(
    protocol: str, nodes: int, seed: int,
) -> None:
    """``fronts=1`` with the primary kept down (ADR 0033's shape; the pinned
    seeds of tests/test_primary_down_one_front.py). A read through a front
    reaches the front's replica alone, so it is that replica's answer the
    client takes (``KvHarness.front_read``: live, the Redis client on one
    node's port). Before 2026-12-08 the client waited for f+1 answers only one
    replica would give, no read through a front completed, and every probe
    that read gave up after 3 s: 9 of 25 on PBFT's seed 25, 5 on MinBFT's
    seed 9; ``prompt`` was not held there (ADR 0074). Now it is, and passes."""
    workload = KvWorkload(membership_every_us=400_000, nemesis_every_us=2_000_000)
    options = kv_options(seed, nodes, (*ALL_FAULTS, "degraded"), workload, protocol=protocol)
    assert options.kept_down
    violations, stats = run(f"{protocol}:fronts=1", options, 1)
    assert violations == set()
    assert stats["prompt_probes"] == 5 * workload.clients
    assert 0 < int(str(stats["prompt_latency_max_us"])) <= workload.attempt_timeout_us


def test_a_read_split_by_a_concurrent_write_is_excused() -> None:
    """MinBFT, n = 3, the Byzantine replica silent: a GET needs both correct
    replicas' answers to match, each answers at its own read barrier, and a
    write of the same wave executed between them: the client reads again when
    its timer expires (PBFT 5.1.3). Excused, and counted (ADR 0074's finding)."""
    options = kv_options(906, 3, (*ALL_FAULTS, "slow"), NEMESIS, byzantine=1, protocol="minbft")
    violations, stats = run("minbft", options, 1)
    assert violations == set()
    assert int(str(stats["prompt_probes_excused"])) >= 1


def test_transactions_are_probed_too() -> None:
    options = txn_options(1, 3, ALL_FAULTS, TxnWorkload())
    violations, stats = run("txn:groups=3", options, 1)
    assert violations == set()
    assert stats["prompt_probes"] == TxnWorkload().prompt_waves * TxnWorkload().clients
