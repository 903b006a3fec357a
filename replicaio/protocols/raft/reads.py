"""Linearizable reads through read-index (thesis 6.4), no log entry needed.

A read barrier on the leader:

1. waits until the leader has committed an entry of its own term (its
   no-op), so that its commit index covers every entry committed before
   it was elected;
2. takes the commit index as the read index;
3. confirms that it is still the leader: a heartbeat *round* that started
   after step 2 is answered by a majority of the voters (any answer in
   the leader's term counts: the peer had not moved to a newer term);
4. hands the read index to SMR, which serves the read once it has applied
   that far.

Rounds are numbered per leader term; every AppendEntries and
InstallSnapshot carries the current round and followers echo it. Reads
asked before a round's first message is sent share that round, so a burst
of reads costs one heartbeat round.

One round in flight at a time (ADR 0072, etcd's read loop). A read asked
once the current round's first message has left, while a quorum has not yet
answered it, waits in ``queued``: it takes no index yet. When a quorum has
answered the round in flight (``on_ack``), the next round starts at once for
every queued read, and their read index is the commit index of that moment:
at least the commit index when each was asked, and taken before any message
of the new round leaves, so steps 2 and 3 hold for them as for the others.
A round whose messages or answers are lost holds them up for at most a
heartbeat: a heartbeat with reads queued starts their round (its messages
are the heartbeat's own). What a round's number means then: an answer
echoing round ``r`` proves the follower was in the leader's term after
every round up to ``r`` started (rounds are numbered in order and a message
carries the round current when it leaves), so it confirms the reads of
every round up to ``r`` and none of a newer one; a late answer to the round
a heartbeat replaced confirms only that round's reads. Under a steady
stream of reads the leader thus runs one round per round trip (plus at
most one per heartbeat) instead of one per batch of reads. Queued reads
count toward ``reads_pending_max`` and are dropped on step-down like the
others. Lease mode is unchanged: every heartbeat starts a round.

Lease reads (``RaftParams.read_lease``, ``lease.py``) skip step 3 while the
leader holds a lease: every heartbeat then starts a round, and a majority's
answers to a round extend the lease. They assume a bound on clock drift.

A leader that steps down drops its pending reads: their lines are never
set and SMR times them out (the ``Ordering.read_barrier`` contract).

A follower answers a round before its flush (ADR 0070). Its answer to an
AppendEntries leaves only once the entries it carries (and every earlier
write) are durable, because it claims a match; under a mixed load a round
mostly rides on entries, so a read waited as long as a write. What the round
needs is only "this follower is still in the leader's term": at the first
message of a new round, when the answer would wait for a flush (the message
carries entries, or entries appended before may not be durable yet) and the
follower's term and vote are durable, it also sends a :class:`ReadRoundAck`
marked to leave before the sync. The leader counts it for the round (and
check-quorum), never toward a match.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from replicaio.core.lines import Line
from replicaio.interfaces.ordering import NotLeader
from replicaio.protocols.raft.lease import Lease
from replicaio.protocols.raft.messages import (
    NO_NODE,
    AppendEntries,
    ReadConfirmed,
    ReadRequested,
    ReadRoundAck,
)
from replicaio.protocols.raft.state import Role

if TYPE_CHECKING:
    from replicaio.protocols.raft.raft import Raft


class PendingRead:
    __slots__ = ("index", "line", "read_id", "round")

    def __init__(self, read_id: int, line: Line[int]) -> None:
        self.read_id = read_id
        self.line = line
        self.index = 0
        self.round = 0


class Reads:
    """The leader's read-index rounds."""

    def __init__(self, raft: Raft) -> None:
        self.raft = raft
        self.round = 0
        self.round_sent = True  # the current round's first message has gone out
        self.confirmed = 0  # the newest round a quorum answered, this term
        self.waiting_commit: list[PendingRead] = []  # step 1
        self.queued: list[PendingRead] = []  # asked while a round is in flight
        self.confirming: deque[PendingRead] = deque()  # step 3, in round order
        self.next_id = 0
        self.lease = Lease(raft)
        # Follower side (ADR 0070): the latest round heard in term heard_term;
        # appends since the last known sync (writes counts them); the term and
        # vote known durable; the scope of the task that learns the latter two.
        self.heard_term = 0
        self.heard_round = 0
        self.writes = 0
        self.unsynced = False
        self.durable_hard: tuple[int, int] | None = None
        self.learning: object | None = None

    def new_id(self) -> int:
        # Unique across restarts of this node (the incarnation is durable).
        self.next_id += 1
        return (self.raft.context.node.incarnation << 32) | self.next_id

    # -- the barrier ------------------------------------------------------------------

    def read_barrier(self) -> Line[int] | NotLeader:
        raft = self.raft
        if raft.role is not Role.LEADER:
            return self.read_on_follower()
        pending = len(self.waiting_commit) + len(self.queued) + len(self.confirming)
        if pending >= raft.params.reads_pending_max:
            raft.count("bound_raft_reads_pending_max")
            return NotLeader(NO_NODE)
        read = PendingRead(self.new_id(), Line(raft.scheduler, "raft.read"))
        raft.context.output(ReadRequested(raft.id, read.read_id, raft.hard.term))
        if self.lease.valid():
            raft.count("raft_reads_lease")
            raft.context.output(ReadConfirmed(raft.id, read.read_id, raft.commit_index))
            read.line.set(raft.commit_index)
        elif raft.commit_index < raft.term_start_index:
            self.waiting_commit.append(read)
        else:
            self.start(read)
        return read.line

    def read_on_follower(self) -> Line[int] | NotLeader:
        """Only a leader serves linearizable reads: a follower's commit index may
        lag what is already committed (thesis 6.4)."""
        return NotLeader(self.raft.leader_id)

    def start(self, read: PendingRead) -> None:
        """Step 2 for a read past step 1: it joins the current round if no message
        of that round has left yet, else it starts a round if none is in
        flight, else it waits for the next round (etcd's read loop: one round
        in flight at a time)."""
        raft = self.raft
        assert raft.commit_index >= raft.term_start_index
        if self.round_sent:
            if self.confirmed < self.round:
                raft.count("raft_reads_queued")
                self.queued.append(read)
                return
            self.new_round()
            raft.replication.heartbeat_all()
        self.join(read)
        self.on_ack()  # a single voter confirms at once

    def join(self, read: PendingRead) -> None:
        """The read's index, taken now: before any message of the current round
        leaves (the caller makes sure)."""
        read.index = self.raft.commit_index
        read.round = self.round
        self.confirming.append(read)

    def new_round(self) -> None:
        """Start a round; the queued reads join it (their index taken now, at
        least the commit index when each was asked)."""
        self.round += 1
        self.round_sent = False
        self.raft.count("raft_read_rounds")
        self.lease.on_round_started(self.round)
        if self.queued:
            queued, self.queued = self.queued, []
            for read in queued:
                self.join(read)

    def on_heartbeat(self) -> None:
        """The leader's heartbeat is due (its messages follow at once). In lease
        mode it starts a round, so that the answers extend the lease; with
        reads queued it starts their round, so that a round whose messages or
        answers were lost holds them up for at most a heartbeat (the older
        round's reads are confirmed by an answer to the newer one as well)."""
        if self.round_sent and (self.queued or self.lease.enabled):
            self.new_round()
            self.on_ack()  # a single voter confirms at once

    def take_round(self) -> int:
        """The round to stamp on an outgoing AppendEntries or InstallSnapshot."""
        self.round_sent = True
        return self.round

    # -- confirmation ----------------------------------------------------------------

    def on_ack(self) -> None:
        """A peer answered a round: confirm the reads a majority has answered."""
        raft = self.raft
        if raft.role is not Role.LEADER or not (
            self.confirming or self.queued or self.lease.enabled
        ):
            return
        rounds = []
        for voter in raft.membership.voters():
            if voter == raft.id:
                if raft.membership.counts(voter, raft.identity):
                    rounds.append(self.round)
                continue
            progress = raft.replication.progress.get(voter)
            if progress is not None and raft.membership.counts(voter, progress.identity):
                rounds.append(progress.acked_round)
        quorum = raft.membership.quorum()
        if len(rounds) < quorum:
            return
        rounds.sort(reverse=True)
        confirmed = rounds[quorum - 1]
        if confirmed > self.confirmed:
            self.confirmed = confirmed
        self.lease.on_confirmed(confirmed)
        while self.confirming and self.confirming[0].round <= confirmed:
            read = self.confirming.popleft()
            raft.context.output(ReadConfirmed(raft.id, read.read_id, read.index))
            read.line.set(read.index)
        if self.queued and confirmed >= self.round:
            # The round in flight is confirmed: the reads asked meanwhile go in the
            # next one, started now.
            self.new_round()
            raft.replication.heartbeat_all()
            self.on_ack()  # a single voter confirms at once

    def on_commit(self) -> None:
        raft = self.raft
        if raft.role is not Role.LEADER or raft.commit_index < raft.term_start_index:
            return
        waiting, self.waiting_commit = self.waiting_commit, []
        for read in waiting:
            self.start(read)

    def on_read_round_ack(self, source: int, ack: ReadRoundAck) -> None:
        """A follower's early answer to a round: counted for the round only (its
        AppendEntriesResponse, with the match, follows after its flush)."""
        if ack.round < 0 or ack.term < 0:
            self.raft.count("raft_rejected_negative")
            return
        self.raft.replication.leader_progress(source, ack.term, ack.round, ack.identity)

    # -- follower: a round answered before the flush (ADR 0070) ----------------------

    def on_round(self, source: int, message: AppendEntries) -> None:
        """An AppendEntries of the term we follow ``source`` in (before Figure 2's
        log checks; its answer, accept or reject, echoes the round after the
        flush): at the first message of a new round, answer the round before
        the sync if that answer would otherwise wait for a flush and our term
        and vote are durable (a term or vote not yet durable may be forgotten
        by a crash, and nothing may be said in it before)."""
        raft = self.raft
        term, round_ = message.term, message.round
        if term != self.heard_term:
            self.heard_term, self.heard_round = term, 0
        if round_ <= self.heard_round:
            return
        self.heard_round = round_
        mode = raft.params.read_round_ack
        if mode == 0 or not (message.entries or (self.unsynced and mode > 1)):
            return  # nothing to flush (or off): the answer leaves as soon
        hard = raft.hard
        if self.durable_hard != (hard.term, hard.voted_for):
            self.learn_durable()
            return
        raft.count("raft_read_rounds_answered_early")
        raft.send(source, ReadRoundAck(term, round_, raft.identity), before_sync=True)

    def on_appended(self) -> None:
        """A follower appended entries (not durable before the step's sync)."""
        self.writes += 1
        self.unsynced = True
        if self.learning is not self.raft.role_scope:
            self.learn_durable()

    def learn_durable(self) -> None:
        """Learn that the term, vote and appends of now are durable: one task at a
        time in the role's scope, one timer of a heartbeat per turn (the host
        arms a timer only once the writes of the step that armed it, and of
        every earlier step, are synced: when it fires, what was written before
        is durable, and if nothing was appended meanwhile, every append is).
        Under a steady load the appends go on and the task keeps one timer a
        heartbeat; it ends after the first quiet one."""
        scope = self.raft.role_scope
        if scope is None or self.learning is scope:
            return
        self.learning = scope
        scope.spawn(self.durable_after_quiet(), "raft.read_durable")

    async def durable_after_quiet(self) -> None:
        raft = self.raft
        while True:
            hard = raft.hard
            term, voted_for, writes = hard.term, hard.voted_for, self.writes
            await raft.context.sleep(raft.params.heartbeat_us)
            self.durable_hard = (term, voted_for)
            if self.writes == writes:
                self.unsynced = False
                break
        self.learning = None

    # -- leadership ------------------------------------------------------------------

    def on_become_leader(self) -> None:
        self.round = 0
        self.confirmed = 0
        self.round_sent = True
        self.lease.on_become_leader()

    def on_step_down(self) -> None:
        dropped = len(self.waiting_commit) + len(self.queued) + len(self.confirming)
        if dropped:
            self.raft.count("raft_reads_dropped_stepped_down", dropped)
        self.waiting_commit = []
        self.queued = []
        self.confirming.clear()
