"""Raft's bounds and its handling of a peer's bad messages: every bad message
is dropped and counted (never an exception, never a state change), every
``*_max`` bound is reached and counted, and memory stays flat over a long run
with compaction."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from test_raft_cluster import FAST_PARAMS, Cluster

from replicaio.core.effects import Receive
from replicaio.protocols.raft import (
    AppendEntries,
    AppendEntriesResponse,
    Config,
    Entry,
    InstallSnapshot,
    RequestVote,
    TimeoutNow,
)

NO_LEASE = dataclasses.replace(FAST_PARAMS, check_quorum=False)


def ready_cluster() -> tuple[Cluster, int]:
    cluster = Cluster(3, NO_LEASE)
    cluster.start()
    term = cluster.elect(0)
    cluster.submit(0, b"x")
    assert cluster.run(until=lambda: cluster.all_applied(b"x"))
    cluster.run(30_000)
    return cluster, term


def bad_messages(cluster: Cluster, term: int) -> list[tuple[int, int, Any, str]]:
    """(source, destination, message, counter it must bump)."""
    view = cluster.view(1)
    last, commit = view.last_index, view.commit_index
    config = view.config
    return [
        (2, 1, AppendEntries(term, 0, last, term, (), 0, 0), "raft_rejected_leader_not_sender"),
        (0, 1, AppendEntries(term, 0, -1, 0, (), 0, 0), "raft_rejected_negative"),
        (0, 1, AppendEntries(term, 0, last, term, (Entry(term, b""),) * 65, 0, 0),
         "raft_rejected_too_many_entries"),
        (0, 1, AppendEntries(term, 0, last, term, (Entry(term, b""), Entry(term - 1, b"")), 0, 0),
         "raft_rejected_entry_terms_out_of_order"),
        (0, 1, AppendEntries(term, 0, last, term, (Entry(term + 1, b""),), 0, 0),
         "raft_rejected_entry_terms_out_of_order"),
        (0, 1, AppendEntries(term + 1, 0, commit - 1, term, (Entry(term + 1, b"evil"),), 0, 0),
         "raft_rejected_overwrites_committed"),
        (0, 1, AppendEntries(term + 1, 0, commit, term + 1, (), 0, 0),
         "raft_rejected_prev_conflicts_committed"),
        (2, 1, RequestVote(term + 1, 0, last, term, False, False),
         "raft_rejected_candidate_not_sender"),
        (2, 1, RequestVote(term + 1, 2, last, term + 2, False, False),
         "raft_rejected_log_term_above_term"),
        (2, 1, InstallSnapshot(term + 1, 2, last + 5, term, b"", config, 4, 2, b"abcd", 0),
         "raft_rejected_snapshot_chunk_out_of_range"),
        (2, 1, InstallSnapshot(term + 1, 2, last + 5, term, b"", Config((), ()), 1, 0, b"a", 0),
         "raft_rejected_snapshot_config_without_voters"),
        (2, 1, InstallSnapshot(term + 1, 2, 0, 0, b"", config, 1, 0, b"a", 0),
         "raft_rejected_snapshot_index_out_of_range"),
        (2, 1, TimeoutNow(term, 0), "raft_rejected_leader_not_sender"),
        (1, 0, AppendEntriesResponse(term, True, last + 100, last, 0, 0, 0, 0),
         "raft_rejected_match_beyond_log"),
    ]


@pytest.mark.parametrize("case", range(14))
def test_a_bad_message_is_dropped_and_counted_without_changing_state(case: int) -> None:
    cluster, term = ready_cluster()
    source, destination, message, counter = bad_messages(cluster, term)[case]
    before = cluster.view(destination)
    replies = cluster.inject(source, destination, message)
    assert cluster.node_counters(destination).get(counter, 0) == 1, counter
    after = cluster.view(destination)
    assert (after.last_index, after.last_digest, after.commit_index) == (
        before.last_index, before.last_digest, before.commit_index)
    if counter != "raft_rejected_prev_conflicts_committed":
        assert not [reply for reply in replies if type(reply) is not AppendEntriesResponse
                    or reply.success]
    cluster.submit(0, b"still fine")
    assert cluster.run(until=lambda: cluster.all_applied(b"still fine"))


def test_garbage_bytes_are_counted_by_the_node() -> None:
    cluster, _ = ready_cluster()
    cluster.step(1, Receive(0, b"\x93\xa1x\x01\x02"))
    assert any(name.startswith("rejected_") for name in cluster.node_counters(1))
    assert cluster.view(1).leader == 0


def test_pending_proposals_are_bounded() -> None:
    cluster = Cluster(3, dataclasses.replace(FAST_PARAMS, pending_proposals_max=5))
    cluster.start()
    cluster.elect(0)
    cluster.isolate(0)
    for index in range(8):
        cluster.submit(0, f"p{index}".encode())
    raft = cluster.raft(0)
    assert raft.log.last_index - raft.commit_index == 5
    assert cluster.node_counters(0)["bound_raft_pending_proposals_max"] == 3


def test_memory_stays_flat_over_a_long_run_with_compaction() -> None:
    cluster = Cluster(3, compact_every=50)
    cluster.start()
    cluster.elect(0)
    sizes = []
    for round_ in range(20):
        for index in range(100):
            cluster.submit(0, f"m{round_}.{index}".encode())
        assert cluster.run(until=cluster.caught_up)
        sizes.append(max(len(cluster.raft(node).log.entries) for node in range(3)))
        keys = max(len(cluster.disks[node].recover()) for node in range(3))
        assert keys < 120  # snapshot + at most one interval of entries + a few records
        for node in range(3):
            raft = cluster.raft(node)
            assert len(raft.reads.confirming) == 0
            assert all(len(progress.inflight) <= raft.params.inflight_max
                       for progress in raft.replication.progress.values())
    assert max(sizes) < 100
    assert cluster.view(0).applied_index >= 2000
    cluster.assert_safe()


def test_a_commit_that_makes_smr_submit_more_applies_in_order() -> None:
    """A single voter commits as soon as its write is durable (its durability
    timer of delay 0, thesis 10.2.1); SMR submitting from on_commit must not
    make Raft apply out of order."""
    cluster = Cluster(1)
    cluster.start()
    cluster.elect(0)
    node = cluster.protocol(0)
    original = node.on_commit

    def on_commit(committed: Any) -> None:
        original(committed)
        if committed.batch.startswith(b"chain") and len(committed.batch) < 9:
            node.raft.submit(committed.batch + b"+")

    node.on_commit = on_commit  # type: ignore[method-assign]
    cluster.submit(0, b"chain")
    start = cluster.now
    assert cluster.run(until=lambda: cluster.batches(0)[-1:] == [b"chain++++"])
    assert cluster.now == start  # no time passes: each commit waits only for its sync
    applied = [out.index for _, _, out in cluster.outputs if type(out).__name__ == "Applied"]
    assert applied == sorted(applied)
    assert cluster.batches(0)[-5:] == [b"chain", b"chain+", b"chain++", b"chain+++", b"chain++++"]
