"""Lines: one-shot typed values that become available at some point.

A :class:`Line` is the unit of data-driven concurrency: a task that awaits a
line waits for its value; once set, a line never changes (setting it again is
a bug and fails an assertion). Independent lines let independent tasks make
progress without any control-flow coupling.

Lines belong to one node's :class:`~replicaio.core.scheduler.Scheduler` and are
only touched from that node's step, so no locking is involved anywhere.
"""

from __future__ import annotations

from collections.abc import Generator, Hashable
from typing import TYPE_CHECKING, Any, TypeVar

from replicaio.core.generic import Generic, Slotted

if TYPE_CHECKING:
    from replicaio.core.scheduler import Scheduler, Task

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


class Line(Slotted, Generic[T]):
    """A one-shot value. ``await line`` yields the value once it is set.

    ``name`` is for people (repr, assertion messages); a hot path may pass it
    as a tuple of parts, joined only when someone reads it.
    """

    __slots__ = ("_is_set", "_name", "_value", "scheduler", "waiters")

    def __init__(self, scheduler: Scheduler, name: str | tuple[object, ...] = "") -> None:
        self.scheduler = scheduler
        self._name = name
        self._is_set = False
        self._value: Any = None
        # Tasks waiting, insertion-ordered so that wake-up order is
        # deterministic; None until the first one waits (most lines are set
        # before anyone waits on them, or have exactly one waiter).
        self.waiters: dict[Task[Any], None] | None = None

    @property
    def name(self) -> str:
        name = self._name
        if isinstance(name, tuple):
            return "".join(map(str, name))
        return name

    @property
    def ready(self) -> bool:
        """Whether the value is available."""
        return self._is_set

    def value(self) -> T:
        """The value; only valid once :attr:`ready`."""
        assert self._is_set, f"line {self.name!r} read before it was set"
        result: T = self._value
        return result

    def set(self, value: T) -> None:
        """Make ``value`` available and wake every waiting task, in wait order."""
        assert not self._is_set, f"line {self.name!r} set twice"
        self._is_set = True
        self._value = value
        waiters = self.waiters
        if waiters:
            self.waiters = None
            for task in waiters:
                if len(task.waiting) == 1:  # Task.wake's common case, inline
                    task.waiting = ()
                    task.scheduler.ready.append(task)
                else:
                    task.wake(self)

    def __await__(self) -> Generator[Any, None, T]:
        if not self._is_set:
            yield self
        else:
            self.scheduler.turn()  # see scheduler.LIVELOCK_TURNS
        assert self._is_set
        result: T = self._value
        return result

    def __repr__(self) -> str:
        state = f"={self._value!r}" if self._is_set else " (pending)"
        return f"<Line {self.name}{state}>"


class AnyOf:
    """Waits until at least one of several lines is set (see :func:`first`)."""

    __slots__ = ("lines",)

    def __init__(self, lines: tuple[Line[Any], ...]) -> None:
        self.lines = lines

    def __await__(self) -> Generator[Any, None, None]:
        lines = self.lines
        if not any(line._is_set for line in lines):
            yield self
        else:
            lines[0].scheduler.turn()  # see scheduler.LIVELOCK_TURNS


async def first(*lines: Line[Any], label: str = "first") -> Any:
    """The value of whichever line is available first.

    When the waiting task resumes and more than one line is available, which
    one is taken is an explicit *choice point*, resolved by the node's host
    (first in production, seeded in simulation, forced by an adversary on a
    Byzantine node, recorded in the event log for replay).
    """
    assert lines, "first() needs at least one line"
    await AnyOf(lines)
    return first_set(*lines, label=label)


def first_set(*lines: Line[Any], label: str = "first") -> Any:
    """What :func:`first` returns once it has waited: the value of the one line
    of ``lines`` that is set, or, when several are, the one the host chooses
    (the same choice point, ``label``). At least one must be set."""
    available = [line for line in lines if line._is_set]
    assert available, "first_set() with no line set"
    if len(available) == 1:
        return available[0].value()
    index = lines[0].scheduler.choose(label, len(available))
    return available[index].value()


class Family(Generic[K, T]):
    """An indexed family of lines (per peer, per round, per slot), created lazily.

    ``family[key]`` creates the line on first use; ``discard(key)`` frees a
    line no longer needed; the family never holds
    more than ``size_max`` lines (creating one more is a caller bug: raise the
    bound or garbage-collect).
    """

    __slots__ = ("lines", "name", "scheduler", "size_max")

    def __init__(self, scheduler: Scheduler, name: str, size_max: int = 65536) -> None:
        assert size_max > 0
        self.scheduler = scheduler
        self.name = name
        self.size_max = size_max
        self.lines: dict[K, Line[T]] = {}

    def __getitem__(self, key: K) -> Line[T]:
        line = self.lines.get(key)
        if line is None:
            assert len(self.lines) < self.size_max, f"family {self.name!r} over size_max"
            line = Line(self.scheduler, f"{self.name}[{key!r}]")
            self.lines[key] = line
        return line

    def __contains__(self, key: K) -> bool:
        return key in self.lines

    def __len__(self) -> int:
        return len(self.lines)

    def discard(self, key: K) -> None:
        """Forget the line at ``key`` (tasks still waiting on it keep it alive)."""
        self.lines.pop(key, None)
