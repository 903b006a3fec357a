"""SMR's bounds and periods, validated up front (after etcd raft's ``Config.validate``)."""

from __future__ import annotations

from dataclasses import dataclass

from replicaio.core.errors import ConfigError
from replicaio.smr.api import COMMAND_BYTES_MAX
from replicaio.smr.messages import BATCH_REQUESTS_MAX

# What a batch frame adds around its requests, and each request around its
# command, at most (msgpack headers, tag strings, 64-bit integers).
BATCH_OVERHEAD_BYTES = 64
REQUEST_OVERHEAD_BYTES = 48


@dataclass(frozen=True, slots=True)
class SmrParams:
    """Every queue, window and table of a replica has a named bound here.

    Beyond a bound a client gets ``Rejected(reason="busy")`` (pending requests,
    pending reads), the oldest entry is dropped and counted (waiting replies,
    sessions), or the request waits (in-flight batches: backpressure).
    """

    batch_requests_max: int = 64  # requests per batch
    batch_bytes_max: int = 256 * 1024  # encoded batch size
    pending_max: int = 1024  # requests accepted but not yet submitted
    batches_inflight_max: int = 4  # own batches submitted, not yet applied
    batch_timeout_us: int = 1_000_000  # an in-flight batch not applied by then is presumed lost
    command_bytes_max: int = 64 * 1024 + 1024  # one client command
    sessions_max: int = 4096  # clients with a remembered last request (LRU eviction)
    waiting_max: int = 4096  # local requests awaiting their reply (oldest evicted)
    reads_pending_max: int = 1024  # reads in progress, local and for other replicas
    read_timeout_us: int = 1_000_000  # a read not served by then is refused
    snapshot_interval: int = 64  # applied batches between snapshots; 0: never
    forward: bool = True  # non-leaders forward to the leader (else they redirect)
    emit_applied: bool = False  # output Applied(index, digest) for outside checkers

    def validate(self) -> SmrParams:
        """Raise :class:`ConfigError` unless every bound is usable."""
        for name in (
            "batch_requests_max",
            "batch_bytes_max",
            "pending_max",
            "batches_inflight_max",
            "batch_timeout_us",
            "command_bytes_max",
            "sessions_max",
            "waiting_max",
            "reads_pending_max",
            "read_timeout_us",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"SmrParams.{name} must be >= 1")
        if self.snapshot_interval < 0:
            raise ConfigError("SmrParams.snapshot_interval must be >= 0 (0: never)")
        request_bytes_max = self.command_bytes_max + REQUEST_OVERHEAD_BYTES
        if BATCH_OVERHEAD_BYTES + request_bytes_max > self.batch_bytes_max:
            raise ConfigError(
                f"SmrParams.batch_bytes_max={self.batch_bytes_max} cannot hold one command of "
                f"command_bytes_max={self.command_bytes_max} (needs "
                f"{BATCH_OVERHEAD_BYTES + request_bytes_max})"
            )
        if self.batch_requests_max > BATCH_REQUESTS_MAX:
            raise ConfigError(f"SmrParams.batch_requests_max must be <= {BATCH_REQUESTS_MAX}")
        if self.command_bytes_max > COMMAND_BYTES_MAX:
            raise ConfigError(f"SmrParams.command_bytes_max must be <= {COMMAND_BYTES_MAX}")
        if self.pending_max < self.batch_requests_max:
            raise ConfigError("SmrParams.pending_max must be >= batch_requests_max")
        return self
