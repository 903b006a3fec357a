"""An acknowledgement wakes its peer's replicate task only when ``send_to``
could act (``Replication.may_send``, ADR 0065 decision 4).

Each test puts the leader's progress of follower 1 in one state by hand (as
if the change that put it there had not woken the task itself), then hands
the leader a duplicate acknowledgement, which changes nothing else: the step
sends to follower 1 exactly when ``may_send`` holds, and ``may_send`` holds
exactly in the states where ``send_to`` has something to do (a probe, a
snapshot, entries beyond ``next_index``, a heartbeat due, a commit notice due
now). A wake-up dropped in one of those states would leave the peer waiting
for the next heartbeat; one kept in the others is a task step that sends
nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from test_raft_cluster import FAST_PARAMS, Cluster

from replicaio.protocols.raft import AppendEntriesResponse, CommitNotice, Raft
from replicaio.protocols.raft.replication import PROBE, REPLICATE, Progress

# Heartbeats far apart (none falls inside a test's few steps), commit notices held.
PARAMS = dataclasses.replace(
    FAST_PARAMS, heartbeat_us=1_000_000, election_timeout_min_us=5_000_000,
    election_timeout_max_us=10_000_000, commit_notice=True, commit_notice_delay_us=500_000,
)
PEER = 1


def settled_cluster(*, compact_every: int = 0, batches: int = 0) -> Cluster:
    cluster = Cluster(3, PARAMS, compact_every=compact_every)
    cluster.start()
    cluster.elect(0, limit_us=30_000_000)
    for number in range(batches):
        cluster.submit(0, b"batch %d" % number)
    assert cluster.run(until=cluster.caught_up, limit_us=30_000_000)
    assert cluster.run(until=lambda: not progress(cluster).commit_due, limit_us=30_000_000)
    return cluster


def progress(cluster: Cluster) -> Progress:
    return cluster.raft(0).replication.progress[PEER]


def duplicate_ack(cluster: Cluster) -> list[Any]:
    """A stale acknowledgement from the follower (of less than the leader
    already counts for it: it changes no progress, not even a probe's state),
    handed to the leader now: what the leader sends to the follower in that step."""
    raft: Raft = cluster.raft(0)
    peer = progress(cluster)
    assert peer.match_index >= 1
    stale = peer.match_index - 1
    ack = AppendEntriesResponse(raft.hard.term, True, stale, stale, 0, 0, 0, peer.identity)
    before = len(cluster.sent)
    cluster.inject(PEER, 0, ack)
    return [m for source, dest, m in cluster.sent[before:] if source == 0 and dest == PEER]


def test_an_idle_replicating_peer_is_not_woken() -> None:
    cluster = settled_cluster()
    peer = progress(cluster)
    assert peer.state == REPLICATE and not peer.heartbeat_due and not peer.commit_due
    assert peer.next_index == cluster.raft(0).log.last_index + 1
    assert not cluster.raft(0).replication.may_send(peer)
    waiting = peer.wakeup.line
    assert waiting is not None
    assert duplicate_ack(cluster) == []
    assert peer.wakeup.line is waiting and not peer.wakeup.pending  # the task did not run


def test_a_commit_held_for_entries_does_not_wake_the_peer() -> None:
    cluster = settled_cluster()
    peer = progress(cluster)
    peer.commit_due = True  # held for commit_notice_delay_us: send_to returns at once
    assert not cluster.raft(0).replication.may_send(peer)
    assert duplicate_ack(cluster) == []
    assert peer.commit_due


def test_a_commit_notice_due_now_wakes_the_peer() -> None:
    cluster = settled_cluster()
    peer = progress(cluster)
    peer.commit_due = peer.notice_due = True
    assert cluster.raft(0).replication.may_send(peer)
    assert [type(m) for m in duplicate_ack(cluster)] == [CommitNotice]
    assert not peer.commit_due


def test_a_heartbeat_due_wakes_the_peer() -> None:
    cluster = settled_cluster()
    peer = progress(cluster)
    peer.heartbeat_due = True
    assert cluster.raft(0).replication.may_send(peer)
    assert len(duplicate_ack(cluster)) == 1
    assert not peer.heartbeat_due


def test_entries_beyond_next_index_wake_the_peer() -> None:
    """As when the window was full and this acknowledgement is the one that
    frees it (here: an entry the task has not sent)."""
    cluster = settled_cluster(batches=2)
    peer = progress(cluster)
    last = cluster.raft(0).log.last_index
    peer.next_index = last
    assert cluster.raft(0).replication.may_send(peer)
    sent = duplicate_ack(cluster)
    assert len(sent) == 1 and sent[0].prev_log_index == last - 1 and len(sent[0].entries) == 1
    assert peer.next_index == last + 1


def test_a_peer_that_needs_a_snapshot_is_woken() -> None:
    cluster = settled_cluster(compact_every=2, batches=4)
    raft = cluster.raft(0)
    base = raft.log.base_index
    assert base >= 2
    peer = progress(cluster)
    peer.next_index = base  # its next entry is compacted away
    assert raft.replication.may_send(peer)
    sent = duplicate_ack(cluster)
    assert [type(m).__name__ for m in sent] == ["InstallSnapshot"]


@pytest.mark.parametrize("probe_tick", [None, 0])
def test_a_probing_peer_is_woken(probe_tick: int | None) -> None:
    """Any state but REPLICATE wakes the task (send_to decides: a probe not
    yet sent goes, an outstanding one waits for the heartbeat)."""
    cluster = settled_cluster()
    peer = progress(cluster)
    peer.state = PROBE
    peer.probe_tick = probe_tick
    assert cluster.raft(0).replication.may_send(peer)
    assert len(duplicate_ack(cluster)) == (1 if probe_tick is None else 0)
    assert peer.wakeup.line is not None  # the task ran and waits again
