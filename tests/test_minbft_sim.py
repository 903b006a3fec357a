"""MinBFT + SMR + KV in the simulator (n = 2f+1, a USIG per replica): seed
sweeps with every fault kind and Byzantine replicas, each run safe
(agreement), linearizable and live after the heal, within its declared
bounds; a silent primary replaced; a replica behind a peer's stable
checkpoint resumes that peer's stream; determinism of the event log. Longer
sweeps: ``replicaio swarm minbft`` (results in docs/benchmarks.md)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from replicaio.sim.kv_harness import KvWorkload, kv_options
from replicaio.sim.simulator import SimResult, Simulator

ALL_FAULTS = ("crash", "partition", "loss", "dup", "reorder")


def run_seed(seed: int, nodes: int = 3, byzantine_count: int = 0, *,
             faults: tuple[str, ...] = ALL_FAULTS, record: bool = False,
             **changes: Any) -> SimResult:
    """One MinBFT run (f = (n-1)//2) with the KV workload of the PBFT tests."""
    workload = KvWorkload(nemesis_every_us=2_000_000)
    options = kv_options(seed, nodes, faults, workload, byzantine=byzantine_count,
                         adversary=None, protocol="minbft")
    if changes:
        options = replace(options, **changes)
    return Simulator("minbft", options, f=(nodes - 1) // 2, record=record).run()


SWEEP = [(3, 1, seed) for seed in range(1, 11)] + [(5, 2, seed) for seed in range(1, 5)]


@pytest.mark.parametrize(("nodes", "byzantine", "seed"), SWEEP)
def test_every_fault_and_byzantine_replicas_safe_linearizable_and_live(
    nodes: int, byzantine: int, seed: int
) -> None:
    result = run_seed(seed, nodes, byzantine)
    assert result.violations == [], result.violations[:2]
    assert result.stats["linearizable"] is True
    assert result.stats["ops_completed"] > 0


def test_the_sweep_reaches_every_fault_and_the_protocol_s_corners() -> None:
    """The sweep above is not vacuous: its faults happen and reach checkpoints,
    held gaps and restored snapshots."""
    found: dict[str, int] = {}
    for seed in range(1, 5):
        result = run_seed(seed, 3, 1)
        stats = {**result.stats, **result.counters}
        for name in ("crashes_mid_step", "messages_lost", "messages_duplicated",
                     "messages_partitioned", "adversary_sends", "minbft_checkpoints_stable",
                     "minbft_stream_gap_held", "smr_snapshots_restored"):
            found[name] = found.get(name, 0) + int(stats.get(name, 0))
    assert all(value > 0 for value in found.values()), found


def test_a_fault_free_run_executes_every_operation_in_view_zero() -> None:
    result = run_seed(1, 3, 0, faults=())
    assert result.violations == []
    assert result.stats["ops_completed"] == result.stats["ops_invoked"] > 150
    assert result.stats["pbft_view_max"] == 0
    assert result.counters.get("minbft_checkpoints_stable", 0) > 0


def test_a_silent_primary_is_replaced() -> None:
    """Section 4.4: backups whose relayed batches are not executed ask for view 1,
    f+1 requests move them, the new primary's NEW-VIEW starts it."""
    result = run_seed(2, 3, 0, faults=(), byzantine=(0,), behaviours=("silent",))
    assert result.violations == []
    assert result.stats["pbft_view_max"] >= 1
    assert result.stats["ops_completed"] > 50
    assert result.counters.get("minbft_primary_suspected", 0) > 0
    assert result.counters.get("minbft_views_started", 0) > 0


def test_a_replica_behind_a_peers_stable_checkpoint_resumes_its_stream() -> None:
    """Seed 1 (n=3, one Byzantine replica; seed 14 until backups forwarded what
    they wait for on suspicion, 2026-12-06): a correct replica trimmed what
    another waited for, which resumes its stream at its CHECKPOINT
    (``Resume``), and the run completes."""
    result = run_seed(1, 3, 1)
    assert result.violations == []
    assert result.counters.get("minbft_streams_resumed", 0) > 0


def test_the_event_log_is_a_function_of_the_seed() -> None:
    first, second = run_seed(5, 3, 1, record=True), run_seed(5, 3, 1, record=True)
    assert first.log_sha256 == second.log_sha256


@pytest.mark.parametrize("seed", [382, 67])
def test_seeds_found_by_the_goal_sweep_n5_stay_safe_and_live(seed: int) -> None:
    """Found by `swarm minbft --nodes 5 --byzantine 2 --seeds 500`. Seed 382 broke
    agreement: a replica's VIEW-CHANGE log began after its anchor CHECKPOINT,
    so its commitments to numbers above the checkpoint certified *before* that
    CHECKPOINT (a NEW-VIEW deciding 17..48, COMMITs that outrun execution) were
    left out, and the next NEW-VIEW chose null where a correct replica had
    executed batches (``Minbft.log_start``). Seed 67 stalled: a backup's COMMITs
    taken from its stream before the primary's NEW-VIEW were dropped, one
    commitment short of f+1 for ever (``Minbft.defer``)."""
    result = run_seed(seed, 5, 2)
    assert result.violations == [], result.violations[:2]
    assert result.stats["linearizable"] is True
