"""The ``degraded`` fault kind: f nodes in all (Byzantine ones and damaged
disks included) are down through the liveness phase, so liveness is demanded
of a bare quorum, as the fault model promises it.

Without it every crashed node restarts at the heal and a protocol that needs
more than a quorum to make progress (a quorum one too large, a primary that
waits for a replica it cannot reach, a view change that needs every replica)
passes every swarm. ``tests/test_raft_mutants.py`` shows such a bug caught
only with the kind on."""

from __future__ import annotations

import pytest

from replicaio.core.errors import UsageError
from replicaio.sim.kv_harness import KvWorkload, kv_options
from replicaio.sim.options import SimOptions
from replicaio.sim.simulator import Simulator

FAULTS = ("crash", "partition", "loss", "dup", "reorder")
DEGRADED = (*FAULTS, "degraded")


@pytest.mark.parametrize(("protocol", "nodes", "byzantine", "room"), [
    ("raft", 3, 0, 1), ("raft", 5, 0, 2), ("pbft", 4, 0, 1), ("pbft", 7, 1, 1),
    ("minbft", 5, 1, 1),
])
def test_kept_down_nodes_are_correct_within_the_bound_and_change_no_other_fault(
    protocol: str, nodes: int, byzantine: int, room: int,
) -> None:
    drawn: set[int] = set()
    for seed in range(1, 41):
        plain = kv_options(seed, nodes, FAULTS, KvWorkload(membership_every_us=0),
                           byzantine=byzantine, protocol=protocol)
        options = kv_options(seed, nodes, DEGRADED, KvWorkload(membership_every_us=0),
                             byzantine=byzantine, protocol=protocol)
        assert 1 <= len(options.kept_down) <= room
        assert not set(options.kept_down) & set(options.byzantine)
        drawn.add(len(options.kept_down))
        assert options.crashes == plain.crashes and options.partitions == plain.partitions
        assert options.loss == plain.loss and options.latency_mean_us == plain.latency_mean_us
        assert SimOptions.from_dict(options.as_dict()) == options
        assert "kept_down" not in plain.as_dict()  # headers (and hashes) of other runs unchanged
    assert drawn == set(range(1, room + 1))


def test_no_room_keeps_no_node_down() -> None:
    options = kv_options(3, 3, DEGRADED, KvWorkload(), byzantine=1, protocol="minbft")
    assert options.kept_down == ()


def test_a_node_kept_down_must_be_a_correct_one() -> None:
    options = kv_options(3, 4, DEGRADED, KvWorkload(), byzantine=1, protocol="pbft")
    data = options.as_dict() | {"kept_down": list(options.byzantine)}
    with pytest.raises(UsageError, match="kept down"):
        SimOptions.from_dict(data)


@pytest.mark.parametrize("protocol", ["raft", "pbft", "minbft"])
def test_the_nodes_kept_down_stay_down_after_the_heal_and_the_rest_make_progress(
    protocol: str,
) -> None:
    nodes = 4 if protocol == "pbft" else 3
    options = kv_options(7, nodes, DEGRADED, KvWorkload(ops=200), protocol=protocol)
    assert options.kept_down
    simulator = Simulator(protocol, options, f=1)
    result = simulator.run()
    assert result.violations == []
    assert result.stats["degraded_kept_down"] == len(options.kept_down)
    for node in simulator.nodes:
        assert node.up is (node.node_id not in options.kept_down)
    assert result.stats["linearizable"] is True
    again = Simulator(protocol, options, f=1).run()
    assert again.log_sha256 == result.log_sha256  # the same seed, the same run


@pytest.mark.parametrize(("nodes", "byzantine", "seed"), [(3, 0, 177), (5, 1, 199)])
def test_a_minbft_view_change_carries_the_batches_its_new_view_commits_decided(
    nodes: int, byzantine: int, seed: int,
) -> None:
    """Found by the first degraded swarms: a replica logged its NEW-VIEW-COMMIT
    without the batches the NEW-VIEW decided, so a VIEW-CHANGE showing it (and
    nothing else about those numbers) carried no batch for them; with the one
    replica that still had them kept down, every next primary found a batch
    missing and never sent its NEW-VIEW (`minbft_new_view_batch_missing`), and
    nothing executed after the heal. Both seeds failed liveness before."""
    options = kv_options(seed, nodes, DEGRADED, KvWorkload(), byzantine=byzantine,
                         protocol="minbft")
    assert options.kept_down
    result = Simulator("minbft", options, f=(nodes - 1) // 2, record=False).run()
    assert result.violations == []
    assert result.counters.get("minbft_views_started", 0) > 0


@pytest.mark.parametrize("protocol", ["txn:groups=2", "txn-kv:groups=2"])
def test_transactions_commit_and_release_every_lock_with_a_node_kept_down(protocol: str) -> None:
    """The transaction harness takes the kind: clients stop asking the node
    kept down, the locks it last reported are not demanded back, and every
    other replica of every group must still release everything and every
    client commit after the heal."""
    from replicaio.sim.txn_harness import TxnWorkload, txn_options

    options = txn_options(3, 3, DEGRADED, TxnWorkload(), protocol=protocol)
    assert options.kept_down
    simulator = Simulator(protocol, options, f=1, record=False)
    result = simulator.run()
    assert result.violations == []
    assert result.stats["outcomes"].get("committed", 0) > 0
    for node in simulator.nodes:
        assert node.up is (node.node_id not in options.kept_down)


def test_a_minbft_primary_waiting_for_its_new_view_certificate_asks_for_the_next_view() -> None:
    """Found by the degraded swarm once PREPAREs of a view above 0 wait for its
    NEW-VIEW certificate (docs/minbft.md, *View change*): node 0 kept down,
    the primary of view 1 had resumed node 2's stream past node 2's
    VIEW-CHANGE, so node 2's NEW-VIEW-COMMIT did not count there; the primary
    never numbered a batch, and its timer, which watched only numbered
    batches, never ended the view. Liveness failed on seed 200; since MinBFT's
    reads share barriers (2026-12-05) seed 229 was the one of 200..259 and 1..99
    whose primary waits for its certificate; since a late backup sends its
    VIEW-CHANGE before its NEW-VIEW-COMMIT (ADR 0035), 107, 136, 148 and 262
    were the ones of 1..300, and since MinBFT's timers back off as PBFT's
    (ADR 0046) 148 and 262 are."""
    options = kv_options(148, 3, DEGRADED, KvWorkload(), byzantine=0, protocol="minbft")
    assert options.kept_down
    result = Simulator("minbft", options, f=1, record=False).run()
    assert result.violations == []
    assert result.counters.get("minbft_primary_uncertified", 0) > 0
