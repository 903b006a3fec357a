"""Raft's wire messages, its observable outputs, and the admin request.

Wire messages (Figure 2 of the paper, plus pre-vote, TimeoutNow and chunked
InstallSnapshot from the thesis) travel on one unreliable stream; Raft does
its own retransmission. Every field is plain data; a receiver validates
what the codec cannot (ranges, lengths) and drops a bad message with a
counter (``raft_rejected_<reason>``).

Outputs are what checkers outside the nodes see (``replicaio.check.raft``);
each names the node that emitted it so a record stands on its own.

``RaftAdmin`` is how a harness or operator asks for a membership change or a
leadership transfer: the SMR layer hands any ``RaftAdmin`` request payload to
:meth:`Raft.on_admin <replicaio.protocols.raft.raft.Raft.on_admin>`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from replicaio.core.codec import Message, Meta
from replicaio.core.effects import notice, operator_event

NO_NODE = -1  # votedFor / leader unknown
UNREGISTERED = 0  # a configuration slot whose disk identity is not known yet

Member = tuple[int, int]  # (node id, disk identity; UNREGISTERED accepts any)

# Wire bounds (RaftParams are validated against them).
MEMBERS_MAX = 4096
ENTRIES_PER_MESSAGE_MAX = 1 << 16
ENTRY_BYTES_MAX = 1 << 26
SNAPSHOT_CHUNK_BYTES_MAX = 1 << 26
DIGEST_BYTES_MAX = 64
RUNS_MAX = 1 << 24
Members = Annotated[tuple[tuple[int, int], ...], Meta(max_length=MEMBERS_MAX)]
Digest = Annotated[bytes, Meta(max_length=DIGEST_BYTES_MAX)]


class Config(Message, tag="raft.Config"):
    """A configuration: voters (they elect and count toward commit) and
    learners (they receive the log and never count), each a sorted tuple of
    ``(node, disk identity)``; ``promoting``: learners that any leader
    promotes to voter once they have caught up."""

    voters: Members
    learners: Members
    promoting: Annotated[tuple[int, ...], Meta(max_length=MEMBERS_MAX)] = ()


class Entry(Message, tag="raft.Entry"):
    """A log entry: a command batch (``data``), a leader's no-op (``data ==
    b""`` and no ``config``), or a configuration (``config``; data empty)."""

    term: int
    data: Annotated[bytes, Meta(max_length=ENTRY_BYTES_MAX)]
    config: Config | None = None


# -- election (section 5.2, thesis 9.6 pre-vote, 3.10 transfer) ---------------


class RequestVote(Message, tag="raft.RequestVote"):
    """Asks for a vote in ``term`` (for a pre-vote: the term the sender would
    campaign in; nobody changes state for a pre-vote). ``transfer``: the
    campaign follows a TimeoutNow, so voters may not hold to a leader lease."""

    term: int
    candidate: int
    last_log_index: int
    last_log_term: int
    pre: bool
    transfer: bool


class RequestVoteResponse(Message, tag="raft.RequestVoteResponse"):
    """The voter's current term, and its answer; ``identity`` is the voter's
    disk identity (a vote from a disk the configuration does not know is
    not counted)."""

    term: int
    granted: bool
    pre: bool
    identity: int


class TimeoutNow(Message, tag="raft.TimeoutNow"):
    """The leader of ``term`` hands leadership over: campaign now."""

    term: int
    leader: int


# -- replication (section 5.3) -------------------------------------------------


class AppendEntries(Message, tag="raft.AppendEntries"):
    """Figure 2's AppendEntries RPC. ``round`` numbers the leader's heartbeat
    rounds for read-index; a follower echoes it."""

    term: int
    leader: int
    prev_log_index: int
    prev_log_term: int
    entries: Annotated[tuple[Entry, ...], Meta(max_length=ENTRIES_PER_MESSAGE_MAX)]
    leader_commit: int
    round: int


class CommitNotice(Message, tag="raft.CommitNotice"):
    """A leader's new commit index, told at once and not answered
    (``RaftParams.commit_notice``): the follower treats it as an entry-less
    AppendEntries (the same checks, Figure 2's rule 5) but sends no
    acknowledgement; heartbeats still carry the rounds and the acks that
    read-index, leases, check-quorum and loss detection count."""

    term: int
    leader: int
    prev_log_index: int
    prev_log_term: int
    leader_commit: int


class AppendEntriesResponse(Message, tag="raft.AppendEntriesResponse"):
    """``success`` with ``match_index`` (the follower's log matches the
    leader's up to there), or a rejection of ``rejected_index`` (the request's
    prev_log_index) with the fast back-off hints: ``conflict_term`` (0: the
    follower's log is too short) and ``conflict_index`` (the first index of
    that term in the follower's log, or its last index + 1)."""

    term: int
    success: bool
    match_index: int
    rejected_index: int
    conflict_index: int
    conflict_term: int
    round: int
    identity: int


class ReadRoundAck(Message, tag="raft.ReadRoundAck"):
    """A follower's answer to a read round, sent before its flush (ADR 0070):
    it is in ``term`` (durably, with its vote) and heard round ``round`` of
    the leader. It claims nothing about the follower's log: the leader counts
    it for read-index and check-quorum only, never toward a match. The
    AppendEntriesResponse to the same message follows once the entries it
    carried are durable."""

    term: int
    round: int
    identity: int


# -- snapshots (section 7) ------------------------------------------------------


class InstallSnapshot(Message, tag="raft.InstallSnapshot"):
    """Figure 13's InstallSnapshot RPC, one chunk at ``offset`` of ``size``
    bytes; ``digest`` is the log digest at ``last_included_index``."""

    term: int
    leader: int
    last_included_index: int
    last_included_term: int
    digest: Digest
    config: Config
    size: int
    offset: int
    data: Annotated[bytes, Meta(max_length=SNAPSHOT_CHUNK_BYTES_MAX)]
    round: int


class InstallSnapshotResponse(Message, tag="raft.InstallSnapshotResponse"):
    """``next_offset``: the follower holds the snapshot's bytes before it;
    ``done``: it has installed (or already had) the snapshot."""

    term: int
    last_included_index: int
    next_offset: int
    done: bool
    round: int
    identity: int


# -- admin ------------------------------------------------------------------------


class RaftAdmin(Message, tag="raft.Admin"):
    """An operator's request to the leader:

    * ``add``: add ``node`` as a learner; it is promoted to voter once it has
      caught up (two configuration changes, one at a time);
    * ``add_learner``: add ``node`` as a learner only;
    * ``promote``: make learner ``node`` a voter (refused until caught up);
    * ``remove``: take ``node`` out of the configuration (voter or learner);
    * ``transfer``: hand leadership to voter ``node`` (section 3.10 of the thesis).
    """

    action: Literal["add", "add_learner", "promote", "remove", "transfer"]
    node: int


# -- outputs (for checkers and reports) --------------------------------------------


@operator_event("leader elected")
class BecameLeader(Message, tag="raft.BecameLeader"):
    """``node`` won the election of ``term``. Its log at that moment: entries
    ``snapshot_index + 1 .. last_index``, described by ``runs`` — ``(first
    index, term)`` of each run of equal terms — on top of a snapshot (here:
    the log's base, which a compaction's trailing window keeps behind the
    snapshot it took)."""

    node: int
    term: int
    snapshot_index: int
    snapshot_term: int
    last_index: int
    runs: Annotated[tuple[tuple[int, int], ...], Meta(max_length=RUNS_MAX)]


class Restarted(Message, tag="raft.Restarted"):
    """``node`` started from its durable state on disk ``identity`` (a new
    identity: a new, empty disk): this term and vote, and a log (with its
    snapshot) ending at ``last_index``."""

    node: int
    identity: int
    term: int
    voted_for: int
    snapshot_index: int
    last_index: int


@notice
class FollowerLogRegressed(Message, tag="raft.FollowerLogRegressed"):
    """``node``, leader of ``term``, heard ``follower`` reject a probe at or below
    what it had acknowledged (``match_index``): its log went backwards (lost
    storage); the leader probes it again from ``last_index_hint``."""

    node: int
    term: int
    follower: int
    match_index: int
    last_index_hint: int


@operator_event("term changed")
class TermChanged(Message, tag="raft.TermChanged"):
    """``node`` adopted ``term`` (from ``previous``) on hearing of it from a peer
    (a vote it then casts is a separate ``Voted``); ``leader``: that peer, if it
    leads the term, else -1. Emitted once the new term is durable."""

    node: int
    term: int
    previous: int
    leader: int


@operator_event("voted in a new term")
class Voted(Message, tag="raft.Voted"):
    """``node`` cast its vote of ``term`` for ``candidate`` (itself, as a
    candidate); emitted once the vote is durable."""

    node: int
    term: int
    candidate: int


class LeaderCommitted(Message, tag="raft.LeaderCommitted"):
    """The leader of ``term`` advanced its commit index to ``index``, whose
    entry has term ``entry_term``: entries up to ``index`` are committed in
    ``term``."""

    node: int
    term: int
    index: int
    entry_term: int


class Applied(Message, tag="raft.Applied"):
    """``node`` applied entry ``index`` of ``term``; ``digest`` chains every
    entry up to it (equal digests: equal log prefixes)."""

    node: int
    index: int
    term: int
    digest: Digest


@operator_event("snapshot taken")
class SnapshotTaken(Message, tag="raft.SnapshotTaken"):
    """``node`` compacted its log: its own snapshot of ``size`` bytes now covers
    entries up to ``index`` (of ``term``), which it erased from its log."""

    node: int
    index: int
    term: int
    size: int


@operator_event("snapshot installed from the leader")
class SnapshotInstalled(Message, tag="raft.SnapshotInstalled"):
    """``node`` replaced its state by a leader's snapshot covering ``index``."""

    node: int
    index: int
    term: int
    digest: Digest


class ReadRequested(Message, tag="raft.ReadRequested"):
    """A linearizable read barrier was asked of ``node`` (the leader of ``term``)."""

    node: int
    read_id: int
    term: int


class ReadConfirmed(Message, tag="raft.ReadConfirmed"):
    """Read ``read_id`` may be served once ``index`` is applied."""

    node: int
    read_id: int
    index: int


@operator_event("membership changed")
class ConfigChanged(Message, tag="raft.ConfigChanged"):
    """``node``'s configuration became ``config`` (appended at ``index``;
    configurations take effect when appended, not when committed)."""

    node: int
    index: int
    config: Config


ADMIN_ACTIONS = ("add", "add_learner", "promote", "remove", "transfer")

__all__ = [
    "ADMIN_ACTIONS",
    "NO_NODE",
    "UNREGISTERED",
    "AppendEntries",
    "AppendEntriesResponse",
    "Applied",
    "BecameLeader",
    "CommitNotice",
    "Config",
    "ConfigChanged",
    "Entry",
    "InstallSnapshot",
    "InstallSnapshotResponse",
    "LeaderCommitted",
    "Member",
    "RaftAdmin",
    "ReadConfirmed",
    "ReadRequested",
    "RequestVote",
    "RequestVoteResponse",
    "Restarted",
    "SnapshotInstalled",
    "TimeoutNow",
    "Voted",
]
