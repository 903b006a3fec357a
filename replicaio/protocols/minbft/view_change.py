"""View changes: Veronese et al., IEEE TC 2013, section 4.4.

A backup whose timer expires multicasts a signed REQ-VIEW-CHANGE(v+1) (no
current-view field: a replica that lags behind must still be able to join).
A replica holding requests (or VIEW-CHANGEs) from f+1 replicas for views
above its own moves to the f+1-th highest: it stops taking messages of its
view and multicasts a UI-certified VIEW-CHANGE(v', C, O): C is its own
CHECKPOINT of its stable checkpoint with that checkpoint's certificate, O is
every message its USIG certified since, with contiguous counters up to the
VIEW-CHANGE's own (checked by every receiver): since each peer's messages are
taken in counter order, whatever a replica committed before its VIEW-CHANGE is
in O, and whatever it certified after it no longer counts in the old view.
O is bounded by the checkpoint interval (nobody commits more than K above its
own latest CHECKPOINT), not by the history (Hyperledger MinBFT's PR 246).

The primary of v' with f+1 valid VIEW-CHANGEs computes the NEW-VIEW's header
(:func:`choose`): the base is the newest checkpoint among them, and every
number above it up to the highest any log shows gets the batch of the entry
from the highest view (within a view, the lowest PREPARE counter: the first
one a correct replica could have taken), or the null request. Receivers take
the NEW-VIEW in the new primary's counter order, check every VIEW-CHANGE and
recompute the header; they then *commit to the NEW-VIEW* (NEW-VIEW-COMMIT,
UI-certified). The NEW-VIEW and f backups' NEW-VIEW-COMMITs are the view's
*certificate* (:class:`NewViewCertificate`): a replica holding it commits
again, *certified* (a backup whose own commitment completes it does so at
once; the primary only so), and only then sends PREPAREs or COMMITs of the
view; the NEW-VIEW's numbers execute on f+1 certified commitments, before
anything of the new view. A VIEW-CHANGE carries the certificate of each view
its log shows an entry of, and :func:`choose` counts a view only through it
(docs/minbft.md, *The NEW-VIEW choice*). PREPAREs of the new view continue
above the header's last number.

Timers: the VIEW-CHANGE is re-sent until the view starts; once f+1
VIEW-CHANGEs for its view are in, a replica starts the new-view timer and
asks for the next view when it expires. Every timer of a view (this one, the
backup's request timer, the primary's own, a stuck view change's) is
doubled per view in a row before it without progress, fixed when the
replica moves to the view (:meth:`ViewChanges.timeout_us`; Castro and
Liskov, section 4.5.2; PBFT's rule, ``replicaio.core.patience.ViewBackoff``):
the back-off is reset by progress, not by a view starting (ADR 0039), and
progress is ``PROGRESS_BATCHES`` (4) batches executed in the view, or a
backup's ``PATIENCE_TIMEOUTS`` request timeouts in a row with nothing waited
for (ADR 0046; before, one batch executed brought the current view's timers
back to one timeout, and a timer shorter than a batch round replaced primary
after primary: ``minbft-backoff-reset-by-one-batch``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import msgspec
from msgspec.structs import replace

from replicaio.protocols.bft import BftViewChanges
from replicaio.protocols.minbft.messages import (
    EMPTY_UI,
    NULL_DIGEST,
    Checkpoint,
    Chosen,
    Commit,
    NewView,
    NewViewCertificate,
    NewViewCommit,
    NewViewHeader,
    NewViewVote,
    Prepare,
    ReqViewChange,
    Status,
    Stub,
    ViewChange,
    ViewChangeStarted,
    ViewStarted,
    certified_digest,
    digest_of,
    prepare_header,
    signed_request,
    without_batches,
)
from replicaio.protocols.minbft.normal import Slot
from replicaio.protocols.minbft.usig import UsigId, verify_attestation, verify_ui_digest

if TYPE_CHECKING:
    from replicaio.protocols.minbft.minbft import Minbft

Candidate = tuple[int, int, bytes]  # (view, key, digest): the highest view, then the lowest key


class ViewChanges(BftViewChanges):
    """Section 4.4 over the shared state of a :class:`Minbft`."""

    # A VIEW-CHANGE showing an entry of a view above 0 must carry the view's
    # NEW-VIEW certificate, and ``choose`` counts a view only through it (the
    # broken variant ``minbft-new-view-uncertified`` turns this off).
    certificates_required: ClassVar[bool] = True
    # A VIEW-CHANGE's anchor must be attested by its author's USIG as the first
    # CHECKPOINT of a number that high it certified, and its log must start at
    # or before the first certified NEW-VIEW-COMMIT still open then
    # (docs/minbft.md, *The pre-anchor hiding gap*; the broken variants
    # ``minbft-anchor-unattested`` and ``minbft-log-from-anchor`` turn these off).
    anchors_attested: ClassVar[bool] = True
    decisions_shown: ClassVar[bool] = True

    def __init__(self, minbft: Minbft) -> None:
        super().__init__(minbft)  # (the timers' back-off: ``BftViewChanges``)
        self.minbft = minbft  # (``replica``, typed as the Minbft)
        self.requests: dict[int, int] = {}  # replica -> the highest view it asked for
        self.received: dict[int, ViewChange] = {}  # replica -> its VIEW-CHANGE for our view
        self.own: ViewChange | None = None
        # The view of this replica's last own VIEW-CHANGE or NEW-VIEW: the view
        # its peers' streams of it are in, the only one whose NEW-VIEW-COMMIT
        # they take (streams.py). Rebuilt from the own log at load (``load``).
        self.joined = 0
        self.new_view: NewView | None = None  # what started the current view
        # Replicas whose *certified* NEW-VIEW-COMMIT of the current view counted:
        # the NEW-VIEW's numbers execute once f+1 did.
        self.new_view_votes: set[int] = set()
        # Backups' NEW-VIEW-COMMITs of the current view (this replica's own
        # included): f of them and the primary's NEW-VIEW are its certificate.
        self.new_view_commits: dict[int, NewViewCommit] = {}
        # view -> its NEW-VIEW certificate, for every view this replica's own
        # log shows an entry of (and the current one): durable, ``nvc<view>``.
        self.certificates: dict[int, NewViewCertificate] = {}
        # (The back-off of every timer of the current view, ``BftViewChanges``:
        # ``exponent``, fixed when this replica moves to a view, ``start``; not
        # durable: a restart counts as progress in the view it restarts in,
        # ``resume``, ``load``.)
        self.timer_view = -1
        self.sent_new_view_for = -1
        self.unfollowable_view = -1  # the view this replica asked for as unfollowable

    # -- asking and moving -----------------------------------------------------------------

    def request(self, view: int, *, unfollowable: bool = False) -> None:
        """Ask to move to ``view`` (the backup's timer, or the new-view timer);
        ``unfollowable``: this replica cannot take part in its current view
        (:class:`ReqViewChange`)."""
        minbft = self.minbft
        if unfollowable:
            self.unfollowable_view = view
        self.requests[minbft.id] = max(view, self.requests.get(minbft.id, 0))
        minbft.send_all(self.own_request(view))
        self.check_requests()

    def own_request(self, view: int) -> ReqViewChange:
        """This replica's signed REQ-VIEW-CHANGE(``view``)."""
        minbft = self.minbft
        unsigned = ReqViewChange(view, minbft.id, b"", view == self.unfollowable_view)
        return replace(unsigned, signature=minbft.sign(signed_request(unsigned)))

    def on_request(self, source: int, request: ReqViewChange) -> None:
        minbft = self.minbft
        if request.replica != source:
            minbft.reject("request_forged")
            return
        fresh = request.view > self.requests.get(source, 0)
        # A backup that cannot follow the view asks its primary to end it
        # (ReqViewChange); it may say so in a request it already made.
        step_down = request.unfollowable and request.view == minbft.view + 1 \
            and minbft.active and minbft.is_primary and not minbft.normal.step_down_asked
        if request.view <= minbft.view or not (fresh or step_down):
            return
        if not minbft.context.verify(source, signed_request(request), request.signature):
            minbft.reject("request_bad_signature")
            return
        if fresh:
            self.requests[source] = request.view
        if step_down:
            minbft.normal.step_down_asked = True  # acted on by the primary's timer
        if fresh and source == minbft.primary() \
                and request.view == minbft.view + 1 and minbft.active \
                and self.requests.get(minbft.id, 0) < request.view \
                and self.joins_primary():
            # The primary gives up its own view (its PREPAREs do not execute at
            # it: it resumed its backups' streams, so their COMMITs no longer
            # count there). Its backups may have nothing pending to time out on
            # (a node's in-node calls go to its own replica only: txn-minbft
            # seed 33; a single group's clients all at the primary: swarm
            # minbft:fronts=1 seeds 114 and 159), and its request alone is not
            # f+1: join it, as a primary joins a backup that cannot follow. A
            # faulty primary gains nothing it could not get by going silent.
            minbft.count("minbft_primary_gave_up")
            self.request(request.view)
            return
        self.check_requests()

    def joins_primary(self) -> bool:
        """Whether a backup joins its primary's request to end its own view
        (always; the broken variant ``minbft-primary-gives-up-alone`` keeps the
        rule before 2026-12-06: only in a group of a transactional cluster)."""
        return True

    def check_requests(self) -> None:
        """f+1 replicas ask for views above ours: move to the highest view f+1
        of them reach."""
        minbft = self.minbft
        views = sorted((view for view in self.requests.values() if view > minbft.view),
                       reverse=True)
        if len(views) >= minbft.quorum:
            self.start(views[minbft.f])
        else:
            self.check_quorum()

    def start(self, view: int) -> None:
        """Move to ``view``: leave the current one, multicast a VIEW-CHANGE."""
        minbft = self.minbft
        assert view > minbft.view
        self.enter_backoff(view, minbft.params.view_change_backoff_exponent_max)
        minbft.view = view
        minbft.active = False
        minbft.save_view()
        minbft.context.output(ViewChangeStarted(minbft.id, view))
        kept: dict[int, Slot] = {}
        for seq, slot in minbft.slots.items():
            if slot.committed:
                kept[seq] = slot
        minbft.slots = kept
        minbft.normal.proposals.clear()
        self.received = {
            replica: vc for replica, vc in self.received.items() if vc.view == view
        }
        self.new_view = None
        self.new_view_votes = set()
        minbft.count("minbft_view_changes")
        if minbft.recovery.withheld("view_change"):
            self.own = None  # it follows the view others start (recovery.py)
        else:
            self.own = minbft.emit(self.build(view))
            self.joined = view
            self.received[minbft.id] = self.own
        self.announce()

    def resume(self) -> None:
        """After a restart in the middle of a view change: the VIEW-CHANGE sent
        (from the own log) again, or a new one."""
        minbft = self.minbft
        self.restarted_in_backoff(minbft.view, minbft.params.view_change_backoff_exponent_max)
        for _, (message, _) in sorted(minbft.own_log.items(), reverse=True):
            if type(message) is ViewChange and message.view == minbft.view:
                self.own = message
                break
        if self.own is None and not minbft.recovery.withheld("view_change"):
            self.own = minbft.emit(self.build(minbft.view))
        if self.own is not None:
            self.joined = max(self.joined, self.own.view)
            self.received[minbft.id] = self.own
            minbft.send_all(self.own)
        self.announce()

    def join(self, view: int) -> None:
        """Certify this replica's VIEW-CHANGE for ``view`` unless its last own
        VIEW-CHANGE (or NEW-VIEW) already is of ``view``: called before its
        first NEW-VIEW-COMMIT of the view. A replica that was down (or behind)
        while the others changed to ``view`` takes the NEW-VIEW without having
        sent a VIEW-CHANGE for it, and its peers' streams take a
        NEW-VIEW-COMMIT only of the view of its author's last VIEW-CHANGE
        (``new_view_commit_out_of_stream``): refused everywhere and never sent
        again, its commitment was lost, and with n = 3 and the other backup
        down the view was never certified (swarm ``minbft:fronts=1`` seed 92;
        ADR 0035). The late VIEW-CHANGE is an ordinary one, built from the own
        log: it closes this replica's part in the older views in its stream, as
        any VIEW-CHANGE does, and asks for a view a valid NEW-VIEW already
        started (the broken variant ``minbft-joins-without-view-change`` skips
        it)."""
        if self.joined >= view:
            return
        minbft = self.minbft
        minbft.count("minbft_view_change_to_join")
        self.own = minbft.emit(self.build(view))
        self.joined = view

    def announce(self) -> None:
        minbft = self.minbft
        minbft.start_view_tasks([self.resend(minbft.view)])
        # The new scope cancelled a new-view timer started in this view (a
        # replica that recovered its USIG in the middle of a view change,
        # Minbft.on_recovered): check_quorum starts it again. Left marked as
        # started, neither it nor ``resend``'s stuck request ever fired, and
        # the replica waited for ever for a NEW-VIEW its resumed stream had
        # skipped (the live wiped-replica test, about one run in ten).
        self.timer_view = -1
        self.check_quorum()

    def build(self, view: int) -> ViewChange:
        """VIEW-CHANGE(view, C, O) from this replica's own log."""
        minbft = self.minbft
        anchor = minbft.own_checkpoint
        start = minbft.log_start()
        log: list[Any] = []
        batches: dict[bytes, bytes] = {}
        views: set[int] = set()
        for counter in sorted(minbft.own_log):
            if counter < start:
                continue
            message, batch = minbft.own_log[counter]
            kind = type(message)
            views.add(message_view(message))
            if kind is ViewChange:
                log.append(Stub(certified_digest(message), message.ui))
                continue
            if kind is NewView:
                log.append(Stub(certified_digest(message), message.ui, message.header))
                continue
            if kind is Commit:
                batches[message.digest] = batch
            elif kind is NewViewCommit:
                for decided in unpack_batches(batch):
                    batches[digest_of(decided)] = decided
            log.append(message)
        proof = minbft.anchor_proof if anchor is not None else ()
        certificates = tuple(self.certificates[shown] for shown in sorted(views)
                             if shown > 0 and shown in self.certificates)
        return ViewChange(view, minbft.id, anchor, proof, tuple(log),
                          tuple(batches[digest] for digest in sorted(batches)), EMPTY_UI,
                          certificates, minbft.anchor_attestation if anchor is not None else None)

    async def resend(self, view: int) -> None:
        """Re-send the VIEW-CHANGE (and the request) until the view starts. A
        replica that waited a whole timeout without the f+1 VIEW-CHANGEs that
        start the new-view timer asks for the next view: the others may have
        started this one with a NEW-VIEW its stream of the primary resumed
        past, which it can never take (docs/minbft.md, *A backup that cannot
        follow*); alone, the request moves nobody."""
        minbft = self.minbft
        waited = 0
        while True:
            await minbft.context.sleep(minbft.params.view_change_resend_us)
            if minbft.view != view or minbft.active:
                return
            waited += minbft.params.view_change_resend_us
            if waited >= self.timeout_us() and self.timer_view != view \
                    and self.requests.get(minbft.id, 0) <= view and not minbft.withholding:
                minbft.count("minbft_view_change_stuck")
                self.request(view + 1, unfollowable=minbft.normal.unfollowable())
            if self.own is not None:
                minbft.send_all(self.own)
            own_request = self.requests.get(minbft.id, 0)
            if own_request >= view:
                minbft.send_all(self.own_request(own_request))
            # Its batches wait for this view change: a peer still in the old view
            # (which may wait for nothing) times them too (normal.py).
            minbft.normal.forward_waiting()

    # (``timeout_us``, ``on_progress`` and ``on_idle``: ``BftViewChanges``)

    async def new_view_timer(self, view: int) -> None:
        minbft = self.minbft
        await minbft.context.sleep(self.timeout_us())
        if minbft.view == view and not minbft.active:
            minbft.count("minbft_new_view_timeouts")
            # A replica that resumed the new primary's stream past its NEW-VIEW
            # can never take it: the primary, active in the view, must end it.
            self.request(view + 1, unfollowable=minbft.normal.unfollowable())

    # -- VIEW-CHANGE messages --------------------------------------------------------------

    def on_view_change(self, view_change: ViewChange) -> None:
        """A VIEW-CHANGE its author's stream admitted."""
        minbft = self.minbft
        replica = view_change.replica
        if view_change.view > self.requests.get(replica, 0):
            self.requests[replica] = view_change.view
        reason = self.invalid_view_change(view_change, batches=True)
        if reason is not None:
            minbft.reject(reason)
            return
        if view_change.view == minbft.view and not minbft.active:
            self.received[replica] = view_change
            self.check_quorum()
        elif view_change.view > minbft.view:
            self.received[replica] = view_change  # for when this replica gets there
            self.check_requests()
        else:
            self.check_quorum()

    def check_quorum(self) -> None:
        minbft = self.minbft
        if minbft.active:
            return
        view = minbft.view
        changing = {replica for replica, vc in self.received.items() if vc.view == view}
        # Replicas asking for this view or a later one are in the change too
        # (a restarted replica has lost the VIEW-CHANGEs it counted; a peer
        # already active in the view no longer re-sends its own).
        changing.update(replica for replica, asked in self.requests.items() if asked >= view)
        if len(changing) < minbft.quorum:
            return
        if self.timer_view != view:
            self.timer_view = view
            assert minbft.view_scope is not None
            minbft.view_scope.spawn(self.new_view_timer(view), "minbft.new_view_timer")
        have = sum(1 for vc in self.received.values() if vc.view == view)
        if minbft.primary(view) == minbft.id and self.sent_new_view_for != view \
                and have >= minbft.quorum:
            self.send_new_view(view)

    def invalid_view_change(self, vc: ViewChange, *, batches: bool) -> str | None:
        """Why ``vc`` is not a valid VIEW-CHANGE (None if it is)."""
        minbft = self.minbft
        if vc.view < 1:
            return "view_change_view_zero"
        anchor = vc.checkpoint
        start = 1
        if anchor is None:
            if vc.proof:
                return "view_change_proof_without_checkpoint"
        else:
            if anchor.replica != vc.replica or not minbft.verify_ui(vc.replica, anchor):
                return "view_change_bad_checkpoint"
            if not minbft.checkpoints.valid_certificate(anchor.seq, anchor.digest, vc.proof):
                return "view_change_bad_certificate"
            # The log starts right after the anchor, or earlier when a message
            # about a number above it was certified before it (Minbft.log_start).
            start = anchor.ui.counter + 1
            if vc.log and 1 <= vc.log[0].ui.counter < start:
                start = vc.log[0].ui.counter
            reason = self.invalid_anchor(vc, anchor, start)
            if reason is not None:
                return reason
        if vc.ui.counter != start + len(vc.log) or (anchor is not None and \
                anchor.ui.epoch != vc.ui.epoch):
            return "view_change_log_not_contiguous"
        usig = UsigId(vc.replica, vc.ui.epoch, self.minbft.group)
        shown: set[int] = set()  # the views of its entries
        needed: set[int] = set()  # ... that need their NEW-VIEW certificate
        for offset, entry in enumerate(vc.log):
            if entry.ui.counter != start + offset or entry.ui.epoch != vc.ui.epoch:
                return "view_change_log_not_contiguous"
            reason = self.invalid_entry(vc, entry, usig, batches=batches)
            if reason is not None:
                return reason
            view = message_view(entry)
            shown.add(view)
            if view > 0 and (isinstance(entry, (Prepare, Commit)) or (
                    isinstance(entry, NewViewCommit) and entry.certified)):
                needed.add(view)
        return self.invalid_certificates(vc, shown, needed)

    def invalid_anchor(self, vc: ViewChange, anchor: Checkpoint, start: int) -> str | None:
        """The anchor must be the first CHECKPOINT of a number that high its
        author's USIG certified, and the log must start at or before the first
        certified NEW-VIEW-COMMIT still open at it, both as the USIG attests at
        the anchor's counter. A commitment about a number above the anchor that
        a correct replica counted is then in the log: a PREPARE or COMMIT passed
        its stream's window, so it follows a CHECKPOINT of a number at least the
        anchor's, which the first such CHECKPOINT does not follow; a certified
        NEW-VIEW-COMMIT has no window, and the USIG marks it. Without the first
        rule a faulty replica certifies a CHECKPOINT of its stable checkpoint
        again and anchors there, after the commitments it hides
        (``minbft_fresh_anchor``: an agreement violation); without the second
        it starts its log after a NEW-VIEW-COMMIT it certified before its anchor
        (``minbft_hide_before_anchor``)."""
        if not self.anchors_attested and not self.decisions_shown:
            return None
        attestation = vc.attestation
        if attestation is None or attestation.counter != anchor.ui.counter or \
                not verify_attestation(self.minbft.scheme, attestation,
                                       UsigId(vc.replica, anchor.ui.epoch, self.minbft.group)):
            return "view_change_anchor_unattested"
        if self.anchors_attested and attestation.checkpoint_at != anchor.ui.counter:
            return "view_change_anchor_not_first"
        if self.decisions_shown and attestation.decided_from and \
                start > attestation.decided_from:
            return "view_change_log_hides_decisions"
        return None

    def invalid_certificates(self, vc: ViewChange, shown: set[int],
                             needed: set[int]) -> str | None:
        """A PREPARE, COMMIT or certified NEW-VIEW-COMMIT of a view above 0 in a
        VIEW-CHANGE must come with that view's NEW-VIEW certificate: without it
        the view may be one no correct replica started, whose PREPAREs (the
        faulty primary's own) could outrank an executed batch (docs/minbft.md,
        *The NEW-VIEW choice*). One certificate per view its log shows, views
        increasing: bounded by the log."""
        previous = 0
        for certificate in vc.certificates:
            view = certificate.header.view
            if view <= previous or view not in shown:
                return "view_change_certificate_unexpected"
            previous = view
            if not self.valid_certificate(certificate):
                return "view_change_bad_new_view_certificate"
            needed.discard(view)
        return "view_change_uncertified_view" if needed and self.certificates_required else None

    def invalid_entry(self, vc: ViewChange, entry: Any, usig: UsigId, *,
                      batches: bool) -> str | None:
        minbft = self.minbft
        kind = type(entry)
        if kind is Stub:
            ok = verify_ui_digest(minbft.scheme, entry.digest, entry.ui, usig)
            header = entry.header
            if ok and header is not None:  # the author's own NEW-VIEW, by its header
                ok = (header.replica == vc.replica == minbft.primary(header.view)
                      and certified_digest(header) == entry.digest)
            return None if ok else "view_change_bad_stub"
        if entry.replica != vc.replica or not minbft.verify_ui(vc.replica, entry):
            return "view_change_bad_entry"
        if kind is Prepare:
            if minbft.primary(entry.view) != vc.replica:
                return "view_change_prepare_not_primary"
            if batches and digest_of(entry.batch) != entry.digest:
                return "view_change_prepare_batch"
        elif kind is Commit:
            header = prepare_header(entry.view, entry.seq, entry.digest, minbft.primary(entry.view))
            if not minbft.usig_verify(minbft.primary(entry.view), header, entry.primary_ui):
                return "view_change_commit_bad_prepare"
            if batches and not any(digest_of(batch) == entry.digest for batch in vc.batches):
                return "view_change_commit_batch_missing"
        elif kind is NewViewCommit:
            header = entry.header
            if not minbft.usig_verify(minbft.primary(header.view), header, entry.primary_ui):
                return "view_change_new_view_commit_bad"
        return None

    # -- NEW-VIEW -----------------------------------------------------------------------------

    def send_new_view(self, view: int) -> None:
        minbft = self.minbft
        if minbft.recovery.withheld("new_view"):
            return
        view_changes = [self.received[replica] for replica in sorted(self.received)
                        if self.received[replica].view == view]
        header, batches = choose(minbft, view, view_changes)
        if batches is None:
            minbft.count("minbft_new_view_batch_missing")
            return
        self.sent_new_view_for = view
        new_view = NewView(header, tuple(without_batches(vc) for vc in view_changes),
                           tuple(batches), EMPTY_UI)
        new_view = minbft.emit(new_view)
        self.joined = view
        self.enter(new_view)

    def invalid_new_view(self, new_view: NewView) -> str | None:
        """Why a NEW-VIEW is not valid: its VIEW-CHANGEs, its header (recomputed)
        and its batches are all checked."""
        minbft = self.minbft
        header = new_view.header
        if header.view < 1 or header.replica != minbft.primary(header.view):
            return "new_view_not_primary"
        replicas = [vc.replica for vc in new_view.view_changes]
        if len(set(replicas)) != len(replicas) or len(replicas) < minbft.quorum:
            return "new_view_too_few_view_changes"
        if replicas != sorted(replicas):
            return "new_view_view_changes_unsorted"
        for vc in new_view.view_changes:
            if vc.view != header.view or not 0 <= vc.replica < minbft.n:
                return "new_view_view_change_other_view"
            if not minbft.verify_ui(vc.replica, vc):
                return "new_view_view_change_bad_ui"
            reason = self.invalid_view_change(vc, batches=False)
            if reason is not None:
                return "new_view_" + reason
        expected, _ = choose(minbft, header.view, list(new_view.view_changes),
                             need_batches=False)
        if expected != header:
            return "new_view_wrong_header"
        wanted = [chosen.digest for chosen in header.chosen if chosen.digest != NULL_DIGEST]
        if [digest_of(batch) for batch in new_view.batches] != wanted:
            return "new_view_wrong_batches"
        return None

    def on_new_view(self, new_view: NewView) -> None:
        """A valid NEW-VIEW its primary's stream admitted."""
        minbft = self.minbft
        view = new_view.header.view
        if view < minbft.view or (view == minbft.view and minbft.active):
            return
        self.enter(new_view)

    def enter(self, new_view: NewView) -> None:
        """Start the NEW-VIEW's view: its numbers wait for f+1 commitments."""
        minbft = self.minbft
        header = new_view.header
        backup = minbft.primary(header.view) != minbft.id
        if backup and not minbft.withholding:
            # Before anything of the view is written: a step cut after it
            # restarts in the old view, and the NEW-VIEW (its stream not
            # advanced) comes again.
            self.join(header.view)
        minbft.view = header.view
        minbft.active = True
        minbft.context.persist("nv", minbft.encode(new_view))
        minbft.save_view()
        minbft.slots = {seq: slot for seq, slot in minbft.slots.items() if slot.committed}
        self.new_view = new_view
        self.new_view_votes = set()
        self.new_view_commits = {}
        self.take_chosen(new_view)
        minbft.context.output(ViewStarted(minbft.id, minbft.view, minbft.primary()))
        minbft.count("minbft_views_started")
        minbft.start_view_tasks(minbft.normal.tasks())
        minbft.normal.last_prepared = max(
            (chosen.seq for chosen in header.chosen), default=header.base)
        # A backup commits to the NEW-VIEW; the primary commits only once it
        # holds the certificate (check_certificate), as does a backup whose own
        # commitment does not complete it.
        if not minbft.is_primary and not minbft.recovery.withheld("new_view_commit"):
            completes = len(self.new_view_commits) + 1 >= minbft.f
            own = minbft.emit(NewViewCommit(header, new_view.ui, minbft.id, EMPTY_UI,
                                            completes), pack_batches(new_view.batches))
            self.take_commit(own)
        self.save_votes()
        if header.base > minbft.stable_seq:
            proof = self.base_proof(new_view)
            if proof is not None:
                minbft.checkpoints.on_certificate(header.base, header.base_digest, proof)
        self.check_certificate()
        minbft.normal.on_view_started()
        minbft.replay_deferred()

    def take_chosen(self, new_view: NewView) -> None:
        minbft = self.minbft
        header = new_view.header
        batches = iter(new_view.batches)
        for chosen in header.chosen:
            batch = b"" if chosen.digest == NULL_DIGEST else next(batches)
            if not minbft.in_window(chosen.seq):
                continue
            slot = minbft.normal.slot(chosen.seq)
            if slot.committed:
                if slot.digest != chosen.digest:
                    minbft.count("minbft_new_view_conflicts_executed")
                continue
            slot.take(header.view, chosen.digest, batch, -new_view.ui.counter)

    def base_proof(self, new_view: NewView) -> tuple[Checkpoint, ...] | None:
        for vc in new_view.view_changes:
            if vc.checkpoint is not None and vc.checkpoint.seq == new_view.header.base:
                return vc.proof
        return None

    def on_new_view_commit(self, commit: NewViewCommit) -> None:
        minbft = self.minbft
        new_view = self.new_view
        if new_view is None or commit.header != new_view.header or not minbft.active \
                or commit.primary_ui != new_view.ui:
            minbft.reject("new_view_commit_other")
            return
        if self.take_commit(commit):
            self.save_votes()
            self.check_certificate()

    def take_commit(self, commit: NewViewCommit) -> bool:
        """Count a NEW-VIEW-COMMIT of the current NEW-VIEW (a peer's or this
        replica's own); whether anything changed."""
        minbft = self.minbft
        changed = False
        if commit.replica != minbft.primary() and commit.replica not in self.new_view_commits:
            self.new_view_commits[commit.replica] = commit
            changed = True
        if commit.certified and commit.replica not in self.new_view_votes:
            self.new_view_votes.add(commit.replica)
            changed = True
        return changed

    def save_votes(self) -> None:
        """``nvv``: the view, the certified votes and the backups'
        NEW-VIEW-COMMITs (a record of an older view is ignored at load: ``nv``
        is written first when a view starts)."""
        minbft = self.minbft
        minbft.context.persist("nvv", (minbft.view, sorted(self.new_view_votes),
                                       [minbft.encode(commit) for _, commit in
                                        sorted(self.new_view_commits.items())]))

    def certified(self, view: int) -> bool:
        """Whether this replica holds the NEW-VIEW certificate of ``view`` (view
        0 starts without a NEW-VIEW and needs none)."""
        return view == 0 or view in self.certificates

    def check_certificate(self) -> None:
        """With f backups' NEW-VIEW-COMMITs (and the NEW-VIEW, the primary's) the
        current view is certified: keep the certificate durably, commit to the
        NEW-VIEW as certified, then send what waited for it (COMMITs, the
        primary's PREPAREs). Each prefix restarts: a certificate kept without
        the certified commitment is completed at start (``on_restart``)."""
        minbft = self.minbft
        new_view = self.new_view
        if new_view is None or not minbft.active:
            return
        header = new_view.header
        view = header.view
        if view not in self.certificates:
            if len(self.new_view_commits) < minbft.f:
                return
            votes = tuple(NewViewVote(commit.replica, commit.certified, commit.ui)
                          for _, commit in sorted(self.new_view_commits.items())[:minbft.f])
            certificate = NewViewCertificate(header, new_view.ui, votes)
            minbft.context.persist(f"nvc{view}", minbft.encode(certificate))
            self.certificates[view] = certificate
            minbft.count("minbft_new_view_certified")
        if minbft.id not in self.new_view_votes and not minbft.withholding:
            if minbft.id != header.replica:
                self.join(view)  # (entered while recovering: no VIEW-CHANGE sent)
            # Logged with the batches its header decided: a later VIEW-CHANGE
            # that shows this commitment must carry them, or the next primary
            # cannot build its NEW-VIEW (degraded swarm, minbft n=3 seed 177).
            own = minbft.emit(NewViewCommit(header, new_view.ui, minbft.id, EMPTY_UI, True),
                              pack_batches(new_view.batches))
            self.take_commit(own)
            self.save_votes()
        self.check_new_view_committed()
        minbft.normal.on_checkpoint_sent()  # the COMMITs and PREPAREs that waited

    def on_restart(self) -> None:
        """Started (or recovered) in an active view: finish what a cut step left."""
        if self.new_view is not None:
            self.take_decided()
            self.check_certificate()

    def take_decided(self) -> None:
        """Take the current NEW-VIEW's decisions the window holds now and did not
        when the view started (``take_chosen`` skips the numbers above it),
        and after a restart (slots of the NEW-VIEW are not records of their
        own): called when the stable checkpoint moves and at start. A replica
        that entered the view below the NEW-VIEW's checkpoint, caught up by
        state transfer, never executed the decisions above its old window, so
        with n = 3 and one replica down the primary's own CHECKPOINT above them
        never came and its window stayed full (swarm ``minbft:fronts=1`` seed
        92, once the late backup's VIEW-CHANGE and the joined step-down let it
        reach that far)."""
        new_view = self.new_view
        if new_view is None or not self.minbft.active:
            return
        self.take_chosen(new_view)
        self.check_new_view_committed()

    def trim_certificates(self, views: set[int]) -> None:
        """Forget certificates of views no own logged message is of (any more)."""
        minbft = self.minbft
        for view in [view for view in self.certificates if view not in views
                     and view != minbft.view]:
            del self.certificates[view]
            minbft.context.erase(f"nvc{view}")

    def valid_certificate(self, certificate: NewViewCertificate) -> bool:
        """The primary's UI on the header and f distinct backups' NEW-VIEW-COMMITs of it."""
        minbft = self.minbft
        header = certificate.header
        primary = minbft.primary(header.view)
        if header.view < 1 or header.replica != primary or \
                not minbft.usig_verify(primary, header, certificate.primary_ui):
            return False
        signers: set[int] = set()
        for vote in certificate.votes:
            replica = vote.replica
            if replica == primary or replica in signers or not 0 <= replica < minbft.n:
                return False
            commit = NewViewCommit(header, certificate.primary_ui, replica, EMPTY_UI,
                                   vote.certified)
            if not minbft.usig_verify(replica, commit, vote.ui):
                return False
            signers.add(replica)
        return len(signers) >= minbft.f

    def check_new_view_committed(self) -> None:
        minbft = self.minbft
        new_view = self.new_view
        if new_view is None or len(self.new_view_votes) < minbft.quorum:
            return
        key = -new_view.ui.counter
        for chosen in new_view.header.chosen:
            slot = minbft.slots.get(chosen.seq)
            if slot is not None and not slot.committed and slot.key == key:
                minbft.normal.commit(slot)

    # -- status, recovery -----------------------------------------------------------------------

    def on_status_tick(self) -> None:
        minbft = self.minbft
        own_request = self.requests.get(minbft.id, 0)
        if minbft.active and own_request > minbft.view:
            minbft.send_all(self.own_request(own_request))

    def help_peer(self, source: int, status: Status) -> None:
        """A peer behind in views learns of ours from our request."""
        minbft = self.minbft
        if status.view < minbft.view and minbft.view > 0:
            minbft.send(source, self.own_request(minbft.view))

    def load(self) -> None:
        minbft = self.minbft
        self.joined = max((joined_view(message) for message, _ in minbft.own_log.values()),
                          default=0)
        self.load_certificates()
        stored = minbft.context.load("nv")
        if stored is None:
            return
        new_view = minbft.codec.decode_as(stored, NewView)
        if new_view.header.view != minbft.view or not minbft.active:
            return
        self.new_view = new_view
        self.progress_view = minbft.view  # (a restart: progress)
        stored_votes = minbft.context.load("nvv")
        if stored_votes is not None and len(stored_votes) == 3 and \
                int(stored_votes[0]) == minbft.view:
            _, votes, commits = stored_votes
            for data in commits:
                commit = minbft.codec.decode_as(data, NewViewCommit)
                if commit.header == new_view.header:
                    self.new_view_commits[commit.replica] = commit
            self.new_view_votes = {int(vote) for vote in votes}
        # A step cut after its own NEW-VIEW-COMMIT was logged: the own log is the truth.
        for message, _ in minbft.own_log.values():
            if type(message) is NewViewCommit and message.header == new_view.header:
                self.take_commit(message)

    def load_certificates(self) -> None:
        minbft = self.minbft
        for name in minbft.context.stored_names("nvc"):
            if name[3:].isdigit():
                certificate = minbft.codec.decode_as(minbft.context.load(name),
                                                     NewViewCertificate)
                self.certificates[certificate.header.view] = certificate


def pack_batches(batches: tuple[bytes, ...]) -> bytes:
    """The batches a NEW-VIEW decided, as the own log keeps them with this
    replica's NEW-VIEW-COMMIT."""
    return msgspec.msgpack.encode(batches) if batches else b""


def unpack_batches(data: bytes) -> list[bytes]:
    """What :func:`pack_batches` kept (this replica's own durable log)."""
    return msgspec.msgpack.decode(data, type=list[bytes]) if data else []


def choose(minbft: Minbft, view: int, view_changes: list[ViewChange], *,
           need_batches: bool = True) -> tuple[NewViewHeader, list[bytes] | None]:
    """The NEW-VIEW header the VIEW-CHANGEs imply, and the batches it needs
    (None if one is missing); deterministic in its arguments."""
    base, base_digest = 0, b""
    for vc in view_changes:
        if vc.checkpoint is not None and vc.checkpoint.seq > base:
            base, base_digest = vc.checkpoint.seq, vc.checkpoint.digest
    limit = base + 4 * minbft.params.log_size
    best: dict[int, Candidate] = {}
    batches: dict[bytes, bytes] = {}

    def offer(entry_view: int, seq: int, key: int, digest: bytes) -> None:
        if not base < seq <= limit:
            return
        known = best.get(seq)
        candidate = (entry_view, key, digest)
        if known is None or (entry_view, -key) > (known[0], -known[1]):
            best[seq] = candidate

    # A view's decisions count through its NEW-VIEW certificate (one correct
    # replica of its f+1 validated them), never through a NEW-VIEW-COMMIT or a
    # NEW-VIEW stub alone (a faulty primary certifies any header it likes);
    # they outrank every PREPARE of their view, and a PREPARE or COMMIT of a
    # view counts only above the last number its NEW-VIEW decided (a correct
    # primary numbers from there).
    certified: dict[int, NewViewHeader] = {}
    for vc in view_changes:
        for certificate in vc.certificates:
            certified.setdefault(certificate.header.view, certificate.header)
    decided_up_to: dict[int, int] = {}
    for certified_view, certified_header in sorted(certified.items()):
        decided_up_to[certified_view] = max(
            (decided.seq for decided in certified_header.chosen), default=certified_header.base)
        for decided in certified_header.chosen:
            offer(certified_view, decided.seq, -1, decided.digest)
    strict = minbft.view_changes.certificates_required

    def counts(entry_view: int, seq: int) -> bool:
        if entry_view == 0:
            return True
        if entry_view not in decided_up_to:
            return not strict
        return seq > decided_up_to[entry_view]

    for vc in view_changes:
        for batch in vc.batches:
            batches[digest_of(batch)] = batch
        for entry in vc.log:
            if isinstance(entry, Prepare):
                if entry.batch:
                    batches[entry.digest] = entry.batch
                if counts(entry.view, entry.seq):
                    offer(entry.view, entry.seq, entry.ui.counter, entry.digest)
            elif isinstance(entry, Commit):
                if counts(entry.view, entry.seq):
                    offer(entry.view, entry.seq, entry.primary_ui.counter, entry.digest)
            elif not strict and (isinstance(entry, NewViewCommit) or (
                    isinstance(entry, Stub) and entry.header is not None)):
                assert entry.header is not None  # (the variant: uncertified headers count)
                for decided in entry.header.chosen:
                    offer(entry.header.view, decided.seq, -1, decided.digest)
    top = max(best, default=base)
    chosen = tuple(
        Chosen(seq, best[seq][2] if seq in best else NULL_DIGEST)
        for seq in range(base + 1, top + 1)
    )
    header = NewViewHeader(view, minbft.primary(view), base, base_digest, chosen)
    if not need_batches:
        return header, None
    needed: list[bytes] = []
    for item in chosen:
        if item.digest == NULL_DIGEST:
            continue
        found = batches.get(item.digest)
        if found is None:
            return header, None
        needed.append(found)
    return header, needed


def joined_view(message: Any) -> int:
    """The view an own logged message shows its author's stream in: a
    VIEW-CHANGE's or NEW-VIEW's own view, and the view of a commitment or
    PREPARE (its stream took it only in that view); 0 for the rest."""
    kind = type(message)
    if kind is ViewChange:
        return int(message.view)
    if kind is NewView or kind is NewViewCommit:
        return int(message.header.view)
    if kind is Prepare or kind is Commit:
        return int(message.view)
    return 0


def message_view(message: Any) -> int:
    """The view an own logged message (or a VIEW-CHANGE log entry) is of."""
    kind = type(message)
    if kind is NewViewCommit or kind is NewView:
        return int(message.header.view)
    if kind is Stub:
        return -1 if message.header is None else int(message.header.view)
    if kind is Prepare or kind is Commit:
        return int(message.view)
    return -1  # (a VIEW-CHANGE is shown as a stub without a view)
