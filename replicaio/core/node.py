"""The node core: one deterministic state machine per node, driven by its host.

``Node.step(input) -> Effects`` is the whole boundary (see
``replicaio.core.effects`` for the inputs, the effects and the order a host
must execute them in). Inside, a step:

1. routes the input: a peer message is decoded, checked (known peer, known
   component and channel, body type) and handed to the link it is for; a
   timer sets its line; a request goes to the protocol;
2. runs the scheduler until no task can proceed (messages a node sends to
   itself are delivered inside the step, in order);
3. returns the batch of effects it collected.

Reliable one-shot delivery (the "perfect link" of the textbooks, for the
crash-recovery model) lives here, below every protocol:

* every link message is retransmitted on a tick, with exponential back-off,
  until the destination acknowledges it; acknowledgements are batched per
  peer and flushed on the tick (``Acks``);
* at each start a node announces its incarnation (``Hello``); a peer that sees
  a new incarnation re-sends everything it still retains for that node,
  because the restarted node lost what it had received;
* what a component sent is retained until the protocol forgets the component
  (garbage collection after delivery), durably when its link is durable.

Bad input from the network never raises: it is dropped and counted under
``rejected_<reason>``. Nothing here reads a clock, draws randomness, or does
I/O; choice points are resolved by the ``choose`` function the host passes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from replicaio.core.codec import Codec, DecodeError, Value, message
from replicaio.core.config import ClusterConfig, Resilience
from replicaio.core.context import ALL, Context, Ignore, Link
from replicaio.core.effects import Effects, Input, Path, Receive, Request, Start, TimerFired
from replicaio.core.errors import ConfigError, UsageError
from replicaio.core.lines import Line
from replicaio.core.scheduler import ChooseFunction, Scheduler, Task
from replicaio.core.stream import Stream

TICK_TIMER = 0  # timer id of the node's own retransmission/ack tick


def hello_key(incarnation: int) -> tuple[tuple[int | str, ...], str]:
    """Hello's slot in acks. Keyed by incarnation: an ack still owed for a
    node's previous Hello must not cancel the retransmission of its new one."""
    return ((), f"hello:{incarnation}")


INCARNATION_KEY = "node#incarnation"
LINK_MARK = "#link:"

PathElement = int | str


@message(tag="Envelope")
class Envelope:
    """A one-shot link message: component path, channel name, body."""

    path: tuple[int | str, ...]
    channel: str
    body: Value


@message(tag="Acks")
class Acks:
    """Acknowledges link messages: (path, channel) pairs received from the addressee."""

    items: tuple[tuple[tuple[int | str, ...], str], ...]


@message(tag="Hello")
class Hello:
    """Announces that the sender (re)started; peers re-send what it may have lost."""

    incarnation: int


@dataclass(frozen=True, slots=True)
class NodeParams:
    """Tunable bounds and periods of the node core (all validated)."""

    tick_us: int = 20_000
    retransmit_after_ticks: int = 2
    backoff_exponent_max: int = 5
    unacked_max: int = 8192  # per peer; beyond it a message is sent once, not retained
    acks_per_message_max: int = 1024
    evidence_max: int = 64
    path_length_max: int = 8

    def validate(self) -> NodeParams:
        """Raise :class:`ConfigError` unless every bound is usable."""
        for name in (
            "tick_us",
            "retransmit_after_ticks",
            "unacked_max",
            "acks_per_message_max",
            "evidence_max",
            "path_length_max",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"NodeParams.{name} must be >= 1")
        if not 0 <= self.backoff_exponent_max <= 16:
            raise ConfigError("NodeParams.backoff_exponent_max must be in [0, 16]")
        return self


class ProtocolFactory(Protocol):
    """A protocol class: built with the node's root context at every start."""

    name: str
    resilience: Resilience

    def __call__(self, context: Context) -> NodeProtocol: ...


class NodeProtocol(Protocol):
    """The protocol object living in one incarnation of a node."""

    def start(self) -> None:
        """Called once per incarnation, after durable state is loaded."""
        ...

    def on_request(self, payload: Any) -> str | None:
        """Handle a client request; return a rejection reason, or None."""
        ...


def choose_first(label: str, count: int) -> int:
    """The production default for choice points: the first available alternative."""
    return 0


class Unacked:
    """A retained message to one peer, awaiting acknowledgement."""

    __slots__ = ("attempts", "due_tick", "envelope")

    def __init__(self, envelope: Envelope | Hello, due_tick: int) -> None:
        self.envelope = envelope
        self.due_tick = due_tick
        self.attempts = 0


class Node:
    """One node's deterministic core. See the module docstring."""

    def __init__(
        self,
        node_id: int,
        config: ClusterConfig,
        protocol: ProtocolFactory,
        *,
        choose: ChooseFunction = choose_first,
        params: NodeParams | None = None,
        codec: Codec | None = None,
    ) -> None:
        config.validate()
        if node_id not in config.nodes:
            raise ConfigError(f"node id {node_id} not in 0..{config.n - 1}")
        self.node_id = node_id
        self.config = config
        self.n = config.n
        self.params = (params or NodeParams()).validate()
        self.codec = codec or Codec()
        self.protocol_factory = protocol
        self.scheduler = Scheduler(choose)
        self.effects = Effects()
        self.counters: dict[str, int] = {}
        self.evidence_log: deque[tuple[int, Path, str, Any]] = deque(
            maxlen=self.params.evidence_max
        )
        self.storage: dict[str, bytes] = {}
        # The keys of ``storage`` grouped by path ("i0/i3#" -> keys), in storage
        # order, so that forgetting a path does not scan every key of the node.
        self.storage_keys: dict[str, dict[str, None]] = {}
        self.incarnation = 0
        self.started = False
        self.routes: dict[Path, Context] = {}
        self.child_handlers: dict[Path, Callable[[Path], Context | Ignore]] = {}
        # path -> (channel, destination) -> envelope: what each component sent.
        self.sent: dict[Path, dict[tuple[str, int], Envelope]] = {}
        self.unacked: list[dict[tuple[Path, str], Unacked]] = [{} for _ in config.nodes]
        self.acks_pending: list[dict[tuple[Path, str], None]] = [{} for _ in config.nodes]
        self.peer_incarnations: list[int] = [0 for _ in config.nodes]
        self.local: deque[Envelope] = deque()
        self.local_stream: deque[Any] = deque()
        self.streams: dict[type, Stream] = {}
        self.timers: dict[int, Line[None]] = {}
        # timer id -> (owning task, its finish callback), dropped when the timer
        # fires, so a long-lived task does not collect one callback per timer.
        self.timer_finishers: dict[int, tuple[Task[Any], Callable[[], None]]] = {}
        self.timer_next = TICK_TIMER + 1
        self.tick = 0
        self.tick_armed = False
        self.protocol: NodeProtocol | None = None
        # Routed like any other context, so links on the root context receive.
        self.root = self.context(())

    # -- the boundary --------------------------------------------------------

    def step(self, event: Input) -> Effects:
        """Consume one input; return the effects, to be executed in documented order."""
        effects = self.effects  # fresh: made at the end of the previous step
        if (
            effects.persists
            or effects.sends
            or effects.timers_cancelled
            or effects.timers_set
            or effects.outputs
        ):
            # Made outside any step (a host cancelling a scope): not part of this batch.
            self.effects = effects = Effects()
        if isinstance(event, Receive):
            assert self.started, "input before Start"
            self.receive(event.source, event.message)
        elif isinstance(event, TimerFired):
            assert self.started, "input before Start"
            self.on_timer(event.timer_id)
        elif isinstance(event, Request):
            assert self.started, "input before Start"
            assert self.protocol is not None
            reason = self.protocol.on_request(event.payload)
            if reason is not None:
                self.count(f"request_rejected_{reason}")
        else:
            assert isinstance(event, Start), f"unknown input {event!r}"
            self.start(event.storage)
        self.run()
        if not self.tick_armed and (self.has_unacked() or self.has_acks_pending()):
            self.tick_armed = True
            effects.timers_set.append((TICK_TIMER, self.params.tick_us))
        # A fresh batch for the next step, so that nothing done between steps
        # reaches the one handed to the host.
        self.effects = Effects()
        return effects

    def run(self) -> None:
        """Run tasks and local deliveries until nothing more can happen."""
        scheduler = self.scheduler
        local = self.local
        local_stream = self.local_stream
        if scheduler.ready:
            scheduler.run()
        while local or local_stream:
            if local:
                self.dispatch(self.node_id, local.popleft())
            else:
                self.route_stream(self.node_id, local_stream.popleft())
            if scheduler.ready:
                scheduler.run()

    # -- start ---------------------------------------------------------------

    def start(self, storage: Any) -> None:
        assert not self.started, "a Node object lives one incarnation; build a new one"
        self.started = True
        self.storage = dict(storage)
        for key in self.storage:
            self.index_key(key)
        stored = self.storage.get(INCARNATION_KEY)
        previous = self.codec.decode_value(stored) if stored else 0
        assert isinstance(previous, int), "corrupt incarnation record"
        self.incarnation = previous + 1
        self.persist(INCARNATION_KEY, self.codec.encode_value(self.incarnation))
        self.restore_sent()
        hello = Hello(self.incarnation)
        due = self.tick + self.params.retransmit_after_ticks + 1
        for peer in self.config.nodes:
            if peer != self.node_id:
                # Reliable too: a restart nobody hears of would strand this node.
                self.unacked[peer][hello_key(self.incarnation)] = Unacked(hello, due)
                self.effects.sends.append((peer, hello))
        self.protocol = self.protocol_factory(self.root)
        self.protocol.start()

    def restore_sent(self) -> None:
        """Rebuild what durable links had sent, and queue it for every peer again."""
        for key in sorted(self.storage):
            mark = key.find(LINK_MARK)
            if mark < 0:
                continue
            path = self.parse_path(key[:mark])
            channel, _, destination_text = key[mark + len(LINK_MARK) :].rpartition(":")
            destination = int(destination_text)
            body = self.codec.decode_value(self.storage[key])
            targets = self.config.nodes if destination == ALL else (destination,)
            envelope = Envelope(path, channel, body)
            for target in targets:
                self.remember_and_send(target, envelope)

    # -- receiving -----------------------------------------------------------

    def receive(self, source: int, data: Any) -> None:
        if not 0 <= source < self.n or source == self.node_id:
            self.count("rejected_unknown_peer")
            return
        if type(data) is Envelope:  # the common case, decoded or not
            self.dispatch(source, data)
            return
        if isinstance(data, (bytes, bytearray, memoryview)):  # a tuple: faster than a union
            try:
                data = self.codec.decode(bytes(data))
            except DecodeError as error:
                self.count(f"rejected_decode_{error.reason}")
                return
        if type(data) is Envelope:
            self.dispatch(source, data)
        elif type(data) is Acks:
            self.on_acks(source, data)
        elif type(data) is Hello:
            self.on_hello(source, data)
        else:
            self.route_stream(source, data)

    # -- streams (unreliable typed datagrams, see core/stream.py) -------------

    def route_stream(self, source: int, message: Any) -> None:
        stream = self.streams.get(type(message))
        if stream is None:
            self.count("rejected_unexpected_message")
            return
        stream.deliver(source, message)

    def open_stream(self, stream: Stream) -> None:
        """Route ``stream``'s message classes to it (one owner per class)."""
        for cls in stream.types:
            owner = self.streams.get(cls)
            if owner is not None and owner is not stream:
                raise UsageError(f"{cls.__name__} already belongs to stream {owner.name}")
        for cls in stream.types:
            self.streams[cls] = stream

    def close_stream(self, stream: Stream) -> None:
        for cls in stream.types:
            if self.streams.get(cls) is stream:
                del self.streams[cls]

    def stream_send(self, destination: int, message: Any) -> None:
        if destination == self.node_id:
            self.local_stream.append(message)
        else:
            self.effects.sends.append((destination, message))

    def dispatch(self, source: int, envelope: Envelope) -> None:
        path = envelope.path
        context = self.routes.get(path)
        if context is None:
            found = self.route_unknown(path)
            if isinstance(found, Ignore):
                self.count(f"ignored_{found.reason}")
                if found.acknowledge:
                    self.acknowledge(source, envelope)
                return
            context = found
            # Let the new component declare its links (before its first await).
            self.scheduler.run()
        channel = envelope.channel
        link = context.links_by_name.get(channel)
        if link is None:
            self.count("rejected_unknown_channel")
            return
        body = envelope.body
        if not link.accepts(body):
            self.count("rejected_body_type")
            return
        link.receive(source, body)
        if source != self.node_id:
            self.acks_pending[source][(path, channel)] = None

    def route_unknown(self, path: Path) -> Context | Ignore:
        if not path or len(path) > self.params.path_length_max:
            return Ignore("bad_path", acknowledge=False)
        for cut in range(len(path) - 1, -1, -1):
            handler = self.child_handlers.get(path[:cut])
            if handler is not None:
                found = handler(path[cut:])
                if isinstance(found, Context) and found.path != path:
                    return Ignore("unknown_path", acknowledge=False)
                return found
        return Ignore("unknown_path", acknowledge=False)

    def acknowledge(self, source: int, envelope: Envelope) -> None:
        if source != self.node_id:
            self.acks_pending[source][(envelope.path, envelope.channel)] = None

    def on_acks(self, source: int, acks: Acks) -> None:
        unacked = self.unacked[source]
        for item in acks.items:
            unacked.pop(item, None)

    def on_hello(self, source: int, hello: Hello) -> None:
        self.acks_pending[source][hello_key(hello.incarnation)] = None
        if hello.incarnation <= self.peer_incarnations[source]:
            self.count("hello_stale")
            return
        first_contact = self.peer_incarnations[source] == 0
        self.peer_incarnations[source] = hello.incarnation
        if first_contact and hello.incarnation == 1:
            return  # a fresh node has lost nothing
        self.count("peer_restarts_seen")
        for sent in self.sent.values():
            for (_, destination), envelope in sent.items():
                if destination == source:
                    self.retain(source, envelope)
                    self.effects.sends.append((source, envelope))

    # -- sending -------------------------------------------------------------

    def link_send(self, link: Link[Any], destination: int, body: Any, *, persist: bool) -> None:
        """Send a link value (called by :class:`Link`), durably first when asked."""
        path = link.path
        channel = link.name
        if persist:
            key = f"{link.storage_prefix()}link:{channel}:{destination}"
            self.persist(key, self.codec.encode_value(body))
        # One frozen message for every target: retained, sent and encoded once.
        envelope = Envelope(path, channel, body)
        sent = self.sent.get(path)
        if sent is None:
            sent = self.sent[path] = {}
        node_id = self.node_id
        sends = self.effects.sends
        unacked_by_peer = self.unacked
        unacked_max = self.params.unacked_max
        due = self.tick + self.params.retransmit_after_ticks + 1
        retained_key = (path, channel)
        for target in self.config.nodes if destination == ALL else (destination,):
            sent[(channel, target)] = envelope
            if target == node_id:
                self.local.append(envelope)
                continue
            # What remember_and_send and retain do, inlined for the hot path.
            unacked = unacked_by_peer[target]
            if len(unacked) >= unacked_max:
                self.count("bound_unacked_max")
            else:
                unacked[retained_key] = Unacked(envelope, due)
            sends.append((target, envelope))

    def remember_and_send(self, destination: int, envelope: Envelope) -> None:
        sent = self.sent.get(envelope.path)
        if sent is None:
            sent = self.sent[envelope.path] = {}
        sent[(envelope.channel, destination)] = envelope
        if destination == self.node_id:
            self.local.append(envelope)
            return
        self.retain(destination, envelope)
        self.effects.sends.append((destination, envelope))

    def retain(self, destination: int, envelope: Envelope) -> None:
        unacked = self.unacked[destination]
        if len(unacked) >= self.params.unacked_max:
            self.count("bound_unacked_max")
            return
        # +1: a message sent just before a tick still waits full tick intervals.
        due = self.tick + self.params.retransmit_after_ticks + 1
        unacked[(envelope.path, envelope.channel)] = Unacked(envelope, due)

    def restore_link(self, link: Link[Any]) -> None:
        """After a restart, a re-created link learns what it had sent (no resend:
        :meth:`restore_sent` already queued it)."""
        sent = self.sent.get(link.path)
        if not sent:
            return
        values = {
            destination: envelope.body
            for (channel, destination), envelope in sent.items()
            if channel == link.name and destination != self.node_id
        }
        if not values:
            return
        bodies = list(values.values())
        if len(values) == self.config.n - 1 and all(body == bodies[0] for body in bodies):
            link.sent[ALL] = bodies[0]
        else:
            link.sent.update(values)

    # -- ticks and timers ----------------------------------------------------

    def has_unacked(self) -> bool:
        return any(self.unacked)

    def has_acks_pending(self) -> bool:
        return any(self.acks_pending)

    def on_timer(self, timer_id: int) -> None:
        if timer_id == TICK_TIMER:
            self.tick_armed = False
            self.on_tick()
            return
        line = self.timers.pop(timer_id, None)
        if line is None:
            self.count("timer_unknown")
            return
        finisher = self.timer_finishers.pop(timer_id, None)
        if finisher is not None:
            owner, callback = finisher
            owner.on_finish.remove(callback)
        line.set(None)

    def on_tick(self) -> None:
        self.tick += 1
        batch = self.params.acks_per_message_max
        for peer, pending in enumerate(self.acks_pending):
            if not pending:
                continue
            items = list(pending)
            pending.clear()
            for offset in range(0, len(items), batch):
                self.effects.sends.append((peer, Acks(tuple(items[offset : offset + batch]))))
        for peer, unacked in enumerate(self.unacked):
            for entry in unacked.values():
                if entry.due_tick > self.tick:
                    continue
                entry.attempts += 1
                exponent = min(entry.attempts, self.params.backoff_exponent_max)
                entry.due_tick = self.tick + self.params.retransmit_after_ticks * (1 << exponent)
                self.effects.sends.append((peer, entry.envelope))
                self.count("retransmissions")

    def timer(self, delay_us: int) -> Line[None]:
        """Arm a timer owned by the running task (cancelled when it finishes)."""
        assert delay_us >= 0
        timer_id = self.timer_next
        self.timer_next += 1
        line: Line[None] = Line(self.scheduler, ("timer", timer_id))
        self.timers[timer_id] = line
        self.effects.timers_set.append((timer_id, delay_us))
        owner = self.scheduler.current
        if owner is not None:

            def cancel() -> None:
                self.cancel_timer(timer_id)

            owner.on_finish.append(cancel)
            self.timer_finishers[timer_id] = (owner, cancel)
        return line

    def cancel_timer(self, timer_id: int) -> None:
        self.timer_finishers.pop(timer_id, None)
        if self.timers.pop(timer_id, None) is None:
            return
        armed = self.effects.timers_set
        for index, (armed_id, _) in enumerate(armed):
            if armed_id == timer_id:
                # Armed in this very batch: the host cancels before it arms, so
                # withdraw the arming instead of cancelling.
                del armed[index]
                return
        self.effects.timers_cancelled.append(timer_id)

    # -- components ----------------------------------------------------------

    def context(self, path: Path) -> Context:
        """The context at ``path``, created and routed on first use."""
        context = self.routes.get(path)
        if context is None:
            for element in path:
                assert isinstance(element, int | str)
                assert not isinstance(element, str) or ("/" not in element and "#" not in element)
            context = Context(self, path)
            self.routes[path] = context
        return context

    def close_context(self, context: Context) -> None:
        self.routes.pop(context.path, None)
        self.child_handlers.pop(context.path, None)

    def forget_path(self, path: Path) -> None:
        """Drop what ``path`` sent: retained copies, retransmissions, durable records."""
        sent = self.sent.pop(path, None)
        if sent:
            for channel, destination in sent:
                self.unacked[destination].pop((path, channel), None)
        keys = self.storage_keys.get(self.storage_key(path, ""))
        if keys:
            for key in list(keys):
                self.persist(key, None)

    # -- storage -------------------------------------------------------------

    def persist(self, key: str, value: bytes | None) -> None:
        """Record a durable write (``None`` deletes) in this step's effects."""
        storage = self.storage
        if value is None:
            if storage.pop(key, None) is not None:
                prefix = key[: key.find("#") + 1]
                keys = self.storage_keys[prefix]
                del keys[key]
                if not keys:
                    del self.storage_keys[prefix]
        else:
            if key not in storage:
                self.index_key(key)
            storage[key] = value
        self.effects.persists.append((key, value))

    def index_key(self, key: str) -> None:
        prefix = key[: key.find("#") + 1]
        keys = self.storage_keys.get(prefix)
        if keys is None:
            keys = self.storage_keys[prefix] = {}
        keys[key] = None

    @staticmethod
    def storage_key(path: Path, name: str) -> str:
        """``path`` and ``name`` as a storage key, unambiguous and prefix-ordered."""
        parts = [f"i{element}" if isinstance(element, int) else f"s{element}" for element in path]
        return "/".join(parts) + "#" + name

    @staticmethod
    def parse_path(text: str) -> Path:
        if not text:
            return ()
        return tuple(int(part[1:]) if part[0] == "i" else part[1:] for part in text.split("/"))

    def stored_names(self, path: Path, prefix: str) -> Iterable[str]:
        path_prefix = self.storage_key(path, "")
        start = path_prefix + prefix
        cut = len(path_prefix)
        keys = self.storage_keys.get(path_prefix, ())
        return sorted(key[cut:] for key in keys if key.startswith(start))

    # -- accounting ----------------------------------------------------------

    def count(self, counter: str, by: int = 1) -> None:
        self.counters[counter] = self.counters.get(counter, 0) + by

    def evidence(self, source: int, path: Path, channel: str, value: Any) -> None:
        """Keep (bounded) evidence of a peer's misbehaviour."""
        self.evidence_log.append((source, path, channel, value))
