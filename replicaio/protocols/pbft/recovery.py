"""A replica whose storage lost writes it may have acted on: votes withheld
until it recovered (issue 9; after Castro and Liskov, TOCS 2002, section 4.3,
proactive recovery, and Alagappan et al., FAST 2018, protocol-aware recovery).

The storage reports at start that records this replica had synced may be gone
(``Start.damaged``: a lost or damaged tail, a log cut back to its intact
prefix). The ``pp``/``pc``/``view`` records it lost stood for messages it had
sent: a PREPARE for one batch at (v, n), a COMMIT, the P set of a
VIEW-CHANGE. Voting again from the older state could contradict them: a
PREPARE for another batch at the same (v, n) (with an equivocating primary two
batches prepare), a VIEW-CHANGE without a certificate it had (a committed
batch lost in the next view). With f Byzantine replicas besides, either breaks
agreement.

So the replica *withholds*: from the start step on (a durable ``recovering``
record, written before anything is sent, so a crash keeps it) it sends no
PRE-PREPARE, PREPARE, COMMIT, VIEW-CHANGE or NEW-VIEW. It still executes what
2f+1 others commit, signs CHECKPOINTs (execution is deterministic: nothing to
contradict), fetches certified state, and follows views on others' NEW-VIEWs.

It has recovered once its stable checkpoint is at or above a *target* beyond
every number it can have voted on: every vote it sent lay in its window
(h_old, h_old + L], and h_old was certified by 2f+1 CHECKPOINTs, so at least f
correct replicas other than itself had executed h_old. Any 2f+1 of the other
3f replicas include one of them, so the highest ``executed`` among the STATUS
messages of 2f+1 distinct peers is at least h_old, and the target is that,
rounded up to a checkpoint, plus L. Numbers at or below a stable checkpoint
are never voted on again, and a VIEW-CHANGE carrying that checkpoint makes
every lost certificate below the new view's min-s. Then the ``recovering``
record goes, and the replica votes as any other.

A faulty peer can make the target higher than needed (its STATUS lies): the
replica then waits longer, counted among the f faulty meanwhile, never
unsafe. Until the target is met the replica does not count towards any
quorum: with f Byzantine replicas as well, the cluster may stall (too many
faults), but gives no wrong answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from replicaio.protocols.pbft.messages import VotesWithheld

if TYPE_CHECKING:
    from replicaio.protocols.pbft.pbft import Pbft

RECOVERING_KEY = "recovering"


class Recovery:
    """Whether this replica withholds its votes, and when it stops."""

    def __init__(self, pbft: Pbft) -> None:
        self.pbft = pbft
        self.recovering = False
        self.reported: dict[int, int] = {}  # peer -> the first ``executed`` its STATUS gave
        self.target_seq: int | None = None  # fixed once 2f+1 peers reported

    def lost_acknowledged_state(self) -> bool:
        """Whether the storage reported lost writes at this start."""
        return self.pbft.context.node.storage_damaged

    def on_start(self) -> None:
        """In the start step, before anything is sent: mark the loss durably."""
        context = self.pbft.context
        if self.lost_acknowledged_state():
            self.begin()
        elif context.load(RECOVERING_KEY) is not None:
            self.recovering = True  # a restart before it recovered
            context.output(VotesWithheld(self.pbft.id, True))

    def begin(self) -> None:
        """Withhold votes from now on (durably)."""
        pbft = self.pbft
        if not self.recovering:
            pbft.count("pbft_storage_damaged_withholding")
            pbft.context.output(VotesWithheld(pbft.id, True))
        self.recovering = True
        self.reported.clear()
        self.target_seq = None
        pbft.context.persist(RECOVERING_KEY, 1)

    def on_status(self, source: int, executed: int) -> None:
        if not self.recovering or self.target_seq is not None:
            return
        if type(executed) is not int or executed < 0 or source in self.reported:
            return
        self.reported[source] = executed
        self.maybe_recovered()

    def target(self) -> int | None:
        """The stable checkpoint that ends the recovery (None: too few reports
        yet). Fixed by the first 2f+1 peers' reports: every report made after
        the damage bounds what was lost, so a later one would only chase the
        cluster's progress."""
        pbft = self.pbft
        if self.target_seq is None and len(self.reported) >= pbft.quorum:
            interval = pbft.params.checkpoint_interval
            highest = max(self.reported.values())
            self.target_seq = -(-highest // interval) * interval + pbft.params.log_size
            self.reported.clear()
            pbft.count("pbft_recovery_target_set")
        return self.target_seq

    def maybe_recovered(self) -> None:
        """Called when the stable checkpoint moves or a STATUS arrives."""
        pbft = self.pbft
        if not self.recovering:
            return
        target = self.target()
        if target is None or pbft.stable_seq < target:
            return
        self.recovering = False
        self.target_seq = None
        pbft.context.erase(RECOVERING_KEY)
        pbft.count("pbft_recovered_from_storage_damage")
        pbft.context.output(VotesWithheld(pbft.id, False))
        pbft.normal.on_recovered()
