"""Tests of the deterministic scheduler (replicaio.core.scheduler, replicaio.core.lines):
suspension on lines, FIFO wake order, choice points in ``first``, structured
cancellation of scopes, failures that stop loudly, task results; and timeouts on
virtual time through a Node (timers are effects, firing is an input)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from replicaio.core.config import ClusterConfig, Resilience
from replicaio.core.context import Context
from replicaio.core.effects import Request, Start, TimerFired
from replicaio.core.errors import Cancelled
from replicaio.core.lines import AnyOf, Family, Line, first
from replicaio.core.node import TICK_TIMER, Node
from replicaio.core.scheduler import CANCEL_ROUNDS_MAX, LIVELOCK_TURNS, Scheduler, Scope


def never_choose(label: str, count: int) -> int:
    raise AssertionError(f"unexpected choice point {label!r} among {count}")


def make(choose: Callable[[str, int], int] = never_choose) -> tuple[Scheduler, Scope]:
    scheduler = Scheduler(choose)
    return scheduler, Scope(scheduler, "test")


# -- lines and wake-up ---------------------------------------------------------


def test_task_awaiting_unset_line_suspends_then_resumes_with_its_value() -> None:
    scheduler, scope = make()
    line: Line[str] = scheduler.line("x")
    trace: list[object] = []

    async def waiter() -> None:
        trace.append("before")
        trace.append(await line)

    task = scope.spawn(waiter())
    assert trace == []  # spawned tasks first run at the next turn
    scheduler.run()
    assert trace == ["before"]
    assert (task.waiting, task.done) == ((line,), False)  # (compared, not narrowed by mypy)
    scheduler.run()  # nothing can happen: no spurious wake-up
    assert trace == ["before"]
    line.set("value")
    assert trace == ["before"]  # setting only queues the task
    scheduler.run()
    assert trace == ["before", "value"]
    assert task.done
    assert task.result.value() is None
    assert line not in task.waiting
    assert not line.waiters


def test_awaiting_a_set_line_does_not_suspend() -> None:
    scheduler, scope = make()
    line: Line[int] = scheduler.line("x")
    line.set(7)
    trace: list[int] = []

    async def reader() -> None:
        trace.append(await line)
        trace.append(await line)

    scope.spawn(reader())
    scheduler.run()
    assert trace == [7, 7]
    assert scheduler.steps == 1  # ran to completion in one step


def wake_order_program() -> list[str]:
    """Several tasks wait on shared lines; returns the trace of who ran when."""
    scheduler, scope = make()
    lines = [scheduler.line(f"l{index}") for index in range(3)]
    trace: list[str] = []

    async def worker(name: str, order: list[int]) -> None:
        for index in order:
            value = await lines[index]
            trace.append(f"{name}:{value}")

    scope.spawn(worker("a", [0, 1]), "a")
    scope.spawn(worker("b", [1, 2]), "b")
    scope.spawn(worker("c", [0, 2]), "c")
    scope.spawn(worker("d", [0]), "d")
    scheduler.run()
    for index, value in ((0, "zero"), (1, "one"), (2, "two")):
        lines[index].set(value)
        scheduler.run()
    return trace


def test_wake_order_is_fifo_in_wait_order() -> None:
    # l0 wakes a, c, d in the order they waited; a then waits on l1 behind b,
    # so l1 wakes b before a although a was spawned first; l2 wakes c then b.
    assert wake_order_program() == [
        "a:zero",
        "c:zero",
        "d:zero",
        "b:one",
        "a:one",
        "c:two",
        "b:two",
    ]


def test_same_program_gives_the_same_trace() -> None:
    runs = {tuple(wake_order_program()) for _ in range(5)}
    assert len(runs) == 1


def test_line_set_twice_is_a_bug() -> None:
    scheduler, _ = make()
    line: Line[int] = scheduler.line("once")
    line.set(1)
    with pytest.raises(AssertionError, match="set twice"):
        line.set(2)
    assert line.value() == 1


def test_line_read_before_set_is_a_bug() -> None:
    scheduler, _ = make()
    with pytest.raises(AssertionError, match="before it was set"):
        scheduler.line("early").value()


def test_awaiting_something_else_than_a_line_is_a_bug() -> None:
    scheduler, scope = make()

    class Foreign:
        def __await__(self) -> Any:
            yield "not a line"

    async def bad() -> None:
        await Foreign()

    scope.spawn(bad(), "bad")
    with pytest.raises(AssertionError, match="not a line"):
        scheduler.run()


def test_family_creates_lazily_discards_and_is_bounded() -> None:
    scheduler, _ = make()
    family: Family[int, str] = Family(scheduler, "per_peer", size_max=2)
    assert 0 not in family
    assert family[0] is family[0]
    family[1].set("x")
    assert len(family) == 2
    with pytest.raises(AssertionError, match="size_max"):
        family[2]
    family.discard(0)
    assert 0 not in family
    assert family[2].name == "per_peer[2]"


# -- first(): choice points ------------------------------------------------------


def test_first_with_one_ready_line_takes_it_without_a_choice() -> None:
    scheduler, scope = make(never_choose)
    a: Line[str] = scheduler.line("a")
    b: Line[str] = scheduler.line("b")
    got: list[str] = []

    async def chooser() -> None:
        got.append(await first(a, b))

    scope.spawn(chooser())
    scheduler.run()
    assert got == []
    b.set("b-value")
    scheduler.run()
    assert got == ["b-value"]
    assert not a.waiters  # the losing line no longer holds the task
    a.set("late")  # and waking it later does nothing
    scheduler.run()
    assert got == ["b-value"]


@pytest.mark.parametrize("index", [0, 1])
def test_first_with_two_ready_lines_asks_the_choose_function(index: int) -> None:
    asked: list[tuple[str, int]] = []

    def choose(label: str, count: int) -> int:
        asked.append((label, count))
        return index

    scheduler, scope = make(choose)
    a: Line[str] = scheduler.line("a")
    b: Line[str] = scheduler.line("b")
    c: Line[str] = scheduler.line("c")
    got: list[str] = []

    async def chooser() -> None:
        got.append(await first(a, b, c, label="echo-or-ready"))

    scope.spawn(chooser())
    scheduler.run()
    # both become available before the task resumes
    c.set("c-value")
    a.set("a-value")
    scheduler.run()
    assert asked == [("echo-or-ready", 2)]
    # alternatives are the available lines in argument order: a, then c
    assert got == [["a-value", "c-value"][index]]


def test_first_on_lines_already_ready_also_chooses() -> None:
    asked: list[tuple[str, int]] = []

    def choose(label: str, count: int) -> int:
        asked.append((label, count))
        return count - 1

    scheduler, scope = make(choose)
    lines = [scheduler.line(str(index)) for index in range(3)]
    for index, line in enumerate(lines):
        line.set(index)
    got: list[int] = []

    async def chooser() -> None:
        got.append(await first(*lines))

    scope.spawn(chooser())
    scheduler.run()
    assert asked == [("first", 3)]
    assert got == [2]


def test_choose_out_of_range_is_a_bug() -> None:
    scheduler, scope = make(lambda label, count: count)
    a: Line[int] = scheduler.line("a")
    b: Line[int] = scheduler.line("b")
    a.set(1)
    b.set(2)

    async def chooser() -> None:
        await first(a, b)

    scope.spawn(chooser())
    with pytest.raises(AssertionError, match=r"not in \[0, 2\)"):
        scheduler.run()


# -- scopes and cancellation ----------------------------------------------------


def test_leaving_a_scope_cancels_running_children_synchronously() -> None:
    scheduler, root = make()
    never: Line[None] = scheduler.line("never")
    go: Line[None] = scheduler.line("go")
    trace: list[str] = []
    children = []

    async def child(name: str) -> None:
        try:
            trace.append(f"{name} waits")
            await never
            trace.append(f"{name} resumed")  # must never happen
        finally:
            trace.append(f"{name} finally")

    async def parent() -> str:
        async with Scope(scheduler, "inner") as scope:
            children.append(scope.spawn(child("c1")))
            children.append(scope.spawn(child("c2")))
            await go
            trace.append("leaving")
        trace.append("left")
        return "parent done"

    task = root.spawn(parent())
    scheduler.run()
    assert trace == ["c1 waits", "c2 waits"]
    go.set(None)
    scheduler.run()
    # newest first, and before the parent's next statement
    assert trace == ["c1 waits", "c2 waits", "leaving", "c2 finally", "c1 finally", "left"]
    assert all(child.done and child.cancelled for child in children)
    assert not any(child.result.ready for child in children)  # no result when cancelled
    assert task.result.value() == "parent done"
    never.set(None)
    scheduler.run()
    assert "c1 resumed" not in trace
    assert "c2 resumed" not in trace


def test_a_child_cancelled_while_queued_never_runs() -> None:
    scheduler, root = make()
    trace: list[str] = []

    async def child() -> None:
        trace.append("child ran")

    async def parent() -> None:
        async with Scope(scheduler, "inner") as scope:
            scope.spawn(child())  # queued, not yet run
        trace.append("left")

    root.spawn(parent())
    scheduler.run()
    assert trace == ["left"]
    assert not scheduler.ready


def test_nested_scopes_cancel_transitively() -> None:
    scheduler, outer = make()
    never: Line[None] = scheduler.line("never")
    trace: list[str] = []

    async def grandchild() -> None:
        try:
            await never
        finally:
            trace.append("grandchild finally")

    async def child() -> None:
        try:
            async with Scope(scheduler, "inner") as inner:
                inner.spawn(grandchild())
                await never
        finally:
            trace.append("child finally")

    task = outer.spawn(child())
    scheduler.run()
    outer.cancel()
    assert trace == ["grandchild finally", "child finally"]
    assert task.done
    assert task.cancelled
    assert not outer.tasks
    assert not never.waiters


def test_cancelled_task_awaiting_again_in_finally_is_cancelled_again() -> None:
    scheduler, scope = make()
    never: Line[None] = scheduler.line("never")
    cleanup: Line[None] = scheduler.line("cleanup")
    trace: list[str] = []

    async def stubborn() -> None:
        try:
            await never
        finally:
            trace.append("finally")
            try:
                await cleanup
                trace.append("cleanup awaited")  # must never happen
            except Cancelled:
                trace.append("re-cancelled")
                raise

    task = scope.spawn(stubborn())
    scheduler.run()
    scope.cancel()
    assert trace == ["finally", "re-cancelled"]
    assert task.done
    assert not cleanup.waiters
    assert not scheduler.ready


def test_task_ignoring_cancellation_forever_is_a_bug() -> None:
    scheduler, scope = make()
    never: Line[None] = scheduler.line("never")
    rounds: list[int] = []

    async def deaf() -> None:
        while True:
            try:
                await never
            except Cancelled:
                rounds.append(1)

    scope.spawn(deaf(), "deaf")
    scheduler.run()
    with pytest.raises(AssertionError, match="deaf ignores cancellation"):
        scope.cancel()
    assert len(rounds) == CANCEL_ROUNDS_MAX


def test_task_cancelling_its_own_scope_stops_at_its_next_suspension() -> None:
    scheduler, root = make()
    go: Line[None] = scheduler.line("go")
    ready_line: Line[str] = scheduler.line("ready")
    ready_line.set("already")
    trace: list[str] = []
    tasks = []

    async def sibling() -> None:
        try:
            await go
        finally:
            trace.append("sibling finally")

    async def self_canceller(scope: Scope) -> None:
        try:
            scope.cancel()
            trace.append("after cancel")  # runs: a task cannot throw into itself
            trace.append(await ready_line)  # no suspension: still running
            await go
            trace.append("after await")  # must never happen
        finally:
            trace.append("own finally")

    async def parent() -> None:
        async with Scope(scheduler, "inner") as scope:
            tasks.append(scope.spawn(sibling()))
            tasks.append(scope.spawn(self_canceller(scope)))
            await go

    root.spawn(parent())
    scheduler.run()
    assert trace == ["sibling finally", "after cancel", "already", "own finally"]
    assert tasks[1].cancel_pending
    assert tasks[1].done
    assert tasks[1].cancelled
    assert not go.waiters or tasks[1] not in go.waiters
    late = sibling()
    with pytest.raises(AssertionError, match="spawn into cancelled scope"):
        tasks[1].scope.spawn(late)
    late.close()


def test_scope_wait_waits_for_every_child() -> None:
    scheduler, root = make()
    lines = [scheduler.line(f"l{index}") for index in range(3)]
    trace: list[str] = []

    async def child(index: int) -> None:
        await lines[index]
        trace.append(f"child{index}")

    async def parent() -> None:
        async with Scope(scheduler, "inner") as scope:
            for index in range(3):
                scope.spawn(child(index))
            await scope.wait()
            trace.append("all done")

    task = root.spawn(parent())
    scheduler.run()
    for index in (2, 0):
        lines[index].set(None)
        scheduler.run()
        assert "all done" not in trace
    lines[1].set(None)
    scheduler.run()
    assert trace == ["child2", "child0", "child1", "all done"]
    assert task.done


def test_scope_wait_counts_cancelled_children_as_finished() -> None:
    scheduler, root = make()
    never: Line[None] = scheduler.line("never")
    trace: list[str] = []

    async def waiter(scope: Scope) -> None:
        await scope.wait()
        trace.append("waited")

    async def idle() -> None:
        await never

    group = Scope(scheduler, "group")
    child = group.spawn(idle())
    root.spawn(waiter(group))
    scheduler.run()
    assert trace == []
    child.cancel()
    scheduler.run()
    assert trace == ["waited"]


def test_spawn_into_a_cancelled_scope_is_a_bug() -> None:
    _, scope = make()
    scope.cancel()

    async def nothing() -> None:
        pass

    coroutine = nothing()
    with pytest.raises(AssertionError, match="spawn into cancelled scope test"):
        scope.spawn(coroutine)
    coroutine.close()


def test_exception_in_a_child_propagates_out_of_run() -> None:
    scheduler, scope = make()
    boom: Line[None] = scheduler.line("boom")

    async def buggy() -> None:
        await boom
        raise ValueError("protocol bug")

    scope.spawn(buggy())
    scheduler.run()
    boom.set(None)
    with pytest.raises(ValueError, match="protocol bug"):
        scheduler.run()
    assert scheduler.current is None


def test_exception_in_a_finally_during_cancellation_propagates() -> None:
    scheduler, scope = make()
    never: Line[None] = scheduler.line("never")

    async def buggy() -> None:
        try:
            await never
        finally:
            raise KeyError("cleanup bug")

    scope.spawn(buggy())
    scheduler.run()
    with pytest.raises(KeyError, match="cleanup bug"):
        scope.cancel()


def test_except_exception_does_not_swallow_cancellation() -> None:
    scheduler, scope = make()
    never: Line[None] = scheduler.line("never")
    trace: list[str] = []

    async def careless() -> None:
        try:
            await never
        except Exception:  # Cancelled is a BaseException
            trace.append("swallowed")
        trace.append("continued")

    task = scope.spawn(careless())
    scheduler.run()
    scope.cancel()
    assert trace == []
    assert task.done


def test_task_raising_cancelled_itself_finishes_quietly() -> None:
    scheduler, scope = make()
    go: Line[None] = scheduler.line("go")

    async def gives_up() -> int:
        await go
        raise Cancelled()

    task = scope.spawn(gives_up())
    scheduler.run()
    go.set(None)
    scheduler.run()
    assert task.done
    assert not task.result.ready
    assert not scope.tasks


def test_task_result_line_and_await_task() -> None:
    scheduler, scope = make()
    inputs: Line[int] = scheduler.line("input")
    got: list[int] = []

    async def compute() -> int:
        return 2 * await inputs

    async def consumer() -> None:
        worker = scope.spawn(compute(), "compute")
        got.append(await worker)
        got.append(worker.result.value())

    task = scope.spawn(consumer())
    scheduler.run()
    assert got == []
    inputs.set(21)
    scheduler.run()
    assert got == [42, 42]
    assert task.result.ready


def test_scheduler_runs_tasks_in_spawn_order() -> None:
    scheduler, scope = make()
    trace: list[int] = []

    async def record(index: int) -> None:
        trace.append(index)

    for index in range(10):
        scope.spawn(record(index))
    scheduler.run()
    assert trace == list(range(10))
    assert scheduler.steps == 10


# -- timeouts on virtual time, through a Node -----------------------------------------


class TimeoutProtocol:
    """Start spawns a task waiting for a 1 ms timeout or a value from a request."""

    name = "timeout-test"
    resilience = Resilience.ANY

    def __init__(self, context: Context) -> None:
        self.context = context
        self.value: Line[Any] = context.node.scheduler.line("value")

    def start(self) -> None:
        async def wait_for_value() -> None:
            timeout = self.context.sleep(1000)
            won = await first(timeout, self.value)
            self.context.output(("timeout",) if won is None else ("value", won))

        self.context.spawn(wait_for_value(), "waiter")

    def on_request(self, payload: Any) -> str | None:
        self.value.set(payload)
        return None


def start_timeout_node() -> tuple[Node, int]:
    node = Node(0, ClusterConfig(1, 0, resilience=Resilience.ANY), TimeoutProtocol)
    effects = node.step(Start({}))
    armed = [timer for timer in effects.timers_set if timer[0] != TICK_TIMER]
    assert len(armed) == 1
    timer_id, delay_us = armed[0]
    assert timer_id != TICK_TIMER
    assert delay_us == 1000
    assert effects.outputs == []
    assert effects.timers_cancelled == []
    return node, timer_id


def test_timer_firing_resumes_the_waiting_task() -> None:
    node, timer_id = start_timeout_node()
    effects = node.step(TimerFired(timer_id))
    assert effects.outputs == [("timeout",)]
    assert effects.timers_cancelled == []  # it fired: nothing left to cancel
    assert node.timers == {}
    # a late duplicate firing is counted, not a crash
    effects = node.step(TimerFired(timer_id))
    assert not effects
    assert node.counters["timer_unknown"] == 1


def test_task_finishing_cancels_its_unfired_timers() -> None:
    node, timer_id = start_timeout_node()
    effects = node.step(Request("data"))
    assert effects.outputs == [("value", "data")]
    assert effects.timers_cancelled == [timer_id]
    assert node.timers == {}
    effects = node.step(TimerFired(timer_id))  # the host lost the race
    assert not effects.outputs
    assert node.counters["timer_unknown"] == 1


class ShortTimeoutProtocol(TimeoutProtocol):
    """A request spawns a task that arms a timer and may finish in the same step."""

    def on_request(self, payload: Any) -> str | None:
        if payload == "short":
            self.context.spawn(self.short_lived(), "short")
            return None
        return super().on_request(payload)

    async def short_lived(self) -> None:
        await first(self.context.sleep(5000), self.value)


def test_timer_armed_and_cancelled_in_one_batch_is_never_armed() -> None:
    node = Node(0, ClusterConfig(1, 0, resilience=Resilience.ANY), ShortTimeoutProtocol)
    node.step(Start({}))
    node.step(Request("data"))  # the value is there: "short" will not wait
    effects = node.step(Request("short"))
    # The host cancels, then arms: a timer in both lists would be armed for nothing
    # and fire later as timer_unknown.
    assert effects.timers_set == []
    assert effects.timers_cancelled == []
    assert node.timers == {}


def test_long_lived_task_does_not_accumulate_state_per_timer() -> None:
    class Heartbeat(TimeoutProtocol):
        def start(self) -> None:
            async def beat() -> None:
                while True:
                    await self.context.sleep(10)
                    self.context.output("beat")

            self.task = self.context.spawn(beat(), "heartbeat")

    node = Node(0, ClusterConfig(1, 0, resilience=Resilience.ANY), Heartbeat)
    effects = node.step(Start({}))
    for _ in range(200):
        ((timer_id, delay_us),) = effects.timers_set
        assert delay_us == 10
        effects = node.step(TimerFired(timer_id))
        assert effects.outputs == ["beat"]
    heartbeat = node.protocol
    assert isinstance(heartbeat, Heartbeat)
    task = heartbeat.task
    assert len(node.timers) == 1
    assert len(task.on_finish) <= 1  # flat memory however long the task lives
    task.scope.cancel()
    assert node.timers == {}


# -- livelocks fail loudly ------------------------------------------------------------


async def spin(wait: Any, spins: list[int]) -> None:
    while len(spins) < 2 * LIVELOCK_TURNS:  # (ends, so a missing bound fails, not hangs)
        spins.append(1)
        await wait


@pytest.mark.parametrize("wrap", [False, True])
def test_a_loop_whose_wait_is_already_satisfied_fails_instead_of_spinning(wrap: bool) -> None:
    """An await of a set line (or of AnyOf with one set) returns at once; a loop that
    only awaits such a line would never give the step back. The run counts those
    awaits with its task steps and fails an assertion at ``LIVELOCK_TURNS``."""
    scheduler, scope = make()
    line: Line[int] = scheduler.line("done")
    line.set(1)
    spins: list[int] = []
    scope.spawn(spin(AnyOf((line,)) if wrap else line, spins))
    with pytest.raises(AssertionError, match="livelock"):
        scheduler.run()
    assert LIVELOCK_TURNS - 2 <= len(spins) <= LIVELOCK_TURNS


def test_tasks_that_requeue_each_other_forever_fail_too() -> None:
    scheduler, scope = make()
    mine: list[Line[None]] = []
    theirs: list[Line[None]] = []

    async def ping(own: list[Line[None]], other: list[Line[None]]) -> None:
        for _ in range(LIVELOCK_TURNS):  # (ends, so a missing bound fails, not hangs)
            line: Line[None] = scheduler.line()
            own.append(line)
            if other:
                other.pop().set(None)  # wakes the other task, which wakes this one
            await line

    scope.spawn(ping(mine, theirs))
    scope.spawn(ping(theirs, mine))
    with pytest.raises(AssertionError, match="livelock: tasks re-queued forever"):
        scheduler.run()
    scheduler.abandon()


def test_a_run_s_count_starts_again_at_every_run() -> None:
    """Many runs each below the bound never trip it: the count is per run (per step)."""
    scheduler, scope = make()
    line: Line[int] = scheduler.line("set")
    line.set(7)
    total: list[int] = []

    async def awaits_a_few() -> None:
        for _ in range(1000):
            total.append(await line)

    for _ in range(LIVELOCK_TURNS // 1000 + 5):
        scope.spawn(awaits_a_few())
        scheduler.run()
    assert len(total) == 1000 * (LIVELOCK_TURNS // 1000 + 5)
