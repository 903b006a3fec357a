"""Section 6 of the Raft paper and chapter 4 of the thesis: membership changes
(single-server, with the commit-in-term fix), learners, nodes outside the
configuration, and the operator's admin requests."""

from __future__ import annotations

import dataclasses

from test_raft_cluster import FAST_PARAMS, Cluster

from replicaio.protocols.raft import AppendEntries, Config, ConfigChanged, Entry, Role

THREE_OF_FIVE = dataclasses.replace(FAST_PARAMS, initial_voters=(0, 1, 2))


def voters(cluster: Cluster, node: int) -> tuple[int, ...]:
    return tuple(member for member, _ in cluster.view(node).config.voters)


def learners(cluster: Cluster, node: int) -> tuple[int, ...]:
    return tuple(member for member, _ in cluster.view(node).config.learners)


def committed_config(cluster: Cluster, node: int) -> bool:
    return cluster.view(node).commit_index >= cluster.raft(node).log.config_index


def configs_seen(cluster: Cluster, node: int) -> list[Config]:
    return [out.config for _, at, out in cluster.outputs
            if isinstance(out, ConfigChanged) and at == node]


def test_6_a_a_learner_receives_the_log_but_never_counts() -> None:
    cluster = Cluster(5, THREE_OF_FIVE)
    cluster.start()
    cluster.elect(0)
    assert cluster.admin(0, "add_learner", 3) is None
    cluster.submit(0, b"x")
    assert cluster.run(until=lambda: cluster.all_applied(b"x", [0, 1, 2, 3]))
    assert learners(cluster, 3) == (3,)
    cluster.crash(1)
    cluster.crash(2)
    cluster.submit(0, b"y")
    cluster.run(500_000)
    assert not cluster.all_applied(b"y", [0])  # leader + learner is no majority of {0, 1, 2}
    assert cluster.raft(3).log.last_index == cluster.raft(0).log.last_index  # yet it has y
    assert cluster.count("raft_election_timeouts") == 0 or all(
        cluster.node_counters(3).get(name, 0) == 0
        for name in ("raft_pre_votes_started", "raft_elections_started"))


def test_6_b_add_makes_a_learner_and_promotes_it_only_once_caught_up() -> None:
    params = dataclasses.replace(THREE_OF_FIVE, promote_lag_entries_max=0,
                                 entries_per_message_max=2)
    cluster = Cluster(5, params)
    cluster.start()
    cluster.elect(0)
    for index in range(40):
        cluster.submit(0, f"p{index}".encode())
    assert cluster.run(until=lambda: cluster.all_applied(b"p39", [0, 1, 2]))
    assert cluster.admin(0, "add", 3) is None
    assert learners(cluster, 0) == (3,)
    assert cluster.view(0).config.promoting == (3,)
    assert cluster.run(until=lambda: 3 in voters(cluster, 0) and committed_config(cluster, 0))
    # It was promoted only after it held the whole log.
    promoted_at = next(at for at, node, out in cluster.outputs
                       if isinstance(out, ConfigChanged) and node == 0
                       and any(member == 3 for member, _ in out.config.voters))
    applied_by_then = max(out.index for at, node, out in cluster.outputs
                          if node == 3 and at <= promoted_at and type(out).__name__ == "Applied")
    assert applied_by_then >= 40
    assert cluster.node_counters(0)["raft_learners_promoted"] == 1
    cluster.assert_safe()


def test_6_c_a_configuration_is_in_force_once_appended_before_it_commits() -> None:
    cluster = Cluster(3, dataclasses.replace(FAST_PARAMS, check_quorum=False))
    cluster.start()
    term = cluster.elect(0)
    cluster.run(30_000)
    view = cluster.view(1)
    new = Config(tuple(member for member in view.config.voters if member[0] != 2), ())
    cluster.inject(0, 1, AppendEntries(term, 0, view.last_index, view.last_term,
                                       (Entry(term, b"", new),), view.commit_index, 0))
    assert cluster.view(1).config == new
    assert cluster.view(1).commit_index < cluster.view(1).last_index
    assert cluster.raft(1).membership.quorum() == 2


def test_6_d_one_change_at_a_time() -> None:
    cluster = Cluster(5)
    cluster.start()
    cluster.elect(0)
    cluster.partition((0, 1), (2, 3, 4))  # the first change cannot commit
    assert cluster.admin(0, "remove", 4) is None
    assert cluster.admin(0, "remove", 3) == "change_in_progress"
    cluster.heal()
    assert cluster.run(until=lambda: committed_config(cluster, 0))
    assert cluster.admin(0, "remove", 3) is None
    assert cluster.run(until=lambda: committed_config(cluster, 0))
    assert voters(cluster, 0) == (0, 1, 2)
    cluster.assert_safe()


def test_6_e_no_change_before_the_leader_commits_an_entry_of_its_term() -> None:
    cluster = Cluster(3)
    cluster.start()
    cluster.elect(0)
    cluster.crash(0)
    # 1 wins, but none of its entries reaches anyone: its no-op stays uncommitted.
    cluster.drop = lambda source, destination, message: (
        source == 1 and type(message) is AppendEntries and bool(message.entries))
    cluster.preferred = 1
    assert cluster.run(until=lambda: 1 in cluster.leaders())
    assert cluster.admin(1, "remove", 2) == "no_commit_in_term"
    cluster.drop = None
    assert cluster.run(until=lambda: cluster.committed_in_term(1))
    assert cluster.admin(1, "remove", 2) is None


def test_6_f_a_leader_that_removes_itself_manages_until_the_change_commits() -> None:
    cluster = Cluster(3)
    cluster.start()
    cluster.elect(0)
    campaigns = cluster.node_counters(0).get("raft_pre_votes_started", 0)
    assert cluster.admin(0, "remove", 0) is None
    assert cluster.view(0).role is Role.LEADER  # still leading, not counting itself
    assert cluster.run(until=lambda: cluster.view(0).role is Role.FOLLOWER)
    assert cluster.view(0).commit_index >= cluster.raft(0).log.config_index
    cluster.preferred = 1
    assert cluster.run(until=lambda: cluster.leader() in (1, 2))
    cluster.run(500_000)
    assert cluster.node_counters(0).get("raft_pre_votes_started", 0) == campaigns  # it idles
    cluster.assert_safe()


def test_6_g_nodes_outside_the_configuration_idle() -> None:
    cluster = Cluster(5, THREE_OF_FIVE)
    cluster.start()
    cluster.elect(0)
    cluster.run(1_000_000)
    for node in (3, 4):
        counters = cluster.node_counters(node)
        assert counters.get("raft_election_timeouts", 0) == 0
        assert not cluster.raft(node).role_scope.tasks  # type: ignore[union-attr]
    assert voters(cluster, 0) == (0, 1, 2)


def test_6_h_a_promoting_learner_is_promoted_by_the_next_leader_too() -> None:
    cluster = Cluster(5, THREE_OF_FIVE)
    cluster.start()
    cluster.elect(0)
    cluster.crash(3)  # it cannot catch up yet
    assert cluster.admin(0, "add", 3) is None
    assert cluster.run(until=lambda: committed_config(cluster, 0))
    cluster.crash(0)
    cluster.restart(3)
    cluster.preferred = 1
    assert cluster.run(until=lambda: 1 in cluster.leaders())
    assert cluster.run(until=lambda: 3 in voters(cluster, 1) and committed_config(cluster, 1))
    cluster.assert_safe()


def test_6_i_adding_and_removing_in_turns_keeps_every_property() -> None:
    cluster = Cluster(5)
    cluster.start()
    cluster.elect(0)
    for round_ in range(4):
        target = 1 + round_ % 4
        assert cluster.admin(0, "remove", target) is None
        cluster.submit(0, f"r{round_}".encode())
        assert cluster.run(until=lambda: committed_config(cluster, 0))
        assert cluster.admin(0, "add", target) is None
        cluster.submit(0, f"a{round_}".encode())

        def joined(target: int = target) -> bool:
            return target in voters(cluster, 0) and committed_config(cluster, 0)

        assert cluster.run(until=joined)
    assert voters(cluster, 0) == (0, 1, 2, 3, 4)
    cluster.submit(0, b"end")
    assert cluster.run(until=lambda: cluster.all_applied(b"end"))
    cluster.assert_safe()


def test_6_j_disk_identities_are_registered_by_the_first_leader() -> None:
    cluster = Cluster(3)
    cluster.start()
    cluster.elect(0)
    assert cluster.run(until=lambda: committed_config(cluster, 0) and all(
        identity for _, identity in cluster.view(0).config.voters))
    assert dict(cluster.view(0).config.voters) == {
        node: cluster.view(node).identity for node in range(3)}


def test_6_k_admin_requests_are_refused_with_a_reason() -> None:
    cluster = Cluster(5, THREE_OF_FIVE)
    cluster.start()
    cluster.elect(0)
    assert cluster.admin(1, "add", 3) == "not_leader"
    assert cluster.admin(0, "add", 9) == "no_such_node"
    assert cluster.admin(0, "add", 1) == "already_member"
    assert cluster.admin(0, "remove", 4) == "not_a_member"
    assert cluster.admin(0, "promote", 4) == "not_a_learner"
    assert cluster.admin(0, "transfer", 4) == "not_a_voter"
    assert cluster.admin(0, "transfer", 0) == "already_leader"
    cluster.crash(3)
    assert cluster.admin(0, "add_learner", 3) is None
    assert cluster.run(until=lambda: committed_config(cluster, 0))
    assert cluster.admin(0, "promote", 3) == "not_caught_up"
    single = Cluster(1)
    single.start()
    single.elect(0)
    assert single.admin(0, "remove", 0) == "last_voter"


def test_6_l_a_leader_that_appended_its_own_removal_and_crashed_does_not_block_the_rest() -> None:
    """Voters {0, 1}; leader 1 appends its own removal ({0}), which never
    reaches 0, and crashes. 0 cannot win alone ({0, 1} needs 1's vote, and
    1's log is longer), so 1, out of its own latest configuration but still a
    voter of the uncommitted one before it, campaigns, leads {0} until the
    change commits, then steps down (section 6)."""
    cluster = Cluster(3, preferred=1)
    cluster.start()
    cluster.elect(1)
    assert cluster.admin(1, "remove", 2) is None
    assert cluster.run(until=lambda: committed_config(cluster, 1))
    cluster.drop = lambda source, destination, message: (
        source == 1 and type(message) is AppendEntries
        and any(entry.config is not None for entry in message.entries))
    assert cluster.admin(1, "remove", 1) is None
    cluster.run(5_000)
    cluster.crash(1)
    cluster.drop = None
    cluster.restart(1)
    assert voters(cluster, 1) == (0,) and voters(cluster, 0) == (0, 1)
    cluster.preferred = 0
    assert cluster.run(until=lambda: voters(cluster, 0) == (0,) and 0 in cluster.leaders())
    cluster.submit(0, b"alone")
    assert cluster.run(until=lambda: cluster.all_applied(b"alone", [0]))
    cluster.assert_safe()
