"""Window proofs of a violation and explanations of a failing key.

See the package docstring (``replicaio.check.linearizability``), point 5: a
window proof shows that the operations of a time window have no
linearization from any state; otherwise a failure is explained by the
smallest failing prefix, found by binary search over cut times.
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from replicaio.check.history import (
    INFO,
    OK,
    Operation,
    describe_operation,
)
from replicaio.check.linearizability.model import Model
from replicaio.check.linearizability.search import (
    BudgetExhausted,
    LimitReached,
    Search,
    searchable_operations,
)

CONTEXT_OPERATIONS_MAX = 8
"""Operations completed before the culprit's call that an explanation shows."""

WATCHED_STATES_MAX = 16
"""Distinct model states an explanation lists for the culprit."""

WINDOW_CONFIGURATIONS_MAX = 20_000
"""Configurations one window search (from one initial state) may enter."""

WINDOW_REQUIRED_MAX = 1024
"""Completed operations a window may span; windows grow 1, 4, 16, ... up to it."""

COVERING_STATES_MAX = 256
"""Initial states a window proof may try; more and the window is not tried."""


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why one key's history is not linearizable: a failing prefix or window.

    ``start is None``: the key's first ``operations`` operations (after
    dropping ``fail`` ones), cut at ``culprit``'s return, have no
    linearization; operations still running at the cut count as ``info``.
    If ``minimal``, the prefix cut at the previous return has one.

    ``start`` a time: the operations running between ``start`` and the
    culprit's return (``operations`` of them, with every earlier ``info``
    operation, and those running at either end counted as ``info``) have no
    linearization *from any state* the key may have held at ``start``: a
    proof that needs nothing before it. ``minimal`` is then ``False``.

    ``window`` is what to read: the culprit, the operations overlapping it
    and up to ``CONTEXT_OPERATIONS_MAX`` completed just before it (for a
    window proof: every completed one in it), and ``info`` operations called
    among them. ``culprit_states`` are states in which the search tried the
    culprit and its output or precondition did not match (not always all).
    """

    key: str
    culprit: Operation
    window: tuple[Operation, ...]
    operations: int
    start: float | None
    culprit_states: tuple[str, ...]
    minimal: bool

    def describe(self) -> str:
        if self.start is None:
            scope = (
                f"no linearization of its first {self.operations} operations "
                f"(cut at {self.culprit.return_!r})"
                + ("" if self.minimal else " [not minimized: budget exhausted]")
            )
        else:
            scope = (
                f"no linearization, from any state, of the {self.operations} operations "
                f"running from {self.start!r} to {self.culprit.return_!r}"
            )
        lines = [
            f"key {self.key!r}: {scope}",
            f"  cannot linearize: {describe_operation(self.culprit)}",
        ]
        if self.culprit_states:
            lines.append(f"  tried it in states: {', '.join(self.culprit_states)}")
        lines.append("  window:")
        for op in self.window:
            marker = "  >> " if op == self.culprit else "     "
            lines.append(marker + describe_operation(op))
        return "\n".join(lines)



def _prefix(ops: Sequence[Operation], cut: float) -> list[Operation]:
    """The history as it stood at time ``cut``: later calls vanish, running ones become info."""
    prefix: list[Operation] = []
    for op in ops:
        if op.call > cut:
            continue
        if op.status == OK and op.return_ is not None and op.return_ > cut:
            op = replace(op, status=INFO, output=None, return_=None)
        prefix.append(op)
    return prefix


def _window(ops: Sequence[Operation], culprit: Operation) -> tuple[Operation, ...]:
    """The culprit, completed operations overlapping it, up to ``CONTEXT_OPERATIONS_MAX``
    completed before it, and the ``info`` operations called since the first of those."""
    assert culprit.return_ is not None
    completed = [op for op in ops if op.status == OK]
    overlapping = [
        op
        for op in completed
        if op.call <= culprit.return_ and op.return_ is not None and op.return_ >= culprit.call
    ]
    before = sorted(
        (op for op in completed if op.return_ is not None and op.return_ < culprit.call),
        key=lambda op: (op.return_, op.call),
    )[-CONTEXT_OPERATIONS_MAX:]
    start = min(op.call for op in before + overlapping)
    unknown = [op for op in ops if op.status == INFO and start <= op.call <= culprit.return_]
    return tuple(sorted(before + overlapping + unknown, key=lambda op: (op.call, op.client)))


def explain(
    key: str, ops: Sequence[Operation], model: Model[Any], deadline: float | None
) -> Explanation:
    """Binary-search the smallest failing prefix (cut at a return time) of a failing part."""
    cuts = sorted({op.return_ for op in ops if op.status == OK and op.return_ is not None})
    low, high = -1, len(cuts) - 1  # prefix at cuts[low] is linearizable, at cuts[high] it is not
    minimal = True
    while high - low > 1:
        middle = (low + high) // 2
        try:
            prefix = searchable_operations(_prefix(ops, cuts[middle]), model)
            outcome = Search(prefix, model).run(deadline)
        except BudgetExhausted:
            minimal = False
            break
        if outcome.linearizable:
            low = middle
        else:
            high = middle
    cut = cuts[high]
    prefix = searchable_operations(_prefix(ops, cut), model)
    search = Search(prefix, model)
    culprit_index = min(
        (c for c, op in enumerate(search.ops) if op.status == OK and op.return_ == cut),
        key=lambda c: (search.ops[c].call, c),
    )
    watched: set[Hashable] = set()
    with contextlib.suppress(BudgetExhausted):  # the states are a hint; keep what we saw
        search.run(deadline, culprit_index, watched)
    described = sorted(model.describe_state(state) for state in watched)
    culprit = search.ops[culprit_index]
    return Explanation(
        key=key,
        culprit=culprit,
        window=_window([op for op in ops if op.call <= cut], culprit),
        operations=len(prefix),
        start=None,
        culprit_states=tuple(described[:WATCHED_STATES_MAX]),
        minimal=minimal,
    )


def _reaches(op: Operation, start: float) -> bool:
    """Whether ``op`` runs at or after ``start`` (an ``info`` one: was called since)."""
    if op.status == INFO or op.return_ is None:
        return op.call >= start
    return op.return_ >= start


def _window_problem(ops: Sequence[Operation], start: float, end: float) -> list[Operation]:
    """What must be linearizable between ``start`` and ``end`` if the whole is.

    Operations that returned before ``start`` are gone (they took effect
    before it); ``info`` operations called by ``end`` and operations running
    at ``start`` or ``end`` become optional with unknown output.
    """
    window: list[Operation] = []
    for op in ops:
        if op.call > end or (op.status == OK and not _reaches(op, start)):
            continue
        running_at_an_end = op.call <= start or (op.return_ is not None and op.return_ > end)
        if op.status == OK and running_at_an_end:
            op = replace(op, status=INFO, output=None, return_=None)
        window.append(op)
    return window


def refuted_from_every_state(
    window: Sequence[Operation],
    model: Model[Any],
    deadline: float | None,
    culprit: Operation,
    watched: set[Hashable],
    allowance: list[int] | None = None,
) -> bool:
    """Whether no state at the window's start admits a linearization of ``window``.

    ``allowance[0]``: configurations all window searches may still enter
    (decremented); ``False`` ("not refuted") once it runs out.
    """
    states = model.covering_states(window)
    if states is None or len(states) > COVERING_STATES_MAX:
        return False
    searchable = searchable_operations(window, model)
    for initial in states:
        search = Search(searchable, model, initial)
        watch = search.ops.index(culprit) if culprit in search.ops else None
        limit = WINDOW_CONFIGURATIONS_MAX if allowance is None else allowance[0]
        limit = min(limit, WINDOW_CONFIGURATIONS_MAX)
        try:
            outcome = search.run(deadline, watch, watched, limit)
        except LimitReached:
            if allowance is not None:
                allowance[0] -= limit
            return False
        if allowance is not None:
            allowance[0] -= outcome.configurations
        if outcome.linearizable:
            return False
    return True


def prove_by_window(
    key: str,
    ops: Sequence[Operation],
    model: Model[Any],
    search: Search,
    deepest: int,
    deadline: float | None,
    configurations_max: int | None = None,
) -> Explanation | None:
    """Try windows ending where the paused search got stuck, growing 1, 4, 16, ... back,
    entering at most ``configurations_max`` configurations in all."""
    allowance = None if configurations_max is None else [configurations_max]
    position = min(deepest, len(search.by_return) - 1)
    culprit = search.ops[search.by_return[position]]
    end = culprit.return_
    assert end is not None
    size = 1
    while size <= min(WINDOW_REQUIRED_MAX, position):
        start = search.ops[search.by_return[position - size]].return_
        assert start is not None
        window = _window_problem(ops, start, end)
        watched: set[Hashable] = set()
        if allowance is not None and allowance[0] <= 0:
            return None
        if refuted_from_every_state(window, model, deadline, culprit, watched, allowance):
            described = sorted(model.describe_state(state) for state in watched)
            shown = [op for op in ops if op.call <= end and _reaches(op, start)]
            return Explanation(
                key=key,
                culprit=culprit,
                window=tuple(sorted(shown, key=lambda op: (op.call, op.client))),
                operations=len(window),
                start=start,
                culprit_states=tuple(described[:WATCHED_STATES_MAX]),
                minimal=False,
            )
        size *= 4
    return None

