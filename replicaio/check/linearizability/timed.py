"""The key-value model's keys with an expiry (``putx``) and its lists (``rpush``, ``lrange``).

**Expiry by the log's clock.** A ``putx`` writes a value with an absolute
deadline (``expected``: milliseconds of the service's clock); the key is
absent from the moment the clock reaches it. The checker does not know the
clock at each operation's point; it keeps a *lower bound* in the state
(:class:`Timed`): an operation takes effect at a time at least its ``call``
(the service stamps it after it was invoked) and at least the bound before it
(the clock never goes back). ``call`` and ``return`` must be microseconds of
the same clock the deadlines are in milliseconds of (the simulator records
them so). So, with ``t`` = max(bound, call):

* a ``get`` may read the value if the deadline is above ``t``; it may read
  absent if the key is absent or its deadline is at most its ``return``. A
  ``get`` changes nothing, not even the bound: the search takes a read as
  soon as it can take effect (a read-only operation must not change the
  state), so what a read learns about the clock is not kept; the check is
  weaker (a read may see a value after another saw it expired, if no write
  came between) but never rejects a valid history;
* ``put``, ``putx`` and ``delete`` raise the bound to their ``call``; ``put``
  and ``delete`` drop the deadline; ``putx`` sets value and deadline.

Only ``get``, ``put``, ``putx`` and ``delete`` meet deadlines here (the
simulated workload uses ``putx`` keys with nothing else): ``append``, ``cas``
and ``incr`` on a key whose deadline may have passed are judged as if it had
not, which could only make the checker reject a valid history, never accept
a wrong one. An ``info`` operation takes effect at an unknown time: it does
not raise the bound (the search treats equal ``info`` operations as
interchangeable, so their effect may not depend on their times).

**Lists.** :class:`ListState` holds a list's elements; ``rpush`` appends one
and outputs the new length; ``lrange`` outputs all elements (a JSON array).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from replicaio.check.history import DELETE, GET, LRANGE, OK, PUT, PUTX, RPUSH, Operation


@dataclass(frozen=True, slots=True)
class Timed:
    """A key's value (None: absent), its deadline (None: none), and a lower bound
    of the service's clock (ms) at this point of the linearization."""

    value: str | None
    deadline: int | None
    floor_ms: int


@dataclass(frozen=True, slots=True)
class ListState:
    items: tuple[str, ...]


def call_ms(op: Operation) -> int:
    """The clock's lower bound at ``op`` (its call, in ms; known only for ``ok`` ones)."""
    return int(op.call // 1000) if op.status == OK else 0


def return_ms(op: Operation) -> float:
    """The clock's upper bound at ``op`` (unbounded for an ``info`` one)."""
    if op.status != OK or op.return_ is None:
        return float("inf")
    return op.return_ / 1000


def step_timed(state: object, op: Operation) -> tuple[bool, object]:
    """``op`` (get, put, putx, delete) on a key that has had a ``putx``."""
    current = state if isinstance(state, Timed) else Timed(
        state if isinstance(state, str) else None, None, 0
    )
    now = max(current.floor_ms, call_ms(op))
    kind = op.op
    if kind == PUTX:
        assert op.expected is not None
        return True, Timed(op.value, int(op.expected), now)
    if kind == PUT:
        return True, Timed(op.value, None, now)
    if kind == DELETE:
        return True, Timed(None, None, now)
    assert kind == GET  # a pure read: it never changes the state (see the docstring)
    deadline = current.deadline
    if op.status != OK:
        return True, state
    if op.output is not None:
        present = current.value is not None and (deadline is None or deadline > now)
        return (present and op.output == current.value), state
    if current.value is None:
        return True, state
    return deadline is not None and deadline <= return_ms(op), state  # seen expired


def step_list(state: object, op: Operation) -> tuple[bool, object]:
    """``rpush`` or ``lrange`` on a list key (absent: the empty list)."""
    items = state.items if isinstance(state, ListState) else ()
    if op.op == RPUSH:
        assert op.value is not None
        grown = (*items, op.value)
        if op.status == OK and op.output != str(len(grown)):
            return False, state
        return True, ListState(grown)
    assert op.op == LRANGE
    if op.status != OK:
        return True, state
    assert op.output is not None
    return json.loads(op.output) == list(items), state


def describe(state: object) -> str | None:
    if isinstance(state, Timed):
        due = "" if state.deadline is None else f" until {state.deadline} ms"
        return f"{state.value!r}{due} (clock >= {state.floor_ms} ms)"
    if isinstance(state, ListState):
        return json.dumps(list(state.items))
    return None
