"""Byzantine behaviours: what a faulty node does besides running the protocol.

A Byzantine node in the simulator runs the honest protocol core (so it keeps
a plausible state), and an adversary (a :class:`Strategy`) resolves its
choice points, rewrites every message it sends, and after each of its steps
may *attack*: send any well-typed message to any peer. Authenticated links
mean it cannot forge messages *from* correct nodes; everything it sends is
attributed to it. See docs/adversary.md. Behaviours (composable: a node's
behaviour is a ``+``-joined list, ``"equivocate+forge"``):

* ``silent``: drops every honest message (forged ones still leave);
* ``equivocate``: splits the other nodes into two sides (drawn from the seed)
  and tells one side the truth and the other a different value;
* ``garbage``: replaces some messages by random bytes (exercising decoders);
* ``replay``: re-sends its own earlier messages to random peers, and a burst
  of them to a peer that restarted (old traffic across incarnations);
* ``delay``: holds some honest messages back and releases them later, in
  another order;
* ``forge``: after some of its steps, sends a message generated from the
  registered schemas (:mod:`replicaio.sim.forge`), addressed to real
  components, with fields near the edges of the run (:class:`RunView`);
* ``flood``: ``forge`` at every step, in bursts (for resource exhaustion).

A protocol adds its own with :func:`register_behaviour`, and teaches the
adversary where its windows and watermarks are with :func:`register_probe`.
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from msgspec.structs import replace

from replicaio.assembly import adversary_probes
from replicaio.compiled import declarations
from replicaio.core.codec import Codec, DecodeError
from replicaio.core.node import Node
from replicaio.core.reliable import Acks, Envelope, Hello
from replicaio.core.stream import GroupDatagram
from replicaio.sim.forge import Forger, Pool

REPLAY_BUFFER_MAX = 256
REPLAY_BURST_MAX = 16
DELAYED_MAX = 256
RECENT_MAX = 256  # messages of the run's traffic a RunView keeps
POOL_REFRESH_US = 50_000  # virtual time between rebuilds of what the adversary knows
PATHS_MAX = 256
PROBE_DEPTH_MAX = 3
PROBE_ITEMS_MAX = 16
FLOOD_SENDS_MAX = 4096  # what one flooding node sends in a run, at most


class RunView:
    """What an adversary observes: the run's recent traffic (every message put
    on the network, as the simulator sees it) and the public state of the
    nodes' cores. The simulator keeps it current; strategies only read it."""

    def __init__(self, n: int, byzantine: tuple[int, ...]) -> None:
        self.n = n
        self.byzantine = byzantine
        self.correct = tuple(node for node in range(n) if node not in byzantine)
        self.now = 0
        self.recent: deque[tuple[int, int, Any]] = deque(maxlen=RECENT_MAX)
        self.cores: list[Node | None] = [None] * n
        self.incarnations: list[int] = [0] * n
        self.knowledge: Knowledge | None = None
        self.knowledge_at = -POOL_REFRESH_US
        # (node, storage key, value): a durable write of a Byzantine node's
        # trusted component outside a step (``replicaio.sim.minbft_adversary``).
        self.trusted_write: Callable[[int, str, bytes], None] | None = None

    def know(self) -> Knowledge:
        """What can be learned from the view now (rebuilt at most every
        ``POOL_REFRESH_US`` of virtual time, so the cost stays off the hot path,
        or sooner while it knows no component yet and traffic came since)."""
        knowledge = self.knowledge
        if (
            knowledge is None
            or self.now - self.knowledge_at >= POOL_REFRESH_US
            or (not knowledge.paths and len(self.recent) != knowledge.traffic)
        ):
            knowledge = self.knowledge = Knowledge.learn(self)
            self.knowledge_at = self.now
        return knowledge


@dataclass(slots=True)
class Knowledge:
    """The material of forged messages: a value pool, the component paths and
    channels seen on links, the link bodies by channel, and the stream
    messages seen (templates for mutation)."""

    pool: Pool
    paths: list[tuple[tuple[int | str, ...], str]]
    bodies: dict[str, list[Any]]
    streamed: list[Any]
    traffic: int  # messages in the view when learned

    @classmethod
    def learn(cls, view: RunView) -> Knowledge:
        pool = Pool()
        for node in range(-1, view.n + 1):  # real ids, and the first ones that are not
            pool.add_number(node)
        paths: dict[tuple[tuple[int | str, ...], str], None] = {}
        bodies: dict[str, dict[Any, None]] = {}
        streamed: list[Any] = []
        for _, _, message in view.recent:
            kind = type(message)
            if kind is Envelope:
                key = (message.path, message.channel)
                if key not in paths and len(paths) < PATHS_MAX:
                    paths[key] = None
                    for element in message.path:
                        if type(element) is int:
                            pool.add_number(element)
                known = bodies.get(message.channel)
                if known is None:
                    known = bodies[message.channel] = {}
                    pool.add_text(message.channel)
                body = message.body
                if len(known) < PATHS_MAX and hashable(body) and body not in known:
                    known[body] = None
                    pool.add_value(body)
                    pool.harvest(body)
            elif kind is Hello:
                pool.add_number(message.incarnation)
            elif kind is not Acks and kind is not bytes and len(streamed) < PATHS_MAX:
                streamed.append(message)
                pool.harvest(message)
        for node in view.correct:
            core = view.cores[node]
            if core is not None and core.protocol is not None:
                for number in probe(core.protocol):
                    pool.add_number(number)
        found_bodies = {name: list(found) for name, found in bodies.items()}
        return cls(pool, list(paths), found_bodies, streamed, len(view.recent))


def hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


# -- probes: the honest nodes' public state ----------------------------------

Probe = Callable[[Any], Iterable[int]]
PROBES: dict[type, Probe] = dict(adversary_probes())  # the assembly's, and registered ones
PROBE_SKIP = ("replicaio.core.",)


def register_probe(cls: type, function: Probe) -> None:
    """Teach the adversary the edges of ``cls`` (a protocol's state object):
    ``function(obj)`` yields numbers to aim at, such as ``low + window_max``."""
    PROBES[cls] = function


def probe(root: Any) -> Iterator[int]:
    """Integers of a protocol object graph (its attributes, a few levels deep),
    plus what registered probes say; core plumbing (contexts, links) is skipped."""
    seen: set[int] = set()
    stack: list[tuple[Any, int]] = [(root, 0)]
    while stack:
        item, depth = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        for cls in type(item).__mro__:  # a subclass (a planted variant) is aimed at alike
            found = PROBES.get(cls)
            if found is not None:
                yield from found(item)
                break
        for value in attributes(item):
            kind = type(value)
            if kind is int:
                yield value
            elif kind is list or kind is tuple:
                for element in value[:PROBE_ITEMS_MAX]:
                    if type(element) is int:
                        yield element
            elif depth < PROBE_DEPTH_MAX and kind.__module__.startswith("replicaio.") and (
                not kind.__module__.startswith(PROBE_SKIP)
            ):
                stack.append((value, depth + 1))


def attributes(item: Any) -> list[Any]:
    """``item``'s attribute values in the order the interpreter's ``__dict__``
    holds them. A class compiled as an extension type (a ``.pxd`` beside its
    module, ADR 0036) keeps its declared attributes out of ``__dict__``: they
    come first, in their declared order, which is the order its ``__init__``
    assigns them, so a compiled run probes what an interpreted one does."""
    found = getattr(item, "__dict__", None)
    if found is not None:
        # a subclass of a class with ``__slots__`` (an interpreted ``Replication``'s
        # variant) has both: the slots first, as the compiled base's declarations
        named = declared_attributes(type(item)) or slot_names(type(item))
        if named:
            return [getattr(item, name, None) for name in named] + list(found.values())
        return list(found.values())
    slots = getattr(type(item), "__slots__", None)
    if slots is None:  # an extension type without a ``__dict__``: its declarations
        return [getattr(item, name, None) for name in declared_attributes(type(item))]
    return [getattr(item, name, None) for name in slots]


def slot_names(cls: type) -> tuple[str, ...]:
    """The ``__slots__`` of ``cls`` and its bases, bases first."""
    names: list[str] = []
    for base in reversed(cls.__mro__):
        slots = base.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__"):
                names.append(name)
    return tuple(names)


_HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made by a class statement, not compiled
_DECLARED: dict[type, tuple[str, ...]] = {}


def declared_attributes(cls: type) -> tuple[str, ...]:
    """The attributes the extension types among ``cls``'s bases declare in their
    ``.pxd`` (ADR 0036), bases first; empty for a class the interpreter made."""
    found = _DECLARED.get(cls)
    if found is None:
        names: list[str] = []
        for base in reversed(cls.__mro__):
            module = base.__module__
            if base.__flags__ & _HEAP_TYPE or type(module) is not str or not module.startswith(
                "replicaio."
            ):
                continue
            names += declarations(module).get(base.__name__, ())
        found = _DECLARED[cls] = tuple(names)
    return found


# -- strategies ------------------------------------------------------------------

Sends = list[tuple[int, Any]]


class Strategy:
    """Base behaviour: honest choices, messages passed through, no attacks.
    Override any of :meth:`choose`, :meth:`rewrite`, :meth:`attack`,
    :meth:`rewrite_output` and :meth:`observe_input`."""

    def __init__(self, node: int, n: int, rng: random.Random) -> None:
        self.node = node
        self.n = n
        self.rng = rng
        # The replicated group this instance acts in, on a node hosting several
        # (:class:`PerGroup` sets it); ``None``: the node's only protocol.
        self.group: int | None = None

    def choose(self, label: str, count: int) -> int:
        """Resolve a choice point of the faulty node (may force any alternative)."""
        return self.rng.randrange(count)

    def rewrite(self, destination: int, message: Any) -> Sends:
        """What actually leaves for ``destination`` (messages or raw bytes)."""
        return [(destination, message)]

    def attack(self, view: RunView) -> Sends:
        """Called after each step of the faulty node: what it sends on its own."""
        return []

    def rewrite_output(self, output: Any) -> Any:
        """What the faulty node's host tells the world for ``output`` (a reply to
        a client, say); the event log keeps the honest one."""
        return output

    def attach_live(self, view: Any) -> None:
        """Running live (``replicaio node --byzantine``): ``view`` is the host's
        stand-in for the simulator's view (its own core and a durable write for
        its trusted component, ``runtime.host.LiveView``). Most behaviours need
        nothing of it."""

    def observe_input(self, event: Any) -> None:
        """Called with each input of the faulty node before its step (what it
        receives is its own to know: a client's request, say)."""
        return

    def core_factory(self, factory: Any) -> Any:
        """The protocol factory the faulty node's core is built from: the honest
        one, or a behaviour's own (a component that acts as a Byzantine one
        would from inside the node, such as a lying transaction driver)."""
        return factory

    def peer(self, view: RunView) -> int:
        """A correct peer to aim at."""
        return self.rng.choice(view.correct)


class Silent(Strategy):
    """Sends none of the honest core's messages (counted against f)."""

    def rewrite(self, destination: int, message: Any) -> Sends:
        return []


def twist(body: Any) -> Any:
    """A different but well-formed value of the same type."""
    if isinstance(body, bytes):
        return body + b"~"
    if isinstance(body, str):
        return body + "~"
    if isinstance(body, bool):
        return not body
    if isinstance(body, int):
        return body + 1
    return body


def half_the_others(node: int, n: int, rng: random.Random) -> frozenset[int]:
    """Half of the nodes other than ``node`` (one at least), drawn by ``rng``: those
    an equivocating or selective behaviour tells one thing, the rest another."""
    others = [peer for peer in range(n) if peer != node]
    rng.shuffle(others)
    return frozenset(others[: max(1, len(others) // 2)])


class Equivocate(Strategy):
    """Tell half of the other nodes something else than the other half."""

    def __init__(self, node: int, n: int, rng: random.Random) -> None:
        super().__init__(node, n, rng)
        self.lied_to = half_the_others(node, n, rng)

    def rewrite(self, destination: int, message: Any) -> Sends:
        if destination in self.lied_to and type(message) is Envelope:
            return [(destination, replace(message, body=twist(message.body)))]
        return [(destination, message)]


class Garbage(Strategy):
    """Sometimes random bytes instead of a message; sometimes both."""

    def rewrite(self, destination: int, message: Any) -> Sends:
        roll = self.rng.random()
        junk = self.rng.randbytes(self.rng.randint(0, 64))
        if roll < 0.3:
            return [(destination, junk)]
        if roll < 0.6:
            return [(destination, junk), (destination, message)]
        return [(destination, message)]


class Replay(Strategy):
    """Re-send its own old messages: now and then to a random peer, and in a
    burst to a peer that restarted (which may take them for new ones)."""

    def __init__(self, node: int, n: int, rng: random.Random) -> None:
        super().__init__(node, n, rng)
        self.past: deque[Any] = deque(maxlen=REPLAY_BUFFER_MAX)
        self.incarnations: list[int] = [0] * n

    def rewrite(self, destination: int, message: Any) -> Sends:
        out = [(destination, message)]
        if self.past and self.rng.random() < 0.5:
            old = self.past[self.rng.randrange(len(self.past))]
            out.append((self.rng.randrange(self.n), old))
        self.past.append(message)
        return [(target, sent) for target, sent in out if target != self.node]

    def attack(self, view: RunView) -> Sends:
        out: Sends = []
        for peer in view.correct:
            incarnation = view.incarnations[peer]
            if incarnation != self.incarnations[peer]:
                if self.incarnations[peer] and self.past:
                    count = min(len(self.past), REPLAY_BURST_MAX)
                    out.extend((peer, old) for old in self.rng.sample(list(self.past), count))
                self.incarnations[peer] = incarnation
        return out


class Delay(Strategy):
    """Hold some honest messages back; release them at later steps, shuffled."""

    def __init__(self, node: int, n: int, rng: random.Random) -> None:
        super().__init__(node, n, rng)
        self.held: list[tuple[int, Any]] = []

    def rewrite(self, destination: int, message: Any) -> Sends:
        if self.rng.random() < 0.5:
            return [(destination, message)]
        self.held.append((destination, message))
        if len(self.held) > DELAYED_MAX:
            return [self.held.pop(0)]
        return []

    def attack(self, view: RunView) -> Sends:
        if not self.held or self.rng.random() < 0.7:
            return []
        count = self.rng.randint(1, len(self.held))
        released = [self.held.pop(self.rng.randrange(len(self.held))) for _ in range(count)]
        return released


class Forge(Strategy):
    """Send generated, well-typed messages to correct peers after some steps.

    Most are link messages (``Envelope``) addressed to a component path seen on
    the network, with path numbers moved to the edges the view reveals, the
    sender's or the receiver's id put in id positions, and a body seen on that
    channel or a fresh one of the same kind; some are stream messages (mutated
    copies of real ones, or fresh ones of any registered class); a few are the
    node core's own ``Hello`` and ``Acks``. Every choice is a pure function of
    the node's seeded stream and the view.
    """

    rates: tuple[float, ...] = (0.02, 0.05, 0.15)  # per step of the faulty node
    bursts: tuple[int, ...] = (1, 1, 2)
    stride = 0.1  # how often a path number moves far beyond where it was

    def __init__(self, node: int, n: int, rng: random.Random) -> None:
        super().__init__(node, n, rng)
        self.rate = rng.choice(self.rates)
        self.burst = rng.choice(self.bursts)

    def attack(self, view: RunView) -> Sends:
        rng = self.rng
        if rng.random() >= self.rate:
            return []
        knowledge = view.know()
        forger = Forger(rng, knowledge.pool)
        out: Sends = []
        for _ in range(rng.randint(1, self.burst)):
            destination = self.peer(view)
            out.append((destination, self.forge(forger, knowledge, destination)))
        return out

    def forge(self, forger: Forger, knowledge: Knowledge, destination: int) -> Any:
        rng = self.rng
        roll = rng.random()
        if knowledge.paths and roll < 0.75:
            return self.envelope(forger, knowledge, destination)
        if knowledge.streamed and roll < 0.85:
            return forger.mutate(rng.choice(knowledge.streamed))
        if knowledge.streamed and roll < 0.95:
            # A fresh one of a class seen on the network. Not of any registered
            # class: which are registered depends on what the process imported,
            # and a run must not.
            return forger.message(type(rng.choice(knowledge.streamed)))
        if roll < 0.97:
            return Hello(forger.number())
        return forger.message(Acks)

    def envelope(self, forger: Forger, knowledge: Knowledge, destination: int) -> Envelope:
        rng = self.rng
        path, channel = rng.choice(knowledge.paths)
        elements = list(path)
        numbers = [index for index, element in enumerate(elements) if type(element) is int]
        if numbers:
            index = rng.choice(numbers)
            roll = rng.random()
            if roll < 0.3 and elements[index] in range(self.n):
                elements[index] = destination  # the receiver's own component
            elif roll < 0.3 + self.stride:  # beyond its window, by a stride
                elements[index] = forger.beyond(elements[index])
            elif roll < 0.9:
                elements[index] = forger.number()
            if rng.random() < 0.3:  # and a second number moved
                other = rng.choice(numbers)
                elements[other] = forger.number()
        if rng.random() < 0.1:
            channel = forger.text()
        known = knowledge.bodies.get(channel)
        if known and rng.random() < 0.6:
            body = rng.choice(known)
        elif known and rng.random() < 0.5:
            body = twist(rng.choice(known))
        else:
            body = forger.plain(0)
        return Envelope(tuple(elements), channel, body)


class Flood(Forge):
    """``forge`` at every step, in bursts, aiming past windows: resource
    exhaustion. Bounded per run (``FLOOD_SENDS_MAX``), to keep swarms fast."""

    rates: tuple[float, ...] = (1.0,)
    bursts: tuple[int, ...] = (8,)
    stride = 0.5

    def __init__(self, node: int, n: int, rng: random.Random) -> None:
        super().__init__(node, n, rng)
        self.budget = FLOOD_SENDS_MAX

    def attack(self, view: RunView) -> Sends:
        if self.budget <= 0:
            return []
        out = super().attack(view)[: self.budget]
        self.budget -= len(out)
        return out


class Composite(Strategy):
    """Several behaviours at once: each rewrites what the previous one let
    through; all of them attack. The first one resolves choice points."""

    def __init__(self, node: int, n: int, parts: list[Strategy]) -> None:
        super().__init__(node, n, parts[0].rng)
        self.parts = parts

    def choose(self, label: str, count: int) -> int:
        return self.parts[0].choose(label, count)

    def rewrite(self, destination: int, message: Any) -> Sends:
        out: Sends = [(destination, message)]
        for part in self.parts:
            out = [sent for target, item in out for sent in part.rewrite(target, item)]
        return out

    def attack(self, view: RunView) -> Sends:
        return [sent for part in self.parts for sent in part.attack(view)]

    def rewrite_output(self, output: Any) -> Any:
        for part in self.parts:
            output = part.rewrite_output(output)
        return output

    def attach_live(self, view: Any) -> None:
        for part in self.parts:
            part.attach_live(view)

    def observe_input(self, event: Any) -> None:
        for part in self.parts:
            part.observe_input(event)

    def core_factory(self, factory: Any) -> Any:
        for part in self.parts:
            factory = part.core_factory(factory)
        return factory


class PerGroup(Strategy):
    """A protocol's own behaviour on a node that may host replicas of several
    groups (``replicaio.services.txn``): one instance of the behaviour per
    group, each with its own seeded stream and ``group`` set, so it finds its
    group's ordering component (``minbft_of(protocol, group)``) and sees its
    group's stream messages unwrapped from their :class:`GroupDatagram`; what
    it changes or sends on its own is wrapped again for that group. On a node
    running one protocol only, the instance built first (from ``rng``, as the
    behaviour was before groups) does everything, so those runs keep their
    schedules."""

    def __init__(self, node: int, n: int, rng: random.Random,
                 factory: Callable[[int, int, random.Random], Strategy]) -> None:
        # The groups' streams are derived from the seed's stream without
        # consuming it (the single-protocol instance draws from it as before).
        material = hashlib.sha256(repr(rng.getstate()).encode()).hexdigest()[:32]
        super().__init__(node, n, rng)
        self.factory = factory
        self.material = material
        self.plain = factory(node, n, rng)
        self.groups: dict[int, Strategy] = {}
        self.hosted = 0  # groups the node hosts, once seen
        self.live_view: Any = None

    def inner(self, group: int) -> Strategy:
        found = self.groups.get(group)
        if found is None:
            rng = random.Random(f"replicaio-adversary-group:{self.material}:{group}")
            found = self.groups[group] = self.factory(self.node, self.n, rng)
            found.group = group
            for name in SHARED_WITH_GROUPS:  # the node's own key serves every group
                if hasattr(self.plain, name):
                    setattr(found, name, getattr(self.plain, name))
            if self.live_view is not None:
                found.attach_live(self.live_view)
        return found

    def choose(self, label: str, count: int) -> int:
        return self.plain.choose(label, count)

    def rewrite(self, destination: int, message: Any) -> Sends:
        if type(message) is not GroupDatagram or not 0 <= message.group < GROUPS_HOSTED_MAX:
            return self.plain.rewrite(destination, message)
        body = datagram_body(message)
        if body is None:
            return [(destination, message)]
        group = message.group
        return [(target, message if item is body else wrap(group, item))
                for target, item in self.inner(group).rewrite(destination, body)]

    def attack(self, view: RunView) -> Sends:
        sends = self.plain.attack(view)
        core = view.cores[self.node]
        groups = getattr(getattr(core, "protocol", None), "groups", None)
        replicas = getattr(groups, "replicas", None)
        if isinstance(replicas, list):
            self.hosted = min(len(replicas), GROUPS_HOSTED_MAX)
        for group in range(self.hosted):
            sends += [(target, wrap(group, item))
                      for target, item in self.inner(group).attack(view)]
        return sends

    def rewrite_output(self, output: Any) -> Any:
        return self.plain.rewrite_output(output)

    def attach_live(self, view: Any) -> None:
        self.live_view = view
        for instance in (self.plain, *self.groups.values()):
            instance.attach_live(view)

    def observe_input(self, event: Any) -> None:
        self.plain.observe_input(event)

    def core_factory(self, factory: Any) -> Any:
        return self.plain.core_factory(factory)


SHARED_WITH_GROUPS = ("signer",)  # what the groups' instances take from the first one
GROUPS_HOSTED_MAX = 64  # groups of one node a per-group behaviour acts in, at most
GROUP_CODEC = Codec()
_last_body: list[Any] = [None, None]  # (a datagram's body bytes, its decoded message)


def datagram_body(datagram: GroupDatagram) -> Any | None:
    """The stream message inside ``datagram`` (``None`` if it does not decode);
    the last one is kept, as the parts of a mix see the same datagram in turn."""
    if _last_body[0] is datagram.body:
        return _last_body[1]
    try:
        body = GROUP_CODEC.decode(datagram.body)
    except DecodeError:
        return None
    _last_body[0], _last_body[1] = datagram.body, body
    return body


def wrap(group: int, item: Any) -> Any:
    """``item`` as group ``group``'s stream sends it (raw bytes stay as they are)."""
    if type(item) is bytes or type(item) is GroupDatagram:
        return item
    return GroupDatagram(group, GROUP_CODEC.encode(item))


def per_group(factory: Callable[[int, int, random.Random], Strategy]
              ) -> Callable[[int, int, random.Random], Strategy]:
    """``factory``'s behaviour, acting in every group of a multi-group node
    (:class:`PerGroup`); for a protocol's own behaviours (MinBFT's, PBFT's)."""
    def build(node: int, n: int, rng: random.Random) -> Strategy:
        return PerGroup(node, n, rng, factory)
    return build


# -- registry --------------------------------------------------------------------

BehaviourFactory = Callable[[int, int, random.Random], Strategy]


@dataclass(frozen=True, slots=True)
class Behaviour:
    """A named behaviour. ``protocols``: the protocols it is drawn for (``None``:
    all); ``weight``: how often the seed adds it to a Byzantine node's mix."""

    name: str
    factory: BehaviourFactory
    summary: str
    protocols: tuple[str, ...] | None = None
    weight: float = 0.0


BEHAVIOURS: dict[str, Behaviour] = {}
BASE_BEHAVIOURS = ("equivocate", "silent", "garbage", "replay")  # one is always drawn


def register_behaviour(
    name: str,
    factory: BehaviourFactory,
    summary: str,
    *,
    protocols: tuple[str, ...] | None = None,
    weight: float = 0.0,
) -> None:
    """Add a behaviour (a protocol's own attacks: PBFT's, MinBFT's). With a
    ``weight`` > 0 the seed also adds it, with that probability, to the mix of
    Byzantine nodes of runs of ``protocols``; it is always forcible by name."""
    if not name.isidentifier() or name in BEHAVIOURS:
        raise ValueError(f"behaviour name {name!r} is not a new identifier")
    BEHAVIOURS[name] = Behaviour(name, factory, summary, protocols, weight)


def behaviour_names(protocol: str | None = None) -> tuple[str, ...]:
    """The behaviours a run of ``protocol`` may use (every one when ``None``)."""
    return tuple(
        name for name, behaviour in BEHAVIOURS.items()
        if protocol is None or behaviour.protocols is None or protocol in behaviour.protocols
    )


def draw_extras(rng: random.Random, protocol: str | None) -> list[str]:
    """The behaviours the seed adds to a node's base behaviour."""
    return [
        name for name, behaviour in BEHAVIOURS.items()
        if behaviour.weight > 0
        and (behaviour.protocols is None or protocol in behaviour.protocols)
        and rng.random() < behaviour.weight
    ]


def build_strategy(mix: str, node: int, n: int, seed: int) -> Strategy:
    """The strategy of Byzantine ``node`` for a mix such as ``"equivocate+forge"``.
    Each behaviour draws from its own seeded stream."""
    parts: list[Strategy] = []
    for index, name in enumerate(mix.split("+")):
        suffix = "" if index == 0 else f":{name}"
        rng = random.Random(f"replicaio-adversary:{seed}:{node}{suffix}")
        parts.append(BEHAVIOURS[name].factory(node, n, rng))
    return parts[0] if len(parts) == 1 else Composite(node, n, parts)


for _behaviour in (
    Behaviour("equivocate", Equivocate, "tell two halves of the peers different values"),
    Behaviour("silent", Silent, "send none of the honest messages"),
    Behaviour("garbage", Garbage, "replace some messages by random bytes"),
    Behaviour("replay", Replay, "re-send old messages, in bursts to restarted peers", weight=0.2),
    Behaviour("delay", Delay, "hold messages back, release them later, reordered", weight=0.2),
    Behaviour("forge", Forge, "send generated well-typed messages near the run's edges",
              weight=0.7),
    Behaviour("flood", Flood, "forge at every step, in bursts"),
):
    BEHAVIOURS[_behaviour.name] = _behaviour
