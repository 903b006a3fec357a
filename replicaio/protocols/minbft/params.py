"""MinBFT's periods and bounds, validated up front.

Times are microseconds of virtual time; every bound is named ``*_max`` (a hit
is counted as ``bound_minbft_<name>``). K (``checkpoint_interval``) must be
SMR's ``snapshot_interval`` and the same on every replica: the assembly sets
both from one number. A replica never sends a PREPARE or COMMIT for a number
more than K above its own latest CHECKPOINT (the rule that keeps a
VIEW-CHANGE's log within about 2K messages, whatever the history: Hyperledger
MinBFT's PR 246), and the primary assigns numbers up to ``log_size`` (L)
above the stable checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

from replicaio.core.errors import ConfigError
from replicaio.protocols.minbft.messages import LOG_ENTRIES_MAX, SNAPSHOT_BYTES_MAX
from replicaio.protocols.pbft.messages import BATCH_BYTES_MAX


@dataclass(frozen=True, slots=True)
class MinbftParams:
    """Periods, bounds and windows of one MinBFT replica (the same on every replica)."""

    checkpoint_interval: int = 16  # K
    log_size: int = 32  # L: the primary numbers batches in (h, h + L]
    view_change_timeout_us: int = 400_000  # a backup waiting this long suspects the primary
    view_change_backoff_exponent_max: int = 6
    view_change_resend_us: int = 200_000
    status_us: int = 100_000
    state_fetch_timeout_us: int = 300_000
    # -- bounds --------------------------------------------------------------------
    batch_bytes_max: int = 64 * 1024
    proposals_max: int = 256
    relayed_max: int = 64
    forwarded_max: int = 16  # batches kept per peer that forwarded them on suspicion
    barriers_max: int = 1024
    held_max: int = 128  # out-of-order UI messages held per peer (a gap waits for its fill)
    retransmit_max: int = 64  # own messages re-sent in one answer to a STATUS
    own_log_max: int = LOG_ENTRIES_MAX  # own UI messages kept since the stable checkpoint
    requests_max: int = 64  # REQ-VIEW-CHANGEs kept (one per replica, for views ahead)
    snapshot_bytes_max: int = 16 << 20
    # Stable snapshots kept to serve state transfers (the newest included): a
    # lagging replica's request for a certificate that was the newest when it
    # left arrives after the cluster moved on by a checkpoint or two.
    snapshots_served_max: int = 4

    def validate(self) -> MinbftParams:
        for name in (
            "checkpoint_interval", "log_size", "view_change_timeout_us", "view_change_resend_us",
            "status_us", "state_fetch_timeout_us", "batch_bytes_max", "proposals_max",
            "relayed_max", "forwarded_max", "barriers_max", "held_max", "retransmit_max",
            "own_log_max", "requests_max", "snapshot_bytes_max", "snapshots_served_max",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"MinbftParams.{name} must be >= 1")
        if self.log_size % self.checkpoint_interval != 0:
            raise ConfigError("MinbftParams.log_size must be a multiple of checkpoint_interval")
        if self.log_size < 2 * self.checkpoint_interval:
            raise ConfigError("MinbftParams.log_size must be at least 2 * checkpoint_interval")
        if self.own_log_max < 4 * self.log_size:
            raise ConfigError("MinbftParams.own_log_max must be at least 4 * log_size")
        if self.own_log_max > LOG_ENTRIES_MAX:
            raise ConfigError(f"MinbftParams.own_log_max must be <= {LOG_ENTRIES_MAX}")
        if self.batch_bytes_max > BATCH_BYTES_MAX:
            raise ConfigError(f"MinbftParams.batch_bytes_max must be <= {BATCH_BYTES_MAX}")
        if self.snapshot_bytes_max > SNAPSHOT_BYTES_MAX:
            raise ConfigError(f"MinbftParams.snapshot_bytes_max must be <= {SNAPSHOT_BYTES_MAX}")
        if not 0 <= self.view_change_backoff_exponent_max <= 16:
            raise ConfigError("MinbftParams.view_change_backoff_exponent_max must be in [0, 16]")
        return self
