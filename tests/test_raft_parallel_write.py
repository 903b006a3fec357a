"""Thesis 10.2.1: the leader writes its log in parallel with replication.

The leader hands its AppendEntries to the host before its own write is
durable (``sends_before_sync``), and counts its own copy toward a commit only
once a timer of delay 0, armed after the sync of the step that appended, has
told it the write is durable. The harness (``test_raft_cluster.Cluster``)
syncs after every step and arms timers after the sync, like the hosts; a crash
inside a step lets the ``sends_before_sync`` out, like a live host.
"""

from __future__ import annotations

import pytest
from test_raft_cluster import Cluster

from replicaio.protocols.raft import AppendEntries, Raft
from replicaio.testing.variants.raft import RAFT_VARIANTS


def settle(cluster: Cluster) -> None:
    leader = cluster.leader()
    assert leader is not None
    last = cluster.view(leader).last_index
    assert cluster.run(until=lambda: all(
        cluster.view(node).applied_index >= last for node in cluster.up()
    ))


def append_without_leader_sync(raft_type: type[Raft]) -> tuple[Cluster, int, int]:
    """A 3-node cluster whose leader 0 appended an entry and sent it (before its
    sync) and whose follower 1 acknowledged it, while the leader's durability
    timer has not fired yet. Returns the cluster, the commit index before and
    the entry's index."""
    cluster = Cluster(3, raft_type=raft_type)
    cluster.start()
    cluster.elect(0)
    settle(cluster)
    before = cluster.view(0).commit_index
    sent = len(cluster.sent_before_sync)
    cluster.submit(0, b"x")
    early = [
        (destination, message) for source, destination, message
        in cluster.sent_before_sync[sent:] if source == 0
    ]
    assert sorted(destination for destination, _ in early) == [1, 2]
    assert all(type(message) is AppendEntries and message.entries for _, message in early)
    message = next(message for destination, message in early if destination == 1)
    (reply,) = cluster.inject(0, 1, message)
    assert reply.success
    cluster.inject(1, 0, reply)
    return cluster, before, reply.match_index


def test_10_2_1_a_the_leader_counts_itself_only_once_its_write_is_durable() -> None:
    cluster, before, index = append_without_leader_sync(Raft)
    # A quorum of two holds the entry, but only one durable copy is known.
    assert cluster.view(0).commit_index == before
    assert cluster.run(until=lambda: cluster.view(0).commit_index >= index)
    settle(cluster)
    cluster.assert_safe()


def test_10_2_1_b_the_variant_counting_the_unsynced_copy_commits_too_early() -> None:
    variant = RAFT_VARIANTS["raft-count-leader-unsynced"].raft_type
    cluster, before, index = append_without_leader_sync(variant)
    assert cluster.view(0).commit_index == index > before


@pytest.mark.parametrize("keep", [0, 1])
def test_10_2_1_c_a_leader_that_loses_an_entry_it_sent_stays_consistent(keep: int) -> None:
    """The leader crashes while writing an entry whose AppendEntries already
    left: the followers hold an entry the leader lost. A new leader commits it
    (or not) and every node ends with the same log."""
    cluster = Cluster(3)
    cluster.start()
    cluster.elect(0)
    settle(cluster)
    cluster.crash_in_next_step(0, keep)
    cluster.submit(0, b"sent before the sync")
    assert cluster.nodes[0] is None
    cluster.preferred = 1
    assert cluster.run(until=lambda: cluster.leader() in (1, 2))
    cluster.restart(0)
    cluster.submit(cluster.leader() or 1, b"after")
    assert cluster.run(until=lambda: cluster.all_applied(b"after"))
    logs = {tuple(cluster.batches(node)) for node in range(3)}
    assert len(logs) == 1
    assert b"sent before the sync" in next(iter(logs))  # the new leader had it
    cluster.assert_safe()
