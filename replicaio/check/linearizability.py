"""Linearizability checking of client histories against a sequential model.

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
   product of independent per-key registers and every operation touches one
   key, so the history is linearizable iff each key's sub-history is. The
   ``Model.partition`` hook splits the history; each part is searched alone.
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

import bisect
import contextlib
import math
import os
import re
import sys
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, Protocol, TypeVar

from replicaio.check.history import (
    APPEND,
    CAS,
    CAS_FAILED,
    CAS_SUCCEEDED,
    DELETE,
    GET,
    INCR,
    INFO,
    OK,
    PUT,
    HistoryError,
    Operation,
    describe_operation,
    is_integer_string,
    load_history,
    validate_history,
)

CONTEXT_OPERATIONS_MAX = 8
"""Operations completed before the culprit's call that an explanation shows."""

WATCHED_STATES_MAX = 16
"""Distinct model states an explanation lists for the culprit."""

STEPS_PER_DEADLINE_CHECK = 1024
"""Search steps between two reads of the clock when a budget is set."""

CONFIGURATIONS_BEFORE_WINDOWS = 10_000
CONFIGURATIONS_PER_OPERATION_BEFORE_WINDOWS = 8
"""A part's search may enter ``CONFIGURATIONS_BEFORE_WINDOWS`` plus this many
configurations per operation before the checker pauses it to try cheap window
proofs of a violation (a correct history rarely needs more than 3 per operation)."""

WINDOW_CONFIGURATIONS_MAX = 20_000
"""Configurations one window search (from one initial state) may enter."""

WINDOW_REQUIRED_MAX = 1024
"""Completed operations a window may span; windows grow 1, 4, 16, ... up to it."""

COVERING_STATES_MAX = 256
"""Initial states a window proof may try; more and the window is not tried."""

EXIT_LINEARIZABLE = 0
EXIT_NOT_LINEARIZABLE = 1
EXIT_INVALID_HISTORY = 2
EXIT_UNKNOWN = 3

StateT = TypeVar("StateT", bound=Hashable)

_NON_INTEGER_CHARACTER = re.compile(r"[^0-9-]")
_SEEN_SEPARATOR = "\x00"


@dataclass(frozen=True, slots=True)
class SearchHints(Generic[StateT]):
    """What a model certifies about one part; each hint is an exact pruning.

    ``latent[i]`` (empty: all ``False``) for an ``info`` operation X of the
    part is the model's proof obligation that any linearization can be
    rewritten so that X is either absent or immediately followed by an
    observer (``Model.is_observer``) that cannot take effect in the state
    just before X. The search then tries X only there.

    ``dead_end(state, op)`` is ``True`` only if the ``ok`` operation ``op``
    can take effect in no state reachable from ``state`` by operations of
    the part; a configuration where some candidate is dead is abandoned.
    """

    latent: Sequence[bool] = ()
    dead_end: Callable[[StateT, Operation], bool] | None = None


class Model(Protocol[StateT]):
    """A deterministic sequential specification the checker replays operations on.

    States must be hashable and immutable (they are memoized). ``step`` is
    called with operations of status ``ok`` (check the recorded output) and
    ``info`` (output unknown: take the effect the operation would have if it
    succeeded, or answer ``False`` if it cannot succeed from this state). For
    an ``info`` operation, ``step`` may depend only on its ``op``, ``key``,
    ``value`` and ``expected``: the search treats two such operations with
    equal fields as interchangeable.
    """

    def partition(self, ops: Sequence[Operation]) -> dict[str, list[Operation]]:
        """Split into independent sub-histories (P-compositionality); order is kept."""
        ...

    def initial_state(self) -> StateT:
        """The state before any operation."""
        ...

    def step(self, state: StateT, op: Operation) -> tuple[bool, StateT]:
        """``(True, next)`` if ``op`` may take effect in ``state``, else ``(False, state)``."""
        ...

    def is_read_only(self, op: Operation) -> bool:
        """Whether ``op`` never changes the state, whatever the state."""
        ...

    def hints(self, part: Sequence[Operation]) -> SearchHints[StateT]:
        """Facts about one part that let the search prune; ``SearchHints()`` is always safe."""
        ...

    def is_observer(self, op: Operation) -> bool:
        """Whether ``op`` is an observer in the sense of ``SearchHints.latent``."""
        ...

    def covering_states(self, ops: Sequence[Operation]) -> Sequence[StateT] | None:
        """States such that from any state, ``ops`` behave as from one of them.

        "Behave": the same sequences of ``ops`` are valid. ``None`` if the
        model cannot say; window proofs are then skipped.
        """
        ...

    def describe_state(self, state: StateT) -> str:
        """A short human rendering of ``state``."""
        ...


def _latent_writes(part: Sequence[Operation]) -> list[bool]:
    """Unknown ``put``/``append`` of a value ``v`` nobody could have seen.

    Conditions: no ``get`` output and no ``cas`` expected value of the part
    contains ``v``, and ``v`` has a character no integer has. Proof sketch:
    once X has run, the state contains ``v`` until a ``put`` or ``delete``
    resets it; meanwhile no ``get``, successful ``cas`` or ``incr`` can run,
    only appends (valid in any state) and failing ``cas`` (valid in any
    state containing ``v``). So X can slide later, past everything, until
    either a reset (drop X) or a failing ``cas`` that would have succeeded
    without X (keep X just before it).
    """
    seen = _SEEN_SEPARATOR.join(
        [op.output for op in part if op.op == GET and op.status == OK and op.output]
        + [op.expected for op in part if op.op == CAS and op.expected]
    )
    return [
        op.status == INFO
        and op.op in (PUT, APPEND)
        and op.value is not None
        and _NON_INTEGER_CHARACTER.search(op.value) is not None
        and _SEEN_SEPARATOR not in op.value
        and op.value not in seen
        for op in part
    ]


def _counter_dead_end(state: str | None, op: Operation) -> bool:
    """For a part of ``get`` and non-negative ``incr`` only: values never decrease.

    An ``incr`` needs the state ``output - delta`` and a ``get`` of a number
    needs that number, so a larger state is a dead end; absent never comes
    back; a state that is no integer (a window may start there) never changes.
    """
    if state is not None and not is_integer_string(state):
        return op.op == INCR or op.output != state
    if op.op == GET:
        if op.output is None:
            return state is not None
        if not is_integer_string(op.output):
            return True
        return state is not None and int(state) > int(op.output)
    assert op.op == INCR
    assert op.value is not None
    assert op.output is not None
    current = 0 if state is None else int(state)
    return current > int(op.output) - int(op.value)


class KeyValueModel:
    """One register per key: the state is the key's value, ``None`` when absent.

    ``put`` sets; ``delete`` sets ``None``; ``append`` concatenates onto
    ``""`` if absent; ``cas`` succeeds (output ``"ok"``, sets the new value)
    iff the state equals ``expected`` (``None`` expects absent), else outputs
    ``"fail"`` and changes nothing; ``incr`` reads absent as 0, needs a
    decimal integer state, adds the delta and outputs the new value; ``get``
    outputs the state.
    """

    def partition(self, ops: Sequence[Operation]) -> dict[str, list[Operation]]:
        parts: dict[str, list[Operation]] = {}
        for op in ops:
            parts.setdefault(op.key, []).append(op)
        return parts

    def initial_state(self) -> str | None:
        return None

    def step(self, state: str | None, op: Operation) -> tuple[bool, str | None]:
        kind = op.op
        known = op.status == OK
        if kind == GET:
            return (not known or op.output == state), state
        if kind == PUT:
            return True, op.value
        if kind == CAS:
            if state == op.expected:
                return (not known or op.output == CAS_SUCCEEDED), op.value
            return (known and op.output == CAS_FAILED), state
        if kind == APPEND:
            assert op.value is not None
            return True, op.value if state is None else state + op.value
        if kind == DELETE:
            return True, None
        assert kind == INCR
        assert op.value is not None
        if state is not None and not is_integer_string(state):
            return False, state
        total = (0 if state is None else int(state)) + int(op.value)
        if known:
            assert op.output is not None
            return int(op.output) == total, str(total)
        return True, str(total)

    def is_read_only(self, op: Operation) -> bool:
        if op.op == GET:
            return True
        return op.op == CAS and (op.value == op.expected or op.output == CAS_FAILED)

    def hints(self, part: Sequence[Operation]) -> SearchHints[str | None]:
        """Latent unknown writes, and dead ends of pure counters (see the two helpers)."""
        counter = all(
            op.op == GET or (op.op == INCR and op.value is not None and int(op.value) >= 0)
            for op in part
        )
        return SearchHints(
            latent=_latent_writes(part),
            dead_end=_counter_dead_end if counter and part else None,
        )

    def is_observer(self, op: Operation) -> bool:
        return op.op == CAS and op.status == OK and op.output == CAS_FAILED

    def covering_states(self, ops: Sequence[Operation]) -> list[str | None] | None:
        """Absent, every value the state is compared with (and, with appends, their
        prefixes), and one fresh value that is no prefix of any of them.

        The state only meets ``get`` outputs and ``cas`` expected values, by
        equality; without appends any other value compares like the fresh
        one, and with appends a state ``s`` can only ever equal ``m`` (after
        suffixes) if ``s`` is a prefix of ``m``. ``incr`` parses numbers: no cover.
        """
        if any(op.op == INCR for op in ops):
            return None
        compared = {op.output for op in ops if op.op == GET and op.output is not None}
        compared |= {op.expected for op in ops if op.op == CAS and op.expected is not None}
        if any(op.op == APPEND for op in ops):
            compared = {value[:end] for value in compared for end in range(len(value) + 1)}
        fresh = "\x00" * (max((len(value) for value in compared), default=0) + 1)
        return [None, *sorted(compared), fresh]

    def describe_state(self, state: str | None) -> str:
        return "absent" if state is None else repr(state)


KEY_VALUE_MODEL = KeyValueModel()


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


class _BudgetExhausted(Exception):
    """The deadline passed during a search."""


class _LimitReached(Exception):
    """A search entered its maximum of configurations; ``deepest`` is how far it got."""

    def __init__(self, deepest: int) -> None:
        super().__init__(deepest)
        self.deepest = deepest


_MODEL_INITIAL: Any = object()


@dataclass(frozen=True, slots=True)
class _SearchOutcome:
    linearizable: bool
    configurations: int


class _Search:
    """One part's history, prepared for the search (see the module docstring).

    Indexing: candidate ``c < required_count`` is the ``c``-th required
    operation in call order (its bit in ``rel`` is ``c - base``); candidate
    ``c >= required_count`` is optional operation ``c - required_count`` in
    call order (its bit in ``opt``). A configuration is ``(base, rel, opt,
    state, allowed)``: required operations below ``base`` are all
    linearized, ``rel`` holds the others' bits shifted by ``base``;
    ``allowed`` is ``None``, or, right after a latent operation, the
    observers that may come next.
    """

    def __init__(
        self, ops: Sequence[Operation], model: Model[Any], initial: Any = _MODEL_INITIAL
    ) -> None:
        self.initial = model.initial_state() if initial is _MODEL_INITIAL else initial
        required = sorted(
            (op for op in ops if op.status == OK), key=lambda op: (op.call, op.return_)
        )
        optional = sorted((op for op in ops if op.status == INFO), key=lambda op: op.call)
        self.model = model
        self.ops: list[Operation] = required + optional
        self.required_count = len(required)
        # Required operations by return: the earliest unlinearized one bounds the candidates.
        self.by_return = sorted(
            range(len(required)), key=lambda c: (required[c].return_, required[c].call, c)
        )
        required_calls = [op.call for op in required]
        optional_calls = [op.call for op in optional]
        self.called_required: list[int] = []
        self.called_optional: list[int] = []
        for c in self.by_return:
            returned = required[c].return_
            assert returned is not None  # validated: an ok operation has returned
            self.called_required.append(bisect.bisect_right(required_calls, returned))
            self.called_optional.append(bisect.bisect_right(optional_calls, returned))
        self.rank = [0] * len(self.ops)
        for position, c in enumerate(self.by_return):
            self.rank[c] = position
        for c in range(len(required), len(self.ops)):
            self.rank[c] = c
        self.read_only = [model.is_read_only(op) for op in self.ops]
        # Only required operations observe (``blocked`` and ``allowed`` hold required ones).
        self.observer = [op.status == OK and model.is_observer(op) for op in self.ops]
        hints = model.hints(self.ops)
        self.latent = list(hints.latent) or [False] * len(self.ops)
        assert len(self.latent) == len(self.ops)
        self.dead_end = hints.dead_end
        self.latent_mask = sum(
            1 << j for j, latent in enumerate(self.latent[len(required) :]) if latent
        )
        # Unknown operations with equal fields are interchangeable once called: use them in
        # call order. ``twin_before[j]``: the previous such optional operation, or -1.
        self.twin_before: list[int] = []
        last: dict[tuple[str, str, str | None, str | None], int] = {}
        for j, op in enumerate(optional):
            signature = (op.op, op.key, op.value, op.expected)
            self.twin_before.append(last.get(signature, -1))
            last[signature] = j

    def _required_called(self, base: int, rel: int, position: int) -> list[int]:
        """Unlinearized required operations called by the return of ``by_return[position]``."""
        candidates: list[int] = []
        unlinearized = ~rel & ((1 << (self.called_required[position] - base)) - 1)
        while unlinearized:
            lowest = unlinearized & -unlinearized
            candidates.append(base + lowest.bit_length() - 1)
            unlinearized ^= lowest
        return candidates

    def _optional_called(self, opt: int, position: int, with_latent: bool) -> list[int]:
        """Optional operations that may be linearized now (see ``twin_before``)."""
        candidates: list[int] = []
        unlinearized = ~opt & ((1 << self.called_optional[position]) - 1)
        if not with_latent:
            unlinearized &= ~self.latent_mask
        count = self.required_count
        twin_before = self.twin_before
        while unlinearized:
            lowest = unlinearized & -unlinearized
            j = lowest.bit_length() - 1
            twin = twin_before[j]
            if twin < 0 or (opt >> twin) & 1:
                candidates.append(count + j)
            unlinearized ^= lowest
        return candidates

    def _candidates(
        self,
        base: int,
        rel: int,
        opt: int,
        state: Hashable,
        position: int,
        allowed: frozenset[int] | None,
    ) -> tuple[int, list[int], frozenset[int]] | None:
        """Next ``position``, candidates in try order, observers a latent move may precede.

        ``None`` when every required operation is linearized (success).
        """
        by_return = self.by_return
        while position < self.required_count:
            c = by_return[position]
            if c >= base and not (rel >> (c - base)) & 1:
                break
            position += 1
        else:
            return None
        candidates = self._required_called(base, rel, position)
        ops = self.ops
        dead_end = self.dead_end
        if dead_end is not None and any(dead_end(state, ops[c]) for c in candidates):
            return position, [], _NOTHING
        if allowed is not None:  # right after a latent operation: only its observers
            return position, [c for c in candidates if c in allowed], _NOTHING
        step = self.model.step
        read_only = self.read_only
        for c in candidates:
            if read_only[c] and step(state, ops[c])[0]:
                return position, [c], _NOTHING  # a forced read: no alternative needs trying
        observer = self.observer
        blocked = frozenset(c for c in candidates if observer[c] and not step(state, ops[c])[0])
        if self.called_optional[position]:
            candidates += self._optional_called(opt, position, bool(blocked))
        if len(candidates) > 1:
            candidates.sort(key=self.rank.__getitem__)
        return position, candidates, blocked

    def run(
        self,
        deadline: float | None,
        watch: int | None = None,
        watched_states: set[Hashable] | None = None,
        configurations_max: int | None = None,
    ) -> _SearchOutcome:
        """Depth-first search; raises ``_BudgetExhausted`` past ``deadline`` and
        ``_LimitReached`` when about to enter more than ``configurations_max``."""
        step = self.model.step
        ops = self.ops
        count = self.required_count
        latent = self.latent
        state = self.initial
        deepest = 0
        first = self._candidates(0, 0, 0, state, 0, None)
        if first is None:
            return _SearchOutcome(True, 1)
        # A frame: [base, rel, opt, state, allowed, position, candidates, blocked, next to try].
        stack: list[list[Any]] = [[0, 0, 0, state, None, *first, 0]]
        failed: dict[tuple[int, int, Hashable], list[tuple[int, frozenset[int] | None]]] = {}
        configurations = 1
        steps = 0
        while stack:
            frame = stack[-1]
            base, rel, opt, state, allowed, position, candidates, blocked, tried = frame
            if tried == len(candidates):
                failed.setdefault((base, rel, state), []).append((opt, allowed))
                stack.pop()
                continue
            frame[8] = tried + 1
            steps += 1
            if (
                deadline is not None
                and steps % STEPS_PER_DEADLINE_CHECK == 0
                and time.perf_counter() > deadline
            ):
                raise _BudgetExhausted
            c = candidates[tried]
            ok, after = step(state, ops[c])
            if not ok:
                if c == watch and watched_states is not None:
                    watched_states.add(state)
                continue
            if c < count:
                rel |= 1 << (c - base)
                if c == base:  # re-anchor on the lowest unlinearized required operation
                    shift = ((rel + 1) & ~rel).bit_length() - 1
                    base += shift
                    rel >>= shift
            else:
                opt |= 1 << (c - count)
            allowed_next = blocked if latent[c] else None
            if _known_failure(failed.get((base, rel, after)), opt, allowed_next):
                continue
            following = self._candidates(base, rel, opt, after, position, allowed_next)
            configurations += 1
            if following is None:
                return _SearchOutcome(True, configurations)
            deepest = max(deepest, following[0])
            if configurations_max is not None and configurations > configurations_max:
                raise _LimitReached(deepest)
            stack.append([base, rel, opt, after, allowed_next, *following, 0])
        return _SearchOutcome(False, configurations)


_NOTHING: frozenset[int] = frozenset()


def _known_failure(
    failures: list[tuple[int, frozenset[int] | None]] | None,
    opt: int,
    allowed: frozenset[int] | None,
) -> bool:
    """Whether a failed configuration with the same required set and state subsumes this one.

    It does if it had a subset of our optional operations linearized (the
    same continuations work from it) and allowed at least our next moves.
    """
    if failures is None:
        return False
    for failed_opt, failed_allowed in failures:
        if failed_opt & opt != failed_opt:
            continue
        if failed_allowed is None or (allowed is not None and allowed <= failed_allowed):
            return True
    return False


def _searchable(ops: Sequence[Operation], model: Model[Any]) -> list[Operation]:
    """Drop what cannot matter: ``fail`` operations, and ``info`` ones that change nothing."""
    return [
        op for op in ops if op.status == OK or (op.status == INFO and not model.is_read_only(op))
    ]


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


def _explain(
    key: str, ops: Sequence[Operation], model: Model[Any], deadline: float | None
) -> Explanation:
    """Binary-search the smallest failing prefix (cut at a return time) of a failing part."""
    cuts = sorted({op.return_ for op in ops if op.status == OK and op.return_ is not None})
    low, high = -1, len(cuts) - 1  # prefix at cuts[low] is linearizable, at cuts[high] it is not
    minimal = True
    while high - low > 1:
        middle = (low + high) // 2
        try:
            outcome = _Search(_searchable(_prefix(ops, cuts[middle]), model), model).run(deadline)
        except _BudgetExhausted:
            minimal = False
            break
        if outcome.linearizable:
            low = middle
        else:
            high = middle
    cut = cuts[high]
    prefix = _searchable(_prefix(ops, cut), model)
    search = _Search(prefix, model)
    culprit_index = min(
        (c for c, op in enumerate(search.ops) if op.status == OK and op.return_ == cut),
        key=lambda c: (search.ops[c].call, c),
    )
    watched: set[Hashable] = set()
    with contextlib.suppress(_BudgetExhausted):  # the states are a hint; keep what we saw
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


def _refuted_from_every_state(
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
    searchable = _searchable(window, model)
    for initial in states:
        search = _Search(searchable, model, initial)
        watch = search.ops.index(culprit) if culprit in search.ops else None
        limit = WINDOW_CONFIGURATIONS_MAX if allowance is None else allowance[0]
        limit = min(limit, WINDOW_CONFIGURATIONS_MAX)
        try:
            outcome = search.run(deadline, watch, watched, limit)
        except _LimitReached:
            if allowance is not None:
                allowance[0] -= limit
            return False
        if allowance is not None:
            allowance[0] -= outcome.configurations
        if outcome.linearizable:
            return False
    return True


def _prove_by_window(
    key: str,
    ops: Sequence[Operation],
    model: Model[Any],
    search: _Search,
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
        if _refuted_from_every_state(window, model, deadline, culprit, watched, allowance):
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


def _check_part(
    key: str, ops: Sequence[Operation], model: Model[Any], deadline: float | None
) -> KeyResult:
    """Search; if that drags on, try window proofs of a violation, then search on."""
    started = time.perf_counter()
    searchable = _searchable(ops, model)
    search = _Search(searchable, model)
    allowance = CONFIGURATIONS_BEFORE_WINDOWS + CONFIGURATIONS_PER_OPERATION_BEFORE_WINDOWS * len(
        searchable
    )
    explanation = None
    try:
        try:
            outcome = search.run(deadline, configurations_max=allowance)
        except _LimitReached as paused:
            explanation = _prove_by_window(
                key, searchable, model, search, paused.deepest, deadline, allowance
            )
            if explanation is None:
                outcome = search.run(deadline)
            else:
                outcome = _SearchOutcome(False, allowance)
        if not outcome.linearizable and explanation is None:
            explanation = _explain(key, searchable, model, deadline)
    except _BudgetExhausted:
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


def main_check_history(path: str | os.PathLike[str], *, time_budget_s: float | None = None) -> int:
    """Entry point for ``replicaio check-history FILE``: load, check, print, exit code.

    Prints the verdict (and explanations) on stdout, a malformed history on
    stderr. Returns ``EXIT_LINEARIZABLE`` (0), ``EXIT_NOT_LINEARIZABLE`` (1),
    ``EXIT_INVALID_HISTORY`` (2: unreadable or malformed file) or
    ``EXIT_UNKNOWN`` (3: the budget ran out before a verdict).
    """
    try:
        ops = load_history(path)
    except (OSError, UnicodeDecodeError, HistoryError) as error:
        print(f"check-history: {os.fspath(path)}: {error}", file=sys.stderr)
        return EXIT_INVALID_HISTORY
    result = check_linearizable(ops, time_budget_s=time_budget_s)
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
    "check_linearizable",
    "main_check_history",
]
