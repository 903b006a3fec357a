"""Log replication (section 5.3), the commit rule (5.4.2), and the leader's
per-follower pipelines.

Leader side. Becoming leader appends a no-op of the new term (so that the
commit rule can commit the entries it inherited, and read-index can start)
and spawns, in the leader's role scope, one :meth:`Replication.replicate`
task per peer plus one :meth:`Replication.heartbeat_loop`. Stepping down
cancels them all. Each peer has a :class:`Progress` in one of three states
(after etcd raft's progress tracking):

* ``PROBE``: the leader does not know where the follower's log matches its
  own; one AppendEntries in flight, re-sent on every heartbeat, backing
  off on rejection by the follower's conflict hints (fast back-off: a whole
  term per round trip instead of one entry);
* ``REPLICATE``: the match is known; entries stream optimistically with up
  to ``inflight_max`` AppendEntries in flight (pipelining). Messages still
  unacknowledged after a whole heartbeat interval are taken as lost: back
  to ``PROBE`` from the match (Raft does its own retransmission);
* ``SNAPSHOT``: the entries the follower needs are compacted away; the
  snapshot goes chunk by chunk (``snapshot.py``).

Follower side: :meth:`Replication.on_append_entries` is Figure 2's receiver
rules, with the conflict hints in the rejection.

The commit rule (:meth:`Replication.maybe_commit`): the leader commits the
highest index stored on a quorum of the voters *only if that entry is of
the current term*; earlier entries are committed indirectly (Figure 8).

The leader's own disk write in parallel (thesis 10.2.1). The leader hands
its AppendEntries to the host *before* its own writes are durable
(``before_sync`` sends, ``replicaio.core.effects``), so its fsync and the
followers' overlap, and it counts its own copy in the commit rule only up to
:attr:`Replication.synced_index`: what :meth:`Replication.durability_loop`
learned is durable (a timer of delay 0 is armed only after the sync of the
step that set it). Sending entries the leader may still lose is safe: the
followers' copies are ordinary uncommitted entries, and nothing is counted
as stored on the leader before it is. AppendEntries go before the sync only
once the no-op of the term is durable (so the term and vote they carry are),
and they carry a commit index computed only from durable copies.
When the commit index advances, every follower hears of it at once (an
AppendEntries, empty if need be), not at the next heartbeat. With
``RaftParams.commit_notice``, a follower whose match is known and that has
no new entries to receive hears it by a :class:`CommitNotice` instead, which
it does not answer: the answer to an entry-less AppendEntries tells the
leader nothing it needs for the commit (the entries' own acknowledgements
do that), and heartbeats keep carrying the read rounds, the check-quorum
activity and the match of a follower whose acknowledgements were lost.
With ``RaftParams.commit_notice_delay_us`` the notice waits that long for
the next entries to that follower to carry the commit index instead (under
a steady load they nearly always do, and the follower reads one frame per
batch instead of two); a notice is sent only if none did. Except where a
client waits on the follower (:meth:`Replication.hurry`, called by SMR for a
write the follower relayed or a read index it asked for): a commit covering
what that client waits for is told at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from replicaio.core.lines import Line
from replicaio.core.scheduler import Scheduler, Task
from replicaio.interfaces.ordering import NotLeader
from replicaio.protocols.raft.messages import (
    NO_NODE,
    UNREGISTERED,
    AppendEntries,
    AppendEntriesResponse,
    CommitNotice,
    Config,
    Entry,
    FollowerLogRegressed,
    LeaderCommitted,
)
from replicaio.protocols.raft.state import Role

if TYPE_CHECKING:
    from replicaio.protocols.raft.raft import Raft

PROBE, REPLICATE, SNAPSHOT = "probe", "replicate", "snapshot"


class Signal:
    """A resettable wake-up built from one-shot lines: ``notify`` wakes the
    task waiting in ``wait`` (or the next one to wait, if none waits now)."""

    __slots__ = ("line", "pending", "scheduler")

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.line: Line[None] | None = None
        self.pending = False

    def notify(self) -> None:
        line = self.line
        if line is None:
            self.pending = True
            return
        self.line = None
        line.set(None)

    def wait(self) -> Line[None]:
        line: Line[None] = Line(self.scheduler, "raft.wakeup")
        if self.pending:
            self.pending = False
            line.set(None)
        else:
            self.line = line
        return line


class SentSnapshot:
    """The snapshot a leader is sending one peer: held until installed, however
    often the leader compacts meanwhile (bytes are immutable: no copy)."""

    __slots__ = ("config", "data", "digest", "index", "term")

    def __init__(self, index: int, term: int, digest: bytes, config: Config, data: bytes) -> None:
        self.index = index
        self.term = term
        self.digest = digest
        self.config = config
        self.data = data


class Progress:
    """What the leader knows of one peer's log (Figure 2's nextIndex and
    matchIndex, plus pipeline and snapshot-transfer state)."""

    __slots__ = (
        "acked_round",
        "commit_due",
        "heartbeat_due",
        "hurry_index",
        "identity",
        "inflight",
        "match_index",
        "next_index",
        "notice_due",
        "probe_tick",
        "recent_active",
        "snapshot",
        "snapshot_offset",
        "snapshot_tick",
        "state",
        "wakeup",
    )

    def __init__(self, scheduler: Scheduler, next_index: int) -> None:
        self.match_index = 0
        self.next_index = next_index
        self.state = PROBE
        # (last index carried, heartbeat tick it was sent at), oldest first
        self.inflight: deque[tuple[int, int]] = deque()
        self.probe_tick: int | None = None  # tick the outstanding probe was sent at
        self.heartbeat_due = True
        self.commit_due = False  # a new commit index to tell (RaftParams.commit_notice)
        self.notice_due = False  # ... by a CommitNotice if nothing else carries it now
        # A client of the peer waits for the commit of the entries up to here (hurry).
        self.hurry_index = 0
        self.recent_active = False
        self.acked_round = 0
        self.identity = 0  # the disk identity the peer last answered with
        self.snapshot: SentSnapshot | None = None  # the transfer in progress (SNAPSHOT)
        self.snapshot_offset = 0
        self.snapshot_tick: int | None = None
        self.wakeup = Signal(scheduler)

    def become_probe(self, next_index: int) -> None:
        self.state = PROBE
        self.next_index = max(next_index, self.match_index + 1)
        self.inflight.clear()
        self.probe_tick = None
        self.snapshot = None


class Replication:
    """AppendEntries on both sides, the peers' progress, and the commit rule."""

    # Exactly the attributes its ``.pxd`` declares, in that order: compiled it has
    # no ``__dict__`` (a ``cpdef`` method's override check is then free, ADR 0041),
    # and interpreted it refuses an undeclared attribute just the same. Unsorted: the
    # adversary's probe reads them in this order (sim/adversary.py: attributes).
    __slots__ = (  # noqa: RUF023
        "raft", "progress", "peer_tasks", "tick", "synced_index", "appended", "committed",
        "notice_wait",
    )

    def __init__(self, raft: Raft) -> None:
        self.raft = raft
        self.progress: dict[int, Progress] = {}
        self.peer_tasks: dict[int, Task[None]] = {}
        self.tick = 0  # leader heartbeats so far in this term
        # The leader's log is durable up to here (thesis 10.2.1; leaders only).
        self.synced_index = 0
        self.appended = Signal(raft.scheduler)  # the leader appended: learn when durable
        self.committed = Signal(raft.scheduler)  # a commit index to tell later (notice_loop)
        # notice_loop's timer and line while it holds a commit index, else None
        self.notice_wait: tuple[int, Line[None]] | None = None

    # -- becoming and leaving leader ---------------------------------------------------

    def become_leader(self) -> None:
        """Figure 2, leaders: "Upon election: send initial empty AppendEntries
        (heartbeat) to each server"; append a no-op of the new term (section 8)."""
        raft = self.raft
        self.progress = {}
        self.peer_tasks = {}
        self.tick = 0
        self.synced_index = 0  # nothing counted before the first sync of the term
        self.appended = Signal(raft.scheduler)
        self.committed = Signal(raft.scheduler)
        self.notice_wait = None
        tasks: list[Coroutine[Any, Any, None]] = [self.heartbeat_loop(), self.durability_loop()]
        if raft.params.commit_notice and raft.params.commit_notice_delay_us:
            tasks.append(self.notice_loop())
        tasks += raft.election.leader_tasks()
        raft.start_role(Role.LEADER, tasks)
        raft.reads.on_become_leader()
        self.sync_peers()  # probes start at the no-op, appended next
        self.start_term()
        raft.membership.on_become_leader()
        self.maybe_commit()

    def start_term(self) -> None:
        """Section 8: a new leader appends a no-op of its term; committing it
        commits every earlier entry and marks where the term starts (reads
        wait for it, thesis 6.4)."""
        raft = self.raft
        raft.log.append([Entry(raft.hard.term, b"")])
        raft.term_start_index = raft.log.last_index
        self.appended.notify()

    def on_step_down(self) -> None:
        self.progress = {}
        self.peer_tasks = {}
        self.notice_wait = None

    def sync_peers(self) -> None:
        """One replication task per peer of the latest configuration."""
        raft = self.raft
        assert raft.role is Role.LEADER and raft.role_scope is not None
        peers = raft.membership.peers()
        for peer in list(self.peer_tasks):
            if peer not in peers:
                self.peer_tasks.pop(peer).cancel()
                del self.progress[peer]
        for peer in peers:
            if peer not in self.peer_tasks:
                self.progress[peer] = Progress(raft.scheduler, raft.log.last_index + 1)
                self.progress[peer].identity = raft.membership.identities_seen.get(peer, 0)
                self.peer_tasks[peer] = raft.role_scope.spawn(
                    self.replicate(peer), f"raft.replicate.{peer}"
                )
        self.notify_all()

    def notify_all(self) -> None:
        for progress in self.progress.values():
            progress.wakeup.notify()

    def hurry(self, peer: int) -> None:
        """A client of ``peer`` waits for the commit of every entry appended so
        far (SMR relayed its write here, or gave it a read index): each commit up
        to there goes to it at once, not held ``commit_notice_delay_us`` for
        entries to carry it, and so does a commit held now. Nothing on a
        follower, or for a replica that is not a peer."""
        progress = self.progress.get(peer)
        if progress is None:
            return
        progress.hurry_index = self.raft.log.last_index
        if progress.commit_due:
            progress.notice_due = True
            progress.wakeup.notify()

    def match_index(self, peer: int) -> int:
        progress = self.progress.get(peer)
        return 0 if progress is None else progress.match_index

    # -- proposals -------------------------------------------------------------------

    def propose(self, batch: bytes) -> NotLeader | None:
        raft = self.raft
        if raft.role is not Role.LEADER:
            return NotLeader(raft.leader_id)
        if raft.election.transfer_target != NO_NODE:
            raft.count("raft_proposals_refused_transferring")
            return NotLeader(NO_NODE)
        if raft.log.last_index - raft.commit_index >= raft.params.pending_proposals_max:
            # Accepted-but-lost is within the contract: the client retries.
            raft.count("bound_raft_pending_proposals_max")
            return None
        raft.log.append([Entry(raft.hard.term, batch)])
        self.appended.notify()
        self.notify_all()
        self.maybe_commit()
        return None

    # -- leader tasks ----------------------------------------------------------------

    async def durability_loop(self) -> None:
        """Learn how far the leader's own log is durable: after each append, a
        timer of delay 0 that the host arms only once the writes of the step
        that armed it (and of every earlier step) are synced."""
        raft = self.raft
        while True:
            await self.appended.wait()
            index = raft.log.last_index
            await raft.context.sleep(0)
            if index > self.synced_index:
                self.synced_index = index
                self.maybe_commit()

    async def notice_loop(self) -> None:
        """Tell the followers a commit index that no AppendEntries carried
        within ``commit_notice_delay_us`` of the commit (``send_to`` clears
        ``commit_due`` whenever it sends one, and ends the wait early once no
        follower has a commit index left to hear: the timer never fires)."""
        raft = self.raft
        committed = self.committed
        while True:
            await committed.wait()
            timer_id, line = raft.context.timer(raft.params.commit_notice_delay_us)
            self.notice_wait = (timer_id, line)
            await line
            self.notice_wait = None
            committed.pending = False  # every commit so far is told below
            for progress in self.progress.values():
                if progress.commit_due:
                    progress.notice_due = True
                    progress.wakeup.notify()

    def may_send_before_sync(self) -> bool:
        """Whether this leader's AppendEntries may leave before its writes are
        durable: once the no-op of its term is (then its term and vote are)."""
        return self.synced_index >= self.raft.term_start_index > 0

    async def heartbeat_loop(self) -> None:
        """Every ``heartbeat_us``: a heartbeat to each peer, and loss detection."""
        raft = self.raft
        while True:
            self.tick += 1
            raft.reads.on_heartbeat()
            for progress in self.progress.values():
                self.on_tick(progress)
            await raft.context.sleep(raft.params.heartbeat_us)

    def on_tick(self, progress: Progress) -> None:
        lost_before = self.tick - 1  # sent before the previous heartbeat: a full interval
        inflight = progress.inflight
        if progress.state == REPLICATE and inflight and inflight[0][1] < lost_before:
            self.raft.count("raft_append_entries_presumed_lost")
            progress.become_probe(progress.match_index + 1)
        progress.heartbeat_due = True
        progress.wakeup.notify()

    def heartbeat_all(self) -> None:
        """Send a heartbeat to every peer now (a read-index round)."""
        for progress in self.progress.values():
            progress.heartbeat_due = True
            progress.wakeup.notify()

    async def replicate(self, peer: int) -> None:
        """The leader's pipeline to one peer: send what the window allows, then
        wait for an acknowledgement, a new entry or a heartbeat."""
        progress = self.progress[peer]
        while True:
            self.send_to(peer, progress)
            await progress.wakeup.wait()

    def send_to(self, peer: int, progress: Progress) -> None:
        raft = self.raft
        log = raft.log
        if progress.state == SNAPSHOT or progress.next_index <= log.base_index:
            raft.snapshots.send_chunk(peer, progress)
        elif progress.state == PROBE:
            if progress.probe_tick is None or progress.heartbeat_due:
                self.send_append(peer, progress)
                progress.probe_tick = self.tick
        else:
            sent = False
            while progress.next_index <= log.last_index:
                if len(progress.inflight) >= raft.params.inflight_max:
                    raft.count("bound_raft_inflight_max")
                    break
                last = self.send_append(peer, progress)
                progress.inflight.append((last, self.tick))
                progress.next_index = last + 1
                sent = True
            if progress.heartbeat_due and not sent:
                if self.answer_needed(progress):
                    self.send_append(peer, progress, empty=True)
                else:
                    self.send_commit_notice(peer, progress)
            elif progress.commit_due and not sent:
                if not progress.notice_due:
                    return  # held for entries to carry it (commit_notice_delay_us)
                self.send_commit_notice(peer, progress)
        progress.heartbeat_due = False
        if progress.commit_due:
            progress.commit_due = False
            progress.notice_due = False
            if self.notice_wait is not None:
                self.end_notice_wait()

    def end_notice_wait(self) -> None:
        """notice_loop's wait, ended once every follower has heard the commit
        index (a timer step that would find nothing to tell, saved)."""
        for progress in self.progress.values():
            if progress.commit_due:
                return
        wait = self.notice_wait
        assert wait is not None
        self.notice_wait = None
        self.raft.context.end_timer(wait[0], wait[1])

    def answer_needed(self, progress: Progress) -> bool:
        """Whether a heartbeat to a follower in ``REPLICATE`` must be answered
        (an entry-less AppendEntries) or may go as an unanswered
        :class:`CommitNotice`: its answer is needed unless it could change
        nothing here, that is unless commit notices are on, every entry sent
        to the follower is acknowledged up to our last index, no read-index
        round or lease waits on its answer (it has answered the current
        round), and check-quorum has heard from it in this interval (without
        check-quorum every heartbeat is answered, as before). A follower that
        lost entries it had acknowledged is then found by the first heartbeat
        of the next check-quorum interval (docs/raft.md, "Heartbeats that
        need no answer")."""
        raft = self.raft
        params = raft.params
        return not (
            params.commit_notice
            and params.check_quorum
            and progress.recent_active
            and not progress.inflight
            and progress.match_index == raft.log.last_index
            and raft.reads.round <= progress.acked_round
        )

    def send_append(self, peer: int, progress: Progress, *, empty: bool = False) -> int:
        """One AppendEntries from ``progress.next_index``; returns the last index it carries."""
        raft = self.raft
        log = raft.log
        params = raft.params
        prev = progress.next_index - 1
        prev_term = log.term_at(prev)
        assert prev_term is not None, "entries after the snapshot are in memory"
        entries: tuple[Entry, ...] = ()
        if not empty and progress.next_index <= log.last_index:
            entries = log.slice(
                progress.next_index, params.entries_per_message_max, params.message_bytes_max
            )
            if prev + len(entries) < log.last_index:
                if len(entries) == params.entries_per_message_max:
                    raft.count("bound_raft_entries_per_message_max")
                else:
                    raft.count("bound_raft_message_bytes_max")
        raft.send(
            peer,
            AppendEntries(
                raft.hard.term, raft.id, prev, prev_term, entries, raft.commit_index,
                raft.reads.take_round(),
            ),
            before_sync=self.may_send_before_sync(),
        )
        return prev + len(entries)

    def send_commit_notice(self, peer: int, progress: Progress) -> None:
        """The commit index, unanswered, to a follower in ``REPLICATE`` that
        has nothing new to receive (checked there like an empty AppendEntries
        from ``progress.next_index``)."""
        raft = self.raft
        prev = progress.next_index - 1
        prev_term = raft.log.term_at(prev)
        assert prev_term is not None, "entries after the snapshot are in memory"
        raft.send(
            peer,
            CommitNotice(raft.hard.term, raft.id, prev, prev_term, raft.commit_index),
            before_sync=self.may_send_before_sync(),
        )

    # -- follower: Figure 2's AppendEntries receiver -----------------------------------

    def ignore_append_entries(self, source: int, message: AppendEntries) -> str | None:
        raft = self.raft
        if message.leader != source:
            return "leader_not_sender"
        # (each field read once: a message's field is a generic attribute look-up)
        term = message.prev_log_term
        if message.prev_log_index < 0 or message.leader_commit < 0 or term < 0:
            return "negative"
        entries = message.entries
        if len(entries) > raft.params.entries_per_message_max:
            return "too_many_entries"
        top = message.term
        for entry in entries:
            entry_term = entry.term
            if entry_term < term or entry_term > top:
                return "entry_terms_out_of_order"
            term = entry_term
        return None

    def on_commit_notice(self, source: int, notice: CommitNotice) -> None:
        """An entry-less AppendEntries that is not answered (but a stale
        leader still learns our newer term)."""
        self.on_append_entries(
            source,
            AppendEntries(
                notice.term, notice.leader, notice.prev_log_index, notice.prev_log_term, (),
                notice.leader_commit, 0,
            ),
            answer=False,
        )

    def on_append_entries(
        self, source: int, message: AppendEntries, *, answer: bool = True
    ) -> None:
        raft = self.raft
        reason = self.ignore_append_entries(source, message)
        if reason is not None:
            raft.count(f"raft_rejected_{reason}")
            return
        # (each field read once: a message's field is a generic attribute look-up)
        term = message.term
        if term < raft.hard.term:
            # Figure 2 (1): reply false; the stale leader learns the newer term.
            self.reject(source, message, 0, 0)
            return
        if not raft.accept_leader(term, source):
            return
        if answer:
            raft.reads.on_round(source, message)
        log = raft.log
        first, prev_term = message.prev_log_index, message.prev_log_term
        prev, entries = first, message.entries
        if prev < raft.commit_index:
            # Committed entries match the leader's (Leader Completeness): skip
            # them, after checking those still in memory.
            if not self.matches_committed(prev, prev_term, entries):
                return
            skip = min(raft.commit_index - prev, len(entries))
            prev, entries = prev + skip, entries[skip:]
            if prev < raft.commit_index:
                if answer:
                    self.accept(source, message, raft.commit_index)
                return
        here = log.term_at(prev)
        if here is None:
            # Figure 2 (2), log too short: hint our last index + 1.
            if answer:
                self.reject(source, message, log.last_index + 1, 0)
            else:
                raft.count("raft_ignored_commit_notice_mismatch")
            return
        if prev == first and here != prev_term:
            if prev <= raft.commit_index:
                raft.count("raft_rejected_prev_conflicts_committed")
                return
            # Figure 2 (2), term mismatch: hint the first index of our conflicting term.
            if answer:
                self.reject(source, message, log.first_index_of_term_at(prev), here)
            else:
                raft.count("raft_ignored_commit_notice_mismatch")
            return
        if not self.append_new_entries(prev, entries):
            return
        if entries:
            raft.reads.on_appended()
        match = prev + len(entries)
        leader_commit = message.leader_commit
        if leader_commit > raft.commit_index:
            # Figure 2 (5): commitIndex = min(leaderCommit, index of last new entry).
            commit = min(leader_commit, match)
            if commit > raft.commit_index:
                raft.advance_commit(commit)
        if answer:
            self.accept(source, message, match)

    def matches_committed(self, prev: int, prev_term: int, entries: tuple[Entry, ...]) -> bool:
        """Whether a leader's entries at or below our commit index agree with
        ours (where we still hold them); a disagreement is a bad message."""
        raft = self.raft
        log = raft.log
        here = log.term_at(prev)
        if here is not None and here != prev_term:
            raft.count("raft_rejected_prev_conflicts_committed")
            return False
        for offset, entry in enumerate(entries[: raft.commit_index - prev]):
            here = log.term_at(prev + 1 + offset)
            if here is not None and here != entry.term:
                raft.count("raft_rejected_overwrites_committed")
                return False
        return True

    def append_new_entries(self, prev: int, entries: tuple[Entry, ...]) -> bool:
        """Figure 2 (3) and (4): delete a conflicting suffix, append new entries.
        False (and nothing changed) if the leader would overwrite a committed entry."""
        raft = self.raft
        log = raft.log
        config_index = log.config_index
        for offset, entry in enumerate(entries):
            index = prev + 1 + offset
            here = log.term_at(index)
            if here == entry.term:
                continue  # already have it (Log Matching: the same entry)
            if here is not None:
                if index <= raft.commit_index:
                    raft.count("raft_rejected_overwrites_committed")
                    return False
                assert index > raft.commit_index, "committed entries are never truncated"
                assert raft.role is not Role.LEADER, "Leader Append-Only (Figure 3)"
                log.truncate_after(index - 1)
            log.append(entries[offset:])
            break
        if entries:
            # Log Matching: our log now ends its agreement with the leader's here.
            assert log.term_at(prev + len(entries)) == entries[-1].term
        if log.config_index != config_index:
            raft.on_config_changed()
        return True

    def accept(self, source: int, message: AppendEntries, match: int) -> None:
        raft = self.raft
        raft.send(
            source,
            AppendEntriesResponse(
                raft.hard.term, True, match, message.prev_log_index, 0, 0, message.round,
                raft.identity,
            ),
        )

    def reject(
        self, source: int, message: AppendEntries, conflict_index: int, conflict_term: int
    ) -> None:
        raft = self.raft
        raft.send(
            source,
            AppendEntriesResponse(
                raft.hard.term, False, 0, message.prev_log_index, conflict_index,
                conflict_term, message.round, raft.identity,
            ),
        )

    # -- leader: responses ------------------------------------------------------------

    def leader_progress(
        self, source: int, term: int, round_: int, identity: int
    ) -> Progress | None:
        """Common handling of a follower's answer (AppendEntries or snapshot):
        step down on a newer term; the progress to update, or None if stale."""
        raft = self.raft
        if term > raft.hard.term:
            raft.become_follower(term, NO_NODE)
            return None
        if raft.role is not Role.LEADER or term < raft.hard.term:
            raft.count("raft_ignored_stale_response")
            return None
        progress = self.progress.get(source)
        if progress is None:
            raft.count("raft_ignored_response_not_peer")
            return None
        membership = raft.membership
        membership.observe_identity(source, identity)
        progress.recent_active = True
        if round_ > progress.acked_round:
            progress.acked_round = round_
            raft.reads.on_ack()
        return progress

    def on_append_entries_response(self, source: int, response: AppendEntriesResponse) -> None:
        raft = self.raft
        progress = self.leader_progress(source, response.term, response.round, response.identity)
        if progress is None or raft.role is not Role.LEADER:
            return
        if response.success:
            if response.match_index > raft.log.last_index:
                raft.count("raft_rejected_match_beyond_log")
                return
            self.on_match(source, progress, response.match_index)
        else:
            self.on_reject(source, progress, response)
        if self.may_send(progress):
            progress.wakeup.notify()

    def may_send(self, progress: Progress) -> bool:
        """Whether :meth:`send_to` could act for ``progress`` now: an
        acknowledgement wakes the peer's task only then (ADR 0065, decision 4).
        In ``REPLICATE`` with no entry beyond ``next_index`` (in the window or
        not: a full window is counted there), no heartbeat due and no commit
        notice due now, ``send_to`` sends nothing and changes nothing (a peer
        that needs a snapshot, ``next_index <= log.base_index``, has entries
        beyond its ``next_index``: the log's last index is never below its
        base, so the first test covers it); every later change that gives it
        something to do (new entries, a heartbeat, a commit, a notice's delay
        over, a hurry, a new configuration) wakes the task itself. Any other
        state (a probe, a snapshot in progress) wakes it as before."""
        if progress.state != REPLICATE:
            return True
        return (
            progress.next_index <= self.raft.log.last_index
            or progress.heartbeat_due
            or (progress.commit_due and progress.notice_due)
        )

    def on_match(self, peer: int, progress: Progress, match: int) -> None:
        raft = self.raft
        if match >= progress.match_index and progress.state == PROBE:
            progress.state = REPLICATE
            progress.probe_tick = None
            progress.next_index = match + 1
        if match <= progress.match_index:
            return
        progress.match_index = match
        progress.next_index = max(progress.next_index, match + 1)
        while progress.inflight and progress.inflight[0][0] <= match:
            progress.inflight.popleft()
        if match > raft.commit_index:
            # (a match at or below the commit index leaves as many counted matches
            # above it as before: the commit rule would find what it found last)
            self.maybe_commit()
        if raft.role is Role.LEADER:
            raft.election.maybe_timeout_now(peer)
            membership = raft.membership
            membership.on_progress(peer)

    def on_regressed(
        self, source: int, progress: Progress, response: AppendEntriesResponse
    ) -> None:
        """The follower rejected our outstanding probe at or below its match index:
        it no longer holds entries it acknowledged (its storage lost them). What
        it acknowledged stays counted where it was counted (commitment is never
        undone); from now on it counts only for what it acknowledges again."""
        raft = self.raft
        raft.count("raft_follower_log_regressed")
        hint = self.reject_hint(response)
        raft.context.output(
            FollowerLogRegressed(raft.id, raft.hard.term, source, progress.match_index, hint - 1)
        )
        progress.match_index = 0
        progress.become_probe(max(1, min(hint, response.rejected_index)))

    def on_reject(
        self, source: int, progress: Progress, response: AppendEntriesResponse
    ) -> None:
        """Back off ``next_index`` by the follower's hints (a term per round trip)."""
        raft = self.raft
        rejected = response.rejected_index
        if rejected <= progress.match_index:
            if progress.state == PROBE and rejected == progress.next_index - 1:
                self.on_regressed(source, progress, response)
                return
            raft.count("raft_ignored_stale_rejection")
            return
        if progress.state == PROBE and rejected != progress.next_index - 1:
            raft.count("raft_ignored_stale_rejection")
            return
        progress.become_probe(max(1, min(self.reject_hint(response), rejected)))
        raft.count("raft_append_entries_rejected")

    def reject_hint(self, response: AppendEntriesResponse) -> int:
        """Where to probe next after a rejection (the fast back-off of section 5.3)."""
        if response.conflict_term > 0:
            last = self.raft.log.last_index_of_term(response.conflict_term)
            return response.conflict_index if last is None else last + 1
        return response.conflict_index

    # -- the commit rule ------------------------------------------------------------

    def maybe_commit(self) -> None:
        """Section 5.3-5.4.2 / Figure 2, leaders: "If there exists an N such that
        N > commitIndex, a majority of matchIndex[i] >= N, and log[N].term ==
        currentTerm: set commitIndex = N"."""
        raft = self.raft
        if raft.role is not Role.LEADER:
            return
        # The quorum-th largest match of the voters that count is above the commit
        # index exactly when a quorum of them is, and is then the quorum-th largest
        # of those: only matches above the commit index are gathered (most calls
        # find fewer than a quorum and stop there, without a sort).
        commit = raft.commit_index
        membership = raft.membership
        membership.refresh()  # (the caches, for the latest configuration)
        voters = membership.voter_ids
        identities = membership.member_identities
        me = raft.id
        above = []
        for voter in voters:
            registered = identities[voter]
            if voter == me:
                # (membership.counts, inline: the voter's registered disk, or none yet)
                if registered == UNREGISTERED or registered == raft.identity:
                    match = self.self_match_index()
                    if match > commit:
                        above.append(match)
                continue
            progress = self.progress.get(voter)
            if progress is not None and (
                registered == UNREGISTERED or registered == progress.identity
            ):
                match = progress.match_index
                if match > commit:
                    above.append(match)
        quorum = membership.quorum()
        if len(above) < quorum:
            return
        if len(above) == quorum:
            index = min(above)
        else:
            above.sort(reverse=True)
            index = above[quorum - 1]
        assert index <= raft.log.last_index, "a quorum matches only what the leader has"
        if not self.may_commit_by_counting(index):
            return
        raft.context.output(
            LeaderCommitted(raft.id, raft.hard.term, index, raft.log.term_at(index) or 0)
        )
        previous = raft.commit_index
        raft.advance_commit(index)
        notice = raft.params.commit_notice
        at_once = not raft.params.commit_notice_delay_us
        for progress in self.progress.values():
            # Followers learn the new commit index now, or (with a notice
            # delay) from the next entries sent to them, at the latest when
            # the delay ends; at once again where a client waits for an entry
            # this commit covers (hurry).
            if notice and progress.state == REPLICATE:
                progress.commit_due = True
                if at_once or progress.hurry_index > previous:
                    progress.notice_due = True
                    progress.wakeup.notify()
                else:
                    self.committed.notify()
            else:
                progress.heartbeat_due = True
                progress.wakeup.notify()

    def self_match_index(self) -> int:
        """What the leader counts as stored on itself: only what is durable."""
        return self.synced_index

    def may_commit_by_counting(self, index: int) -> bool:
        """Section 5.4.2 (Figure 8): only an entry of the leader's own term is
        committed by counting replicas; earlier ones are committed with it."""
        raft = self.raft
        return raft.log.term_at(index) == raft.hard.term

    # -- check-quorum support ----------------------------------------------------------

    def clear_recent_activity(self) -> None:
        for progress in self.progress.values():
            progress.recent_active = False

    def quorum_recently_active(self) -> bool:
        raft = self.raft
        active = 0
        for voter in raft.membership.voters():
            if voter == raft.id:
                active += 1
                continue
            progress = self.progress.get(voter)
            if (
                progress is not None
                and progress.recent_active
                and raft.membership.counts(voter, progress.identity)
            ):
                active += 1
        return active >= raft.membership.quorum()
