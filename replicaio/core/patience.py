"""How a BFT backup's request timer judges its primary (Castro and Liskov,
section 4.4; libbyz), shared by PBFT and MinBFT, whose view changes follow it.

A backup times the oldest wait of each kind it tracks (its own relayed
batches, the requests it awaits, the batches other backups forwarded, ...)
and restarts the timer whenever it executes something. When a timeout ends
and a timed wait of some kind still waits, the wait counts against the
primary only if **nothing executed** during the timeout, a **younger wait of
its kind executed first** (a primary ordering what it is given in turn does
not skip one), or the wait has outlasted :data:`PATIENCE_TIMEOUTS` timeouts
(a primary that orders others' work but never this backup's). A primary
working through a queue longer than one timeout is not replaced.

Every timer of a view backs off on failed views (section 4.5.2):
:func:`backoff_exponent` doubles it per view in a row before it without
progress, so the back-off is reset by progress, never by a view merely
starting. What counts as progress is the protocol's: MinBFT's is a batch
executed in the view (ADR 0039); PBFT's is :data:`PROGRESS_BATCHES` batches
executed in the view, and a PBFT view keeps the doubling it was entered with
(ADR 0040: with pipelined batches one batch executed said nothing about a
timeout shorter than a round).

Pure: no clock, no I/O; the caller owns the timer and the counters.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping, Sequence
from typing import Any, TypeVar

K = TypeVar("K")

# Timeouts a backup's oldest wait of a kind may outlast while the group executes
# other work before the primary is suspected for it.
PATIENCE_TIMEOUTS = 4

# Batches a replica executes in a view before the view counts as progress for
# the back-off of the views after it (PBFT, ADR 0040; MinBFT counts one).
PROGRESS_BATCHES = 4


def suspected_kind(
    names: Sequence[str],
    waits: Sequence[bool],
    overtaken: Sequence[bool],
    outlasted: list[int],
    nothing_executed: bool,
    count: Callable[[str], None],
) -> str | None:
    """The first kind (of ``names``) whose timed wait counts against the
    primary after a timeout, or ``None``. ``waits[k]``: kind k's timed wait
    still waits; ``overtaken[k]``: a younger wait of kind k executed first;
    ``outlasted[k]``: the timeouts kind k's wait had outlasted before this one,
    bumped here for every kind that still waits. ``count`` is told why
    (``suspected_nothing_executed``, ``suspected_overtaken``,
    ``suspected_patience``) for the kind that decided."""
    cause: str | None = None
    for kind, name in enumerate(names):
        if not waits[kind]:
            continue
        outlasted[kind] += 1
        if cause is not None:
            continue
        if nothing_executed:
            count("suspected_nothing_executed")
        elif overtaken[kind]:
            count("suspected_overtaken")
        elif outlasted[kind] >= PATIENCE_TIMEOUTS:
            count("suspected_patience")
        else:
            continue
        cause = name
    return cause


def stop_waiting(waits: MutableMapping[K, Any], key: K, overtaken: K | None) -> K | None:
    """``key`` executed: stop waiting for it in ``waits`` (oldest first) and
    return what the kind's *overtaken* wait is now: the oldest wait if ``key``
    was a younger one (it overtook the oldest), else ``overtaken`` unchanged."""
    if key not in waits:
        return overtaken
    oldest = next(iter(waits))
    del waits[key]
    return overtaken if oldest == key else oldest


def backoff_exponent(view: int, progress_view: int, exponent_max: int) -> int:
    """The doubling of a timer of ``view`` (``timeout << exponent``): one per
    view after ``progress_view`` (the last view this replica saw progress in)
    and before ``view``, at most ``exponent_max``. Section 4.5.2:
    a replica whose timer expires before a request executes in the new view
    waits twice as long for the one after, so that a timeout too short for the
    load cannot change views for ever."""
    return min(max(0, view - progress_view - 1), exponent_max)
