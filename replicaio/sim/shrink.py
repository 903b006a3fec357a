"""Shrinking a failing run to a smaller fault schedule that still fails.

Given the options of a failing run, try simpler variants, one change at a
time, and keep a change when the run still violates the same property:
drop crashes, drop partitions, switch off loss, duplication and reordering,
turn mid-step crashes into clean ones, and make fewer requests. The result is
a local minimum (no single change keeps the failure), printed as options
JSON that ``replicaio sim --options FILE`` replays exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from replicaio.sim.options import SimOptions
from replicaio.sim.simulator import simulate

SHRINK_RUNS_MAX = 200


@dataclass(frozen=True, slots=True)
class ShrinkResult:
    """The smallest failing options found, and how the search went."""

    options: SimOptions
    property: str
    runs: int
    steps: int


def fails(protocol: str, f: int | None, options: SimOptions, property_name: str) -> bool:
    """Whether a run with ``options`` violates ``property_name``."""
    try:
        result = simulate(protocol, options, f=f, record=False)
    except AssertionError:
        return property_name == "assertion"
    return any(violation["property"] == property_name for violation in result.violations)


def candidates(options: SimOptions) -> Iterator[SimOptions]:
    """Simpler variants of ``options``, simplest first."""
    for index in range(len(options.crashes)):
        yield replace(options, crashes=options.crashes[:index] + options.crashes[index + 1 :])
    for index in range(len(options.partitions)):
        yield replace(
            options, partitions=options.partitions[:index] + options.partitions[index + 1 :]
        )
    for index in range(len(options.slow)):
        yield replace(options, slow=options.slow[:index] + options.slow[index + 1 :])
    if options.loss:
        yield replace(options, loss=0.0)
    if options.duplicate:
        yield replace(options, duplicate=0.0)
    if options.reorder_us:
        yield replace(options, reorder_us=0)
    if options.sync_us_mean:
        yield replace(options, sync_us_mean=0)  # every sync at once again
    bound = options.clock_drift_ppm
    if any(abs(rate) > bound for rate in options.clock_rates_ppm):
        # the clock fault off: every rate back within the bound
        yield replace(options, clock_rates_ppm=tuple(
            max(-bound, min(bound, rate)) for rate in options.clock_rates_ppm
        ))
    for index, crash in enumerate(options.crashes):
        if crash.mid_step:
            clean = replace(crash, mid_step=False, keep_unsynced=0)
            yield replace(
                options,
                crashes=(*options.crashes[:index], clean, *options.crashes[index + 1:]),
            )
    if options.requests_per_node > 1:
        yield replace(options, requests_per_node=options.requests_per_node - 1)


def shrink(
    protocol: str,
    options: SimOptions,
    property_name: str,
    *,
    f: int | None = None,
    runs_max: int = SHRINK_RUNS_MAX,
    failing: Callable[[str, int | None, SimOptions, str], bool] = fails,
) -> ShrinkResult:
    """Greedy one-change-at-a-time shrinking; see the module docstring."""
    runs = 0
    steps = 0
    current = options
    progress = True
    while progress and runs < runs_max:
        progress = False
        for candidate in candidates(current):
            runs += 1
            if failing(protocol, f, candidate, property_name):
                current = candidate
                steps += 1
                progress = True
                break
            if runs >= runs_max:
                break
    return ShrinkResult(current, property_name, runs, steps)
