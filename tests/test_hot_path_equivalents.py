"""What the simulator's hot path keeps instead of recomputing (ADR 0047) equals
what it replaced: ``RaftLog.last_index``, a field every mutator maintains, is
``base_index + len(entries)`` after appends, truncations, compactions, installed
snapshots and a restart; ``weighted_choice`` and ``randbelow`` draw what
``random.choices`` and ``random.randrange`` draw and leave the generator where
they leave it; the harness's table of the operation mix draws what
``weighted_choice`` draws, and ``unregistered`` is what registration fills."""

from __future__ import annotations

import dataclasses
import random

import msgspec
import pytest
from test_raft_cluster import FAST_PARAMS, Cluster
from test_raft_snapshot import follower_with_log, snapshot_message

from replicaio.core.config import ClusterConfig, Resilience
from replicaio.protocols.raft.membership import unregistered
from replicaio.protocols.raft.messages import UNREGISTERED, Config
from replicaio.protocols.raft.state import RaftLog
from replicaio.sim.kv_harness import KvHarness, KvWorkload, mix_table, randbelow, weighted_choice


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


def test_the_planned_kind_from_the_mix_table_is_weighted_choices_draw() -> None:
    """``KvHarness.plan`` draws the kind from a table made once per mix
    (``mix_table``): the same kinds, in the same order, as ``weighted_choice``
    over the mix, and the same generator state after; a new mix, a new table."""
    workload = KvWorkload(ops=400, mix=(("get", 5), ("put", 3), ("putx", 0), ("cas", 2)))
    harness = KvHarness(ClusterConfig(n=3, f=1, resilience=Resilience.CRASH))
    harness.workload = workload
    for seed in range(20):
        harness.rng, theirs = random.Random(seed), random.Random(seed)
        kinds = [kind for kind, _ in workload.mix]
        weights = [weight for _, weight in workload.mix]
        for _ in range(30):
            assert harness.plan().kind == weighted_choice(theirs, kinds, weights)
            # (plan draws more after the kind: the key, a value, read_via_log)
            theirs.setstate(harness.rng.getstate())
    table = harness.plan_table
    assert table is not None and table[0] is workload.mix and table[4] is True
    harness.workload = dataclasses.replace(workload, mix=(("get", 1), ("put", 1)))
    harness.plan()
    assert harness.plan_table is not None and harness.plan_table[4] is False
    with pytest.raises(ValueError, match="finite number above zero"):
        mix_table((("get", 0),))


def test_unregistered_says_whether_registration_would_fill_anything() -> None:
    """``Membership.maybe_next_change`` builds ``registration(config)`` only if
    a member's identity is unregistered: with none, it would equal ``config``."""
    cluster = Cluster(3, FAST_PARAMS)
    cluster.start()
    cluster.elect(0)
    cluster.submit(0, b"a")
    assert cluster.run(until=lambda: cluster.all_applied(b"a"))
    membership = cluster.raft(0).membership
    config = cluster.raft(0).log.config
    assert not unregistered(config)
    assert membership.registration(config) == config
    voters = ((config.voters[0][0], UNREGISTERED), *config.voters[1:])
    assert unregistered(Config(voters, config.learners, config.promoting))
    learners = ((7, UNREGISTERED),)
    assert unregistered(Config(config.voters, learners, config.promoting))
