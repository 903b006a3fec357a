"""The protocol-neutral contract between state machine replication and ordering.

Three layers meet here (see ``docs/adr/0005-smr-ordering-interface.md``):

* the **application** implements :class:`StateMachine` (the KV store does);
* **SMR** (``replicaio.smr``) owns everything every replication protocol
  needs: client sessions with at-most-once execution, batching, replies,
  forwarding, snapshots of the application and of the session table, reads;
* an **ordering protocol** (Raft now; PBFT and MinBFT next) implements
  :class:`Ordering`: it turns submitted batches into one totally ordered,
  gap-free sequence of committed batches, identical on every correct replica.
  That interface is defined one layer down, in
  :mod:`replicaio.interfaces.ordering` (protocols may not import ``smr``), and
  re-exported here as part of SMR's contract.

Clients talk to a replica through the host: a :class:`ClientRequest` arrives
as a ``Request`` input; the replica answers with a :class:`Reply`,
:class:`Redirect` or :class:`Rejected` output. Every replica applies every
committed batch; the replica(s) that received a request from the client
output its reply (with BFT protocols, every replica does and the client waits
for f + 1 matching replies).
"""

from __future__ import annotations

from typing import Annotated, Protocol, runtime_checkable

from replicaio.core.codec import Message, Meta, Name
from replicaio.interfaces.ordering import (
    Committed,
    Hurry,
    NotLeader,
    Ordering,
    OrderingFactory,
    OrderingHandlers,
    RelayWatch,
    Views,
)

__all__ = [
    "AuthenticatedRequest",
    "ClientRequest",
    "Clocked",
    "Committed",
    "Hurry",
    "NotLeader",
    "Ordering",
    "OrderingFactory",
    "OrderingHandlers",
    "Redirect",
    "Rejected",
    "RelayWatch",
    "Reply",
    "StateMachine",
    "Views",
]

# -- what clients send and receive -------------------------------------------

# Wire bounds (SmrParams are validated against them).
COMMAND_BYTES_MAX = 1 << 26
RESULT_BYTES_MAX = 1 << 26
KEY_BYTES_MAX = 64  # a client's public key, when its authenticator scheme names one
AUTHENTICATOR_BYTES_MAX = 32 * 1024  # a signature, or a MAC vector (one MAC per replica)


class ClientRequest(Message, tag="smr.ClientRequest"):
    """A client's command. ``(client, seq)`` identifies it for at-most-once
    execution: a client numbers its requests 1, 2, 3, ... and has at most one
    outstanding; a retry reuses the number.

    ``unordered`` (with ``read_only``; Byzantine fault tolerant services only):
    the read-only optimisation of Castro and Liskov (TOCS 2002, section 5.1.3):
    each replica answers at once from its current state, without ordering; the
    client accepts 2f+1 matching answers, and otherwise sends the read again,
    ordered, under a new ``seq`` (``replicaio.smr.client``)."""

    client: int
    seq: int
    command: Annotated[bytes, Meta(max_length=COMMAND_BYTES_MAX)]
    read_only: bool
    unordered: bool = False


class AuthenticatedRequest(Message, tag="smr.AuthenticatedRequest"):
    """A request with its client's authenticator, as a client of a Byzantine
    fault tolerant service sends it. It stays whole inside batches, so every
    replica can check every request it executes (``replicaio.smr.auth``):

    * ``ed25519``: ``key`` is the client's public key (the client id is derived
      from it, :func:`replicaio.smr.auth.client_id_of`), ``authenticator`` its
      signature of the request;
    * ``keyed`` (simulation, and clusters with ``hmac`` auth): ``key`` empty,
      ``authenticator`` a keyed hash with the client's key;
    * ``mac``: ``key`` empty, ``authenticator`` one MAC per replica.
    """

    request: ClientRequest
    key: Annotated[bytes, Meta(max_length=KEY_BYTES_MAX)]
    authenticator: Annotated[bytes, Meta(max_length=AUTHENTICATOR_BYTES_MAX)]


class Reply(Message, tag="smr.Reply"):
    """The result of request ``(client, seq)`` as executed by ``replica``, with its
    hints: ``leader``, the replica it believes orders now (-1: unknown), and
    ``view``, the ordering protocol's view or term (-1: none given). A client of
    a Byzantine fault tolerant service accepts ``result`` once f+1 replicas sent
    the same one (``replicaio.smr.client``); hints are not part of the match."""

    client: int
    seq: int
    result: Annotated[bytes, Meta(max_length=RESULT_BYTES_MAX)]
    replica: int
    leader: int = -1
    view: int = -1


class Redirect(Message, tag="smr.Redirect"):
    """This replica cannot order requests; ``leader`` may (-1: unknown).

    ``forwarded``: the replica had handed the request to another replica
    (``Forward``), which refused that copy. The network may still hold other
    copies of the ``Forward`` (duplicated, delayed) that a later leader takes,
    so the request **may still execute**: a client must not count this answer
    as a refusal. Without ``forwarded`` the request never left this replica
    in this attempt."""

    client: int
    seq: int
    leader: int
    forwarded: bool = False


class Rejected(Message, tag="smr.Rejected"):
    """The request was refused and certainly not executed (``reason`` says why:
    ``busy``, ``too_large``, ``stale_seq``, ``no_quorum``...)."""

    client: int
    seq: int
    reason: Name


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


@runtime_checkable
class Clocked(Protocol):
    """Optional for a state machine: it keeps the time of the log (key expiry).

    Before the requests of each committed batch run, SMR calls
    :meth:`advance_clock` with the batch's ``time_ms``: the clock of the
    replica that cut it (the leader), read through the ``clock_ms`` choice
    point. The state machine must never let its time go back (a new leader's
    clock may be behind), so every replica computes the same time at every
    position of the log.
    """

    def advance_clock(self, time_ms: int) -> None:
        """The log's time is now at least ``time_ms`` (milliseconds)."""
        ...
