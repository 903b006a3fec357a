"""MinBFT's timers back off on failed views and are reset only by progress
(Castro and Liskov, section 4.5.2; docs/minbft.md, *Timers that back off on
progress*; ADR 0039): with a timeout shorter than one batch round nothing
executes within a timeout, and a replica doubles every timer of a view per
view before it that executed nothing, so the group settles on a timeout long
enough for a round. The rule before 2026-12-06
(``minbft-backoff-reset-by-view-start``: the back-off reset when a view
starts, executed or not; the request and primary timers never doubled)
changes views over the same run three to four times as often."""

from __future__ import annotations

import pytest
from test_minbft_request_timer import queued_options

from replicaio.sim.simulator import SimResult, Simulator


def run(protocol: str, seed: int) -> SimResult:
    """40 clients without think time, 5-6 ms links, 2 ms syncs and an 8 ms
    timer: shorter than one batch round (``test_minbft_request_timer.py``)."""
    return Simulator(f"{protocol}:view_timeout=8", queued_options(seed), f=1).run()


# Views started (pbft_view_max), seeds 1-6: 1, 0, 36, 54, 0, 40 with the back-off
# reset by progress; 1, 0, 120, 155, 0, 170 with the old rule.
@pytest.mark.parametrize("seed", [3, 6])
def test_a_timer_shorter_than_a_round_backs_off_until_views_execute(seed: int) -> None:
    fixed = run("minbft", seed)
    assert fixed.violations == [], fixed.violations[:2]
    assert fixed.stats["ops_completed"] == fixed.stats["ops_invoked"]
    old = run("minbft-backoff-reset-by-view-start", seed)
    assert old.violations == [], old.violations[:2]
    assert old.stats["pbft_view_max"] >= 2 * fixed.stats["pbft_view_max"] + 20, (
        old.stats["pbft_view_max"], fixed.stats["pbft_view_max"])
    # The primary's own timer doubles too: fewer new primaries give up.
    assert old.counters.get("minbft_primary_stalled", 0) > \
        2 * fixed.counters.get("minbft_primary_stalled", 0)
