"""Broken timer back-offs shared by PBFT's and MinBFT's variants (ADR 0040,
0046): mixins placed before a protocol's ``ViewChanges``, whose ``on_idle``
(a backup's ``PATIENCE_TIMEOUTS`` request timeouts in a row with nothing
waited for) and ``on_progress`` (a batch executed) they silence."""

from __future__ import annotations


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
