"""The search for a linearization of one part (Wing & Gong; Lowe), with exact pruning.

See the package docstring (``replicaio.check.linearizability``), points 2-4.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from replicaio.check.history import (
    INFO,
    OK,
    Operation,
)
from replicaio.check.linearizability.model import Model

STEPS_PER_DEADLINE_CHECK = 1024
"""Search steps between two reads of the clock when a budget is set."""


class BudgetExhausted(Exception):
    """The deadline passed during a search."""


class LimitReached(Exception):
    """A search entered its maximum of configurations; ``deepest`` is how far it got."""

    def __init__(self, deepest: int) -> None:
        super().__init__(deepest)
        self.deepest = deepest


_MODEL_INITIAL: Any = object()


@dataclass(frozen=True, slots=True)
class SearchOutcome:
    linearizable: bool
    configurations: int


class Search:
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
    ) -> SearchOutcome:
        """Depth-first search; raises ``BudgetExhausted`` past ``deadline`` and
        ``LimitReached`` when about to enter more than ``configurations_max``."""
        step = self.model.step
        ops = self.ops
        count = self.required_count
        latent = self.latent
        state = self.initial
        deepest = 0
        first = self._candidates(0, 0, 0, state, 0, None)
        if first is None:
            return SearchOutcome(True, 1)
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
                raise BudgetExhausted
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
            if known_failure(failed.get((base, rel, after)), opt, allowed_next):
                continue
            following = self._candidates(base, rel, opt, after, position, allowed_next)
            configurations += 1
            if following is None:
                return SearchOutcome(True, configurations)
            deepest = max(deepest, following[0])
            if configurations_max is not None and configurations > configurations_max:
                raise LimitReached(deepest)
            stack.append([base, rel, opt, after, allowed_next, *following, 0])
        return SearchOutcome(False, configurations)


_NOTHING: frozenset[int] = frozenset()


def known_failure(
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


def searchable_operations(ops: Sequence[Operation], model: Model[Any]) -> list[Operation]:
    """Drop what cannot matter: ``fail`` operations, and ``info`` ones that change nothing."""
    return [
        op for op in ops if op.status == OK or (op.status == INFO and not model.is_read_only(op))
    ]
