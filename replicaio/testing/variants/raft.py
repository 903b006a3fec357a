"""Broken variants of Raft, each a subclass replacing one part of :class:`Raft`.

:class:`~replicaio.protocols.raft.raft.Raft` names its replaceable parts as
class attributes (``hard_state_type``, ``replication_type``, ``reads_type``);
a variant overrides one method of one part. :data:`RAFT_VARIANTS` lists them
with what each breaks and the property that catches it (see ``docs/raft.md``,
*Broken variants*, and ``tests/test_raft_mutants.py``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from replicaio.core.lines import Line
from replicaio.core.stream import GROUP_PATH
from replicaio.interfaces.ordering import NotLeader
from replicaio.protocols.raft.election import Election
from replicaio.protocols.raft.membership import Membership
from replicaio.protocols.raft.messages import (
    NO_NODE,
    UNREGISTERED,
    AppendEntries,
    AppendEntriesResponse,
    CommitNotice,
    LeaderCommitted,
    ReadConfirmed,
    ReadRequested,
)
from replicaio.protocols.raft.raft import Raft
from replicaio.protocols.raft.reads import PendingRead, Reads
from replicaio.protocols.raft.replication import SNAPSHOT, Progress, Replication
from replicaio.protocols.raft.snapshot import Snapshots
from replicaio.protocols.raft.state import HardState, RaftLog, Role
from replicaio.smr.api import Committed
from replicaio.smr.messages import ReadIndexReply
from replicaio.smr.replica import Pending, Replica
from replicaio.smr.sessions import SessionRecord, SessionTable


class LeaderWithoutNoop(Replication):
    """Commits an earlier term's entry by counting replicas (the Figure 8 bug,
    section 5.4.2). Like the paper's Figure 8 leader it appends no no-op when
    elected: with the no-op, acknowledgements of earlier entries carry it too
    and the bug stays latent."""

    def start_term(self) -> None:
        raft = self.raft
        raft.term_start_index = raft.log.last_index + 1

    def may_commit_by_counting(self, index: int) -> bool:
        return True


class CountLeaderUnsynced(Replication):
    """The leader counts its own copy of an entry as soon as it is appended,
    while it sends AppendEntries before its own write is durable: thesis
    10.2.1 without its condition. A commit may then rest on a copy the leader
    loses in a crash."""

    def self_match_index(self) -> int:
        return self.raft.log.last_index


class VoteInMemory(HardState):
    """``votedFor`` is kept in memory only: a restarted node votes twice in a term."""

    def persist(self, term: int, voted_for: int) -> None:
        super().persist(term, NO_NODE)


class FollowerReads(Reads):
    """A follower answers a read barrier with its own commit index at once,
    without read-index: a stale read once it lags the leader."""

    def read_on_follower(self) -> Line[int] | NotLeader:
        raft = self.raft
        read = PendingRead(self.new_id(), Line(raft.scheduler, "raft.read"))
        raft.context.output(ReadRequested(raft.id, read.read_id, raft.hard.term))
        raft.context.output(ReadConfirmed(raft.id, read.read_id, raft.commit_index))
        read.line.set(raft.commit_index)
        return read.line


class QuorumOneTooMany(Membership):
    """A quorum one voter larger than a majority (every voter of three, four
    of five): safe, since any two such quorums still intersect, but a cluster
    with f voters down stops. Only liveness demanded of a bare quorum (the
    simulator's ``degraded`` fault kind) catches it: plain swarms restart
    every crashed node at the heal."""

    def quorum(self) -> int:
        return min(len(self.config.voters), super().quorum() + 1)


class LeaseNeverLapses(Election):
    """BROKEN on purpose (the fix reverted): a learner or removed server, which
    runs no election timer, holds to the last leader it heard forever and
    ignores every vote request; when another configuration still counts its
    vote, no leader is elected again."""

    def in_lease(self) -> bool:
        raft = self.raft
        if raft.reads.lease.holds_votes():
            return True
        if not raft.params.check_quorum:
            return False
        if raft.role is Role.LEADER:
            return True
        return raft.leader_id != NO_NODE and (self.heard or self.heard_before)


class RaftLeaseNeverLapses(Raft):
    election_type = LeaseNeverLapses


class TransferRefused(Election):
    """A leader refuses every leadership transfer as if it named itself (the
    target check inverted: thesis 3.10 never starts). Nothing a client sees
    changes; only the operator's requests of a settled cluster (``operator``,
    ADR 0077) look at whether a transfer happens."""

    def transfer(self, target: int) -> str | None:
        return "already_leader"


class RaftTransferRefused(Raft):
    election_type = TransferRefused


class LearnerNeverPromoted(Membership):
    """A learner the operator asked to add as a voter is never promoted, however
    caught up (thesis 4.2.1's second step dropped): the configuration keeps
    one voter fewer than the operator asked for, which no client notices while
    a majority of the remaining voters is up (``operator``, ADR 0077)."""

    def caught_up(self, node: int) -> bool:
        return False


class RaftLearnerNeverPromoted(Raft):
    membership_type = LearnerNeverPromoted


class RaftQuorumOneTooMany(Raft):
    membership_type = QuorumOneTooMany


class RaftCommitPreviousTerm(Raft):
    replication_type = LeaderWithoutNoop


class RaftForgetVote(Raft):
    hard_state_type = VoteInMemory


class RaftFollowerReads(Raft):
    reads_type = FollowerReads


class RaftCountLeaderUnsynced(Raft):
    replication_type = CountLeaderUnsynced


class CommitUnsortedMatches(Replication):
    """BROKEN on purpose (the mutation sweep's ``replication.py`` 810, the sort
    dropped): the quorum-th largest match is taken from the matches above the
    commit index in the voters' order, unsorted, so the leader may commit an
    index only it holds whenever its own match sits at that place. Reached when
    a quorum's matches pile up above a commit index the term rule holds back
    (followers acknowledging an earlier term's entries apart from the new
    term's: ``raft:entries=1``). Caught at the commit by the simulator's
    ``commit_durable_quorum``, before any consequence."""

    def maybe_commit(self) -> None:
        raft = self.raft
        if raft.role is not Role.LEADER:
            return
        commit = raft.commit_index
        membership = raft.membership
        membership.refresh()
        identities = membership.member_identities
        above = []
        for voter in membership.voter_ids:
            registered = identities[voter]
            if voter == raft.id:
                if registered in (UNREGISTERED, raft.identity):
                    match = self.self_match_index()
                    if match > commit:
                        above.append(match)
                continue
            progress = self.progress.get(voter)
            if progress is not None and registered in (UNREGISTERED, progress.identity):
                match = progress.match_index
                if match > commit:
                    above.append(match)
        quorum = membership.quorum()
        if len(above) < quorum:
            return
        index = min(above) if len(above) == quorum else above[quorum - 1]  # (unsorted)
        if not self.may_commit_by_counting(index):
            return
        raft.context.output(
            LeaderCommitted(raft.id, raft.hard.term, index, raft.log.term_at(index) or 0)
        )
        raft.advance_commit(index)
        for progress in self.progress.values():
            progress.heartbeat_due = True
            progress.wakeup.notify()


class RaftCommitUnsortedMatches(Raft):
    replication_type = CommitUnsortedMatches


class NeverCompacts(Snapshots):
    """BROKEN on purpose (the mutation sweep's ``snapshot.py`` 71, the call
    dropped): SMR's snapshots are taken and handed over, and Raft never
    compacts its log to them, so the log and its records grow with every
    entry. Caught by the footprint's ``raft_log_uncompacted`` (the applied
    entries past the snapshot, bounded by SMR's snapshot cadence)."""

    def compact(self, index: int, snapshot: bytes) -> None:
        self.raft.count("raft_compactions")


class RaftNeverCompacts(Raft):
    snapshots_type = NeverCompacts


class PiecesNeverErased(RaftLog):
    """BROKEN on purpose (the mutation sweep's ``state.py`` 423, the erase
    dropped): a new snapshot's pieces are written, the replaced snapshot's are
    never erased, so every snapshot in pieces leaves garbage records behind.
    Reached only by snapshots larger than a piece (``raft:piece=64``); caught
    by the self-audit of Raft's durable records (``internal-consistency``)."""

    def persist_snapshot(
        self, index: int, term: int, digest: bytes, config: Any, data: bytes,
        base: tuple[int, int, bytes, Any],
    ) -> None:
        self.snapshot_pieces = 0  # (the erase loop of the parent finds none)
        super().persist_snapshot(index, term, digest, config, data, base)


class RaftPiecesNeverErased(Raft):
    log_type = PiecesNeverErased


class NoticeUnchecked(Replication):
    """BROKEN on purpose: a follower takes a ``CommitNotice``'s commit index
    up to its own last entry without the AppendEntries consistency check
    (Figure 2 (2) and (5): the index of the last *new* entry). A follower
    holding a stale suffix of an earlier term applies entries that were never
    committed."""

    def on_commit_notice(self, source: int, notice: CommitNotice) -> None:
        raft = self.raft
        if notice.term < raft.hard.term or not raft.accept_leader(notice.term, source):
            return
        commit = min(notice.leader_commit, raft.log.last_index)
        if commit > raft.commit_index:
            raft.advance_commit(commit)


class RaftNoticeUnchecked(Raft):
    replication_type = NoticeUnchecked


class EarlyRoundAnswerWithMatch(Reads):
    """BROKEN on purpose (ADR 0070 without its condition): a follower's early
    answer to a read round is its whole acknowledgement, the match of the
    entries the message carries included, sent before those entries are
    durable. The leader counts the early answer as a match: a commit may
    rest on a copy the follower then loses in a crash."""

    def __init__(self, raft: Raft) -> None:
        super().__init__(raft)
        self.answer_early = False

    def on_round(self, source: int, message: AppendEntries) -> None:
        self.answer_early = False
        term, round_ = message.term, message.round
        if term != self.heard_term:
            self.heard_term, self.heard_round = term, 0
        if round_ <= self.heard_round:
            return
        self.heard_round = round_
        if message.entries or self.unsynced:
            self.answer_early = True  # Replication.accept sends it before the sync
            if self.unsynced:
                self.learn_durable()


class AcceptBeforeFlush(Replication):
    """The acknowledgement :class:`EarlyRoundAnswerWithMatch` marked early."""

    def accept(self, source: int, message: AppendEntries, match: int) -> None:
        reads = self.raft.reads
        assert isinstance(reads, EarlyRoundAnswerWithMatch)
        if not reads.answer_early:
            super().accept(source, message, match)
            return
        reads.answer_early = False
        raft = self.raft
        raft.send(
            source,
            AppendEntriesResponse(
                raft.hard.term, True, match, message.prev_log_index, 0, 0, message.round,
                raft.identity,
            ),
            before_sync=True,
        )


class RaftEarlyRoundAnswerWithMatch(Raft):
    reads_type = EarlyRoundAnswerWithMatch
    replication_type = AcceptBeforeFlush


class JoinRoundInFlight(Reads):
    """BROKEN on purpose (ADR 0072 without its queue): a read asked while a
    round is in flight joins that round, its index taken now, after the
    round's messages left. An answer to the round may have been sent before
    the read was asked, by a follower that has since helped a newer leader
    commit a write the client saw: the read returns a state without it (a
    stale read)."""

    def start(self, read: PendingRead) -> None:
        raft = self.raft
        if self.round_sent and self.confirmed >= self.round:
            self.new_round()
            raft.replication.heartbeat_all()
        self.join(read)
        self.on_ack()


class RaftJoinRoundInFlight(Raft):
    reads_type = JoinRoundInFlight


class DropQueuedOnConfirm(Reads):
    """BROKEN on purpose (a liveness bug): when the round in flight is
    confirmed, the reads queued for the next round are dropped instead of
    starting it; their lines are never set and SMR times them out."""

    def on_ack(self) -> None:
        queued, self.queued = self.queued, []
        super().on_ack()
        if self.confirmed < self.round:
            self.queued = queued + self.queued
        elif queued:
            self.raft.count("variant_queued_reads_dropped", len(queued))


class RaftDropQueuedOnConfirm(Raft):
    reads_type = DropQueuedOnConfirm


class RestartSnapshotOnCompaction(Snapshots):
    """Not unsafe, wasteful (the behaviour before perf18): every compaction
    restarts a snapshot transfer in progress with the newer snapshot, and the
    outstanding chunk goes again whenever a heartbeat is due (every commit
    makes one due). Under load a lagging follower receives snapshot after
    snapshot (``tests/test_raft_snapshot.py`` counts them; run it with
    ``snapshot_trailing_entries_max=0``, as compaction was then)."""

    def send_chunk(self, peer: int, progress: Progress) -> None:
        held = progress.snapshot
        if held is not None and held.index != self.raft.log.snapshot_index:
            progress.snapshot = None  # start over with the newest snapshot
        elif progress.heartbeat_due:
            progress.snapshot_tick = None  # send the outstanding chunk again
        super().send_chunk(peer, progress)


class RaftRestartSnapshotOnCompaction(Raft):
    snapshots_type = RestartSnapshotOnCompaction


class SnapshotLabelledLatest(Snapshots):
    """BROKEN on purpose: a transfer the leader goes on with after compacting
    again sends the snapshot it started (the bytes) labelled with its latest
    snapshot's index, term, digest and configuration. A follower installs an
    older state as a newer index: it skips the batches in between."""

    def send_chunk(self, peer: int, progress: Progress) -> None:
        held = progress.snapshot
        log = self.raft.log
        if held is not None and progress.state == SNAPSHOT:
            held.index, held.term = log.snapshot_index, log.snapshot_term
            held.digest, held.config = log.snapshot_digest, log.snapshot_config
        super().send_chunk(peer, progress)


class RaftSnapshotLabelledLatest(Raft):
    snapshots_type = SnapshotLabelledLatest


class RaftTrustDamagedTail(Raft):
    """Ignores the storage's report of lost acknowledged writes: the node keeps
    its disk identity and votes and counts at once with a log and a vote that
    went back (what every node did before issue 9)."""

    def lost_acknowledged_state(self) -> bool:
        return False


class RaftOnlyFirstGroupRepairs(Raft):
    """On a node of several groups (``txn``, ``txn-kv``), only group 0's Raft
    honours the storage's report of lost acknowledged writes; every other
    group's replica trusts its log as if the disk were intact (a repair done
    for the node's first group only). Their storage is one, so the others lost
    the same suffix, and vote and count at once with a log and a vote that went
    back. Not a service of its own (with one group it is Raft); the
    transactional variant ``txn-raft-first-group-repairs`` builds its groups
    with it."""

    def lost_acknowledged_state(self) -> bool:
        path = self.context.path
        if len(path) >= 2 and path[0] == GROUP_PATH and path[1] != 0:
            return False
        return super().lost_acknowledged_state()


class ConfigStaleAfterTruncate(RaftLog):
    """BROKEN on purpose (a cache of ADR 0065 not refreshed): truncating a
    configuration entry away leaves ``config`` and ``config_index`` naming it,
    so the node keeps acting on a configuration no longer in its log."""

    def truncate_after(self, index: int) -> None:
        config, config_index = self.config, self.config_index
        super().truncate_after(index)
        self.config, self.config_index = config, config_index


class RaftConfigStaleAfterTruncate(Raft):
    log_type = ConfigStaleAfterTruncate


class UnboundedSessionsReplica(Replica):
    """BROKEN on purpose: the session table never evicts, so clients that come
    and go make every replica hold ever more sessions (``bounded-memory``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sessions = SessionTable(1 << 30)


class ForgetResultBytesSessions(SessionTable):
    """BROKEN on purpose: a table restored from a snapshot starts counting its
    results' bytes from zero, so a replica that caught up by snapshot evicts
    later than the others (``session_results_bytes_max``) and the replicas'
    tables diverge on the same log."""

    def replace(self, records: list[SessionRecord]) -> None:
        super().replace(records)
        self.result_bytes = 0


class ForgetResultBytesReplica(Replica):
    """SMR's replica with :class:`ForgetResultBytesSessions`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sessions = ForgetResultBytesSessions(
            self.constants.sessions_max, self.constants.session_results_bytes_max
        )


@dataclass(frozen=True, slots=True)
class RaftVariant:
    """A broken Raft: its protocol name, class, what it breaks, and the
    property a seed sweep of the simulator catches it by."""

    name: str
    raft_type: type[Raft]
    summary: str
    caught_by: str
    replica_type: type[Replica] = Replica  # SMR's replica, or a broken one


class StaleReadIndexReplica(Replica):
    """BROKEN on purpose (issue 7 §1, the fix reverted): read numbers restart at
    0 in every incarnation and a read-index reply is matched by its number
    alone, so a reply delayed across a restart completes a newer read at an
    older index (a stale read)."""

    def next_read_number(self) -> int:
        number = self.read_next
        self.read_next += 1
        return number

    def on_read_index_reply(self, source: int, message: ReadIndexReply) -> None:
        found = self.remote_reads.get(message.number)
        if found is None or found[1].ready:
            return
        found[1].set((message.index, message.leader))


class CommitForgetsPendingReplica(Replica):
    """BROKEN on purpose (ADR 0073 without its first condition): a commit wakes
    the housekeeper only for a snapshot to hand over, never for pending
    requests, so requests that waited for a window slot stay pending when the
    commit frees it, until some other request or forward arrives (a client's
    retry of a queued request wakes nothing): with no more traffic, never."""

    def on_commit(self, committed: Committed) -> None:
        # (on_commit itself never touches the queue: hiding it hides it from
        # the wake's condition alone)
        pending: deque[Pending] = self.pending
        self.pending = deque()
        try:
            super().on_commit(committed)
        finally:
            self.pending = pending


RAFT_VARIANTS: dict[str, RaftVariant] = {
    variant.name: variant
    for variant in (
        RaftVariant(
            "raft-commit-previous-term", RaftCommitPreviousTerm,
            "a leader commits a previous term's entry by counting replicas", "commit_rule",
        ),
        RaftVariant(
            "raft-forget-vote", RaftForgetVote, "votedFor is not persisted", "durable_state",
        ),
        RaftVariant(
            "raft-follower-reads", RaftFollowerReads,
            "followers serve reads without read-index", "linearizable_read",
        ),
        RaftVariant(
            "raft-stale-read-index", Raft,
            "read-index replies matched by a number reused across restarts",
            "linearizable", StaleReadIndexReplica,
        ),
        RaftVariant(
            "raft-unbounded-sessions", Raft,
            "the session table never evicts (clients that come and go)",
            "bounded-memory", UnboundedSessionsReplica,
        ),
        RaftVariant(
            "raft-session-bytes-forgotten", Raft,
            "a session table restored from a snapshot forgets its results' bytes "
            "(run with results=64,snapshot=4: replicas evict sessions differently)",
            "internal-consistency", ForgetResultBytesReplica,
        ),
        RaftVariant(
            "raft-count-leader-unsynced", RaftCountLeaderUnsynced,
            "the leader counts its own unsynced entry toward a commit (thesis 10.2.1)",
            "commit_durable_quorum",
        ),
        RaftVariant(
            "raft-notice-unchecked", RaftNoticeUnchecked,
            "a follower takes a CommitNotice's commit index without the AppendEntries "
            "consistency check", "state_machine_safety",
        ),
        RaftVariant(
            "raft-quorum-one-too-many", RaftQuorumOneTooMany,
            "a quorum one voter larger than a majority: the cluster stops with f nodes down",
            "liveness",
        ),
        RaftVariant(
            "raft-snapshot-labelled-latest", RaftSnapshotLabelledLatest,
            "a snapshot transfer that outlives a compaction sends the old state under the "
            "new snapshot's index (run with snapshot=4)", "node-raised",
        ),
        RaftVariant(
            "raft-config-stale-after-truncate", RaftConfigStaleAfterTruncate,
            "a configuration entry truncated away stays in force (a stale cache; run with "
            "--membership-every)", "internal-consistency",
        ),
        RaftVariant(
            "raft-early-round-answer-with-match", RaftEarlyRoundAnswerWithMatch,
            "a follower's early answer to a read round acknowledges the entries it "
            "carries before they are durable, and the leader counts it (ADR 0070 "
            "without its condition; run with the sync fault)", "commit_durable_quorum",
        ),
        RaftVariant(
            "raft-nonvoter-lease-never-lapses", RaftLeaseNeverLapses,
            "a non-voting follower never lets its leader lease lapse and ignores vote "
            "requests forever (run with the slow fault kind)", "liveness",
        ),
        RaftVariant(
            "raft-join-round-in-flight", RaftJoinRoundInFlight,
            "a read asked while a read round is in flight joins that round, its index "
            "taken after the round's messages left (ADR 0072 without its queue)",
            "linearizable",
        ),
        RaftVariant(
            "raft-drop-queued-reads", RaftDropQueuedOnConfirm,
            "the reads queued for the next read round are dropped when the round in "
            "flight is confirmed (a liveness bug the clients' retries hide)", "prompt",
        ),
        RaftVariant(
            "raft-commit-forgets-pending", Raft,
            "a commit wakes SMR's housekeeper only for a snapshot, not for requests "
            "that waited for the window (ADR 0073 without its condition)", "prompt",
            CommitForgetsPendingReplica,
        ),
        RaftVariant(
            "raft-transfer-refused", RaftTransferRefused,
            "the leader refuses every leadership transfer (thesis 3.10 never starts; run "
            "with --membership-every)", "operator",
        ),
        RaftVariant(
            "raft-learner-never-promoted", RaftLearnerNeverPromoted,
            "a learner added as a voter is never promoted (thesis 4.2.1's second step "
            "dropped; run with --membership-every)", "operator",
        ),
        RaftVariant(
            "raft-commit-unsorted-matches", RaftCommitUnsortedMatches,
            "the quorum-th largest match taken from the matches unsorted: a leader commits "
            "an index only it holds (the mutation sweep's replication.py 810; run with "
            "entries=1)", "commit_durable_quorum",
        ),
        RaftVariant(
            "raft-never-compacts", RaftNeverCompacts,
            "SMR's snapshots are handed over and Raft never compacts its log to them "
            "(the mutation sweep's snapshot.py 71)", "bounded-memory",
        ),
        RaftVariant(
            "raft-pieces-never-erased", RaftPiecesNeverErased,
            "a replaced snapshot's pieces are never erased (the mutation sweep's state.py "
            "423; run with piece=64)", "internal-consistency",
        ),
        RaftVariant(
            "raft-trust-damaged-tail", RaftTrustDamagedTail,
            "a node whose storage lost acknowledged writes votes and counts at once",
            "durable_state",
        ),
    )
}
