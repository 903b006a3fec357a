"""Raft's tunable periods and bounds, validated up front (after etcd raft's
``Config.validate``).

Times are microseconds of virtual time. Every bound is named ``*_max``; a
hit is counted as ``bound_raft_<name>`` on the node.
"""

from __future__ import annotations

from dataclasses import dataclass

from replicaio.core.errors import ConfigError
from replicaio.protocols.raft.messages import ENTRIES_PER_MESSAGE_MAX, SNAPSHOT_CHUNK_BYTES_MAX


@dataclass(frozen=True, slots=True)
class RaftParams:
    """Periods, bounds and options of one Raft node (the same on every node).

    ``initial_voters``: the voters of the configuration the cluster starts
    with (``None``: every node of the cluster). Nodes outside the
    configuration idle until a membership change adds them.

    ``join`` is the one per-node option: set it when starting a node on a new,
    empty disk that replaces a lost one (etcd's ``--initial-cluster-state
    existing``); it only matters on a blank disk.
    """

    heartbeat_us: int = 50_000
    election_timeout_min_us: int = 300_000
    election_timeout_max_us: int = 600_000
    pre_vote: bool = True
    check_quorum: bool = True
    initial_voters: tuple[int, ...] | None = None
    # Per node start: this node starts an empty disk in an existing cluster (a
    # replaced disk). It never votes or campaigns until a configuration
    # registers its new disk as a voter (see membership.py).
    join: bool = False
    # -- bounds ------------------------------------------------------------
    inflight_max: int = 8  # AppendEntries in flight per follower (pipelining window)
    entries_per_message_max: int = 64
    message_bytes_max: int = 1 << 20  # entry payload bytes per AppendEntries
    pending_proposals_max: int = 1024  # uncommitted entries in a leader's log
    reads_pending_max: int = 1024  # read-index requests awaiting confirmation
    snapshot_chunk_bytes_max: int = 256 * 1024
    snapshot_bytes_max: int = 64 << 20  # a snapshot a follower will accept
    # A compaction keeps up to this many entries (and payload bytes) that the
    # snapshot covers, so that a follower a little behind catches up by entries,
    # not by the whole snapshot (etcd's SnapshotCatchUpEntries). 0: none kept.
    snapshot_trailing_entries_max: int = 1024
    snapshot_trailing_bytes_max: int = 4 << 20
    # A snapshot's state beyond this is persisted in pieces of this size (each
    # one storage record, within one codec frame); small values in the
    # simulator make every snapshot several records (``raft:piece=N``).
    snapshot_piece_bytes: int = 4 << 20
    # A learner is promoted once it lags the leader's last index by at most this.
    promote_lag_entries_max: int = 16
    # -- reads ---------------------------------------------------------------
    # Lease reads (lease.py): a leader holding a lease answers reads locally,
    # without a heartbeat round. Safe only while clock rates differ by at most
    # clock_drift_ppm_max (parts per million); off: read-index only.
    read_lease: bool = False
    clock_drift_ppm_max: int = 10_000
    # A follower answers a read round before its flush with a ReadRoundAck
    # (ADR 0070): 0 never; 1 when the round's first message carries entries;
    # 2 also when entries appended before may not be durable yet.
    read_round_ack: int = 2
    # -- replication -----------------------------------------------------------
    # When the commit index advances and a follower has no new entries to
    # carry it, the leader tells it at once. On: a CommitNotice the follower
    # does not answer (one message per follower per commit). Off: an empty
    # AppendEntries the follower acknowledges (two messages and two more
    # steps on the leader per follower per commit).
    commit_notice: bool = True
    # How long the leader holds that news back for an AppendEntries with new
    # entries to carry it (0: it is sent at once). A follower that receives
    # entries within the delay learns the commit index from them and gets no
    # frame of its own; one that receives nothing hears of it when the delay
    # ends, far below a heartbeat. Under a steady load nearly every commit
    # rides on the next batch's entries, which halves the frames a follower
    # reads. A follower one of whose clients waits (a write it relayed, a
    # read index it asked for) is told at once all the same (SMR's hurry,
    # Replication.hurry). 1 ms: ADR 0044.
    commit_notice_delay_us: int = 1_000

    @property
    def election_timeout_range_us(self) -> int:
        """How many distinct election timeouts a draw chooses from."""
        return self.election_timeout_max_us - self.election_timeout_min_us

    @property
    def lease_us(self) -> int:
        """How long a lease lasts on the leader's clock after its round started:
        the election timeout shortened by the drift bound (lease.py)."""
        million = 1_000_000
        return (
            self.election_timeout_min_us * (million - self.clock_drift_ppm_max)
            // (million + self.clock_drift_ppm_max)
        )

    def validate(self) -> RaftParams:
        """Raise :class:`ConfigError` unless the periods and bounds are usable."""
        if self.heartbeat_us < 1:
            raise ConfigError("RaftParams.heartbeat_us must be >= 1")
        if self.election_timeout_min_us <= 2 * self.heartbeat_us:
            raise ConfigError(
                "RaftParams.election_timeout_min_us must exceed two heartbeats "
                f"({2 * self.heartbeat_us} us), got {self.election_timeout_min_us}: a follower "
                "would start elections against a healthy leader after one lost heartbeat"
            )
        if self.election_timeout_max_us <= self.election_timeout_min_us:
            raise ConfigError(
                "RaftParams.election_timeout_max_us must exceed election_timeout_min_us: "
                "randomized timeouts need a range to split votes"
            )
        for name in (
            "inflight_max",
            "entries_per_message_max",
            "message_bytes_max",
            "pending_proposals_max",
            "reads_pending_max",
            "snapshot_chunk_bytes_max",
            "snapshot_bytes_max",
            "snapshot_piece_bytes",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"RaftParams.{name} must be >= 1")
        if self.read_round_ack not in (0, 1, 2):
            raise ConfigError(
                f"RaftParams.read_round_ack must be 0, 1 or 2, got {self.read_round_ack}"
            )
        if not 0 <= self.commit_notice_delay_us < self.heartbeat_us:
            raise ConfigError(
                "RaftParams.commit_notice_delay_us must be >= 0 and below a heartbeat "
                f"({self.heartbeat_us} us), got {self.commit_notice_delay_us}"
            )
        for name in (
            "promote_lag_entries_max",
            "snapshot_trailing_entries_max",
            "snapshot_trailing_bytes_max",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"RaftParams.{name} must be >= 0")
        for name, wire_max in (
            ("entries_per_message_max", ENTRIES_PER_MESSAGE_MAX),
            ("snapshot_chunk_bytes_max", SNAPSHOT_CHUNK_BYTES_MAX),
            ("snapshot_piece_bytes", SNAPSHOT_CHUNK_BYTES_MAX),
        ):
            if getattr(self, name) > wire_max:
                raise ConfigError(f"RaftParams.{name} must be <= {wire_max} (the wire bound)")
        self.validate_lease()
        if self.initial_voters is not None:
            if not self.initial_voters:
                raise ConfigError("RaftParams.initial_voters must name at least one node")
            if len(set(self.initial_voters)) != len(self.initial_voters):
                raise ConfigError(f"RaftParams.initial_voters lists a node twice: "
                                  f"{self.initial_voters}")
        return self

    def validate_lease(self) -> None:
        if not 0 <= self.clock_drift_ppm_max < 1_000_000:
            raise ConfigError("RaftParams.clock_drift_ppm_max must be in [0, 1000000)")
        if not self.read_lease:
            return
        if not self.check_quorum:
            raise ConfigError(
                "RaftParams.read_lease needs check_quorum: voters hold to a leader they "
                "heard from (leader stickiness) only with it, and the lease relies on that"
            )
        if self.lease_us <= self.heartbeat_us:
            raise ConfigError(
                f"RaftParams.read_lease: the lease ({self.lease_us} us, the election timeout "
                "shortened by the drift bound) must outlast a heartbeat, or it never holds"
            )

    def voters_for(self, n: int) -> tuple[int, ...]:
        """The initial voters in a cluster of ``n`` nodes (validated against n)."""
        voters = tuple(range(n)) if self.initial_voters is None else self.initial_voters
        for node in voters:
            if not 0 <= node < n:
                raise ConfigError(f"RaftParams.initial_voters: no node {node} in 0..{n - 1}")
        return tuple(sorted(voters))
