"""The Raft component: shared state, roles, message dispatch, commit and apply.

One :class:`Raft` per node implements :class:`replicaio.interfaces.ordering.Ordering`.
It owns the state every phase shares (hard state, log, commit and applied
indexes, role, leader) and the role scope; the phases (``election``,
``replication``, ``snapshot``, ``membership``, ``reads``) are objects over
that state, each owning its messages and tasks. See the package docstring
for the map.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ClassVar

from replicaio.core.context import Context
from replicaio.core.errors import UsageError
from replicaio.core.lines import Line
from replicaio.core.scheduler import Scope
from replicaio.interfaces.ordering import Committed, NotLeader, OrderingHandlers
from replicaio.protocols.raft.audit import audit_raft
from replicaio.protocols.raft.election import Election
from replicaio.protocols.raft.membership import Membership
from replicaio.protocols.raft.messages import (
    NO_NODE,
    UNREGISTERED,
    AppendEntries,
    AppendEntriesResponse,
    Applied,
    BecameLeader,
    CommitNotice,
    Config,
    ConfigChanged,
    InstallSnapshot,
    InstallSnapshotResponse,
    RaftAdmin,
    ReadRoundAck,
    RequestVote,
    RequestVoteResponse,
    Restarted,
    TermChanged,
    TimeoutNow,
)
from replicaio.protocols.raft.params import RaftParams
from replicaio.protocols.raft.reads import Reads
from replicaio.protocols.raft.replication import Replication
from replicaio.protocols.raft.snapshot import Snapshots
from replicaio.protocols.raft.state import HardState, RaftLog, Role

IDENTITY_MAX = (1 << 31) - 1

MESSAGE_TYPES = (
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    CommitNotice,
    ReadRoundAck,
)



# The simulator's observers of a Raft group's outputs (``assembly.RAFT_MEMBERSHIP``):
# here, compiled with Raft, since the simulator calls them at every output.
def raft_leader_of(output: Any) -> tuple[int, int] | None:
    if type(output) is BecameLeader:
        return output.term, output.node
    return None


def raft_config_of(output: Any) -> tuple[int, tuple[int, ...], tuple[int, ...]] | None:
    if type(output) is ConfigChanged:
        config = output.config
        voters = tuple(member for member, _ in config.voters)
        return output.index, voters, tuple(member for member, _ in config.learners)
    return None

@dataclass(frozen=True, slots=True)
class RaftView:
    """A read-only snapshot of one node's Raft state, for tests and reports."""

    node: int
    term: int
    voted_for: int
    role: Role
    leader: int
    commit_index: int
    applied_index: int
    snapshot_index: int
    last_index: int
    last_term: int
    last_digest: bytes
    config: Config
    identity: int
    recovering: int  # 1 while a replaced or damaged disk may not vote (membership.py)


class Raft:
    """Raft (Ongaro & Ousterhout 2014; Ongaro's thesis 2014) as an
    :class:`~replicaio.interfaces.ordering.Ordering`. Give it its own context (a child
    path): it opens one stream for the ``raft.*`` messages there.

    The parts a variant may replace are named by the class attributes below
    (``replicaio.testing.variants.raft`` builds the deliberately broken
    variants that way); the protocol itself has no switch for them."""

    hard_state_type: ClassVar[type[HardState]] = HardState
    replication_type: ClassVar[type[Replication]] = Replication
    reads_type: ClassVar[type[Reads]] = Reads
    membership_type: ClassVar[type[Membership]] = Membership
    snapshots_type: ClassVar[type[Snapshots]] = Snapshots
    log_type: ClassVar[type[RaftLog]] = RaftLog
    election_type: ClassVar[type[Election]] = Election

    # Exactly the attributes ``raft.pxd`` declares, in its order: no instance dict,
    # so the compiled class's ``cpdef`` methods are C calls without an override
    # check (ADR 0041, 0047); a variant (a subclass) has a dict of its own.
    __slots__ = (  # noqa: RUF023
        "context", "params", "id", "hard", "log", "identity", "joiner", "role", "leader_id",
        "commit_index", "applied_index", "term_start_index", "handlers", "role_scope",
        "scheduler", "started", "applying", "election", "replication", "snapshots",
        "membership", "reads", "stream", "dispatch",
    )

    def __init__(self, context: Context, params: RaftParams | None = None) -> None:
        self.context = context
        self.params = (params or RaftParams()).validate()
        self.id = context.id
        initial = Config(
            tuple((node, UNREGISTERED) for node in self.params.voters_for(context.n)), ()
        )
        self.hard = self.hard_state_type(context)
        self.log = self.log_type(context, initial)
        self.log.piece_bytes = self.params.snapshot_piece_bytes
        self.identity = UNREGISTERED
        self.joiner = False  # this disk replaced a lost one (RaftParams.join at its first start)
        self.role = Role.FOLLOWER
        self.leader_id = NO_NODE
        self.commit_index = 0
        self.applied_index = 0
        self.term_start_index = 0  # index of this leader's no-op (leaders only)
        self.handlers: OrderingHandlers | None = None
        self.role_scope: Scope | None = None
        self.scheduler = context.node.scheduler
        self.started = False
        self.applying = False
        self.election = self.election_type(self)
        self.replication = self.replication_type(self)
        self.snapshots = self.snapshots_type(self)
        self.membership = self.membership_type(self)
        self.reads = self.reads_type(self)
        self.stream = context.stream(*MESSAGE_TYPES, handler=self.on_message)
        self.dispatch: dict[type, Callable[[int, Any], None]] = {
            RequestVote: self.election.on_request_vote,
            RequestVoteResponse: self.election.on_request_vote_response,
            TimeoutNow: self.election.on_timeout_now,
            AppendEntries: self.replication.on_append_entries,
            AppendEntriesResponse: self.replication.on_append_entries_response,
            CommitNotice: self.replication.on_commit_notice,
            ReadRoundAck: self.reads.on_read_round_ack,
            InstallSnapshot: self.snapshots.on_install_snapshot,
            InstallSnapshotResponse: self.snapshots.on_install_snapshot_response,
        }

    def audit(self) -> list[str]:
        """Every derived field that disagrees with what it derives from, and every
        broken per-node invariant (``replicaio.protocols.raft.audit``); the
        simulator asks every few hundred steps."""
        return audit_raft(self)

    # -- Ordering ----------------------------------------------------------------

    def bind(self, handlers: OrderingHandlers) -> None:
        """Register SMR's handlers; once, before :meth:`start`."""
        if self.handlers is not None:
            raise UsageError("Raft.bind called twice")
        self.handlers = handlers

    def start(self) -> None:
        """Recover durable state, hand SMR the snapshot, and start as a follower."""
        if self.handlers is None:
            raise UsageError("Raft.start before bind")
        assert not self.started
        self.started = True
        stored = self.context.load("identity")
        damaged = self.lost_acknowledged_state()
        if stored is None or damaged:
            # First start on this disk: a fresh identity (and whether the disk
            # replaces a lost one), written before any other Raft state (see
            # membership.py: disks that were lost). A disk that lost writes it
            # had acknowledged is a replaced disk too: its old identity's votes
            # and acknowledgements may be gone, so it takes a new one and joins.
            if damaged:
                self.count("raft_storage_damaged_rejoining")
            joiner = self.params.join or damaged
            previous = 0 if stored is None else int(stored[0])
            identity = 1 + self.context.random_below(IDENTITY_MAX - 1)
            if identity >= previous > 0:
                identity += 1  # drawn among the identities other than the lost one
            stored = (identity, joiner)
            self.context.persist("identity", stored)
        self.identity, self.joiner = int(stored[0]), bool(stored[1])
        self.hard.load()
        self.log.load()
        self.commit_index = self.applied_index = self.log.snapshot_index
        self.context.output(Restarted(
            self.id, self.identity, self.hard.term, self.hard.voted_for, self.log.snapshot_index,
            self.log.last_index,
        ))
        if self.log.snapshot_index > 0:
            self.handlers.on_snapshot(self.log.snapshot_index, self.log.snapshot_data)
        self.reads.lease.on_start()
        self.become_follower(self.hard.term, NO_NODE, force=True)

    def lost_acknowledged_state(self) -> bool:
        """Whether the storage reported that it may have lost writes it had
        acknowledged (``Start.damaged``): votes and entries this node promised."""
        return self.context.node.storage_damaged

    def submit(self, batch: bytes) -> NotLeader | None:
        """Append ``batch`` to the leader's log (Figure 2, leaders: "If command
        received from client: append entry to local log")."""
        return self.replication.propose(batch)

    def hurry(self, replica: int) -> None:
        """A client of ``replica`` waits for what is appended so far
        (``replicaio.interfaces.ordering.Hurry``; ``Replication.hurry``)."""
        self.replication.hurry(replica)

    def read_barrier(self) -> Line[int] | NotLeader:
        """Read-index (thesis section 6.4); see ``reads.py``."""
        return self.reads.read_barrier()

    def compact(self, index: int, snapshot: bytes) -> None:
        """SMR's snapshot up to ``index`` replaces the log prefix (section 7)."""
        self.snapshots.compact(index, snapshot)

    def footprint(self) -> dict[str, int]:
        """The log entries held in memory past the log's base, and those applied
        past the snapshot (not compacted yet: SMR snapshots at a cadence, so
        these are bounded by it; a compaction that never happens grows them);
        the simulator's bounded-memory check, bounds in ``replicaio.assembly``."""
        log = self.log
        return {
            "raft_log_entries": len(log.entries),
            "raft_log_uncompacted": self.applied_index - log.snapshot_index,
        }

    @property
    def leader_hint(self) -> int:
        return self.leader_id

    @property
    def view_hint(self) -> int:
        """The term (``replicaio.interfaces.ordering.Views``): a hint in SMR's replies."""
        return self.hard.term

    def on_admin(self, request: RaftAdmin) -> str | None:
        """A membership change or leadership transfer; a rejection reason or None."""
        return self.membership.on_admin(request)

    def observe(self) -> RaftView:
        """The node's Raft state now (read-only)."""
        log = self.log
        return RaftView(
            node=self.id, term=self.hard.term, voted_for=self.hard.voted_for, role=self.role,
            leader=self.leader_id, commit_index=self.commit_index,
            applied_index=self.applied_index, snapshot_index=log.snapshot_index,
            last_index=log.last_index, last_term=log.last_term, last_digest=log.last_digest,
            config=log.config, identity=self.identity,
            recovering=int(not self.membership.may_vote()),
        )

    # -- messages ----------------------------------------------------------------

    def on_message(self, source: int, message: Any) -> None:
        """Every ``raft.*`` message from a peer, in arrival order."""
        if source == self.id:
            self.count("raft_rejected_from_self")
            return
        self.dispatch[type(message)](source, message)

    def send(self, peer: int, message: Any, *, before_sync: bool = False) -> None:
        assert peer != self.id
        self.stream.send(peer, message, before_sync=before_sync)

    def count(self, counter: str, by: int = 1) -> None:
        self.context.count(counter, by)

    # -- roles (Figure 2, "Rules for Servers"; Figure 4) ------------------------------

    @property
    def term(self) -> int:
        return self.hard.term

    def start_role(self, role: Role, tasks: list[Coroutine[Any, Any, None]]) -> None:
        """Leave the current role (cancelling its scope) and run ``tasks`` in a new one."""
        previous = self.role_scope
        self.role = role
        self.role_scope = self.context.scope(f"raft.{role.value}")
        if previous is not None:
            previous.cancel()
        for task in tasks:
            self.role_scope.spawn(task, f"raft.{role.value}")

    def become_follower(self, term: int, leader: int, *, force: bool = False) -> None:
        """Adopt ``term`` (a new term clears the vote) and follow ``leader``."""
        assert term >= self.hard.term
        if term > self.hard.term:
            previous = self.hard.term
            self.hard.save(term, NO_NODE)
            self.leader_id = NO_NODE
            self.context.output(TermChanged(self.id, term, previous, leader))
        if leader != NO_NODE:
            self.leader_id = leader
        if self.role is Role.FOLLOWER and not force:
            return
        was_leader = self.role is Role.LEADER
        self.start_role(Role.FOLLOWER, self.election.follower_tasks())
        if was_leader:
            self.count("raft_leader_stepped_down")
            self.reads.on_step_down()
            self.replication.on_step_down()
            self.election.on_step_down()
            self.membership.on_step_down()

    def accept_leader(self, term: int, leader: int) -> bool:
        """A valid AppendEntries or InstallSnapshot of ``term`` from ``leader``
        (``term`` is at least ours): follow it. False if it is a second leader
        in our own term as leader (which election safety rules out)."""
        if self.role is Role.LEADER and term == self.hard.term:
            self.count("raft_rejected_second_leader")
            return False
        if term > self.hard.term or self.role is not Role.FOLLOWER:
            self.become_follower(term, leader)
        self.leader_id = leader
        self.election.heard = True
        return True

    # -- commit and apply --------------------------------------------------------------

    def advance_commit(self, index: int) -> None:
        """Raise the commit index to ``index`` and apply up to it, in order."""
        assert index > self.commit_index, "the commit index only grows"
        assert index <= self.log.last_index, "only entries in the log are committed"
        self.commit_index = index
        self.apply()
        self.membership.on_commit()
        self.reads.on_commit()

    def apply(self) -> None:
        """Figure 2: "If commitIndex > lastApplied: increment lastApplied, apply
        log[lastApplied] to state machine"."""
        if self.applying:
            return  # SMR reacted to a commit by committing more: the loop below takes it
        handlers = self.handlers
        assert handlers is not None
        log = self.log
        self.applying = True
        while self.applied_index < self.commit_index:
            index = self.applied_index + 1
            entry = log.entry(index)
            self.applied_index = index
            self.context.output(Applied(self.id, index, entry.term, log.digest_at(index)))
            handlers.on_commit(Committed(index, entry.data))
        self.applying = False
        assert self.applied_index == self.commit_index

    def on_snapshot_installed(self, index: int) -> None:
        """A leader's snapshot replaced this node's state up to ``index``."""
        assert index > self.commit_index
        handlers = self.handlers
        assert handlers is not None
        self.commit_index = self.applied_index = index
        handlers.on_snapshot(index, self.log.snapshot_data)

    def on_config_changed(self) -> None:
        """The latest configuration in the log changed (appended, truncated away,
        or replaced by a snapshot's): it is in force now (thesis section 4.1)."""
        config = self.log.config
        self.context.output(ConfigChanged(self.id, self.log.config_index, config))
        self.membership.on_config_changed()
        if self.role is Role.LEADER:
            self.replication.sync_peers()
        elif self.role is Role.FOLLOWER:
            # A voter needs an election timer; a learner or outsider idles.
            if self.election.watching != self.membership.may_campaign():
                self.become_follower(self.hard.term, NO_NODE, force=True)
        elif not self.membership.may_campaign():
            self.become_follower(self.hard.term, NO_NODE)
