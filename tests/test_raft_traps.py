"""The classic Raft traps, as readable scripts on real node cores.

* Figure 8 of the paper: a leader must not commit an entry of an earlier
  term by counting replicas (the broken variant that does is caught);
* a leader isolated in a minority steps down (check-quorum) and serves no
  stale read, with or without check-quorum;
* a node restarting with an empty disk is refused as a voter until it has
  caught up and been re-admitted (disk identities and ``RaftParams.join``,
  see membership.py), and what goes wrong without ``join``;
* membership changes during a partition.
"""

from __future__ import annotations

import dataclasses

from test_raft_cluster import FAST_PARAMS, Cluster

from replicaio.core.lines import Line
from replicaio.protocols.raft import (
    AppendEntries,
    Applied,
    BecameLeader,
    ConfigChanged,
    Raft,
    RaftParams,
    ReadConfirmed,
    Role,
)
from replicaio.smr.api import NotLeader
from replicaio.testing.variants.raft import RaftCommitPreviousTerm


def wait_registered(cluster: Cluster) -> None:
    """Until the leader's committed configuration knows every disk identity."""

    def registered() -> bool:
        leader = cluster.leader()
        if leader is None:
            return False
        view = cluster.view(leader)
        members = (*view.config.voters, *view.config.learners)
        log = cluster.raft(leader).log
        return all(identity for _, identity in members) and view.commit_index >= log.config_index

    assert cluster.run(until=registered)


def settle(cluster: Cluster) -> None:
    leader = cluster.leader()
    assert leader is not None
    last = cluster.view(leader).last_index
    assert cluster.run(until=lambda: all(
        cluster.view(node).applied_index >= last for node in cluster.up()))


# -- Figure 8 ------------------------------------------------------------------------------


def figure_8(raft_type: type[Raft] = Raft) -> tuple[Cluster, int]:
    """The paper's Figure 8 with S1..S5 as nodes 0..4; returns the cluster and
    the index the figure is about (the paper's index 2)."""
    params = dataclasses.replace(FAST_PARAMS, entries_per_message_max=1)
    cluster = Cluster(5, params, raft_type=raft_type)
    cluster.start()
    assert cluster.run(until=lambda: 0 in cluster.leaders())
    cluster.submit(0, b"init")  # (the variant's leaders append no no-op)
    assert cluster.run(until=lambda: cluster.settled(0))
    settle(cluster)
    index = cluster.view(0).last_index + 1

    # (a) S1 leads and replicates the entry at `index` to S2 only.
    cluster.partition((0, 1), (2, 3, 4))
    cluster.submit(0, b"a")
    assert cluster.run(until=lambda: cluster.raft(1).log.last_index >= index)
    term_a = cluster.view(0).term

    # (b) S1 crashes; S5 is elected by S3, S4 and itself and appends an entry at
    # `index` in its own term (its no-op, or with the variant, which appends no
    # no-op, a client's entry), which it replicates to nobody; then it crashes.
    cluster.crash(0)
    cluster.partition((1,), (2, 3, 4))
    cluster.preferred = 4
    assert cluster.run(until=lambda: 4 in cluster.leaders())
    cluster.isolate(4)  # its AppendEntries, already on the wire, are lost
    cluster.submit(4, b"b")  # the paper's S5 takes a client entry in its term
    cluster.run(5_000)
    assert cluster.raft(4).log.term_at(index) == cluster.view(4).term
    cluster.crash(4)

    # (c) S1 restarts; S1 or S2 (both hold the entry of term_a) is elected by
    # a majority; it replicates the entry of term_a at `index` to S3, but no
    # entry of its new term reaches anyone. (The paper has S1; either will do.)
    cluster.heal()
    cluster.restart(0)
    cluster.preferred = 0
    assert cluster.run(until=lambda: bool(set(cluster.leaders()) & {0, 1}))
    leader_c = cluster.leader()
    assert leader_c is not None
    term_c = cluster.view(leader_c).term
    cluster.drop = lambda source, destination, message: (
        source == leader_c and type(message) is AppendEntries
        and any(entry.term == term_c for entry in message.entries)
        and (cluster.nodes[destination] is None
             or cluster.raft(destination).log.last_index >= index)
    )
    assert cluster.run(until=lambda: cluster.raft(2).log.term_at(index) == term_a)
    cluster.run(50_000)  # the leader would now commit by counting, if it did
    assert cluster.raft(leader_c).log.term_at(index) == term_a

    # (d) It crashes; S5 restarts and is elected by S3, S4 and itself (its last
    # term beats theirs), and replicates its own entry at `index` everywhere.
    cluster.crash(leader_c)
    cluster.drop = None
    cluster.restart(4)
    cluster.preferred = 4
    assert cluster.run(until=lambda: 4 in cluster.leaders() or bool(cluster.checker.violations))
    cluster.run(300_000)
    return cluster, index


def test_figure_8_an_earlier_term_entry_on_a_majority_is_not_committed_and_is_replaced() -> None:
    cluster, index = figure_8()
    cluster.assert_safe()
    term_e = cluster.raft(4).log.term_at(index)
    # The entry of term_a was never committed, so S5 rightly replaced it on
    # every node that is up, and nobody ever applied it.
    assert all(cluster.raft(node).log.term_at(index) == term_e for node in cluster.up())
    assert not any(isinstance(out, Applied) and out.index == index and out.term != term_e
                   for _, _, out in cluster.outputs)


def test_figure_8_with_the_commit_previous_term_variant_breaks_leader_completeness() -> None:
    cluster, _ = figure_8(RaftCommitPreviousTerm)
    properties = {violation.property for violation in cluster.checker.violations}
    assert "leader_completeness" in properties  # the consequence
    assert "commit_rule" in properties  # and the broken rule itself


# -- a leader isolated in a minority -----------------------------------------------------------


def test_isolated_leader_steps_down_by_check_quorum_and_serves_no_stale_read() -> None:
    cluster = Cluster(5)
    cluster.start()
    cluster.elect(0)
    settle(cluster)
    cluster.partition((0, 1), (2, 3, 4))
    cluster.request(0, "read")  # asked while still believing it leads
    cluster.submit(0, b"lost")
    cluster.preferred = 2
    assert cluster.run(until=lambda: 2 in cluster.leaders())
    cluster.submit(2, b"new")
    assert cluster.run(until=lambda: cluster.all_applied(b"new", [2, 3, 4]))
    assert cluster.run(until=lambda: cluster.view(0).role is not Role.LEADER)
    assert cluster.node_counters(0)["raft_check_quorum_stepped_down"] == 1
    cluster.request(0, "read")
    first, second = cluster.protocol(0).reads
    assert isinstance(first, Line) and not first.ready  # never confirmed
    assert isinstance(second, NotLeader)
    assert not any(isinstance(out, ReadConfirmed) and node == 0 for _, node, out in cluster.outputs)
    cluster.heal()
    assert cluster.run(until=lambda: cluster.all_applied(b"new"))
    assert not cluster.all_applied(b"lost", [2])
    cluster.assert_safe()


def test_isolated_leader_without_check_quorum_still_serves_no_stale_read() -> None:
    cluster = Cluster(5, dataclasses.replace(FAST_PARAMS, check_quorum=False))
    cluster.start()
    cluster.elect(0)
    settle(cluster)
    cluster.partition((0, 1), (2, 3, 4))
    cluster.preferred = 2
    assert cluster.run(until=lambda: 2 in cluster.leaders())
    cluster.submit(2, b"new")
    assert cluster.run(until=lambda: cluster.all_applied(b"new", [2, 3, 4]))
    assert cluster.view(0).role is Role.LEADER  # stale, and does not know it
    cluster.request(0, "read")
    cluster.run(500_000)
    (read,) = cluster.protocol(0).reads
    assert isinstance(read, Line) and not read.ready  # its heartbeat round never gets a majority
    cluster.assert_safe()


# -- a node restarting with an empty disk ------------------------------------------------------


def test_empty_disk_restart_is_refused_as_a_voter_and_cannot_elect_a_stale_leader() -> None:
    cluster = Cluster(3)
    cluster.start()
    cluster.elect(0)
    wait_registered(cluster)
    old_identity = cluster.view(2).identity
    # x is committed by 0 and 2 only.
    cluster.isolate(1)
    cluster.submit(0, b"x")
    assert cluster.run(until=lambda: cluster.all_applied(b"x", [0, 2]))
    # 2 loses its disk, 0 crashes: 1 (without x) and the blank 2 remain.
    cluster.crash(2)
    cluster.wipe(2)
    cluster.crash(0)
    cluster.heal()
    cluster.restart(2)
    assert cluster.view(2).identity != old_identity
    cluster.preferred = 1
    cluster.run(1_000_000)
    assert cluster.leaders() == []  # 1 cannot count the blank disk's vote
    assert cluster.count("raft_ignored_vote_not_counted") >= 1
    # 0 comes back: it leads, demotes 2 to a learner, catches it up, promotes it.
    cluster.restart(0)
    cluster.preferred = 0
    assert cluster.run(until=lambda: 0 in cluster.leaders())
    new_identity = cluster.view(2).identity

    def readmitted() -> bool:
        return (2, new_identity) in cluster.view(0).config.voters and cluster.all_applied(b"x")

    assert cluster.run(until=readmitted)
    configs = [out.config for _, node, out in cluster.outputs
               if isinstance(out, ConfigChanged) and node == 0]
    assert any((2, new_identity) in config.learners for config in configs)  # demoted first
    cluster.submit(0, b"after")
    assert cluster.run(until=lambda: cluster.all_applied(b"after"))
    cluster.assert_safe()


def test_empty_disk_acknowledgements_do_not_count_toward_commit() -> None:
    cluster = Cluster(3)
    cluster.start()
    cluster.elect(0)
    wait_registered(cluster)
    cluster.crash(1)
    cluster.crash(2)
    cluster.wipe(2)
    cluster.restart(2)
    cluster.submit(0, b"y")
    cluster.run(1_000_000)
    assert not cluster.all_applied(b"y", [0])  # 0 + a blank disk is not a majority
    cluster.restart(1)
    assert cluster.run(until=lambda: cluster.all_applied(b"y"))
    cluster.assert_safe()


def stale_candidate_and_blank_disk(join: bool) -> Cluster:
    """Node 1 is cut off from the start, so its configuration never learns the
    disk identities; x is committed by 0 and 2; 0 crashes and 2 loses its
    disk. Only 1 (empty log, stale configuration) and the blank 2 remain."""
    cluster = Cluster(3)
    cluster.isolate(1)
    cluster.start()
    cluster.elect(0)
    cluster.submit(0, b"x")
    assert cluster.run(until=lambda: cluster.all_applied(b"x", [0, 2]))
    cluster.crash(0)
    cluster.crash(2)
    cluster.wipe(2)
    cluster.restart(2, join=join)
    cluster.heal()
    cluster.preferred = 1
    cluster.run(1_000_000)
    return cluster


def test_a_joining_disk_does_not_vote_even_for_a_candidate_that_predates_its_registration() -> None:
    cluster = stale_candidate_and_blank_disk(join=True)
    assert cluster.leaders() == []  # 1 cannot win: the joining disk refuses
    assert cluster.node_counters(2)["raft_vote_refused_disk_not_admitted"] >= 1
    cluster.restart(0)
    cluster.preferred = 0
    assert cluster.run(until=lambda: 0 in cluster.leaders())
    identity = cluster.view(2).identity
    assert cluster.run(until=lambda: (2, identity) in cluster.view(2).config.voters)
    assert cluster.raft(2).membership.may_vote()  # re-admitted
    cluster.submit(0, b"after")
    assert cluster.run(until=lambda: cluster.all_applied(b"after"))
    cluster.assert_safe()


def test_a_blank_disk_restarted_without_join_can_elect_a_stale_leader() -> None:
    """Why ``RaftParams.join`` exists: a blank disk cannot tell a first boot
    from a replacement, and a candidate whose configuration never registered
    the lost disk counts its vote. The checkers see the loss."""
    cluster = stale_candidate_and_blank_disk(join=False)
    properties = {violation.property for violation in cluster.checker.violations}
    assert properties & {"leader_completeness", "election_safety", "log_matching"}


# -- membership changes during a partition -----------------------------------------------------


def test_a_change_appended_in_a_minority_is_never_committed_and_reverts() -> None:
    cluster = Cluster(5)
    cluster.start()
    cluster.elect(0)
    settle(cluster)
    cluster.partition((0, 1), (2, 3, 4))
    assert cluster.admin(0, "remove", 4) is None
    assert cluster.view(0).config.voters == tuple(
        member for member in cluster.view(0).config.voters if member[0] != 4)  # in force at once
    assert len(cluster.view(0).config.voters) == 4
    cluster.preferred = 2
    assert cluster.run(until=lambda: 2 in cluster.leaders())
    cluster.submit(2, b"majority")
    assert cluster.run(until=lambda: cluster.all_applied(b"majority", [2, 3, 4]))
    cluster.heal()
    assert cluster.run(until=lambda: cluster.all_applied(b"majority"))
    for node in range(5):
        assert len(cluster.view(node).config.voters) == 5  # the truncated change reverted
    reverted = [out for _, node, out in cluster.outputs
                if isinstance(out, ConfigChanged) and node == 0]
    assert [len(out.config.voters) for out in reverted][-2:] == [4, 5]
    cluster.assert_safe()


def test_a_server_removed_while_partitioned_does_not_disrupt_after_the_heal() -> None:
    cluster = Cluster(5)
    cluster.start()
    cluster.elect(0)
    settle(cluster)
    cluster.isolate(4)
    assert cluster.admin(0, "remove", 4) is None
    log = cluster.raft(0).log
    assert cluster.run(until=lambda: cluster.view(0).commit_index >= log.config_index)
    cluster.submit(0, b"w")
    assert cluster.run(until=lambda: cluster.all_applied(b"w", [0, 1, 2, 3]))
    cluster.run(1_000_000)  # 4 keeps failing pre-votes: its term does not run away
    term = cluster.view(0).term
    cluster.heal()
    cluster.run(1_000_000)
    assert cluster.leaders() == [0]
    assert cluster.view(0).term == term
    cluster.assert_safe()


def test_removing_the_leader_during_a_partition_hands_over_after_commit() -> None:
    cluster = Cluster(5)
    cluster.start()
    cluster.elect(0)
    settle(cluster)
    cluster.partition((0, 1, 2, 3), (4,))  # 1, 2, 3: a majority of the new voters
    assert cluster.admin(0, "remove", 0) is None
    assert cluster.run(until=lambda: cluster.view(0).role is Role.FOLLOWER)
    assert cluster.node_counters(0)["raft_leader_removed_stepped_down"] == 1
    cluster.heal()
    assert cluster.run(until=lambda: cluster.leader() not in (None, 0))
    leader = cluster.leader()
    assert leader is not None
    cluster.submit(leader, b"z")
    assert cluster.run(until=lambda: cluster.all_applied(b"z", [1, 2, 3, 4]))
    assert not cluster.raft(0).membership.is_voter(0)
    assert not any(isinstance(out, BecameLeader) and node == 0 and out.term > 1
                   for _, node, out in cluster.outputs)
    cluster.assert_safe()


def test_params_reach_every_node() -> None:
    assert RaftParams().validate() == RaftParams()
