"""Broken variants of PBFT, each a subclass replacing one part of :class:`Pbft`.

:class:`~replicaio.protocols.pbft.pbft.Pbft` names its replaceable parts as
class attributes (``normal_type``, ``checkpoints_type``, ``view_changes_type``,
``transfer_type``); a variant overrides one method of one part.
:data:`PBFT_VARIANTS` lists them with what each breaks and the property that
catches it (see ``docs/pbft.md``, *Broken variants*, and
``tests/test_pbft_variants.py``).

One variant is broken on the client's side, not the replicas':
``pbft-read-only-f-plus-1`` runs the real :class:`Pbft` and its simulated
clients read with the read-only optimisation (section 5.1.3), but accept an
unordered read on f+1 matching answers instead of 2f+1
(:func:`read_only_quorum_f_plus_1`): a Byzantine replica answering as a
lagging correct one does then makes the client read a stale value
(``pbft_lagging_reads``, ``replicaio.sim.pbft_adversary``). Another,
``pbft-read-only-2f-plus-1``, accepts 2f+1 whatever n is
(:func:`read_only_quorum_2f_plus_1`, the rule before 2026-12-06), which with
more than 3f+1 replicas reads stale values the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from replicaio.core.config import Resilience
from replicaio.interfaces.ordering import NotLeader
from replicaio.protocols.pbft.checkpoint import Checkpoints
from replicaio.protocols.pbft.messages import Checkpoint, PrePrepare, Status, ViewChange
from replicaio.protocols.pbft.normal import NormalCase, Slot
from replicaio.protocols.pbft.pbft import Pbft
from replicaio.protocols.pbft.recovery import Recovery
from replicaio.protocols.pbft.view_change import Chosen, ViewChanges
from replicaio.smr.client import BYZANTINE, FastQuorums, fast_quorums, reply_quorum
from replicaio.testing.variants.backoff import IdleNotProgress, NeverReset, ResetByOneBatch


class CommitQuorumOffByOne(NormalCase):
    """Commits on 2f matching COMMITs instead of 2f+1."""

    def commit_quorum(self) -> int:
        return self.pbft.quorum - 1


class PrepareQuorumOffByOne(NormalCase):
    """Prepared on 2f-1 PREPAREs instead of 2f."""

    def prepared_quorum(self) -> int:
        return max(1, self.pbft.quorum - 2)


class ForgetPrePrepares(NormalCase):
    """PRE-PREPAREs are logged in memory only: a restarted primary assigns a
    number it already assigned in this view to another batch."""

    def log_pre_prepare(self, pre_prepare: PrePrepare) -> None:
        return


class IgnorePreparedSet(ViewChanges):
    """The new primary ignores the P sets: every number above min-s gets a null
    request, so a batch committed in the old view may be replaced."""

    def choose(self, view_changes: Sequence[ViewChange]) -> tuple[ViewChange, Chosen]:
        best, chosen = super().choose(view_changes)
        return best, [(seq, None) for seq, _ in chosen]


class NoViewChangeResend(ViewChanges):
    """A VIEW-CHANGE is sent once: never re-sent, nor shown to a replica whose
    STATUS says it is behind (Fabric issue 1917)."""

    async def resend(self, view: int) -> None:
        return

    def help_peer(self, peer: int, status: Status) -> None:
        if self.pbft.active:
            super().help_peer(peer, status)


class TrustDamagedTail(Recovery):
    """Ignores the storage's report of lost writes: the replica votes at once
    from the older state (what PBFT did before issue 9), so it may PREPARE a
    second batch at a number and view it prepared another one in, or send a
    VIEW-CHANGE without a certificate it had shown."""

    def lost_acknowledged_state(self) -> bool:
        return False


class RequestTimerNotDoubled(NormalCase):
    """The backup's request timer never doubles (section 4.5.2 ignored): a
    timeout shorter than one batch round under the load replaces primary after
    primary, and no view lasts long enough to execute anything."""

    def request_timeout_us(self) -> int:
        return self.pbft.params.view_change_timeout_us


class RequestTimerResetWhenIdle(NormalCase):
    """The backup's request timer as it was before 2026-12-06 (ADR 0040):
    doubled per primary this backup suspected, back to ``view_change_timeout_us``
    only after a timeout that began and ended with nothing waited for, whatever
    executed in the views between."""

    def __init__(self, pbft: Pbft) -> None:
        super().__init__(pbft)
        self.timeout_exponent = 0

    def request_timeout_us(self) -> int:
        return self.pbft.params.view_change_timeout_us << self.timeout_exponent

    def suspicion(
        self, digest: bytes | None, request: tuple[int, int] | None, seq: int | None,
        forwarded: bytes | None = None, *, executed: int | None = None,
        outlasted: list[int] | None = None,
    ) -> str | None:
        timed = executed is not None
        if timed and (digest, request, seq, forwarded) == self.oldest_waits() == IDLE:
            self.timeout_exponent = 0  # idle: the load that needed it is gone
        cause = super().suspicion(digest, request, seq, forwarded, executed=executed,
                                  outlasted=outlasted)
        if timed and cause is not None:
            self.timeout_exponent = min(self.timeout_exponent + 1,
                                        self.pbft.params.view_change_backoff_exponent_max)
        return cause


IDLE = (None, None, None, None)  # ``oldest_waits`` of a backup that waits for nothing


class BackoffResetByViewStart(ViewChanges):
    """The new-view timer as it was before 2026-12-06 (ADR 0040): doubled per
    view since the last one this replica was *active* in, so a view that
    starts and executes nothing resets it."""

    def timeout_us(self) -> int:
        params = self.pbft.params
        attempt = max(0, self.pbft.view - self.last_active_view - 1)
        return params.view_change_timeout_us << min(
            attempt, params.view_change_backoff_exponent_max)


class BackoffResetByOneBatch(ResetByOneBatch, ViewChanges):
    """MinBFT's rule of ADR 0039 in PBFT (:class:`ResetByOneBatch`)."""


class BackoffIdleNotProgress(IdleNotProgress, ViewChanges):
    """Idle request timeouts are not progress (:class:`IdleNotProgress`)."""


class BackoffNeverReset(NeverReset, ViewChanges):
    """The back-off never reset (:class:`NeverReset`)."""


class NoVouchForExecuted(NormalCase):
    """A replica never vouches, in the current view, for a batch it executed
    in an older one (the code before 2026-12-06, ``NormalCase.vouch_executed``):
    when only 2f+1 replicas vote (one withholding after a damaged disk), a
    replica whose view's COMMITs for one number were lost waits for ever, and
    the replicas that executed it wait for nothing, so no view change comes."""

    def vouch_executed(self, slot: Slot, pre_prepare: PrePrepare) -> None:
        return


class PbftNoVouchForExecuted(Pbft):
    """Not a service of its own; the transactional variant
    ``txn-pbft-no-vouch`` builds its groups with it."""

    normal_type = NoVouchForExecuted

class VouchesCommitsOnly(NormalCase):
    """A replica vouches for a batch it executed with a COMMIT of the current view
    but never with a PREPARE (the code of 2026-12-06 before
    ``NormalCase.vouch_prepare``): a primary that holds the view's PRE-PREPARE
    and 2f COMMITs for a number, but none of the PREPAREs its backups sent
    before they restarted, is never prepared there and never executes it."""

    def vouch_prepare(self, slot: Slot, pre_prepare: PrePrepare) -> None:
        return


class PbftVouchesCommitsOnly(Pbft):
    """Not a service of its own; the transactional variant
    ``txn-pbft-vouch-commits-only`` builds its groups with it."""

    normal_type = VouchesCommitsOnly


class DropsCarried(ViewChanges):
    """A replica that entered a view below the NEW-VIEW's checkpoint never takes
    the NEW-VIEW's PRE-PREPAREs that were above its window then (the code before
    ``ViewChanges.accept_carried``): a primary in that state holds COMMITs and
    no PRE-PREPARE for those numbers, and takes none from its backups."""

    def accept_carried(self) -> None:
        return

    def carried_top(self) -> int:
        return 0


class PbftDropsCarried(Pbft):
    """Not a service of its own; the transactional variant
    ``txn-pbft-drops-carried`` builds its groups with it."""

    view_changes_type = DropsCarried


class SuspectsAlone(NormalCase):
    """A backup that suspects its primary moves to the next view and forwards
    nothing (the code before 2026-12-06): when its requests come only through
    it (a node's in-node clients call their own replica), the other backups
    wait for nothing and never join its lone VIEW-CHANGE (docs/pbft.md, *View
    change*)."""

    def forward_waiting(self) -> None:
        return


class PbftSuspectsAlone(Pbft):
    """``pbft-suspects-alone`` (a single group; its swarm needs ``fronts=1`` and
    ``degraded``: the default clients multicast a retried request, so every
    backup times it), and the groups of the transactional variant
    ``txn-pbft-suspects-alone``."""

    normal_type = SuspectsAlone


class PbftWatchesRefused(Pbft):
    """A backup times every request of a batch it was refused (the code before
    2026-12-08), not only those SMR relayed to the primary: the requests another
    replica forwarded here, which SMR refuses back to their origin, are timed
    too, and once their clients gave up nobody orders them: after one request
    timeout with nothing executed (a quiet cluster) the backup suspects its
    correct primary (ADR 0074, finding 3; ``Pbft.watch_relayed``)."""

    def submit(self, batch: bytes) -> NotLeader | None:
        outcome = super().submit(batch)
        handlers = self.handlers
        if outcome is not None and self.active and handlers is not None:
            self.normal.await_requests(handlers.requests_of(batch))
        return outcome


class WatchesExecuted(NormalCase):
    """A backup never stops watching its clients' requests once they executed
    (``on_executed_requests`` leaves ``awaited`` alone): the oldest stays the
    oldest, so after ``PATIENCE_TIMEOUTS`` request timeouts, or one in a quiet
    cluster, the backup suspects a correct primary that ordered it."""

    def on_executed_requests(self, requests: tuple[tuple[int, int], ...]) -> None:
        awaited = self.awaited
        kept = dict(awaited)
        super().on_executed_requests(requests)
        awaited.update(kept)


class PbftWatchesExecuted(Pbft):
    normal_type = WatchesExecuted


class KeepsStableNumber(Checkpoints):
    """Garbage collection at a stable checkpoint keeps what it holds for the
    checkpoint's own number (an off-by-one: ``key < seq`` for ``key <= seq``):
    the slot and the prepared certificate of h stay until the next checkpoint.
    Nothing reads them (the window starts above h, a VIEW-CHANGE's P set is
    taken above h), so every run stays safe, live and linearizable, and the
    leak is one number, within every bound: only the audit sees it (ADR 0071)."""

    def make_stable(
        self, seq: int, digest: bytes, snapshot: bytes, proof: tuple[Checkpoint, ...]
    ) -> None:
        pbft = self.pbft
        slot, prepared = pbft.slots.get(seq), pbft.prepared_proofs.get(seq)
        super().make_stable(seq, digest, snapshot, proof)
        if slot is not None:
            pbft.slots[seq] = slot
        if prepared is not None:
            pbft.prepared_proofs[seq] = prepared


class PbftGcKeepsStableNumber(Pbft):
    checkpoints_type = KeepsStableNumber


class PbftCommitOffByOne(Pbft):
    normal_type = CommitQuorumOffByOne


class PbftQuorum2fPlus1(Pbft):
    """Every quorum 2f + 1 whatever n is (the code before 2026-12-06): right for
    n = 3f+1 only; with five replicas and f = 1 two quorums of three meet in one
    replica, and a Byzantine one there commits two batches at one number."""

    @property
    def quorum(self) -> int:
        return 2 * self.f + 1


class PbftPrepareOffByOne(Pbft):
    normal_type = PrepareQuorumOffByOne


class PbftForgetPrePrepares(Pbft):
    normal_type = ForgetPrePrepares


class PbftIgnorePreparedSet(Pbft):
    view_changes_type = IgnorePreparedSet


class PbftNoViewChangeResend(Pbft):
    view_changes_type = NoViewChangeResend


class PbftRequestTimerNotDoubled(Pbft):
    normal_type = RequestTimerNotDoubled


class PbftTrustDamagedTail(Pbft):
    recovery_type = TrustDamagedTail


class PbftBackoffResetByViewStart(Pbft):
    """``pbft-backoff-reset-by-view-start``: both timers as they were before
    2026-12-06; the transactional ``txn-pbft-backoff-reset-by-view-start``
    builds its groups with it."""

    normal_type = RequestTimerResetWhenIdle
    view_changes_type = BackoffResetByViewStart


class PbftBackoffResetByOneBatch(Pbft):
    view_changes_type = BackoffResetByOneBatch


class PbftBackoffIdleNotProgress(Pbft):
    view_changes_type = BackoffIdleNotProgress


class PbftBackoffNeverReset(Pbft):
    view_changes_type = BackoffNeverReset


def read_only_quorum_f_plus_1(resilience: Resilience, f: int, n: int) -> FastQuorums:
    """An unordered read (and a fast reader's write) accepted on f+1 matching
    answers (the quorum of an ordered reply) instead of ceil((n + f + 1) / 2):
    f+1 may be one faulty replica and f correct ones that have not executed a
    write the client saw complete."""
    quorum = reply_quorum(resilience, f, n)
    return FastQuorums(quorum, quorum)


def read_only_quorum_2f_plus_1(resilience: Resilience, f: int, n: int) -> FastQuorums:
    """An unordered read and a fast reader's write accepted on 2f+1 matching
    answers whatever n is (the rule before 2026-12-06): right for n = 3f+1
    only; with six replicas and f = 1 a write completes on three replies, the
    faulty replica's among them, and three replicas that have not executed it
    (the faulty one lying along) make a read's three stale answers."""
    if resilience not in BYZANTINE:
        return FastQuorums(1, 1)
    return FastQuorums(2 * f + 1, 2 * f + 1)


@dataclass(frozen=True, slots=True)
class PbftVariant:
    """A broken PBFT: its protocol name, class, what it breaks, and the property
    a seed sweep of the simulator catches it by. ``fast_quorums`` is the
    rule its clients accept unordered reads and their writes by, and ``reads``
    whether they read so (section 5.1.3) whatever the protocol's parameters
    say."""

    name: str
    pbft_type: type[Pbft]
    summary: str
    caught_by: str
    fast_quorums: Callable[[Resilience, int, int], FastQuorums] = fast_quorums
    reads: bool = False


PBFT_VARIANTS: dict[str, PbftVariant] = {
    variant.name: variant
    for variant in (
        PbftVariant(
            "pbft-commit-off-by-one", PbftCommitOffByOne,
            "commits on 2f COMMITs instead of 2f+1", "agreement",
        ),
        PbftVariant(
            "pbft-quorum-2f-plus-1", PbftQuorum2fPlus1,
            "every quorum is 2f+1 replicas whatever n is: with more than 3f+1 replicas "
            "two quorums may meet only in a faulty one (run with --nodes 5)", "agreement",
        ),
        PbftVariant(
            "pbft-prepare-off-by-one", PbftPrepareOffByOne,
            "prepares on 2f-1 PREPAREs instead of 2f (its certificates are refused in "
            "view changes: liveness; the audit recounts the PREPAREs first, ADR 0071)",
            "internal-consistency",
        ),
        PbftVariant(
            "pbft-forget-pre-prepares", PbftForgetPrePrepares,
            "PRE-PREPAREs are not persisted before the PREPARE they cause", "agreement",
        ),
        PbftVariant(
            "pbft-no-view-change-resend", PbftNoViewChangeResend,
            "a VIEW-CHANGE is never re-sent (Fabric issue 1917)", "liveness",
        ),
        PbftVariant(
            "pbft-ignore-prepared-set", PbftIgnorePreparedSet,
            "the new primary ignores the P sets of the VIEW-CHANGEs", "agreement",
        ),
        PbftVariant(
            "pbft-trust-damaged-tail", PbftTrustDamagedTail,
            "a replica whose storage lost writes votes at once from the older state",
            "agreement",
        ),
        PbftVariant(
            "pbft-request-timer-not-doubled", PbftRequestTimerNotDoubled,
            "the backups' request timer never doubles (section 4.5.2)", "liveness",
        ),
        PbftVariant(
            "pbft-backoff-reset-by-view-start", PbftBackoffResetByViewStart,
            "the timers' back-off is reset by a view start (the new-view timer) or an "
            "idle timeout (the request timer), executed or not: a timeout shorter than "
            "a batch round changes views more often (run "
            "pbft-backoff-reset-by-view-start:view_timeout=8 with 40 clients without think "
            "time)", "views",
        ),
        PbftVariant(
            "pbft-backoff-reset-by-one-batch", PbftBackoffResetByOneBatch,
            "the timers' back-off is reset as soon as one batch executes in a view "
            "(MinBFT's rule): a timeout shorter than a batch round is back after each "
            "view's first batch (run pbft-backoff-reset-by-one-batch:view_timeout=8 with "
            "40 clients without think time)", "views",
        ),
        PbftVariant(
            "pbft-backoff-idle-not-progress", PbftBackoffIdleNotProgress,
            "only four batches executed make a view progress, a request timeout with "
            "nothing waited for does not: a group with sparse traffic piles up a doubling "
            "per view changed and replaces a failed primary late", "liveness",
        ),
        PbftVariant(
            "pbft-backoff-never-reset", PbftBackoffNeverReset,
            "the timers' back-off is never reset: every view changed doubles every timer "
            "for good", "liveness",
        ),
        PbftVariant(
            "pbft-suspects-alone", PbftSuspectsAlone,
            "a backup that suspects its primary forwards nothing: with the primary kept "
            "down and every client through one backup (run pbft-suspects-alone:fronts=1 "
            "--faults ...,degraded), the others never join its VIEW-CHANGE", "liveness",
        ),
        PbftVariant(
            "pbft-watches-refused", PbftWatchesRefused,
            "a backup times every request of a batch it was refused, those SMR refused "
            "back to the replica that forwarded them too: once their clients gave up, it "
            "suspects a correct primary in a quiet cluster (run with --faults "
            "crash,partition,loss,dup,reorder,slow; ADR 0074 finding 3)", "prompt",
        ),
        PbftVariant(
            "pbft-watches-executed", PbftWatchesExecuted,
            "a backup never stops watching its clients' requests once they executed: it "
            "suspects a correct primary that ordered them", "prompt",
        ),
        PbftVariant(
            "pbft-gc-keeps-stable-number", PbftGcKeepsStableNumber,
            "garbage collection at a stable checkpoint keeps the slot and prepared "
            "certificate of the checkpoint's own number (off by one): nothing reads them, "
            "so only the audit sees it (ADR 0071)", "internal-consistency",
        ),
        PbftVariant(
            "pbft-read-only-f-plus-1", Pbft,
            "clients read unordered and accept f+1 matching answers instead of 2f+1",
            "linearizability", fast_quorums=read_only_quorum_f_plus_1, reads=True,
        ),
        PbftVariant(
            "pbft-read-only-2f-plus-1", Pbft,
            "clients read unordered and accept 2f+1 matching answers (and writes on "
            "2f+1) whatever n is: with more than 3f+1 replicas a read's quorum may miss "
            "every correct replica that executed a completed write (run with --nodes 6 "
            "--byzantine 1 --adversary pbft_lagging_reads)",
            "linearizability", fast_quorums=read_only_quorum_2f_plus_1, reads=True,
        ),
    )
}
