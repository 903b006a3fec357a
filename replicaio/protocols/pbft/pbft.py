"""The PBFT component: shared state, the Ordering API, dispatch, execution, recovery.

One :class:`Pbft` per replica implements :class:`replicaio.interfaces.ordering.Ordering`.
It owns what every phase shares (the view, the watermarks, the message log,
prepared certificates, what was executed) and its durable form; the phases
(``normal``, ``checkpoint``, ``view_change``, ``state_transfer``) are objects
over that state, each owning its messages and tasks. See the package
docstring for the map.

Durable records (in this component's slice of storage), and why each prefix
of a step's writes is a state to restart from:

* ``view``: ``(view, active)``: written before any message of the view is
  sent (a VIEW-CHANGE for a view this replica may forget it joined would let it
  go back to an older view and prepare there);
* ``pp<seq>``: the PRE-PREPARE accepted (or, on the primary, sent) for ``seq``
  in the newest view it had one in; written before the PREPARE it causes (a
  restarted replica never prepares a second batch at one number in one view);
* ``pc<seq>``: the prepared certificate of ``seq`` from the newest view, before
  the COMMIT it causes (the P set of a later VIEW-CHANGE must show it);
* ``cm<seq>``: the digest committed at ``seq``, before it is executed
  (execution is rebuilt at restart from the stable checkpoint and these);
* ``nv``: the NEW-VIEW that started the current view, before ``view`` says it
  is active (re-sent to replicas still changing to it, after restarts too);
* ``stable``: ``(seq, digest, snapshot, certificate)``, the stable checkpoint,
  written before the records below it are erased (a restart ignores and
  erases records at or below it);
* ``recovering``: present while the replica withholds its votes after its
  storage lost writes (``recovery.py``), written in the start step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from replicaio.core.codec import Codec, DecodeError
from replicaio.core.config import intersecting_quorum
from replicaio.core.context import Context
from replicaio.core.lines import Line
from replicaio.interfaces.ordering import Committed, NotLeader, OrderingHandlers
from replicaio.protocols.bft import BftReplica
from replicaio.protocols.pbft.audit import audit_pbft
from replicaio.protocols.pbft.barriers import BARRIER_FIELDS, ReadBarriers
from replicaio.protocols.pbft.catch_up import LateCommits
from replicaio.protocols.pbft.checkpoint import Checkpoints
from replicaio.protocols.pbft.messages import (
    WIRE_TYPES,
    Checkpoint,
    Commit,
    Executed,
    NewView,
    Prepare,
    PreparedProof,
    PrePrepare,
    Relay,
    StateReply,
    StateRequest,
    Status,
    ViewChange,
    ViewChangeStarted,
    ViewStarted,
    checkpoint_digest,
    digest_of,
    signed_bytes,
)
from replicaio.protocols.pbft.normal import NormalCase, Slot
from replicaio.protocols.pbft.params import PbftParams
from replicaio.protocols.pbft.recovery import Recovery
from replicaio.protocols.pbft.state_transfer import StateTransfer
from replicaio.protocols.pbft.view_change import ViewChanges

# A read barrier is a batch of this replica's own: ordered like any other, handed
# to SMR as an empty batch (section 5.1.3's read-only optimisation needs the
# client library's 2f+1 replies; until then reads go through the order).
BARRIER_MAGIC = b"\x00pbft-read-barrier\x00"
BARRIER_BYTES = len(BARRIER_MAGIC) + BARRIER_FIELDS.size


def is_barrier(batch: bytes) -> bool:
    """Whether ``batch`` is a read barrier (ordered, executed as nothing)."""
    return len(batch) == BARRIER_BYTES and batch.startswith(BARRIER_MAGIC)
RECORD_FRAME_BYTES_MAX = 1 << 28


class Pbft(BftReplica):
    """PBFT (Castro and Liskov, OSDI 1999; TOCS 2002) as an
    :class:`~replicaio.interfaces.ordering.Ordering`. Give it its own context (a
    child path): it opens one stream for the ``pbft.*`` messages there.

    The parts a broken variant may replace are named by the class attributes
    below (``replicaio.testing.variants.pbft``); the protocol has no switch."""

    normal_type: ClassVar[type[NormalCase]] = NormalCase
    checkpoints_type: ClassVar[type[Checkpoints]] = Checkpoints
    view_changes_type: ClassVar[type[ViewChanges]] = ViewChanges
    transfer_type: ClassVar[type[StateTransfer]] = StateTransfer
    recovery_type: ClassVar[type[Recovery]] = Recovery
    prefix: ClassVar[str] = "pbft"

    def __init__(self, context: Context, params: PbftParams | None = None) -> None:
        self.context = context
        self.params: PbftParams = (params or PbftParams()).validate()
        self.id = context.id
        self.n = context.n
        self.f = context.f
        self.view = 0
        self.active = True  # False while changing to ``view``
        self.stable_seq = 0  # h, the low watermark
        self.stable_digest = b""
        self.stable_proof: tuple[Checkpoint, ...] = ()
        self.stable_snapshot = b""
        self.executed = 0
        self.slots: dict[int, Slot] = {}  # seq in (h, H] -> its messages in this view
        self.prepared_proofs: dict[int, PreparedProof] = {}  # the P set, seq in (h, H]
        self.relayed: dict[bytes, bytes] = {}  # own batches not yet executed: digest -> batch
        self.barriers = ReadBarriers(context, "pbft", BARRIER_MAGIC, self.params.barriers_max,
                                     lambda batch: self.normal.submit(batch))
        self.status_tick = 0  # status periods elapsed (this incarnation)
        self.status_answered: dict[int, int] = {}  # peer -> the period its STATUS was answered
        self.handlers = None
        self.view_scope = None
        self.started = False
        self.executing = False
        self.codec = Codec(frame_bytes_max=RECORD_FRAME_BYTES_MAX)
        self.normal: NormalCase = self.normal_type(self)
        self.checkpoints = self.checkpoints_type(self)
        self.view_changes = self.view_changes_type(self)
        self.transfer = self.transfer_type(self)
        self.recovery = self.recovery_type(self)
        self.late = LateCommits(self)
        self.stream = context.stream(*WIRE_TYPES, handler=self.on_message)
        self.dispatch: dict[type, Callable[[int, Any], None]] = {
            PrePrepare: self.normal.on_pre_prepare,
            Prepare: self.normal.on_prepare,
            Commit: self.normal.on_commit,
            Relay: self.normal.on_relay,
            Checkpoint: self.checkpoints.on_checkpoint,
            ViewChange: self.view_changes.on_view_change,
            NewView: self.view_changes.on_new_view,
            Status: self.on_status,
            StateRequest: self.transfer.on_state_request,
            StateReply: self.transfer.on_state_reply,
        }

    # -- quorums and windows -----------------------------------------------------
    # (``primary``, section 4.1's p = v mod |R|, and the window (h, H]: ``BftReplica``)

    @property
    def withholding(self) -> bool:
        """Whether this replica sends no votes (storage damage: ``recovery.py``)."""
        return self.recovery.recovering

    @property
    def quorum(self) -> int:
        """ceil((n + f + 1) / 2): any two quorums share f + 1 replicas, so a
        correct one, and the n - f correct replicas are one. With the paper's
        n = 3f+1 that is 2f + 1; with more replicas (``--nodes 5``, f = 1) 2f + 1
        would let two quorums meet in one replica, a Byzantine primary's, and
        commit two batches at one number (found 2026-12-06: ``swarm pbft --nodes 5
        --byzantine 1``, seeds 4 and 35)."""
        return intersecting_quorum(self.n, self.f)

    # -- Ordering ----------------------------------------------------------------

    def start(self) -> None:
        """Recover durable state, hand SMR the stable checkpoint and re-execute
        what committed above it, then resume the view (or the view change)."""
        self.starting()
        self.recovery.on_start()
        self.load()
        self.context.spawn(self.status_loop(), "pbft.status")
        if self.active:
            self.context.output(ViewStarted(self.id, self.view, self.primary()))
            self.start_view_tasks(self.normal.tasks())
            self.view_changes.accept_carried()
            self.normal.on_view_started(max_sequence=max(
                self.max_pre_prepared(), self.view_changes.carried_top()))
        else:
            self.context.output(ViewChangeStarted(self.id, self.view))
            self.view_changes.resume()

    def submit(self, batch: bytes) -> NotLeader | None:
        """Order ``batch`` (ADR 0011): the primary of an active view assigns it a
        number (it is not kept beyond the view: clients retry); a backup answers
        ``NotLeader(primary)``, so SMR relays the *requests* to the primary (a
        request multicast to every replica is ordered once), and keeps the batch
        to forward on suspicion (``normal.keep_batch``). Which requests it
        watches execute (the per-request timer of section 4.4,
        ``normal.watch_primary``) SMR tells next (:meth:`watch_relayed`)."""
        if len(batch) > self.params.batch_bytes_max:
            self.count("pbft_submit_oversized")
            return None
        if self.active and self.is_primary:
            self.normal.propose(batch)
            return None
        # Changing views, the batch is forwarded with the re-sent VIEW-CHANGE;
        # the requests wait in SMR for the view to start (the primary-to-be
        # takes no batch it would have to keep across a failed view change; its
        # clients retry, as the paper's do).
        self.normal.keep_batch(batch)
        return NotLeader(self.primary())

    def watch_relayed(self, requests: tuple[tuple[int, int], ...]) -> None:
        """``RelayWatch``: SMR sent these requests of the batch :meth:`submit`
        just refused on to the primary (its own clients'): a backup of an active
        view watches them execute (TOCS 4.5.2: "a backup starts a timer when it
        receives a request", the request it relays). Not the batch's other
        requests: SMR refused those to the replica that forwarded them here (it
        believed this one the primary) or redirected their clients, so no
        primary was asked to order them, and once their clients gave up a
        backup timing them suspected its correct primary in a quiet cluster
        (``swarm pbft --nodes 4 --byzantine 1 --faults
        crash,partition,loss,dup,reorder,slow`` seed 246, ADR 0074 finding 3).
        The watch list stays bounded (``awaited_max``, one entry per client)."""
        if self.active and not self.is_primary:
            self.normal.await_requests(requests)

    def read_barrier(self) -> Line[int] | NotLeader:
        """A line set to the number at which a barrier batch of this replica's
        executed, a barrier submitted after this call: every write that
        completed before the call is below it. Reads share barriers (one in
        flight, the next one open to every read until it is submitted), so a
        read costs no sequence number of its own under load."""
        return self.barriers.barrier()

    def compact(self, index: int, snapshot: bytes) -> None:
        """SMR's snapshot at ``index``: a checkpoint when ``index`` is a multiple of K."""
        self.checkpoints.on_snapshot(index, snapshot)

    @property
    def view_hint(self) -> int:
        """The view (``Views``): every reply carries it, with the primary."""
        return self.view

    # -- messages ----------------------------------------------------------------

    def on_message(self, source: int, message: Any) -> None:
        """Every ``pbft.*`` message from a peer, in arrival order."""
        if source == self.id:
            self.count("pbft_rejected_from_self")
            return
        kind = type(message)
        late = (kind is PrePrepare or kind is Commit) and message.view < self.view
        if late and self.late.offer(message):  # committed certificates of older views
            return
        self.dispatch[kind](source, message)

    def sign(self, message: Any) -> bytes:
        return self.context.sign(signed_bytes(message))

    def verify(self, node: int, message: Any) -> bool:
        """Whether ``message`` carries ``node``'s signature (never raises)."""
        if type(node) is not int or not 0 <= node < self.n:
            return False
        return self.context.verify(node, signed_bytes(message), message.signature)

    def valid_batch(self, batch: bytes, proposer: int | None = None) -> bool:
        """Whether a batch another replica gives this one may be ordered (section
        4.2: a backup accepts a PRE-PREPARE only if "the request is valid"): the
        null request, a read barrier, or what SMR's ``validate_batch`` accepts
        (decodes within the cluster constants, every request authentic; the
        requests ``proposer``, the primary whose signed PRE-PREPARE carries the
        batch, vouches for itself on that signature, ADR 0028)."""
        if not batch or is_barrier(batch):
            return True
        handlers = self.handlers
        assert handlers is not None
        return handlers.validate_batch(batch, proposer)

    # -- views ---------------------------------------------------------------------

    def max_pre_prepared(self) -> int:
        """The highest number with a PRE-PREPARE of this view (else h)."""
        found = [seq for seq, slot in self.slots.items() if slot.pre_prepare is not None]
        return max(found, default=self.stable_seq)

    # -- execution -----------------------------------------------------------------

    def execute_ready(self) -> None:
        """Execute committed batches in number order (section 4.2: "after all
        requests with lower sequence numbers have been executed")."""
        if self.executing:
            return  # SMR reacted to a commit by committing more: the loop takes it
        handlers = self.handlers
        assert handlers is not None
        self.executing = True
        while True:
            slot = self.slots.get(self.executed + 1)
            if slot is None or slot.committed is None:
                break
            pre_prepare = slot.committed
            self.executed = slot.seq
            self.deliver(handlers, slot.seq, pre_prepare)
        self.executing = False

    def deliver(self, handlers: OrderingHandlers, seq: int, pre_prepare: PrePrepare) -> None:
        batch = pre_prepare.batch
        self.context.output(Executed(self.id, pre_prepare.view, seq, pre_prepare.digest))
        self.normal.on_executed(pre_prepare.digest, batch)
        self.view_changes.on_progress()
        if is_barrier(batch):
            self.barriers.executed(batch, seq)
            batch = b""
        handlers.on_commit(Committed(seq, batch))

    # -- status and retransmission (TOCS 5.2) ---------------------------------------

    async def status_loop(self) -> None:
        """Every ``status_us``: tell every replica where this one is; re-send what
        is stuck; re-relay batches the primary has not ordered."""
        while True:
            await self.context.sleep(self.params.status_us)
            self.status_tick += 1
            self.barriers.on_status_tick()
            self.send_all(Status(self.view, self.active, self.stable_seq, self.executed, self.id))
            if self.active:
                self.normal.retransmit_stalled()
            self.view_changes.on_status_tick()

    def on_status(self, source: int, status: Status) -> None:
        if status.replica != source:
            self.reject("status_forged")
            return
        # One answer per peer per status period: a STATUS costs its sender one
        # message and may cost this replica 2f+1 and more, so a faulty peer that
        # replays them must not turn that into a storm.
        if self.status_answered.get(source) == self.status_tick:
            self.count("pbft_status_throttled")
            return
        self.status_answered[source] = self.status_tick
        self.recovery.on_status(source, status.executed)
        if status.stable_seq < self.stable_seq and self.stable_seq > 0:
            for checkpoint in self.stable_proof:  # signed: forwardable
                self.send(source, checkpoint)
        if status.view < self.view or (status.view == self.view and not status.active):
            self.view_changes.help_peer(source, status)
            return
        if status.view == self.view and self.active and status.executed < self.executed:
            self.normal.retransmit_to(source, status.executed)
        elif status.view > self.view and status.executed < self.executed:
            self.late.send(source, status.executed)  # catch_up.py

    # -- durable state ----------------------------------------------------------------

    def load(self) -> None:
        """Recover the records (see the module docstring) and rebuild execution."""
        context = self.context
        stored_view = context.load("view")
        if stored_view is not None:
            self.view, self.active = int(stored_view[0]), bool(stored_view[1])
        stable = context.load("stable")
        if stable is not None:
            seq, digest, snapshot, proof = stable
            certificate = self.verified_stable(seq, digest, snapshot, proof)
            if certificate is None:
                self.forget_damaged_log()
                return
            self.stable_seq, self.stable_digest, self.stable_snapshot = seq, digest, snapshot
            self.stable_proof = certificate
            self.executed = seq
        stored_new_view = context.load("nv")
        if stored_new_view is not None:
            new_view = self.codec.decode_as(stored_new_view, NewView)
            if new_view.view == self.view and self.active:
                self.view_changes.new_view = new_view
                self.view_changes.last_active_view = self.view
                self.view_changes.progress_view = self.view  # (a restart: progress)
        pre_prepares = self.load_records("pp", PrePrepare)
        for seq, proof in self.load_records("pc", PreparedProof).items():
            self.prepared_proofs[seq] = proof
        committed: dict[int, bytes] = {}
        for name in sorted(context.stored_names("cm")):
            seq = int(name[2:])
            if seq <= self.stable_seq:
                context.erase(name)
            else:
                committed[seq] = context.load(name)
        for seq, pre_prepare in pre_prepares.items():
            slot = self.normal.slot(seq)
            if pre_prepare.view == self.view and self.active:
                slot.pre_prepare = pre_prepare
            if committed.get(seq) == pre_prepare.digest:
                slot.committed = pre_prepare
        handlers = self.handlers
        assert handlers is not None
        if self.stable_seq > 0:
            handlers.on_snapshot(self.stable_seq, self.stable_snapshot)
        self.execute_ready()

    def verified_stable(
        self, seq: Any, digest: Any, snapshot: Any, proof: Any
    ) -> tuple[Checkpoint, ...] | None:
        """The stored stable checkpoint's certificate, if the record is whole: its
        snapshot has its digest and 2f+1 valid signatures certify it (issue 9:
        checkpoints are verified on load; a damaged disk must not become state)."""
        if type(seq) is not int or type(digest) is not bytes or type(snapshot) is not bytes:
            return None
        if type(proof) not in (list, tuple) or checkpoint_digest(snapshot) != digest:
            return None
        try:
            certificate = tuple(self.codec.decode_as(item, Checkpoint) for item in proof)
        except (DecodeError, TypeError):
            return None
        if not self.checkpoints.valid_certificate(seq, digest, certificate):
            return None
        return certificate

    def forget_damaged_log(self) -> None:
        """The stable checkpoint did not verify: storage damage. Erase every log
        record (they cannot be trusted either, and nothing below them can be
        executed), and join the next view: this replica may have voted in its
        view before the damage, and must never vote there again. It counts as one
        of the f faulty replicas until a certificate from its peers brings it
        their state (state transfer, ``checkpoints.on_certificate``)."""
        context = self.context
        self.count("pbft_stable_checkpoint_damaged")
        for prefix in ("pp", "pc", "cm"):
            for name in sorted(context.stored_names(prefix)):
                context.erase(name)
        context.erase("nv")
        context.erase("stable")
        self.view += 1
        self.active = False
        self.save_view()
        self.recovery.begin()

    def load_records(self, prefix: str, kind: type[Any]) -> dict[int, Any]:
        """Records ``<prefix><seq>`` above h (those at or below it are erased)."""
        found: dict[int, Any] = {}
        for name in sorted(self.context.stored_names(prefix)):
            seq = int(name[len(prefix):])
            if seq <= self.stable_seq:
                self.context.erase(name)
                continue
            data = self.context.load(name)
            try:
                found[seq] = self.codec.decode_as(data, kind)
            except DecodeError as error:  # our own write: storage damage
                raise AssertionError(f"record {name} unreadable: {error}") from error
        return found

    def erase_below(self, old: int, new: int) -> None:
        """Erase the records of numbers in (old, new] (after ``stable`` moved to new)."""
        for seq in range(old + 1, new + 1):
            for prefix in ("pp", "pc", "cm"):
                self.context.erase(f"{prefix}{seq}")

    # -- observation -------------------------------------------------------------------

    def status(self) -> dict[str, int]:
        """Read-only figures for metrics and ``INFO`` (``replicaio.services.kv.status``):
        the view as ``term``, the primary as ``leader``; ``recovering`` 1 while
        this replica withholds its votes after storage damage (``recovery.py``;
        ``/healthz`` then reports it unhealthy), with the stable checkpoint that
        ends it (``recovery_target_seq``, 0 until 2f+1 peers reported)."""
        return {
            "recovering": int(self.withholding),
            "recovery_target_seq": self.recovery.target_seq or 0,
            "term": self.view,
            "view": self.view,
            "view_active": int(self.active),
            "leader": self.primary(),
            "is_leader": int(self.is_primary and self.active),
            "commit_index": self.executed,
            "snapshot_index": self.stable_seq,
        }

    def audit(self) -> list[str]:
        """Every derived or bounded value that disagrees with what it derives
        from, and every broken per-replica invariant of the paper
        (``replicaio.protocols.pbft.audit``, ADR 0071); the simulator asks
        (ADR 0069), through ``SmrProtocol.audit``."""
        return audit_pbft(self)

    def footprint(self) -> dict[str, int]:
        """Sizes of every buffer (checked against ``footprint_max`` in simulation)."""
        return {
            "pbft_slots": len(self.slots),
            "pbft_prepared_proofs": len(self.prepared_proofs),
            "pbft_relayed": len(self.relayed),
            "pbft_awaited": len(self.normal.awaited),
            "pbft_awaited_batches": len(self.normal.awaited_batches),
            "pbft_forwarded": len(self.normal.forwarded),
            "pbft_barriers": len(self.barriers),
            "pbft_proposals": len(self.normal.proposals),
            "pbft_checkpoint_votes": self.checkpoints.votes_held(),
            "pbft_snapshots": len(self.checkpoints.snapshots),
            "pbft_late": self.late.footprint(),
            "pbft_view_changes": len(self.view_changes.received)
            + len(self.view_changes.for_view),
        }


def batch_digest(batch: bytes) -> bytes:
    """The digest PRE-PREPAREs carry for ``batch``."""
    return digest_of(batch)
