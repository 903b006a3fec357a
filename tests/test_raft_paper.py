"""One test per claim of the Raft paper, sections 5.1-5.6 and Figure 2
(Ongaro & Ousterhout 2014), on real node cores (``test_raft_cluster``).

Names follow the paper: ``test_5_2_a_...`` is the first claim tested from
section 5.2. Figure 8 and the other classic traps are in
``test_raft_traps.py``; membership (section 6) in ``test_raft_membership.py``;
snapshots (section 7) in ``test_raft_snapshot.py``; reads and leadership
transfer in ``test_raft_reads.py``.
"""

from __future__ import annotations

import dataclasses

import pytest
from test_raft_cluster import FAST_PARAMS, Cluster

from replicaio.core.config import ClusterConfig, Resilience
from replicaio.core.effects import Start
from replicaio.core.errors import ConfigError
from replicaio.core.node import Node
from replicaio.protocols.raft import (
    AppendEntries,
    AppendEntriesResponse,
    CommitNotice,
    Entry,
    LeaderCommitted,
    RaftNodeFactory,
    RaftParams,
    RequestVote,
    Role,
    TermChanged,
)

NO_LEASE = dataclasses.replace(FAST_PARAMS, check_quorum=False)
NO_PRE_VOTE = dataclasses.replace(FAST_PARAMS, pre_vote=False, check_quorum=False)


def settle(cluster: Cluster) -> None:
    """Run until every up node applied everything the leader has."""
    leader = cluster.leader()
    assert leader is not None
    last = cluster.view(leader).last_index
    assert cluster.run(until=lambda: all(
        cluster.view(node).applied_index >= last for node in cluster.up()
    ))


def uncommitted_tail(cluster: Cluster, follower: int, leader: int, batches: list[bytes]) -> int:
    """Give ``follower`` entries of the leader's term that nobody commits;
    returns the index of the last one."""
    view = cluster.view(follower)
    entries = tuple(Entry(view.term, batch) for batch in batches)
    replies = cluster.inject(leader, follower, AppendEntries(
        view.term, leader, view.last_index, view.last_term, entries, view.commit_index, 0,
    ))
    assert replies[-1].success
    return view.last_index + len(batches)


# -- 5.1: terms ---------------------------------------------------------------------------


def test_5_1_a_a_newer_term_in_any_message_makes_a_node_a_follower_of_that_term() -> None:
    cluster = Cluster(3)
    cluster.start()
    cluster.elect(0)
    cluster.inject(1, 0, AppendEntriesResponse(7, False, 0, 0, 0, 0, 0, 0))
    view = cluster.view(0)
    assert view.role is Role.FOLLOWER
    assert view.term == 7
    assert view.voted_for == -1


def test_5_1_b_a_request_with_a_stale_term_is_rejected_with_the_current_term() -> None:
    cluster = Cluster(3, NO_LEASE)
    cluster.start()
    term = cluster.elect(0)
    cluster.inject(0, 1, AppendEntriesResponse(term + 1, False, 0, 0, 0, 0, 0, 0))
    replies = cluster.inject(2, 1, AppendEntries(term, 2, 0, 0, (), 0, 0))
    identity = cluster.view(1).identity
    assert replies == [AppendEntriesResponse(term + 1, False, 0, 0, 0, 0, 0, identity)]
    replies = cluster.inject(2, 1, RequestVote(term, 2, 99, term, False, False))
    assert [(reply.term, reply.granted) for reply in replies] == [(term + 1, False)]


def test_5_1_c_a_stale_leader_steps_down_when_it_learns_the_newer_term() -> None:
    cluster = Cluster(3, NO_LEASE)
    cluster.start()
    old = cluster.elect(0)
    cluster.isolate(0)
    new = cluster.elect(1)
    assert new > old
    assert cluster.view(0).role is Role.LEADER  # it has not heard yet (no check-quorum here)
    cluster.heal()
    assert cluster.run(until=lambda: cluster.view(0).role is Role.FOLLOWER)
    assert cluster.view(0).term == new
    assert cluster.leaders() == [1]
    cluster.assert_safe()


def test_5_1_d_term_and_vote_are_durable_before_the_vote_leaves() -> None:
    cluster = Cluster(3, NO_LEASE)
    cluster.start()
    node = cluster.nodes[2]
    assert node is not None
    replies = cluster.inject(1, 2, RequestVote(4, 1, 0, 0, False, False))
    assert replies[0].granted
    assert cluster.disks[2].unsynced_count == 0  # synced before the reply was released
    cluster.crash(2)
    cluster.restart(2)
    assert (cluster.view(2).term, cluster.view(2).voted_for) == (4, 1)


# -- 5.2: leader election ---------------------------------------------------------------


def test_5_2_a_follower_grants_at_most_one_vote_per_term() -> None:
    cluster = Cluster(3, NO_LEASE)
    cluster.start()
    first = cluster.inject(1, 2, RequestVote(5, 1, 0, 0, False, False))
    second = cluster.inject(0, 2, RequestVote(5, 0, 0, 0, False, False))
    again = cluster.inject(1, 2, RequestVote(5, 1, 0, 0, False, False))
    assert [reply.granted for reply in first + second + again] == [True, False, True]
    cluster.crash(2)
    cluster.restart(2)  # the vote survives the crash
    after = cluster.inject(0, 2, RequestVote(5, 0, 0, 0, False, False))
    assert [reply.granted for reply in after] == [False]


def test_5_2_b_a_candidate_with_a_majority_becomes_leader_and_sends_heartbeats() -> None:
    cluster = Cluster(5)
    cluster.start()
    term = cluster.elect(0)
    assert cluster.leaders() == [0]
    cluster.run(100_000)
    for peer in range(1, 5):
        assert any(destination == peer and message.term == term
                   for _, destination, message in cluster.messages(AppendEntries, 0))
        assert cluster.view(peer).leader == 0
    # A heartbeat whose answer could change nothing goes as an unanswered
    # CommitNotice (docs/raft.md, "Heartbeats that need no answer").
    heartbeats = [m for s, d, m in cluster.messages(AppendEntries, 0) if d == 1 and not m.entries]
    heartbeats += [m for s, d, m in cluster.messages(CommitNotice, 0) if d == 1]
    assert len(heartbeats) >= 5  # one per heartbeat interval


def test_5_2_c_a_follower_that_hears_nothing_campaigns_pre_vote_then_vote() -> None:
    cluster = Cluster(3)
    cluster.start()
    cluster.elect(0)
    sent = [(m.pre, m.term) for _, _, m in cluster.messages(RequestVote, 0)]
    assert sent == [(True, 1), (True, 1), (False, 1), (False, 1)]


def test_5_2_d_heartbeats_keep_followers_from_campaigning() -> None:
    cluster = Cluster(5)
    cluster.start()
    term = cluster.elect(0)
    timeouts = cluster.count("raft_election_timeouts")
    cluster.run(2_000_000)
    assert cluster.count("raft_election_timeouts") == timeouts
    assert all(cluster.view(node).term == term for node in range(5))


def test_5_2_e_a_candidate_follows_a_leader_of_its_own_term() -> None:
    cluster = Cluster(3, NO_PRE_VOTE)
    cluster.start()
    cluster.elect(0)
    cluster.isolate(2)
    assert cluster.run(until=lambda: cluster.view(2).role is Role.CANDIDATE)
    term = cluster.view(2).term
    cluster.inject(1, 2, AppendEntries(term, 1, 0, 0, (), 0, 0))
    assert cluster.view(2).role is Role.FOLLOWER
    assert cluster.view(2).leader == 1
    assert cluster.view(2).term == term


def test_5_2_f_a_split_vote_is_resolved_by_randomized_timeouts() -> None:
    cluster = Cluster(4, NO_PRE_VOTE, preferred=None, seed=3)
    # 0 and 1 time out together; in term 1 voter 2 hears only from 0 and voter 3
    # only from 1: two votes each out of four, no majority. Their next draws
    # differ, and the earlier one wins term 2.
    cluster.draws = {0: [0, 0], 1: [0, 5_000], 2: [49_999], 3: [49_999]}
    cluster.drop = lambda source, destination, message: (
        type(message) is RequestVote and message.term == 1
        and (source, destination) in ((0, 3), (1, 2))
    )
    cluster.start()
    assert cluster.run(until=lambda: cluster.leader() is not None)
    assert cluster.count("raft_election_rounds_timed_out") >= 1  # the split round
    assert cluster.leaders() == [0]
    assert cluster.view(0).term == 2
    cluster.assert_safe()


def test_5_2_g_election_timeouts_are_drawn_in_range_as_recorded_choices() -> None:
    params = FAST_PARAMS
    choices: list[tuple[str, int, int]] = []

    def choose(label: str, count: int) -> int:
        choices.append((label, count, count // 3))
        return count // 3

    node = Node(0, ClusterConfig(3, 1, resilience=Resilience.CRASH), RaftNodeFactory(params),
                choose=choose)
    effects = node.step(Start({}))
    expected = params.election_timeout_min_us + params.election_timeout_range_us // 3
    span = params.election_timeout_range_us
    assert ("random", span, span // 3) in choices
    assert any(delay == expected for _, delay in effects.timers_set)


# -- 5.3: log replication --------------------------------------------------------------


def test_5_3_a_the_leader_replicates_commits_and_everyone_applies_in_log_order() -> None:
    cluster = Cluster(5)
    cluster.start()
    term = cluster.elect(0)
    for batch in (b"a", b"b", b"c"):
        cluster.submit(0, batch)
    assert cluster.run(until=lambda: cluster.all_applied(b"c"))
    for node in range(5):
        assert cluster.batches(node) == [b"a", b"b", b"c"]
    commits = [out for _, node, out in cluster.outputs if isinstance(out, LeaderCommitted)]
    assert all(commit.node == 0 and commit.term == term for commit in commits)
    cluster.assert_safe()


def test_5_3_b_a_follower_rejects_entries_whose_previous_entry_it_lacks() -> None:
    cluster = Cluster(3)
    cluster.start()
    term = cluster.elect(0)
    settle(cluster)
    last = cluster.view(1).last_index
    replies = cluster.inject(0, 1, AppendEntries(term, 0, last + 5, term, (), 0, 0))
    reply = replies[0]
    assert not reply.success
    hints = (reply.rejected_index, reply.conflict_index, reply.conflict_term)
    assert hints == (last + 5, last + 1, 0)
    assert cluster.view(1).last_index == last


def test_5_3_c_a_term_mismatch_is_rejected_with_the_first_index_of_the_conflicting_term() -> None:
    cluster = Cluster(3, NO_LEASE)
    cluster.start()
    term = cluster.elect(0)
    settle(cluster)
    first_of_term = cluster.view(1).commit_index + 1
    last = uncommitted_tail(cluster, 1, 0, [b"x", b"y", b"z"])
    replies = cluster.inject(2, 1, AppendEntries(term + 1, 2, last, term + 1, (), 0, 0))
    reply = replies[0]
    assert not reply.success
    assert reply.conflict_term == term
    assert reply.conflict_index <= first_of_term
    assert cluster.raft(1).log.term_at(reply.conflict_index) == term


def test_5_3_d_a_follower_replaces_a_conflicting_suffix_by_the_leaders_entries() -> None:
    cluster = Cluster(3, NO_LEASE)
    cluster.start()
    term = cluster.elect(0)
    settle(cluster)
    base = cluster.view(1).last_index
    uncommitted_tail(cluster, 1, 0, [b"x", b"y"])
    replies = cluster.inject(2, 1, AppendEntries(
        term + 1, 2, base, term, (Entry(term + 1, b"z"),), 0, 0))
    assert replies[0].success and replies[0].match_index == base + 1
    for _ in range(2):  # in memory, then after a restart from disk
        view = cluster.view(1)
        assert (view.last_index, view.last_term) == (base + 1, term + 1)
        assert cluster.raft(1).log.entry(base + 1).data == b"z"
        cluster.crash(1)
        cluster.restart(1)


def test_5_3_e_the_leader_backs_off_a_whole_term_per_round_trip() -> None:
    cluster = Cluster(3, NO_LEASE)
    cluster.start()
    cluster.elect(0)
    settle(cluster)
    cluster.isolate(0)
    for index in range(40):
        cluster.submit(0, f"lost{index}".encode())  # never committed: 0 is alone
    cluster.crash(0)
    cluster.elect(1)
    for index in range(5):
        cluster.submit(1, f"kept{index}".encode())
    assert cluster.run(until=lambda: cluster.all_applied(b"kept4", [1, 2]))
    cluster.heal()
    cluster.restart(0)
    before = cluster.node_counters(1).get("raft_append_entries_rejected", 0)
    assert cluster.run(until=lambda: cluster.all_applied(b"kept4", [0]))
    assert cluster.node_counters(1).get("raft_append_entries_rejected", 0) - before <= 3
    assert not any(batch.startswith(b"lost") for batch in cluster.batches(0))
    cluster.assert_safe()


def test_5_3_f_a_follower_commits_no_further_than_the_last_entry_it_verified() -> None:
    cluster = Cluster(3, NO_LEASE)
    cluster.start()
    term = cluster.elect(0)
    settle(cluster)
    verified = cluster.view(1).last_index
    uncommitted_tail(cluster, 1, 0, [b"x", b"y"])
    cluster.inject(0, 1, AppendEntries(term, 0, verified, term, (), verified + 50, 0))
    assert cluster.view(1).commit_index == verified


def test_5_3_g_pipelining_keeps_at_most_inflight_max_messages_in_flight() -> None:
    params = dataclasses.replace(FAST_PARAMS, inflight_max=3, entries_per_message_max=1)
    cluster = Cluster(3, params, latency_us=5_000)
    cluster.start()
    cluster.elect(0)
    settle(cluster)
    start = len(cluster.sent)
    for index in range(10):
        cluster.submit(0, f"p{index}".encode())
    cluster.run(4_000)  # less than one round trip: nothing acknowledged yet
    carried = [m for s, d, m in cluster.sent[start:]
               if s == 0 and d == 1 and type(m) is AppendEntries and m.entries]
    assert len(carried) == 3
    assert cluster.node_counters(0)["bound_raft_inflight_max"] >= 1
    assert cluster.run(until=lambda: cluster.all_applied(b"p9"))


def test_5_3_h_lost_append_entries_are_retransmitted() -> None:
    cluster = Cluster(3)
    cluster.start()
    cluster.elect(0)
    settle(cluster)
    dropped: list[AppendEntries] = []

    def drop(source: int, destination: int, message: object) -> bool:
        if type(message) is AppendEntries and message.entries and len(dropped) < 6:
            dropped.append(message)
            return True
        return False

    cluster.drop = drop
    cluster.submit(0, b"x")
    assert cluster.run(until=lambda: cluster.all_applied(b"x"))
    assert len(dropped) == 6


def test_5_3_i_messages_respect_entry_count_and_byte_bounds() -> None:
    params = dataclasses.replace(FAST_PARAMS, entries_per_message_max=3, message_bytes_max=20)
    cluster = Cluster(3, params)
    cluster.start()
    cluster.elect(0)
    cluster.isolate(2)  # 2 falls behind, then catches up in bounded messages
    for index in range(12):
        cluster.submit(0, bytes([index]) * (4 if index < 6 else 15))
    assert cluster.run(until=lambda: cluster.all_applied(bytes([11]) * 15, [0, 1]))
    cluster.heal()
    assert cluster.run(until=lambda: cluster.all_applied(bytes([11]) * 15))
    for _, _, message in cluster.messages(AppendEntries, 0):
        assert len(message.entries) <= 3
        sizes = [len(entry.data) for entry in message.entries]
        assert len(sizes) <= 1 or sum(sizes) <= 20
    counters = cluster.node_counters(0)
    assert counters["bound_raft_entries_per_message_max"] >= 1
    assert counters["bound_raft_message_bytes_max"] >= 1


def test_5_3_j_duplicated_and_reordered_messages_change_nothing() -> None:
    cluster = Cluster(3, duplicate=1.0, jitter_us=8_000)
    cluster.start()
    cluster.elect(0)
    for index in range(30):
        cluster.submit(0, f"d{index}".encode())
    assert cluster.run(until=lambda: cluster.all_applied(b"d29"))
    expected = [f"d{index}".encode() for index in range(30)]
    for node in range(3):
        assert cluster.batches(node) == expected
    cluster.assert_safe()


def test_5_3_k_the_leader_never_overwrites_or_deletes_its_own_entries() -> None:
    cluster = Cluster(3, NO_LEASE)
    cluster.start()
    term = cluster.elect(0)
    settle(cluster)
    log = cluster.raft(0).log
    before = [log.entry(index) for index in range(1, log.last_index + 1)]
    # A conflicting AppendEntries of the leader's own term from another node is refused.
    replies = cluster.inject(1, 0, AppendEntries(term, 1, 0, 0, (Entry(term, b"evil"),), 0, 0))
    assert replies == []
    after = [log.entry(index) for index in range(1, log.last_index + 1)]
    assert after == before
    assert cluster.node_counters(0)["raft_rejected_second_leader"] == 1


# -- 5.4: safety --------------------------------------------------------------------------


def test_5_4_1_candidate_with_stale_log_loses() -> None:
    cluster = Cluster(3, NO_LEASE)
    cluster.start()
    cluster.elect(0)
    cluster.isolate(2)
    cluster.submit(0, b"x")
    assert cluster.run(until=lambda: cluster.all_applied(b"x", [0, 1]))
    stale = cluster.view(2)
    replies = cluster.inject(2, 1, RequestVote(stale.term + 1, 2, stale.last_index, stale.last_term,
                                               False, False))
    assert [reply.granted for reply in replies] == [False]
    cluster.crash(0)
    cluster.run(10_000)  # nothing of 0's is in flight any more
    cluster.heal()
    cluster.preferred = 2  # the stale node times out first, again and again
    assert cluster.run(until=lambda: cluster.leader() is not None)
    assert cluster.leader() == 1  # 2 can never win: 1 refuses it and 0 is down
    assert cluster.node_counters(2).get("raft_elections_won", 0) == 0
    cluster.assert_safe()


def test_5_4_1_b_a_later_last_term_is_more_up_to_date_than_a_longer_log() -> None:
    cluster = Cluster(3, NO_LEASE)
    cluster.start()
    term = cluster.elect(0)
    settle(cluster)
    view = cluster.view(1)
    votes = []
    for offset, (last_index, last_term) in enumerate([
        (view.last_index - 1, view.last_term),  # shorter, same last term: refused
        (view.last_index, view.last_term),  # as long: granted
        (1, term + 1),  # much shorter but a later last term: granted
    ]):
        replies = cluster.inject(2, 1, RequestVote(term + 5 + offset, 2, last_index, last_term,
                                                   False, False))
        votes.append(replies[0].granted)
    assert votes == [False, True, True]


def test_5_4_2_a_leader_does_not_commit_previous_term_entry_by_counting() -> None:
    cluster = Cluster(3, dataclasses.replace(NO_LEASE, entries_per_message_max=1))
    cluster.start()
    old = cluster.elect(0)
    settle(cluster)
    index = uncommitted_tail(cluster, 1, 0, [b"old"])  # on 1 only, term `old`
    cluster.crash(0)
    # 1 becomes leader of a newer term; once 2 holds the old entry, drop every
    # entry of the new term to it: the old entry is on a majority ({1, 2}), no
    # entry of the new term is.
    cluster.drop = lambda source, destination, message: (
        type(message) is AppendEntries
        and any(entry.term > old for entry in message.entries)
        and cluster.raft(2).log.last_index >= index
    )
    cluster.preferred = 1
    assert cluster.run(until=lambda: 1 in cluster.leaders())
    assert cluster.run(until=lambda: cluster.raft(2).log.last_index >= index)
    cluster.run(200_000)
    assert cluster.raft(2).log.term_at(index) == old
    assert cluster.view(1).commit_index < index  # stored on a majority, yet not committed
    cluster.drop = None
    assert cluster.run(until=lambda: cluster.view(1).commit_index > index)
    cluster.assert_safe()


def test_5_4_2_b_earlier_entries_commit_indirectly_with_a_current_term_entry() -> None:
    cluster = Cluster(3, NO_LEASE)
    cluster.start()
    cluster.elect(0)
    settle(cluster)
    index = uncommitted_tail(cluster, 1, 0, [b"old"])
    cluster.crash(0)
    new = cluster.elect(1)
    assert cluster.run(until=lambda: cluster.all_applied(b"old", [1, 2]))
    commits = [out for _, _, out in cluster.outputs
               if isinstance(out, LeaderCommitted) and out.term == new]
    assert commits[0].index > index  # committed through the new term's no-op
    assert commits[0].entry_term == new
    cluster.assert_safe()


def test_5_4_3_state_machine_safety_across_repeated_leader_crashes() -> None:
    cluster = Cluster(5, preferred=None, seed=11)
    cluster.start()
    written = 0
    for round_ in range(6):
        assert cluster.run(until=lambda: cluster.leader() is not None)
        leader = cluster.leader()
        assert leader is not None
        for _ in range(5):
            written += 1
            cluster.submit(leader, f"s{written}".encode())
        cluster.run(3_000 * (round_ + 1))
        cluster.crash(leader, keep_unsynced=0)
        cluster.run(20_000)
        cluster.restart(leader)
    assert cluster.run(until=lambda: cluster.leader() is not None)
    leader = cluster.leader()
    assert leader is not None
    cluster.submit(leader, b"final")
    assert cluster.run(until=lambda: cluster.all_applied(b"final"))
    reference = cluster.batches(0)
    for node in range(5):
        assert cluster.batches(node) == reference
    cluster.assert_safe()


# -- 5.5: follower and candidate crashes ----------------------------------------------------


def test_5_5_a_a_crashed_follower_catches_up_after_restarting() -> None:
    cluster = Cluster(3)
    cluster.start()
    cluster.elect(0)
    cluster.crash(2)
    for index in range(20):
        cluster.submit(0, f"c{index}".encode())
    assert cluster.run(until=lambda: cluster.all_applied(b"c19", [0, 1]))
    cluster.restart(2)
    assert cluster.run(until=lambda: cluster.all_applied(b"c19"))
    assert cluster.batches(2) == cluster.batches(0)


@pytest.mark.parametrize("keep", range(8))
def test_5_5_b_a_crash_inside_a_step_leaves_a_consistent_prefix(keep: int) -> None:
    cluster = Cluster(3, NO_LEASE)
    cluster.start()
    term = cluster.elect(0)
    settle(cluster)
    base = cluster.view(1).last_index
    uncommitted_tail(cluster, 1, 0, [b"x", b"y", b"z"])
    # One step: erase z, y, x (from the end), then write three new entries.
    cluster.crash_in_next_step(1, keep)
    cluster.inject(2, 1, AppendEntries(
        term + 1, 2, base, term, tuple(Entry(term + 1, b) for b in (b"p", b"q", b"r")), 0, 0))
    assert cluster.nodes[1] is None
    cluster.restart(1)
    log = cluster.raft(1).log
    data = [log.entry(index).data for index in range(base + 1, log.last_index + 1)]
    # every prefix of "erase z, erase y, erase x, write p, write q, write r" (plus the
    # term record first): the log is always a contiguous run
    assert data in (
        [b"x", b"y", b"z"], [b"x", b"y"], [b"x"], [], [b"p"], [b"p", b"q"], [b"p", b"q", b"r"],
    )


# -- 5.6: timing ------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    {"heartbeat_us": 0},
    {"heartbeat_us": 100_000, "election_timeout_min_us": 150_000},
    {"election_timeout_max_us": 300_000, "election_timeout_min_us": 300_000},
    {"inflight_max": 0},
    {"entries_per_message_max": 0},
    {"pending_proposals_max": 0},
    {"initial_voters": ()},
    {"initial_voters": (1, 1)},
])
def test_5_6_timing_and_bounds_are_validated_up_front(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        dataclasses.replace(RaftParams(), **bad).validate()  # type: ignore[arg-type]


def test_5_6_initial_voters_must_be_cluster_nodes() -> None:
    with pytest.raises(ConfigError):
        RaftParams(initial_voters=(0, 7)).voters_for(3)


def test_5_2_h_a_leader_is_a_scope_of_one_task_per_peer_cancelled_by_stepping_down() -> None:
    cluster = Cluster(5)
    cluster.start()
    cluster.elect(0)
    raft = cluster.raft(0)
    scope = raft.role_scope
    assert scope is not None
    tasks = list(scope.tasks)
    assert sorted(raft.replication.peer_tasks) == [1, 2, 3, 4]
    assert all(task in scope.tasks for task in raft.replication.peer_tasks.values())
    # one pipeline per peer, heartbeats, the durability watch (10.2.1), the
    # notice loop (commit_notice_delay_us), check-quorum
    assert len(tasks) == 4 + 4
    timers_before = len(cluster.timer_tokens[0])
    cluster.inject(1, 0, AppendEntriesResponse(cluster.view(0).term + 1, False, 0, 0, 0, 0, 0, 0))
    assert cluster.view(0).role is Role.FOLLOWER
    assert scope.cancelled
    assert all(task.done for task in tasks)
    assert len(cluster.timer_tokens[0]) < timers_before  # their timers went with them


def test_5_1_x_a_node_reports_each_term_it_adopts_from_a_peer() -> None:
    """Operators see term changes (issue 8): a node that hears of a higher term
    from a peer reports it (a live node logs "term changed")."""
    cluster = Cluster(3)
    cluster.start()
    term = cluster.elect(0)
    changed = [out for _, _, out in cluster.outputs if isinstance(out, TermChanged)]
    assert {out.node for out in changed if out.term == term} == {1, 2}
    assert all(out.previous < out.term for out in changed)
    cluster.crash(0)
    later = cluster.elect(1)
    again = [out for _, _, out in cluster.outputs
             if isinstance(out, TermChanged) and out.term == later]
    assert {out.node for out in again} - {1} == {2}
    assert all(out.previous >= term for out in again)
    cluster.assert_safe()
