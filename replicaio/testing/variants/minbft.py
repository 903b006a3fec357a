"""Broken variants of MinBFT, each a subclass replacing one part of :class:`Minbft`.

:class:`~replicaio.protocols.minbft.minbft.Minbft` names its replaceable parts
as class attributes (``normal_type``, ``checkpoints_type``,
``view_changes_type``, ``usig_type``, ``recovery_type``); a variant overrides one method of one
part. See ``docs/minbft.md``, *Broken variants*, and
``tests/test_minbft_variants.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from msgspec.structs import replace

from replicaio.core.config import Resilience
from replicaio.core.context import Context
from replicaio.protocols.minbft.checkpoint import Checkpoints
from replicaio.protocols.minbft.messages import Checkpoint, NewView, Resume, ViewChange
from replicaio.protocols.minbft.minbft import Minbft
from replicaio.protocols.minbft.normal import NormalCase
from replicaio.protocols.minbft.params import MinbftParams
from replicaio.protocols.minbft.recovery import Recovery
from replicaio.protocols.minbft.streams import PeerStream
from replicaio.protocols.minbft.usig import UI, Usig, UsigScheme, message_digest
from replicaio.protocols.minbft.view_change import ViewChanges
from replicaio.smr.client import FastQuorums, fast_quorums
from replicaio.testing.variants.backoff import IdleNotProgress, NeverReset, ResetByOneBatch


class CommitQuorumOffByOne(NormalCase):
    """Commits on f matching commitments instead of f+1."""

    def commit_quorum(self) -> int:
        return max(1, self.minbft.f)


class SuspectsAlone(NormalCase):
    """A backup that suspects its primary asks for a view change and forwards
    nothing (the code before 2026-12-06): when its batches come only through
    it (a node's in-node clients call their own replica), the other backups
    wait for nothing, its request alone is not f+1, and a group whose primary
    is down stays stalled (docs/minbft.md, *View change*)."""

    def forward_waiting(self) -> None:
        return


class SuspectsOverAQueue(NormalCase):
    """A backup's request timer as it was before 2026-12-06: any own relayed
    (or forwarded) batch that waited a whole timeout counts against the
    primary, whatever executed meanwhile, so a correct primary working
    through a queue longer than the timeout is replaced (the live MinBFT
    transactions at load 14-16; docs/minbft.md, *The backup's request
    timer*)."""

    async def watch_primary(self) -> None:
        minbft = self.minbft
        view_changes = minbft.view_changes
        asked = False
        while True:
            waited = set(minbft.relayed)
            forwarded = set(self.forwarded)
            executed = minbft.executed
            waiting = self.waiting_for_execution()
            await minbft.context.sleep(minbft.params.view_change_timeout_us)
            still = any(digest in minbft.relayed for digest in waited)
            still_forwarded = any(digest in self.forwarded for digest in forwarded)
            unfollowable = self.unfollowable() and not minbft.withholding
            if still and not self.suspected:
                self.suspected = True
                self.forward_waiting()
            if not asked and (still or still_forwarded
                              or (waiting and minbft.executed == executed)):
                minbft.count("minbft_primary_suspected")
                view_changes.request(minbft.view + 1, unfollowable=unfollowable)
                asked = True
            elif unfollowable and view_changes.unfollowable_view != minbft.view + 1:
                minbft.count("minbft_view_unfollowable")
                view_changes.request(minbft.view + 1, unfollowable=True)
                asked = True


class CounterWrittenAfterRelease(Usig):
    """The USIG writes a counter value only when it gives out the next one: a
    crash loses the last value it released, which it then gives to another
    message (the trusted counter's one duty broken)."""

    __slots__ = ()

    def create_ui(self, message: bytes) -> UI:
        self.store.save(self.identity.epoch, self.counter, self.last_digest)  # the previous
        self.counter += 1
        self.last_digest = message_digest(message)
        self.marks = self.marks.after(self.counter, message)
        return UI(self.identity.epoch, self.counter,
                  self.scheme.certify(self.identity, self.counter, self.last_digest))

    def reissue_last(self, message: bytes) -> UI | None:
        return None


class VotesWithoutRecovering(Recovery):
    """Under a newly admitted USIG epoch, votes at once: COMMITs, VIEW-CHANGEs
    and NEW-VIEWs before its stable checkpoint passed what its peers report
    (it has forgotten the commitments it made under the old epoch)."""

    def withheld(self, what: str) -> bool:
        return self.lost


class UncertifiedViewChanges(ViewChanges):
    """The NEW-VIEW choice before the new-view certificate (docs/minbft.md,
    *The NEW-VIEW choice*): a VIEW-CHANGE showing PREPAREs or COMMITs of a view
    without that view's certificate is valid, and ``choose`` counts them, and
    the headers of NEW-VIEW-COMMITs and NEW-VIEW stubs, whatever view they
    claim. A faulty primary's PREPAREs of a view no correct replica started
    then outrank a batch executed in an older view."""

    certificates_required = False


class AnyAnchorViewChanges(ViewChanges):
    """A VIEW-CHANGE may be anchored at any CHECKPOINT of its author's with a
    certificate, whatever its USIG attests about it (the rule before
    docs/minbft.md's *The pre-anchor hiding gap* was closed): a faulty replica
    certifies a CHECKPOINT of its stable checkpoint again and anchors its
    VIEW-CHANGE there, hiding its commitments above the checkpoint."""

    anchors_attested = False


class LogFromAnchorViewChanges(ViewChanges):
    """A VIEW-CHANGE's log may start right after its anchor, whatever
    certified NEW-VIEW-COMMIT its author's USIG attests is still open there
    (the rule before docs/minbft.md's *The pre-anchor hiding gap* was closed):
    a faulty replica leaves out a NEW-VIEW's decisions it committed to."""

    decisions_shown = False


class PrimaryGivesUpAlone(ViewChanges):
    """A single group's backups do not join their primary's request to end its
    own view (the rule before 2026-12-06; a group of a transactional cluster
    did): with every client at the primary, the backups have nothing to time
    out on and its lone request is not f+1."""

    def joins_primary(self) -> bool:
        return self.minbft.group is not None


class JoinsWithoutViewChange(PrimaryGivesUpAlone):
    """A replica that takes the NEW-VIEW of a view it sent no VIEW-CHANGE for
    commits to it at once (the code before ADR 0035): its NEW-VIEW-COMMIT is
    of a later view than its last VIEW-CHANGE, every peer's stream refuses it
    (``new_view_commit_out_of_stream``), and nothing sends it again. With the
    rule before for the primary's own request too (:class:`PrimaryGivesUpAlone`):
    joining that request hides the loss behind a later view change (two more
    views in swarm ``minbft:fronts=1`` seed 25, no failure)."""

    def join(self, view: int) -> None:
        return


class UntakenDecisions(ViewChanges):
    """The current NEW-VIEW's decisions above the window when the view started
    are never taken (the code before 2026-12-06): a replica that entered the
    view below the NEW-VIEW's checkpoint and caught up by state transfer never
    executes them."""

    def take_decided(self) -> None:
        return


class BackoffResetByOneBatch(ResetByOneBatch, ViewChanges):
    """ADR 0039's rule, MinBFT's before ADR 0046 (:class:`ResetByOneBatch`)."""


class BackoffResetByViewStart(BackoffResetByOneBatch):
    """The timers' back-off as it was before 2026-12-06: reset when a view
    starts, whether or not anything executes in it, so the backup's request
    timer and the primary's own timer never double and a new primary whose
    PREPAREs cannot execute within one timeout (a starved machine, a timeout
    shorter than a batch round) is replaced view after view (docs/minbft.md,
    *Timers that back off on progress*; ADR 0039)."""

    def enter(self, new_view: NewView) -> None:
        super().enter(new_view)
        self.progress_view = max(self.progress_view, self.minbft.view)


class BackoffIdleNotProgress(IdleNotProgress, ViewChanges):
    """Idle request timeouts are not progress (:class:`IdleNotProgress`): a
    group that executes fewer than ``PROGRESS_BATCHES`` batches a view piles up
    a doubling per view it changes (ADR 0046)."""


class BackoffNeverReset(NeverReset, ViewChanges):
    """The back-off never reset (:class:`NeverReset`)."""


class RenumbersAfterRestart(NormalCase):
    """A primary restarted in a view before its first PREPARE numbers from its
    stable checkpoint, not above the NEW-VIEW's decisions (the code before
    2026-12-06): its backups' streams mark the view faulty."""

    def number_above_new_view(self) -> None:
        return


class StallsAfterViewChange(PeerStream):
    """A peer's stream takes its VIEW-CHANGE and stops there: the messages held
    above it (come early, through reordering or a loss) are not taken with it,
    so the next expected counter stays at a message held. The peer re-sends
    from that counter on the next STATUS (MinBFT's retransmission), the
    stream takes the copy, and the held original leaks below the next expected
    counter for good. Only a delay of a status period: every run stays safe,
    live and linearizable; only the audit sees the stream (ADR 0071)."""

    def receive(self, minbft: Minbft, message: Any) -> list[Any]:
        if type(message) is not ViewChange or message.ui.counter != self.next \
                or message.ui.epoch != self.epoch:
            return super().receive(minbft, message)
        held, self.held = self.held, {}
        try:
            return super().receive(minbft, message)
        finally:
            self.held = {**held, **self.held}


class KeepsStableNumber(Checkpoints):
    """Garbage collection at a stable checkpoint keeps the slot of the
    checkpoint's own number (off by one, as ``pbft-gc-keeps-stable-number``):
    nothing reads it, only the audit sees it (ADR 0071)."""

    def make_stable(
        self, seq: int, digest: bytes, snapshot: bytes, proof: tuple[Checkpoint, ...]
    ) -> None:
        minbft = self.minbft
        slot = minbft.slots.get(seq)
        super().make_stable(seq, digest, snapshot, proof)
        if slot is not None:
            minbft.slots[seq] = slot


class MinbftStreamStallsAfterViewChange(Minbft):
    stream_type = StallsAfterViewChange


class MinbftGcKeepsStableNumber(Minbft):
    checkpoints_type = KeepsStableNumber


class MinbftResumeForgetsNewViews(Minbft):
    """A resumed stream takes any NEW-VIEW of a view from the receiver's on,
    whatever its peer's USIG attests it certified before the resume point (the
    rule before docs/minbft.md's *A second NEW-VIEW of a view*): a faulty
    primary resumes a backup past its first NEW-VIEW of a view and shows it a
    second one, which with n = 3 gets certified and executed too."""

    def on_resume(self, source: int, resume: Resume) -> None:
        attestation = resume.attestation
        if attestation is not None:
            resume = replace(resume, attestation=replace(attestation, new_view_max=0))
        super().on_resume(source, resume)

    def attestation_valid(self, source: int, resume: Resume) -> bool:
        return resume.attestation is not None


class MinbftAnchorUnattested(Minbft):
    view_changes_type = AnyAnchorViewChanges


class MinbftLogFromAnchor(Minbft):
    view_changes_type = LogFromAnchorViewChanges


class MinbftJoinsWithoutViewChange(Minbft):
    view_changes_type = JoinsWithoutViewChange


class MinbftPrimaryGivesUpAlone(Minbft):
    view_changes_type = PrimaryGivesUpAlone


class MinbftUntakenDecisions(Minbft):
    view_changes_type = UntakenDecisions


class MinbftBackoffResetByViewStart(Minbft):
    view_changes_type = BackoffResetByViewStart


class MinbftBackoffResetByOneBatch(Minbft):
    view_changes_type = BackoffResetByOneBatch


class MinbftBackoffNeverReset(Minbft):
    view_changes_type = BackoffNeverReset


class MinbftBackoffIdleNotProgress(Minbft):
    view_changes_type = BackoffIdleNotProgress


class MinbftRenumbersAfterRestart(Minbft):
    normal_type = RenumbersAfterRestart


class MinbftCommitOffByOne(Minbft):
    normal_type = CommitQuorumOffByOne


class MinbftQuorumFPlusOne(Minbft):
    """The paper's quorum, f + 1, whatever n is (the code before 2026-12-06): right
    for n = 2f+1 only; with four replicas and f = 1 two disjoint pairs commit
    different batches at one number."""

    @property
    def quorum(self) -> int:
        return self.f + 1


class MinbftSuspectsAlone(Minbft):
    """``minbft-suspects-alone`` (a single group; its swarm needs ``fronts=1``
    and ``degraded``: the default clients send a retry to every replica, so
    every backup times it), and the groups of the transactional variant
    ``txn-minbft-suspects-alone``."""

    normal_type = SuspectsAlone


class MinbftSuspectsOverAQueue(Minbft):
    normal_type = SuspectsOverAQueue


class MinbftUsigLateWrite(Minbft):
    usig_type = CounterWrittenAfterRelease


class MinbftVoteWhileRecovering(Minbft):
    recovery_type = VotesWithoutRecovering


class MinbftNewViewUncertified(Minbft):
    view_changes_type = UncertifiedViewChanges


class MinbftGroupUnbound(Minbft):
    """Its USIG identities name no group (the code before ADR 0031): on a node
    hosting several MinBFT groups, every group's USIG certifies and checks as
    the node's one identity, so a UI one group's counter gave verifies in
    another group. Not a service of its own (with one group it is MinBFT);
    the transactional variant ``txn-minbft-group-unbound`` builds its groups
    with it."""

    def __init__(self, context: Context, params: MinbftParams | None = None,
                 scheme: UsigScheme | None = None) -> None:
        super().__init__(context, params, scheme)
        self.group = None


def fast_write_quorum_f(resilience: Resilience, f: int, n: int) -> FastQuorums:
    """The read-only optimisation's quorums with the write one too small: reads
    on the rule's R (every replica at n = 2f+1) and a fast reader's writes on
    one reply fewer than n + f + 1 - R (f instead of f+1 at n = 2f+1): the
    writes' replies may then all come from faulty replicas, the faulty one
    answers a later read as the correct replicas that had not run the write
    yet do, and the client reads a value older than its own completed write
    (``pbft_lagging_reads``; docs/minbft.md)."""
    quorums = fast_quorums(resilience, f, n)
    return FastQuorums(quorums.read, max(1, n + f - quorums.read))


@dataclass(frozen=True, slots=True)
class MinbftVariant:
    """A broken MinBFT: its protocol name, class and what it breaks;
    ``fast_quorums`` is the rule its simulated clients accept unordered reads
    and their writes by, and ``reads`` whether they read so whatever the
    protocol's parameters say (a client broken, not the replicas)."""

    name: str
    minbft_type: type[Minbft]
    summary: str
    fast_quorums: Callable[[Resilience, int, int], FastQuorums] = fast_quorums
    reads: bool = False


MINBFT_VARIANTS: dict[str, MinbftVariant] = {
    variant.name: variant
    for variant in (
        MinbftVariant("minbft-commit-off-by-one", MinbftCommitOffByOne,
                      "executes on f matching commitments instead of f+1"),
        MinbftVariant("minbft-usig-late-write", MinbftUsigLateWrite,
                      "the USIG writes its counter after releasing the UI"),
        MinbftVariant("minbft-vote-while-recovering", MinbftVoteWhileRecovering,
                      "a replica under a new USIG epoch votes before it recovered"),
        MinbftVariant("minbft-new-view-uncertified", MinbftNewViewUncertified,
                      "a VIEW-CHANGE's entries of a view count without its NEW-VIEW "
                      "certificate"),
        MinbftVariant("minbft-resume-forgets-new-views", MinbftResumeForgetsNewViews,
                      "a resumed stream takes a second NEW-VIEW of a view its primary "
                      "certified one of before the resume point"),
        MinbftVariant("minbft-anchor-unattested", MinbftAnchorUnattested,
                      "a VIEW-CHANGE may be anchored at a CHECKPOINT its author certified "
                      "again, after the commitments it hides"),
        MinbftVariant("minbft-suspects-alone", MinbftSuspectsAlone,
                      "a backup that suspects its primary forwards nothing: with the "
                      "primary kept down and every client through one backup (run "
                      "minbft-suspects-alone:fronts=1 --faults ...,degraded), its lone "
                      "REQ-VIEW-CHANGE is not f+1"),
        MinbftVariant("minbft-joins-without-view-change", MinbftJoinsWithoutViewChange,
                      "a replica that takes the NEW-VIEW of a view it sent no VIEW-CHANGE "
                      "for commits to it at once, which every peer's stream refuses (run "
                      "minbft-joins-without-view-change:fronts=1 --faults ...,degraded)"),
        MinbftVariant("minbft-primary-gives-up-alone", MinbftPrimaryGivesUpAlone,
                      "a single group's backups do not join their primary's request to "
                      "end its view (run minbft-primary-gives-up-alone:fronts=1 --faults "
                      "...,degraded)"),
        MinbftVariant("minbft-untaken-decisions", MinbftUntakenDecisions,
                      "a NEW-VIEW's decisions above the window when the view started are "
                      "never taken (run minbft-untaken-decisions:fronts=1 --faults "
                      "...,degraded)"),
        MinbftVariant("minbft-renumbers-after-restart", MinbftRenumbersAfterRestart,
                      "a primary restarted before its first PREPARE of a view numbers "
                      "from its stable checkpoint (run minbft-renumbers-after-restart:"
                      "fronts=1 --faults ...,degraded)"),
        MinbftVariant("minbft-request-timer-oldest", MinbftSuspectsOverAQueue,
                      "a backup holds any batch that waited a whole request timeout "
                      "against the primary, whatever executed meanwhile: a queue longer "
                      "than the timer replaces correct primaries (run "
                      "minbft-request-timer-oldest:view_timeout=20 with 40 clients without "
                      "think time)"),
        MinbftVariant("minbft-backoff-reset-by-view-start", MinbftBackoffResetByViewStart,
                      "the timers' back-off is reset when a view starts, executed or not: "
                      "a timeout shorter than a batch round changes views without end "
                      "(run minbft-backoff-reset-by-view-start:view_timeout=8 with 40 "
                      "clients without think time)"),
        MinbftVariant("minbft-backoff-reset-by-one-batch", MinbftBackoffResetByOneBatch,
                      "the timers' back-off is reset as soon as one batch executes in a "
                      "view (ADR 0039's rule): a timeout shorter than a batch round is back "
                      "after each view's first batch (run "
                      "minbft-backoff-reset-by-one-batch:view_timeout=8 with 40 clients "
                      "without think time)"),
        MinbftVariant("minbft-backoff-never-reset", MinbftBackoffNeverReset,
                      "the timers' back-off is never reset: every view changed doubles every "
                      "timer for good"),
        MinbftVariant("minbft-backoff-idle-not-progress", MinbftBackoffIdleNotProgress,
                      "only four batches executed make a view progress, a request timeout "
                      "with nothing waited for does not: a group with sparse traffic piles "
                      "up a doubling per view changed and replaces a failed primary late"),
        MinbftVariant("minbft-stream-stalls-after-view-change",
                      MinbftStreamStallsAfterViewChange,
                      "a peer's stream takes its VIEW-CHANGE without the messages held "
                      "above it: they wait for a retransmission and the originals leak "
                      "below the next expected counter (only the audit sees it, ADR 0071)"),
        MinbftVariant("minbft-gc-keeps-stable-number", MinbftGcKeepsStableNumber,
                      "garbage collection at a stable checkpoint keeps the slot of the "
                      "checkpoint's own number (off by one; only the audit sees it, "
                      "ADR 0071)"),
        MinbftVariant("minbft-quorum-f-plus-one", MinbftQuorumFPlusOne,
                      "every quorum is f+1 replicas whatever n is: with more than 2f+1 "
                      "replicas two quorums need not meet (run with --nodes 4)"),
        MinbftVariant("minbft-log-from-anchor", MinbftLogFromAnchor,
                      "a VIEW-CHANGE's log may start after a certified NEW-VIEW-COMMIT "
                      "its author made before its anchor"),
        MinbftVariant("minbft-fast-write-quorum-f", Minbft,
                      "clients read unordered on every replica and write on f replies "
                      "instead of f+1: a write's replies may all be a faulty replica's, "
                      "which then answers reads as the replicas that had not run it (run "
                      "with --byzantine 1 --adversary pbft_lagging_reads --faults ...)",
                      fast_quorums=fast_write_quorum_f, reads=True),
    )
}
