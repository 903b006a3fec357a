"""Linearizability checking of client histories against a sequential model.

Modules: ``model`` (the ``Model`` protocol, ``SearchHints``, the key-value
model), ``search`` (the search for one part), ``explanation`` (window proofs and
explanations of a failure); this module checks a whole history.

Theory of operation
-------------------
A history is *linearizable* (Herlihy & Wing, 1990) if every completed
operation can be given a point between its call and its return such that
executing the operations one by one in the order of their points, on the
sequential model, produces exactly the outputs the clients saw. Operations
whose status is ``fail`` did not happen and are dropped; an ``info``
operation (unknown outcome) is *optional*: it may take effect at any point
after its call, or never, and its output is unknown.

1. **P-compositionality** (Horn & Kroening, 2015). The key-value model is a
   product of independent per-key registers, so the history is linearizable
   iff each independent part's sub-history is. The ``Model.partition`` hook
   splits the history; each part is searched alone. A part is one key, or,
   where transactions (``txn``: several operations at one point) tie keys
   together, every key a chain of transactions connects, with all their
   operations (the part's state is then the values of all its keys).
2. **Search** (Wing & Gong, 1993; Lowe, "Testing for linearizability", 2017).
   A configuration is (the set of operations linearized so far, the model
   state). From a configuration, the operations that may come next are the
   unlinearized ones called no later than the earliest return among the
   unlinearized *required* (``ok``) operations; an ``info`` operation's
   return is +infinity. The history is linearizable iff a sequence of such
   moves linearizes every required operation. Depth-first search with an
   explicit stack; the linearized set is an ``int`` bitset.
3. **Just-in-time ordering.** Candidates are tried in order of return:
   first the operation that must be linearized soonest, so that the other
   ones (and optional ones last of all) are linearized only when an output
   demands it. This finds the witness of a correct history almost without
   backtracking.
4. **Pruning, each one exact:**
   * *memoization*: a configuration whose search failed is never searched
     again (Lowe's state caching);
   * *optional subsumption*: if (S, state) failed, then (S + optional ops,
     same state) fails too, since any continuation of the latter works from
     the former; so a failed configuration also prunes its optional
     supersets (the converse is false: an unknown write may be needed later);
   * *forced reads*: if a candidate is read-only in effect (``get``, a
     ``cas`` that failed) and its output matches the state, linearizing it
     right now loses no solution (moving a state-preserving operation
     earlier within its own interval breaks nothing), so it is the only
     move tried;
   * *latent optional operations*: the model may certify that an ``info``
     operation can only matter immediately before an *observer* that could
     not take effect without it (``SearchHints.latent``); for the key-value model,
     an unknown write whose value nobody read back matters only to a ``cas``
     that reported ``fail``. Such an operation is tried only where some
     observer is blocked, and then must be followed by one of those. Without
     this, every timed-out append is a candidate at every backtracking point
     and hot keys cost millions of configurations;
   * *interchangeable optional operations*: two called ``info`` operations
     with equal fields can swap places in any linearization, so they are
     linearized in call order only (subsets become counts: timed-out
     increments of a hot counter otherwise cost exponential time);
   * *dead ends* (``SearchHints.dead_end``): the model may certify that an
     operation can no longer take effect from a state, whatever follows;
     for a key holding a counter (only ``get`` and non-negative ``incr``),
     a value above what a pending operation needs. Without it, a search
     that overshot a counter tries every combination of timed-out
     increments before backtracking.
   The linearized set is stored relative to its lowest unlinearized required
   operation (``base``), so memory and bitset work stay proportional to the
   window of concurrency, not to the history length.
5. **Window proofs.** Proving a violation by exhaustion costs every
   reachable configuration of the whole key; most violations are local. If
   a search needs more than ``CONFIGURATIONS_BEFORE_WINDOWS`` (plus a few
   per operation), it pauses and tries time windows ending where it got
   stuck: if the operations of a window (those running at its edges and all
   unknown ones made optional) have no linearization from *any* initial
   state (``Model.covering_states`` gives finitely many that stand for all),
   the key is not linearizable, and the window is the explanation.
   Otherwise the search goes on. A failure found by exhaustion is explained
   by the smallest failing prefix, found by binary search over cut times.

Guarantees: for a deterministic ``Model`` the verdict is *sound and
complete*: ``True`` exactly when a linearization exists (the search found
one), ``False`` exactly when none exists (the search space was exhausted).
The search is exponential in the worst case (the problem is NP-complete);
with ``time_budget_s`` it stops and answers ``None`` for the keys it could
not decide, never a guess. Real-time order is strict: ``a`` precedes ``b``
only if ``a.return < b.call``; equal times count as concurrent. Nothing here
uses randomness; the clock is read only for the budget's deadline and to
report time spent, never to decide anything else.
"""


from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from replicaio.check.history import HistoryError, Operation, load_history, validate_history
from replicaio.check.linearizability.explanation import (
    CONTEXT_OPERATIONS_MAX,
    Explanation,
    explain,
    prove_by_window,
)
from replicaio.check.linearizability.model import (
    KEY_VALUE_MODEL,
    KeyValueModel,
    Model,
    SearchHints,
)
from replicaio.check.linearizability.search import (
    BudgetExhausted,
    LimitReached,
    Search,
    SearchOutcome,
    searchable_operations,
)

CONFIGURATIONS_BEFORE_WINDOWS = 10_000
CONFIGURATIONS_PER_OPERATION_BEFORE_WINDOWS = 8
"""A part's search may enter ``CONFIGURATIONS_BEFORE_WINDOWS`` plus this many
configurations per operation before the checker pauses it to try cheap window
proofs of a violation (a correct history rarely needs more than 3 per operation)."""


EXIT_LINEARIZABLE = 0
EXIT_NOT_LINEARIZABLE = 1
EXIT_INVALID_HISTORY = 2
EXIT_UNKNOWN = 3


@dataclass(frozen=True, slots=True)
class KeyResult:
    """Verdict for one independent part (one key for the key-value model).

    ``operations`` counts what was searched (``fail`` operations and
    read-only ``info`` ones are dropped first); ``configurations`` counts the
    search configurations entered; ``seconds`` is wall time spent.
    """

    key: str
    linearizable: bool | None
    operations: int
    configurations: int
    seconds: float
    explanation: Explanation | None


@dataclass(frozen=True, slots=True)
class LinearizabilityResult:
    """Overall verdict: ``False`` if any key failed, else ``None`` if any is undecided.

    ``explanation`` is that of the first failing key (in key order);
    ``reason`` summarizes the verdict in one line.
    """

    linearizable: bool | None
    per_key: Mapping[str, KeyResult]
    explanation: Explanation | None
    reason: str
    operations: int
    seconds: float

    def describe(self) -> str:
        verdict = {True: "linearizable", False: "NOT linearizable", None: "UNKNOWN"}
        lines = [f"{verdict[self.linearizable]}: {self.reason}"]
        for result in self.per_key.values():
            if result.explanation is not None:
                lines.append(result.explanation.describe())
            elif result.linearizable is False:
                lines.append(f"key {result.key!r}: not linearizable (explanation skipped)")
        return "\n".join(lines)


def _check_part(
    key: str, ops: Sequence[Operation], model: Model[Any], deadline: float | None
) -> KeyResult:
    """Search; if that drags on, try window proofs of a violation, then search on."""
    started = time.perf_counter()
    searchable = searchable_operations(ops, model)
    search = Search(searchable, model)
    allowance = CONFIGURATIONS_BEFORE_WINDOWS + CONFIGURATIONS_PER_OPERATION_BEFORE_WINDOWS * len(
        searchable
    )
    explanation = None
    try:
        try:
            outcome = search.run(deadline, configurations_max=allowance)
        except LimitReached as paused:
            explanation = prove_by_window(
                key, searchable, model, search, paused.deepest, deadline, allowance
            )
            if explanation is None:
                outcome = search.run(deadline)
            else:
                outcome = SearchOutcome(False, allowance)
        if not outcome.linearizable and explanation is None:
            explanation = explain(key, searchable, model, deadline)
    except BudgetExhausted:
        return KeyResult(key, None, len(searchable), 0, time.perf_counter() - started, None)
    return KeyResult(
        key,
        outcome.linearizable,
        len(searchable),
        outcome.configurations,
        time.perf_counter() - started,
        explanation,
    )


def _summary(results: Mapping[str, KeyResult], operations: int, seconds: float) -> str:
    failing = [key for key, result in results.items() if result.linearizable is False]
    unknown = [key for key, result in results.items() if result.linearizable is None]
    counts = f"{operations} operations, {len(results)} keys, {seconds:.3f} s"
    if failing:
        return f"{len(failing)} key(s) not linearizable, first {failing[0]!r} ({counts})"
    if unknown:
        return (
            f"time budget exhausted: {len(unknown)} key(s) undecided, first {unknown[0]!r}; "
            f"no violation found in the others ({counts})"
        )
    return f"every key linearizable ({counts})"


def check_linearizable(
    ops: Sequence[Operation],
    *,
    time_budget_s: float | None = None,
    model: Model[Any] = KEY_VALUE_MODEL,
) -> LinearizabilityResult:
    """Decide whether the history ``ops`` is linearizable with respect to ``model``.

    Validates every operation first (``HistoryError`` names the bad one; the
    order of ``ops`` does not matter and client sequentiality is not
    required here). Parts are checked in key order. Sound and complete for a
    deterministic model: ``True``/``False`` are proofs, never guesses; with
    ``time_budget_s`` (seconds of wall time, shared by all parts and by the
    explanation of failures) undecided parts answer ``None``, and the overall
    verdict is ``None`` unless some part was proved non-linearizable.
    """
    if time_budget_s is not None and not (time_budget_s >= 0 and math.isfinite(time_budget_s)):
        raise ValueError(f"time_budget_s must be a finite number >= 0, got {time_budget_s!r}")
    started = time.perf_counter()
    validate_history(ops, clients_sequential=False)
    deadline = None if time_budget_s is None else started + time_budget_s
    parts = model.partition(ops)
    results: dict[str, KeyResult] = {}
    for key in sorted(parts):
        if deadline is not None and time.perf_counter() > deadline:
            results[key] = KeyResult(key, None, len(parts[key]), 0, 0.0, None)
            continue
        results[key] = _check_part(key, parts[key], model, deadline)
    verdicts = [result.linearizable for result in results.values()]
    if False in verdicts:
        linearizable: bool | None = False
    elif None in verdicts:
        linearizable = None
    else:
        linearizable = True
    explanation = next(
        (result.explanation for result in results.values() if result.explanation is not None),
        None,
    )
    seconds = time.perf_counter() - started
    return LinearizabilityResult(
        linearizable=linearizable,
        per_key=results,
        explanation=explanation,
        reason=_summary(results, len(ops), seconds),
        operations=len(ops),
        seconds=seconds,
    )


def main_check_history(
    path: str | os.PathLike[str], *, time_budget_s: float | None = None, as_json: bool = False
) -> int:
    """Entry point for ``replicaio check-history FILE``: load, check, print, exit code.

    Prints the verdict (and explanations) on stdout (``as_json``: one JSON
    object with ``linearizable``, ``operations``, ``detail``), a malformed
    history on stderr. Returns ``EXIT_LINEARIZABLE`` (0), ``EXIT_NOT_LINEARIZABLE`` (1),
    ``EXIT_INVALID_HISTORY`` (2: unreadable or malformed file) or
    ``EXIT_UNKNOWN`` (3: the budget ran out before a verdict).
    """
    try:
        ops = load_history(path)
    except (OSError, UnicodeDecodeError, HistoryError) as error:
        print(f"check-history: {os.fspath(path)}: {error}", file=sys.stderr)
        return EXIT_INVALID_HISTORY
    result = check_linearizable(ops, time_budget_s=time_budget_s)
    if as_json:
        print(json.dumps({
            "file": os.fspath(path), "linearizable": result.linearizable,
            "operations": len(ops), "detail": result.describe(),
        }, sort_keys=True))
    else:
        print(result.describe())
    if result.linearizable is None:
        return EXIT_UNKNOWN
    return EXIT_LINEARIZABLE if result.linearizable else EXIT_NOT_LINEARIZABLE


__all__ = [
    "CONTEXT_OPERATIONS_MAX",
    "EXIT_INVALID_HISTORY",
    "EXIT_LINEARIZABLE",
    "EXIT_NOT_LINEARIZABLE",
    "EXIT_UNKNOWN",
    "KEY_VALUE_MODEL",
    "Explanation",
    "KeyResult",
    "KeyValueModel",
    "LinearizabilityResult",
    "Model",
    "SearchHints",
    "check_linearizable",
    "main_check_history",
]

