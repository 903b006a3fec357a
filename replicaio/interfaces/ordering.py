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
from typing import Protocol, runtime_checkable

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

    def validate_batch(self, batch: bytes, proposer: int | None = None) -> bool:
        """Whether a batch another replica proposes may be ordered: it decodes
        within the cluster constants and every request in it carries a valid
        client authenticator. ``proposer``: the replica whose own signed proposal
        carries the batch (PBFT's primary of the PRE-PREPARE's view), whose own
        in-node clients' requests are taken on the proposal's word (ADR 0028);
        ``None`` when the batch comes otherwise (every request checked). A
        Byzantine fault tolerant backup calls it before accepting a primary's
        proposal (PBFT's PRE-PREPARE, Castro and Liskov section 4.2) and
        refuses the proposal when it answers False; an empty
        batch (the protocol's own null request) is not asked about. Pure: the
        same bytes give the same answer on every correct replica (for the
        ``mac`` client scheme, on this replica). Crash-fault protocols need not
        call it."""
        ...

    def requests_of(self, batch: bytes) -> tuple[tuple[int, int], ...]:
        """The ``(client, seq)`` of every request in ``batch`` (``()`` if it does
        not decode as this cluster's batches). A Byzantine fault tolerant backup
        that answered :meth:`Ordering.submit` with :class:`NotLeader` watches
        these requests execute and suspects the primary when they do not
        (PBFT's per-request timer, Castro and Liskov section 4.4): the ordering
        cannot read SMR's batches itself. Pure."""
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
        may still be lost if leadership changes; clients retry). Only the
        replica that orders now accepts: the other replicas answer
        :class:`NotLeader` with their hint, and SMR relays the requests to it
        (one request a client multicasts is then ordered once, not up to n
        times). A Byzantine fault tolerant backup answers ``NotLeader(primary)``
        and may take the call as "requests are waiting" (PBFT arms its
        view-change timer, section 4.4)."""
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
        up to there, and uses it for state transfer. Called for *every*
        checkpoint, in index order: at each multiple of the cluster constant
        ``snapshot_interval``, the same indices with byte-identical snapshots on
        every correct replica (a BFT protocol certifies each one)."""
        ...

    @property
    def leader_hint(self) -> int:
        """The replica believed to be able to order now (-1: unknown)."""
        ...


@runtime_checkable
class Views(Protocol):
    """Optional for an ordering protocol: its view (PBFT) or term (Raft), which
    SMR puts in every reply as a hint for clients."""

    @property
    def view_hint(self) -> int:
        """The current view or term (-1: none)."""
        ...


@runtime_checkable
class Hurry(Protocol):
    """Optional for an ordering protocol that may hold back telling the other
    replicas of a commit (Raft's ``RaftParams.commit_notice_delay_us``): SMR
    names the replica one of whose clients waits for that news, so that it
    hears it at once (docs/raft.md, "A notice held for entries to carry it").
    Only a latency hint: safety never depends on it."""

    def hurry(self, replica: int) -> None:
        """A client of ``replica`` waits until ``replica`` has applied every
        batch ordered so far (a write it relayed, a read index it asked for):
        tell it each commit up to there without delay. Ignored unless this
        replica orders now and ``replica`` is one of its peers."""
        ...


@runtime_checkable
class RelayWatch(Protocol):
    """Optional for a Byzantine fault tolerant ordering whose backups time the
    requests they hand to the primary (PBFT's request timer, Castro and Liskov,
    OSDI 1999, 4.4; TOCS 2002, 4.5.2: "a backup starts a timer when it receives a
    request", the request it then relays to the primary). After
    :meth:`Ordering.submit` answered :class:`NotLeader`, SMR calls
    :meth:`watch_relayed` once, in the same step, with exactly the requests of that
    batch it sent on to the replica the answer named: its own clients'. The
    others it did not relay (it refuses a request another replica forwarded to
    it, whose origin tells the client; it redirects a client when it forwards
    nothing), so no primary is responsible for ordering them on this replica's
    word, and timing them would suspect a correct primary once their clients
    gave up (``swarm pbft --nodes 4 --byzantine 1`` seed 246, 2026-12-08; ADR 0075)."""

    def watch_relayed(self, requests: tuple[tuple[int, int], ...]) -> None:
        """SMR sent these ``(client, seq)`` requests of the batch just refused to
        the leader it was told: watch them execute (never called with a request
        SMR kept, refused or redirected)."""
        ...


OrderingFactory = Callable[..., Ordering]
