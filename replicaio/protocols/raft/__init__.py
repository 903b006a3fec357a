"""Raft: a replicated log for state machine replication.

Papers: Ongaro & Ousterhout, *In Search of an Understandable Consensus
Algorithm* (USENIX ATC 2014), sections 5 (the protocol), 6 (membership), 7
(log compaction) and 8 (client interaction); Ongaro's PhD thesis, *Consensus:
Bridging Theory and Practice* (2014): single-server membership changes
(4.1-4.3), leadership transfer (3.10), read-index (6.4), pre-vote and
check-quorum (9.6, 6.2). Crash-recovery faults only; n >= 2f + 1 voters.

Interface. :class:`Raft` implements :class:`replicaio.interfaces.ordering.Ordering`:
SMR ``submit``s batches on the leader, receives every committed entry
exactly once and in order through ``on_commit`` (no-ops and configuration
entries arrive as empty batches: they occupy an index and carry no
command), asks for linearizable reads with ``read_barrier``, and hands
snapshots to ``compact``. Operators reach :meth:`Raft.on_admin` with a
:class:`RaftAdmin` request (``add``, ``add_learner``, ``promote``,
``remove``, ``transfer``): SMR forwards any ``RaftAdmin`` payload of a
host ``Request`` there and counts the rejection reason it returns.

States (Figure 4, plus the thesis' pre-candidate)::

    follower --timeout--> pre-candidate --pre-vote quorum--> candidate --vote quorum--> leader
       ^  ^                    |                                 |                         |
       |  +---newer term / lost / not a voter ------------------+                         |
       +------------- newer term / check-quorum failed / removed from the configuration ---+

A role is a scope of tasks; leaving the role cancels the scope (and with it
every timer and per-peer pipeline of the role). Messages are handled by
plain ``on_<message>`` handlers guarded by ``ignore_<message>`` (a peer's bad
message is dropped and counted as ``raft_rejected_<reason>``).

Which file owns which step:

* ``params.py`` — :class:`RaftParams`: periods and ``*_max`` bounds
  (validated, ``ConfigError``).
* ``messages.py`` — wire messages, outputs for checkers, ``RaftAdmin``.
* ``state.py`` — Figure 2's persistent state: ``HardState`` (term and vote,
  one record), ``RaftLog`` (entries after a snapshot, configuration history,
  digests) and the crash-safe order of every write sequence.
* ``raft.py`` — :class:`Raft`: shared state, the Ordering API, role changes
  (``become_follower``, ``accept_leader``), commit and apply.
* ``election.py`` — 5.2 and 5.4.1: randomized timeouts, pre-vote, votes,
  leader stickiness, check-quorum, leadership transfer (TimeoutNow).
* ``replication.py`` — 5.3 and 5.4.2: the leader's per-peer tasks (probe,
  pipelined replicate with a bounded in-flight window, snapshot), fast
  conflict back-off, the follower's AppendEntries rules, the commit rule.
* ``snapshot.py`` — 7: compaction and chunked InstallSnapshot.
* ``membership.py`` — 6 / thesis 4: single-server changes with the
  commit-in-term fix, learners promoted once caught up, disk identities.
* ``reads.py`` — thesis 6.4: read-index rounds.

Persistence. Term and vote, log entries, snapshots and the disk identity
are written through ``persist``/``erase`` effects; the host syncs them once
per step before it releases that step's messages and outputs, so a vote or
an acknowledgement never leaves before the state it depends on is durable.
A crash may keep only a prefix of a step's writes; ``state.py`` orders
every write sequence so that each prefix is a consistent state.

Observability. Checkers (``replicaio.check.raft``) read typed outputs:
``Restarted`` (the recovered term, vote and log end), ``Voted``, ``TermChanged``,
``BecameLeader`` (with the shape of the leader's log), ``LeaderCommitted``,
``Applied`` (with a digest chaining the log prefix), ``SnapshotTaken``,
``SnapshotInstalled``,
``ReadRequested``/``ReadConfirmed`` and ``ConfigChanged``. Tests may also
read :meth:`Raft.observe`, a :class:`RaftView` of one node.

Running it alone. :class:`RaftNodeFactory` hosts Raft without SMR (it applies
nothing; requests are raw batches or ``RaftAdmin``), for tests and demos.
See ``docs/raft.md`` for the walk-through.
"""

from __future__ import annotations

from typing import Any

from replicaio.core.config import Resilience
from replicaio.core.context import Context
from replicaio.interfaces.ordering import Committed
from replicaio.protocols.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Applied,
    BecameLeader,
    CommitNotice,
    Config,
    ConfigChanged,
    Entry,
    FollowerLogRegressed,
    InstallSnapshot,
    InstallSnapshotResponse,
    LeaderCommitted,
    RaftAdmin,
    ReadConfirmed,
    ReadRequested,
    ReadRoundAck,
    RequestVote,
    RequestVoteResponse,
    Restarted,
    SnapshotInstalled,
    SnapshotTaken,
    TermChanged,
    TimeoutNow,
    Voted,
)
from replicaio.protocols.raft.params import RaftParams
from replicaio.protocols.raft.raft import Raft, RaftView
from replicaio.protocols.raft.state import Role

__all__ = [
    "AppendEntries",
    "AppendEntriesResponse",
    "Applied",
    "BecameLeader",
    "CommitNotice",
    "Config",
    "ConfigChanged",
    "Entry",
    "FollowerLogRegressed",
    "InstallSnapshot",
    "InstallSnapshotResponse",
    "LeaderCommitted",
    "Raft",
    "RaftAdmin",
    "RaftNode",
    "RaftNodeFactory",
    "RaftParams",
    "RaftView",
    "ReadConfirmed",
    "ReadRequested",
    "ReadRoundAck",
    "RequestVote",
    "RequestVoteResponse",
    "Restarted",
    "Role",
    "SnapshotInstalled",
    "SnapshotTaken",
    "TermChanged",
    "TimeoutNow",
    "Voted",
]


class RaftNode:
    """Raft at path ``("raft",)`` with a recording stand-in for SMR: requests
    are batches (``bytes``) or :class:`RaftAdmin`; committed batches are kept
    in ``committed`` (index -> batch) for tests."""

    def __init__(
        self, context: Context, params: RaftParams, raft_type: type[Raft] = Raft
    ) -> None:
        self.raft = raft_type(context.child("raft"), params)
        self.committed: dict[int, bytes] = {}
        self.snapshot: tuple[int, bytes] | None = None
        self.raft.bind(self)

    def start(self) -> None:
        self.raft.start()

    def on_request(self, payload: Any) -> str | None:
        if isinstance(payload, RaftAdmin):
            return self.raft.on_admin(payload)
        if not isinstance(payload, bytes):
            return "not_bytes"
        refused = self.raft.submit(payload)
        return None if refused is None else "not_leader"

    # OrderingHandlers
    def on_commit(self, committed: Committed) -> None:
        assert committed.index not in self.committed
        self.committed[committed.index] = committed.batch

    def on_snapshot(self, index: int, snapshot: bytes) -> None:
        self.snapshot = (index, snapshot)
        self.committed = {key: value for key, value in self.committed.items() if key > index}

    def validate_batch(self, batch: bytes, proposer: int | None = None) -> bool:
        return True  # Raft trusts its leader's entries (crash faults only)

    def requests_of(self, batch: bytes) -> tuple[tuple[int, int], ...]:
        return ()  # Raft's followers do not watch the leader's requests


class RaftNodeFactory:
    """A :class:`~replicaio.core.node.ProtocolFactory` for :class:`RaftNode`."""

    name = "raft"
    resilience = Resilience.CRASH

    def __init__(self, params: RaftParams | None = None, raft_type: type[Raft] = Raft) -> None:
        self.params = (params or RaftParams()).validate()
        self.raft_type = raft_type  # Raft, or a subclass (a broken variant in tests)

    def __call__(self, context: Context) -> RaftNode:
        return RaftNode(context, self.params, self.raft_type)
