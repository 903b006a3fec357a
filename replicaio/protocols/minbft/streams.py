"""One peer's UI-certified messages, taken strictly in USIG counter order.

MinBFT's safety rests on this (Veronese et al., section 4.1): a replica
processes the messages of each peer in the order of their counters, so it
sees *everything* the peer's USIG certified, in the order it was certified,
or waits. A faulty replica cannot show one peer a message it hides from
another without leaving a gap every correct replica stops at.

The rules of :meth:`PeerStream.admit` depend only on the stream itself (never
on the receiver's own view or window), so every correct replica judges a
peer's message the same way. A message the stream admits is then handed to
the phases, which may still ignore it for local reasons (a view this replica
left, a number below its stable checkpoint).

Bounds: at most ``held_max`` messages above a gap are held per peer (the UI
is checked first, so a faulty peer cannot fill it with junk another peer
made); one beyond is dropped (the peer re-sends it when asked).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from replicaio.protocols.minbft.messages import (
    Checkpoint,
    Commit,
    NewView,
    NewViewCommit,
    Prepare,
    ViewChange,
    certified_bytes,
    digest_of,
    prepare_header,
)

if TYPE_CHECKING:
    from replicaio.protocols.minbft.minbft import Minbft


class PeerStream:
    """Where one peer's certified messages stand (see the module docstring)."""

    __slots__ = (
        "dirty", "epoch", "faulty_view", "held", "last_checkpoint", "last_seq", "next",
        "nv_floor", "nv_view", "peer", "resumed_below", "view",
    )

    def __init__(self, peer: int) -> None:
        self.peer = peer
        self.epoch = 0  # the USIG epoch of the peer's messages taken
        self.next = 1  # the next counter to take
        self.view = 0  # the view the peer is in, by its messages
        self.nv_view = 0  # the newest view whose NEW-VIEW (as its primary) it showed
        self.last_seq = 0  # its last PREPARE's number in ``nv_view``
        self.last_checkpoint = 0  # the number of its latest CHECKPOINT
        self.faulty_view = -1  # a view in which its PREPAREs no longer count
        # After a resume (messages skipped): nothing of a view below this counts.
        self.resumed_below = 0
        # No NEW-VIEW of a view up to this is taken: after a resume, the highest
        # view of a NEW-VIEW the peer's USIG certified before the resume point
        # (its attestation). A faulty primary resumed this stream past its
        # first NEW-VIEW of a view to show it a second one, which with n = 3
        # certified two headers of one view (docs/minbft.md, *A second
        # NEW-VIEW of a view*; tests/test_minbft_second_new_view.py).
        self.nv_floor = 0
        self.held: dict[int, Any] = {}
        self.dirty = False

    def record(self) -> tuple[int, ...]:
        return (self.epoch, self.next, self.view, self.nv_view, self.last_seq,
                self.last_checkpoint, self.faulty_view, self.resumed_below, self.nv_floor)

    def restore(self, stored: Any) -> None:
        if stored is None:
            return
        values = [int(value) for value in stored]
        (self.epoch, self.next, self.view, self.nv_view, self.last_seq,
         self.last_checkpoint, self.faulty_view, self.resumed_below) = values[:8]
        self.nv_floor = values[8] if len(values) > 8 else 0

    def resume(self, counter: int, checkpoint_seq: int, view: int, interval: int,
               new_view_max: int) -> None:
        """Skip to ``counter`` (the peer's own CHECKPOINT of ``checkpoint_seq``,
        which the receiver's state already covers: every PREPARE or COMMIT the
        peer certified before it is for a number at or below it). What the
        skipped messages said about views is unknown: the peer's PREPAREs and
        COMMITs count again only for views from ``view`` on that its stream
        enters after the resume (its VIEW-CHANGE, its NEW-VIEW), and no
        NEW-VIEW of a view up to ``new_view_max`` (the highest its USIG
        certified before ``counter``, attested) is taken: one was skipped."""
        assert counter > self.next
        self.nv_floor = max(self.nv_floor, new_view_max)
        self.next = counter
        self.view = -1
        self.nv_view = -1
        self.last_seq = 0
        self.last_checkpoint = checkpoint_seq - interval
        self.faulty_view = -1
        self.resumed_below = view
        self.held = {key: value for key, value in self.held.items() if key > counter}
        self.dirty = True

    def switch_epoch(self, epoch: int, view: int) -> None:
        """Take the peer's messages under its new USIG ``epoch`` (admitted by the
        operator) from counter 1, and drop the old epoch's: the peer forgot
        what it certified there. As after a resume, its PREPAREs and COMMITs
        count only for views from ``view`` on that the new stream enters."""
        assert epoch > self.epoch
        self.epoch = epoch
        self.next = 1
        self.view = -1
        self.nv_view = -1
        self.last_seq = 0
        self.last_checkpoint = 0
        self.faulty_view = -1
        self.resumed_below = view
        self.nv_floor = 0  # the new USIG's: nothing of its epoch skipped
        self.held = {}
        self.dirty = True

    def receive(self, minbft: Minbft, message: Any) -> list[Any]:
        """Take ``message`` (any UI message from the peer); returns the messages
        admitted now, in counter order (``message`` and held ones after it)."""
        ui = message.ui
        author = message.header.replica if type(message) is NewView else message.replica
        if author != self.peer:
            minbft.reject("stream_wrong_author")
            return []
        if ui.epoch != self.epoch:
            minbft.reject("stream_other_epoch")
            return []
        if ui.counter < self.next:
            # Taken before. A VIEW-CHANGE of the view the peer is still in is
            # handed over again (its UI is unique: it is the one taken): a
            # receiver that restarted has lost the VIEW-CHANGEs it counted.
            if type(message) is ViewChange and message.view == self.view \
                    and minbft.verify_ui(self.peer, message):
                minbft.count("minbft_view_change_again")
                return [message]
            minbft.count("minbft_stream_duplicate")
            return []
        if ui.counter > self.next and (ui.counter in self.held or
                                       len(self.held) >= minbft.params.held_max):
            if ui.counter not in self.held:
                minbft.count("bound_minbft_held_max")
            return []
        if not minbft.verify_ui(self.peer, message):
            minbft.reject("stream_bad_ui")
            return []
        if ui.counter > self.next:
            self.held[ui.counter] = message
            minbft.count("minbft_stream_gap_held")
            return []
        admitted: list[Any] = []
        current: Any = message
        while current is not None:
            self.next += 1
            self.dirty = True
            if self.admit(minbft, current):
                admitted.append(current)
            current = self.held.pop(self.next, None)
        return admitted

    def admit(self, minbft: Minbft, message: Any) -> bool:
        """Apply the stream's rules to the next message in counter order."""
        kind = type(message)
        interval = minbft.params.checkpoint_interval
        if kind is Prepare:
            return self.admit_prepare(minbft, message)
        if kind is Commit:
            window = self.last_checkpoint + interval
            if message.view != self.view or not 1 <= message.seq <= window \
                    or message.view < self.resumed_below:
                minbft.reject("commit_out_of_stream")
                return False
            header = prepare_header(message.view, message.seq, message.digest,
                                    minbft.primary(message.view))
            if not minbft.usig_verify(minbft.primary(message.view), header, message.primary_ui):
                minbft.reject("commit_bad_prepare_ui")
                return False
            return True
        if kind is Checkpoint:
            if message.seq <= self.last_checkpoint or message.seq % interval != 0:
                minbft.reject("checkpoint_out_of_stream")
                return False
            self.last_checkpoint = message.seq
            return True
        if kind is ViewChange:
            if message.view <= self.view or message.view < self.resumed_below:
                minbft.reject("view_change_out_of_stream")
                return False
            self.view = message.view
            return True
        if kind is NewView:
            return self.admit_new_view(minbft, message)
        if kind is NewViewCommit:
            header = message.header
            if header.view != self.view or header.view == 0 or header.view < self.resumed_below:
                minbft.reject("new_view_commit_out_of_stream")
                return False
            return minbft.usig_verify(minbft.primary(header.view), header, message.primary_ui)
        return False

    def admit_prepare(self, minbft: Minbft, prepare: Prepare) -> bool:
        view = prepare.view
        if minbft.primary(view) != self.peer or view != self.nv_view or view < self.view:
            minbft.reject("prepare_out_of_stream")
            return False
        if self.faulty_view == view:
            minbft.reject("prepare_from_faulty_primary")
            return False
        interval = minbft.params.checkpoint_interval
        if (
            prepare.seq != self.last_seq + 1
            or prepare.seq > self.last_checkpoint + interval
            or digest_of(prepare.batch) != prepare.digest
            or len(prepare.batch) > minbft.params.batch_bytes_max
        ):
            self.faulty_view = view  # the primary broke the order: its view is over
            minbft.count("minbft_primary_misbehaved")
            return False
        self.last_seq = prepare.seq
        return True

    def admit_new_view(self, minbft: Minbft, new_view: NewView) -> bool:
        header = new_view.header
        view = header.view
        if minbft.primary(view) != self.peer or view < self.view or view <= self.nv_view \
                or view < self.resumed_below:
            minbft.reject("new_view_out_of_stream")
            return False
        if view <= self.nv_floor:
            # The peer certified a NEW-VIEW of this view or a later one before
            # the point this stream resumed at: this one cannot be its first.
            minbft.reject("new_view_skipped_view")
            return False
        self.view = view
        self.nv_view = view
        reason = minbft.view_changes.invalid_new_view(new_view)
        if reason is not None:
            self.faulty_view = view
            minbft.reject(reason)
            return False
        self.last_seq = max((chosen.seq for chosen in header.chosen), default=header.base)
        return True


def certified(message: Any) -> bytes:
    return certified_bytes(message)
