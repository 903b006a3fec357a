"""The Redis front's retry timers (``RetryTimers``; docs/benchmarks.md, "The
front's retry timers"): every flight's ``retry_after_ms`` on one loop timer. A
flight unsettled when it is due settles with ``RETRY_NOW``; one settled before
is left alone; flights are due in the order they were sent; after ``close``
nothing settles; settled flights do not pile up in the queue. Real event loops,
real time (delays of milliseconds)."""

from __future__ import annotations

import asyncio

import pytest
from test_runtime_transport import LOOPS, run

from replicaio.runtime.kv.connection import Flight, RetryTimers
from replicaio.runtime.kv.requests import RETRY_NOW, Outcome

DELAY_S = 0.02
SLACK_S = 0.001


class Sent:
    """What :class:`RetryTimers` reads of a flight: ``over``, and ``settled``
    (as :meth:`Flight.settled`: the first outcome wins)."""

    def __init__(self, name: str, log: list[tuple[str, Outcome, float]],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.name = name
        self.log = log
        self.loop = loop
        self.over = False

    def settled(self, outcome: Outcome) -> None:
        if self.over:
            return
        self.over = True
        self.log.append((self.name, outcome, self.loop.time()))


def flight(sent: Sent) -> Flight:
    return sent  # type: ignore[return-value]  # the two members RetryTimers uses


@pytest.mark.parametrize("loop_name", LOOPS)
def test_unsettled_flights_are_retried_when_due_in_order(loop_name: str) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        log: list[tuple[str, Outcome, float]] = []
        timers = RetryTimers(loop, DELAY_S)
        began = loop.time()
        a, b, c = (Sent(name, log, loop) for name in "abc")
        timers.add(flight(a))
        await asyncio.sleep(DELAY_S / 4)
        timers.add(flight(b))
        timers.add(flight(c))
        b.settled(b"+OK")  # its answer came first
        await asyncio.sleep(DELAY_S * 3)
        assert [(name, outcome) for name, outcome, _ in log] == [
            ("b", b"+OK"), ("a", RETRY_NOW), ("c", RETRY_NOW)]
        at = {name: when - began for name, _, when in log}
        # Not before they are due (uvloop's timers keep milliseconds: 1 ms of slack).
        assert at["a"] >= DELAY_S - SLACK_S and at["c"] >= DELAY_S + DELAY_S / 4 - SLACK_S
        assert timers.handle is None and not timers.queue  # nothing left to wait for
        # After close, a queued flight never settles.
        d = Sent("d", log, loop)
        timers.add(flight(d))
        timers.close()
        await asyncio.sleep(DELAY_S * 2)
        assert not d.over

    run(scenario, loop_name)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_settled_flights_do_not_pile_up(loop_name: str) -> None:
    """A front answering every request at once adds a flight per request: the
    ones settled before they are due leave the queue's head as the next ones
    come, so it holds what is unsettled plus the run of settled ones behind."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        log: list[tuple[str, Outcome, float]] = []
        timers = RetryTimers(loop, 10.0)  # never due in this test
        for number in range(10_000):
            sent = Sent(str(number), log, loop)
            timers.add(flight(sent))
            sent.settled(b"+OK")
        assert len(timers.queue) == 1
        assert all(outcome == b"+OK" for _, outcome, _ in log)
        timers.close()

    run(scenario, loop_name)


