"""The configuration caches (ADR 0065): ``RaftLog.config`` and ``config_index``
are fields, refreshed by every method that changes the configuration history,
and ``Membership`` derives voters, quorum, registered identities and peers
from the log's configuration object. After every step of every node, here,
both must equal what the history says when recomputed from scratch: through
a configuration entry truncated by a new leader, a snapshot that brings a new
configuration, compaction past the last configuration entry, and restarts."""

from __future__ import annotations

import dataclasses

from test_raft_cluster import FAST_PARAMS, Cluster

from replicaio.core.effects import Input
from replicaio.protocols.raft import Config, ConfigChanged, Raft
from replicaio.protocols.raft.audit import audit_raft
from replicaio.protocols.raft.messages import UNREGISTERED
from replicaio.protocols.raft.state import RaftLog

THREE_OF_FIVE = dataclasses.replace(FAST_PARAMS, initial_voters=(0, 1, 2))
NO_WINDOW = dataclasses.replace(THREE_OF_FIVE, snapshot_trailing_entries_max=0)


def history_config(log: RaftLog) -> tuple[Config, int]:
    """The latest configuration and its index, from the log's entries and base
    (what ``RaftLog.config`` was computed from at every read before the cache)."""
    indexes = [
        log.base_index + 1 + offset
        for offset, entry in enumerate(log.entries)
        if entry.config is not None
    ]
    assert indexes == log.config_indexes
    if indexes:
        config = log.entry(indexes[-1]).config
        assert config is not None
        return config, indexes[-1]
    return log.base_config, log.base_index


def assert_caches_fresh(raft: Raft) -> None:
    log = raft.log
    config, index = history_config(log)
    assert (log.config, log.config_index) == (config, index)
    membership = raft.membership
    voters = tuple(node for node, _ in config.voters)
    members = (*config.voters, *config.learners)
    assert membership.voters() == voters
    assert membership.quorum() == len(voters) // 2 + 1
    assert membership.peers() == tuple(sorted(node for node, _ in members if node != raft.id))
    for node in range(raft.context.n + 1):
        assert membership.is_voter(node) == (node in voters)
        registered = next((identity for member, identity in members if member == node), None)
        assert membership.registered(node) == registered
        for identity in (UNREGISTERED, raft.identity, 12345):
            expected = node in voters and dict(config.voters)[node] in (UNREGISTERED, identity)
            assert membership.counts(node, identity) == expected


class CheckedCluster(Cluster):
    """Checks every up node's caches after each of its steps."""

    checked_steps = 0

    def step(self, node: int, event: Input) -> None:
        super().step(node, event)
        core = self.nodes[node]
        if core is not None:
            raft = self.raft(node)
            assert_caches_fresh(raft)
            assert audit_raft(raft) == []  # the simulator's check agrees
            self.checked_steps += 1


def config_changes(cluster: Cluster, node: int) -> list[Config]:
    return [out.config for _, at, out in cluster.outputs
            if isinstance(out, ConfigChanged) and at == node]


def voters_of(config: Config) -> tuple[int, ...]:
    return tuple(node for node, _ in config.voters)


def test_a_configuration_entry_truncated_by_a_new_leader_reverts_the_caches() -> None:
    """Leader 0 appends a removal and replicates it to 1 only; 2, 3 and 4 elect
    a leader of a newer term whose log lacks it; once healed, 0 and 1 truncate
    the entry and the previous configuration (five voters) is in force again."""
    cluster = CheckedCluster(5)
    cluster.start()
    cluster.elect(0)
    cluster.partition((0, 1), (2, 3, 4))
    assert cluster.admin(0, "remove", 4) is None
    assert cluster.run(until=lambda: voters_of(cluster.view(1).config) == (0, 1, 2, 3))
    cluster.preferred = 2
    assert cluster.run(until=lambda: 2 in cluster.leaders() and cluster.committed_in_term(2))
    cluster.heal()
    assert cluster.run(until=lambda: all(
        voters_of(cluster.view(node).config) == (0, 1, 2, 3, 4) for node in (0, 1)))
    # Each of 0 and 1 saw the removal, then its truncation.
    for node in (0, 1):
        seen = [voters_of(config) for config in config_changes(cluster, node)]
        assert seen[-2:] == [(0, 1, 2, 3), (0, 1, 2, 3, 4)], seen
    assert cluster.raft(1).membership.quorum() == 3
    cluster.submit(2, b"after")
    assert cluster.run(until=lambda: cluster.all_applied(b"after", [0, 1, 2, 3, 4]))
    cluster.assert_safe()
    assert cluster.checked_steps > 100


def test_a_snapshot_with_a_newer_configuration_and_a_restart_refresh_the_caches() -> None:
    """Node 2 is down while the leader adds learner 3 and compacts past that
    entry: at its restart node 2 loads its old log, then installs a snapshot
    whose configuration names the learner; its caches follow both."""
    cluster = CheckedCluster(5, NO_WINDOW, compact_every=4)
    cluster.start()
    cluster.elect(0)
    cluster.crash(2)
    assert cluster.admin(0, "add_learner", 3) is None
    leader_log = cluster.raft(0).log
    for index in range(60):  # (the learner's identity is registered by a change too)
        cluster.submit(0, f"s{index}".encode())
        batch = f"s{index}".encode()

        def applied(batch: bytes = batch) -> bool:
            return cluster.all_applied(batch, [0, 1])

        assert cluster.run(until=applied)
        if index >= 19 and not leader_log.config_indexes:
            break
    last = batch
    assert not leader_log.config_indexes  # compacted past the changes: the base holds them
    assert 3 in [node for node, _ in leader_log.config.learners]
    cluster.restart(2)
    assert cluster.run(until=lambda: cluster.all_applied(last, [2]))
    assert cluster.node_counters(2).get("raft_snapshots_installed", 0) >= 1
    raft = cluster.raft(2)
    assert [node for node, _ in raft.log.config.learners] == [3]
    assert raft.membership.peers() == (0, 1, 3)
    # Restarted again: the configuration comes back from the snapshot record.
    cluster.crash(2)
    cluster.restart(2)
    assert [node for node, _ in cluster.raft(2).log.config.learners] == [3]
    cluster.assert_safe()


def test_membership_churn_with_crashes_keeps_the_caches_fresh() -> None:
    """Changes in turns, leaders crashing between them, compaction on."""
    cluster = CheckedCluster(5, THREE_OF_FIVE, compact_every=6)
    cluster.start()
    leader = 0
    cluster.elect(leader)
    steps = [("add", 3), ("add", 4), ("remove", 1), ("add", 1), ("remove", 0)]
    for number, (action, node) in enumerate(steps):
        def changed(action: str = action, node: int = node) -> bool:
            found = cluster.leader()
            return found is not None and cluster.admin(found, action, node) is None

        assert cluster.run(until=changed)
        for index in range(8):
            found = cluster.leader()
            if found is not None:
                cluster.submit(found, f"c{number}-{index}".encode())
        cluster.run(200_000)
        if number == 2:
            down = cluster.leader()
            assert down is not None
            cluster.crash(down)
            cluster.run(300_000)
            cluster.restart(down)
    cluster.run(1_000_000)
    cluster.assert_safe()
    assert cluster.checked_steps > 200
