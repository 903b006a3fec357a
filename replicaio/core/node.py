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
crash-recovery model: retransmission, acknowledgements, Hello resync after a
restart) lives below every protocol, in :mod:`replicaio.core.reliable`; the
node owns one :class:`~replicaio.core.reliable.ReliableLinks` and drives its
tick (timer ``TICK_TIMER``).

Bad input from the network never raises: it is dropped and counted under
``rejected_<reason>``. Nothing here reads a clock, draws randomness, or does
I/O; choice points are resolved by the ``choose`` function the host passes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from replicaio.core.codec import Codec, DecodeError
from replicaio.core.config import ClusterConfig, Resilience
from replicaio.core.context import Context, Ignore, accepts_bytes
from replicaio.core.effects import (
    NO_EFFECTS,
    Effects,
    Input,
    Path,
    Receive,
    Request,
    Start,
    TimerFired,
)
from replicaio.core.errors import ConfigError, UsageError
from replicaio.core.lines import Line
from replicaio.core.reliable import (
    ACKS_PER_MESSAGE_MAX,
    PATH_LENGTH_MAX,
    Acks,
    Envelope,
    Hello,
    ReliableLinks,
    hello_key,
)
from replicaio.core.scheduler import ChooseFunction, Scheduler, Task
from replicaio.core.signing import Signer, simulation_signer
from replicaio.core.stream import GroupDatagram, GroupOutput, Stream

__all__ = [
    "INCARNATION_KEY",
    "TICK_TIMER",
    "Acks",
    "Envelope",
    "Hello",
    "Node",
    "NodeParams",
    "NodeProtocol",
    "ProtocolFactory",
    "choose_first",
    "hello_key",
]

TICK_TIMER = 0  # timer id of the node's own retransmission/ack tick


INCARNATION_KEY = "node#incarnation"

PathElement = int | str


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
        if self.path_length_max > PATH_LENGTH_MAX:
            raise ConfigError(f"NodeParams.path_length_max must be <= {PATH_LENGTH_MAX}")
        if self.acks_per_message_max > ACKS_PER_MESSAGE_MAX:
            raise ConfigError(
                f"NodeParams.acks_per_message_max must be <= {ACKS_PER_MESSAGE_MAX}"
            )
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


class Node:
    """One node's deterministic core. See the module docstring."""

    # Exactly the attributes its ``.pxd`` declares, in that order: compiled it has
    # no ``__dict__`` (a ``cpdef`` method's override check is then free, ADR 0041),
    # and interpreted it refuses an undeclared attribute just the same. Unsorted: the
    # adversary's probe reads them in this order (sim/adversary.py: attributes).
    __slots__ = (  # noqa: RUF023
        "node_id", "config", "n", "params", "codec", "signer", "usig_scheme", "usig_admission",
        "protocol_factory", "scheduler", "effects", "counters", "request_rejection",
        "evidence_log", "storage", "storage_keys", "incarnation", "storage_damaged", "started",
        "routes", "child_handlers", "reliable", "local", "local_stream", "streams",
        "group_output_handlers", "timers", "timer_finishers", "timer_next", "tick_armed",
        "protocol", "root",
    )

    def __init__(
        self,
        node_id: int,
        config: ClusterConfig,
        protocol: ProtocolFactory,
        *,
        choose: ChooseFunction = choose_first,
        params: NodeParams | None = None,
        codec: Codec | None = None,
        signer: Signer | None = None,
        usig_scheme: object | None = None,
        usig_admission: object | None = None,
    ) -> None:
        config.validate()
        if node_id not in config.nodes:
            raise ConfigError(f"node id {node_id} not in 0..{config.n - 1}")
        self.node_id = node_id
        self.config = config
        self.n = config.n
        self.params = (params or NodeParams()).validate()
        self.codec = codec or Codec()
        # Signs as this node (``replicaio.core.signing``): the host's, or the
        # simulator's keyed hashes.
        self.signer: Signer = signer or simulation_signer(node_id, config.n)
        if self.signer.node_id != node_id:
            raise ConfigError(f"node {node_id} given the signer of node {self.signer.node_id}")
        # The trusted component's certificates for protocols that have one (MinBFT's
        # UsigScheme, from the cluster file's [usig]); None: the protocol's simulation
        # scheme. Opaque to the core.
        self.usig_scheme = usig_scheme
        # The operator's admission of this node's current USIG epoch (MinBFT's
        # UsigAdmission: after its USIG state was lost), or None. Opaque here.
        self.usig_admission = usig_admission
        self.protocol_factory = protocol
        self.scheduler = Scheduler(choose)
        self.effects = Effects()
        self.counters: dict[str, int] = {}
        # The reason the last Request step was refused (None: taken), for the host.
        self.request_rejection: str | None = None
        self.evidence_log: deque[tuple[int, Path, str, Any]] = deque(
            maxlen=self.params.evidence_max
        )
        self.storage: dict[str, bytes] = {}
        # The keys of ``storage`` grouped by path ("i0/i3#" -> keys), in storage
        # order, so that forgetting a path does not scan every key of the node.
        self.storage_keys: dict[str, dict[str, None]] = {}
        self.incarnation = 0
        self.storage_damaged = False  # this incarnation started on a damaged disk
        self.started = False
        self.routes: dict[Path, Context] = {}
        self.child_handlers: dict[Path, Callable[[Path], Context | Ignore]] = {}
        self.reliable = ReliableLinks(self)
        self.local: deque[Envelope] = deque()
        self.local_stream: deque[tuple[int | None, Any]] = deque()
        # Streams by (group, message class); group None: not a group's stream.
        self.streams: dict[tuple[int | None, type], Stream] = {}
        # Who takes a group's outputs (a component of the node); else they go out.
        self.group_output_handlers: dict[int, Callable[[Any], None]] = {}
        self.timers: dict[int, Line[None]] = {}
        # timer id -> (owning task, its finish callback), dropped when the timer
        # fires, so a long-lived task does not collect one callback per timer.
        self.timer_finishers: dict[int, tuple[Task[Any], Callable[[], None]]] = {}
        self.timer_next = TICK_TIMER + 1
        self.tick_armed = False
        self.protocol: NodeProtocol | None = None
        # Routed like any other context, so links on the root context receive.
        self.root = self.context(())

    # -- the boundary --------------------------------------------------------

    def step(self, event: Input) -> Effects:
        """Consume one input; return the effects, to be executed in documented order."""
        effects = self.effects  # fresh: made by (or left unused in) the previous step
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
            source = event.source
            data = event.message
            if type(data) is bytes and 0 <= source < self.n and source != self.node_id:
                # receive()'s common case, inline: a peer's frame
                try:
                    data = self.codec.decode(data)
                except DecodeError as error:
                    self.count(f"rejected_decode_{error.reason}")
                else:
                    if type(data) is Envelope:
                        self.dispatch(source, data)
                    else:
                        self.receive(source, data)
            else:
                self.receive(source, data)
        elif isinstance(event, TimerFired):
            assert self.started, "input before Start"
            self.on_timer(event.timer_id)
        elif isinstance(event, Request):
            assert self.started, "input before Start"
            assert self.protocol is not None
            reason = self.protocol.on_request(event.payload)
            self.request_rejection = reason
            if reason is not None:
                self.count(f"request_rejected_{reason}")
        else:
            assert isinstance(event, Start), f"unknown input {event!r}"
            self.start(event.storage, event.damaged, event.incarnation_floor)
        if self.scheduler.ready or self.local or self.local_stream:
            self.run()  # most deliveries wake nothing: no call for them
        if not self.tick_armed:
            # reliable.has_unacked() or reliable.has_acks_pending(), inline: every
            # step asks, and most (a stream's message, a timer) retain nothing
            reliable = self.reliable
            if any(reliable.unacked) or any(reliable.acks_pending):
                self.tick_armed = True
                effects.timers_set.append((TICK_TIMER, self.params.tick_us))
        if (
            effects.persists
            or effects.sends
            or effects.outputs
            or effects.timers_set
            or effects.timers_cancelled
        ):
            # A fresh batch for the next step, so that nothing done between steps
            # reaches the one handed to the host.
            self.effects = Effects()
            return effects
        return NO_EFFECTS  # and this step's empty batch serves the next one

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
                group, message = local_stream.popleft()
                self.route_stream(self.node_id, message, group)
            if scheduler.ready:
                scheduler.run()

    # -- start ---------------------------------------------------------------

    def start(self, storage: Any, damaged: bool = False, incarnation_floor: int = 0) -> None:
        assert not self.started, "a Node object lives one incarnation; build a new one"
        self.started = True
        self.storage_damaged = damaged
        if damaged:
            self.count("storage_damage_reported")
        self.storage = dict(storage)
        for key in self.storage:
            self.index_key(key)
        stored = self.storage.get(INCARNATION_KEY)
        previous = self.codec.decode_value(stored) if stored else 0
        assert isinstance(previous, int), "corrupt incarnation record"
        # A damaged log may hold an older incarnation than the last one used.
        self.incarnation = max(previous, incarnation_floor) + 1
        self.persist(INCARNATION_KEY, self.codec.encode_value(self.incarnation))
        self.reliable.restore_sent()
        self.reliable.announce(self.incarnation)
        self.protocol = self.protocol_factory(self.root)
        self.protocol.start()

    # -- receiving -----------------------------------------------------------

    def receive(self, source: int, data: Any) -> None:
        if not 0 <= source < self.n or source == self.node_id:
            self.count("rejected_unknown_peer")
            return
        kind = type(data)
        if kind is bytes or (
            kind is not Envelope and isinstance(data, (bytearray, memoryview))
        ):  # a tuple: faster than a union
            try:
                data = self.codec.decode(data if kind is bytes else bytes(data))
            except DecodeError as error:
                self.count(f"rejected_decode_{error.reason}")
                return
            kind = type(data)
        if kind is Envelope:  # the common case, decoded or not
            self.dispatch(source, data)
        elif kind is Acks:
            self.reliable.on_acks(source, data)
        elif kind is Hello:
            self.reliable.on_hello(source, data)
        else:
            self.route_stream(source, data)

    # -- streams (unreliable typed datagrams, see core/stream.py) -------------

    def route_stream(self, source: int, message: Any, group: int | None = None) -> None:
        if type(message) is GroupDatagram:
            if group is not None:
                self.count("rejected_nested_group_datagram")
                return
            group = message.group
            try:
                message = self.codec.decode(message.body)
            except DecodeError as error:
                self.count(f"rejected_decode_{error.reason}")
                return
            if type(message) is GroupDatagram:
                self.count("rejected_nested_group_datagram")
                return
        stream = self.streams.get((group, type(message)))
        if stream is None:
            self.count("rejected_unexpected_message")
            return
        stream.deliver(source, message)

    def open_stream(self, stream: Stream) -> None:
        """Route ``stream``'s message classes of its group to it (one owner each)."""
        for cls in stream.types:
            owner = self.streams.get((stream.group, cls))
            if owner is not None and owner is not stream:
                raise UsageError(f"{cls.__name__} already belongs to stream {owner.name}")
        for cls in stream.types:
            self.streams[(stream.group, cls)] = stream

    def close_stream(self, stream: Stream) -> None:
        for cls in stream.types:
            if self.streams.get((stream.group, cls)) is stream:
                del self.streams[(stream.group, cls)]

    def stream_send(
        self, destination: int, message: Any, group: int | None = None,
        before_sync: bool = False,
    ) -> None:
        if destination == self.node_id:
            self.local_stream.append((group, message))
            return
        effects = self.effects
        if before_sync:
            early = effects.sends_before_sync
            if early is None:
                effects.sends_before_sync = early = []
            early.append(len(effects.sends))
        if group is None:
            effects.sends.append((destination, message))
        else:
            body = self.codec.encode(message)
            effects.sends.append((destination, GroupDatagram(group, body)))

    def group_output(self, group: int, value: Any) -> None:
        """An output of group ``group``: to its handler if one is set, else out."""
        handler = self.group_output_handlers.get(group)
        if handler is not None:
            handler(value)
        else:
            self.effects.outputs.append(GroupOutput(group, self.codec.encode(value)))

    def dispatch(self, source: int, envelope: Envelope) -> None:
        path = envelope.path
        context = self.routes.get(path)
        if context is None:
            found = self.route_unknown(path)
            if isinstance(found, Ignore):
                self.count(f"ignored_{found.reason}")
                if found.acknowledge:
                    self.reliable.acknowledge(source, path, envelope.channel)
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
        accepts = link.accepts
        if not (accepts is accepts_bytes and type(body) is bytes) and not accepts(body):
            self.count("rejected_body_type")
            return
        link.receive(source, body)
        if source != self.node_id:
            self.reliable.acks_pending[source][(path, channel)] = None

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

    # -- timers ----------------------------------------------------

    def on_timer(self, timer_id: int) -> None:
        if timer_id == TICK_TIMER:
            self.tick_armed = False
            self.reliable.on_tick()
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

    def end_timer(self, timer_id: int) -> bool:
        """Withdraw a timer that has not fired (its owner's finish callback
        included) and say whether it had not: the caller sets its line."""
        finisher = self.timer_finishers.get(timer_id)
        if finisher is not None:
            owner, callback = finisher
            owner.on_finish.remove(callback)
        if timer_id not in self.timers:
            return False
        self.cancel_timer(timer_id)
        return True

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
                # a tuple of types: `int | str` would make a union object per test
                assert isinstance(element, (int, str))
                assert not isinstance(element, str) or ("/" not in element and "#" not in element)
            context = Context(self, path)
            self.routes[path] = context
        return context

    def close_context(self, context: Context) -> None:
        self.routes.pop(context.path, None)
        self.child_handlers.pop(context.path, None)

    def forget_path(self, path: Path, prefix: str | None = None) -> None:
        """Drop what ``path`` sent: retained copies, retransmissions, durable
        records; ``prefix``: ``storage_key(path, "")`` if the caller has it."""
        self.reliable.forget(path)
        if prefix is None:
            prefix = self.storage_key(path, "")
        keys = self.storage_keys.get(prefix)
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
            if key not in storage:  # index_key(key), inline
                prefix = key[: key.find("#") + 1]
                indexed = self.storage_keys.get(prefix)
                if indexed is None:
                    indexed = self.storage_keys[prefix] = {}
                indexed[key] = None
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
