"""A group with sparse traffic whose primaries are cut off in turn: the runs
that show PBFT's and MinBFT's idle back-off signal (ADR 0040, 0046;
``test_pbft_timer_backoff.py``, ``test_minbft_timer_backoff.py``)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Final

from replicaio.sim.options import Partition, SimOptions

# One client with up to 8 s of think time (so that a view executes few
# batches), long deadlines and many attempts (it must outlast the cuts).
SPARSE_CLIENT: Final[dict[str, Any]] = {
    "clients": 1, "ops": 30, "think_us_max": 8_000_000, "op_deadline_us": 60_000_000,
    "attempts_max": 200,
}
ROUNDS: Final = 8
CUT_US: Final = 10_000_000
GAP_US: Final = 1_000_000


def cut_off_in_turn(options: SimOptions, nodes: int, liveness_after_us: int) -> SimOptions:
    """``options`` with round k (of ``ROUNDS``, ``GAP_US`` apart) cutting off
    replica k mod ``nodes`` (the primary of view k when each round changes one
    view) for ``CUT_US``; every operation must complete within
    ``liveness_after_us`` of the heal."""
    safety_us = GAP_US + ROUNDS * (CUT_US + GAP_US) + GAP_US
    return replace(
        options, faults=("partition",),
        partitions=tuple(
            Partition(GAP_US + k * (CUT_US + GAP_US), GAP_US + k * (CUT_US + GAP_US) + CUT_US,
                      (k % nodes,), True) for k in range(ROUNDS)),
        safety_us=safety_us, liveness_us=safety_us + liveness_after_us,
    )
