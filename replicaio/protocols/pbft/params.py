"""PBFT's periods and bounds, validated up front.

Times are microseconds of virtual time. Every bound is named ``*_max`` (a hit
is counted as ``bound_pbft_<name>``). The checkpoint interval K and the log
size L (the watermark window, H = h + L) must be the same on every replica,
and K must equal SMR's ``snapshot_interval``: the assembly sets both from one
number.
"""

from __future__ import annotations

from dataclasses import dataclass

from replicaio.core.errors import ConfigError
from replicaio.protocols.pbft.messages import BATCH_BYTES_MAX, LOG_SIZE_MAX, SNAPSHOT_BYTES_MAX


@dataclass(frozen=True, slots=True)
class PbftParams:
    """Periods, bounds and windows of one PBFT replica (the same on every replica)."""

    checkpoint_interval: int = 16  # K: a CHECKPOINT every K sequence numbers
    log_size: int = 32  # L: sequence numbers in (h, h + L] may be assigned; a multiple of K
    # A backup waiting for work (a relayed batch, a pre-prepared one) that sees
    # nothing executed for this long moves to the next view; every timer of a
    # view is this doubled per view in a row before it without progress
    # (section 4.5.2; ``ViewChanges.timeout_us``, ADR 0040).
    view_change_timeout_us: int = 400_000
    view_change_backoff_exponent_max: int = 6
    view_change_resend_us: int = 200_000  # VIEW-CHANGE re-sent while the view is not started
    status_us: int = 100_000  # period of STATUS (retransmission, catching up)
    state_fetch_timeout_us: int = 300_000  # ask another replica for the state after this
    # -- bounds ------------------------------------------------------------------
    batch_bytes_max: int = 64 * 1024  # a batch this replica will order
    proposals_max: int = 256  # batches the primary holds before assigning them a number
    relayed_max: int = 64  # own batches relayed to the primary and not yet executed
    awaited_max: int = 1024  # clients' requests a backup watches the primary order
    forwarded_max: int = 16  # batches kept per peer that forwarded them on suspicion
    barriers_max: int = 1024  # read barriers waiting for their null batch to execute
    retransmit_max: int = 64  # sequence numbers re-sent in one answer to a STATUS
    snapshot_bytes_max: int = 16 << 20  # a state this replica will fetch
    # -- authentication ----------------------------------------------------------
    # MAC authenticators between replicas (Castro and Liskov, TOCS 2002 section
    # 3.2; docs/adr/0025): a COMMIT that comes from its author on the
    # authenticated channel counts towards committing without its signature
    # being checked; the signature is checked only before the COMMIT is shown to
    # a third replica (retransmission, committed certificates). Everything that
    # enters a certificate (PRE-PREPARE, PREPARE, CHECKPOINT, VIEW-CHANGE,
    # NEW-VIEW) is checked as before.
    commits_on_channel: bool = False

    def validate(self) -> PbftParams:
        """Raise :class:`ConfigError` unless the parameters are usable."""
        for name in (
            "checkpoint_interval", "log_size", "view_change_timeout_us", "view_change_resend_us",
            "status_us", "state_fetch_timeout_us", "batch_bytes_max", "proposals_max",
            "relayed_max", "awaited_max", "forwarded_max", "barriers_max", "retransmit_max",
            "snapshot_bytes_max",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"PbftParams.{name} must be >= 1")
        if self.log_size % self.checkpoint_interval != 0:
            raise ConfigError("PbftParams.log_size (L) must be a multiple of "
                              "checkpoint_interval (K)")
        if self.log_size < 2 * self.checkpoint_interval:
            raise ConfigError("PbftParams.log_size must be at least 2 * checkpoint_interval, "
                              "or the window closes before a checkpoint can become stable")
        if self.log_size > LOG_SIZE_MAX:
            raise ConfigError(f"PbftParams.log_size must be <= {LOG_SIZE_MAX}")
        if self.batch_bytes_max > BATCH_BYTES_MAX:
            raise ConfigError(f"PbftParams.batch_bytes_max must be <= {BATCH_BYTES_MAX}")
        if self.snapshot_bytes_max > SNAPSHOT_BYTES_MAX:
            raise ConfigError(f"PbftParams.snapshot_bytes_max must be <= {SNAPSHOT_BYTES_MAX}")
        if not 0 <= self.view_change_backoff_exponent_max <= 16:
            raise ConfigError("PbftParams.view_change_backoff_exponent_max must be in [0, 16]")
        return self
