"""The ordering interface: what a total-order protocol implements for SMR.

It sits below both sides (see ``docs/architecture.md``): an ordering protocol
(``replicaio.protocols.raft``; PBFT and MinBFT next) implements
:class:`Ordering` without importing ``replicaio.smr``, and SMR
(``replicaio.smr.replica``) drives any :class:`Ordering` without naming a
protocol. The decision and its alternatives: ``docs/adr/0005-smr-ordering-interface.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from replicaio.core.lines import Line

# -- what an ordering protocol implements -------------------------------------


@dataclass(frozen=True, slots=True)
class NotLeader:
    """This replica cannot order (or serve a linearizable read) now."""

    leader: int  # -1 when unknown


@dataclass(frozen=True, slots=True)
class Committed:
    """Batch ``index`` of the total order (indices 1, 2, 3, ... with no gaps).

    An empty ``batch`` (``b""``) is an entry of the protocol's own (a new
    leader's no-op, a configuration change): it occupies the index and carries
    no command; SMR applies nothing for it."""

    index: int
    batch: bytes


class OrderingHandlers(Protocol):
    """What SMR gives the ordering protocol to call (all synchronous, in the
    node's step)."""

    def on_commit(self, committed: Committed) -> None:
        """Called exactly once per index, in index order, starting right after
        the snapshot index (after a restart: after the restored snapshot)."""
        ...

    def on_snapshot(self, index: int, snapshot: bytes) -> None:
        """Replace SMR state by ``snapshot``, which covers every index up to
        ``index`` (state transfer to a lagging replica, or restart)."""
        ...


class Ordering(Protocol):
    """A total-order protocol under SMR. Implemented by Raft, later PBFT and
    MinBFT. See ``docs/adr/0005-smr-ordering-interface.md``."""

    def bind(self, handlers: OrderingHandlers) -> None:
        """Register SMR's handlers; called once, before :meth:`start`."""
        ...

    def start(self) -> None:
        """Start (or restart): recover durable state, hand SMR the latest
        snapshot (``on_snapshot``) if any, then resume committing."""
        ...

    def submit(self, batch: bytes) -> NotLeader | None:
        """Propose a batch for ordering. ``None``: accepted for ordering (it
        may still be lost if leadership changes; clients retry). Leader-based
        protocols answer :class:`NotLeader` on followers; BFT protocols accept
        on every replica."""
        ...

    def read_barrier(self) -> Line[int] | NotLeader:
        """A line set to an index once a linearizable read may be served after
        every batch up to that index is applied (Raft's read-index); or
        :class:`NotLeader`. The line may never be set if leadership is lost:
        callers time out."""
        ...

    def compact(self, index: int, snapshot: bytes) -> None:
        """SMR took ``snapshot`` covering every index up to ``index`` (already
        committed and applied); the protocol persists it, may discard its log
        up to there, and uses it for state transfer."""
        ...

    @property
    def leader_hint(self) -> int:
        """The replica believed to be able to order now (-1: unknown)."""
        ...


OrderingFactory = Callable[..., Ordering]
