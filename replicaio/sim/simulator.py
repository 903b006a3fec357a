"""The simulator: every node of a cluster in one process, on virtual time.

One thread, one event heap, one seed (after TigerBeetle's VOPR). The heap
orders events by ``(time_us, sequence)``, so ties break by insertion order
and a run is a pure function of its options. The simulator:

* hosts each node's deterministic core exactly as the live runtime would
  (``Node.step`` and the documented effect order: persist and sync, then
  sends, timers, outputs), with a :class:`~replicaio.storage.memory.MemoryStorage`
  per node whose unsynced writes a crash may lose; with the ``sync`` fault
  kind a sync takes time while the node keeps stepping (group commit,
  ``replicaio.sim.group_commit``);
* moves messages across a model network, encoded with the real codec by
  default: latency, loss, duplication, reordering (links are FIFO unless
  reordering is on), and symmetric or one-way partitions;
* crashes and restarts correct nodes (a crash may land between a step's
  writes and its sync, keeping only a prefix of them), and lets an
  adversary drive each Byzantine node: rewriting what its core sends, and
  after each of its steps sending what it forges from a view of the run
  (``replicaio.sim.adversary``);
* holds every node to rules besides the protocol's properties: a node
  that raises (a failed assertion included) on any input is a
  ``node-raised`` violation, one that gives out a message or an output the
  codec refuses a ``bad-output`` one (never an error escaping the run),
  a correct node whose footprint exceeds the
  protocol's bound is a ``bounded-memory`` one (``replicaio.sim.footprint``),
  and one whose derived state disagrees with what it derives from (the
  protocol's optional ``audit``, asked at the footprint check's cadence) an
  ``internal-consistency`` one;
* runs in two phases: a *safety* phase with every fault the options allow and
  the checkers watching every output, then a *liveness* phase that heals the
  network, restarts crashed nodes and requires the protocol's liveness
  properties to hold once the system is quiet (or the time bound is hit);
* records every node input, choice and effect in an event log whose SHA-256
  is the run's fingerprint.
"""

from __future__ import annotations

import gc
import heapq
import random
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from heapq import heappush
from math import log
from math import log as natural_log  # send_all's own parameter is named log
from operator import itemgetter
from typing import IO, Any

from replicaio.assembly import protocol_factory
from replicaio.core.codec import Codec, EncodeError
from replicaio.core.config import ClusterConfig
from replicaio.core.effects import (
    CLOCK_CHOICE,
    NO_EFFECTS,
    Effects,
    Input,
    Receive,
    Request,
    Start,
    TimerFired,
)
from replicaio.core.errors import UsageError
from replicaio.core.node import Node, NodeParams, ProtocolFactory
from replicaio.interfaces.durable import DurableCheck
from replicaio.sim.adversary import RunView, Strategy, build_strategy
from replicaio.sim.footprint import CHECK_EVERY_STEPS, footprint, footprint_bounds, over_bounds
from replicaio.sim.group_commit import SYNC, finish_sync, hold, send_some
from replicaio.sim.harness import Harness, harness_for
from replicaio.sim.operator import SimOperator
from replicaio.sim.options import (
    HEAVY_STEP_WRITES,
    HEAVY_WAIT_US,
    HELD_MAX,
    HOLD_SPREAD_US,
    RARE_SEND_SHARE,
    RARE_SENDS_MIN,
    RARE_WAIT_US,
    Crash,
    Partition,
    SimOptions,
)
from replicaio.storage.base import after_start, start_input
from replicaio.storage.memory import DAMAGED_MID_LOG, LOST_SYNCED_WRITES, MemoryStorage
from replicaio.trace.eventlog import (
    EMPTY_EFFECTS,
    STEP,
    Choice,
    EventLogWriter,
    encode_input,
    pack_effects,
)

DELIVER, TIMER, REQUEST, CRASH, RESTART, LIVENESS, CALL = range(7)

# Young-generation collections during a run happen after this many net
# allocations of tracked objects (CPython's default is 700). A run keeps many
# small long-lived containers (in-flight messages, retained envelopes, link
# state) and, since components are freed by reference counting, makes almost
# no cyclic garbage (10 objects in a 157k-message run at n=16): at the
# default, that run spent 0.66 s of 2.1 s in the collector re-scanning live
# state; at 50k, 0.16 s. Memory stays bounded: at most this many objects of
# cyclic garbage wait for a collection.
GC_YOUNG_ALLOCATIONS = 50_000


@contextmanager
def young_collections_every(allocations: int) -> Iterator[None]:
    """Collect the young generation less often for the duration of the block
    (never more often than the process already does); restored on exit."""
    threshold = gc.get_threshold()
    if 0 < threshold[0] < allocations:
        gc.set_threshold(allocations, *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)


# Resolves a correct node's choice point instead of the seeded draw:
# (node, label, count) -> index. Used by the explorer to enumerate choices.
ChooseOverride = Callable[[int, str, int], int]


class Frame:
    """A message on the simulated wire: its frame (``data``, what the event log
    records) and the message that frame decodes to (``message``, from the
    sender's :meth:`~replicaio.core.codec.Codec.encode_checked`, which decodes
    each frame exactly as a peer's ``decode`` would). A receiver without a
    strategy steps on ``message``, so a frame is decoded once, not once more
    per receiver; the protocol still sees only what the wire carries. Frozen
    messages, shared among receivers as the objects of an unencoded run are
    (the simulator's codec is not ``canonical``: that check needs ``decode``).
    A receiver with a strategy (a Byzantine node's adversary observes its
    inputs) steps on the bytes."""

    __slots__ = ("data", "message")

    def __init__(self, data: bytes, message: object) -> None:
        self.data = data
        self.message = message


class SimNode:
    """The simulator's view of one node: its core, disk, timers and faults.

    A plain class with ``__slots__`` rather than a dataclass: the compiled
    build makes it an extension type (ADR 0038), whose attributes the
    simulator's compiled step reads from its struct."""

    __slots__ = (
        "choices",
        "chooser_rng",
        "core",
        "counters",
        "held",
        "incarnation",
        "node_id",
        "pending_crash",
        "rare_steps",
        "read_errors",
        "sent_kinds",
        "sent_total",
        "storage",
        "strategy",
        "sync_token",
        "timers",
        "timers_to_arm",
        "usig_admission",
        "waiting",
    )

    def __init__(
        self, node_id: int, storage: MemoryStorage, chooser_rng: random.Random,
        strategy: Strategy | None,
    ) -> None:
        self.node_id = node_id
        self.storage = storage
        self.chooser_rng = chooser_rng
        self.strategy = strategy
        self.core: Node | None = None
        self.incarnation = 0
        self.timers: dict[int, int] = {}  # timer id -> token
        self.choices: list[Choice] = []
        self.pending_crash: Crash | None = None
        self.held: list[tuple[int, Any]] = []  # for after the restart
        self.read_errors = 0  # restarts that will fail to read the disk (a storage fault)
        self.usig_admission: Any = None  # the operator's admission of a new USIG (sim/operator.py)
        self.counters: dict[str, int] = {}
        # what the node sent so far, by message kind (only counted when a crash is
        # aimed at rare sends: Crash.rare)
        self.sent_kinds: dict[str, int] = {}
        self.sent_total = 0
        self.rare_steps = 0  # steps since the pending crash's at_us that sent a rare kind
        # Group commit (SimOptions.sync_us_mean): the effects of the steps since the
        # pending sync began, released when it completes; None: no sync pending.
        self.waiting: list[Effects] | None = None
        self.timers_to_arm: dict[int, int] = {}  # timer id -> delay
        self.sync_token = 0  # the pending sync's event (0: none)

    @property
    def up(self) -> bool:
        return self.core is not None

    def __repr__(self) -> str:
        return f"SimNode(node_id={self.node_id}, up={self.up}, incarnation={self.incarnation})"


@dataclass(slots=True)
class SimResult:
    """What one run did and what the checkers found."""

    protocol: str
    seed: int
    options: SimOptions
    violations: list[dict[str, Any]]
    log_sha256: str
    stats: dict[str, Any]
    counters: dict[str, int]

    @property
    def ok(self) -> bool:
        return not self.violations


class SimDurableView:
    """Every node's disk as the protocol's god's-eye checks see it
    (``replicaio.interfaces.durable.DurableView``)."""

    def __init__(self, nodes: list[SimNode]) -> None:
        self.nodes = nodes
        self.lost_nodes: set[int] = set()  # disks that lost synced writes (go_down)

    def records(self, node: int) -> Mapping[str, bytes]:
        return self.nodes[node].storage.durable

    def lost(self) -> Collection[int]:
        return self.lost_nodes

    def protocol(self, node: int) -> Any | None:
        core = self.nodes[node].core
        return None if core is None else core.protocol


class Simulator:
    """Runs one protocol under one :class:`SimOptions`; see the module docstring."""

    def __init__(
        self,
        protocol: str,
        options: SimOptions,
        *,
        f: int | None = None,
        log_sink: IO[bytes] | None = None,
        record: bool = True,
        params: NodeParams | None = None,
        choose: ChooseOverride | None = None,
        strategies: dict[int, Strategy] | None = None,
        factory: ProtocolFactory | None = None,
    ) -> None:
        self.choose_override = choose
        self.strategies = dict(strategies or {})
        for node_id in self.strategies:
            if node_id not in options.byzantine:
                raise UsageError(f"a custom strategy for node {node_id}, which is not byzantine")
        self.protocol = protocol
        self.options = options
        # ``factory`` overrides the name's (a protocol configured for a test); the
        # event log still names ``protocol``, so such a run does not replay.
        self.factory = factory if factory is not None else protocol_factory(protocol)
        n = options.nodes
        if f is None:
            f = (n - 1) // 3
        self.config = ClusterConfig(
            n=n, f=f, byzantine=options.byzantine, resilience=self.factory.resilience
        ).validate()
        self.params = params or NodeParams()
        self.codec = Codec()
        assert not self.codec.canonical  # a Frame's message stands for decode's (Frame)
        self.harness: Harness = harness_for(protocol, self.config)
        bind = getattr(self.harness, "bind", None)
        if bind is not None:  # a harness acting during the run (see sim/harness.py)
            bind(SimulatorApi(self))
        self.rng = random.Random(f"replicaio-network:{options.seed}")
        self.hold_rng = random.Random(f"replicaio-hold:{options.seed}")
        self.sync_rng = random.Random(f"replicaio-sync-latency:{options.seed}")
        self.heap: list[tuple[int, int, int, int, Any, Any]] = []
        # The harness's requests not yet on the heap, the next last (see run()),
        # and the one that is.
        self.requests_due: list[tuple[int, int, int, int, Any, Any]] = []
        self.request_next: tuple[int, int, int, int, Any, Any] | None = None
        self.sequence = 0
        self.now = 0
        self.liveness = False
        self.kept_down = frozenset(options.kept_down)
        self.nodes = [self.make_node(node_id) for node_id in range(n)]
        self.operator = SimOperator(self, options.seed)
        # What the adversary sees: only kept when some node has a strategy.
        self.view: RunView | None = None
        if any(node.strategy is not None for node in self.nodes):
            self.view = RunView(n, options.byzantine)
            self.view.trusted_write = self.trusted_write
        self.footprint_max = footprint_bounds(self.factory, self.config)
        # The options' partitions and those a harness adds during the run.
        self.partitions: list[Partition] = list(options.partitions)
        # Each node's clock rate, in parts per million off true time (options.py).
        self.clock_ppm = list(options.clock_rates_ppm or (0,) * n)
        # link_clock[source][destination]: when the link's last message arrives
        # (links are FIFO unless reordering is on)
        self.link_clock: list[list[int]] = [[0] * n for _ in range(n)]
        # The rate of the exponential part of every message's latency (transmit).
        self.latency_rate = 1.0 / (options.latency_mean_us - options.latency_min_us)
        # Sends are counted by kind only when some crash is aimed at rare ones.
        self.count_kinds = any(crash.rare for crash in options.crashes)
        # Steps are searched for rewritten records only when a crash is aimed there.
        self.aim_rewrites = any(crash.rewrite for crash in options.crashes)
        self.log: EventLogWriter | None = None
        if record:
            self.log = EventLogWriter(
                {
                    "protocol": protocol,
                    "n": n,
                    "f": f,
                    "byzantine": list(options.byzantine),
                    "seed": options.seed,
                    "params": {
                        name: getattr(self.params, name)
                        for name in self.params.__dataclass_fields__
                    },
                    "options": options.as_dict(),
                },
                log_sink,
            )
        self.stats: dict[str, int] = {
            "steps": 0,
            "messages_sent": 0,
            "messages_delivered": 0,
            "messages_lost": 0,
            "messages_partitioned": 0,
            "messages_duplicated": 0,
            "messages_to_down_nodes": 0,
            "crashes": 0,
            "crashes_mid_step": 0,
            "crashes_heavy_step": 0,
            "crashes_after_rare_send": 0,
            "messages_held_across_restart": 0,
            "disk_faults": 0,
            "disk_synced_writes_lost": 0,
            "disk_mid_log_cuts": 0,
            "disk_read_errors": 0,
            "restarts": 0,
            "requests": 0,
            "requests_to_down_nodes": 0,
            "outputs": 0,
            "adversary_sends": 0,
            "syncs_delayed": 0,
            "crashes_during_sync": 0,
            "steps_during_sync": 0,
        }
        self.violations: list[dict[str, Any]] = []
        # (not declared in the .pxd: after the declared attributes, in their order)
        # The protocol's god's-eye checks on chosen outputs (interfaces/durable.py).
        self.durable_view = SimDurableView(self.nodes)
        declare = getattr(self.factory, "durable_checks", None)
        self.durable_checks: dict[type, DurableCheck] = dict(declare()) if declare else {}

    def make_node(self, node_id: int) -> SimNode:
        seed = self.options.seed
        strategy = self.strategies.get(node_id)
        if strategy is None and node_id in self.options.byzantine:
            mix = self.options.behaviours[self.options.byzantine.index(node_id)]
            strategy = build_strategy(mix, node_id, self.options.nodes, seed)
        return SimNode(
            node_id=node_id,
            storage=MemoryStorage(),
            chooser_rng=random.Random(f"replicaio-choices:{seed}:{node_id}"),
            strategy=strategy,
        )

    # -- the event heap ------------------------------------------------------

    def push(self, at_us: int, kind: int, node: int, a: Any = None, b: Any = None) -> None:
        self.sequence += 1
        heapq.heappush(self.heap, (at_us, self.sequence, kind, node, a, b))

    def run(self) -> SimResult:
        """Run both phases and return the verdict."""
        started = time.perf_counter()
        options = self.options
        with young_collections_every(GC_YOUNG_ALLOCATIONS):
            try:
                for node in self.nodes:
                    self.restart(node)
                due = []
                for at_us, node_id, payload in self.harness.requests(options):
                    self.sequence += 1
                    due.append((at_us, self.sequence, REQUEST, node_id, payload, None))
                # Only the next request waits on the heap, the others here in
                # order: the heap stays the size of what is in flight (with every
                # request on it, a benchmark's 3,200 made each push and pop of a
                # message five levels deeper). Each keeps its sequence number, so
                # the events run in the same order.
                due.sort(key=itemgetter(0, 1), reverse=True)
                self.requests_due = due
                self.next_request_due()
                for crash in options.crashes:
                    self.push(crash.at_us, CRASH, crash.node, crash)
                self.push(options.safety_us, LIVENESS, -1)
                self.run_events()
                if not self.violations:
                    for node in self.nodes:
                        if self.footprint_max:
                            self.check_footprint(node)
                        self.check_audit(node)
            finally:
                if self.log is not None:
                    self.log.flush()  # the sink holds every record, even after a bug
        if not self.violations:
            self.violations.extend(
                violation.as_dict() for violation in self.harness.finish(self.now)
            )
            # A harness may excuse liveness: more faults than it needs (a PBFT
            # replica withholding its votes after storage damage, besides f
            # Byzantine ones).
            excused = getattr(self.harness, "liveness_excused", None)
            demanded = excused is None or not excused()
            if demanded and not self.violations and not self.harness.settled():
                self.violations.append({
                    "property": "liveness",
                    "detail": f"not settled {options.liveness_us - options.safety_us} us "
                    "after the network healed",
                    "node": None,
                    "time_us": self.now,
                })
        if self.log is not None:
            for violation in self.violations:  # for people and diagrams (trace/diagram.py)
                self.log.note(self.now, violation_node(violation), "violation", {
                    key: violation[key] for key in ("property", "detail", "node", "time_us")
                    if key in violation
                })
        counters: dict[str, int] = {}
        for node in self.nodes:
            self.collect_counters(node)
            for name, value in node.counters.items():
                counters[name] = counters.get(name, 0) + value
        stats: dict[str, Any] = dict(self.stats)
        stats["virtual_time_us"] = self.now
        stats["wall_seconds"] = round(time.perf_counter() - started, 6)
        stats.update(self.harness.summary())
        return SimResult(
            protocol=self.protocol,
            seed=options.seed,
            options=options,
            violations=self.violations,
            log_sha256=self.log.hexdigest() if self.log else "",
            stats=stats,
            counters=dict(sorted(counters.items())),
        )

    def next_request_due(self) -> None:
        """Put the harness's next request on the heap (see ``run``)."""
        due = self.requests_due
        if due:
            entry = due.pop()
            self.request_next = entry
            heapq.heappush(self.heap, entry)
        else:
            self.request_next = None

    def run_events(self) -> None:
        """Execute events in heap order until the run is over."""
        heap = self.heap
        pop = heapq.heappop
        nodes = self.nodes
        stats = self.stats
        violations = self.violations
        liveness_us = self.options.liveness_us
        while heap and not violations:
            if self.liveness and self.harness.settled():
                break
            entry = pop(heap)
            at_us, _, kind, node_id, a, b = entry
            if at_us > liveness_us:
                break
            self.now = at_us
            if kind == DELIVER:
                node = nodes[node_id]
                if node.core is None or self.partitions:
                    self.deliver(node_id, a, b)
                else:  # deliver()'s common case, inlined: one call less per message
                    stats["messages_delivered"] += 1
                    self.receive(node, a, b)
            elif kind == TIMER:
                self.fire_timer(node_id, a, b)
            elif kind == REQUEST:
                if entry is self.request_next:
                    self.next_request_due()
                self.request(node_id, a)
            elif kind == CRASH:
                self.crash(node_id, a)
            elif kind == RESTART:
                if not self.nodes[node_id].up:
                    self.restart(self.nodes[node_id], a or 0)
            elif kind == SYNC:
                finish_sync(self, self.nodes[node_id], a)
            elif kind == CALL:
                a()
            else:
                self.begin_liveness()

    # -- node steps ----------------------------------------------------------

    def step(self, node: SimNode, event: Input, data: bytes | None = None) -> None:
        """One step of ``node`` on ``event`` (``data``: the frame of a
        :class:`Receive`'s decoded message, which the event log records)."""
        core = node.core
        assert core is not None
        if node.choices:
            node.choices = []
        strategy = node.strategy
        if strategy is not None:
            strategy.observe_input(event)
        try:
            effects = core.step(event)
        except Exception as error:  # a failed assertion included: see node_raised
            self.node_raised(node, event, error)
            return
        stats = self.stats
        steps = stats["steps"] + 1
        stats["steps"] = steps
        if not steps & (CHECK_EVERY_STEPS - 1):
            if self.footprint_max:
                self.check_footprint(node)
            self.check_audit(node)
        if self.durable_checks and effects.outputs and strategy is None:
            self.check_durable(node, effects.outputs)
        try:
            crash = node.pending_crash
            if (crash is not None and not crash.rare and not crash.rewrite
                    and self.crash_lands(node, effects, crash)):
                self.crash_mid_step(node, effects, crash)
                return
            encoded: list[bytes] | None = None
            if effects is NO_EFFECTS and node.waiting is None:
                # The common step that did nothing: no write, send, timer or output.
                busy = False
                if strategy is not None and self.view is not None:
                    self.attack(node)
            else:
                persists = effects.persists
                if node.waiting is not None or (
                    persists and self.options.sync_us_mean and type(event) is not Start
                ):
                    if data is not None and type(event) is Receive:  # the log holds the frame
                        event = Receive(event.source, data)
                    hold(self, node, event, effects)
                    return
                if persists:
                    node.storage.write_and_sync(persists)
                sends = effects.sends
                if sends:
                    encoded = self.send_all(node, effects)
                if strategy is not None and self.view is not None:
                    self.attack(node)
                timers_cancelled = effects.timers_cancelled
                if timers_cancelled:
                    for timer_id in timers_cancelled:
                        node.timers.pop(timer_id, None)
                timers_set = effects.timers_set
                if timers_set:
                    for timer_id, delay in timers_set:
                        self.arm_timer(node, timer_id, delay)
                outputs = effects.outputs
                if outputs:
                    self.release_outputs(node, outputs)
                busy = bool(persists or sends or timers_cancelled or timers_set or outputs)
            log = self.log
            if log is not None:
                record: Any
                if data is not None and type(event) is Receive:
                    record = ("receive", event.source, data)  # packs as encode_input's
                elif type(event) is Receive and type(event.message) is bytes:
                    record = ("receive", event.source, event.message)
                else:
                    record = encode_input(self.codec, event)
                # EMPTY_EFFECTS: what pack_effects gives an empty batch
                packed = pack_effects(self.codec, effects, encoded) if busy else EMPTY_EFFECTS
                log.write((STEP, self.now, node.node_id, node.incarnation, record, node.choices,
                           packed))  # = log.step(...)
            if self.count_kinds:
                self.after_sends(node, effects)
            if self.aim_rewrites and node.pending_crash is not None:
                self.after_rewrite(node, effects)
        except EncodeError as error:  # what the node gave out is not plain data
            self.bad_output(node, event, error)

    def make_core(self, node: SimNode, factory: ProtocolFactory,
                  kind: type[Node] = Node) -> Node:
        """A fresh incarnation's core, a ``kind`` (a subclass's hook: the
        crash-prefix checker records each step's writes through a subclass of
        :class:`Node`)."""
        return kind(
            node.node_id,
            self.config,
            factory,
            choose=self.choose_for(node),
            params=self.params,
            codec=self.codec,
            usig_admission=node.usig_admission,
        )

    def arm_timer(self, node: SimNode, timer_id: int, delay: int) -> None:
        self.sequence += 1
        node.timers[timer_id] = self.sequence
        ppm = self.clock_ppm[node.node_id]
        if ppm:  # the node's clock runs fast or slow: so do its timers
            delay = -(-delay * 1_000_000 // (1_000_000 + ppm))
        self.push(self.now + delay, TIMER, node.node_id, timer_id, self.sequence)

    def release_outputs(self, node: SimNode, outputs: list[Any]) -> None:
        strategy = node.strategy
        check = self.log is None and self.options.encode  # (else the log encodes them)
        for output in outputs:
            self.stats["outputs"] += 1
            if check:
                self.codec.encode(output)  # EncodeError: the step's bad_output
            if strategy is not None:
                output = strategy.rewrite_output(output)
            for violation in self.harness.on_output(node.node_id, output, self.now):
                self.violations.append(violation.as_dict())
            self.operator.on_output(node.node_id, output)

    def check_durable(self, node: SimNode, outputs: list[Any]) -> None:
        """Run the god's-eye checks the protocol declared for the outputs a
        correct node's step just computed: at the step that decides, before
        its writes are synced or its effects released (under group commit they
        wait for the sync, and the node goes on stepping meanwhile). Each
        problem is a violation of the property it names."""
        checks = self.durable_checks
        for output in outputs:
            check = checks.get(type(output))
            if check is None:
                continue
            for prop, detail in check(node.node_id, output, self.durable_view):
                self.violations.append({
                    "property": prop, "detail": detail, "node": node.node_id,
                    "time_us": self.now,
                })

    def after_rewrite(self, node: SimNode, effects: Effects) -> None:
        """Lands a lost-writes fault aimed at a rewrite (``Crash.rewrite``) right
        after the step that erased a durable record and wrote it anew, its sends
        out and its writes synced: the disk loses that step's writes (and
        ``lose_synced`` before them), so the records it replaced come back."""
        crash = node.pending_crash
        if crash is None or not crash.rewrite or not node.up or node.waiting is not None:
            return  # (under group commit, a step whose writes wait for the sync: later)
        persists = effects.persists
        rewrote = False
        if persists:
            erased = set()
            for key, value in persists:
                if value is None:
                    erased.add(key)
                elif key in erased:
                    rewrote = True
                    break
        node.rare_steps += rewrote
        if rewrote and node.rare_steps >= crash.rewrite:
            stats = self.stats  # (a key only in runs that land one: other reports as before)
            stats["crashes_after_rewrite"] = stats.get("crashes_after_rewrite", 0) + 1
            crash = replace(crash, lose_synced=crash.lose_synced + len(persists))
            self.go_down(node, crash, keep_unsynced=0)

    def after_sends(self, node: SimNode, effects: Effects) -> None:
        """Counts what ``node`` sent by kind; lands a crash aimed at rare sends
        (``Crash.rare``) right after the step that sent one, every write synced."""
        kinds = node.sent_kinds
        rare = False
        for _, message in effects.sends:
            kind = message_kind(message)
            seen = kinds.get(kind, 0)
            if node.sent_total >= RARE_SENDS_MIN and seen < RARE_SEND_SHARE * node.sent_total:
                rare = True
            kinds[kind] = seen + 1
            node.sent_total += 1
        crash = node.pending_crash
        if crash is None or not crash.rare or not node.up:
            return
        node.rare_steps += rare
        if node.rare_steps >= crash.rare or self.now - crash.at_us >= RARE_WAIT_US:
            self.stats["crashes_after_rare_send"] += rare
            self.go_down(node, crash, keep_unsynced=0)

    def send_all(
        self, node: SimNode, effects: Effects, *, log: bool = True
    ) -> list[bytes] | None:
        """Put the step's messages on the network; returns their encodings when
        the event log needs them (``log``), so nothing is encoded twice. A message
        object sent to several peers in a row (a link's ``to_all``) is encoded once."""
        wire = self.options.encode
        encoded: list[bytes] | None = [] if log and self.log is not None else None
        options = self.options
        if (
            node.strategy is None
            and not options.reorder_us
            and (self.liveness or not (options.loss or options.duplicate or options.slow))
            and type(self).transmit is Simulator.transmit
        ):
            # No adversary, loss, duplication or reordering, and transmit() not
            # overridden: messages go on the heap right here, with the draw and
            # the formula of transmit() (its common case, inlined).
            recent = self.view.recent if self.view is not None else None
            self.send_plain(node.node_id, effects.sends, wire, encoded, recent)
            return encoded
        codec = self.codec
        strategy = node.strategy
        source = node.node_id
        transmit = self.transmit
        last: Any = None
        data: Any = None
        frame: Frame | None = None
        recent = self.view.recent if self.view is not None else None
        for destination, message in effects.sends:
            if recent is not None and message is not last:
                recent.append((source, destination, message))
                if not (wire or encoded is not None):
                    last = message
            if wire or encoded is not None:
                if message is not last:
                    last = message
                    data, decoded = codec.encode_checked(message)
                    frame = Frame(data, decoded) if wire else None
                if encoded is not None:
                    encoded.append(data)
            if strategy is None:
                transmit(source, destination, frame if wire else message)
                continue
            # The adversary rewrites the honest message (objects, not bytes).
            for target, rewritten in strategy.rewrite(destination, message):
                if wire and not isinstance(rewritten, bytes):
                    rewritten = data if rewritten is message else codec.encode(rewritten)
                transmit(source, target, rewritten)
        return encoded

    def send_plain(
        self,
        source: int,
        sends: list[tuple[int, Any]],
        wire: bool,
        encoded: list[bytes] | None,
        recent: Any,
    ) -> None:
        """``send_all`` from a node with no strategy over a network with no
        loss, duplication or reordering (``recent``: the adversary's view of
        recent messages, if some other node has a strategy)."""
        # (the codec called, not ``encode = codec.encode``: a compiled ``cpdef``
        # method taken as an object is a new closure per call)
        codec = self.codec
        encoding = wire or encoded is not None
        now_min = self.now + self.options.latency_min_us
        rate = self.latency_rate
        draw = self.rng.random
        link_clock = self.link_clock[source]
        heap = self.heap
        sequence = self.sequence
        last: Any = None
        data: Any = None
        payload: Any = None  # what goes on the heap: a Frame (wire), else the message
        for destination, message in sends:
            if message is not last:
                last = message
                if recent is not None:
                    recent.append((source, destination, message))
                if wire:
                    data, decoded = codec.encode_checked(message)
                    payload = Frame(data, decoded)
                else:
                    payload = message
                    if encoding:
                        data = codec.encode(message)
            if encoded is not None:
                encoded.append(data)
            at_us = now_min + int(-natural_log(1.0 - draw()) / rate)
            previous = link_clock[destination]
            if previous > at_us:
                at_us = previous  # FIFO link: never overtake the previous message
            link_clock[destination] = at_us
            sequence += 1
            heappush(heap, (at_us, sequence, DELIVER, destination, source, payload))
        self.stats["messages_sent"] += len(sends)
        self.sequence = sequence

    def trusted_write(self, node_id: int, key: str, value: bytes) -> None:
        """A Byzantine node's trusted component (MinBFT's USIG) writes durably
        outside a step, when the adversary asks it for something: what it
        gives out is as durable as what it gives the node (docs/minbft.md)."""
        storage = self.nodes[node_id].storage
        storage.put(key, value)
        storage.sync()

    def attack(self, node: SimNode) -> None:
        """What the Byzantine ``node``'s strategy sends on its own after a step."""
        view = self.view
        strategy = node.strategy
        assert view is not None and strategy is not None
        view.now = self.now
        wire = self.options.encode
        for target, message in strategy.attack(view):
            if target == node.node_id or not 0 <= target < self.options.nodes:
                continue
            self.stats["adversary_sends"] += 1
            if wire and not isinstance(message, bytes):
                message = self.codec.encode(message)
            self.transmit(node.node_id, target, message)

    def node_raised(self, node: SimNode, event: Input, error: Exception) -> None:
        """A node's step raised: no input may do that to a node (correct or not:
        a Byzantine node runs the honest core on the inputs a correct node
        would get). The node stops; the run ends with the violation."""
        frame = error.__traceback__
        while frame is not None and frame.tb_next is not None:
            frame = frame.tb_next
        where = ""
        if frame is not None:
            code = frame.tb_frame.f_code
            where = f" at {code.co_filename.rsplit('/replicaio/', 1)[-1]}:{frame.tb_lineno}"
        cause = type(event).__name__
        if isinstance(event, Receive):
            cause += f" from node {event.source}"
        role = "byzantine" if node.node_id in self.options.byzantine else "correct"
        self.violations.append({
            "property": "node-raised",
            "detail": f"{role} node {node.node_id} raised {error!r} on {cause}{where}",
            "node": node.node_id,
            "time_us": self.now,
        })
        if self.log is not None:
            self.log.note(self.now, node.node_id, "raised", {"error": repr(error)})
        self.stop_node(node)

    def bad_output(self, node: SimNode, event: Input | None, error: EncodeError) -> None:
        """A node's step gave out a message or an output the codec refuses (not
        plain data, a field of the wrong type): a peer or a client could never
        have received it, so the node is at fault, as if it had raised
        (``bad-output``). The node stops; the run ends with the violation, which
        replays and shrinks like any other (runs without an event log encode
        the outputs to check them, ``release_outputs``). ``event``: the step's
        input, or None for effects held until a sync (``group_commit``)."""
        cause = "a step before its sync" if event is None else type(event).__name__
        if isinstance(event, Receive):
            cause += f" from node {event.source}"
        role = "byzantine" if node.node_id in self.options.byzantine else "correct"
        self.violations.append({
            "property": "bad-output",
            "detail": f"{role} node {node.node_id} gave out what the codec refuses on "
            f"{cause}: {error}",
            "node": node.node_id,
            "time_us": self.now,
        })
        if self.log is not None:
            self.log.note(self.now, node.node_id, "bad-output", {"error": repr(error)})
        if node.core is not None:
            self.stop_node(node)

    def stop_node(self, node: SimNode) -> None:
        """Stop a node that broke a rule of the host (it raised, or gave out
        what cannot be encoded) for the rest of the run."""
        core = node.core
        assert core is not None
        core.scheduler.abandon()
        node.core = None
        node.timers.clear()
        node.waiting = None
        node.timers_to_arm.clear()
        if self.view is not None:
            self.view.cores[node.node_id] = None

    def check_footprint(self, node: SimNode) -> None:
        """Hold a correct node to the protocol's footprint bound."""
        core = node.core
        if core is None or node.node_id in self.options.byzantine:
            return
        over = over_bounds(footprint(core), self.footprint_max)
        if over:
            self.violations.append({
                "property": "bounded-memory",
                "detail": f"node {node.node_id} holds {', '.join(over)}",
                "node": node.node_id,
                "time_us": self.now,
            })

    def check_audit(self, node: SimNode) -> None:
        """Hold a correct node's derived state to what it derives from: the
        protocol's optional ``audit() -> list[str]`` (``Raft.audit``), each
        problem an ``internal-consistency`` violation."""
        core = node.core
        if core is None or node.node_id in self.options.byzantine:
            return
        audit = getattr(core.protocol, "audit", None)
        if audit is None:
            return
        for problem in audit():
            self.violations.append({
                "property": "internal-consistency",
                "detail": f"node {node.node_id}: {problem}",
                "node": node.node_id,
                "time_us": self.now,
            })

    def choose_for(self, node: SimNode) -> Any:
        rng = node.chooser_rng
        strategy = node.strategy
        override = self.choose_override
        node_id = node.node_id

        def choose(label: str, count: int) -> int:
            if label == CLOCK_CHOICE:
                # Virtual time, in ms; never explored, and honest even on a Byzantine
                # node: SMR does not check a primary's stamp yet (docs/adr/0012).
                index = min(self.now // 1000, count - 1)
            elif strategy is not None:
                index = strategy.choose(label, count)
            elif override is not None:
                index = override(node_id, label, count)
            else:
                index = rng.randrange(count)
            node.choices.append((label, count, index))
            return index

        return choose

    # -- network -------------------------------------------------------------

    def transmit(self, source: int, destination: int, message: Any) -> None:
        options = self.options
        rng = self.rng
        stats = self.stats
        stats["messages_sent"] += 1
        copies = 1
        if (options.loss or options.duplicate) and not self.liveness:
            if options.loss and rng.random() < options.loss:
                stats["messages_lost"] += 1
                return
            if options.duplicate and rng.random() < options.duplicate:
                copies = 2
                stats["messages_duplicated"] += 1
        draw = rng.random
        rate = self.latency_rate
        now = self.now
        for _ in range(copies):
            # rng.expovariate(rate), inlined: the same draw and the same formula.
            delay = options.latency_min_us + int(-log(1.0 - draw()) / rate)
            if options.slow and not self.liveness:
                delay += self.slow_delay(source, destination)
            if options.reorder_us:
                delay += rng.randrange(options.reorder_us)
                at_us = now + delay
            else:
                at_us = now + delay
                clocks = self.link_clock[source]
                previous = clocks[destination]
                if previous > at_us:
                    at_us = previous  # FIFO link: never overtake the previous message
                clocks[destination] = at_us
            self.sequence += 1
            heappush(self.heap, (at_us, self.sequence, DELIVER, destination, source, message))

    def slow_delay(self, source: int, destination: int) -> int:
        """The slow kind's extra delay of a message sent now (options.py)."""
        extra = 0
        now = self.now
        for window in self.options.slow:
            if (window.start_us <= now < window.end_us and source in window.side
                    and destination not in window.side):
                half = window.delay_us // 2
                extra = max(extra, half + self.rng.randrange(half + 1))
        if extra:  # (a key only in runs with the kind: other runs' reports as they were)
            stats = self.stats
            stats["messages_slowed"] = stats.get("messages_slowed", 0) + 1
        return extra

    def blocked(self, source: int, destination: int) -> bool:
        if self.liveness:
            return False
        for partition in self.partitions:
            if not partition.start_us <= self.now < partition.end_us:
                continue
            source_in = source in partition.side
            destination_in = destination in partition.side
            if partition.symmetric and source_in != destination_in:
                return True
            if not partition.symmetric and source_in and not destination_in:
                return True
        return False

    def deliver(self, destination: int, source: int, message: Any) -> None:
        node = self.nodes[destination]
        if node.core is None:
            hold = self.options.hold_across_restart
            if (
                hold and not self.liveness and len(node.held) < HELD_MAX
                and self.hold_rng.random() < hold
            ):
                node.held.append((source, message))
                self.stats["messages_held_across_restart"] += 1
                return
            self.stats["messages_to_down_nodes"] += 1
            return
        if self.partitions and self.blocked(source, destination):
            self.stats["messages_partitioned"] += 1
            return
        self.stats["messages_delivered"] += 1
        self.receive(node, source, message)

    def receive(self, node: SimNode, source: int, payload: Any) -> None:
        """Step ``node`` on a message from ``source`` as the network carried it:
        a :class:`Frame` (its decoded message, or its bytes for a node with a
        strategy) or an unencoded message."""
        if type(payload) is Frame:
            frame: Frame = payload
            if node.strategy is None:
                self.step(node, Receive(source, frame.message), frame.data)
            else:
                self.step(node, Receive(source, frame.data))
        else:
            self.step(node, Receive(source, payload))

    def fire_timer(self, node_id: int, timer_id: int, token: int) -> None:
        node = self.nodes[node_id]
        if not node.up or node.timers.get(timer_id) != token:
            return
        del node.timers[timer_id]
        self.step(node, TimerFired(timer_id))

    def request(self, node_id: int, payload: Any) -> None:
        node = self.nodes[node_id]
        if not node.up:
            self.stats["requests_to_down_nodes"] += 1
            return
        self.stats["requests"] += 1
        self.step(node, Request(payload))

    # -- faults --------------------------------------------------------------

    def crash(self, node_id: int, crash: Crash) -> None:
        node = self.nodes[node_id]
        if not node.up or self.liveness:
            return
        if crash.mid_step:
            node.pending_crash = crash  # lands inside the node's next step
            node.rare_steps = 0
            return
        # Between steps: only group commit leaves writes unsynced there.
        self.go_down(node, crash, keep_unsynced=min(crash.keep_unsynced,
                                                    node.storage.unsynced_count))

    def crash_lands(self, node: SimNode, effects: Effects, crash: Crash) -> bool:
        """Whether the pending mid-step ``crash`` lands in this step of ``node``."""
        if self.now - crash.at_us >= HEAVY_WAIT_US:
            return True
        if crash.heavy:
            return len(effects.persists) >= HEAVY_STEP_WRITES
        if crash.unsynced:  # an early send while an earlier step's writes are unsynced
            if node.waiting is None or not effects.sends_before_sync:
                return False
            node.rare_steps += 1
            return node.rare_steps >= crash.unsynced
        return True

    def crash_mid_step(self, node: SimNode, effects: Effects, crash: Crash) -> None:
        """The step computed its effects; the machine dies while writing them.
        The sends it marked ``sends_before_sync`` are out already (a live host
        hands them to the transport before its sync)."""
        if effects.sends_before_sync:
            send_some(self, node, effects, effects.sends_before_sync, early=True)
        earlier = node.storage.unsynced_count  # of earlier steps, under group commit
        for key, value in effects.persists:
            if value is None:
                node.storage.delete(key)
            else:
                node.storage.put(key, value)
        self.stats["crashes_mid_step"] += 1
        writes = len(effects.persists)
        if crash.heavy:  # every earlier write and a strict prefix of the step's
            keep = earlier + crash.keep_unsynced % writes if writes else min(
                crash.keep_unsynced, earlier)
            self.stats["crashes_heavy_step"] += writes >= HEAVY_STEP_WRITES
        elif crash.unsynced:  # a strict prefix of every unsynced write
            keep = crash.keep_unsynced % (earlier + writes) if earlier + writes else 0
            self.stats["crashes_during_sync"] += node.waiting is not None
        else:
            keep = min(crash.keep_unsynced, earlier + writes)
        self.go_down(node, crash, keep_unsynced=keep)

    def go_down(self, node: SimNode, crash: Crash, keep_unsynced: int) -> None:
        storage = node.storage
        lose_synced = 0
        if crash.disk in ("lost_writes", "corrupt", "misdirected"):
            lose_synced = min(crash.lose_synced, storage.synced_history_count)
            self.stats["disk_synced_writes_lost"] += lose_synced
        # A misdirected write that clobbered an older record, and a flipped bit
        # mid-log, are cut back to the intact prefix (FileStorage(repair=True)).
        mid_log = crash.disk == "corrupt" or (crash.disk == "misdirected" and lose_synced > 1)
        storage.crash(keep_unsynced=keep_unsynced, lose_synced=lose_synced,
                      kind=DAMAGED_MID_LOG if mid_log else LOST_SYNCED_WRITES)
        if lose_synced or crash.disk == "corrupt":  # (corrupt: cut back, or wiped below)
            self.durable_view.lost_nodes.add(node.node_id)
        if crash.disk:
            self.stats["disk_faults"] += 1
            self.stats["disk_mid_log_cuts"] += mid_log
        if crash.disk == "corrupt" and (lose_synced < crash.lose_synced or not crash.lose_synced):
            storage.wipe_log()  # the damage lies before what the store remembers
        elif crash.disk == "read_error":
            node.read_errors += 1
        self.collect_counters(node)
        node.core = None
        if self.view is not None:
            self.view.cores[node.node_id] = None
        node.timers.clear()
        node.pending_crash = None
        node.waiting = None  # what waited for the sync never left
        node.timers_to_arm.clear()
        node.sync_token = 0
        self.stats["crashes"] += 1
        if self.log is not None:
            detail: dict[str, Any] = {"keep_unsynced": keep_unsynced}
            if crash.disk:
                detail.update(disk=crash.disk, lose_synced=lose_synced)
            self.log.note(self.now, node.node_id, "crash", detail)
        self.push(self.now + crash.down_us, RESTART, node.node_id, crash.down_us)

    def restart(self, node: SimNode, retry_us: int = 0) -> None:
        if self.liveness and node.node_id in self.kept_down:
            return  # kept down through the liveness phase (options.kept_down)
        if node.read_errors and not self.liveness:
            # The disk cannot be read now: the start fails, the node stays down.
            node.read_errors -= 1
            self.stats["disk_read_errors"] += 1
            self.push(self.now + max(1_000, retry_us), RESTART, node.node_id)
            return
        node.read_errors = 0
        if node.incarnation:
            self.stats["restarts"] += 1
        node.incarnation += 1
        factory = self.factory
        if node.strategy is not None:  # a behaviour may act from inside the node
            factory = node.strategy.core_factory(factory)
        node.core = self.make_core(node, factory)
        if self.view is not None:
            self.view.cores[node.node_id] = node.core
            self.view.incarnations[node.node_id] = node.incarnation
        core = node.core
        self.step(node, start_input(node.storage))
        if node.core is core:  # the start step was synced (no crash inside it)
            after_start(node.storage, core.incarnation)
        held, node.held = node.held, []
        for source, message in held:  # after the start step, spread over a while
            self.sequence += 1
            at_us = self.now + 1 + self.hold_rng.randrange(HOLD_SPREAD_US)
            heappush(self.heap, (at_us, self.sequence, DELIVER, node.node_id, source, message))

    def clock_us(self, node_id: int) -> int:
        """What node ``node_id``'s clock reads now (its offset and rate applied)."""
        offsets = self.options.clock_offsets_us
        offset = offsets[node_id] if offsets else 0
        return offset + self.now * (1_000_000 + self.clock_ppm[node_id]) // 1_000_000

    def collect_counters(self, node: SimNode) -> None:
        if node.core is None:
            return
        for name, value in node.core.counters.items():
            node.counters[name] = node.counters.get(name, 0) + value
        node.core.counters.clear()

    def begin_liveness(self) -> None:
        """Heal: no more loss, duplication, partitions or crashes; restart the dead."""
        self.liveness = True
        if self.log is not None:
            self.log.note(self.now, -1, "liveness", None)
        kept_down = self.kept_down
        told = getattr(self.harness, "kept_down", None)  # a harness whose checkers must know
        for node_id in sorted(kept_down):
            if told is not None:
                told(node_id)
        for node in self.nodes:
            node.pending_crash = None
            if node.node_id in kept_down:  # the "degraded" kind: down for good
                if node.up:
                    self.go_down(node, Crash(node.node_id, self.now, 0, False, 0),
                                 keep_unsynced=0)
                self.stats["degraded_kept_down"] = self.stats.get("degraded_kept_down", 0) + 1
            elif not node.up:
                self.restart(node)


class SimulatorApi:
    """The :class:`~replicaio.sim.harness.HarnessApi` a simulator gives its harness:
    requests and callbacks go through the event heap like everything else."""

    __slots__ = ("simulator",)

    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator

    def now(self) -> int:
        return self.simulator.now

    def request(self, node: int, payload: Any) -> None:
        simulator = self.simulator
        simulator.push(simulator.now, REQUEST, node, payload)

    def call_at(self, time_us: int, callback: Callable[[], None]) -> None:
        simulator = self.simulator
        simulator.push(max(time_us, simulator.now), CALL, -1, callback)

    def crash(self, crash: Crash) -> None:
        simulator = self.simulator
        simulator.push(simulator.now, CRASH, crash.node, crash)

    def partition(self, partition: Partition) -> None:
        simulator = self.simulator
        now = simulator.now
        simulator.partitions = [cut for cut in simulator.partitions if cut.end_us > now]
        simulator.partitions.append(partition)
        if simulator.log is not None:
            simulator.log.note(now, -1, "partition", {
                "start_us": partition.start_us, "end_us": partition.end_us,
                "side": list(partition.side), "symmetric": partition.symmetric,
            })


def message_kind(message: Any) -> str:
    """What kind of message ``message`` is: a link envelope by its body's type."""
    body = getattr(message, "body", None)
    return type(message if body is None else body).__name__


def violation_node(violation: dict[str, Any]) -> int:
    """The node a violation names, or -1 (cluster-wide)."""
    node = violation.get("node")
    return node if isinstance(node, int) else -1


def simulate(
    protocol: str,
    options: SimOptions,
    *,
    f: int | None = None,
    log_sink: IO[bytes] | None = None,
    record: bool = True,
    choose: ChooseOverride | None = None,
) -> SimResult:
    """Run one simulation; see :class:`Simulator`."""
    return Simulator(
        protocol, options, f=f, log_sink=log_sink, record=record, choose=choose
    ).run()
