"""What protocol code sees: a :class:`Context` per component, and its :class:`Link` s.

A context is a component's place in the node: a *path* (``("rb", 3, 17)`` for
instance 17 of sender 3 of a reliable broadcast), the links it talks over,
its own scope of tasks, and its slice of durable storage. Contexts nest; a
component creates children for its sub-components, lazily when data for them
arrives (see :meth:`Context.on_unknown_child`), and closes them when done.

Links are *one-shot* authenticated point-to-point channels, the shape most
broadcast and agreement protocols have (one ECHO per instance per peer):

* sending: a link sends at most one value to each destination, for the life of
  the instance *and across restarts*. The first value wins; it is made durable
  (when the link is ``durable``) before it leaves, so a correct node that
  crashes and recovers can never equivocate. A second, different value is a
  no-op counted as ``link_second_send``.
* receiving: the first value from each peer counts; an identical repeat is a
  duplicate (counted, ignored), a different one is equivocation (counted, kept
  as evidence, ignored).
* delivery is reliable: the node retransmits until the peer acknowledges, and
  replays to a peer that announces a restart (see ``replicaio.core.node``).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from replicaio.core.errors import UsageError
from replicaio.core.generic import Generic, Slotted
from replicaio.core.lines import Line
from replicaio.core.scheduler import Scope, Task
from replicaio.core.stream import Stream, group_of_path

if TYPE_CHECKING:
    from replicaio.core.config import ClusterConfig
    from replicaio.core.effects import Path
    from replicaio.core.node import Node
    from replicaio.core.signing import Signer

T = TypeVar("T")

ALL = -1  # destination key of a value sent to every node


class Ignore:
    """Why an unknown child path was not created; ``acknowledge`` tells the
    sender to stop retransmitting (the data is stale, not early)."""

    __slots__ = ("acknowledge", "reason")

    def __init__(self, reason: str, *, acknowledge: bool) -> None:
        self.reason = reason
        self.acknowledge = acknowledge


ChildHandler = Callable[["Path"], "Context | Ignore"]


def hashable(body: Any) -> bool:
    """Whether ``body`` can be counted: a peer's dict (or a tuple holding one)
    would otherwise raise inside the step."""
    try:
        hash(body)
    except TypeError:
        return False
    return True


def accepts_int(body: Any) -> bool:
    return type(body) is int


def accepts_float(body: Any) -> bool:
    return type(body) is float


def accepts_bytes(body: Any) -> bool:
    return isinstance(body, bytes)


def accepts_str(body: Any) -> bool:
    return isinstance(body, str)


def accepts_function(body_type: Any) -> Callable[[Any], bool]:
    """A fast type test for link bodies decoded from the wire (shared, not made
    per link, for the common body types)."""
    if body_type is bytes:  # the usual one
        return accepts_bytes
    if body_type is Any or body_type is object:
        return hashable
    if body_type is int:
        return accepts_int
    if body_type is float:
        return accepts_float
    if body_type is bytes:
        return accepts_bytes
    if body_type is str:
        return accepts_str
    if isinstance(body_type, type):
        return lambda body: isinstance(body, body_type) and hashable(body)
    raise UsageError(f"link body type must be a class or Any, got {body_type!r}")


@dataclass(frozen=True, slots=True)
class Certificate(Generic[T]):
    """A quorum *with its evidence*: ``count`` distinct peers sent messages whose
    key is ``key``; ``senders`` (ascending) and ``messages`` (what each of them
    sent, in the same order) prove it to a third party when the messages are
    signed (PBFT's prepared and checkpoint certificates). With no key function
    ``key`` is the value itself and every message equals it."""

    key: Hashable
    senders: tuple[int, ...]
    messages: tuple[T, ...]


class CertificateWait(Generic[T]):
    """A certificate asked for and not yet complete: senders grouped by key."""

    __slots__ = ("count", "groups", "key_of", "line")

    def __init__(self, count: int, key_of: Callable[[T], Hashable], line: Line[Certificate[T]]):
        self.count = count
        self.key_of = key_of
        self.line = line
        self.groups: dict[Hashable, list[int]] = {}

    def add(self, source: int, value: T, received: dict[int, T]) -> bool:
        """Count ``source``'s message; True once the certificate is complete (and set)."""
        key = self.key_of(value)
        group = self.groups.setdefault(key, [])
        group.append(source)
        if len(group) < self.count:
            return False
        senders = tuple(sorted(group))
        self.line.set(Certificate(key, senders, tuple(received[peer] for peer in senders)))
        return True


def identity(value: Any) -> Hashable:
    result: Hashable = value
    return result


class Link(Slotted, Generic[T]):
    """A one-shot channel of one component; see the module docstring.

    A link keeps its node and path, not its context: the context holds its
    links, so a back reference would make every component a reference cycle
    that only the garbage collector could free once the component is forgotten.
    """

    __slots__ = (
        "accepts",
        "certificates",
        "counts",
        "durable",
        "from_lines",
        "name",
        "node",
        "path",
        "quorums",
        "reached",
        "received",
        "sent",
        "storage_prefix_cached",
    )

    def __init__(
        self, context: Context, name: str, accepts: Callable[[Any], bool], durable: bool
    ) -> None:
        self.node = context.node
        self.path = context.path
        # Its context's, when made (a durable link's context makes it: it is
        # needed anyway when the component is forgotten).
        self.storage_prefix_cached: str | None = context.storage_prefix
        self.name = name
        self.accepts = accepts
        self.durable = durable
        self.sent: dict[int, T] = {}
        self.received: dict[int, T] = {}
        self.counts: dict[T, int] = {}
        # reached[k - 1] is the first value that k distinct peers sent, so a
        # quorum asked for late yields what one asked for early did.
        self.reached: list[T] = []
        # peer -> the line of from_peer(peer), made only when asked for: most
        # links are only ever counted (quorums), never read per peer.
        self.from_lines: dict[int, Line[T]] | None = None
        # Waiting quorums and certificates: an empty tuple until the first is
        # asked for (three links per Bracha instance, most asked for one or none).
        self.quorums: list[tuple[int, Line[T]]] | tuple[()] = ()
        self.certificates: list[CertificateWait[T]] | tuple[()] = ()

    # -- sending -------------------------------------------------------------

    def to_all(self, value: T) -> None:
        """Send ``value`` to every node, this one included (once; first wins)."""
        self._send(ALL, value)

    def to(self, peer: int, value: T) -> None:
        """Send ``value`` to ``peer`` only (once per peer; first wins)."""
        if peer not in range(self.node.config.n):
            raise UsageError(f"link {self.name}: no node {peer}")
        self._send(peer, value)

    def _send(self, destination: int, value: T) -> None:
        if destination == ALL and self.sent and ALL not in self.sent:
            # Some peers already have their one value: to each of the others.
            for peer in range(self.node.config.n):
                self._send(peer, value)
            return
        previous = self.sent.get(destination, self.sent.get(ALL))
        if destination in self.sent or (destination != ALL and ALL in self.sent):
            if previous != value:
                self.node.count("link_second_send")
            return
        self.sent[destination] = value
        self.node.reliable.send(self, destination, value, self.durable)

    def storage_prefix(self) -> str:
        """``Node.storage_key(path, "")``, made once per link: every send persists."""
        prefix = self.storage_prefix_cached
        if prefix is None:
            prefix = self.storage_prefix_cached = self.node.storage_key(self.path, "")
        return prefix

    @property
    def sent_to_all(self) -> T | None:
        """The value sent to all, if any (after a restart: the recovered one)."""
        return self.sent.get(ALL)

    # -- receiving -----------------------------------------------------------

    def from_peer(self, peer: int) -> Line[T]:
        """The first value ``peer`` sent on this link."""
        lines = self.from_lines
        if lines is None:
            lines = self.from_lines = {}
        line = lines.get(peer)
        if line is None:
            assert len(lines) < self.node.n, f"link {self.name}: over n peers"
            line = Line(self.node.scheduler, (self.name, ".from[", peer, "]"))
            lines[peer] = line
            received = self.received
            if peer in received:
                line.set(received[peer])
        return line

    def quorum(self, count: int) -> Line[T]:
        """The first value that ``count`` distinct peers sent on this link."""
        if not 1 <= count <= self.node.n:
            raise UsageError(f"link {self.name}: quorum of {count} out of range")
        line: Line[T] = Line(self.node.scheduler, (self.name, ".quorum(", count, ")"))
        if count <= len(self.reached):
            line.set(self.reached[count - 1])
            return line
        quorums = self.quorums
        if quorums:
            quorums.append((count, line))
        else:
            self.quorums = [(count, line)]
        return line

    def certificate(
        self, count: int, key: Callable[[T], Hashable] | None = None
    ) -> Line[Certificate[T]]:
        """Like :meth:`quorum`, with the evidence: the first key (``key(message)``,
        or the message itself) that ``count`` distinct peers sent, with those
        peers and their messages (:class:`Certificate`). Peers' first messages
        count, in arrival order, as for quorums; ``key`` is protocol code and sees
        whatever body the link accepts (an exception counts the message as
        unreadable, never raises)."""
        if not 1 <= count <= self.node.n:
            raise UsageError(f"link {self.name}: certificate of {count} out of range")
        line: Line[Certificate[T]] = Line(
            self.node.scheduler, (self.name, ".certificate(", count, ")")
        )
        wait = CertificateWait(count, key or identity, line)
        received = self.received
        for source, value in received.items():
            if wait.add(source, value, received):
                return line
        certificates = self.certificates
        if certificates:
            certificates.append(wait)
        else:
            self.certificates = [wait]
        return line

    def receive(self, source: int, value: T) -> None:
        """Called by the node's router for a validated message from ``source``."""
        received = self.received
        if source in received:
            known = received[source]
            reason = "duplicate" if known == value else "equivocation"
            self.node.count(f"link_{reason}")
            if reason == "equivocation":
                self.node.evidence(source, self.path, self.name, value)
            return
        received[source] = value
        counts = self.counts
        seen = counts.get(value, 0) + 1
        counts[value] = seen
        reached = self.reached
        if seen > len(reached):
            reached.append(value)
            # Every waiting quorum asks for more than len(reached) peers (the
            # smaller ones were set when reached grew to them), so only a value
            # that makes reached grow can complete one.
            if self.quorums:
                waiting = []
                for count, line in self.quorums:
                    if seen >= count:
                        line.set(value)
                    else:
                        waiting.append((count, line))
                self.quorums = waiting
        if self.certificates:
            self.certificates = [
                wait for wait in self.certificates if not wait.add(source, value, received)
            ]
        lines = self.from_lines
        if lines is not None:
            asked = lines.get(source)
            if asked is not None:
                asked.set(value)


GROUP_DOMAIN_LABEL = b"replicaio group "


def group_domain(group: int | None, data: bytes) -> bytes:
    """What a node signs for ``data`` in replicated group ``group`` (``None``: no
    group, ``data`` itself). Groups on one node share the node's key; without
    this, a message one group's replica signed (a PBFT PREPARE, a prepared
    certificate) would verify in another group whose log has the same view,
    sequence number and digest, and a Byzantine node could replay it there."""
    if group is None:
        return data
    return GROUP_DOMAIN_LABEL + group.to_bytes(4, "big") + data


class Context:
    """A component's handle on its node. Created by the node or by a parent."""

    __slots__ = (
        "child_handler",
        "closed",
        "group",
        "links_by_name",
        "node",
        "path",
        "storage_prefix",
        "streams",
        "tasks",
    )

    def __init__(self, node: Node, path: Path) -> None:
        self.node = node
        self.path = path
        self.links_by_name: dict[str, Link[Any]] = {}
        self.storage_prefix: str | None = None  # storage_key(path, ""), made on first use
        self.tasks = Scope(node.scheduler, "/".join(map(str, path)) or "root")
        self.child_handler: ChildHandler | None = None
        self.streams: list[Stream] = []
        self.closed = False
        # The replicated group this component belongs to (paths under
        # ("group", g)): its streams and outputs are routed by group.
        self.group = group_of_path(path)

    # -- identity ------------------------------------------------------------

    @property
    def id(self) -> int:
        """This node's id."""
        return self.node.node_id

    @property
    def n(self) -> int:
        """Number of nodes."""
        return self.node.n

    @property
    def f(self) -> int:
        """Number of faults tolerated."""
        return self.node.config.f

    @property
    def config(self) -> ClusterConfig:
        """The cluster configuration."""
        return self.node.config

    # -- structure -----------------------------------------------------------

    def child(self, *keys: int | str) -> Context:
        """The sub-component context at ``path + keys`` (created if needed)."""
        return self.node.context(self.path + keys)

    def on_unknown_child(self, handler: ChildHandler) -> None:
        """Call ``handler(rest_of_path)`` when a message arrives for a descendant
        path that has no context yet; it returns the context to deliver to, or
        an :class:`Ignore` saying why not."""
        self.child_handler = handler
        self.node.child_handlers[self.path] = handler

    def links(self, *names: str, body: Any = bytes, durable: bool = True) -> tuple[Link[Any], ...]:
        """One link per name, all carrying bodies of type ``body``."""
        return tuple([self.link(name, body=body, durable=durable) for name in names])

    def link(self, name: str, *, body: Any = bytes, durable: bool = True) -> Link[Any]:
        """The link ``name`` of this component (created once)."""
        link = self.links_by_name.get(name)
        if link is None:
            if durable and self.storage_prefix is None:
                self.storage_prefix = self.node.storage_key(self.path, "")
            link = Link(self, name, accepts_function(body), durable)
            self.links_by_name[name] = link
            reliable = self.node.reliable
            if reliable.sent.get(self.path):  # what this path sent (restore_link's test)
                reliable.restore_link(link)
        return link

    def stream(
        self,
        *types: type,
        handler: Callable[[int, Any], None] | None = None,
        inbox_max: int = 4096,
    ) -> Stream:
        """A datagram stream carrying the ``Message`` classes ``types`` (see
        ``replicaio.core.stream``); closed with this component."""
        stream = Stream(self, types, handler=handler, inbox_max=inbox_max)
        self.node.open_stream(stream)
        self.streams.append(stream)
        return stream

    def random_below(self, bound: int) -> int:
        """A number in ``[0, bound)``: randomness is a choice point the host
        resolves (seeded in simulation, recorded in the event log)."""
        if bound < 1:
            raise UsageError("random_below needs a bound >= 1")
        if bound == 1:
            return 0
        return self.node.scheduler.choose("random", bound)

    def scope(self, name: str = "") -> Scope:
        """A new scope for ``async with``: leaving it cancels its tasks."""
        return Scope(self.node.scheduler, name or self.tasks.name)

    def spawn(self, coroutine: Coroutine[Any, Any, T], name: str = "") -> Task[T]:
        """Run ``coroutine`` as a task of this component (cancelled by :meth:`close`)."""
        return self.tasks.spawn(coroutine, name)

    def close(self) -> None:
        """Cancel the component's tasks and stop routing to it. What it sent stays
        retained (and retransmitted until acknowledged) until ``forget``."""
        if self.closed:
            return
        self.closed = True
        for stream in self.streams:
            stream.close()
        self.tasks.cancel()
        self.node.close_context(self)

    def forget(self) -> None:
        """Close, and drop everything retained for this path, durable records included."""
        self.close()
        self.node.forget_path(self.path, self.storage_prefix)

    # -- time, choice, output ------------------------------------------------

    def sleep(self, delay_us: int) -> Line[None]:
        """A line set ``delay_us`` microseconds of virtual time from now."""
        return self.node.timer(delay_us)

    def timer(self, delay_us: int) -> tuple[int, Line[None]]:
        """:meth:`sleep`, with the timer's id for :meth:`end_timer`."""
        line = self.node.timer(delay_us)
        return self.node.timer_next - 1, line

    def end_timer(self, timer_id: int, line: Line[None]) -> None:
        """Set ``line`` (of :meth:`timer` ``timer_id``) now and withdraw its
        timer from the host: the task waiting for it goes on at once, in this
        step, and the timer never fires. Nothing if the timer has fired."""
        if self.node.end_timer(timer_id):
            line.set(None)

    def choose(self, label: str, count: int) -> int:
        """An explicit choice point among ``count`` alternatives (resolved by the host)."""
        if count < 1:
            raise UsageError("choose needs at least one alternative")
        if count == 1:
            return 0
        return self.node.scheduler.choose(label, count)

    def output(self, value: Any) -> None:
        """Emit an output effect (a delivery, a reply); a group's component's output
        goes to the group's output handler, or out as a ``GroupOutput``."""
        if self.group is None:
            self.node.effects.outputs.append(value)
        else:
            self.node.group_output(self.group, value)

    # -- signatures (replicaio.core.signing) ----------------------------------

    @property
    def signer(self) -> Signer:
        """This node's signer (configuration of the node, never a key)."""
        return self.node.signer

    @property
    def usig_scheme(self) -> object | None:
        """The node's trusted-component scheme as configured (MinBFT's USIG), or
        ``None`` for the protocol's simulation scheme."""
        return self.node.usig_scheme

    @property
    def usig_admission(self) -> object | None:
        """The operator's admission of this node's USIG epoch as configured, or
        ``None`` (MinBFT's recovery of a lost USIG, docs/minbft.md). A node
        hosting several MinBFT groups is configured with a mapping from group to
        admission (each group's USIG has its epochs: ADR 0031)."""
        admission = self.node.usig_admission
        if isinstance(admission, Mapping):
            return admission.get(self.group)
        return admission

    def sign(self, data: bytes) -> bytes:
        """This node's signature of ``data``: deterministic, checkable by any node.
        A replicated group's component signs within its group's domain
        (:func:`group_domain`), so its signatures never count in another group."""
        return self.node.signer.sign(group_domain(self.group, data))

    def verify(self, node: int, data: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is ``node``'s signature of ``data`` (never raises),
        made by a component of this component's group (if it belongs to one)."""
        if type(data) is not bytes:
            return False
        return self.node.signer.verify(node, group_domain(self.group, data), signature)

    # -- durable state -------------------------------------------------------

    def key(self, name: str) -> str:
        """The storage key of ``name`` in this component's slice of storage."""
        prefix = self.storage_prefix
        if prefix is None:
            prefix = self.storage_prefix = self.node.storage_key(self.path, "")
        return prefix + name

    def persist(self, name: str, value: Any) -> None:
        """Durably store ``value`` (plain data) before any effect of this step is released."""
        self.node.persist(self.key(name), self.node.codec.encode_value(value))

    def load(self, name: str) -> Any:
        """The stored value of ``name``, or ``None``."""
        data = self.node.storage.get(self.key(name))
        return None if data is None else self.node.codec.decode_value(data)

    def erase(self, name: str) -> None:
        """Remove ``name`` from durable storage."""
        key = self.key(name)
        if key in self.node.storage:
            self.node.persist(key, None)

    def stored_names(self, prefix: str = "") -> Iterable[str]:
        """Names stored in this component's slice that start with ``prefix``."""
        return self.node.stored_names(self.path, prefix)

    def count(self, counter: str, by: int = 1) -> None:
        """Bump a node counter (exported as a metric by hosts)."""
        self.node.count(counter, by)
