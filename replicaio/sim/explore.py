"""Enumerating choice points: every way a run's choices can go, checked.

The simulator normally resolves a correct node's choice points (``first``
with several lines available, ``ctx.choose``, ``ctx.random_below``) with a
seeded draw. The explorer instead enumerates them: it re-executes the run
(same seed, so the same network and faults) with every sequence of choice
outcomes, depth first, and runs every checker on each. Choices are made in a
deterministic order, so a sequence of outcomes identifies one execution
(stateless model checking by re-execution).

The search is exhaustive when it ends before ``runs_max``; the result says
whether it was. Byzantine nodes' choices stay with their adversary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from replicaio.sim.options import SimOptions
from replicaio.sim.simulator import simulate

RUNS_MAX = 1000


@dataclass(slots=True)
class ExploreResult:
    """What exploring the choices of one run found."""

    runs: int = 0
    exhaustive: bool = False
    choice_points_max: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)


def explore(
    protocol: str,
    options: SimOptions,
    *,
    f: int | None = None,
    runs_max: int = RUNS_MAX,
    failures_max: int = 5,
    on_run: Callable[[bool], None] | None = None,
) -> ExploreResult:
    """Run ``options`` once per sequence of choice outcomes; see the module docstring.
    ``on_run(failed)`` is called after each run (a progress bar)."""
    result = ExploreResult()
    # Pending branches, generated lazily (a random_below(150_000) choice point
    # must not push 150k prefixes): (prefix, next alternative, count).
    stack: list[tuple[list[int], int, int]] = [([], 0, 1)]
    while stack and result.runs < runs_max and len(result.failures) < failures_max:
        prefix, alternative, count = stack.pop()
        if alternative + 1 < count:
            stack.append((prefix, alternative + 1, count))
        forced = [*prefix, alternative] if count > 1 else prefix
        made: list[tuple[int, int]] = []

        def choose(node: int, label: str, count: int, forced: list[int] = forced,
                   made: list[tuple[int, int]] = made) -> int:
            position = len(made)
            index = forced[position] if position < len(forced) else 0
            made.append((index, count))
            return index

        run = simulate(protocol, options, f=f, record=False, choose=choose)
        result.runs += 1
        result.choice_points_max = max(result.choice_points_max, len(made))
        if run.violations:
            result.failures.append({"choices": [index for index, _ in made],
                                    "violations": run.violations})
        if on_run is not None:
            on_run(bool(run.violations))
        # Every choice made past the forced prefix took alternative 0: branch on
        # the others, deepest first (popped first).
        for position in range(len(forced), len(made)):
            taken, choices = made[position]
            assert taken == 0
            if choices > 1:
                stack.append(([index for index, _ in made[:position]], 1, choices))
    result.exhaustive = not stack and len(result.failures) < failures_max
    return result
