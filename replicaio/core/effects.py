"""The host boundary: what goes into a node's core and what comes out.

A host (the simulator or the live runtime) owns one :class:`~replicaio.core.node.Node`
per node and calls ``node.step(input)`` with one of the inputs below. The core
runs until nothing more can happen and returns one :class:`Effects` batch (a
step that did nothing returns the shared :data:`NO_EFFECTS`, which nobody may
add to).

The host MUST execute a batch in this order (after etcd raft's ``Ready``):

1. ``persists``: apply every write, in order, then sync storage once. Nothing
   below may happen before the sync returns, because messages and outputs in
   the batch may depend on those writes being durable (a vote, an echo).
   Exception: the sends whose positions ``sends_before_sync`` lists depend on
   no write that is not yet durable (a Raft leader's AppendEntries, thesis
   10.2.1: the leader counts its own copy only once it is durable); a host
   may hand them to the transport before the sync, and a crash in the middle
   of the writes may let them out while the writes are lost.
2. ``sends``: hand each message to the transport, in order.
3. ``timers_cancelled`` then ``timers_set``: cancel, then arm timers; a timer
   fires by feeding :class:`TimerFired` back in. A timer is armed only after
   the sync of its step (and of every earlier step), so a timer of delay 0 tells
   the core that everything it wrote up to that step is durable.
4. ``outputs``: hand each output (a delivery, a reply) to the application.

A host may hand a batch's outputs to the application before its sends (the
live host does, ``[host] replies_first``): a send is only handed to a
transport that delivers it later anyway, so nobody can tell the two orders
apart; the order among sends, and everything after the sync, stays.

Time is virtual to the core: delays are integers in microseconds, relative to
the moment the host executes the batch. The core never reads a clock. A
protocol that needs to know the time of day (SMR stamps each batch so that
key expiry is deterministic) asks through a choice point labelled
:data:`CLOCK_CHOICE` with ``count`` above any reading: the host answers its
clock in milliseconds (the live host: the wall clock; the simulator: virtual
time; replay: the recorded answer; a Byzantine node's adversary: anything).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import msgspec

Path = tuple[int | str, ...]

CLOCK_CHOICE = "clock_ms"  # a choice point the host resolves with its clock (ms)

_T = TypeVar("_T")

# Output types a host logs at warning as it releases them: rare events an
# operator must see (a follower whose log went backwards). Registered at import.
NOTICE_TYPES: set[type] = set()


def notice(cls: type[_T]) -> type[_T]:
    """Register the output type ``cls`` as one hosts log at warning."""
    NOTICE_TYPES.add(cls)
    return cls


# What an operator reads with a notice: a sentence with the output's fields in
# braces (``str.format``), saying what happened and what to do about it.
NOTICE_ADVICE: dict[type, str] = {}


def notice_advising(advice: str) -> Callable[[type[_T]], type[_T]]:
    """Register a notice (logged at warning) with the ``advice`` its log line
    carries, formatted with the output's fields."""

    def register(cls: type[_T]) -> type[_T]:
        NOTICE_ADVICE[cls] = advice
        return notice(cls)

    return register


# Output types a live host logs at info as it releases them, with the message
# an operator reads (a leader elected, a membership change, a snapshot).
OPERATOR_EVENTS: dict[type, str] = {}


def operator_event(message: str) -> Callable[[type[_T]], type[_T]]:
    """Register an output type as an operator event logged with ``message``."""

    def register(cls: type[_T]) -> type[_T]:
        OPERATOR_EVENTS[cls] = message
        return cls

    return register


@dataclass(frozen=True, slots=True)
class Start:
    """Begin an incarnation of the node with its recovered durable state.

    ``damaged``: the storage reported that it may have lost writes it had
    acknowledged (see ``replicaio.storage.base.StorageDamage``); the protocol
    must not act on what it may have promised and forgotten (a vote, an
    acknowledged entry) until it has recovered from its peers.
    ``incarnation_floor``: every incarnation this node ever used is at most
    this (the storage's epoch, which survives damage to the log); the new
    incarnation is above it even if the stored one went back.
    """

    storage: Mapping[str, bytes]
    damaged: bool = False
    incarnation_floor: int = 0


# The inputs a host makes at every step are frozen msgspec structs: built five
# times faster than a frozen dataclass (whose __init__ goes through
# object.__setattr__), and a simulated run makes one per delivered message.


class Receive(msgspec.Struct, frozen=True):
    """A message from peer ``source``: wire bytes, or a decoded message when the
    host skips encoding (simulation speed mode)."""

    source: int
    message: Any


class TimerFired(msgspec.Struct, frozen=True):
    """A timer armed by an earlier ``timers_set`` effect expired."""

    timer_id: int


class Request(msgspec.Struct, frozen=True):
    """A request from a local client or application (e.g. "broadcast this")."""

    payload: Any


Input = Start | Receive | TimerFired | Request


class Effects:
    """One batch of effects from one step; see the module docstring for the order.

    A plain class with ``__slots__`` (not a dataclass: the compiled build makes
    it an extension type, ADR 0038, whose attributes a node's and the
    simulator's compiled code read from its struct), with a dataclass's
    ``__eq__`` and ``__repr__``."""

    __slots__ = (
        "outputs",
        "persists",
        "sends",
        "sends_before_sync",
        "timers_cancelled",
        "timers_set",
    )

    persists: list[tuple[str, bytes | None]]
    sends: list[tuple[int, Any]]
    timers_cancelled: list[int]
    timers_set: list[tuple[int, int]]
    outputs: list[Any]
    # Positions in ``sends`` that may leave before the sync (see the module
    # docstring); None when there are none (the common case, no list made).
    sends_before_sync: list[int] | None

    def __init__(
        self,
        persists: list[tuple[str, bytes | None]] | None = None,
        sends: list[tuple[int, Any]] | None = None,
        timers_cancelled: list[int] | None = None,
        timers_set: list[tuple[int, int]] | None = None,
        outputs: list[Any] | None = None,
        sends_before_sync: list[int] | None = None,
    ) -> None:
        # Written out: the generated __init__ (default factories) costs twice
        # as much, and every step makes one batch.
        self.persists = [] if persists is None else persists
        self.sends = [] if sends is None else sends
        self.timers_cancelled = [] if timers_cancelled is None else timers_cancelled
        self.timers_set = [] if timers_set is None else timers_set
        self.outputs = [] if outputs is None else outputs
        self.sends_before_sync = sends_before_sync

    def __bool__(self) -> bool:
        return bool(
            self.persists
            or self.sends
            or self.timers_cancelled
            or self.timers_set
            or self.outputs
        )

    def _fields(self) -> tuple[Any, ...]:
        return (self.persists, self.sends, self.timers_cancelled, self.timers_set,
                self.outputs, self.sends_before_sync)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Effects)
        return self._fields() == other._fields()

    def __repr__(self) -> str:
        return (f"Effects(persists={self.persists!r}, sends={self.sends!r}, "
                f"timers_cancelled={self.timers_cancelled!r}, timers_set={self.timers_set!r}, "
                f"outputs={self.outputs!r}, sends_before_sync={self.sends_before_sync!r})")


class SealedList(list):  # type: ignore[type-arg]
    """An empty list that refuses to change: the parts of :data:`NO_EFFECTS`
    (equal to ``[]``, and read like any list)."""

    __slots__ = ()

    def _refuse(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("NO_EFFECTS is shared by every step that did nothing: never add to it")

    append = extend = insert = remove = pop = clear = sort = reverse = _refuse
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse


# The batch of every step that did nothing (most steps of a busy node: a message
# that completes nothing), returned instead of a fresh batch; the node keeps its
# own empty batch for the next step. Shared, so sealed: a host that tried to
# add to it would fail at once.
NO_EFFECTS = Effects(SealedList(), SealedList(), SealedList(), SealedList(), SealedList())
