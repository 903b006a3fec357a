"""SMR's bounds and periods, validated up front (after etcd raft's ``Config.validate``).

Two kinds, kept apart on purpose:

* :class:`SmrConstants`, the **cluster constants**: every bound that decides
  what a *committed* batch does (whether it decodes, which requests in it run,
  which session is evicted, where snapshots are taken). Replicas that disagreed
  on one would diverge on the same log, so they come only from the cluster's
  shared configuration: the protocol name's parameters (``raft:sessions=256``,
  the cluster file's ``[protocol] params``, the event log header), through the
  assembly. Nothing local can change them.
* :class:`SmrParams`, **local settings**: how much a replica queues, how long it
  waits. Two replicas with different ones still agree on every committed batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from replicaio.core.errors import ConfigError
from replicaio.smr.api import COMMAND_BYTES_MAX
from replicaio.smr.messages import BATCH_REQUESTS_MAX

# What a batch frame adds around its requests, and each request around its
# command (and around its authenticator, when it carries one), at most
# (msgpack headers, tag strings, 64-bit integers).
BATCH_OVERHEAD_BYTES = 64
REQUEST_OVERHEAD_BYTES = 48
AUTHENTICATED_OVERHEAD_BYTES = 48
# An SMR snapshot around its application state, and each session in it
# (``replica.encode_snapshot``: headers, the index, four fields per session).
SNAPSHOT_OVERHEAD_BYTES = 64
SESSION_OVERHEAD_BYTES = 48
# Snapshots sized by bytes: at most this many multiples of the interval skipped in a row.
SNAPSHOT_DEFERRALS_MAX = 63


@dataclass(frozen=True, slots=True)
class SmrConstants:
    """The cluster constants of SMR: identical on every replica (module docstring)."""

    batch_requests_max: int = 64  # requests per batch
    # One command holds a key-value store's largest value (8 MiB) and its key;
    # a batch holds one such command, or many small ones.
    batch_bytes_max: int = 8 * 1024 * 1024 + 512 * 1024  # encoded batch size
    command_bytes_max: int = 8 * 1024 * 1024 + 128 * 1024  # one client command
    sessions_max: int = 4096  # clients with a remembered last request (LRU eviction)
    # Their remembered results, in bytes (LRU eviction beyond; the newest stays).
    session_results_bytes_max: int = 64 * 1024 * 1024
    snapshot_interval: int = 64  # applied batches between snapshots (checkpoints); 0: never
    # Snapshots sized by bytes (0: off, a snapshot at every multiple of the
    # interval): a multiple is skipped while the batches applied since the last
    # snapshot hold fewer bytes than this and than that snapshot, so writing
    # snapshots costs at most about what the log costs; at most
    # SNAPSHOT_DEFERRALS_MAX multiples in a row (the log stays bounded).
    snapshot_log_bytes_min: int = 0

    @property
    def items_max(self) -> int:
        """The codec's bound on items in one array or map of a batch or snapshot."""
        return max(16, self.sessions_max, self.batch_requests_max)

    def snapshot_bytes_bound(self, application_bytes_max: int, result_bytes_max: int) -> int:
        """The most an SMR snapshot takes, encoded, around an application
        snapshot of at most ``application_bytes_max`` bytes whose results are
        at most ``result_bytes_max`` bytes each: what a protocol must be able
        to carry to a lagging replica (``assembly.check_snapshot_fits``)."""
        sessions = self.sessions_max * SESSION_OVERHEAD_BYTES + max(
            self.session_results_bytes_max, result_bytes_max
        )
        return SNAPSHOT_OVERHEAD_BYTES + application_bytes_max + sessions

    @property
    def request_bytes_max(self) -> int:
        """The most one request of a trusted client takes in a batch. An
        authenticated request adds its authenticator; one that would not fit a
        batch alone is refused at admission (``too_large``)."""
        return self.command_bytes_max + REQUEST_OVERHEAD_BYTES

    def validate(self) -> SmrConstants:
        """Raise :class:`ConfigError` unless every constant is usable."""
        for name in ("batch_requests_max", "batch_bytes_max", "command_bytes_max", "sessions_max",
                     "session_results_bytes_max"):
            if getattr(self, name) < 1:
                raise ConfigError(f"SmrConstants.{name} must be >= 1")
        if self.snapshot_log_bytes_min < 0:
            raise ConfigError("SmrConstants.snapshot_log_bytes_min must be >= 0 (0: off)")
        if self.snapshot_interval < 0:
            raise ConfigError("SmrConstants.snapshot_interval must be >= 0 (0: never)")
        if BATCH_OVERHEAD_BYTES + self.request_bytes_max > self.batch_bytes_max:
            raise ConfigError(
                f"SmrConstants.batch_bytes_max={self.batch_bytes_max} cannot hold one command of "
                f"command_bytes_max={self.command_bytes_max} (needs "
                f"{BATCH_OVERHEAD_BYTES + self.request_bytes_max})"
            )
        if self.batch_requests_max > BATCH_REQUESTS_MAX:
            raise ConfigError(f"SmrConstants.batch_requests_max must be <= {BATCH_REQUESTS_MAX}")
        if self.command_bytes_max > COMMAND_BYTES_MAX:
            raise ConfigError(f"SmrConstants.command_bytes_max must be <= {COMMAND_BYTES_MAX}")
        return self


@dataclass(frozen=True, slots=True)
class SmrParams:
    """Every local queue, window and table of a replica has a named bound here.

    Beyond a bound a client gets ``Rejected(reason="busy")`` (pending requests,
    pending reads), the oldest entry is dropped and counted (waiting replies,
    checkpoints not yet handed over), or the request waits (in-flight batches:
    backpressure).
    """

    pending_max: int = 1024  # requests accepted but not yet submitted
    batches_inflight_max: int = 4  # own batches submitted, not yet applied
    # While own batches are in flight, the next one waits until this many
    # requests are pending (or the window empties): under load, fewer and
    # larger batches; alone, a request never waits. 1: every request at once.
    batch_fill_min: int = 1
    batch_timeout_us: int = 1_000_000  # an in-flight batch not applied by then is presumed lost
    waiting_max: int = 4096  # local requests awaiting their reply (oldest evicted)
    reads_pending_max: int = 1024  # reads in progress, local and for other replicas
    read_timeout_us: int = 1_000_000  # a read not served by then is refused
    checkpoints_pending_max: int = 64  # checkpoints taken in one step, not yet handed over
    verified_max: int = 4096  # request authenticators remembered as checked (BFT)
    # A proposed batch (BFT: a primary's) stamped further ahead of this replica's
    # clock is refused (docs/adr/0015): a faulty primary cannot move the store's
    # time (key expiry) by more. Correct clocks must agree within it.
    stamp_ahead_ms_max: int = 2_000
    forward: bool = True  # non-leaders forward to the leader (else they redirect)
    emit_applied: bool = False  # output Applied(index, digest) for outside checkers

    def validate(self, constants: SmrConstants | None = None) -> SmrParams:
        """Raise :class:`ConfigError` unless every bound is usable (with ``constants``)."""
        for name in (
            "pending_max",
            "batches_inflight_max",
            "batch_fill_min",
            "batch_timeout_us",
            "waiting_max",
            "reads_pending_max",
            "read_timeout_us",
            "checkpoints_pending_max",
            "verified_max",
            "stamp_ahead_ms_max",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"SmrParams.{name} must be >= 1")
        if constants is not None and self.pending_max < constants.batch_requests_max:
            raise ConfigError("SmrParams.pending_max must be >= SmrConstants.batch_requests_max")
        return self
