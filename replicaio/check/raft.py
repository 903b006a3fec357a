"""Checkers for Raft's safety properties (Figure 3 of the paper) and its
liveness after faults heal, fed with the nodes' outputs as a host sees them.

Each property is checked on every output, so a violation is reported at the
step that makes it visible:

* **election safety** — at most one leader per term, over the whole run
  (``BecameLeader``);
* **log matching**, on committed prefixes — two nodes that applied an entry
  with the same index and term applied identical prefixes up to it (the
  ``Applied`` digest chains the whole prefix, so equal digests mean equal
  prefixes);
* **leader completeness** — an entry committed in term ``c``
  (``LeaderCommitted``) is in the log of every leader of a term above ``c``
  (the ``runs`` of its ``BecameLeader``), whichever of the two outputs is
  seen first;
* **state machine safety** — no two nodes apply different entries at the
  same index (``Applied``; a ``SnapshotInstalled`` must agree with what was
  applied at its index);
* **linearizable reads** — a read barrier confirms an index at least as high
  as every index committed before the read was asked
  (``ReadRequested`` / ``ReadConfirmed``);
* **durable state** (Figure 2's persistent state) — a node that restarts
  (``Restarted``) on the same disk still has the term it had reached, the
  vote it announced in that term, and every entry it applied (a node whose
  disk was replaced starts afresh: a new disk identity);
* **one vote per term** — a node never votes for two candidates in one
  term, across restarts on the same disk (``Voted``; section 5.2, the ground of election
  safety);
* **the commit rule** — a leader advances its commit index only to an entry
  of its own term (``LeaderCommitted``; section 5.4.2: earlier entries are
  committed only indirectly). The consequence of breaking it (Figure 8) is a
  leader completeness violation, but only on rare schedules; the rule itself
  is visible on every commit;
* **liveness** (after :meth:`RaftChecker.begin_liveness`) — some leader
  commits a new entry beyond what was committed when the faults healed,
  within the host's bound (:meth:`RaftChecker.settled`, :meth:`RaftChecker.finish`).

Memory: one digest per committed index, one record per elected leader and
per vote, and at most ``reads_tracked_max`` unanswered reads.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import Any

from replicaio.check.broadcast import Violation
from replicaio.protocols.raft.messages import (
    Applied,
    BecameLeader,
    LeaderCommitted,
    ReadConfirmed,
    ReadRequested,
    Restarted,
    SnapshotInstalled,
    Voted,
)

READS_TRACKED_MAX = 65536


@dataclass(frozen=True, slots=True)
class LeaderLog:
    """The shape of a leader's log when it was elected."""

    node: int
    term: int
    snapshot_index: int
    snapshot_term: int
    last_index: int
    run_starts: tuple[int, ...]
    run_terms: tuple[int, ...]

    def term_at(self, index: int) -> int | None:
        """The term of entry ``index`` in this log; None if beyond its end.
        Entries inside the snapshot report the snapshot's term at its index
        only (older ones are committed, hence checked by the applied digests)."""
        if index > self.last_index:
            return None
        if index <= self.snapshot_index:
            return self.snapshot_term if index == self.snapshot_index else -1
        position = bisect_right(self.run_starts, index) - 1
        assert position >= 0
        return self.run_terms[position]


class RaftChecker:
    """Checks one run of Raft; see the module docstring."""

    def __init__(self, *, reads_tracked_max: int = READS_TRACKED_MAX) -> None:
        self.leaders: dict[int, int] = {}  # term -> node
        self.disks: dict[int, int] = {}  # node -> identity of its current disk
        self.votes: dict[tuple[int, int, int], int] = {}  # (node, disk, term) -> candidate
        self.terms: dict[int, int] = {}  # node -> highest term it announced (vote, leadership)
        self.applied_by: dict[int, int] = {}  # node -> highest index it applied or installed
        self.leader_logs: list[LeaderLog] = []
        self.commits: dict[int, tuple[int, int]] = {}  # term -> (highest index, its entry term)
        self.commit_floor = 0  # highest index known committed
        self.applied: dict[int, tuple[int, bytes, int]] = {}  # index -> (term, digest, node)
        self.applications = 0
        self.reads: dict[tuple[int, int], int] = {}  # (node, read id) -> commit floor when asked
        self.reads_tracked_max = reads_tracked_max
        self.reads_confirmed = 0
        self.violations: list[Violation] = []
        self.liveness_from: int | None = None  # commit floor when the faults healed
        self.liveness_at_us = 0
        self.live = False

    # -- feeding --------------------------------------------------------------------

    def on_output(self, node: int, output: Any, time_us: int | None = None) -> list[Violation]:
        """Check one output of ``node``; returns the new violations."""
        before = len(self.violations)
        kind = type(output)
        if kind is Applied:
            self.on_applied(output, time_us)
        elif kind is LeaderCommitted:
            self.on_leader_committed(output, time_us)
        elif kind is BecameLeader:
            self.on_became_leader(output, time_us)
        elif kind is SnapshotInstalled:
            self.on_snapshot_installed(output, time_us)
        elif kind is ReadRequested:
            self.on_read_requested(output)
        elif kind is ReadConfirmed:
            self.on_read_confirmed(output, time_us)
        elif kind is Voted:
            self.on_voted(output, time_us)
        elif kind is Restarted:
            self.on_restarted(output, time_us)
        return self.violations[before:]

    def fail(self, prop: str, detail: str, node: int | None, time_us: int | None) -> None:
        self.violations.append(Violation(prop, detail, node, time_us))

    # -- election safety and leader completeness ----------------------------------------

    def on_became_leader(self, output: BecameLeader, time_us: int | None) -> None:
        self.terms[output.node] = max(self.terms.get(output.node, 0), output.term)
        other = self.leaders.get(output.term)
        if other is not None and other != output.node:
            self.fail(
                "election_safety",
                f"nodes {other} and {output.node} both leaders of term {output.term}",
                output.node, time_us,
            )
        self.leaders.setdefault(output.term, output.node)
        leader = LeaderLog(
            output.node, output.term, output.snapshot_index, output.snapshot_term,
            output.last_index, tuple(start for start, _ in output.runs),
            tuple(term for _, term in output.runs),
        )
        self.leader_logs.append(leader)
        for commit_term, (index, entry_term) in self.commits.items():
            if commit_term < output.term:
                self.check_complete(leader, commit_term, index, entry_term, time_us)

    def on_restarted(self, output: Restarted, time_us: int | None) -> None:
        node = output.node
        if self.disks.get(node, output.identity) != output.identity:
            # A new disk: nothing was promised from it yet (its votes and acks
            # count for nothing until Raft re-admits it; see membership.py).
            self.terms.pop(node, None)
            self.applied_by.pop(node, None)
        self.disks[node] = output.identity
        announced = self.terms.get(node, 0)
        if output.term < announced:
            self.fail("durable_state", f"node {node} restarted in term {output.term} after "
                      f"announcing term {announced}", node, time_us)
        vote = self.votes.get((node, output.identity, output.term))
        if vote is not None and output.voted_for != vote:
            self.fail("durable_state", f"node {node} restarted in term {output.term} with vote "
                      f"{output.voted_for}, but it had voted for {vote}", node, time_us)
        applied = self.applied_by.get(node, 0)
        if output.last_index < applied:
            self.fail("durable_state", f"node {node} restarted with a log ending at "
                      f"{output.last_index}, but it had applied index {applied}", node, time_us)

    def on_voted(self, output: Voted, time_us: int | None) -> None:
        self.terms[output.node] = max(self.terms.get(output.node, 0), output.term)
        disk = self.disks.get(output.node, 0)
        earlier = self.votes.setdefault((output.node, disk, output.term), output.candidate)
        if earlier != output.candidate:
            self.fail(
                "one_vote_per_term",
                f"node {output.node} voted for {earlier} and then for {output.candidate} "
                f"in term {output.term}",
                output.node, time_us,
            )

    def on_leader_committed(self, output: LeaderCommitted, time_us: int | None) -> None:
        if output.entry_term != output.term:
            self.fail(
                "commit_rule",
                f"node {output.node}, leader of term {output.term}, committed index "
                f"{output.index} whose entry is of term {output.entry_term} by counting replicas",
                output.node, time_us,
            )
        known = self.commits.get(output.term)
        if known is None or output.index > known[0]:
            self.commits[output.term] = (output.index, output.entry_term)
        self.commit_floor = max(self.commit_floor, output.index)
        for leader in self.leader_logs:
            if leader.term > output.term:
                self.check_complete(leader, output.term, output.index, output.entry_term, time_us)

    def check_complete(
        self, leader: LeaderLog, commit_term: int, index: int, entry_term: int,
        time_us: int | None,
    ) -> None:
        found = leader.term_at(index)
        if found == -1:
            return  # inside the leader's snapshot: committed there, checked by digests
        if found != entry_term:
            where = "missing" if found is None else f"has term {found}"
            self.fail(
                "leader_completeness",
                f"entry {index} (term {entry_term}) committed in term {commit_term} is "
                f"{where} in the log of node {leader.node}, leader of term {leader.term}",
                leader.node, time_us,
            )

    # -- log matching and state machine safety --------------------------------------------

    def on_applied(self, output: Applied, time_us: int | None) -> None:
        self.applications += 1
        self.compare(output.node, output.index, output.term, output.digest, "applied", time_us)

    def on_snapshot_installed(self, output: SnapshotInstalled, time_us: int | None) -> None:
        self.compare(
            output.node, output.index, output.term, output.digest, "installed a snapshot at",
            time_us,
        )

    def compare(
        self, node: int, index: int, term: int, digest: bytes, what: str, time_us: int | None
    ) -> None:
        if index > self.applied_by.get(node, 0):
            self.applied_by[node] = index
        known = self.applied.get(index)
        if known is None:
            self.applied[index] = (term, digest, node)
            return
        known_term, known_digest, known_node = known
        if known_term == term and known_digest != digest:
            self.fail(
                "log_matching",
                f"node {node} {what} index {index} term {term} with a prefix different from "
                f"node {known_node}'s (digest {digest.hex()} != {known_digest.hex()})",
                node, time_us,
            )
        elif known_term != term:
            self.fail(
                "state_machine_safety",
                f"node {node} {what} index {index} with term {term}; node {known_node} "
                f"applied term {known_term} there",
                node, time_us,
            )

    # -- reads --------------------------------------------------------------------------

    def on_read_requested(self, output: ReadRequested) -> None:
        if len(self.reads) >= self.reads_tracked_max:
            del self.reads[next(iter(self.reads))]  # the oldest, never answered
        self.reads[(output.node, output.read_id)] = self.commit_floor

    def on_read_confirmed(self, output: ReadConfirmed, time_us: int | None) -> None:
        floor = self.reads.pop((output.node, output.read_id), None)
        self.reads_confirmed += 1
        if floor is not None and output.index < floor:
            self.fail(
                "linearizable_read",
                f"node {output.node} confirmed read {output.read_id} at index {output.index}, "
                f"but index {floor} was committed before the read was asked (stale read)",
                output.node, time_us,
            )

    # -- liveness -------------------------------------------------------------------------

    def begin_liveness(self, time_us: int) -> None:
        """The faults healed at ``time_us``: from now on a leader must commit a
        new entry (the host must keep proposing)."""
        self.liveness_from = self.commit_floor
        self.liveness_at_us = time_us
        self.live = False

    def settled(self) -> bool:
        """Whether liveness holds: a commit beyond the floor at the heal."""
        if self.liveness_from is None:
            return False
        if not self.live and self.commit_floor > self.liveness_from:
            self.live = True
        return self.live

    def finish(self, time_us: int) -> list[Violation]:
        """Report liveness once the host's bound after the heal has passed."""
        if self.liveness_from is None or self.settled():
            return []
        violation = Violation(
            "liveness",
            f"no entry committed beyond index {self.liveness_from} in "
            f"{time_us - self.liveness_at_us} us after the faults healed "
            f"({len(self.leaders)} leaders elected so far)",
            None, time_us,
        )
        self.violations.append(violation)
        return [violation]

    def summary(self) -> dict[str, Any]:
        return {
            "raft_leaders_elected": len(self.leader_logs),
            "raft_term_max": max(self.leaders, default=0),
            "raft_commit_index_max": self.commit_floor,
            "raft_applications": self.applications,
            "raft_reads_confirmed": self.reads_confirmed,
        }
