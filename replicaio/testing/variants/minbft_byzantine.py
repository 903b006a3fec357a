"""Code a Byzantine MinBFT replica may run instead of the honest code, for the
simulator's behaviours (``replicaio/sim/minbft_adversary.py``): the hybrid
fault model lets a faulty replica run anything but its USIG, which these
classes only ask for UIs the honest way (``Minbft.emit``). Not broken
variants (every replica would run them); a behaviour swaps them into the one
Byzantine replica's core. See docs/minbft.md, *The NEW-VIEW choice* and *The
pre-anchor hiding gap*."""

from __future__ import annotations

from typing import Any

from replicaio.protocols.minbft.checkpoint import Checkpoints
from replicaio.protocols.minbft.messages import (
    EMPTY_UI,
    Checkpoint,
    Commit,
    NewView,
    NewViewCommit,
    Prepare,
    ReqViewChange,
    ViewChange,
    digest_of,
    without_batches,
)
from replicaio.protocols.minbft.minbft import Minbft
from replicaio.protocols.minbft.normal import NormalCase
from replicaio.protocols.minbft.view_change import ViewChanges, choose


class HidingMinbft(Minbft):
    """VIEW-CHANGE logs from right after the anchor, whatever it certified
    before it (its USIG is untouched)."""

    def log_start(self) -> int:
        anchor = self.own_checkpoint
        return 1 if anchor is None else anchor.ui.counter + 1


class UnseenViewChanges(ViewChanges):
    """Before each VIEW-CHANGE, PREPAREs of the latest earlier view this
    replica is the primary of, reordering the batches its log shows above the
    anchor (each lie certified by its own USIG, once per view); as primary it
    sends no NEW-VIEW, so those views are ones no correct replica started."""

    lied_in: set[int]

    def build(self, view: int) -> ViewChange:
        minbft = self.minbft
        lie_view = max((v for v in range(1, view) if minbft.primary(v) == minbft.id), default=0)
        lied_in: set[int] = getattr(self, "lied_in", set())
        self.lied_in = lied_in
        if lie_view > 0 and lie_view not in lied_in:
            lied_in.add(lie_view)
            self.lie(lie_view)
        return super().build(view)

    def lie(self, lie_view: int) -> None:
        minbft = self.minbft
        anchor = minbft.own_checkpoint
        base = 0 if anchor is None else anchor.seq
        found: dict[int, bytes] = {}
        for message, batch in list(minbft.own_log.values()):
            if type(message) is Prepare and message.seq > base and message.view < lie_view:
                found[message.seq] = message.batch
            elif type(message) is Commit and message.seq > base \
                    and message.view < lie_view and batch:
                found[message.seq] = batch
        seqs = sorted(found)
        if len(set(found.values())) < 2:
            return
        for index, seq in enumerate(seqs):
            batch = found[seqs[(index + 1) % len(seqs)]]
            minbft.emit(Prepare(lie_view, seq, digest_of(batch), batch, minbft.id, EMPTY_UI))

    def send_new_view(self, view: int) -> None:
        """Never starts a view it is the primary of."""


class SecondNewViewChanges(ViewChanges):
    """Keeps what a second NEW-VIEW of a view it started needs: the VIEW-CHANGEs
    of its view that arrive after the view started (an honest core drops them)
    and its anchor (own CHECKPOINT and certificate) when the view change began.
    ``second_new_view`` builds the NEW-VIEW a different set of VIEW-CHANGEs
    gives; the behaviour ``minbft_second_new_view`` certifies and sends it."""

    late: dict[int, ViewChange]
    start_anchor: tuple[Any, Any] | None

    def start(self, view: int) -> None:
        minbft = self.minbft
        anchor = minbft.own_checkpoint
        self.start_anchor = None if anchor is None else (anchor, minbft.anchor_proof)
        self.late = {}
        super().start(view)

    def on_view_change(self, view_change: ViewChange) -> None:
        late: dict[int, ViewChange] = getattr(self, "late", {})
        self.late = late
        if view_change.view == self.minbft.view and \
                self.invalid_view_change(view_change, batches=True) is None:
            late[view_change.replica] = view_change
        super().on_view_change(view_change)

    def second_new_view(self, victim: int) -> NewView | None:
        """An unsigned NEW-VIEW of the view this replica started (as its primary)
        from its own VIEW-CHANGE, ``victim``'s and others, if its header differs
        from the first one's; None otherwise."""
        minbft = self.minbft
        first = self.new_view
        late: dict[int, ViewChange] = getattr(self, "late", {})
        own = self.own
        theirs = late.get(victim)
        if first is None or not minbft.active or first.header.replica != minbft.id \
                or own is None or own.view != minbft.view or theirs is None:
            return None
        chosen = {minbft.id: own, victim: theirs}
        for replica, vc in sorted({**self.received, **late}.items()):
            if len(chosen) >= minbft.quorum:
                break
            if vc.view == minbft.view and replica not in chosen:
                chosen[replica] = vc
        if len(chosen) < minbft.quorum:
            return None
        view_changes = [chosen[replica] for replica in sorted(chosen)]
        header, batches = choose(minbft, minbft.view, view_changes)
        if batches is None or header == first.header:
            return None
        return NewView(header, tuple(without_batches(vc) for vc in view_changes),
                       tuple(batches), EMPTY_UI)


class FreshAnchorViewChanges(ViewChanges):
    """Each VIEW-CHANGE anchored at a *fresh* CHECKPOINT of its stable
    checkpoint (the same number and digest, certified again by its USIG at the
    next counter), with the log starting after it: everything it certified
    before, commitments to numbers above the anchor included, is left out, and
    the counters stay contiguous (docs/minbft.md, *The pre-anchor hiding gap*,
    the second case: an anchor that is not the CHECKPOINT its peers' streams
    took)."""

    def build(self, view: int) -> ViewChange:
        minbft = self.minbft
        anchor = minbft.own_checkpoint
        if anchor is None:
            return super().build(view)
        fresh = minbft.emit(Checkpoint(anchor.seq, anchor.digest, minbft.id, EMPTY_UI))
        # Its USIG's attestation at the fresh CHECKPOINT (the truth: not the first).
        return ViewChange(view, minbft.id, fresh, minbft.anchor_proof, (), (), EMPTY_UI, (),
                          minbft.attestations.get(fresh.ui.counter))


class LateAnchorMinbft(HidingMinbft):
    """The first hideable case of docs/minbft.md's *The pre-anchor hiding gap*:
    a certified NEW-VIEW-COMMIT before the anchor. Certifies no CHECKPOINT of
    its own until it has certified a NEW-VIEW-COMMIT (so its first CHECKPOINT,
    of its stable checkpoint, comes after it and is its anchor), never
    PREPAREs as a primary (nothing of that view shows after the anchor), and
    joins every view a peer asks for; its VIEW-CHANGE logs start right after
    the anchor (``HidingMinbft``). Its USIG is untouched."""

    decided = False

    def emit(self, message: Any, batch: bytes = b"") -> Any:
        certified = super().emit(message, batch)
        if type(message) is NewViewCommit and message.certified and not self.decided:
            self.decided = True
            own = self.checkpoints.certify_own(self.stable_seq, self.stable_digest) \
                if self.stable_seq > 0 else None
            if own is not None:
                self.own_checkpoint, self.anchor_proof = own, self.stable_proof
                self.anchor_attestation = self.attestations.get(own.ui.counter)
        return certified


class LateCheckpoints(Checkpoints):
    """No own CHECKPOINT before the first certified NEW-VIEW-COMMIT."""

    def certify_own(self, seq: int, digest: bytes) -> Checkpoint | None:
        if not getattr(self.minbft, "decided", False):
            return None
        return super().certify_own(seq, digest)


class SilentPrimary(NormalCase):
    """Never numbers a batch."""

    def assign(self) -> None:
        return


class JoiningViewChanges(ViewChanges):
    """Asks for every view a peer asks for above its own."""

    def on_request(self, source: int, request: ReqViewChange) -> None:
        super().on_request(source, request)
        minbft = self.minbft
        if request.replica == source and request.view > minbft.view and \
                request.view > self.requests.get(minbft.id, 0):
            self.request(request.view)
