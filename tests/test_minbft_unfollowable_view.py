"""A MinBFT backup that resumed a peer's stream cannot take part in the view it
is in (docs/minbft.md, *A backup that cannot follow*): the peer's PREPAREs and
COMMITs count for it again only in a view entered later. Until a view change
it follows by state transfer alone and counts towards no quorum.

Found live (the CI run of the lost-USIG cluster test: reads through the
recovered replica refused for 20 s) and turned into this schedule: replica 2
is cut off long enough for the others' stable checkpoint to pass it, so it
resumes their streams when the partition heals; then replica 1 crashes for
four seconds. Replicas 0 and 2 are f+1 = 2, a quorum, yet before the fix no
operation completed until replica 1 came back: the primary's PREPAREs
collected no COMMIT (2 could not take them) and one backup's request could not
end the view. Now the primary's own timer ends a view whose PREPAREs do not
execute, and a backup that cannot follow asks its primary to step down."""

from __future__ import annotations

from dataclasses import replace

from replicaio.sim.kv_harness import KvHarness, KvWorkload, kv_options
from replicaio.sim.options import Crash, Partition
from replicaio.sim.simulator import SimResult, Simulator

HEAL_US = 2_500_000
CRASH_US, DOWN_US = 3_000_000, 4_000_000


def run(seed: int, crash: bool) -> tuple[SimResult, list[float]]:
    """The schedule of the module docstring; the run and the return times (µs)
    of the operations that completed."""
    options = kv_options(seed, 3, (), KvWorkload(ops=2000, clients=4), protocol="minbft")
    options = replace(options, partitions=(Partition(200_000, HEAL_US, (2,), True),),
                      crashes=(Crash(1, CRASH_US, DOWN_US, False, 0),) if crash else ())
    simulator = Simulator("minbft", options, f=1, record=False)
    result = simulator.run()
    harness = simulator.harness
    assert isinstance(harness, KvHarness)
    returned = [op.return_ for op in harness.operations()
                if op.status == "ok" and op.return_ is not None]
    return result, returned


def test_a_quorum_with_a_resumed_backup_makes_progress_while_another_replica_is_down() -> None:
    result, returned = run(1, crash=True)
    assert result.violations == []
    assert result.counters.get("minbft_streams_resumed", 0) > 0  # the schedule did its part
    # One view change to replica 1's view (it is down: its new-view timer
    # expires) and one more to replica 2's: well within the 4 s outage.
    during = [at for at in returned if CRASH_US + 1_500_000 <= at < CRASH_US + DOWN_US]
    assert len(during) > 50, f"{len(during)} operations completed while replica 1 was down"


def test_a_backup_that_cannot_follow_makes_its_primary_step_down() -> None:
    result, _ = run(1, crash=False)
    assert result.violations == []
    assert result.stats["linearizable"] is True
    assert result.counters.get("minbft_view_unfollowable", 0) >= 1
    # Once at least (twice since backups forward what they wait for on
    # suspicion, 2026-12-06, which moved the schedule).
    assert result.counters.get("minbft_primary_steps_down", 0) >= 1
    assert result.counters.get("minbft_views_started", 0) >= 1
