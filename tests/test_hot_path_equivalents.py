"""What the simulator's hot path keeps instead of recomputing (ADR 0047) equals
what it replaced: ``RaftLog.last_index``, a field every mutator maintains, is
``base_index + len(entries)`` after appends, truncations, compactions, installed
snapshots and a restart; ``weighted_choice`` and ``randbelow`` draw what
``random.choices`` and ``random.randrange`` draw and leave the generator where
they leave it."""

from __future__ import annotations

import dataclasses
import random

import msgspec
import pytest
from test_raft_cluster import FAST_PARAMS, Cluster
from test_raft_snapshot import follower_with_log, snapshot_message

from replicaio.protocols.raft.state import RaftLog
from replicaio.sim.kv_harness import randbelow, weighted_choice


def consistent(log: RaftLog) -> bool:
    return bool(log.last_index == log.base_index + len(log.entries))


def every_log_consistent(cluster: Cluster) -> bool:
    return all(consistent(cluster.raft(node).log) for node in cluster.up())


def test_last_index_follows_appends_compactions_and_a_restart() -> None:
    params = dataclasses.replace(FAST_PARAMS, snapshot_trailing_entries_max=3)
    cluster = Cluster(3, params, compact_every=5)
    cluster.start()
    cluster.elect(0)
    assert every_log_consistent(cluster)
    for index in range(12):
        cluster.submit(0, f"c{index}".encode())
    assert cluster.run(until=lambda: cluster.all_applied(b"c11"))
    assert cluster.raft(1).log.base_index > 0  # compacted: the base moved
    assert every_log_consistent(cluster)
    cluster.crash(1)
    cluster.restart(1)
    assert every_log_consistent(cluster)
    cluster.submit(0, b"after")
    assert cluster.run(until=lambda: cluster.all_applied(b"after"))
    assert every_log_consistent(cluster)


def test_last_index_follows_a_matching_and_a_conflicting_snapshot() -> None:
    cluster, term, commit = follower_with_log()
    data = (commit + 1).to_bytes(8, "big") + b"state"
    cluster.inject(0, 1, snapshot_message(cluster, term, commit + 1, term, data))
    assert cluster.raft(1).log.entries  # the entries after the snapshot stay
    assert every_log_consistent(cluster)
    cluster, term, commit = follower_with_log()
    data = (commit + 1).to_bytes(8, "big") + b"other"
    message = msgspec.structs.replace(
        snapshot_message(cluster, term + 1, commit + 1, term + 1, data), leader=2
    )
    cluster.inject(2, 1, message)
    assert cluster.raft(1).log.last_index == commit + 1  # the whole log went
    assert every_log_consistent(cluster)


@pytest.mark.parametrize(
    ("population", "weights"),
    [(["get", "put", "cas", "incr"], [5, 3, 1, 1]), (["a", "b"], [0.25, 0.75]),
     (["x", "y", "z"], [1, 0, 2]), (["only"], [3])],
)
def test_weighted_choice_draws_what_random_choices_draws(
    population: list[str], weights: list[float]
) -> None:
    for seed in range(50):
        ours, theirs = random.Random(seed), random.Random(seed)
        drawn = [weighted_choice(ours, population, weights) for _ in range(40)]
        assert drawn == [theirs.choices(population, weights)[0] for _ in range(40)]
        assert ours.getstate() == theirs.getstate()


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 9, 16, 100, 12_345, (1 << 40) + 3])
def test_randbelow_draws_what_randrange_draws(n: int) -> None:
    for seed in range(50):
        ours, theirs = random.Random(seed), random.Random(seed)
        assert [randbelow(ours, n) for _ in range(20)] == [theirs.randrange(n) for _ in range(20)]
        assert ours.getstate() == theirs.getstate()
    with pytest.raises(ValueError, match="empty range"):
        randbelow(random.Random(0), 0)
