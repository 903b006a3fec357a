"""What PBFT's and MinBFT's replicas share: one place for logic that is the same.

Both protocols order batches in views whose primary is ``view mod n``, within a
window of ``log_size`` numbers above the stable checkpoint; both keep a
replica's own batches until they execute, relayed to the primary, and run a
view's tasks in a scope that the next view cancels. :class:`BftReplica` holds
those pieces of the replica (the primary, the window, binding SMR's handlers,
sending, counting a peer's dropped message, the view's tasks and record), and
:class:`BftNormalCase` those of the normal case (keeping and relaying own
batches, taking a relay as the primary). Each protocol's class names itself by
:attr:`BftReplica.prefix` (``pbft``, ``minbft``): its counters
(``<prefix>_rejected_<reason>``, ``bound_<prefix>_relayed_max``), task names
and the messages of its typed errors keep that name.

What differs on purpose stays in each protocol: the quorum (PBFT's intersects
in f + 1 replicas, MinBFT's is a majority, its USIG showing what a replica
did), execution (a PBFT slot commits a PRE-PREPARE, possibly of an older view;
a MinBFT slot a flag beside the batch it took), STATUS (MinBFT's carries the
counters it expects of each peer's stream), how a forwarded batch is kept and
what counts as already ordered.

Pure, like the protocols: no I/O, clock or randomness; a peer's misbehaviour is
counted (:meth:`BftReplica.reject`), never asserted on; calling ``bind`` twice
or ``start`` before ``bind`` raises :class:`~replicaio.core.errors.UsageError`.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from replicaio.core.codec import Codec
from replicaio.core.context import Context
from replicaio.core.errors import UsageError
from replicaio.core.patience import ViewBackoff
from replicaio.core.scheduler import Scope
from replicaio.core.stream import Stream
from replicaio.interfaces.ordering import OrderingHandlers
from replicaio.protocols.digest import digest_of  # (MinBFT's digests are PBFT's)

if TYPE_CHECKING:
    from replicaio.protocols.minbft.messages import Relay as MinbftRelay
    from replicaio.protocols.minbft.params import MinbftParams
    from replicaio.protocols.pbft.messages import Relay as PbftRelay
    from replicaio.protocols.pbft.params import PbftParams

SlotT = TypeVar("SlotT")  # the protocol's record of one sequence number in the view


class BftReplica:
    """The view, the window and the messages out of one PBFT or MinBFT replica.

    A subclass sets every attribute declared here in its ``__init__``."""

    prefix: ClassVar[str]  # "pbft", "minbft": counters, task names, errors

    context: Context
    params: PbftParams | MinbftParams
    id: int
    n: int
    view: int
    active: bool  # False while changing to ``view``
    stable_seq: int  # h, the low watermark
    relayed: dict[bytes, bytes]  # own batches not yet executed: digest -> batch
    slots: dict[int, Any]  # seq in (h, H] -> the protocol's slot (``BftNormalCase.slot``)
    handlers: OrderingHandlers | None
    view_scope: Scope | None
    started: bool
    codec: Codec
    stream: Stream
    normal: BftNormalCase[Any]

    # -- quorums and windows -----------------------------------------------------

    def primary(self, view: int | None = None) -> int:
        """The primary of ``view`` (default: the current one): ``view mod n``."""
        return (self.view if view is None else view) % self.n

    @property
    def is_primary(self) -> bool:
        return self.primary() == self.id

    @property
    def high(self) -> int:
        """H, the high watermark: h + L."""
        return self.stable_seq + self.params.log_size

    def in_window(self, seq: int) -> bool:
        return self.stable_seq < seq <= self.high

    @property
    def leader_hint(self) -> int:
        return self.primary()

    # -- Ordering ----------------------------------------------------------------

    def bind(self, handlers: OrderingHandlers) -> None:
        """Register SMR's handlers; once, before ``start``."""
        if self.handlers is not None:
            raise UsageError(f"{self.prefix.capitalize()}.bind called twice")
        self.handlers = handlers

    def starting(self) -> None:
        """The first thing ``start`` does: it needs SMR's handlers, and runs once."""
        if self.handlers is None:
            raise UsageError(f"{self.prefix.capitalize()}.start before bind")
        assert not self.started
        self.started = True

    # -- messages ----------------------------------------------------------------

    def send(self, peer: int, message: Any) -> None:
        assert peer != self.id
        self.stream.send(peer, message)

    def send_all(self, message: Any) -> None:
        self.stream.send_all(message)

    def reject(self, reason: str) -> None:
        """A peer's message dropped: counted (``<prefix>_rejected_<reason>``; a
        ``stale_`` one, a late message for a number at or below the stable
        checkpoint, harmless and common under load, as ``<prefix>_<reason>``),
        never asserted on."""
        if reason.startswith("stale_"):
            self.context.count(f"{self.prefix}_{reason}")
            return
        self.context.count(f"{self.prefix}_rejected_{reason}")

    def count(self, counter: str, by: int = 1) -> None:
        self.context.count(counter, by)

    # -- views -------------------------------------------------------------------

    def start_view_tasks(self, tasks: list[Coroutine[Any, Any, None]]) -> None:
        """Leave the current view's tasks (cancelling them) and run ``tasks``."""
        previous = self.view_scope
        name = f"{self.prefix}.view{self.view}"
        self.view_scope = self.context.scope(name)
        if previous is not None:
            previous.cancel()
        for task in tasks:
            self.view_scope.spawn(task, name)

    def save_view(self) -> None:
        """The ``view`` record: ``(view, active)``, before any message of the view leaves."""
        self.context.persist("view", (self.view, self.active))

    # -- durable state -----------------------------------------------------------

    def encode(self, message: Any) -> bytes:
        return self.codec.encode(message)


class BftNormalCase(Generic[SlotT]):
    """The normal case's slots, own batches and relays, over a :class:`BftReplica`.

    A slot (the protocol's ``SlotT``) is made on first use, for a number within
    the window only. An own batch (SMR's, or a read barrier) is kept until it
    executes (at most ``relayed_max``: the oldest is dropped, counted
    ``bound_<prefix>_relayed_max``); the primary of an active view queues and
    numbers it, a backup relays it to the primary (and re-relays it when a view
    starts). A subclass gives :attr:`slot_type`, :meth:`relay`, :meth:`enqueue`,
    :meth:`assign`, :meth:`on_forward` and :meth:`valid_batch`."""

    # Primaries this backup asked to replace since it last waited for nothing
    # at both ends of a timeout (each doubles every timer of a view once more:
    # ``BftViewChanges.timeout_us``); set by the subclass.
    replaced: int
    slot_type: Callable[[int], SlotT]  # the protocol's slot class (made from its number)

    def __init__(self, replica: BftReplica) -> None:
        self.replica = replica
        self.relay_ticks: dict[bytes, int] = {}  # relayed digest -> status ticks waited

    def slot(self, seq: int) -> SlotT:
        """The slot of ``seq``, made on first use (``seq`` in the window: its
        callers check that a peer's number is)."""
        slots: dict[int, SlotT] = self.replica.slots
        found = slots.get(seq)
        if found is None:
            assert self.replica.in_window(seq), f"slot {seq} outside the window"
            found = slots[seq] = self.slot_type(seq)
        return found

    def submit(self, batch: bytes) -> None:
        """A batch of this replica's own (a read barrier): kept until executed,
        queued on the primary, relayed by a backup, re-relayed after a view change."""
        replica = self.replica
        digest = digest_of(batch)
        relayed = replica.relayed
        if digest not in relayed:
            if len(relayed) >= replica.params.relayed_max:
                oldest = next(iter(relayed))
                del relayed[oldest]
                self.relay_ticks.pop(oldest, None)
                replica.count(f"bound_{replica.prefix}_relayed_max")
            relayed[digest] = batch
            self.relay_ticks[digest] = 0
        if not replica.active:
            return  # re-relayed (or queued) when the next view starts
        if replica.is_primary:
            self.enqueue(batch)
            self.assign()
        else:
            self.relay(batch)

    def on_relay(self, source: int, relay: PbftRelay | MinbftRelay) -> None:
        """A batch relayed to this replica: the primary of an active view queues
        it; otherwise it is dropped, except by a backup of an active view, which
        takes it as another backup's forward (or a relay of a replica in another
        view: this one's primary among them, once it left the view)."""
        replica = self.replica
        if replica.active and not replica.is_primary:
            self.on_forward(source, relay)
            return
        if not replica.active or not replica.is_primary:
            replica.reject("relay_not_primary")
            return
        if len(relay.batch) > replica.params.batch_bytes_max:
            replica.reject("relay_oversized")
            return
        if not self.valid_batch(relay.batch):
            # A faulty backup's: proposed, correct backups would refuse it and
            # this (correct) primary would be suspected.
            replica.reject("relay_invalid_batch")
            return
        self.enqueue(relay.batch)
        self.assign()

    # -- given by each protocol ------------------------------------------------------

    def relay(self, batch: bytes) -> None:
        """Send ``batch`` to the primary (the protocol's RELAY message)."""
        raise NotImplementedError

    def enqueue(self, batch: bytes) -> None:
        """Queue ``batch`` for a number (the primary), unless it is known."""
        raise NotImplementedError

    def assign(self) -> None:
        """Number queued batches while the window allows (the primary)."""
        raise NotImplementedError

    def on_forward(self, source: int, relay: Any) -> None:
        """A RELAY from another backup (a batch it forwarded on suspicion)."""
        raise NotImplementedError

    def valid_batch(self, batch: bytes) -> bool:
        """Whether a batch another replica gives this one may be ordered."""
        raise NotImplementedError


class BftViewChanges(ViewBackoff):
    """The back-off of every timer of a :class:`BftReplica`'s current view
    (:class:`~replicaio.core.patience.ViewBackoff`, ADR 0040, 0046), under the
    protocol's view changes (a subclass). The view's timeout is
    ``view_change_timeout_us`` doubled per view in a row before it without
    progress, fixed when the replica moved to the view, and at least once per
    primary this backup asked to replace since it last waited for nothing
    (``replaced``). A view that starts but executes nothing does not reset the
    back-off (before 2026-12-06 a view start did: ADR 0039, 0040), nor does its
    first batch (a timer shorter than a batch round would replace primary after
    primary: ADR 0046)."""

    def __init__(self, replica: BftReplica) -> None:
        self.replica = replica
        self.init_backoff()

    def timeout_us(self) -> int:
        """The timeout of every timer of the current view (the new-view timer,
        the backup's request timer)."""
        replica = self.replica
        params = replica.params
        return self.backoff_timeout_us(params.view_change_timeout_us, replica.normal.replaced,
                                       params.view_change_backoff_exponent_max)

    def on_progress(self) -> None:
        """A batch executed: in an active view, the ``PROGRESS_BATCHES``-th this
        replica executed in it makes it a view with progress."""
        replica = self.replica
        if replica.active:
            self.executed_in_backoff(replica.view)

    def on_idle(self) -> None:
        """This backup's request timer waited for nothing at both ends of
        ``PATIENCE_TIMEOUTS`` timeouts in a row in its active view: the view
        counts as progress, as ``PROGRESS_BATCHES`` executed would (a group with
        sparse traffic shows no other; ADR 0040). The view keeps its own doubling."""
        self.idle_in_backoff(self.replica.view)
