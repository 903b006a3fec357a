"""Sequential models for the linearizability checker: the ``Model`` protocol, the
pruning hints a model may certify (``SearchHints``), and the key-value model.

See the package docstring (``replicaio.check.linearizability``) for how the
search uses them; every hint is an exact pruning, never a heuristic.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
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
    LIST_KINDS,
    LRANGE,
    OK,
    PUT,
    PUTX,
    TIMED_KINDS,
    TXN,
    Operation,
    is_integer_string,
)
from replicaio.check.linearizability.timed import Timed, describe, step_list, step_timed
from replicaio.check.linearizability.transactions import (
    is_stored_integer,
    partition_by_transactions,
    step_transaction,
    transaction_read_only,
)

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
    return [_latent(op, seen) for op in part]


def _latent(op: Operation, seen: str) -> bool:
    """One operation of :func:`_latent_writes`.

    Written as tests that each give a ``bool``: compiled by Cython 3.3.1, the
    one ``and`` chain of object comparisons (``==``, ``in`` a tuple) and
    ``bool`` tests (``not in`` a str) it replaces cast a C ``int`` to an
    object pointer, and the list comprehension then crashed the process
    (``compiled_build`` now refuses any module whose C shows that cast).
    """
    if op.status != INFO or op.op not in (PUT, APPEND):
        return False
    value = op.value
    if value is None or _NON_INTEGER_CHARACTER.search(value) is None:
        return False
    return _SEEN_SEPARATOR not in value and value not in seen


def _counter_dead_end(state: str | None, op: Operation) -> bool:
    """For a part of ``get`` and non-negative ``incr`` only: values never decrease.

    An ``incr`` needs the state ``output - delta`` and a ``get`` of a number
    needs that number, so a larger state is a dead end; absent never comes
    back; a state that is no integer (a window may start there) never changes.
    """
    if state is not None and not is_stored_integer(state):
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

    A ``txn`` runs its operations in order at one point (``transactions.py``).
    A part that holds a transaction has every operation as a ``txn`` (a single
    one becomes a one-operation ``txn``) and its state is the sorted tuple of
    its present keys and values (``None``: all absent); other parts keep the
    single-register state and every per-key pruning below.

    Keys with an expiry (``putx``) and lists (``rpush``, ``lrange``) are in
    ``timed.py``; their parts get no pruning hints.
    """

    def partition(self, ops: Sequence[Operation]) -> dict[str, list[Operation]]:
        """One part per key, except that keys a ``txn`` touches together share one."""
        return partition_by_transactions(ops)

    def initial_state(self) -> str | None:
        return None

    def step(self, state: Any, op: Operation) -> tuple[bool, Any]:
        kind = op.op
        if kind == TXN:
            return step_transaction(state, op)
        if kind in LIST_KINDS:
            return step_list(state, op)
        if kind == PUTX or isinstance(state, Timed):
            if kind in (GET, PUT, DELETE, PUTX):
                return step_timed(state, op)
            allowed, value = self.step(state.value, op)  # as if not expired (timed.py)
            return allowed, Timed(value, state.deadline, state.floor_ms)
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
        if state is not None and not is_stored_integer(state):
            return False, state
        total = (0 if state is None else int(state)) + int(op.value)
        if known:
            assert op.output is not None
            return int(op.output) == total, str(total)
        return True, str(total)

    def is_read_only(self, op: Operation) -> bool:
        if op.op == TXN:
            return transaction_read_only(op)
        if op.op in (GET, LRANGE):
            return True
        return op.op == CAS and (op.value == op.expected or op.output == CAS_FAILED)

    def hints(self, part: Sequence[Operation]) -> SearchHints[str | None]:
        """Latent unknown writes, and dead ends of pure counters (see the two helpers);
        nothing for a part of transactions."""
        if any(op.op == TXN or op.op in TIMED_KINDS or op.op in LIST_KINDS for op in part):
            return SearchHints()
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
        suffixes) if ``s`` is a prefix of ``m``. ``incr`` parses numbers: no cover;
        nor is there one for a part of transactions.
        """
        if any(op.op in (INCR, TXN) or op.op in TIMED_KINDS or op.op in LIST_KINDS for op in ops):
            return None
        compared = {op.output for op in ops if op.op == GET and op.output is not None}
        compared |= {op.expected for op in ops if op.op == CAS and op.expected is not None}
        if any(op.op == APPEND for op in ops):
            compared = {value[:end] for value in compared for end in range(len(value) + 1)}
        fresh = "\x00" * (max((len(value) for value in compared), default=0) + 1)
        return [None, *sorted(compared), fresh]

    def describe_state(self, state: Any) -> str:
        special = describe(state)
        if special is not None:
            return special
        if isinstance(state, tuple):
            return "{" + ", ".join(f"{key!r}: {value!r}" for key, value in state) + "}"
        return "absent" if state is None else repr(state)


KEY_VALUE_MODEL = KeyValueModel()
