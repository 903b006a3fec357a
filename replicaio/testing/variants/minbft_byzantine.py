"""Code a Byzantine MinBFT replica may run instead of the honest code, for the
simulator's behaviours (``replicaio/sim/minbft_adversary.py``): the hybrid
fault model lets a faulty replica run anything but its USIG, which these
classes only ask for UIs the honest way (``Minbft.emit``). Not broken
variants (every replica would run them); a behaviour swaps them into the one
Byzantine replica's core. See docs/minbft.md, *The NEW-VIEW choice* and *The
pre-anchor hiding gap*."""

from __future__ import annotations

from replicaio.protocols.minbft.messages import EMPTY_UI, Commit, Prepare, ViewChange, digest_of
from replicaio.protocols.minbft.minbft import Minbft
from replicaio.protocols.minbft.view_change import ViewChanges


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
