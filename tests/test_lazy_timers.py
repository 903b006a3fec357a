"""A live host's timers on its loop (``runtime.timers.LazyTimers``): a re-arm due
no earlier than the id's loop timer keeps it and still fires at the new due
instant, never the old one; a re-arm due earlier makes a new loop timer; a
disarmed id never fires, and one armed again after a disarm fires once. On a
loop whose clock the test moves (every instant exact), then on the real loops
through a host: a follower's election timer, re-armed at every AppendEntries,
makes no loop timer per message."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any

import pytest
from test_runtime_transport import LOOPS, run

from replicaio.runtime.timers import SLACK, LazyTimers


class Handle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualLoop:
    """``time`` and ``call_at``, with a clock the test moves (:meth:`advance`)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.heap: list[tuple[float, int, Handle, Callable[..., None], tuple[Any, ...]]] = []
        self.order = itertools.count()
        self.scheduled = 0

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., None], *args: Any) -> Handle:
        handle = Handle()
        self.scheduled += 1
        heapq.heappush(self.heap, (when, next(self.order), handle, callback, args))
        return handle

    def advance(self, to: float) -> None:
        while self.heap and self.heap[0][0] <= to:
            when, _, handle, callback, args = heapq.heappop(self.heap)
            self.now = max(self.now, when)
            if not handle.cancelled:
                callback(*args)
        self.now = to

    def live(self) -> int:
        return sum(1 for entry in self.heap if not entry[2].cancelled)


def timers() -> tuple[ManualLoop, LazyTimers, list[tuple[int, float]]]:
    loop = ManualLoop()
    fired: list[tuple[int, float]] = []
    lazy = LazyTimers(loop, lambda timer_id: fired.append((timer_id, loop.now)))  # type: ignore[arg-type]
    return loop, lazy, fired


def test_rearmed_later_keeps_its_loop_timer_and_fires_at_the_new_instant() -> None:
    loop, lazy, fired = timers()
    lazy.arm(1, 0.150)
    for step in range(1, 50):  # an AppendEntries every 10 ms: the election timer again
        loop.advance(100.0 + step * 0.010)
        lazy.arm(1, 0.150)
    # 50 armings in 0.49 s: one loop timer, scheduled again each time it fired
    # (every 150 ms or so) and found its id re-armed later; never fired the id.
    assert loop.scheduled <= 4 and lazy.kept == 49 and not fired
    last = loop.now
    loop.advance(last + 1.0)
    # Fired once, when its last arming was due, not when an earlier one was.
    assert fired == [(1, pytest.approx(last + 0.150))]
    assert not lazy.handles and not lazy.due


def test_rearmed_earlier_makes_a_new_loop_timer() -> None:
    loop, lazy, fired = timers()
    lazy.arm(1, 1.0)
    lazy.arm(1, 0.010)
    assert loop.scheduled == 2 and loop.live() == 1  # the later one cancelled
    loop.advance(loop.now + 2.0)
    assert fired == [(1, pytest.approx(100.010))]


def test_disarmed_never_fires_and_armed_again_fires_once() -> None:
    loop, lazy, fired = timers()
    lazy.arm(1, 0.050)
    lazy.arm(2, 0.050)
    lazy.disarm(1)
    loop.advance(100.2)
    assert fired == [(2, pytest.approx(100.050))]
    lazy.arm(3, 0.100)
    lazy.disarm(3)
    lazy.arm(3, 0.200)  # the dormant loop timer (due earlier) is kept and moves on
    loop.advance(101.0)
    assert fired[1:] == [(3, pytest.approx(100.4))]
    assert loop.scheduled == 4  # 1, 2, 3, and 3 once more when its first timer fired


def test_due_within_the_slack_fires_rather_than_rescheduling() -> None:
    loop, lazy, fired = timers()
    lazy.arm(1, 0.010)
    loop.advance(100.001)
    lazy.arm(1, 0.010 - 0.001 + SLACK / 2)  # due just after the loop timer
    loop.advance(100.0101)
    assert fired == [(1, pytest.approx(100.010))] and loop.scheduled == 1
    lazy.arm(1, 0.010)
    loop.advance(100.011)
    lazy.arm(1, 0.010 - 0.001 + 2 * SLACK)  # beyond the slack: scheduled again
    loop.advance(100.0205)  # its loop timer fired (at 100.020), the id not yet
    assert fired[1:] == [] and loop.scheduled == 3
    loop.advance(100.1)
    assert fired[1:] == [(1, pytest.approx(100.020 + 2 * SLACK))]


def test_close_cancels_everything() -> None:
    loop, lazy, fired = timers()
    lazy.arm(1, 0.010)
    lazy.arm(2, 0.020)
    lazy.close()
    loop.advance(101.0)
    assert not fired and loop.live() == 0


@pytest.mark.parametrize("loop_name", LOOPS)
def test_real_loops_fire_each_arming_once_not_before_due(loop_name: str) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        fired: list[tuple[int, float]] = []
        lazy = LazyTimers(loop, lambda timer_id: fired.append((timer_id, loop.time())))
        began = loop.time()
        lazy.arm(1, 0.010)
        lazy.arm(2, 0.020)
        lazy.arm(1, 0.030)  # later than its loop timer: kept, scheduled again at 10 ms
        lazy.arm(3, 0.005)
        lazy.disarm(3)
        await asyncio.sleep(0.080)
        assert sorted(timer_id for timer_id, _ in fired) == [1, 2]
        at = {timer_id: when - began for timer_id, when in fired}
        # Not before due (uvloop keeps milliseconds: 1 ms of slack, as for any of
        # its timers): timer 1 at its second arming's instant, not its first.
        assert at[2] >= 0.020 - 0.001 and at[1] >= 0.030 - 0.001
        assert not lazy.handles and not lazy.due

    run(scenario, loop_name)
