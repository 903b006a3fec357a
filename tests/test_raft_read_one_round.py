"""One read round in flight at a time (ADR 0072, docs/raft.md "Reads").

Reads asked while a round is in flight wait in ``Reads.queued``; once a quorum
has answered the round in flight, the next round starts at once for all of
them, their read index taken then (at least the commit index when each was
asked). A round whose messages or answers are lost holds them up for at most a
heartbeat: the heartbeat starts their round. Rounds are numbered in order, and
an answer to a round confirms that round and every older one, never a newer
one.
"""

from __future__ import annotations

import dataclasses

from test_raft_cluster import FAST_PARAMS, Cluster
from test_raft_reads import NO_CHECK_QUORUM, confirmed

from replicaio.protocols.raft import AppendEntriesResponse, Raft, ReadRoundAck, Role
from replicaio.smr.api import NotLeader
from replicaio.testing.variants.raft import RaftDropQueuedOnConfirm, RaftJoinRoundInFlight


def answers_lost(source: int, destination: int, message: object) -> bool:
    return destination == 0 and type(message) in (AppendEntriesResponse, ReadRoundAck)


def settled_leader(params: object = FAST_PARAMS) -> Cluster:
    cluster = Cluster(3, params)  # type: ignore[arg-type]
    cluster.start()
    cluster.elect(0)
    assert cluster.run(until=lambda: cluster.committed_in_term(0))
    cluster.run(1_000)
    return cluster


def ack(cluster: Cluster, follower: int, round_: int) -> ReadRoundAck:
    return ReadRoundAck(cluster.view(0).term, round_, cluster.view(follower).identity)


def test_a_read_asked_while_a_round_is_in_flight_goes_in_the_next_round_at_a_fresh_index(
) -> None:
    cluster = settled_leader()
    leader = cluster.raft(0)
    reads = leader.reads
    cluster.drop = answers_lost
    cluster.submit(0, b"w1")
    cluster.run(50)
    written = leader.log.last_index
    before = leader.commit_index
    assert before < written
    cluster.request(0, "read")  # A: round r
    cluster.run(50)  # its messages are out
    r = reads.round
    cluster.request(0, "read")  # B: waits, round r in flight
    assert reads.round == r and len(reads.queued) == 1
    assert cluster.node_counters(0)["raft_reads_queued"] == 1
    # w1 commits by an answer to an older round: round r is not confirmed by it.
    cluster.inject(1, 0, AppendEntriesResponse(
        leader.hard.term, True, written, written - 1, 0, 0, r - 1, cluster.view(1).identity))
    assert leader.commit_index == written
    assert confirmed(cluster, 0) == [-1, -1]
    # Round r answered by a majority: A is confirmed, B's round starts now, at
    # the commit index of now.
    cluster.inject(1, 0, ack(cluster, 1, r))
    assert confirmed(cluster, 0) == [before, -1]
    assert reads.round == r + 1 and reads.queued == []
    assert [(read.round, read.index) for read in reads.confirming] == [(r + 1, written)]
    # Another answer to round r confirms nothing newer.
    cluster.inject(2, 0, ack(cluster, 2, r))
    assert confirmed(cluster, 0) == [before, -1]
    cluster.inject(2, 0, ack(cluster, 2, r + 1))
    assert confirmed(cluster, 0) == [before, written]


def test_reads_asked_together_while_a_round_is_in_flight_share_the_next_round() -> None:
    cluster = settled_leader()
    reads = cluster.raft(0).reads
    cluster.request(0, "read")
    cluster.run(50)
    r = reads.round
    cluster.request(0, ("reads", 4))  # round r in flight: all four wait
    assert reads.round == r and len(reads.queued) == 4
    assert cluster.run(until=lambda: -1 not in confirmed(cluster, 0))
    assert reads.round == r + 1  # one more round for the four, not four
    assert cluster.node_counters(0)["raft_read_rounds"] == r + 1


def test_a_round_that_is_never_answered_holds_the_queued_reads_up_for_a_heartbeat() -> None:
    cluster = settled_leader()
    reads = cluster.raft(0).reads
    cluster.drop = answers_lost
    cluster.request(0, "read")
    cluster.run(50)
    r = reads.round
    cluster.request(0, "read")
    assert reads.queued and reads.round == r
    cluster.run(FAST_PARAMS.heartbeat_us)  # the next heartbeat starts their round
    assert reads.round == r + 1 and reads.queued == []
    assert [read.round for read in reads.confirming] == [r, r + 1]
    cluster.drop = None
    assert cluster.run(until=lambda: -1 not in confirmed(cluster, 0))


def test_queued_reads_count_toward_the_bound_and_are_dropped_on_step_down() -> None:
    params = dataclasses.replace(FAST_PARAMS, reads_pending_max=3)
    cluster = settled_leader(params)
    cluster.drop = answers_lost
    cluster.request(0, "read")
    cluster.run(50)
    cluster.request(0, ("reads", 3))
    assert len(cluster.raft(0).reads.queued) == 2
    assert isinstance(cluster.protocol(0).reads[-1], NotLeader)
    assert cluster.node_counters(0)["bound_raft_reads_pending_max"] == 1
    cluster.isolate(0)  # check-quorum deposes it
    assert cluster.run(until=lambda: 0 not in cluster.leaders())
    assert cluster.node_counters(0)["raft_reads_dropped_stepped_down"] == 3
    assert cluster.raft(0).reads.queued == []


# -- broken on purpose ---------------------------------------------------------------------


def stale_read_schedule(raft_type: type[Raft]) -> tuple[Cluster, int]:
    """Node 0 leads term T and sends round r; both followers answer it, the
    answers held up in the network. Node 0 is cut off, node 1 leads T + 1 and
    commits a write. Only then is a read asked at node 0, and the held answers
    to round r arrive. Returns the cluster and the index of the write."""
    cluster = Cluster(3, NO_CHECK_QUORUM, raft_type=raft_type)
    cluster.start()
    cluster.elect(0)
    assert cluster.run(until=lambda: cluster.committed_in_term(0))
    cluster.run(1_000)
    old = cluster.view(0).term
    cluster.drop = answers_lost
    cluster.request(0, "read")  # round r
    cluster.run(5_000)  # sent, answered, answers held
    r = cluster.raft(0).reads.round
    answers = [ReadRoundAck(old, r, cluster.view(node).identity) for node in (1, 2)]
    cluster.drop = None
    cluster.isolate(0)
    cluster.preferred = 1
    assert cluster.run(until=lambda: 1 in cluster.leaders())
    cluster.submit(1, b"w")
    assert cluster.run(until=lambda: cluster.all_applied(b"w", [1]))
    written = cluster.view(1).commit_index
    assert cluster.view(0).role is Role.LEADER and cluster.view(0).term == old
    cluster.request(0, "read")  # asked after the write committed
    for node, answer in zip((1, 2), answers, strict=True):
        cluster.inject(node, 0, answer)
    return cluster, written


def test_a_read_that_joins_the_round_in_flight_is_stale_and_caught() -> None:
    cluster, written = stale_read_schedule(RaftJoinRoundInFlight)
    first, second = confirmed(cluster, 0)
    assert first != -1 and second != -1 and second < written  # the write is not in it
    assert [v.property for v in cluster.checker.violations] == ["linearizable_read"]


def test_the_correct_protocol_holds_that_read_for_a_round_that_cannot_be_answered() -> None:
    cluster, _ = stale_read_schedule(Raft)
    first, second = confirmed(cluster, 0)
    assert first != -1 and second == -1  # queued, then in round r + 1: no quorum
    cluster.assert_safe()


def queued_read_schedule(raft_type: type[Raft]) -> Cluster:
    """A read waits for round r in flight; round r is answered; the network
    then delivers everything for a few heartbeats."""
    cluster = Cluster(3, raft_type=raft_type)
    cluster.start()
    cluster.elect(0)
    assert cluster.run(until=lambda: cluster.committed_in_term(0))
    cluster.drop = answers_lost
    cluster.request(0, "read")
    cluster.run(50)
    r = cluster.raft(0).reads.round
    cluster.request(0, "read")
    cluster.inject(1, 0, ack(cluster, 1, r))
    cluster.drop = None
    cluster.run(3 * FAST_PARAMS.heartbeat_us)
    return cluster


def test_queued_reads_dropped_when_the_round_is_confirmed_never_complete() -> None:
    cluster = queued_read_schedule(RaftDropQueuedOnConfirm)
    assert confirmed(cluster, 0)[1] == -1
    assert cluster.view(0).role is Role.LEADER
    assert cluster.node_counters(0)["variant_queued_reads_dropped"] == 1
    correct = queued_read_schedule(Raft)
    assert -1 not in confirmed(correct, 0)
