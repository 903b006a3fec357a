"""The protocol-neutral contract between state machine replication and ordering.

Three layers meet here (see ``docs/adr/0005-smr-ordering-interface.md``):

* the **application** implements :class:`StateMachine` (the KV store does);
* **SMR** (``replicaio.smr``) owns everything every replication protocol
  needs: client sessions with at-most-once execution, batching, replies,
  forwarding, snapshots of the application and of the session table, reads;
* an **ordering protocol** (Raft now; PBFT and MinBFT next) implements
  :class:`Ordering`: it turns submitted batches into one totally ordered,
  gap-free sequence of committed batches, identical on every correct replica.

Clients talk to a replica through the host: a :class:`ClientRequest` arrives
as a ``Request`` input; the replica answers with a :class:`Reply`,
:class:`Redirect` or :class:`Rejected` output. Every replica applies every
committed batch; the replica(s) that received a request from the client
output its reply (with BFT protocols, every replica does and the client waits
for f + 1 matching replies).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from replicaio.core.codec import message
from replicaio.core.lines import Line

# -- what clients send and receive -------------------------------------------


@message(tag="smr.ClientRequest")
class ClientRequest:
    """A client's command. ``(client, seq)`` identifies it for at-most-once
    execution: a client numbers its requests 1, 2, 3, ... and has at most one
    outstanding; a retry reuses the number."""

    client: int
    seq: int
    command: bytes
    read_only: bool


@message(tag="smr.Reply")
class Reply:
    """The result of request ``(client, seq)`` as executed by ``replica``."""

    client: int
    seq: int
    result: bytes
    replica: int


@message(tag="smr.Redirect")
class Redirect:
    """This replica cannot order requests; ``leader`` may (-1: unknown)."""

    client: int
    seq: int
    leader: int


@message(tag="smr.Rejected")
class Rejected:
    """The request was refused and certainly not executed (``reason`` says why:
    ``busy``, ``too_large``, ``stale_seq``, ``no_quorum``...)."""

    client: int
    seq: int
    reason: str


# -- what the application implements -----------------------------------------


class StateMachine(Protocol):
    """A deterministic application. The same commands in the same order from
    the same snapshot give the same results and state, on every replica."""

    def apply(self, command: bytes) -> bytes:
        """Execute a command; return its result. Must not raise on bad
        commands: return an error result instead (they are replicated too)."""
        ...

    def read(self, command: bytes) -> bytes:
        """Execute a read-only command against the current state."""
        ...

    def snapshot(self) -> bytes:
        """The whole state, in a versioned format."""
        ...

    def restore(self, snapshot: bytes) -> None:
        """Replace the state by a snapshot taken by :meth:`snapshot`."""
        ...


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
