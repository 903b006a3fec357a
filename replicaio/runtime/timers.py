"""A live host's armed timers on its event loop, re-armed without a new loop timer.

A core re-arms some timers far more often than they expire: a Raft follower
sets its election timer again at every AppendEntries, a leader its commit
notice at every batch. With one ``loop.call_later`` per arming, each re-arm
cancels a loop timer and makes another (a handle, a heap removal and a heap
push). :class:`LazyTimers` keeps, per timer id, the loop timer it has and the
instant the id is due: a re-arm that is due no earlier than the loop timer
fires only moves the due instant; when the loop timer fires early for its id
it is scheduled again for the due instant, and fires the id only once that
has come (see :data:`SLACK`). Disarming forgets the due instant and leaves
the loop timer: when it fires, it finds nothing due and is dropped. A re-arm
due *earlier* than the loop timer (or an id without one) makes a new loop
timer, as before.

Guarantee, the same as one ``call_later`` per arming: ``on_due(id)`` is called
once per arming that is neither disarmed nor re-armed before it is due, on
the loop, no earlier than its due instant less :data:`SLACK`, and never for
an arming disarmed or re-armed before that. The host's tokens (``timers_stale``)
still drop an expiry that was queued before a disarm or a re-arm.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

# An id whose due instant is at most this far ahead when its loop timer fires is
# due: uvloop schedules timers in whole milliseconds (rounded) against a clock
# read once per turn, so a ``call_later`` fired up to half a millisecond early
# before; scheduling such a remainder again would fire in the same turn.
SLACK: Final = 0.0005


class LazyTimers:
    """Armed timer ids, each with at most one loop timer (see the module
    docstring). Every method is called on the loop's thread."""

    __slots__ = ("at", "due", "handles", "kept", "loop", "made", "on_due")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_due: Callable[[int], None]) -> None:
        self.loop = loop
        self.on_due = on_due
        self.due: dict[int, float] = {}  # armed ids: loop time they are due
        self.handles: dict[int, asyncio.TimerHandle] = {}  # each id's loop timer, if any
        self.at: dict[int, float] = {}  # when that loop timer fires
        self.made = 0  # loop timers made (armings and re-schedulings)
        self.kept = 0  # armings that kept the id's loop timer

    def arm(self, timer_id: int, delay: float) -> None:
        """``timer_id`` is due ``delay`` seconds from now (an earlier arming of it
        is forgotten)."""
        due = self.loop.time() + delay
        self.due[timer_id] = due
        handle = self.handles.get(timer_id)
        if handle is not None:
            if self.at[timer_id] <= due:
                self.kept += 1
                return
            handle.cancel()
        self.schedule(timer_id, due)

    def disarm(self, timer_id: int) -> None:
        """Forget ``timer_id``'s arming, if any (its loop timer stays, and is dropped
        when it fires unless the id is armed again meanwhile)."""
        self.due.pop(timer_id, None)

    def schedule(self, timer_id: int, at: float) -> None:
        self.made += 1
        self.handles[timer_id] = self.loop.call_at(at, self.fired, timer_id)
        self.at[timer_id] = at

    def fired(self, timer_id: int) -> None:
        """The loop timer of ``timer_id`` fired."""
        del self.handles[timer_id]
        del self.at[timer_id]
        due = self.due.get(timer_id)
        if due is None:
            return  # disarmed meanwhile
        if due - self.loop.time() > SLACK:
            self.schedule(timer_id, due)  # re-armed later meanwhile
            return
        del self.due[timer_id]
        self.on_due(timer_id)

    def close(self) -> None:
        """Cancel every loop timer: nothing is due any more."""
        for handle in self.handles.values():
            handle.cancel()
        self.handles.clear()
        self.at.clear()
        self.due.clear()
