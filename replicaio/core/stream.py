"""Streams: typed, unreliable, many-message channels (Raft's shape).

One-shot links (``replicaio.core.context``) fit protocols that send one
message of a kind per instance. Protocols such as Raft send many messages of
one kind per term and do their own retransmission (heartbeats, re-sent
AppendEntries), so they want plain datagrams instead: a :class:`Stream`.

* A stream owns a set of ``Message`` classes; the node routes every message
  of those classes to it (one owner per class per node).
* ``send(peer, message)`` is one send effect, nothing more: no
  acknowledgement, no retransmission, no retention. A message to the node
  itself is delivered locally, within the step, after the current task.
* Receiving: either a handler (``Stream(..., handler=...)``), called
  synchronously for each message in arrival order (the STYLE's plain
  ``on_<message>`` handlers), or ``await stream.receive()`` in a task, which
  yields ``(source, message)`` in arrival order from a bounded inbox
  (``inbox_max``; beyond it the newest message is dropped and counted
  ``bound_stream_inbox_max``: the protocol's own retransmission recovers).

**Routing by group.** A node may host replicas of several replicated groups
(``docs/transactions.md``): group ``g``'s components live under the path
``("group", g, ...)``. Streams are routed by ``(group, message class)``, so
every group has its own Raft, its own SMR streams: a stream of a group sends
its messages wrapped in a :class:`GroupDatagram` naming the group (the body
encoded by the node's codec), and the receiving node hands the body to the
same group's stream. A datagram for a group the node does not host, or whose
body does not decode, is dropped and counted (``rejected_*``). Outputs of a
group's components are routed the same way (``Context.output``): to the
group's output handler on the node if one is set, else out as a
:class:`GroupOutput`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Annotated, Any, Final

from replicaio.core.codec import Message, Meta
from replicaio.core.errors import UsageError
from replicaio.core.lines import Line

if TYPE_CHECKING:
    from replicaio.core.context import Context

Handler = Callable[[int, Any], None]

GROUP_PATH: Final = "group"  # ("group", g, ...) is a component of replicated group g
GROUPS_MAX: Final = 1 << 16
DATAGRAM_BYTES_MAX: Final = 1 << 26


def group_of_path(path: tuple[int | str, ...]) -> int | None:
    """The group of a component at ``path`` (``None``: not a group's component)."""
    if len(path) >= 2 and path[0] == GROUP_PATH and type(path[1]) is int:
        return path[1]
    return None


class GroupDatagram(Message, tag="core.GroupDatagram"):
    """A stream message of group ``group``; ``body`` is its encoded form."""

    group: Annotated[int, Meta(ge=0, lt=GROUPS_MAX)]
    body: Annotated[bytes, Meta(max_length=DATAGRAM_BYTES_MAX)]


class GroupOutput(Message, tag="core.GroupOutput"):
    """An output of group ``group``'s components (a reply, a leader change);
    ``body`` is its encoded form (outputs are messages: the event log records them)."""

    group: Annotated[int, Meta(ge=0, lt=GROUPS_MAX)]
    body: Annotated[bytes, Meta(max_length=DATAGRAM_BYTES_MAX)]


class Stream:
    """A typed datagram channel of one component; see the module docstring."""

    __slots__ = (
        "context", "group", "handler", "inbox", "inbox_max", "name", "types", "waiting"
    )

    def __init__(
        self,
        context: Context,
        types: tuple[type, ...],
        *,
        handler: Handler | None = None,
        inbox_max: int = 4096,
    ) -> None:
        if not types:
            raise UsageError("a stream needs at least one message class")
        if inbox_max < 1:
            raise UsageError("inbox_max must be >= 1")
        self.context = context
        self.group: int | None = context.group
        self.types = types
        self.name = ",".join(cls.__name__ for cls in types)
        self.handler = handler
        self.inbox: deque[tuple[int, Any]] = deque()
        self.inbox_max = inbox_max
        self.waiting: Line[None] | None = None

    def send(self, peer: int, message: Any, *, before_sync: bool = False) -> None:
        """One unreliable send of ``message`` to ``peer`` (may be this node).
        ``before_sync``: the message depends on no write of this node that is
        not yet durable, so the host may send it before its sync
        (``replicaio.core.effects``); the sender answers for that claim."""
        if type(message) not in self.types:
            raise UsageError(f"stream {self.name} does not carry {type(message).__name__}")
        if not 0 <= peer < self.context.n:
            raise UsageError(f"stream {self.name}: no node {peer}")
        self.context.node.stream_send(peer, message, self.group, before_sync)

    def send_all(self, message: Any, *, include_self: bool = False) -> None:
        """``send`` to every other node (and this one when ``include_self``)."""
        for peer in range(self.context.n):
            if peer != self.context.id or include_self:
                self.send(peer, message)

    def deliver(self, source: int, message: Any) -> None:
        """Called by the node's router for a validated message from ``source``."""
        if self.handler is not None:
            self.handler(source, message)
            return
        if len(self.inbox) >= self.inbox_max:
            self.context.node.count("bound_stream_inbox_max")
            return
        self.inbox.append((source, message))
        waiting = self.waiting
        if waiting is not None:
            self.waiting = None
            waiting.set(None)

    def receive(self) -> _Receive:
        """``await stream.receive()`` -> ``(source, message)``, in arrival order."""
        if self.handler is not None:
            raise UsageError(f"stream {self.name} has a handler; it cannot also be awaited")
        return _Receive(self)

    def close(self) -> None:
        """Stop routing this stream's message classes to it."""
        self.context.node.close_stream(self)


class _Receive:
    __slots__ = ("stream",)

    def __init__(self, stream: Stream) -> None:
        self.stream = stream

    def __await__(self) -> Generator[Any, None, tuple[int, Any]]:
        stream = self.stream
        while not stream.inbox:
            if stream.waiting is None:
                stream.waiting = Line(stream.context.node.scheduler, f"{stream.name}.inbox")
            yield from stream.waiting.__await__()
        return stream.inbox.popleft()
