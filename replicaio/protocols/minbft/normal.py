"""Normal-case operation: Veronese et al., IEEE TC 2013, section 4.2.

The primary of view v numbers a batch ``seq`` (one above its previous one),
asks its USIG for a UI and multicasts PREPARE(v, seq, d, batch, UI). A backup
takes it in the primary's counter order (``streams.py``), logs it durably and
multicasts COMMIT(v, seq, d, UI_p, UI_i), which carries the PREPARE's UI so
that the COMMIT proves what it answers. A replica *commits* ``seq`` once it
holds the PREPARE and f+1 matching commitments, the PREPARE counting as the
primary's (with n = 2f+1 any two such sets share a replica, and that
replica's USIG-ordered messages show which batch it accepted: no second
batch can get f+1 at one number in one view); it executes in number order.

Batches reach the primary from every replica (``submit``), as in PBFT: a
backup relays its batch, keeps it (``relayed_max``) until it executes,
re-relays it, and asks for a view change (REQ-VIEW-CHANGE) if the primary
leaves it waiting for the view's timeout (``view_change_timeout_us``, doubled
per view without progress before it: ``ViewChanges.timeout_us``). Its request alone is not
f+1, and the other backups may wait for nothing (a node's in-node clients
call its own replica only), so on suspicion it also sends the batches it
waits for to every other backup, as a PBFT client multicasts its request on
its retransmission timeout: each of them keeps such a *forwarded* batch
(``forwarded_max`` per peer), relays it to the primary and times it as its
own, so a primary that is down gets f+1 requests. A faulty backup's forwards
start nothing a correct primary would not end: the batch must be valid (SMR
checks every request's signature) and one the receiver has not seen ordered,
and the receiver relays it to the primary itself.

Windows: the primary numbers up to ``log_size`` above the stable checkpoint;
nobody sends a PREPARE or COMMIT for a number more than K above its own
latest CHECKPOINT (a COMMIT waits: ``commit_pending``). That keeps every
VIEW-CHANGE log within about 2K + a few messages.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from replicaio.core.patience import PATIENCE_TIMEOUTS, stop_waiting, suspected_kind
from replicaio.protocols.bft import BftNormalCase
from replicaio.protocols.minbft.messages import (
    EMPTY_UI,
    Commit,
    Prepare,
    Relay,
    digest_of,
)

if TYPE_CHECKING:
    from replicaio.protocols.minbft.minbft import Minbft

BARRIER_MAGIC = b"\x00minbft-read-barrier\x00"

# A backup that suspects its primary forwards its waiting batches again this often
# (in status periods) while the view lasts.
FORWARD_EVERY_TICKS = 4
FORWARD_BATCHES_MAX = 4  # the oldest waiting batches a suspecting backup forwards
IDLE = (None, None)  # ``oldest_waits`` of a backup that waits for nothing

Vote = tuple[int, bytes, int]  # (view, digest, key: the PREPARE's counter, -NEW-VIEW's)


class Slot:
    """What one replica holds for one number."""

    __slots__ = ("batch", "commit_pending", "committed", "digest", "key", "seq", "view",
                 "votes")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.view = -1
        self.digest = b""
        self.key = 0
        self.batch: bytes | None = None  # known once the PREPARE (or NEW-VIEW) is taken
        self.votes: dict[int, Vote] = {}
        self.committed = False
        self.commit_pending = False

    def take(self, view: int, digest: bytes, batch: bytes, key: int) -> None:
        self.view, self.digest, self.batch, self.key = view, digest, batch, key

    def matching(self) -> int:
        vote = (self.view, self.digest, self.key)
        return sum(1 for cast in self.votes.values() if cast == vote)


class NormalCase(BftNormalCase[Slot]):
    """Section 4.2 over the shared state of a :class:`Minbft`."""

    slot_type = Slot

    def __init__(self, minbft: Minbft) -> None:
        super().__init__(minbft)
        self.minbft = minbft  # (``replica``, typed as the Minbft)
        self.proposals: deque[bytes] = deque()
        self.last_prepared = 0  # primary: the number of its last PREPARE of this view
        # Batches other backups forwarded on suspicion: digest -> (source, batch),
        # at most ``forwarded_max`` per source (its oldest dropped beyond).
        self.forwarded: dict[bytes, tuple[int, bytes]] = {}
        self.suspected = False  # this backup asked to end the view for its batches
        # Primaries this backup asked to replace since it last waited for nothing
        # at both ends of a timeout: every timer of a view doubles at least as
        # often (``ViewChanges.timeout_us``; the load that needed a longer
        # timeout is still there; PBFT's, ADR 0046).
        self.replaced = 0
        # The oldest wait of each kind (own relayed, forwarded) that a younger one
        # of its kind overtook (executed first: a primary ordering what it is given
        # in turn does not): ``watch_primary``.
        self.overtaken_relayed: bytes | None = None
        self.overtaken_forwarded: bytes | None = None
        self.status_ticks = 0
        # Primary: a backup that cannot follow this view asked for the next one.
        self.step_down_asked = False

    def tasks(self) -> list[Coroutine[Any, Any, None]]:
        self.step_down_asked = False
        self.suspected = False
        return [self.watch_own_view()] if self.minbft.is_primary else [self.watch_primary()]

    def on_view_started(self) -> None:
        minbft = self.minbft
        if minbft.is_primary:
            for batch in self.waiting_batches():
                self.enqueue(batch)
            self.assign()
        else:
            self.proposals.clear()
            for batch in self.waiting_batches():
                minbft.send(minbft.primary(), Relay(batch))

    def waiting_batches(self) -> list[bytes]:
        """The own relayed batches, then the forwarded ones."""
        return [*self.minbft.relayed.values(), *(batch for _, batch in self.forwarded.values())]

    # -- proposing ------------------------------------------------------------------------

    # (``submit``, a batch of this replica's own, and ``on_relay``: ``BftNormalCase``)

    def relay(self, batch: bytes) -> None:
        minbft = self.minbft
        minbft.send(minbft.primary(), Relay(batch))

    def on_forward(self, source: int, relay: Relay) -> None:
        """A batch another backup waits for and forwarded on suspicion: keep it,
        relay it to the primary and time it as an own one (``watch_primary``)."""
        minbft = self.minbft
        batch = relay.batch
        if len(batch) > minbft.params.batch_bytes_max:
            minbft.reject("forward_oversized")
            return
        digest = digest_of(batch)
        if digest in minbft.relayed or digest in self.forwarded:
            minbft.count("minbft_forward_duplicate")
            return
        if any(slot.digest == digest for slot in minbft.slots.values()):
            # Seen ordered here: a correct primary would not number it again
            # (``enqueue``), so timing it would suspect a correct primary.
            minbft.count("minbft_forward_ordered")
            return
        if not batch or not self.valid_batch(batch):  # (a read barrier needs no check)
            minbft.reject("forward_invalid_batch")
            return
        from_source = [key for key, (peer, _) in self.forwarded.items() if peer == source]
        if len(from_source) >= minbft.params.forwarded_max:
            del self.forwarded[from_source[0]]
            self.relay_ticks.pop(from_source[0], None)
            minbft.count("bound_minbft_forwarded_max")
        self.forwarded[digest] = (source, batch)
        self.relay_ticks[digest] = 0
        minbft.count("minbft_forwards_taken")
        minbft.send(minbft.primary(), Relay(batch))

    def forward_waiting(self) -> None:
        """Suspecting the primary (or changing views): send the own batches left
        waiting to every other backup, so that their timers run too (the primary
        gets them again)."""
        minbft = self.minbft
        primary = minbft.primary() if minbft.active else -1
        # The oldest few (read barriers too: reads wait on them) are enough to
        # start the peers' timers; the new primary gets them all (``on_view_started``).
        for batch in list(minbft.relayed.values())[:FORWARD_BATCHES_MAX]:
            for peer in range(minbft.n):
                if peer != minbft.id and peer != primary:
                    minbft.send(peer, Relay(batch))
            minbft.count("minbft_forwarded_on_suspicion")

    def enqueue(self, batch: bytes) -> None:
        minbft = self.minbft
        digest = digest_of(batch)
        if batch in self.proposals or any(
            slot.digest == digest and slot.view == minbft.view for slot in minbft.slots.values()
        ):
            minbft.count("minbft_relay_duplicate")
            return
        if len(self.proposals) >= minbft.params.proposals_max:
            minbft.count("bound_minbft_proposals_max")
            return
        self.proposals.append(batch)

    def limit(self) -> int:
        """The highest number this replica may send a PREPARE or COMMIT for."""
        minbft = self.minbft
        return min(minbft.high, minbft.own_last_checkpoint + minbft.params.checkpoint_interval)

    def assign(self) -> None:
        minbft = self.minbft
        if not minbft.active or not minbft.is_primary:
            return
        if self.proposals and not minbft.view_changes.certified(minbft.view):
            minbft.count("minbft_prepare_waits_for_new_view_certificate")
            return  # (sent once the certificate is in: ViewChanges.check_certificate)
        if self.proposals and minbft.recovery.withheld("prepare"):
            return
        self.last_prepared = max(self.last_prepared, minbft.stable_seq)
        while self.proposals and self.last_prepared + 1 <= self.limit():
            batch = self.proposals.popleft()
            seq = self.last_prepared + 1
            self.last_prepared = seq
            prepare = Prepare(minbft.view, seq, digest_of(batch), batch, minbft.id, EMPTY_UI)
            prepare = minbft.emit(prepare, batch)
            minbft.context.persist("lp", (minbft.view, seq))  # (the own log has it first)
            self.take_prepare(prepare)
        if self.proposals:
            minbft.count("minbft_window_full")

    # -- PREPARE and COMMIT ----------------------------------------------------------------

    def admits(self, kind: str, view: int, seq: int) -> bool:
        """Whether a PREPARE or COMMIT (``kind``) of ``view`` for ``seq`` is
        taken: of this active view, above the stable checkpoint, in the window;
        otherwise it is rejected (``<kind>_other_view``, ``stale_<kind>``: late,
        this replica's checkpoint passed it, ``<kind>_out_of_window``)."""
        minbft = self.minbft
        if view != minbft.view or not minbft.active:
            minbft.reject(f"{kind}_other_view")
            return False
        if seq <= minbft.stable_seq:
            minbft.reject(f"stale_{kind}")
            return False
        if not minbft.in_window(seq):
            minbft.reject(f"{kind}_out_of_window")
            return False
        return True

    def on_prepare(self, prepare: Prepare) -> None:
        """A PREPARE its primary's stream admitted: take it if it is of this view."""
        minbft = self.minbft
        if not self.admits("prepare", prepare.view, prepare.seq):
            return
        handlers = minbft.handlers
        assert handlers is not None
        if not self.valid_batch(prepare.batch):
            minbft.reject("prepare_invalid_batch")  # the primary's: its view will end
            return
        self.take_prepare(prepare)

    def valid_batch(self, batch: bytes) -> bool:
        """SMR's check of a proposed batch (a barrier, executed as an empty
        batch, and the empty batch need none)."""
        if not batch or batch.startswith(BARRIER_MAGIC):
            return True
        handlers = self.minbft.handlers
        assert handlers is not None
        return handlers.validate_batch(batch)

    def take_prepare(self, prepare: Prepare) -> None:
        """Log the PREPARE durably, count it as the primary's vote, commit."""
        minbft = self.minbft
        slot = self.slot(prepare.seq)
        if slot.committed:
            if slot.digest != prepare.digest:
                minbft.count("minbft_prepare_conflicts_committed")
            return
        slot.take(prepare.view, prepare.digest, prepare.batch, prepare.ui.counter)
        slot.votes[prepare.replica] = (prepare.view, prepare.digest, prepare.ui.counter)
        minbft.context.persist(f"pp{prepare.seq}", minbft.encode(prepare))
        if prepare.replica != minbft.id:
            slot.commit_pending = True
            self.send_commit(slot, prepare)
        self.check_committed(slot)

    def send_commit(self, slot: Slot, prepare: Prepare) -> None:
        minbft = self.minbft
        if slot.seq > self.limit():
            minbft.count("minbft_commit_waits_for_checkpoint")
            return
        if not minbft.view_changes.certified(prepare.view):
            # (still pending: sent once the certificate is in)
            minbft.count("minbft_commit_waits_for_new_view_certificate")
            return
        if minbft.recovery.withheld("commit"):
            return  # (still pending: sent once recovered if still wanted)
        slot.commit_pending = False
        commit = Commit(prepare.view, prepare.seq, prepare.digest, prepare.ui, minbft.id,
                        EMPTY_UI)
        minbft.emit(commit, prepare.batch)
        slot.votes[minbft.id] = (prepare.view, prepare.digest, prepare.ui.counter)
        self.save_votes(slot)

    def on_checkpoint_sent(self) -> None:
        """The own window moved: send the COMMITs that waited, number more."""
        minbft = self.minbft
        for seq in sorted(minbft.slots):
            slot = minbft.slots[seq]
            if slot.commit_pending and slot.view == minbft.view and slot.seq <= self.limit():
                data = minbft.context.load(f"pp{seq}")
                if data is not None:
                    self.send_commit(slot, minbft.codec.decode_as(data, Prepare))
                    self.check_committed(slot)
        self.assign()

    def on_commit(self, commit: Commit) -> None:
        if not self.admits("commit", commit.view, commit.seq):
            return
        slot = self.slot(commit.seq)
        if commit.replica in slot.votes or slot.committed:
            return
        slot.votes[commit.replica] = (commit.view, commit.digest, commit.primary_ui.counter)
        self.save_votes(slot)
        self.check_committed(slot)

    def save_votes(self, slot: Slot) -> None:
        votes = sorted((replica, *vote) for replica, vote in slot.votes.items())
        self.minbft.context.persist(f"vt{slot.seq}", votes)

    def commit_quorum(self) -> int:
        """Matching commitments (the PREPARE's included) that commit: f + 1."""
        return self.minbft.quorum

    def check_committed(self, slot: Slot) -> None:
        if slot.committed or slot.batch is None or slot.matching() < self.commit_quorum():
            return
        self.commit(slot)

    def commit(self, slot: Slot) -> None:
        minbft = self.minbft
        assert slot.batch is not None
        slot.committed = True
        if slot.seq > minbft.executed:
            minbft.context.persist(f"cm{slot.seq}", (slot.view, slot.digest, slot.batch))
            minbft.execute_ready()

    # -- the backup's timer -----------------------------------------------------------------

    def waiting_for_execution(self) -> bool:
        minbft = self.minbft
        return any(
            seq > minbft.executed and slot.batch is not None for seq, slot in minbft.slots.items()
        )

    def on_executed(self, digest: bytes) -> None:
        """Batch ``digest`` executed: stop waiting for it, noting an older wait of
        its kind that it overtook (``watch_primary``)."""
        self.overtaken_relayed = stop_waiting(self.minbft.relayed, digest, self.overtaken_relayed)
        self.overtaken_forwarded = stop_waiting(self.forwarded, digest, self.overtaken_forwarded)

    def oldest_waits(self) -> tuple[bytes | None, bytes | None]:
        """The oldest own relayed batch and the oldest forwarded one waiting."""
        return (next(iter(self.minbft.relayed), None), next(iter(self.forwarded), None))

    async def watch_primary(self) -> None:
        """Ask for the next view when what this backup waits for does not
        execute, or when it cannot take part in this view: it resumed a peer's
        stream (``streams.py``), so that peer's PREPAREs or COMMITs count for it
        again only in a view entered later. Until then it follows by state
        transfer alone and does not count towards any quorum, so with one more
        replica down a view would stall with f+1 replicas up.

        The timer times the oldest wait of each kind (its own relayed batches,
        the batches other backups forwarded) and, as PBFT's (section 4.4 of
        Castro and Liskov, whose view change MinBFT's follows; libbyz), is
        restarted when the backup executes something: a timed wait that
        outlasts the timeout counts against the primary only if **nothing
        executed** meanwhile, or a **younger wait of its kind executed first**
        (the primary orders what it is given in turn: it skipped this one), or
        it has outlasted ``PATIENCE_TIMEOUTS`` timeouts (a primary that orders
        others' work but never this backup's). A primary working through a
        queue longer than a timeout is not replaced; before (until 2026-12-06)
        any batch that waited a whole timeout was held against it, and a
        starved machine changed views over a queue (docs/minbft.md). The
        timeout is the view's (``ViewChanges.timeout_us``): doubled per view in
        a row before it without progress (``PROGRESS_BATCHES`` executed in it,
        or ``PATIENCE_TIMEOUTS`` of these timeouts in a row that began and ended
        with nothing waited for: ``ViewChanges.on_idle``), and at least once
        per primary this backup asked to replace since it last waited for
        nothing (``replaced``; ADR 0046, PBFT's rule)."""
        minbft = self.minbft
        view_changes = minbft.view_changes
        asked = False
        outlasted = [0, 0]  # timeouts the tracked wait of each kind outlasted
        tracked: tuple[bytes | None, bytes | None] = (None, None)
        idle = 0  # timeouts in a row that began and ended with nothing waited for
        while True:
            before = tracked
            tracked = self.oldest_waits()
            for kind in range(2):
                if tracked[kind] is None or tracked[kind] != before[kind]:
                    outlasted[kind] = 0
            executed = minbft.executed
            waiting = self.waiting_for_execution()
            await minbft.context.sleep(view_changes.timeout_us())
            if tracked == self.oldest_waits() == IDLE and not waiting \
                    and not self.waiting_for_execution():
                self.replaced = 0  # idle: the load that needed it is gone
                idle += 1
                if idle == PATIENCE_TIMEOUTS:
                    # (one idle timeout is not enough: after a view change the
                    # clients' retries may leave a loaded group idle for a few)
                    view_changes.on_idle()
            else:
                idle = 0
            cause = self.suspicion(tracked, executed, outlasted)
            unfollowable = self.unfollowable() and not minbft.withholding
            if cause == "relayed" and not self.suspected:
                # (also after asking for another reason: its request may be
                # the only one, and the other backups may wait for nothing)
                self.suspected = True
                self.forward_waiting()
            if not asked and (cause is not None or (waiting and minbft.executed == executed)):
                minbft.count("minbft_primary_suspected")
                minbft.count(f"minbft_primary_suspected_{cause or 'stalled'}")
                self.replaced += 1
                view_changes.request(minbft.view + 1, unfollowable=unfollowable)
                asked = True
            elif unfollowable and view_changes.unfollowable_view != minbft.view + 1:
                # (also after asking: the request says so now, and is re-sent)
                minbft.count("minbft_view_unfollowable")
                view_changes.request(minbft.view + 1, unfollowable=True)
                asked = True

    def suspicion(self, tracked: tuple[bytes | None, bytes | None], executed: int,
                  outlasted: list[int]) -> str | None:
        """Why the primary is suspected after a timeout that started with
        ``executed`` batches executed and timed the waits ``tracked`` (``None``:
        it is not); ``outlasted`` (the timeouts each kind's wait had outlasted
        before) is bumped for those that still wait."""
        minbft = self.minbft
        digest, forwarded = tracked
        waits = (digest is not None and digest in minbft.relayed,
                 forwarded is not None and forwarded in self.forwarded)
        overtaken = (digest is not None and self.overtaken_relayed == digest,
                     forwarded is not None and self.overtaken_forwarded == forwarded)
        return suspected_kind(("relayed", "forwarded"), waits, overtaken, outlasted,
                              minbft.executed == executed,
                              lambda why: minbft.count(f"minbft_{why}"))

    def waiting_for_certificate(self) -> bool:
        """Whether batches wait for the view's NEW-VIEW certificate to be numbered."""
        minbft = self.minbft
        return bool(self.proposals) and not minbft.view_changes.certified(minbft.view)

    def unfollowable(self) -> bool:
        """Whether a peer's stream was resumed (or switched to a new USIG epoch)
        in this view: its messages of this view no longer count here."""
        minbft = self.minbft
        return any(stream.view < 0 for peer, stream in minbft.streams.items() if peer != minbft.id)

    async def watch_own_view(self) -> None:
        """The primary's timer: ask for the next view when its own PREPAREs do
        not execute for a whole timeout (the backups that could commit them are
        down or cannot follow: a backup's timer alone, one request, cannot end
        the view), or when a backup that cannot follow asked for it. Either way
        only after the view ran one timeout, so a faulty backup cannot end views
        faster than that (docs/minbft.md, *A backup that cannot follow*). The
        timeout is the view's (``ViewChanges.timeout_us``): a new primary after
        views that executed nothing waits longer for its PREPAREs (ADR 0039)."""
        minbft = self.minbft
        while True:
            executed = minbft.executed
            waiting = self.waiting_for_execution()
            uncertified = self.waiting_for_certificate()
            await minbft.context.sleep(minbft.view_changes.timeout_us())
            if waiting and minbft.executed == executed:
                minbft.count("minbft_primary_stalled")
                minbft.view_changes.request(minbft.view + 1)
                return
            if uncertified and self.waiting_for_certificate():
                # Its PREPAREs wait for f backups' NEW-VIEW-COMMITs that did not
                # come (their streams may have resumed past their VIEW-CHANGEs,
                # so their commitments do not count here: degraded swarm n=3
                # seed 200).
                minbft.count("minbft_primary_uncertified")
                minbft.view_changes.request(minbft.view + 1)
                return
            if self.step_down_asked:
                minbft.count("minbft_primary_steps_down")
                minbft.view_changes.request(minbft.view + 1)
                return

    def on_status_tick(self) -> None:
        minbft = self.minbft
        if not minbft.active or minbft.is_primary:
            return
        waiting = [*minbft.relayed.items(),
                   *((digest, batch) for digest, (_, batch) in self.forwarded.items())]
        for digest, batch in waiting:
            ticks = self.relay_ticks.get(digest, 0) + 1
            self.relay_ticks[digest] = ticks
            if ticks % 2 == 0:
                minbft.send(minbft.primary(), Relay(batch))
        for digest in [digest for digest in self.relay_ticks
                       if digest not in minbft.relayed and digest not in self.forwarded]:
            del self.relay_ticks[digest]
        self.status_ticks += 1
        if self.suspected and self.status_ticks % FORWARD_EVERY_TICKS == 0:
            self.forward_waiting()  # (a backup down or cut off then gets them now)

    # -- recovery -----------------------------------------------------------------------------

    def load(self) -> None:
        """Slots from the ``pp``, ``vt`` and ``cm`` records above the stable checkpoint."""
        minbft = self.minbft
        context = minbft.context
        stored = context.load("lp")
        if stored is not None and int(stored[0]) == minbft.view:
            self.last_prepared = int(stored[1])
        self.number_above_new_view()
        for prefix in ("pp", "vt", "cm"):
            for name in sorted(context.stored_names(prefix), key=lambda name: int(name[2:])):
                seq = int(name[2:])
                if not minbft.in_window(seq):
                    context.erase(name)
                    continue
                self.load_record(prefix, self.slot(seq), context.load(name))
        # A step cut after its own message was logged but before the records
        # that follow it: the own log (what peers may have) is the truth.
        for message, _ in minbft.own_log.values():
            if type(message) is Prepare and message.view == minbft.view:
                self.last_prepared = max(self.last_prepared, message.seq)
                if minbft.active and minbft.in_window(message.seq):
                    slot = self.slot(message.seq)
                    if slot.batch is None:  # its ``pp`` record was cut off
                        slot.take(message.view, message.digest, message.batch,
                                  message.ui.counter)
                        slot.votes[minbft.id] = (message.view, message.digest,
                                                 message.ui.counter)
            if type(message) is Commit and message.view == minbft.view and minbft.active \
                    and minbft.in_window(message.seq):
                slot = self.slot(message.seq)
                slot.votes.setdefault(minbft.id, (message.view, message.digest,
                                                  message.primary_ui.counter))
                slot.commit_pending = False
        for seq in sorted(minbft.slots):
            self.check_committed(minbft.slots[seq])  # its votes may have come in before a crash

    def number_above_new_view(self) -> None:
        """At load: the primary numbers above the last number the view's
        NEW-VIEW decided, as its backups' streams expect (``ViewChanges.enter``
        sets it when the view starts; no ``lp`` record holds it). A primary
        restarted before its first PREPARE of the view numbered from its stable
        checkpoint again, every backup's stream marked the view faulty
        (``minbft_primary_misbehaved``), and with its clients at the primary
        alone nobody else asked for the next view (swarm ``minbft:fronts=1``
        seed 33; the broken variant ``minbft-renumbers-after-restart``)."""
        minbft = self.minbft
        new_view = minbft.view_changes.new_view
        if minbft.active and new_view is not None and new_view.header.view == minbft.view:
            header = new_view.header
            decided = max((chosen.seq for chosen in header.chosen), default=header.base)
            if minbft.is_primary and decided > max(self.last_prepared, minbft.stable_seq):
                minbft.count("minbft_primary_numbers_above_new_view")
            self.last_prepared = max(self.last_prepared, decided)

    def load_record(self, prefix: str, slot: Slot, value: Any) -> None:
        minbft = self.minbft
        if prefix == "pp":
            prepare = minbft.codec.decode_as(value, Prepare)
            if prepare.view == minbft.view and minbft.active:
                slot.take(prepare.view, prepare.digest, prepare.batch, prepare.ui.counter)
                slot.votes[prepare.replica] = (prepare.view, prepare.digest, prepare.ui.counter)
                slot.commit_pending = minbft.id not in slot.votes and not minbft.is_primary
        elif prefix == "vt":
            for replica, view, digest, key in value:
                if int(view) == minbft.view:
                    slot.votes.setdefault(int(replica), (int(view), bytes(digest), int(key)))
            if minbft.id in slot.votes:
                slot.commit_pending = False
        else:
            view, digest, batch = value
            slot.take(int(view), bytes(digest), bytes(batch), slot.key)
            slot.committed = True
