"""The deterministic scheduler: protocol ``async`` code without asyncio.

Protocol code is ordinary ``async def`` code. Its only suspension points are
awaits on :class:`~replicaio.core.lines.Line` objects (directly or through
:func:`~replicaio.core.lines.first`). The scheduler drives coroutines by hand:
a task runs until it awaits a line that is not set, then waits until that line
is set, at which point it is appended to a FIFO ready queue. :meth:`run` runs
ready tasks until none is left: "the core runs until nothing more can happen".

Guarantees:

* Determinism: the order in which tasks run depends only on the order in which
  lines are set and tasks spawned, never on hashing, time or identity.
* Structure (after Trio's nurseries): every task belongs to a :class:`Scope`;
  leaving an ``async with scope`` block cancels every task still running in
  it, synchronously, so nothing outlives the block. Cancellation throws
  :class:`~replicaio.core.errors.Cancelled` into the task at its await; a
  cancelled task that awaits again is cancelled again at once.
* Failure: an exception other than ``Cancelled`` escaping a task is a bug in
  protocol code; it propagates out of :meth:`run` (and so out of the node's
  step) to stop the node loudly.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Coroutine
from functools import partial
from types import TracebackType
from typing import Any, TypeVar

from replicaio.core.errors import Cancelled
from replicaio.core.generic import Generic, Slotted
from replicaio.core.lines import AnyOf, Line

T = TypeVar("T")

ChooseFunction = Callable[[str, int], int]

# A cancelled task that keeps awaiting in ``finally`` blocks is re-cancelled at
# most this many times before it is treated as a bug.
CANCEL_ROUNDS_MAX = 64
# One ``Scheduler.run`` (one node step) that runs more task steps, or returns
# from more awaits at once (an awaited line already set), than this is a
# livelock: a loop whose wait is already satisfied spins inside its task, or
# tasks re-queue each other forever, and the step never returns. It is our bug,
# failed as an assertion (the simulator's ``node-raised``, a live node's crash)
# rather than a simulator that hangs or a node at full CPU. Legitimate steps run
# a few hundred (Bracha's long profile: at most 212 task steps in one run).
LIVELOCK_TURNS = 1_000_000


class Task(Slotted, Generic[T]):
    """A coroutine driven by the scheduler, owned by one scope.

    ``result`` is a line set with the coroutine's return value when it
    completes normally; it is never set if the task is cancelled. It is made
    when first asked for (most tasks are never awaited), already set if the
    task has returned by then.
    """

    __slots__ = (
        "_result",
        "_return_value",
        "_returned",
        "cancel_pending",
        "cancelled",
        "coroutine",
        "done",
        "name",
        "on_finish",
        "scheduler",
        "scope",
        "waiting",
    )

    def __init__(
        self, scheduler: Scheduler, scope: Scope, coroutine: Coroutine[Any, Any, T], name: str
    ) -> None:
        self.scheduler = scheduler
        self.scope = scope
        self.coroutine = coroutine
        self.name = name
        self._result: Line[T] | None = None
        self._returned = False
        self._return_value: Any = None
        self.waiting: tuple[Line[Any], ...] = ()
        self.done = False
        self.cancelled = False
        self.cancel_pending = False
        self.on_finish: list[Callable[[], None]] = []

    @property
    def result(self) -> Line[T]:
        """The line of the task's return value."""
        line = self._result
        if line is None:
            line = self._result = Line(self.scheduler, (self.name, ".result"))
            if self._returned:
                line.set(self._return_value)
        return line

    def wake(self, line: Line[Any]) -> None:
        """Called by a line that was set; queue the task if it waited on it."""
        waiting = self.waiting
        if not waiting:
            return
        if len(waiting) > 1:
            for other in waiting:
                if other is not line:
                    waiters = other.waiters
                    if waiters:
                        waiters.pop(self, None)
        self.waiting = ()
        self.scheduler.ready.append(self)

    def step(self) -> None:
        """Run the coroutine until it awaits an unset line, returns, or fails."""
        scheduler = self.scheduler
        previous = scheduler.current
        scheduler.current = self
        try:
            waited = self.coroutine.send(None)
        except StopIteration as stop:
            self._finish()
            if self._result is None:
                self._returned = True
                self._return_value = stop.value
            else:
                self._result.set(stop.value)
            return
        except Cancelled:
            self._finish()
            return
        finally:
            scheduler.current = previous
        if isinstance(waited, Line):
            line = waited  # typed in scheduler.pxd: its attributes are C reads compiled
            assert not line._is_set
            waiters = line.waiters
            if waiters is None:
                line.waiters = {self: None}
            else:
                waiters[self] = None
            self.waiting = (line,)
        else:
            self._wait_on_any(waited)
        if self.cancel_pending:
            self.cancel()

    def _wait_on_any(self, waited: object) -> None:
        assert isinstance(waited, AnyOf), f"task {self.name} awaited {waited!r}: not a line"
        for line in waited.lines:
            assert not line._is_set
            waiters = line.waiters
            if waiters is None:
                line.waiters = {self: None}
            else:
                waiters[self] = None
        self.waiting = waited.lines

    def cancel(self) -> None:
        """Throw ``Cancelled`` into the task now, until it finishes."""
        if self.done:
            return
        if self.scheduler.current is self:
            # A task cannot throw into itself; it is cancelled at its next await.
            self.cancel_pending = True
            return
        self.cancelled = True
        for line in self.waiting:
            waiters = line.waiters
            if waiters:
                waiters.pop(self, None)
        self.waiting = ()
        # A task cancelled while queued must not run again.
        if self in self.scheduler.ready:
            self.scheduler.ready.remove(self)
        scheduler = self.scheduler
        previous = scheduler.current
        scheduler.current = self
        try:
            for _ in range(CANCEL_ROUNDS_MAX):
                try:
                    waited = self.coroutine.throw(Cancelled())
                except (Cancelled, StopIteration):
                    self._finish()
                    return
                assert waited is not None
            raise AssertionError(f"task {self.name} ignores cancellation")
        finally:
            scheduler.current = previous

    def _finish(self) -> None:
        self.done = True
        self.waiting = ()
        self.scope.tasks.pop(self, None)
        callbacks = self.on_finish
        self.on_finish = []
        for callback in callbacks:
            callback()

    def __await__(self) -> Any:
        return self.result.__await__()

    def __repr__(self) -> str:
        state = "done" if self.done else ("waiting" if self.waiting else "ready")
        return f"<Task {self.name} {state}>"


class Scope:
    """Owns tasks; cancelling or leaving the scope cancels them all.

    Use as ``async with ctx.scope() as scope: scope.spawn(...)``. Leaving the
    block (normally, by exception, or by cancellation of the enclosing task)
    cancels the tasks still running in it. A scope used without ``async with``
    (a node's root scope, a component's scope) is cancelled explicitly.
    """

    __slots__ = ("cancelled", "name", "scheduler", "tasks")

    def __init__(self, scheduler: Scheduler, name: str) -> None:
        self.scheduler = scheduler
        self.name = name
        self.tasks: dict[Task[Any], None] = {}
        self.cancelled = False

    def spawn(self, coroutine: Coroutine[Any, Any, T], name: str = "") -> Task[T]:
        """Start ``coroutine`` as a task of this scope; it first runs at the next turn."""
        assert not self.cancelled, f"spawn into cancelled scope {self.name}"
        task: Task[T] = Task(self.scheduler, self, coroutine, name or self.name)
        self.tasks[task] = None
        self.scheduler.ready.append(task)
        return task

    def cancel(self) -> None:
        """Cancel every task of the scope, newest first, and refuse new ones."""
        self.cancelled = True
        tasks = self.tasks
        if not tasks:
            return  # the common case: every task already finished
        for task in reversed(list(tasks)):
            task.cancel()
        assert all(task.cancel_pending for task in tasks), f"scope {self.name} kept tasks"

    async def wait(self) -> None:
        """Wait until every task of the scope has finished (not only been cancelled)."""
        while self.tasks:
            task = next(iter(self.tasks))
            if not task.done:
                done: Line[None] = Line(self.scheduler, f"{self.name}.wait")
                task.on_finish.append(partial(done.set, None))
                await done

    async def __aenter__(self) -> Scope:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is GeneratorExit:
            return  # the whole node is being discarded (crash); nothing to run
        self.cancel()


class Scheduler:
    """Runs one node's tasks deterministically. One per node; never shared."""

    __slots__ = ("choose_function", "current", "ready", "steps", "turns")

    def __init__(self, choose_function: ChooseFunction) -> None:
        self.ready: deque[Task[Any]] = deque()
        self.current: Task[Any] | None = None
        self.choose_function = choose_function
        self.steps = 0
        self.turns = 0  # task steps and awaits that did not suspend, this run

    def choose(self, label: str, count: int) -> int:
        """Resolve a choice point among ``count`` alternatives through the host."""
        assert count >= 2
        index = self.choose_function(label, count)
        assert 0 <= index < count, f"choice {label}: {index} not in [0, {count})"
        return index

    def line(self, name: str = "") -> Line[Any]:
        """A new line of this scheduler."""
        return Line(self, name)

    def run(self) -> None:
        """Run ready tasks until nothing more can happen."""
        ready = self.ready
        self.turns = 0
        while ready:
            task = ready.popleft()
            self.steps += 1
            self.turns += 1
            assert self.turns < LIVELOCK_TURNS, f"livelock: tasks re-queued forever ({task.name})"
            task.step()

    def turn(self) -> None:
        """An await returned at once (its line was already set): counted with the
        run's task steps, so a loop whose wait is already satisfied fails its
        assertion instead of spinning forever (``LIVELOCK_TURNS``)."""
        self.turns += 1
        assert self.turns < LIVELOCK_TURNS, (
            "livelock: a task's awaits keep returning at once (an already satisfied wait "
            "in a loop?)"
        )

    def abandon(self) -> None:
        """The node is being discarded after its step raised (the simulator's
        ``node-raised``): close the coroutines of the tasks still queued, so none
        that never ran is left to warn "never awaited" when it is collected. A
        coroutine that already ran is closed as its collection would close it."""
        ready = self.ready
        while ready:
            ready.popleft().coroutine.close()
