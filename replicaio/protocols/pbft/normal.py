"""Normal-case operation: Castro and Liskov, OSDI 1999, section 4.2.

The primary of view v assigns the next sequence number n in the window
(h, H] to a batch and multicasts PRE-PREPARE(v, n, d) with the batch. A
backup accepts it if it is in view v, the signature is the primary's, d is
the batch's digest, h < n <= H, and it accepted no other PRE-PREPARE for
(v, n); it then multicasts PREPARE(v, n, d, i). A replica is *prepared* for
(v, n, d) once it has the PRE-PREPARE and 2f PREPAREs from distinct backups
matching it (the prepared certificate, kept for the P set of a later
VIEW-CHANGE); it then multicasts COMMIT(v, n, d, i). It *commits* once it is
prepared and has 2f+1 matching COMMITs, and executes committed batches in
number order.

Batches reach the primary from every replica (``submit``): the primary
queues its own and relayed ones (``proposals_max``) and assigns numbers
while the window allows: the window is the bound on batches in flight. A
backup relays its batch to the primary, keeps it (``relayed_max``) until it
executes, re-relays it while it waits, and moves to the next view if the
primary leaves it waiting for the view's timeout (section 4.4: the
view-change timer runs while a backup waits for a request to execute;
``ViewChanges.timeout_us``: doubled per view in a row before it without progress).

A backup's VIEW-CHANGE alone is fewer than the f+1 others join on, and the
other backups may wait for nothing: a node's in-node clients call their own
replica only, where the paper's client multicasts its request on its
retransmission timeout, so that every backup's timer runs. So a backup that
suspects the primary for its own batches or requests sends those batches to
every other backup first (and again with each re-sent VIEW-CHANGE): each
checks it (SMR's ``validate_batch``, every request's signature), keeps it
(``forwarded_max`` per peer) until its requests execute, relays it to the
primary and suspects the primary too if it does not order them. A batch it
saw ordered in its window is not kept: a correct primary would not number it
again.

Retransmission (messages travel on unreliable streams): every ``status_us``
a replica re-sends its messages for numbers that made no progress since the
previous tick, and answers a STATUS from a replica that executed less with
the PRE-PREPAREs, PREPAREs and COMMITs it holds above that replica's point
(signed messages, so anyone may forward them).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from replicaio.core.patience import PATIENCE_TIMEOUTS, stop_waiting, suspected_kind
from replicaio.protocols.bft import BftNormalCase
from replicaio.protocols.pbft.messages import (
    Commit,
    Prepare,
    PreparedProof,
    PrePrepare,
    Relay,
    digest_of,
)

if TYPE_CHECKING:
    from replicaio.protocols.pbft.pbft import Pbft

Vote = TypeVar("Vote", Prepare, Commit)  # a replica's vote in a slot


class Slot:
    """What one replica holds for one sequence number in the current view."""

    __slots__ = (
        "commits", "committed", "pre_prepare", "prepared", "prepares", "seq", "stalled",
        "unchecked",
    )

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.pre_prepare: PrePrepare | None = None
        self.prepares: dict[int, Prepare] = {}  # first PREPARE of each replica
        self.commits: dict[int, Commit] = {}  # first COMMIT of each replica
        # Replicas whose COMMIT above counted on the channel's word, its signature
        # not (yet) checked (``PbftParams.commits_on_channel``); None: checked,
        # bad (never forwarded), so not checked again.
        self.unchecked: dict[int, bool | None] = {}
        self.prepared = False  # in this view
        self.committed: PrePrepare | None = None  # what committed here (any view)
        self.stalled = 0  # status ticks without progress


FORWARD_BATCHES_MAX = 4  # the newest waiting batches a suspecting backup forwards
SUSPECTED_KINDS = ("relayed", "requests", "stalled", "forwarded")  # (suspicion)
IDLE = (None, None, None, None)  # ``oldest_waits`` of a backup that waits for nothing


class NormalCase(BftNormalCase[Slot]):
    """Section 4.2 over the shared state of a :class:`Pbft`."""

    slot_type = Slot

    def __init__(self, pbft: Pbft) -> None:
        super().__init__(pbft)
        self.pbft = pbft  # (``replica``, typed as the Pbft)
        self.proposals: deque[bytes] = deque()  # primary: batches waiting for a number
        self.seq_next = 1  # primary: the next number to assign
        # backup: client -> the request seq it waits to see executed (SMR relayed it)
        self.awaited: dict[int, int] = {}
        # backup: its own batches SMR relayed the requests of (``relayed_max``),
        # forwarded to the other backups when it suspects the primary: digest ->
        # (batch, its requests); dropped, oldest first, once none of their
        # requests is awaited any more (``keep_batch``).
        self.awaited_batches: dict[bytes, tuple[bytes, tuple[tuple[int, int], ...]]] = {}
        # Batches other backups forwarded on suspicion: digest -> (source, the
        # requests still awaited: client -> seq), ``forwarded_max`` per source.
        self.forwarded: dict[bytes, tuple[int, dict[int, int]]] = {}
        # Primaries this backup replaced since it last waited for nothing at
        # both ends of a timeout: every timer of a view doubles at least as
        # often (``ViewChanges.timeout_us``; the load that needed a longer
        # timeout is still there).
        self.replaced = 0
        # The oldest wait of each kind that a younger one of its kind overtook
        # (executed first: a primary ordering what it is given in turn does not).
        self.overtaken_relayed: bytes | None = None
        self.overtaken_request: tuple[int, int] | None = None
        self.overtaken_forwarded: bytes | None = None
        # peer -> (view, executed) of its last STATUS that lagged this replica's
        # (``retransmit_to``): the same twice, it is stuck (one entry per replica).
        self.lagging: dict[int, tuple[int, int]] = {}

    # -- views ------------------------------------------------------------------------

    def tasks(self) -> list[Coroutine[Any, Any, None]]:
        """The tasks of an active view: a backup watches the primary."""
        return [] if self.pbft.is_primary else [self.watch_primary()]

    def on_view_started(self, *, max_sequence: int) -> None:
        """The view is active: the primary continues numbering after the highest
        number of the view; backups re-relay what they wait for."""
        pbft = self.pbft
        self.seq_next = max(max_sequence, pbft.stable_seq) + 1
        if pbft.is_primary:
            for batch in pbft.relayed.values():
                self.enqueue(batch)
            self.assign()
        else:
            self.proposals.clear()
            for batch in pbft.relayed.values():
                pbft.send(pbft.primary(), Relay(batch))
        # Requests relayed to an older primary are lost with it: the clients
        # retry (to every replica), which arms the timer of this view again.
        self.awaited.clear()
        self.awaited_batches.clear()
        self.forwarded.clear()

    # -- proposing (the primary) -------------------------------------------------------

    # (``submit``, a batch of this replica's own, and ``on_relay``: ``BftNormalCase``)

    def relay(self, batch: bytes) -> None:
        pbft = self.pbft
        pbft.send(pbft.primary(), Relay(batch))

    def valid_batch(self, batch: bytes) -> bool:
        return self.pbft.valid_batch(batch)

    def propose(self, batch: bytes) -> None:
        """A batch of this primary's SMR: numbered while the window allows."""
        pbft = self.pbft
        assert pbft.active and pbft.is_primary
        self.enqueue(batch)
        self.assign()

    def await_requests(self, requests: tuple[tuple[int, int], ...]) -> None:
        """A backup's clients' requests, relayed to the primary by SMR
        (``Pbft.watch_relayed``): watched until they execute (a censoring primary is
        suspected, section 4.4); one per client, at most ``awaited_max``."""
        pbft = self.pbft
        awaited = self.awaited
        for client, seq in requests:
            if awaited.get(client, 0) >= seq:
                continue
            awaited.pop(client, None)  # the newest request of a client, last
            if len(awaited) >= pbft.params.awaited_max:
                del awaited[next(iter(awaited))]
                pbft.count("bound_pbft_awaited_max")
            awaited[client] = seq

    def on_executed(self, digest: bytes, batch: bytes) -> None:
        """Batch ``digest`` executed: stop waiting for it and its requests (and
        older ones of their clients), noting an older wait of its kind that it
        overtook (``watch_primary``)."""
        pbft = self.pbft
        self.overtaken_relayed = stop_waiting(pbft.relayed, digest, self.overtaken_relayed)
        self.overtaken_forwarded = stop_waiting(self.forwarded, digest, self.overtaken_forwarded)
        if self.awaited or self.forwarded:
            handlers = pbft.handlers
            assert handlers is not None
            self.on_executed_requests(handlers.requests_of(batch))

    def on_executed_requests(self, requests: tuple[tuple[int, int], ...]) -> None:
        """A batch executed: stop waiting for its requests (and older ones)."""
        awaited = self.awaited
        if awaited:
            oldest = next(iter(awaited.items()))
            done = 0
            for client, seq in requests:
                if awaited.get(client, seq + 1) <= seq:
                    del awaited[client]
                    done += 1
            if done and awaited.get(oldest[0]) == oldest[1]:
                self.overtaken_request = oldest
        forwarded = self.forwarded
        if forwarded:
            oldest_digest = next(iter(forwarded))
            emptied = False
            for digest, (_, waits) in list(forwarded.items()):
                for client, seq in requests:
                    if waits.get(client, seq + 1) <= seq:
                        del waits[client]
                if not waits:
                    del forwarded[digest]
                    emptied = True
            if emptied and oldest_digest in forwarded:
                self.overtaken_forwarded = oldest_digest

    def keep_batch(self, batch: bytes) -> None:
        """Keep an own batch SMR relays the requests of, to forward it on
        suspicion (only while one of them is awaited, ``forward_waiting``): at
        most ``relayed_max``; the oldest ones none of whose requests is awaited
        any more are dropped first, and only dropping one whose requests still
        wait counts ``bound_pbft_awaited_batches_max`` (before 2026-12-06
        nothing was dropped on execution, the bound was hit by nearly every
        batch under load, and the counter said nothing)."""
        pbft = self.pbft
        digest = digest_of(batch)
        kept = self.awaited_batches
        if digest in kept:
            return
        handlers = pbft.handlers
        assert handlers is not None
        requests = handlers.requests_of(batch)
        if pbft.active:  # (changing views, every kept batch waits: ``forward_waiting``)
            awaited = self.awaited
            while kept:
                oldest = next(iter(kept))
                if any(awaited.get(client) == seq for client, seq in kept[oldest][1]):
                    break
                del kept[oldest]
        if len(kept) >= pbft.params.relayed_max:
            del kept[next(iter(kept))]
            pbft.count("bound_pbft_awaited_batches_max")
        kept[digest] = (batch, requests)

    def forward_waiting(self) -> None:
        """Suspecting the primary, or changing views: send the newest own batches
        whose requests (or barriers) still wait to every other replica (while
        changing views every kept batch waits: none executes before the view
        starts, and the others may still be in the old view, waiting for
        nothing)."""
        pbft = self.pbft
        batches = list(pbft.relayed.values())
        for batch, requests in self.awaited_batches.values():
            if not pbft.active or any(
                    self.awaited.get(client) == seq for client, seq in requests):
                batches.append(batch)
        for batch in batches[-FORWARD_BATCHES_MAX:]:  # (a primary takes it as a relay)
            for peer in range(pbft.n):
                if peer != pbft.id:
                    pbft.send(peer, Relay(batch))
            pbft.count("pbft_forwarded_on_suspicion")

    def on_forward(self, source: int, relay: Relay) -> None:
        """A batch another backup waits for and forwarded on suspicion: keep its
        requests, relay it to the primary, suspect the primary if it does not
        order them (``watch_primary``)."""
        pbft = self.pbft
        batch = relay.batch
        if len(batch) > pbft.params.batch_bytes_max:
            pbft.reject("forward_oversized")
            return
        digest = digest_of(batch)
        if digest in self.forwarded or digest in pbft.relayed:
            pbft.count("pbft_forward_duplicate")
            return
        if any(slot.pre_prepare is not None and slot.pre_prepare.digest == digest
               for slot in pbft.slots.values()):
            pbft.count("pbft_forward_ordered")  # a correct primary numbers it no more
            return
        if not batch or not pbft.valid_batch(batch):
            pbft.reject("forward_invalid_batch")
            return
        handlers = pbft.handlers
        assert handlers is not None
        # A read barrier has no request: waited for until it executes (``deliver``).
        waits = dict(handlers.requests_of(batch)) or {-1: 0}
        from_source = [key for key, (peer, _) in self.forwarded.items() if peer == source]
        if len(from_source) >= pbft.params.forwarded_max:
            del self.forwarded[from_source[0]]
            pbft.count("bound_pbft_forwarded_max")
        self.forwarded[digest] = (source, waits)
        pbft.count("pbft_forwards_taken")
        pbft.send(pbft.primary(), Relay(batch))

    def enqueue(self, batch: bytes) -> None:
        pbft = self.pbft
        digest = digest_of(batch)
        if batch in self.proposals or any(
            slot.pre_prepare is not None and slot.pre_prepare.digest == digest
            for slot in pbft.slots.values()
        ):
            pbft.count("pbft_relay_duplicate")
            return
        if len(self.proposals) >= pbft.params.proposals_max:
            pbft.count("bound_pbft_proposals_max")
            return
        self.proposals.append(batch)

    def assign(self) -> None:
        """Assign numbers to queued batches while the window allows (the bound
        on batches in flight)."""
        pbft = self.pbft
        if not pbft.active or not pbft.is_primary:
            return
        if pbft.withholding:
            # Its storage lost PRE-PREPAREs it may have sent: a number assigned
            # now could be one it assigned before (recovery.py).
            if self.proposals:
                pbft.count("pbft_withheld_pre_prepares")
            return
        self.seq_next = max(self.seq_next, pbft.stable_seq + 1)
        while self.proposals and self.seq_next <= pbft.high:
            batch = self.proposals.popleft()
            seq = self.seq_next
            self.seq_next += 1
            unsigned = PrePrepare(pbft.view, seq, digest_of(batch), batch, b"")
            pre_prepare = PrePrepare(
                pbft.view, seq, unsigned.digest, batch, pbft.sign(unsigned)
            )
            self.accept_pre_prepare(pre_prepare)
            pbft.send_all(pre_prepare)
        if self.proposals:
            pbft.count("pbft_window_full")

    # -- PRE-PREPARE ---------------------------------------------------------------------

    def ignore_pre_prepare(self, pre_prepare: PrePrepare) -> str | None:
        pbft = self.pbft
        if not pbft.active:
            return "pre_prepare_not_active"
        if pre_prepare.view != pbft.view:
            return "pre_prepare_other_view"
        if pbft.is_primary:
            return "pre_prepare_to_primary"
        if pre_prepare.seq <= pbft.stable_seq:
            return "stale_pre_prepare"
        if not pbft.in_window(pre_prepare.seq):
            return "pre_prepare_out_of_window"
        if len(pre_prepare.batch) > pbft.params.batch_bytes_max:
            return "pre_prepare_oversized"
        if digest_of(pre_prepare.batch) != pre_prepare.digest:
            return "pre_prepare_digest_mismatch"
        if not pbft.verify(pbft.primary(), pre_prepare):
            return "pre_prepare_bad_signature"
        known = pbft.slots.get(pre_prepare.seq)
        if known is not None and known.pre_prepare is not None:
            if known.pre_prepare.digest != pre_prepare.digest:
                pbft.count("pbft_primary_equivocation_seen")
                return "pre_prepare_conflicting"
            return "pre_prepare_duplicate"
        if not pbft.valid_batch(pre_prepare.batch, pbft.primary()):
            # Signed by the primary: its fault. Not prepared, the batch never
            # commits, and the backup's timer replaces the primary.
            pbft.count("pbft_primary_invalid_batch_seen")
            return "pre_prepare_invalid_batch"
        return None

    def on_pre_prepare(self, source: int, pre_prepare: PrePrepare) -> None:
        reason = self.ignore_pre_prepare(pre_prepare)
        if reason is not None:
            self.pbft.reject(reason)
            return
        self.accept_pre_prepare(pre_prepare)

    def accept_pre_prepare(self, pre_prepare: PrePrepare) -> None:
        """Log the PRE-PREPARE (durably, before the PREPARE it causes) and prepare."""
        pbft = self.pbft
        assert pre_prepare.view == pbft.view and pbft.active
        slot = self.slot(pre_prepare.seq)
        assert slot.pre_prepare is None or slot.pre_prepare == pre_prepare
        slot.pre_prepare = pre_prepare
        slot.stalled = 0
        self.log_pre_prepare(pre_prepare)
        if pbft.withholding:
            pbft.count("pbft_withheld_prepares")
        elif not pbft.is_primary:
            self.vote(slot, Prepare, pre_prepare)
        self.check_prepared(slot)

    def on_recovered(self) -> None:
        """Votes withheld while recovering, for numbers above the stable
        checkpoint (never voted on before the damage: recovery.py), sent now."""
        pbft = self.pbft
        if not pbft.active:
            pbft.view_changes.on_recovered()
            return
        for seq in sorted(pbft.slots):
            slot = pbft.slots[seq]
            pre_prepare = slot.pre_prepare
            if pre_prepare is None or slot.committed is not None:
                continue
            if not pbft.is_primary and pbft.id not in slot.prepares:
                self.vote(slot, Prepare, pre_prepare)
            if slot.prepared and pbft.id not in slot.commits:
                self.vote(slot, Commit, pre_prepare)
            self.check_committed(slot)
        self.assign()

    def vote(self, slot: Slot, kind: type[Prepare] | type[Commit], pre_prepare: PrePrepare) -> None:
        """Sign and multicast this replica's PREPARE or COMMIT for ``slot``."""
        pbft = self.pbft
        unsigned = kind(pbft.view, slot.seq, pre_prepare.digest, pbft.id, b"")
        message = kind(unsigned.view, unsigned.seq, unsigned.digest, pbft.id, pbft.sign(unsigned))
        if isinstance(message, Prepare):
            slot.prepares[pbft.id] = message
        else:
            slot.commits[pbft.id] = message
        pbft.send_all(message)

    def log_pre_prepare(self, pre_prepare: PrePrepare) -> None:
        """The ``pp`` record: before the PREPARE (or, on the primary, the
        PRE-PREPARE itself) leaves, so a restart never assigns or accepts a
        second batch at this number in this view."""
        pbft = self.pbft
        pbft.context.persist(f"pp{pre_prepare.seq}", pbft.encode(pre_prepare))

    # -- PREPARE and COMMIT ---------------------------------------------------------------

    def ignore_vote(self, vote: Prepare | Commit, *, on_channel: bool = False) -> str | None:
        """Why ``vote`` is dropped (``None``: it is not). ``on_channel``: it came
        from its author on the authenticated channel and its signature need not
        be checked now (``PbftParams.commits_on_channel``)."""
        pbft = self.pbft
        if not pbft.active:
            return "vote_not_active"
        if vote.view != pbft.view:
            return "vote_other_view"
        if vote.seq <= pbft.stable_seq:
            return "stale_prepare" if isinstance(vote, Prepare) else "stale_commit"
        if not pbft.in_window(vote.seq):
            return "vote_out_of_window"
        if not on_channel and not pbft.verify(vote.replica, vote):
            return "vote_bad_signature"
        return None

    def on_prepare(self, source: int, prepare: Prepare) -> None:
        pbft = self.pbft
        reason = self.ignore_vote(prepare)
        if reason is None and prepare.replica == pbft.primary():
            reason = "prepare_from_primary"
        if reason is not None:
            pbft.reject(reason)
            return
        slot = self.slot(prepare.seq)
        if self.take_vote(slot.prepares, prepare, "prepare"):
            self.check_prepared(slot)

    def take_vote(self, votes: dict[int, Vote], vote: Vote, kind: str) -> bool:
        """Keep ``vote`` as its replica's first PREPARE or COMMIT (``kind``) of
        its slot; a later one is dropped (counted as equivocation if its digest
        differs): whether it was kept."""
        known = votes.get(vote.replica)
        if known is not None:
            if known.digest != vote.digest:
                self.pbft.count(f"pbft_{kind}_equivocation_seen")
            return False
        votes[vote.replica] = vote
        return True

    def on_commit(self, source: int, commit: Commit) -> None:
        pbft = self.pbft
        # The channel authenticates its source: a COMMIT from its author is that
        # replica's vote whatever its signature (a MAC authenticator, TOCS 3.2).
        on_channel = pbft.params.commits_on_channel and source == commit.replica
        reason = self.ignore_vote(commit, on_channel=on_channel)
        if reason is not None:
            pbft.reject(reason)
            return
        slot = self.slot(commit.seq)
        if not self.take_vote(slot.commits, commit, "commit"):
            return
        if on_channel:
            slot.unchecked[commit.replica] = True
            pbft.count("pbft_commits_on_channel")
        self.check_committed(slot)

    def vouch_executed(self, slot: Slot, pre_prepare: PrePrepare) -> None:
        """This replica's COMMIT in this view for a batch it already executed at
        this number (committed in an older view and carried into this one by
        the NEW-VIEW, or executed before a restart that kept no COMMITs), made
        when a replica of this view is stuck just below it (``retransmit_to``:
        the same point in two STATUS messages in a row).

        Without it, a lagging replica may wait for ever: this one never prepares
        the batch again in this view if a PREPARE it needs was lost with its
        author's restart, and the other replicas' COMMITs of this view may be
        gone too (a restart keeps none; a damaged disk's replica withholds its
        votes, recovery.py). With only 2f+1 replicas voting, no third COMMIT
        ever comes, no checkpoint above gets 2f+1 signatures (the lagging
        replicas cannot execute up to it), and the replicas that executed wait
        for nothing, so no view change ends it either (seen as a transaction's
        locks never released in ``txn-pbft`` with disk faults).

        Safe: the batch committed at this number (2f+1 COMMITs of some view, or
        a certificate), so every later view's NEW-VIEW carries the same batch
        there; a COMMIT for it adds no second value anywhere. Withheld while
        recovering, as every vote."""
        pbft = self.pbft
        committed = slot.committed
        if committed is None or committed.digest != pre_prepare.digest or pbft.withholding:
            return
        if not pbft.is_primary and pbft.id not in slot.prepares:
            self.vouch_prepare(slot, pre_prepare)
        if pbft.id in slot.commits:
            return
        unsigned = Commit(pbft.view, slot.seq, pre_prepare.digest, pbft.id, b"")
        slot.commits[pbft.id] = Commit(unsigned.view, unsigned.seq, unsigned.digest, pbft.id,
                                       pbft.sign(unsigned))
        pbft.count("pbft_executed_vouched")

    def vouch_prepare(self, slot: Slot, pre_prepare: PrePrepare) -> None:
        """This backup's PREPARE in this view for the executed batch the view's
        PRE-PREPARE carries at this number (``vouch_executed``): a COMMIT alone
        does not move a replica that is not prepared. After restarts that keep
        no votes (a backup rebuilds an executed number from its ``pp`` and
        ``cm`` records, with no PREPARE), the primary of the view may hold its
        PRE-PREPARE and 2f COMMITs but no PREPARE, and the backups never prepare
        a number they executed again: nothing moves it (``txn-pbft:fronts=1``
        seed 154, group 0's primary stuck at 49 while its backups executed 80,
        the window full, a transaction's record left open). Safe as the PREPARE
        a backup sends on taking the PRE-PREPARE: the same digest at the same
        number in the same view."""
        pbft = self.pbft
        unsigned = Prepare(pbft.view, slot.seq, pre_prepare.digest, pbft.id, b"")
        slot.prepares[pbft.id] = Prepare(unsigned.view, unsigned.seq, unsigned.digest, pbft.id,
                                         pbft.sign(unsigned))
        pbft.count("pbft_executed_vouched_prepare")

    def forwardable_commits(self, slot: Slot, digest: bytes) -> list[Commit]:
        """The COMMITs for ``digest`` a third replica will accept: one that counted
        on the channel's word has its signature checked now (once); a bad one
        still counted here (its author sent it) but is never forwarded."""
        pbft = self.pbft
        found = []
        for replica, commit in slot.commits.items():
            if commit.digest != digest:
                continue
            state = slot.unchecked.get(replica, False)
            if state is None:
                continue
            if state:
                if pbft.verify(replica, commit):
                    del slot.unchecked[replica]
                else:
                    slot.unchecked[replica] = None
                    pbft.reject("commit_on_channel_bad_signature")
                    continue
            found.append(commit)
        return found

    def prepared_quorum(self) -> int:
        """PREPAREs from distinct backups that, with the PRE-PREPARE, prepare: a
        quorum less the primary (2f with n = 3f+1)."""
        return self.pbft.quorum - 1

    def check_prepared(self, slot: Slot) -> None:
        """prepared(m, v, n, i): the PRE-PREPARE and 2f matching PREPAREs."""
        pbft = self.pbft
        pre_prepare = slot.pre_prepare
        if slot.prepared or pre_prepare is None:
            return
        matching = sorted(
            (prepare for prepare in slot.prepares.values() if prepare.digest == pre_prepare.digest),
            key=lambda prepare: prepare.replica,
        )
        if len(matching) < self.prepared_quorum():
            return
        slot.prepared = True
        slot.stalled = 0
        proof = PreparedProof(pre_prepare, tuple(matching[: self.prepared_quorum()]))
        pbft.prepared_proofs[slot.seq] = proof
        pbft.context.persist(f"pc{slot.seq}", pbft.encode(proof))
        if pbft.withholding:
            pbft.count("pbft_withheld_commits")
        elif pbft.id not in slot.commits:  # (else vouched for already: vouch_executed)
            self.vote(slot, Commit, pre_prepare)
        self.check_committed(slot)  # withholding: on 2f+1 COMMITs of others

    def commit_quorum(self) -> int:
        """COMMITs that, with a prepared certificate, commit: a quorum (2f + 1
        with n = 3f+1)."""
        return self.pbft.quorum

    def check_committed(self, slot: Slot) -> None:
        """committed-local(m, v, n, i): prepared and 2f+1 matching COMMITs."""
        pbft = self.pbft
        pre_prepare = slot.pre_prepare
        if not slot.prepared or slot.committed is not None or pre_prepare is None:
            return
        matching = sum(
            1 for commit in slot.commits.values() if commit.digest == pre_prepare.digest
        )
        if matching < self.commit_quorum():
            return
        slot.committed = pre_prepare
        slot.stalled = 0
        if slot.seq > pbft.executed:
            pbft.context.persist(f"cm{slot.seq}", pre_prepare.digest)
            pbft.execute_ready()

    # -- the view-change timer of a backup (section 4.4) -------------------------------------

    def oldest_waits(
        self,
    ) -> tuple[bytes | None, tuple[int, int] | None, int | None, bytes | None]:
        """What this backup has waited for longest, of each kind: its oldest
        relayed batch, its clients' oldest awaited request, the lowest number
        pre-prepared and not executed (the primary orders FIFO, so the oldest
        comes first; a request it censors becomes the oldest), the oldest batch
        another backup forwarded."""
        pbft = self.pbft
        digest = next(iter(pbft.relayed), None)
        request = next(iter(self.awaited.items()), None)
        pending = [
            seq for seq, slot in pbft.slots.items()
            if seq > pbft.executed and slot.pre_prepare is not None
        ]
        return (digest, request, min(pending) if pending else None,
                next(iter(self.forwarded), None))

    def request_timeout_us(self) -> int:
        """The backup's request timer: the view's timeout (every timer of a
        view backs off alike, ``ViewChanges.timeout_us``)."""
        pbft = self.pbft
        return pbft.view_changes.timeout_us()

    async def watch_primary(self) -> None:
        """Section 4.4: the backup's timer runs while it waits for something to
        execute (its own barrier batches, its clients' requests SMR relayed, a
        batch pre-prepared, a batch another backup forwarded), timing the oldest
        of each kind, and is restarted when the backup executes something: a
        wait that outlasts a timeout counts against the primary only if nothing
        executed meanwhile, or a younger wait of its kind executed before it
        (the primary orders what it is given in turn: it skipped this one), or
        it has outlasted ``PATIENCE_TIMEOUTS`` timeouts (a primary that orders
        others' work but never this backup's). A primary working through a
        queue longer than a timeout is not replaced (the live storm of issue 12:
        at 64 clients the queue at a PBFT group's primary held more than 400 ms
        of batches), while one that stops, skips a request or leaves a hole is,
        within two timeouts, and one that starves a whole front within
        ``PATIENCE_TIMEOUTS`` + 1. The timeout is the view's
        (``request_timeout_us``): doubled per view in a row before this one
        without progress (section 4.5.2: a timeout too short for the load
        cannot replace primary after primary forever; a view counts as progress
        once this replica executed ``PROGRESS_BATCHES`` batches in it,
        ``ViewChanges.on_progress``), and at least once per primary this backup
        replaced since it last waited for nothing at both ends of a timeout
        (``replaced``; ADR 0040)."""
        pbft = self.pbft
        outlasted = [0, 0, 0, 0]  # timeouts the tracked wait of each kind outlasted
        tracked: tuple[bytes | None, tuple[int, int] | None, int | None, bytes | None]
        tracked = (None, None, None, None)
        idle = 0  # timeouts in a row that began and ended with nothing waited for
        while True:
            before = tracked
            tracked = self.oldest_waits()
            for kind in range(4):
                if tracked[kind] is None or tracked[kind] != before[kind]:
                    outlasted[kind] = 0
            executed = pbft.executed
            await pbft.context.sleep(self.request_timeout_us())
            if tracked == self.oldest_waits() == IDLE:
                self.replaced = 0  # idle: the load that needed it is gone
                idle += 1
                if idle == PATIENCE_TIMEOUTS:
                    # A group with nothing to execute shows no other progress
                    # (ADR 0040); one idle timeout is not enough: after a view
                    # change the clients' retries may leave a loaded group
                    # idle for a few short timeouts.
                    pbft.view_changes.on_idle()
            else:
                idle = 0
            cause = self.suspicion(*tracked, executed=executed, outlasted=outlasted)
            if cause is not None:
                pbft.count("pbft_primary_suspected")
                pbft.count(f"pbft_primary_suspected_{cause}")
                if cause in ("relayed", "requests"):
                    self.forward_waiting()  # (again with each re-sent VIEW-CHANGE)
                self.replaced += 1
                pbft.view_changes.start(pbft.view + 1)
                return

    def suspicion(
        self, digest: bytes | None, request: tuple[int, int] | None, seq: int | None,
        forwarded: bytes | None = None, *, executed: int | None = None,
        outlasted: list[int] | None = None,
    ) -> str | None:
        """Why the primary is suspected after a timeout (``None``: it is not):
        what it timed of some kind still waits, and (given ``executed``, the
        number executed at the timeout's start, and ``outlasted``, the timeouts
        each kind's wait had outlasted before, bumped here for those that still
        wait) nothing executed meanwhile, or it was overtaken, or it has now
        outlasted ``PATIENCE_TIMEOUTS``. Without ``executed``: it still waits."""
        pbft = self.pbft
        waits = (
            digest is not None and digest in pbft.relayed,
            request is not None and self.awaited.get(request[0]) == request[1],
            seq is not None and pbft.executed < seq,
            forwarded is not None and forwarded in self.forwarded,
        )
        overtaken = (
            digest is not None and self.overtaken_relayed == digest,
            request is not None and self.overtaken_request == request,
            False,  # numbers execute in order
            forwarded is not None and self.overtaken_forwarded == forwarded,
        )
        if executed is None or outlasted is None:
            return next((name for name, wait in zip(SUSPECTED_KINDS, waits, strict=True)
                         if wait), None)
        return suspected_kind(SUSPECTED_KINDS, waits, overtaken, outlasted,
                              pbft.executed == executed, lambda why: pbft.count(f"pbft_{why}"))

    # -- retransmission ------------------------------------------------------------------------

    def retransmit_stalled(self) -> None:
        """Re-send this replica's own messages for numbers stuck since the last
        tick, and re-relay batches the primary has not ordered."""
        pbft = self.pbft
        budget = pbft.params.retransmit_max
        for seq in sorted(pbft.slots):
            slot = pbft.slots[seq]
            if seq <= pbft.executed or slot.pre_prepare is None:
                continue
            slot.stalled += 1
            if slot.stalled < 2:
                continue
            if budget <= 0:
                break
            budget -= 1
            self.resend_own(slot, None)
        if not pbft.is_primary:
            for digest, batch in pbft.relayed.items():
                ticks = self.relay_ticks.get(digest, 0) + 1
                self.relay_ticks[digest] = ticks
                if ticks >= 2:
                    pbft.send(pbft.primary(), Relay(batch))
        for digest in [digest for digest in self.relay_ticks if digest not in pbft.relayed]:
            del self.relay_ticks[digest]

    def resend_own(self, slot: Slot, peer: int | None) -> None:
        pbft = self.pbft
        messages: list[Any] = []
        if pbft.is_primary and slot.pre_prepare is not None:
            messages.append(slot.pre_prepare)
        for own in (slot.prepares.get(pbft.id), slot.commits.get(pbft.id)):
            if own is not None:
                messages.append(own)
        for message in messages:
            if peer is None:
                pbft.send_all(message)
            else:
                pbft.send(peer, message)

    def retransmit_to(self, peer: int, their_executed: int) -> None:
        """A replica of this view executed less: send it what this one holds
        above its point (the primary's signed PRE-PREPARE and every matching
        PREPARE and COMMIT), up to ``retransmit_max`` numbers."""
        pbft = self.pbft
        start = max(their_executed, pbft.stable_seq) + 1
        end = min(pbft.executed, start + pbft.params.retransmit_max - 1)
        # Stuck: it reported the same point a status period ago, and what was
        # sent then did not move it (``vouch_executed``).
        stuck = self.lagging.get(peer) == (pbft.view, their_executed)
        self.lagging[peer] = (pbft.view, their_executed)
        for seq in range(start, end + 1):
            slot = pbft.slots.get(seq)
            if slot is None or slot.pre_prepare is None:
                continue
            pre_prepare = slot.pre_prepare
            pbft.send(peer, pre_prepare)
            if stuck and seq == their_executed + 1:
                self.vouch_executed(slot, pre_prepare)
            for prepare in slot.prepares.values():
                if prepare.digest == pre_prepare.digest and prepare.replica != peer:
                    pbft.send(peer, prepare)
            for commit in self.forwardable_commits(slot, pre_prepare.digest):
                if commit.replica != peer:
                    pbft.send(peer, commit)
