"""Proof that the Raft checkers bite: each deliberately broken variant
(``RaftParams(mutant=...)``) is caught, by a scripted scenario showing the
consequence and by a seed sweep of the simulator (Raft + SMR + KV clients)
with a reproducing command; the correct protocol passes the same runs.

* ``commit_previous_term`` — Figure 8's bug. Its consequence (a committed
  entry missing from a later leader: leader completeness) needs the exact
  Figure 8 schedule, scripted in ``test_raft_traps.py``; sweeps catch the
  broken rule itself (``commit_rule``) on every run that commits an earlier
  term's entry by counting.
* ``forget_vote`` — a restarted node votes again in a term it voted in: two
  leaders of one term (``election_safety``), scripted below; sweeps catch the
  lost vote at the restart (``durable_state``).
* ``follower_reads`` — a follower serves reads at its own commit index: a
  stale read (``linearizable_read``), scripted below and in sweeps.

Reproduce a sweep failure with the command in ``REPRODUCE``.
"""

from __future__ import annotations

import dataclasses

import pytest
from test_raft_cluster import FAST_PARAMS, Cluster

from replicaio.core.lines import Line
from replicaio.protocols.raft import MUTANTS, RequestVote, Voted
from replicaio.sim.kv_harness import KvWorkload, kv_options
from replicaio.sim.simulator import Simulator
from replicaio.smr.api import NotLeader

ALL_FAULTS = ("crash", "partition", "loss", "dup", "reorder")

# mutant -> (service name, the property a sweep catches)
CAUGHT = {
    "commit_previous_term": ("raft-commit-previous-term", "commit_rule"),
    "forget_vote": ("raft-forget-vote", "durable_state"),
    "follower_reads": ("raft-follower-reads", "linearizable_read"),
}
SWEEP_SEEDS = range(1, 11)


def reproduce(service: str, seed: int, nodes: int = 3) -> str:
    """The command that replays run ``seed`` of ``service``."""
    return f"replicaio sim {service} --nodes {nodes} --faults {','.join(ALL_FAULTS)} --seed {seed}"


def simulate(service: str, seed: int, nodes: int = 3) -> set[str]:
    options = kv_options(seed, nodes, ALL_FAULTS, KvWorkload())
    result = Simulator(service, options, f=(nodes - 1) // 2, record=False).run()
    return {violation["property"] for violation in result.violations}


def test_every_mutant_is_covered() -> None:
    assert set(CAUGHT) == set(MUTANTS) - {""}


# -- sweeps of the simulator ------------------------------------------------------------------


@pytest.mark.parametrize("mutant", sorted(CAUGHT))
def test_a_seed_sweep_catches_the_mutant_and_the_correct_protocol_passes_its_seed(
    mutant: str,
) -> None:
    service, violated = CAUGHT[mutant]
    caught = [seed for seed in SWEEP_SEEDS if violated in simulate(service, seed)]
    assert len(caught) >= 3, f"{mutant}: caught only on seeds {caught}"
    first = caught[0]
    assert simulate("raft", first) == set(), reproduce("raft", first)
    print(f"{mutant}: caught by {violated}; reproduce: {reproduce(service, first)}")


# -- scripted consequences -----------------------------------------------------------------------


def double_vote_scenario(mutant: str) -> Cluster:
    """0 wins term 1 with 2's vote; 2 crashes and restarts; 1, cut off until
    then, campaigns in the same term 1 and asks 2."""
    params = dataclasses.replace(FAST_PARAMS, pre_vote=False, check_quorum=False, mutant=mutant)
    cluster = Cluster(3, params)
    cluster.partition((0, 2), (1,))
    cluster.start()
    assert cluster.run(until=lambda: 0 in cluster.leaders())
    assert cluster.view(0).term == 1
    cluster.crash(2)
    cluster.restart(2)
    cluster.partition((0,), (1, 2))
    assert cluster.run(until=lambda: cluster.view(1).term >= 1 and bool(
        cluster.messages(RequestVote, 1)))
    cluster.run(100_000)
    return cluster


def test_forget_vote_mutant_elects_two_leaders_in_one_term() -> None:
    cluster = double_vote_scenario("forget_vote")
    properties = {violation.property for violation in cluster.checker.violations}
    assert {"election_safety", "one_vote_per_term", "durable_state"} <= properties


def test_the_correct_protocol_refuses_the_second_vote() -> None:
    cluster = double_vote_scenario("")
    cluster.assert_safe()
    votes_of_2 = [(out.term, out.candidate) for _, node, out in cluster.outputs
                  if isinstance(out, Voted) and node == 2 and out.term == 1]
    assert set(votes_of_2) == {(1, 0)}
    assert cluster.checker.leaders[1] == 0


def stale_follower_read(mutant: str) -> Cluster:
    params = dataclasses.replace(FAST_PARAMS, mutant=mutant)
    cluster = Cluster(3, params)
    cluster.start()
    cluster.elect(0)
    cluster.isolate(2)
    cluster.submit(0, b"x")
    assert cluster.run(until=lambda: cluster.all_applied(b"x", [0, 1]))
    cluster.request(2, "read")
    return cluster


def test_follower_reads_mutant_serves_a_stale_read() -> None:
    cluster = stale_follower_read("follower_reads")
    (read,) = cluster.protocol(2).reads
    assert isinstance(read, Line) and read.ready
    properties = {violation.property for violation in cluster.checker.violations}
    assert properties == {"linearizable_read"}


def test_the_correct_protocol_refuses_a_read_on_a_follower() -> None:
    cluster = stale_follower_read("")
    (read,) = cluster.protocol(2).reads
    assert isinstance(read, NotLeader)
    cluster.assert_safe()
