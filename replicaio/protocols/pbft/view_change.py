"""View changes: Castro and Liskov, OSDI 1999, sections 4.4 and 4.5.2.

A backup whose timer expires (``normal.py``: a batch it waits for is not
executed in time; a silent or censoring primary) moves to view v+1: it stops
accepting messages of view v and multicasts a signed VIEW-CHANGE(v+1, n, C,
P, i): n and C its stable checkpoint and that checkpoint's certificate, P a
prepared certificate for every number above n that prepared here (from the
newest view it prepared in; they survive restarts: ``pc`` records).

The VIEW-CHANGE is re-sent every ``view_change_resend_us`` until the view
starts (Fabric issue 1917: one lost VIEW-CHANGE must not stall the system
forever). A replica that holds valid VIEW-CHANGEs from f+1 others for views
above its own joins the smallest of them even before its timer expires
(4.5.2), so a view change cannot be started by the faulty alone and cannot
leave correct replicas behind. Once 2f+1 VIEW-CHANGEs for its view are in,
a replica starts the *new-view timer* (not before: 4.5.2, else a replica
could time out views no quorum even tried); if the view does not start in
time it moves to the next one.

Every timer of a view (this one and the backup's request timer, ``normal.py``)
is ``view_change_timeout_us`` doubled per view in a row before it in which this
replica saw no progress (:meth:`ViewChanges.timeout_us`; section 4.5.2: the
timer for v+2 is 2T when v+1 executed no request), fixed when the replica
moves to the view, and at least once per primary a backup replaced since it
last waited for nothing (``NormalCase.replaced``). The back-off is reset by
progress, never by a view merely starting: a view in which this replica
executed ``PROGRESS_BATCHES`` (4) batches while active (ADR 0040; one batch
executed, ADR 0039's progress and MinBFT's until ADR 0046, leaves a timer shorter than a batch
round replacing primaries: ``pbft-backoff-reset-by-one-batch``).

The primary of v+1, with 2f+1 valid VIEW-CHANGEs (the V set), computes the O
set: min-s is the newest stable checkpoint in V, max-s the highest number in
any P set; for every number in (min-s, max-s] it re-proposes the batch of the
prepared certificate of the highest view, or a null request if none
prepared. It multicasts NEW-VIEW(v+1, V, O). A backup accepts it only after
checking every VIEW-CHANGE in V (signatures, checkpoint certificates, prepared
certificates) and recomputing O: so a VIEW-CHANGE with a forged or inflated P
set, or a primary that drops a prepared batch, is refused. The checkpoint set
and the view-change set are kept apart (Fabric PR 1111: confusing them
deadlocked view changes for good): C is only a checkpoint certificate, the
view-change quorum only counts VIEW-CHANGEs.

Entering the view: the O set's PRE-PREPAREs are logged (durably, before the
view), backups send PREPAREs for them, already executed numbers are not
executed again, and min-s's certificate makes that checkpoint stable here or
fetches its state (``state_transfer.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from msgspec.structs import replace

from replicaio.protocols.bft import BftViewChanges
from replicaio.protocols.pbft.messages import (
    NULL_DIGEST,
    NewView,
    PreparedProof,
    PrePrepare,
    Status,
    ViewChange,
    ViewChangeStarted,
    ViewStarted,
    digest_of,
    without_batches,
)
from replicaio.protocols.pbft.normal import Slot

if TYPE_CHECKING:
    from replicaio.protocols.pbft.pbft import Pbft

Chosen = list[tuple[int, PrePrepare | None]]  # the O set: number -> what to re-propose (None: null)


class ViewChanges(BftViewChanges):
    """Sections 4.4 and 4.5.2 over the shared state of a :class:`Pbft`."""

    def __init__(self, pbft: Pbft) -> None:
        super().__init__(pbft)  # (the timers' back-off: ``BftViewChanges``)
        self.pbft = pbft  # (``replica``, typed as the Pbft)
        self.received: dict[int, ViewChange] = {}  # replica -> its newest valid VIEW-CHANGE
        # replica -> its VIEW-CHANGE for the view this replica changes to (one
        # that moved on beyond it still counts toward starting it)
        self.for_view: dict[int, ViewChange] = {}
        self.own: ViewChange | None = None
        self.new_view: NewView | None = None  # what started the current view (re-sent)
        # The last view this replica was active in (``help_peer``: it prepared
        # nothing in the views after it).
        self.last_active_view = 0
        # (The back-off of every timer of the current view, ``BftViewChanges``:
        # ``progress_view``, the last view this replica saw progress in, not
        # durable: a restart counts as progress in the view it restarts in,
        # ``resume``, ``Pbft.load``; ``exponent``, the doubling fixed when this
        # replica moved to the view, ``back_off``.)
        self.timer_view = -1  # the view whose new-view timer runs
        self.sent_new_view_for = -1

    # -- moving to a new view -------------------------------------------------------------

    def start(self, view: int) -> None:
        """Move to ``view``: stop the current one, multicast a VIEW-CHANGE."""
        pbft = self.pbft
        assert view > pbft.view, f"view change to {view} from {pbft.view}"
        if pbft.active:
            self.last_active_view = pbft.view
        self.back_off(view)
        pbft.view = view
        pbft.active = False
        pbft.save_view()
        pbft.context.output(ViewChangeStarted(pbft.id, view))
        # Messages of the old view no longer count; what committed stays.
        kept: dict[int, Slot] = {}
        for seq, slot in pbft.slots.items():
            if slot.committed is not None:
                kept[seq] = Slot(seq)
                kept[seq].committed = slot.committed
        pbft.slots = kept
        pbft.normal.proposals.clear()
        pbft.count("pbft_view_changes")
        self.announce()

    def resume(self) -> None:
        """After a restart in the middle of a view change: announce it again."""
        self.last_active_view = max(self.last_active_view, self.pbft.view - 1)
        self.restarted_in_backoff(self.pbft.view,
                                  self.pbft.params.view_change_backoff_exponent_max)
        self.announce()

    def announce(self) -> None:
        pbft = self.pbft
        if pbft.withholding:
            # Its P set may lack certificates it showed before (recovery.py): it
            # follows the view change, counted out of it.
            self.own = None
            self.for_view = {r: vc for r, vc in self.received.items() if vc.view == pbft.view}
            pbft.count("pbft_withheld_view_changes")
            pbft.start_view_tasks([])
            self.check_quorum()
            return
        own = self.build()
        self.own = own
        self.received[pbft.id] = own
        self.for_view = {
            replica: vc for replica, vc in self.received.items() if vc.view == pbft.view
        }
        pbft.send_all(own)
        pbft.start_view_tasks([self.resend(pbft.view)])
        self.check_quorum()

    def on_recovered(self) -> None:
        """Recovered in the middle of a view change: the VIEW-CHANGE withheld
        so far is sent now (its checkpoint is past every lost vote)."""
        pbft = self.pbft
        assert not pbft.active and not pbft.withholding
        own = self.build()
        self.own = own
        self.received[pbft.id] = own
        self.for_view[pbft.id] = own
        pbft.send_all(own)
        assert pbft.view_scope is not None
        pbft.view_scope.spawn(self.resend(pbft.view), f"pbft.view{pbft.view}")
        self.check_quorum()

    def build(self, view: int | None = None) -> ViewChange:
        """VIEW-CHANGE(v+1, n, C, P, i) from this replica's state (for ``view``,
        by default the one it is changing to)."""
        pbft = self.pbft
        prepared = tuple(
            pbft.prepared_proofs[seq]
            for seq in sorted(pbft.prepared_proofs)
            if seq > pbft.stable_seq
        )
        unsigned = ViewChange(
            pbft.view if view is None else view, pbft.stable_seq, pbft.stable_digest,
            pbft.stable_proof, prepared, pbft.id, b"",
        )
        return replace(unsigned, signature=pbft.sign(unsigned))

    async def resend(self, view: int) -> None:
        """Re-send the VIEW-CHANGE until the view starts (Fabric issue 1917)."""
        pbft = self.pbft
        while True:
            await pbft.context.sleep(pbft.params.view_change_resend_us)
            if pbft.view != view or pbft.active:
                return
            if self.own is not None:
                pbft.send_all(self.own)
                pbft.count("pbft_view_change_resent")
            # Its batches wait for this view change: replicas still in the old
            # view (which may wait for nothing) time them too (normal.py).
            pbft.normal.forward_waiting()

    def back_off(self, view: int) -> None:
        """This replica moves to ``view``: fix its timers' doubling, one per
        view in a row since the last one it saw progress in
        (:func:`~replicaio.core.patience.backoff_exponent`)."""
        self.enter_backoff(view, self.pbft.params.view_change_backoff_exponent_max)

    # (``timeout_us``, ``on_progress`` and ``on_idle``: ``BftViewChanges``)

    async def new_view_timer(self, view: int) -> None:
        """Started once 2f+1 VIEW-CHANGEs for ``view`` are in; its timeout is
        the view's (``timeout_us``)."""
        pbft = self.pbft
        await pbft.context.sleep(self.timeout_us())
        if pbft.view == view and not pbft.active:
            pbft.count("pbft_new_view_timeouts")
            self.start(view + 1)

    # -- VIEW-CHANGE messages ----------------------------------------------------------------

    def on_view_change(self, source: int, view_change: ViewChange) -> None:
        pbft = self.pbft
        if view_change.view < pbft.view or (view_change.view == pbft.view and pbft.active):
            pbft.reject("view_change_old")
            return
        replica = view_change.replica
        known = self.received.get(replica)
        newer = known is None or known.view < view_change.view
        counts = view_change.view == pbft.view and replica not in self.for_view
        if not newer and not counts:
            return
        reason = self.invalid(view_change, batches=True)
        if reason is not None:
            pbft.reject(reason)
            return
        if newer:
            self.received[replica] = view_change
        if counts:
            self.for_view[replica] = view_change
        self.maybe_join()
        self.check_quorum()

    def invalid(self, view_change: ViewChange, *, batches: bool) -> str | None:
        """Why ``view_change`` is not a valid VIEW-CHANGE (None if it is). With
        ``batches``, every prepared certificate must carry its batch (the new
        primary re-proposes them)."""
        pbft = self.pbft
        if view_change.view < 1:
            return "view_change_view_zero"
        if not pbft.verify(view_change.replica, view_change):
            return "view_change_bad_signature"
        if not pbft.checkpoints.valid_certificate(
            view_change.stable_seq, view_change.stable_digest, view_change.checkpoint_proof
        ):
            return "view_change_bad_checkpoint"
        low = view_change.stable_seq
        numbers: set[int] = set()
        for proof in view_change.prepared:
            seq = proof.pre_prepare.seq
            if seq in numbers or not low < seq <= low + pbft.params.log_size:
                return "view_change_prepared_out_of_window"
            numbers.add(seq)
            reason = self.invalid_prepared(proof, view_change.view, batches=batches)
            if reason is not None:
                return reason
        return None

    def invalid_prepared(self, proof: PreparedProof, view: int, *, batches: bool) -> str | None:
        """Why ``proof`` is not a prepared certificate of a view below ``view``."""
        pbft = self.pbft
        pre_prepare = proof.pre_prepare
        if not 0 <= pre_prepare.view < view:
            return "view_change_prepared_view"
        if (batches or pre_prepare.batch) and digest_of(pre_prepare.batch) != pre_prepare.digest:
            return "view_change_prepared_batch"
        primary = pbft.primary(pre_prepare.view)
        if not pbft.verify(primary, pre_prepare):
            return "view_change_prepared_bad_pre_prepare"
        backups: set[int] = set()
        for prepare in proof.prepares:
            if (
                prepare.view != pre_prepare.view
                or prepare.seq != pre_prepare.seq
                or prepare.digest != pre_prepare.digest
                or prepare.replica == primary
                or prepare.replica in backups
            ):
                return "view_change_prepared_mismatch"
            if not pbft.verify(prepare.replica, prepare):
                return "view_change_prepared_bad_prepare"
            backups.add(prepare.replica)
        if len(backups) < pbft.quorum - 1:  # with the PRE-PREPARE, a quorum (2f with n = 3f+1)
            return "view_change_prepared_too_few"
        return None

    def maybe_join(self) -> None:
        """f+1 others are in views above ours: join the smallest such view (4.5.2)."""
        pbft = self.pbft
        views = sorted(
            (vc.view for replica, vc in self.received.items()
             if replica != pbft.id and vc.view > pbft.view),
            reverse=True,
        )
        if len(views) >= pbft.f + 1:
            pbft.count("pbft_view_change_joined")
            self.start(views[pbft.f])

    def check_quorum(self) -> None:
        """2f+1 replicas left the views below ours: start the new-view timer; 2f+1
        VIEW-CHANGEs for our view, as its primary: start the view.

        The timer counts a replica whose newest VIEW-CHANGE is for a *later* view
        too (section 4.5.2 asks for 2f+1 VIEW-CHANGEs for v+1; one for v+2 says the
        same and more). Without it a faulty primary of v+1 that sent its NEW-VIEW
        to one correct replica only strands the others: that one times out in v+1
        and asks for v+2, its VIEW-CHANGE for v+1 is replaced by the newer one,
        the rest hold 2f of them for v+1 and never start the timer that would take
        them to v+2 (swarm seed 1721, n=4)."""
        pbft = self.pbft
        if pbft.active:
            return
        view = pbft.view
        moved_on = {replica for replica, vc in self.received.items() if vc.view > view}
        if len(moved_on | self.for_view.keys()) < pbft.quorum:
            return
        if self.timer_view != view:
            self.timer_view = view
            assert pbft.view_scope is not None
            pbft.view_scope.spawn(self.new_view_timer(view), "pbft.new_view_timer")
        if (
            pbft.primary(view) == pbft.id
            and self.sent_new_view_for != view
            and len(self.for_view) >= pbft.quorum
        ):
            if pbft.withholding:
                pbft.count("pbft_withheld_new_views")
                return
            self.send_new_view(view)

    # -- NEW-VIEW ------------------------------------------------------------------------------

    def choose(self, view_changes: Sequence[ViewChange]) -> tuple[ViewChange, Chosen]:
        """The O set of ``view_changes``: the newest stable checkpoint (min-s), and
        for every number up to max-s the highest view's prepared batch or a null."""
        best = max(view_changes, key=lambda vc: (vc.stable_seq, -vc.replica))
        low = best.stable_seq
        chosen: dict[int, PrePrepare] = {}
        for view_change in view_changes:
            for proof in view_change.prepared:
                pre_prepare = proof.pre_prepare
                if pre_prepare.seq <= low:
                    continue
                known = chosen.get(pre_prepare.seq)
                if known is None or (pre_prepare.view, pre_prepare.digest) > (
                    known.view, known.digest
                ):
                    chosen[pre_prepare.seq] = pre_prepare
        high = max(chosen, default=low)
        return best, [(seq, chosen.get(seq)) for seq in range(low + 1, high + 1)]

    def send_new_view(self, view: int) -> None:
        pbft = self.pbft
        own = self.for_view[pbft.id]
        others = [
            self.for_view[replica] for replica in sorted(self.for_view) if replica != pbft.id
        ]
        view_changes = [own, *others][: pbft.quorum]
        _, chosen = self.choose(view_changes)
        pre_prepares = []
        for seq, prepared in chosen:
            digest = NULL_DIGEST if prepared is None else prepared.digest
            batch = b"" if prepared is None else prepared.batch
            unsigned = PrePrepare(view, seq, digest, batch, b"")
            pre_prepares.append(replace(unsigned, signature=pbft.sign(unsigned)))
        unsigned_view = NewView(
            view, tuple(without_batches(vc) for vc in view_changes), tuple(pre_prepares),
            pbft.id, b"",
        )
        new_view = replace(unsigned_view, signature=pbft.sign(unsigned_view))
        self.sent_new_view_for = view
        pbft.count("pbft_new_views_sent")
        pbft.send_all(new_view)
        self.enter(new_view)

    def invalid_new_view(self, new_view: NewView) -> str | None:
        pbft = self.pbft
        if new_view.replica != pbft.primary(new_view.view):
            return "new_view_not_primary"
        if not pbft.verify(new_view.replica, new_view):
            return "new_view_bad_signature"
        replicas: set[int] = set()
        for view_change in new_view.view_changes:
            if view_change.view != new_view.view or view_change.replica in replicas:
                return "new_view_bad_view_change"
            if self.invalid(view_change, batches=False) is not None:
                return "new_view_invalid_view_change"
            replicas.add(view_change.replica)
        if len(replicas) < pbft.quorum:
            return "new_view_too_few"
        _, chosen = self.choose(new_view.view_changes)
        if len(chosen) != len(new_view.pre_prepares):
            return "new_view_wrong_o_set"
        primary = new_view.replica
        for (seq, prepared), pre_prepare in zip(chosen, new_view.pre_prepares, strict=True):
            digest = NULL_DIGEST if prepared is None else prepared.digest
            if (pre_prepare.view, pre_prepare.seq, pre_prepare.digest) != (
                new_view.view, seq, digest
            ):
                return "new_view_wrong_o_set"
            if len(pre_prepare.batch) > pbft.params.batch_bytes_max:
                return "new_view_oversized"
            if digest_of(pre_prepare.batch) != digest:
                return "new_view_batch_mismatch"
            if not pbft.verify(primary, pre_prepare):
                return "new_view_bad_pre_prepare"
        return None

    def on_new_view(self, source: int, new_view: NewView) -> None:
        pbft = self.pbft
        if new_view.view < pbft.view or (new_view.view == pbft.view and pbft.active):
            pbft.reject("new_view_old")
            return
        reason = self.invalid_new_view(new_view)
        if reason is not None:
            pbft.reject(reason)
            return
        self.enter(new_view)

    def enter(self, new_view: NewView) -> None:
        """Start ``new_view.view`` (its NEW-VIEW checked, or made here)."""
        pbft = self.pbft
        best, _ = self.choose(new_view.view_changes)
        if pbft.active:
            self.last_active_view = pbft.view
        if new_view.view != pbft.view:
            self.back_off(new_view.view)  # (a view change it did not take part in)
        pbft.checkpoints.on_certificate(best.stable_seq, best.stable_digest, best.checkpoint_proof)
        kept: dict[int, Slot] = {}
        for seq, slot in pbft.slots.items():
            if slot.committed is not None:
                kept[seq] = Slot(seq)
                kept[seq].committed = slot.committed
        pbft.slots = kept
        pbft.view = new_view.view
        pbft.active = True
        self.new_view = new_view
        self.last_active_view = pbft.view
        for replica in [r for r, vc in self.received.items() if vc.view <= pbft.view]:
            del self.received[replica]
        self.for_view = {}
        self.own = None
        for pre_prepare in new_view.pre_prepares:
            if pbft.in_window(pre_prepare.seq):
                pbft.normal.accept_pre_prepare(pre_prepare)  # durable, then PREPARE
            else:
                pbft.count("pbft_new_view_above_window")  # taken when the window gets there
        # Kept to show replicas still changing to this view, across restarts too
        # (a primary that restarts must still be able to start its backups).
        pbft.context.persist("nv", pbft.encode(new_view))
        pbft.save_view()
        pbft.count("pbft_views_started")
        pbft.context.output(ViewStarted(pbft.id, pbft.view, pbft.primary()))
        pbft.start_view_tasks(pbft.normal.tasks())
        low = best.stable_seq
        top = max((pp.seq for pp in new_view.pre_prepares), default=low)
        pbft.normal.on_view_started(max_sequence=top)
        pbft.execute_ready()

    def accept_carried(self) -> None:
        """The window moved (a checkpoint became stable, or state was installed):
        accept the PRE-PREPAREs of the NEW-VIEW that started this view which were
        above the window when this replica entered it, and are in it now.

        A replica may enter a view behind the NEW-VIEW's checkpoint (min-s): it
        takes the certificate, fetches the state, and only then does its window
        reach the top of the O set. The O set's PRE-PREPAREs above its window
        were not logged at the entry; without this, the primary (which takes no
        PRE-PREPARE from a peer, and none of these comes from anyone else) holds
        COMMITs but no PRE-PREPARE for those numbers and never executes them, so
        with one replica down no checkpoint above gets 2f+1 signatures and the
        group stalls (``txn-pbft:fronts=1`` seeds 15, 154, 267: a lock never
        released); a backup waited for a retransmission. Safe: these are the
        PRE-PREPAREs of the view's own NEW-VIEW, checked when it was taken (or
        made here); a number that holds another PRE-PREPARE of this view
        (a faulty primary's) keeps it."""
        pbft = self.pbft
        new_view = self.new_view
        if new_view is None or new_view.view != pbft.view or not pbft.active:
            return
        for pre_prepare in new_view.pre_prepares:
            if not pbft.in_window(pre_prepare.seq) or pre_prepare.seq <= pbft.executed:
                continue
            slot = pbft.slots.get(pre_prepare.seq)
            if slot is not None and slot.pre_prepare is not None:
                continue
            pbft.normal.accept_pre_prepare(pre_prepare)
            pbft.count("pbft_new_view_carried")

    def carried_top(self) -> int:
        """The highest number the NEW-VIEW of this view assigned (0: none): a
        primary that restarts numbers after it, whether or not its window
        reached it (its ``pp`` records hold only what was in the window)."""
        new_view = self.new_view
        if new_view is None or new_view.view != self.pbft.view:
            return 0
        return max((pre_prepare.seq for pre_prepare in new_view.pre_prepares), default=0)

    # -- helping a replica behind ---------------------------------------------------------------

    def help_peer(self, peer: int, status: Status) -> None:
        """A replica in an older view, or still changing to ours: show it the
        NEW-VIEW that started ours, or our VIEW-CHANGE."""
        pbft = self.pbft
        if pbft.active:
            if self.new_view is not None and self.new_view.view == pbft.view:
                pbft.send(peer, self.new_view)
            return
        if self.own is not None:
            pbft.send(peer, self.own)
        if pbft.withholding:
            return
        if self.last_active_view < status.view < pbft.view and not status.active:
            # It still gathers VIEW-CHANGEs for a view this replica passed through
            # without starting it: ours for that view (it may have been lost,
            # and no longer re-sent). Safe: since its last active view this
            # replica prepared nothing, and it takes part in no view below ours.
            pbft.send(peer, self.build(status.view))
            pbft.count("pbft_view_change_sent_for_older_view")

    def on_status_tick(self) -> None:
        """Nothing periodic beyond the resend task (kept for variants)."""
