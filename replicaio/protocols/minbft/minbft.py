"""The MinBFT component: shared state, the Ordering API, USIG streams, execution, recovery.

One :class:`Minbft` per replica implements :class:`replicaio.interfaces.ordering.Ordering`.
It owns what every phase shares: the view, the stable checkpoint, the slots of
the numbers in flight, this replica's USIG and its own certified messages, and
one :class:`PeerStream` per peer, through which every UI-certified message of
that peer passes *in counter order* (a gap is held, up to ``held_max``
messages, and filled by retransmission: peers answer a STATUS with their own
messages from the counter it expects). The stream's rules depend only on the
stream (so every correct replica judges a peer's message alike):

* a PREPARE is valid only from the primary of a view whose NEW-VIEW came
  before it in the stream, numbered one above the previous PREPARE of that
  view (the first one above the NEW-VIEW's last number), within K above the
  primary's own latest CHECKPOINT, with the batch its digest names; anything
  else marks the primary faulty for the view (no further PREPARE counts);
* a COMMIT counts only for the view its author is in (a VIEW-CHANGE in its
  stream moves it on: a COMMIT it certified later for an older view is void,
  which is what keeps its VIEW-CHANGE log complete), within K above its own
  latest CHECKPOINT;
* CHECKPOINTs go up in K steps.

Durable records, and why each prefix of a step's writes restarts:

* ``usig`` (the USIG's counter, through ``ContextUsigStore``) and ``own<c>``
  (own message ``c`` with its batch): ``own<c>`` is written without its UI
  first, then the USIG's counter, then ``own<c>`` with its UI; a restart drops
  an ``own<c>`` above the counter (never released) and asks the USIG again for
  the last one's UI (``reissue_last``: the same bytes get the same UI);
* ``rx<j>``: peer ``j``'s stream (the next counter, the view, the latest
  CHECKPOINT and PREPARE it showed), after each message processed;
* ``view`` (view, active); ``nv`` (the NEW-VIEW of the current view);
* ``pp<seq>`` (the PREPARE accepted), ``vt<seq>`` (the votes counted),
  ``cm<seq>`` (the digest committed, before execution);
* ``stable`` (seq, digest, snapshot, certificate, own CHECKPOINT), written
  before anything below it is erased.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, cast

from msgspec.structs import replace

from replicaio.core.codec import Codec
from replicaio.core.context import Context
from replicaio.core.lines import Line
from replicaio.interfaces.ordering import Committed, NotLeader, OrderingHandlers
from replicaio.protocols.bft import BftReplica
from replicaio.protocols.minbft.audit import audit_minbft
from replicaio.protocols.minbft.checkpoint import Checkpoints
from replicaio.protocols.minbft.messages import (
    EMPTY_UI,
    UI,
    WIRE_TYPES,
    Checkpoint,
    Commit,
    Executed,
    NewView,
    NewViewCommit,
    Prepare,
    Relay,
    ReqViewChange,
    Resume,
    StateReply,
    StateRequest,
    Status,
    ViewChange,
    ViewChangeStarted,
    ViewStarted,
    certified_bytes,
)
from replicaio.protocols.minbft.normal import BARRIER_MAGIC, NormalCase, Slot
from replicaio.protocols.minbft.params import MinbftParams
from replicaio.protocols.minbft.recovery import Recovery
from replicaio.protocols.minbft.streams import PeerStream
from replicaio.protocols.minbft.usig import (
    Usig,
    UsigAttestation,
    UsigId,
    UsigScheme,
    simulation_scheme,
    verify_attestation,
)
from replicaio.protocols.minbft.view_change import ViewChanges, message_view
from replicaio.protocols.pbft.barriers import ReadBarriers
from replicaio.protocols.pbft.state_transfer import StateTransfer

RECORD_FRAME_BYTES_MAX = 1 << 28


class Minbft(BftReplica):
    """MinBFT (Veronese et al., IEEE TC 2013) as an
    :class:`~replicaio.interfaces.ordering.Ordering`; n >= 2f+1 with a USIG per
    replica. Give it its own context (a child path) and the USIG scheme of the
    cluster (default: the simulation's)."""

    normal_type: ClassVar[type[NormalCase]] = NormalCase
    checkpoints_type: ClassVar[type[Checkpoints]] = Checkpoints
    view_changes_type: ClassVar[type[ViewChanges]] = ViewChanges
    usig_type: ClassVar[type[Usig]] = Usig
    recovery_type: ClassVar[type[Recovery]] = Recovery
    stream_type: ClassVar[type[PeerStream]] = PeerStream
    prefix: ClassVar[str] = "minbft"

    def __init__(self, context: Context, params: MinbftParams | None = None,
                 scheme: UsigScheme | None = None) -> None:
        self.context = context
        self.params: MinbftParams = (params or MinbftParams()).validate()
        self.id = context.id
        self.n = context.n
        self.f = context.f
        # The replicated group this replica orders for (None: the node's only
        # MinBFT): every USIG identity it certifies or checks under names it,
        # so a UI of another group's USIG on this node never verifies here.
        self.group: int | None = context.group
        configured = cast("UsigScheme | None", context.usig_scheme)
        self.scheme = scheme or configured or simulation_scheme()
        self.view = 0
        self.active = True
        self.stable_seq = 0
        self.stable_digest = b""
        self.stable_proof: tuple[Checkpoint, ...] = ()
        self.stable_snapshot = b""
        # Own CHECKPOINT of the (newest) stable checkpoint that has one, with that
        # checkpoint's certificate: where VIEW-CHANGE logs start.
        self.own_checkpoint: Checkpoint | None = None
        self.anchor_proof: tuple[Checkpoint, ...] = ()
        # The USIG's attestation made at the anchor's counter (Resume), and at
        # each own CHECKPOINT's in the own log (kept in its ``own<c>`` record).
        self.anchor_attestation: UsigAttestation | None = None
        self.attestations: dict[int, UsigAttestation] = {}
        self.own_last_checkpoint = 0  # the highest number of an own CHECKPOINT
        self.executed = 0
        self.slots: dict[int, Slot] = {}
        self.prepared_proofs: dict[int, Any] = {}  # (PBFT's state transfer clears it)
        self.relayed: dict[bytes, bytes] = {}
        # Reads share barriers, as PBFT's (before 2026-12-05 each read ordered a
        # barrier of its own: with half the clients reading, MinBFT did less than
        # with writes alone).
        self.barriers = ReadBarriers(context, "minbft", BARRIER_MAGIC, self.params.barriers_max,
                                     lambda batch: self.normal.submit(batch))
        self.own_log: dict[int, tuple[Any, bytes]] = {}  # counter -> (own message, batch)
        self.streams: dict[int, PeerStream] = {
            peer: self.stream_type(peer) for peer in range(self.n) if peer != self.id
        }
        # peer -> its COMMITs and NEW-VIEW-COMMITs for a view not started here yet,
        # taken from its stream (which will not bring them again) before the
        # NEW-VIEW from the primary's; replayed when the view starts. At most
        # ``held_max`` per peer, of its newest view.
        self.deferred: dict[int, list[Commit | NewViewCommit]] = {}
        self.handlers = None
        self.view_scope = None
        self.started = False
        self.executing = False
        self.codec = Codec(frame_bytes_max=RECORD_FRAME_BYTES_MAX)
        self.usig: Usig | None = None  # None: not started, or inert (its state lost)
        self.recovery = self.recovery_type(self)
        self.normal: NormalCase = self.normal_type(self)
        self.checkpoints = self.checkpoints_type(self)
        self.view_changes = self.view_changes_type(self)
        # PBFT's state transfer over this state (the same attribute names): a
        # certified snapshot is fetched and checked the same way.
        self.transfer = StateTransfer(self)  # type: ignore[arg-type]
        self.stream = context.stream(*WIRE_TYPES, handler=self.on_message)
        self.dispatch: dict[type, Callable[[int, Any], None]] = {
            Relay: self.normal.on_relay,
            ReqViewChange: self.view_changes.on_request,
            Resume: self.on_resume,
            Status: self.on_status,
            StateRequest: self.transfer.on_state_request,
            StateReply: self.transfer.on_state_reply,
        }

    # -- quorums and windows ----------------------------------------------------

    @property
    def quorum(self) -> int:
        """A majority, n // 2 + 1: any two quorums share a replica, whose
        USIG-ordered messages show what it did (unique counters: it cannot show
        two histories). With the paper's n = 2f+1 that is f + 1; with more
        replicas than 2f+1 (n = 4, f = 1), f + 1 would let two disjoint pairs
        commit different batches at one number (found by pbft28: agreement
        broken on seeds 2, 3, 5 of the 8 ms run with four replicas). Never more
        than n - f, the correct replicas (f <= (n - 1) / 2), so still live."""
        return self.n // 2 + 1

    # -- Ordering ------------------------------------------------------------------

    def start(self) -> None:
        self.starting()
        self.load()
        self.recovery.on_start()
        if self.usig is None:
            return  # inert until the operator admits a new USIG (recovery.py)
        self.context.spawn(self.status_loop(), "minbft.status")
        if self.active:
            self.context.output(ViewStarted(self.id, self.view, self.primary()))
            self.start_view_tasks(self.normal.tasks())
            self.view_changes.on_restart()
            self.normal.on_view_started()
        else:
            self.context.output(ViewChangeStarted(self.id, self.view))
            self.view_changes.resume()

    @property
    def withholding(self) -> bool:
        """Whether this replica sends no votes (its USIG state was lost: recovery.py)."""
        return self.recovery.withholding

    def submit(self, batch: bytes) -> NotLeader | None:
        if self.usig is None:
            self.count("minbft_submit_inert")
            return None
        if len(batch) > self.params.batch_bytes_max:
            self.count("minbft_submit_oversized")
            return None
        self.normal.submit(batch)
        return None

    def read_barrier(self) -> Line[int] | NotLeader:
        """A line set to the number at which a barrier batch of this replica's
        executed, a barrier submitted after this call: every write that completed
        before the call is below it. Reads share barriers (one in flight, the next
        one open to every read until it is submitted), so under load a read costs
        no PREPARE of its own (each did before 2026-12-05: with half the clients
        reading, MinBFT did less than with writes alone)."""
        return self.barriers.barrier()

    def compact(self, index: int, snapshot: bytes) -> None:
        self.checkpoints.on_snapshot(index, snapshot)

    # -- messages --------------------------------------------------------------------

    def on_message(self, source: int, message: Any) -> None:
        if self.usig is None:
            self.count("minbft_inert_dropped")
            return
        if source == self.id or not 0 <= source < self.n:
            self.reject("from_self")
            return
        handler = self.dispatch.get(type(message))
        if handler is not None:
            handler(source, message)
            return
        if type(message) is Checkpoint and message.replica != source:
            self.checkpoints.on_forwarded(message)  # a certificate shown to a laggard
            return
        stream = self.streams[source]
        for admitted in stream.receive(self, message):
            self.on_certified(source, admitted)
        if stream.dirty:
            stream.dirty = False
            self.context.persist(f"rx{source}", stream.record())

    def on_certified(self, source: int, message: Any) -> None:
        """A peer's UI message, in its counter order, that its stream admitted."""
        kind = type(message)
        if kind is Prepare:
            self.normal.on_prepare(message)
        elif kind is Commit:
            if not self.defer(source, message, message.view):
                self.normal.on_commit(message)
        elif kind is Checkpoint:
            self.checkpoints.on_checkpoint(message)
        elif kind is ViewChange:
            self.view_changes.on_view_change(message)
        elif kind is NewView:
            self.view_changes.on_new_view(message)
        elif kind is NewViewCommit and not self.defer(source, message, message.header.view):
            self.view_changes.on_new_view_commit(message)

    def defer(self, source: int, message: Commit | NewViewCommit, view: int) -> bool:
        """Keep a commitment for a view this replica has not started (yet): a
        backup's COMMIT or NEW-VIEW-COMMIT may be taken from its stream before
        the primary's NEW-VIEW is taken from the primary's. Dropping it lost it
        for good, one commitment short of f+1 (swarm n=5 b=2 seed 67)."""
        if view < self.view or (view == self.view and self.active):
            return False
        kept = self.deferred.get(source, [])
        newest = max((deferred_view(item) for item in kept), default=view)
        if view > newest:
            kept = []  # the peer moved on: its commitments of older views are moot
        elif view < newest:
            self.reject("deferred_older")
            return True
        if len(kept) >= self.params.held_max:
            self.count("bound_minbft_deferred_max")
            return True
        kept.append(message)
        self.deferred[source] = kept
        self.count("minbft_deferred")
        return True

    def replay_deferred(self) -> None:
        """The view started: its deferred commitments count now."""
        for source in sorted(self.deferred):
            kept = self.deferred[source]
            now = [item for item in kept if deferred_view(item) == self.view]
            later = [item for item in kept if deferred_view(item) > self.view]
            if later:
                self.deferred[source] = later
            else:
                del self.deferred[source]
            for item in now:
                if isinstance(item, Commit):
                    self.normal.on_commit(item)
                else:
                    self.view_changes.on_new_view_commit(item)

    def usig_id(self, replica: int) -> UsigId:
        """The USIG identity this replica takes ``replica``'s stream under."""
        if replica == self.id:
            assert self.usig is not None
            return self.usig.id()
        return UsigId(replica, self.streams[replica].epoch, self.group)

    def known_usig(self, replica: int, ui: Any) -> UsigId | None:
        """The identity of ``ui``'s USIG if it is ``replica``'s current epoch or
        an older one (a UI of an epoch replaced after its state was lost is
        still a true statement: the old USIG never gave a value twice, as its
        replica never resumed it; recovery.py). Stream messages are held to
        the current epoch by the stream itself."""
        current = self.usig_id(replica)
        epoch = getattr(ui, "epoch", None)
        if type(epoch) is not int or not 0 <= epoch <= current.epoch:
            return None
        return current if epoch == current.epoch else UsigId(replica, epoch, self.group)

    def verify_ui(self, replica: int, message: Any) -> bool:
        """Whether ``message`` carries a valid UI of ``replica``'s USIG."""
        return self.usig_verify(replica, message, message.ui)

    def usig_verify(self, replica: int, message: Any, ui: Any) -> bool:
        """Whether ``ui`` is ``replica``'s UI for ``message`` (a header whose UI
        travels in another message: a COMMIT's PREPARE, a NEW-VIEW's header)."""
        if type(replica) is not int or not 0 <= replica < self.n:
            return False
        usig = self.usig
        assert usig is not None
        known = self.known_usig(replica, ui)
        return known is not None and usig.verify_ui(certified_bytes(message), ui, known)

    def emit(self, message: Any, batch: bytes = b"") -> Any:
        """Certify ``message`` (a UI message with an empty ``ui``) with this
        replica's USIG, log it durably and multicast it; returns it certified."""
        usig = self.usig
        assert usig is not None
        counter = usig.counter + 1
        self.context.persist(f"own{counter}", (self.encode(message), batch, b""))
        ui = usig.create_ui(certified_bytes(message))  # writes the counter first
        assert ui.counter == counter
        certified = replace(message, ui=ui)
        self.context.persist(f"own{counter}", self.own_record(certified, batch))
        if len(self.own_log) >= self.params.own_log_max:
            self.count("bound_minbft_own_log_max")  # a VIEW-CHANGE cannot be built: liveness only
        self.own_log[counter] = (certified, batch)
        self.send_all(certified)
        return certified

    def own_record(self, certified: Any, batch: bytes) -> tuple[bytes, bytes, bytes, bytes]:
        """``own<c>`` of a certified own message; an own CHECKPOINT's carries the
        USIG's attestation made right after it (at its counter): the resume
        point it may become needs one (``Resume``)."""
        attestation = b""
        if type(certified) is Checkpoint:
            usig = self.usig
            assert usig is not None and usig.counter == certified.ui.counter
            made = usig.attest()
            assert made is not None
            self.attestations[certified.ui.counter] = made
            attestation = self.encode(made)
        return self.encode(certified), batch, b"\x01", attestation

    def sign(self, data: bytes) -> bytes:
        return self.context.sign(data)

    # -- execution -----------------------------------------------------------------------

    def execute_ready(self) -> None:
        """Execute committed batches in number order."""
        if self.executing:
            return
        handlers = self.handlers
        assert handlers is not None
        self.executing = True
        while True:
            slot = self.slots.get(self.executed + 1)
            if slot is None or not slot.committed:
                break
            self.executed = slot.seq
            self.deliver(handlers, slot)
        self.executing = False

    def deliver(self, handlers: OrderingHandlers, slot: Slot) -> None:
        batch = slot.batch
        assert batch is not None, "a committed slot has its batch"
        self.context.output(Executed(self.id, slot.view, slot.seq, slot.digest))
        self.normal.on_executed(slot.digest)
        self.view_changes.on_progress()
        if batch.startswith(BARRIER_MAGIC):
            self.barriers.executed(batch, slot.seq)
            batch = b""
        handlers.on_commit(Committed(slot.seq, batch))

    # -- status and retransmission --------------------------------------------------------

    async def status_loop(self) -> None:
        while True:
            await self.context.sleep(self.params.status_us)
            self.barriers.on_status_tick()
            expected = tuple(
                self.streams[peer].next if peer != self.id else 0 for peer in range(self.n)
            )
            epochs = tuple(self.usig_id(replica).epoch for replica in range(self.n))
            self.send_all(Status(self.view, self.active, self.stable_seq, self.executed,
                                 self.id, expected, epochs, self.recovery.admission))
            self.normal.on_status_tick()
            self.view_changes.on_status_tick()

    def on_status(self, source: int, status: Status) -> None:
        if status.replica != source or len(status.expected) != self.n:
            self.reject("status_forged")
            return
        if status.admission is not None:
            self.on_admission(source, status.admission)
        if status.stable_seq < self.stable_seq:
            for checkpoint in self.stable_proof:  # UI-certified: forwardable
                self.send(source, checkpoint)
        assert self.usig is not None
        epochs = status.epochs
        if not epochs or (len(epochs) == self.n and epochs[self.id] == self.usig.id().epoch):
            # (what it expects of an epoch of ours it has not switched to yet is moot)
            self.resend_own(source, status.expected[self.id])
        self.view_changes.help_peer(source, status)
        self.recovery.on_status(source, status)

    def on_admission(self, source: int, admission: Any) -> None:
        """A peer shows the operator's admission of its new USIG epoch: switch
        its stream to it (its old epoch's messages are dropped from now on)."""
        stream = self.streams[source]
        if getattr(admission, "replica", None) != source or \
                not isinstance(getattr(admission, "epoch", None), int) or \
                admission.epoch <= stream.epoch:
            return
        if not self.scheme.check_admission(admission, self.group):
            self.reject("admission_invalid")
            return
        stream.switch_epoch(admission.epoch, self.view)
        stream.dirty = False
        self.context.persist(f"rx{source}", stream.record())
        self.deferred.pop(source, None)
        self.count("minbft_stream_epoch_switched")

    def on_recovered(self) -> None:
        """The recovery's target is met (recovery.py): vote as any replica."""
        if not self.active:
            self.view_changes.resume()
        else:
            self.view_changes.on_restart()  # its commitment to the NEW-VIEW, if certified
            self.normal.on_checkpoint_sent()  # the COMMITs that waited, numbering

    def resend_own(self, peer: int, start: int) -> None:
        """Re-send own messages from counter ``start`` (what ``peer`` waits for);
        if they are gone (below the stable checkpoint), offer a resume point."""
        if start < 1:
            return
        budget = self.params.retransmit_max
        usig = self.usig
        assert usig is not None
        anchor = self.own_checkpoint
        if start <= usig.counter and start not in self.own_log and anchor is not None \
                and start < anchor.ui.counter:
            self.send(peer, Resume(anchor, self.anchor_proof, self.anchor_attestation))
            return
        for counter in range(start, usig.counter + 1):
            entry = self.own_log.get(counter)
            if entry is None:
                if counter == start:
                    self.count("minbft_resend_gone")  # below the stable checkpoint: gone
                continue
            if budget <= 0:
                break
            budget -= 1
            self.send(peer, entry[0])

    def on_resume(self, source: int, resume: Resume) -> None:
        """``source`` no longer has what this replica waits for from it: skip to
        its own CHECKPOINT of a stable checkpoint this replica's state covers."""
        checkpoint = resume.checkpoint
        stream = self.streams[source]
        if checkpoint.replica != source or checkpoint.ui.epoch != stream.epoch:
            self.reject("resume_forged")
            return
        if checkpoint.ui.counter <= stream.next:
            return
        if not self.verify_ui(source, checkpoint) or not self.checkpoints.valid_certificate(
                checkpoint.seq, checkpoint.digest, resume.proof):
            self.reject("resume_invalid")
            return
        attestation = resume.attestation
        if attestation is None or not self.attestation_valid(source, resume):
            # Without it, what the skipped messages hold may be a NEW-VIEW of a
            # view the stream would take a second one of (docs/minbft.md, *A
            # second NEW-VIEW of a view*).
            self.reject("resume_unattested")
            return
        if checkpoint.seq > self.stable_seq:
            # Catch up to it first (state transfer); the offer comes again.
            self.checkpoints.on_certificate(checkpoint.seq, checkpoint.digest, resume.proof)
            return
        self.count("minbft_streams_resumed")
        stream.resume(checkpoint.ui.counter, checkpoint.seq, self.view,
                      self.params.checkpoint_interval, attestation.new_view_max)
        for admitted in stream.receive(self, checkpoint):
            self.on_certified(source, admitted)
        stream.dirty = False
        self.context.persist(f"rx{source}", stream.record())

    def attestation_valid(self, source: int, resume: Resume) -> bool:
        """Whether ``resume`` carries ``source``'s USIG attestation made at the
        counter of the CHECKPOINT it offers."""
        attestation = resume.attestation
        return attestation is not None \
            and attestation.counter == resume.checkpoint.ui.counter \
            and verify_attestation(self.scheme, attestation, self.usig_id(source))

    # -- durable state ---------------------------------------------------------------------

    def decode(self, data: bytes) -> Any:
        return self.codec.decode(data)

    def fresh_epoch(self) -> int:
        """The epoch of a new USIG: 0 for a replica's very first start; a
        replica whose USIG state is gone while other state survived must not
        resume (docs/minbft.md, Recovery)."""
        return 0

    def load(self) -> None:
        """Recover the records (see the module docstring) and rebuild execution."""
        context = self.context
        self.usig = self.recovery.open_usig()
        if self.usig is None:
            return  # inert: nothing of the old state is acted on
        stored_view = context.load("view")
        if stored_view is not None:
            self.view, self.active = int(stored_view[0]), bool(stored_view[1])
        for peer, stream in self.streams.items():
            stream.restore(context.load(f"rx{peer}"))
        self.load_own_log()
        self.checkpoints.load()
        self.view_changes.load()
        self.executing = True  # nothing executes before SMR has the stable snapshot
        self.normal.load()
        self.executing = False
        handlers = self.handlers
        assert handlers is not None
        if self.stable_seq > 0:
            handlers.on_snapshot(self.stable_seq, self.stable_snapshot)
        self.execute_ready()

    def load_own_log(self) -> None:
        context = self.context
        usig = self.usig
        assert usig is not None
        for name in sorted(context.stored_names("own"), key=lambda name: int(name[3:])):
            counter = int(name[3:])
            stored = context.load(name)
            data, batch, complete = stored[:3]
            if counter > usig.counter:
                context.erase(name)  # written, never certified, never sent
                continue
            message = self.decode(data)
            if not complete:
                ui = usig.reissue_last(certified_bytes(message))
                assert ui is not None and ui.counter == counter, f"own message {counter} lost"
                message = replace(message, ui=ui)
                context.persist(name, self.own_record(message, batch))  # the last one
            elif len(stored) > 3 and stored[3]:
                self.attestations[counter] = self.codec.decode_as(stored[3], UsigAttestation)
            self.own_log[counter] = (message, batch)
            if type(message) is Checkpoint:
                self.own_last_checkpoint = max(self.own_last_checkpoint, message.seq)

    def log_start(self) -> int:
        """The first own counter a VIEW-CHANGE shows: right after the anchor (the
        own CHECKPOINT of the stable checkpoint), or earlier, from the first own
        message about a number above it certified before it. A COMMIT for s+1 may
        leave before the CHECKPOINT of s (execution lags), and a NEW-VIEW decides
        many numbers at once: starting at the anchor lost them, and a later
        NEW-VIEW chose null where this replica's commitment had made a batch
        execute (swarm n=5 b=2 seed 382, an agreement violation)."""
        anchor = self.own_checkpoint
        if anchor is None:
            return 1
        start = anchor.ui.counter + 1
        attestation = self.anchor_attestation
        if attestation is not None and attestation.decided_from:
            # The USIG's mark: a certified NEW-VIEW-COMMIT still open at the
            # anchor (docs/minbft.md, *The pre-anchor hiding gap*).
            start = min(start, attestation.decided_from)
        for counter, (message, _) in self.own_log.items():
            if counter < start and concerns_above(message, anchor.seq):
                start = counter
        return start

    def trim_own_log(self, start: int) -> None:
        """Forget own messages below counter ``start`` (below the own CHECKPOINT
        of the stable checkpoint: no VIEW-CHANGE needs them again)."""
        for counter in [counter for counter in self.own_log if counter < start]:
            del self.own_log[counter]
            self.attestations.pop(counter, None)
            self.context.erase(f"own{counter}")
        self.view_changes.trim_certificates(
            {message_view(message) for message, _ in self.own_log.values()})

    # -- observation ---------------------------------------------------------------------------

    def audit(self) -> list[str]:
        """Every derived or bounded value that disagrees with what it derives
        from, and every broken per-replica invariant (the window, the streams,
        the own log: ``replicaio.protocols.minbft.audit``, ADR 0071); the
        simulator asks (ADR 0069), through ``SmrProtocol.audit``."""
        return audit_minbft(self)

    def footprint(self) -> dict[str, int]:
        return {
            "minbft_slots": len(self.slots),
            "minbft_relayed": len(self.relayed),
            "minbft_forwarded": len(self.normal.forwarded),
            "minbft_barriers": len(self.barriers),
            "minbft_proposals": len(self.normal.proposals),
            "minbft_held": sum(len(stream.held) for stream in self.streams.values()),
            "minbft_deferred": sum(len(kept) for kept in self.deferred.values()),
            "minbft_own_log": len(self.own_log),
            "minbft_checkpoint_votes": self.checkpoints.votes_held(),
            "minbft_snapshots": len(self.checkpoints.snapshots),
            "minbft_view_changes": len(self.view_changes.received),
            "minbft_certificates": len(self.view_changes.certificates),
            "minbft_requests": len(self.view_changes.requests),
        }


def unsigned(message: Any) -> Any:
    """``message`` with an empty UI (before :meth:`Minbft.emit` certifies it)."""
    return replace(message, ui=EMPTY_UI)


__all__ = ["UI", "Minbft", "unsigned"]


def concerns_above(message: Any, seq: int) -> bool:
    """Whether an own UI message commits to a number above ``seq``."""
    kind = type(message)
    if kind is Prepare or kind is Commit:
        return bool(message.seq > seq)
    if kind is NewView or kind is NewViewCommit:
        chosen = message.header.chosen
        return bool(chosen) and chosen[-1].seq > seq
    return False


def deferred_view(message: Commit | NewViewCommit) -> int:
    return message.view if isinstance(message, Commit) else message.header.view
