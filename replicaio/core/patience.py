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
:class:`ViewBackoff` doubles it per view in a row before it without progress
(:func:`backoff_exponent`), so the back-off is reset by progress, never by a
view merely starting. Progress is a view in which the replica executed
:data:`PROGRESS_BATCHES` batches while active, or in which a backup's request
timer ran :data:`PATIENCE_TIMEOUTS` timeouts in a row with nothing waited for
(a group with nothing to execute shows no other), and a view keeps the
doubling it was entered with (ADR 0040: with pipelined batches one batch
executed says nothing about a timeout shorter than a round). PBFT (ADR 0040)
and MinBFT (ADR 0046; ADR 0039's rule before: one batch executed reset the
current view's timers) share it.

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



class ViewBackoff:
    """The doubling of every timer of a replica's current view (ADR 0040, 0046),
    mixed into PBFT's and MinBFT's ``ViewChanges`` (its attributes are theirs:
    :meth:`init_backoff` assigns them where their ``__init__`` calls it).

    * :meth:`enter_backoff` fixes it when the replica moves to a view: one per
      view in a row before it without progress (:func:`backoff_exponent`);
      progress made in a view shortens the *next* view's timers, not its own
      (a timer shorter than a batch round would be back after each view's first
      batch);
    * a view is one with progress once the replica executed
      :data:`PROGRESS_BATCHES` batches in it while active
      (:meth:`executed_in_backoff`), or a backup's request timer ran
      :data:`PATIENCE_TIMEOUTS` timeouts in a row that began and ended with
      nothing waited for (:meth:`idle_in_backoff`, counted by that timer);
    * the timeout is doubled at least once per primary the backup replaced
      since it last waited for nothing at both ends of a timeout (``replaced``,
      the backup's count: the load that needed a longer timeout is still there).

    Volatile: a restart counts as progress in the view before the one it
    restarts in (:meth:`restarted_in_backoff`), or in that view if the replica
    restarts active in it; nothing is durable. Pure; the caller owns timers and
    counters."""

    progress_view: int  # the last view this replica saw progress in
    exponent: int  # the current view's doubling, fixed by ``enter_backoff``
    executed_in_view: tuple[int, int]  # (view, batches executed in it while active)

    def init_backoff(self) -> None:
        self.progress_view = 0
        self.exponent = 0
        self.executed_in_view = (0, 0)

    def enter_backoff(self, view: int, exponent_max: int) -> None:
        """The replica moves to ``view``: fix its timers' doubling."""
        self.exponent = backoff_exponent(view, self.progress_view, exponent_max)

    def restarted_in_backoff(self, view: int, exponent_max: int) -> None:
        """After a restart in ``view`` (not active in it): the view before counts
        as progress."""
        self.progress_view = max(self.progress_view, view - 1)
        self.enter_backoff(view, exponent_max)

    def executed_in_backoff(self, view: int) -> None:
        """A batch executed while active in ``view``: its ``PROGRESS_BATCHES``-th
        makes ``view`` a view with progress."""
        last, count = self.executed_in_view
        count = count + 1 if last == view else 1
        self.executed_in_view = (view, count)
        if count == PROGRESS_BATCHES:
            self.progress_view = view

    def idle_in_backoff(self, view: int) -> None:
        """``PATIENCE_TIMEOUTS`` request timeouts in a row waited for nothing in
        ``view``: progress, as ``PROGRESS_BATCHES`` executed would be."""
        self.progress_view = view

    def backoff_timeout_us(self, base_us: int, replaced: int, exponent_max: int) -> int:
        """Every timer of the current view: ``base_us`` doubled ``exponent``
        times, or ``replaced`` times if more, at most ``exponent_max`` times."""
        return base_us << min(max(self.exponent, replaced), exponent_max)
