"""Broken timer back-offs shared by PBFT's and MinBFT's variants (ADR 0040,
0046): mixins placed before a protocol's ``ViewChanges``, whose ``on_idle``
(a backup's ``PATIENCE_TIMEOUTS`` request timeouts in a row with nothing
waited for) and ``on_progress`` (a batch executed) they silence."""

from __future__ import annotations

from typing import TYPE_CHECKING

from replicaio.core.patience import backoff_exponent

if TYPE_CHECKING:
    from replicaio.protocols.bft import BftReplica


class IdleNotProgress:
    """Rule D of pbft27 (ADR 0040, before 2026-12-06 evening): only
    ``PROGRESS_BATCHES`` batches executed make a view progress, an idle request
    timeout does not. A group whose traffic is sparser than four batches a view
    piles up a doubling with every view it changes, executing or not, and a
    primary failing after a few of them is replaced only after many timeouts."""

    def on_idle(self) -> None:
        pass


class NeverReset(IdleNotProgress):
    """The back-off never reset: every timer of a view doubled per view since
    the first (up to ``2^view_change_backoff_exponent_max``), whatever executed
    and however long the backup waited for nothing."""

    def on_progress(self) -> None:
        pass


class ResetByOneBatch:
    """ADR 0039's rule (MinBFT's before ADR 0046, and tried in PBFT by
    pbft27): every timer of a view doubled per view in a row before it in
    which this replica executed nothing, and back to ``view_change_timeout_us``
    as soon as one batch executes in the view; no idle evidence, no doubling
    per primary replaced. A timer shorter than a batch round is back after
    each view's first batch and replaces primary after primary (ADR 0040)."""

    replica: BftReplica
    progress_view: int

    def on_progress(self) -> None:
        if self.replica.active:
            self.progress_view = self.replica.view

    def on_idle(self) -> None:
        pass  # (the rule knows only batches executed)

    def timeout_us(self) -> int:
        replica = self.replica
        params = replica.params
        return params.view_change_timeout_us << backoff_exponent(
            replica.view, self.progress_view, params.view_change_backoff_exponent_max)
