"""Reads (thesis 6.4, read-index), leadership transfer (thesis 3.10), and
pre-vote, check-quorum and leader stickiness (thesis 9.6, 6.2, 4.2.3)."""

from __future__ import annotations

import dataclasses

from test_raft_cluster import FAST_PARAMS, Cluster

from replicaio.core.lines import Line
from replicaio.protocols.raft import (
    AppendEntries,
    AppendEntriesResponse,
    ReadConfirmed,
    RequestVote,
    Role,
    TimeoutNow,
)
from replicaio.smr.api import NotLeader


def confirmed(cluster: Cluster, node: int) -> list[int]:
    """The indexes of ``node``'s confirmed reads, in request order (-1: pending)."""
    found = []
    for read in cluster.protocol(node).reads:
        assert isinstance(read, Line)
        found.append(read.value() if read.ready else -1)
    return found


# -- read-index (thesis 6.4) -------------------------------------------------------------------


NO_CHECK_QUORUM = dataclasses.replace(FAST_PARAMS, check_quorum=False)


def test_6_4_a_a_read_waits_until_the_leader_committed_an_entry_of_its_term() -> None:
    cluster = Cluster(3, NO_CHECK_QUORUM)
    cluster.start()
    cluster.elect(0)
    cluster.crash(0)
    cluster.drop = lambda source, destination, message: (
        source == 1 and type(message) is AppendEntries and bool(message.entries))
    cluster.preferred = 1
    assert cluster.run(until=lambda: 1 in cluster.leaders())
    cluster.request(1, "read")
    cluster.run(200_000)
    assert confirmed(cluster, 1) == [-1]  # its no-op is not committed yet
    cluster.drop = None
    assert cluster.run(until=lambda: confirmed(cluster, 1) != [-1])
    (index,) = confirmed(cluster, 1)
    assert index >= cluster.raft(1).term_start_index
    cluster.assert_safe()


def test_6_4_b_a_read_is_confirmed_by_a_heartbeat_round_answered_by_a_majority() -> None:
    cluster = Cluster(3, NO_CHECK_QUORUM)
    cluster.start()
    cluster.elect(0)
    cluster.drop = lambda source, destination, message: type(message) is AppendEntriesResponse
    cluster.request(0, "read")
    cluster.run(200_000)
    assert confirmed(cluster, 0) == [-1]
    cluster.drop = lambda source, destination, message: (
        type(message) is AppendEntriesResponse and source == 2)  # 0 and 1 are a majority
    assert cluster.run(until=lambda: confirmed(cluster, 0) != [-1])
    assert confirmed(cluster, 0) == [cluster.view(0).commit_index]


def test_6_4_c_the_read_index_covers_every_entry_committed_before_the_read() -> None:
    cluster = Cluster(3)
    cluster.start()
    cluster.elect(0)
    for index in range(5):
        cluster.submit(0, f"w{index}".encode())
    assert cluster.run(until=lambda: cluster.all_applied(b"w4", [0]))
    commit = cluster.view(0).commit_index
    cluster.request(0, "read")
    assert cluster.run(until=lambda: confirmed(cluster, 0) != [-1])
    assert confirmed(cluster, 0)[0] >= commit
    cluster.assert_safe()


def test_6_4_d_reads_asked_together_share_one_heartbeat_round() -> None:
    cluster = Cluster(3)
    cluster.start()
    cluster.elect(0)
    rounds_before = cluster.raft(0).reads.round
    cluster.request(0, ("reads", 5))
    assert cluster.raft(0).reads.round == rounds_before + 1
    assert cluster.run(until=lambda: -1 not in confirmed(cluster, 0))
    assert len(set(confirmed(cluster, 0))) == 1


def test_6_4_e_pending_reads_are_bounded() -> None:
    cluster = Cluster(3, dataclasses.replace(FAST_PARAMS, reads_pending_max=2))
    cluster.start()
    cluster.elect(0)
    cluster.drop = lambda source, destination, message: type(message) is AppendEntriesResponse
    cluster.request(0, ("reads", 3))
    reads = cluster.protocol(0).reads
    assert [isinstance(read, Line) for read in reads] == [True, True, False]
    assert isinstance(reads[2], NotLeader)
    assert cluster.node_counters(0)["bound_raft_reads_pending_max"] == 1


def test_6_4_f_a_leader_that_steps_down_drops_its_pending_reads() -> None:
    cluster = Cluster(3)
    cluster.start()
    cluster.elect(0)
    cluster.isolate(0)
    cluster.request(0, ("reads", 2))
    assert cluster.run(until=lambda: cluster.view(0).role is not Role.LEADER)
    assert confirmed(cluster, 0) == [-1, -1]
    assert cluster.node_counters(0)["raft_reads_dropped_stepped_down"] == 2


def test_6_4_g_a_single_voter_confirms_a_read_at_once() -> None:
    cluster = Cluster(1)
    cluster.start()
    cluster.elect(0)
    cluster.request(0, "read")
    assert confirmed(cluster, 0) == [cluster.view(0).commit_index]
    assert any(isinstance(out, ReadConfirmed) for _, _, out in cluster.outputs)


# -- leadership transfer (thesis 3.10) ----------------------------------------------------------


def test_3_10_a_transfer_hands_leadership_over_before_any_election_timeout() -> None:
    cluster = Cluster(5)
    cluster.start()
    term = cluster.elect(0)
    at = cluster.now
    assert cluster.admin(0, "transfer", 3) is None
    assert cluster.run(until=lambda: 3 in cluster.leaders())
    assert cluster.now - at < FAST_PARAMS.election_timeout_min_us  # no timeout waited for
    assert cluster.view(3).term == term + 1
    assert cluster.run(until=lambda: cluster.view(0).role is Role.FOLLOWER)
    assert cluster.node_counters(3)["raft_timeout_now_received"] == 1
    cluster.assert_safe()


def test_3_10_b_the_target_is_brought_up_to_date_before_timeout_now() -> None:
    cluster = Cluster(3)
    cluster.start()
    cluster.elect(0)
    cluster.isolate(2)
    for index in range(20):
        cluster.submit(0, f"t{index}".encode())
    assert cluster.run(until=lambda: cluster.all_applied(b"t19", [0, 1]))
    assert cluster.admin(0, "transfer", 2) is None
    cluster.run(50_000)
    assert not cluster.messages(TimeoutNow, 0)  # 2 lags: no TimeoutNow yet
    cluster.heal()
    assert cluster.run(until=lambda: 2 in cluster.leaders())
    (sent,) = [at for at, (s, _, m) in enumerate(cluster.sent) if type(m) is TimeoutNow]
    assert cluster.view(2).last_index >= 22
    assert sent > 0
    cluster.assert_safe()


def test_3_10_c_proposals_are_refused_during_a_transfer() -> None:
    cluster = Cluster(3)
    cluster.start()
    cluster.elect(0)
    cluster.isolate(2)  # the transfer cannot complete
    assert cluster.admin(0, "transfer", 2) is None
    before = cluster.node_counters(0).get("request_rejected_not_leader", 0)
    cluster.submit(0, b"during")
    assert cluster.node_counters(0)["request_rejected_not_leader"] == before + 1
    assert cluster.node_counters(0)["raft_proposals_refused_transferring"] == 1
    assert cluster.admin(0, "transfer", 1) == "transfer_in_progress"


def test_3_10_d_a_transfer_that_cannot_complete_is_aborted() -> None:
    cluster = Cluster(3)
    cluster.start()
    cluster.elect(0)
    cluster.crash(2)
    assert cluster.admin(0, "transfer", 2) is None
    cluster.run(FAST_PARAMS.election_timeout_max_us + 20_000)
    assert cluster.node_counters(0)["raft_transfers_aborted"] == 1
    assert cluster.leaders() == [0]
    cluster.submit(0, b"after")
    assert cluster.run(until=lambda: cluster.all_applied(b"after", [0, 1]))


# -- pre-vote, check-quorum, stickiness (thesis 9.6, 6.2, 4.2.3) ---------------------------------


def test_9_6_a_a_partitioned_node_does_not_inflate_terms_with_pre_vote() -> None:
    cluster = Cluster(5)
    cluster.start()
    term = cluster.elect(0)
    cluster.isolate(4)
    cluster.run(1_000_000)
    assert cluster.view(4).term == term
    assert cluster.node_counters(4)["raft_pre_votes_started"] >= 5
    cluster.heal()
    cluster.run(500_000)
    assert cluster.leaders() == [0]
    assert cluster.view(0).term == term
    cluster.assert_safe()


def test_9_6_b_without_pre_vote_a_partitioned_node_disrupts_the_leader() -> None:
    cluster = Cluster(5, dataclasses.replace(FAST_PARAMS, pre_vote=False, check_quorum=False))
    cluster.start()
    term = cluster.elect(0)
    cluster.isolate(4)
    cluster.run(1_000_000)
    assert cluster.view(4).term > term + 3
    cluster.heal()
    assert cluster.run(until=lambda: cluster.view(0).term > term)  # deposed by a term
    cluster.assert_safe()


def test_6_2_a_leader_without_a_quorum_steps_down_after_an_election_timeout() -> None:
    cluster = Cluster(3)
    cluster.start()
    cluster.elect(0)
    cluster.crash(1)
    cluster.crash(2)
    at = cluster.now
    assert cluster.run(until=lambda: cluster.view(0).role is not Role.LEADER)
    assert cluster.now - at <= 2 * FAST_PARAMS.election_timeout_min_us + FAST_PARAMS.heartbeat_us


def test_4_2_3_a_voter_that_hears_a_leader_ignores_vote_requests() -> None:
    cluster = Cluster(3)
    cluster.start()
    term = cluster.elect(0)
    cluster.run(30_000)
    view = cluster.view(1)
    replies = cluster.inject(2, 1, RequestVote(term + 1, 2, view.last_index, view.last_term,
                                               False, False))
    assert replies == []
    assert cluster.view(1).term == term
    assert cluster.node_counters(1)["raft_ignored_vote_in_lease"] == 1
    # A transfer's campaign is heard even so.
    replies = cluster.inject(2, 1, RequestVote(term + 1, 2, view.last_index, view.last_term,
                                               False, True))
    assert replies[0].granted
