"""MinBFT's timers back off per view without progress and only progress resets
them (Castro and Liskov, section 4.5.2; docs/minbft.md, *Timers that back off on
progress*; ADR 0039, and ADR 0046: PBFT's rule of ADR 0040, shared as
``replicaio.core.patience.ViewBackoff``). With a timeout shorter than one batch
round nothing executes within a timeout; every timer of a view is doubled per
view in a row before it without progress (``PROGRESS_BATCHES`` executed in it,
or a backup's ``PATIENCE_TIMEOUTS`` request timeouts in a row with nothing
waited for), at least once per primary a backup asked to replace since it last
waited for nothing, and a view keeps the doubling it was entered with, so the
group settles on a timeout long enough for a round.

Two older rules change views more often over the same runs:
``minbft-backoff-reset-by-view-start`` (before ADR 0039: the back-off reset
when a view starts, executed or not; the request and primary timers never
doubled) and ``minbft-backoff-reset-by-one-batch`` (ADR 0039's rule, MinBFT's
until ADR 0046: one batch executed in a view brought its timers back to one
timeout, so a timer shorter than a round was back after each view's first
batch)."""

from __future__ import annotations

from typing import Any

import pytest
from sparse_traffic import SPARSE_CLIENT, cut_off_in_turn
from test_minbft_request_timer import queued_options

from replicaio.check.history import INCR
from replicaio.sim.kv_harness import KvWorkload, kv_options
from replicaio.sim.simulator import SimResult, Simulator


def run(protocol: str, seed: int) -> SimResult:
    """40 clients without think time, 5-6 ms links, 2 ms syncs and an 8 ms
    timer: shorter than one batch round (``test_minbft_request_timer.py``)."""
    result = Simulator(f"{protocol}:view_timeout=8", queued_options(seed), f=1).run()
    assert result.violations == [], (protocol, result.violations[:2])
    return result


# Views started (pbft_view_max), seeds 1-6, measured 2026-12-06 (ADR 0046):
# 1, 0, 5, 7, 0, 8 with this rule, every operation completed; 1, 0, 36, 54, 0,
# 40 with the one-batch rule (ADR 0039); 1, 0, 120, 155, 0, 170 with the
# view-start rule (seeds 3, 4, 6 issued only 478, 382, 450 of 640 operations).
# Seeds 7-12: 1, 1, 1, 1, 1, 5 (one-batch 2, 1, 1, 1, 1, 62).
@pytest.mark.parametrize("seed", [3, 6])
def test_a_timer_shorter_than_a_round_backs_off_until_views_execute(seed: int) -> None:
    fixed = run("minbft", seed)
    assert fixed.stats["ops_completed"] == fixed.stats["ops_invoked"] == 640
    old = run("minbft-backoff-reset-by-view-start", seed)
    assert old.stats["pbft_view_max"] >= 2 * fixed.stats["pbft_view_max"] + 20, (
        old.stats["pbft_view_max"], fixed.stats["pbft_view_max"])
    # The primary's own timer doubles too: fewer new primaries give up.
    assert old.counters.get("minbft_primary_stalled", 0) > \
        2 * fixed.counters.get("minbft_primary_stalled", 0)


@pytest.mark.parametrize("seed", [3, 6])
def test_one_batch_executed_does_not_reset_the_back_off(seed: int) -> None:
    """ADR 0039's rule: each view's first batch (the NEW-VIEW's re-proposals,
    or the new primary's first) brought its timers back to 8 ms, and the next
    timeout replaced the primary again."""
    fixed = run("minbft", seed)
    one_batch = run("minbft-backoff-reset-by-one-batch", seed)
    assert one_batch.stats["pbft_view_max"] >= 3 * fixed.stats["pbft_view_max"], (
        one_batch.stats["pbft_view_max"], fixed.stats["pbft_view_max"])
    assert one_batch.counters.get("minbft_primary_suspected", 0) >= \
        3 * fixed.counters.get("minbft_primary_suspected", 0)
    assert one_batch.counters.get("minbft_primary_stalled", 0) >= \
        3 * fixed.counters.get("minbft_primary_stalled", 0)


def sparse_run(protocol: str, **workload: Any) -> SimResult:
    """One client with up to 8 s of think time (``workload`` changes it), so
    that a view executes few batches, and the primary of each of eight views
    cut off in turn for 10 s (round k cuts off replica k mod 3); every
    operation must complete within 12 s of the heal (the client may be
    thinking for 8 s when it comes: the harness wakes only clients waiting for
    nothing)."""
    base = kv_options(1, 3, (), KvWorkload(**{**SPARSE_CLIENT, **workload}), protocol="minbft")
    return Simulator(protocol, cut_off_in_turn(base, 3, 12_000_000), f=1, record=False).run()


def test_a_group_with_sparse_traffic_replaces_each_cut_off_primary() -> None:
    """Progress counted in four batches does not pile up a doubling per view
    a sparse group changes. Measured 2026-12-06: 9 views, 22 operations, all
    completed (the one-batch and view-start rules 9 and 19); with the back-off
    never reset (``minbft-backoff-never-reset``) 7 views and 16 operations: two
    cut-off primaries were never replaced while they were cut off."""
    fixed = sparse_run("minbft")
    assert fixed.violations == [], fixed.violations[:2]
    assert fixed.stats["pbft_view_max"] == 9
    assert fixed.stats["ops_completed"] == fixed.stats["ops_invoked"]
    never = sparse_run("minbft-backoff-never-reset")
    assert never.stats["pbft_view_max"] < fixed.stats["pbft_view_max"]
    assert never.stats["ops_completed"] <= fixed.stats["ops_completed"] - 5


def test_a_group_with_sparse_writes_counts_idle_timeouts_as_progress() -> None:
    """The idle signal (``ViewChanges.on_idle``: a backup's
    ``PATIENCE_TIMEOUTS`` request timeouts in a row with nothing waited for
    count as progress, ADR 0046). With reads (barriers) and up to 8 s of think
    time MinBFT's views execute four batches anyway; with INCRs only and up to
    16 s, some do not. Measured 2026-12-07: 5 views, 11 operations, every one
    completed; without the idle signal (``minbft-backoff-idle-not-progress``)
    the views that executed fewer than four batches each added a doubling, and
    after the heal no replica executed anything within 12 s (the client's
    last operation never completed); the back-off never reset
    (``minbft-backoff-never-reset``) fails alike. Seeds 2-6 of the same run
    pass either way (the idle signal changes 1 of 6 seeds with eight rounds,
    and with twelve rounds seed 1 again: 9 views against 6)."""
    sparse = {"think_us_max": 16_000_000, "mix": ((INCR, 1),)}
    fixed = sparse_run("minbft", **sparse)
    assert fixed.violations == [], fixed.violations[:2]
    assert fixed.stats["ops_completed"] == fixed.stats["ops_invoked"]
    for broken in ("minbft-backoff-idle-not-progress", "minbft-backoff-never-reset"):
        result = sparse_run(broken, **sparse)
        assert {v["property"] for v in result.violations} == {"liveness"}, \
            (broken, result.violations[:2])
