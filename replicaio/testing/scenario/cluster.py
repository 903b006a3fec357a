"""The hand-driven cluster a scenario runs: protocol kits, nodes, the network in flight.

:class:`Scenario` hosts every node's core exactly as a live host would (see
the package docstring); the built-in commands that drive it are in
:mod:`replicaio.testing.scenario.commands`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from replicaio.check.broadcast import BroadcastChecker, Violation
from replicaio.core.codec import Codec, DecodeError
from replicaio.core.config import ClusterConfig
from replicaio.core.effects import CLOCK_CHOICE, Effects, Input, Receive, TimerFired
from replicaio.core.node import TICK_TIMER, Node, NodeParams, ProtocolFactory
from replicaio.protocols.broadcast import (
    PROTOCOLS,
    Accepted,
    BroadcastFactory,
    BroadcastSpec,
    Delivered,
)
from replicaio.sim.adversary import Strategy
from replicaio.storage.base import after_start, start_input
from replicaio.storage.memory import MemoryStorage
from replicaio.testing.scenario.script import Command, ScenarioError, parse_int
from replicaio.testing.scenario.trace import (
    format_message,
    format_output,
    format_violation,
    plural,
)

STEP_MAX_DEFAULT = 10_000


# -- protocols -----------------------------------------------------------------------------


class Checker(Protocol):
    """What ``check`` needs: safety on every output, liveness at the end."""

    def on_output(self, node: int, output: Any, time_us: int) -> list[Violation]: ...

    def finish(self, time_us: int) -> list[Violation]: ...


@dataclass(frozen=True, slots=True)
class ProtocolKit:
    """Everything a scenario needs to run a protocol: how to build a node's
    protocol, its checkers (given the validated configuration) and how to
    print its outputs; optionally how to print its messages, whether to print
    choice points, and commands of its own (available once ``cluster`` has
    picked the kit, e.g. ``elect`` for Raft)."""

    factory: ProtocolFactory
    checker: Callable[[ClusterConfig], Checker] | None = None
    format_output: Callable[[Any], str] = format_output
    format_message: Callable[[Any], str] = format_message
    show_choices: bool = True
    commands: Mapping[str, Callable[[Scenario, Command], None]] = field(default_factory=dict)
    # Protocol parameters the ``cluster`` line may set (``name=value``), and how
    # to build the kit with them (only called when some are given).
    parameters: tuple[str, ...] = ()
    configure: Callable[[Mapping[str, str]], ProtocolKit] | None = None


def broadcast_kit(spec: BroadcastSpec) -> ProtocolKit:
    def checker(config: ClusterConfig) -> Checker:
        return BroadcastChecker(spec, config.correct)

    return ProtocolKit(BroadcastFactory(spec), checker)


def builtin_kits() -> dict[str, ProtocolKit]:
    """The protocols of ``replicaio.protocols``, with their checkers (and Raft:
    ``replicaio.testing.raft_kit``, imported here because it builds on this module)."""
    from replicaio.testing.raft_kit import raft_kit
    from replicaio.testing.variants.broadcast import BROADCAST_VARIANTS

    broadcasts = {**PROTOCOLS, **BROADCAST_VARIANTS}
    kits = {name: broadcast_kit(spec) for name, spec in broadcasts.items()}
    kits["raft"] = raft_kit()
    return kits


# -- the hand-driven cluster ---------------------------------------------------------------


@dataclass(eq=False, slots=True)
class InFlight:
    """A message on the network: the exact bytes, and how the trace shows them."""

    source: int
    destination: int
    data: bytes
    label: str

    def describe(self) -> str:
        return f"{self.source}->{self.destination} {self.label}"


@dataclass(slots=True)
class ScenarioNode:
    """A node as its host sees it: core, disk, armed timers, faults, what it output."""

    node_id: int
    storage: MemoryStorage
    strategy: Strategy | None
    rng: random.Random | None  # choice points, when choose=seeded
    core: Node | None = None
    timers: dict[int, None] = field(default_factory=dict)  # armed timer ids, arming order
    crash_armed: int | None = None  # keep_unsynced of a crash landing in the next step
    counters: dict[str, int] = field(default_factory=dict)  # of past incarnations
    choices: list[str] = field(default_factory=list)
    outputs: list[Any] = field(default_factory=list)  # deliveries, as the application saw

    @property
    def up(self) -> bool:
        return self.core is not None


LinkFilter = tuple[int | None, int | None]  # (source, destination); None matches any
CommandHandler = Callable[["Scenario", Command], None]


class Scenario:
    """One scripted run. :meth:`execute` runs one command line and returns its trace."""

    commands: dict[str, CommandHandler] = {}

    def __init__(
        self,
        kits: Mapping[str, ProtocolKit] | None = None,
        commands: Mapping[str, CommandHandler] | None = None,
    ) -> None:
        self.kits = dict(kits) if kits is not None else builtin_kits()
        self.handlers = {**type(self).commands, **(commands or {})}
        self.codec = Codec()
        self.kit: ProtocolKit | None = None
        self.config: ClusterConfig | None = None
        self.params = NodeParams()
        self.nodes: list[ScenarioNode] = []
        self.pending: list[InFlight] = []
        self.groups: list[frozenset[int]] | None = None  # partition sides, when cut
        self.checker: Checker | None = None
        self.violations: list[Violation] = []
        self.steps = 0
        self.step_max = STEP_MAX_DEFAULT
        self.quiet = False
        self.lines: list[str] = []
        self.tally: dict[str, int] = {}  # quiet mode: what was delivered, by kind

    # -- driving ------------------------------------------------------------------------

    def execute(self, text: str) -> str:
        """Run one command line; return what it printed (never empty)."""
        command = Command.parse(text)
        handler = self.handlers.get(command.name)
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            raise ScenarioError(f"unknown command {command.name!r}; known: {known}")
        if command.name != "cluster" and not self.nodes:
            raise ScenarioError("no cluster yet: start with 'cluster protocol=NAME n=N'")
        self.lines = []
        self.quiet = False
        self.tally = {}
        handler(self, command)
        return "\n".join(self.lines) if self.lines else "ok"

    def emit(self, line: str) -> None:
        """Print one line of the command's trace."""
        self.lines.append(line)

    def node(self, text: str) -> ScenarioNode:
        number = parse_int(text, "node id")
        if number >= len(self.nodes):
            raise ScenarioError(f"no node {number}: the cluster has nodes 0..{len(self.nodes) - 1}")
        return self.nodes[number]

    def up_node(self, text: str) -> ScenarioNode:
        node = self.node(text)
        if not node.up:
            raise ScenarioError(f"node {node.node_id} is down (restart it first)")
        return node

    def link_filter(self, text: str) -> LinkFilter:
        source, arrow, destination = text.partition("->")
        if not arrow:
            raise ScenarioError(f"expected a link FROM->TO (a node id or *), got {text!r}")
        ends = [None if end == "*" else self.node(end).node_id for end in (source, destination)]
        return ends[0], ends[1]

    # -- the host: one step, its effects executed in the documented order -----------

    def step(
        self, node: ScenarioNode, event: Input, header: str, *, idle_silent: bool = False
    ) -> None:
        """Feed ``event`` to ``node`` and execute its effects; print what happened."""
        core = node.core
        assert core is not None
        counters_before = dict(core.counters)
        node.choices = []
        effects = core.step(event)
        self.steps += 1
        lines = list(node.choices)
        if node.crash_armed is not None:
            lines.append(self.crash_mid_step(node, effects))
            self.print_step(header, lines, important=lines[-1:])
            return
        if effects.persists:
            lines.append(self.persist(node, effects))
        lines.extend(self.send_all(node, effects))
        for timer_id in effects.timers_cancelled:
            node.timers.pop(timer_id, None)
        synced: list[int] = []  # timers of delay 0: they fire once the sync returned
        for timer_id, delay_us in effects.timers_set:
            node.timers[timer_id] = None
            if delay_us == 0:
                synced.append(timer_id)
        important: list[str] = []
        for output in effects.outputs:
            important.extend(self.on_output(node, output))
        lines.extend(important)
        for name, value in sorted(core.counters.items()):
            if value != counters_before.get(name, 0):
                lines.append(
                    f"{node.node_id}: count {name} +{value - counters_before.get(name, 0)}"
                )
        if not (idle_silent and not lines):
            self.print_step(header, lines, important)
        self.fire_synced(node, synced)

    def fire_synced(self, node: ScenarioNode, timer_ids: list[int]) -> None:
        """Fire the timers of delay 0 a step armed, right after it: the step's
        writes are synced, and a live host fires them as soon as its sync
        returns (``replicaio.core.effects``: a Raft leader learns that its log
        is durable). Part of the same command; a step that does nothing is not
        printed."""
        for timer_id in timer_ids:
            if not node.up or timer_id not in node.timers:
                continue
            del node.timers[timer_id]
            self.step(
                node, TimerFired(timer_id), f"{node.node_id}: synced (timer {timer_id})",
                idle_silent=True,
            )

    def print_step(self, header: str, lines: list[str], important: list[str]) -> None:
        if self.quiet:
            self.lines.extend(important)
            return
        self.emit(header)
        self.lines.extend("  " + line for line in lines)

    def persist(self, node: ScenarioNode, effects: Effects) -> str:
        deletes = 0
        for key, value in effects.persists:
            if value is None:
                deletes += 1
                node.storage.delete(key)
            else:
                node.storage.put(key, value)
        node.storage.sync()
        writes = len(effects.persists) - deletes
        text = f"{node.node_id}: persist {plural(writes, 'key')}"
        return text + (f", delete {plural(deletes, 'key')}" if deletes else "")

    def send_all(self, node: ScenarioNode, effects: Effects) -> list[str]:
        """Put the step's messages on the network (rewritten by a Byzantine strategy)."""
        sent: dict[str, list[str]] = {}
        for destination, message in effects.sends:
            honest = self.codec.encode(message)
            if node.strategy is None:
                leaving: list[tuple[int, Any]] = [(destination, honest)]
            else:
                leaving = node.strategy.rewrite(destination, message)
            for target, rewritten in leaving:
                if rewritten is message:
                    data = honest
                elif isinstance(rewritten, bytes):
                    data = rewritten
                else:
                    data = self.codec.encode(rewritten)
                label = self.label(data)
                self.pending.append(InFlight(node.node_id, target, data, label))
                sent.setdefault(label, []).append(str(target))
        return [f"{node.node_id}: send {label} -> {','.join(to)}" for label, to in sent.items()]

    def label(self, data: bytes) -> str:
        show = format_message if self.kit is None else self.kit.format_message
        try:
            return show(self.codec.decode(data))
        except DecodeError as error:
            return f"garbage {plural(len(data), 'byte')} ({error.reason})"

    def on_output(self, node: ScenarioNode, output: Any) -> list[str]:
        assert self.kit is not None
        if type(output) is not Accepted and not (
            type(output) is Delivered and output.recovered and self.delivered_before(node, output)
        ):
            node.outputs.append(output)
        lines = [f"{node.node_id}: {self.kit.format_output(output)}"]
        if self.checker is not None:
            for violation in self.checker.on_output(node.node_id, output, self.steps):
                self.violations.append(violation)
                lines.append(f"!! {format_violation(violation)}")
        return lines

    @staticmethod
    def delivered_before(node: ScenarioNode, output: Delivered) -> bool:
        return any(
            type(seen) is Delivered
            and (seen.sender, seen.seq, seen.value) == (output.sender, output.seq, output.value)
            for seen in node.outputs
        )

    def chooser(self, node: ScenarioNode) -> Callable[[str, int], int]:
        def choose(label: str, count: int) -> int:
            if label == CLOCK_CHOICE:
                return 0  # scenarios have no clock: batches go unstamped (time_ms 0)
            if node.strategy is not None:
                index = node.strategy.choose(label, count)
            elif node.rng is not None:
                index = node.rng.randrange(count)
            else:
                index = 0  # the production default: the first alternative
            if self.kit is None or self.kit.show_choices:
                node.choices.append(f"{node.node_id}: choose {label}: {index} of {count}")
            return index

        return choose

    # -- faults -------------------------------------------------------------------------

    def crash_mid_step(self, node: ScenarioNode, effects: Effects) -> str:
        """The step computed its effects; power fails while its writes reach the disk."""
        for key, value in effects.persists:
            if value is None:
                node.storage.delete(key)
            else:
                node.storage.put(key, value)
        armed = node.crash_armed
        assert armed is not None
        keep = min(armed, len(effects.persists))
        lost = len(effects.persists) - keep
        self.go_down(node, keep)
        return (
            f"{node.node_id}: CRASH inside the step: of {plural(len(effects.persists), 'write')} "
            f"unsynced, {keep} kept, {lost} lost; {plural(len(effects.sends), 'send')} and "
            f"{plural(len(effects.outputs), 'output')} never left"
        )

    def go_down(self, node: ScenarioNode, keep_unsynced: int, lose_synced: int = 0) -> None:
        node.storage.crash(keep_unsynced=keep_unsynced, lose_synced=lose_synced)
        core = node.core
        assert core is not None
        for name, value in core.counters.items():
            node.counters[name] = node.counters.get(name, 0) + value
        node.core = None
        node.timers.clear()
        node.crash_armed = None

    def start(self, node: ScenarioNode, header: str) -> None:
        assert self.config is not None and self.kit is not None
        node.core = Node(
            node.node_id,
            self.config,
            self.kit.factory,
            choose=self.chooser(node),
            params=self.params,
            codec=self.codec,
        )
        core = node.core
        self.step(node, start_input(node.storage), header)
        if node.core is core:  # the start step was synced (no crash inside it)
            after_start(node.storage, core.incarnation)

    # -- the network --------------------------------------------------------------------

    def matching(self, link: LinkFilter) -> Iterator[InFlight]:
        source, destination = link
        for message in self.pending:
            if (source is None or message.source == source) and (
                destination is None or message.destination == destination
            ):
                yield message

    def blocked(self, source: int, destination: int) -> bool:
        if self.groups is None:
            return False
        return not any(source in group and destination in group for group in self.groups)

    def deliver(self, message: InFlight) -> None:
        self.pending.remove(message)
        node = self.nodes[message.destination]
        lost = ""
        if not node.up:
            lost = f"(lost: {node.node_id} is down)"
        elif self.blocked(message.source, message.destination):
            lost = "(lost: partitioned)"
        kind = message.label.split(" ", 1)[0]
        if self.quiet:
            key = f"{kind} lost" if lost else kind
            self.tally[key] = self.tally.get(key, 0) + 1
        if lost:
            if not self.quiet:
                self.emit(f"{message.describe()} {lost}")
            return
        self.step(node, Receive(message.source, message.data), message.describe())

    def deliver_all(self, link: LinkFilter, step_max: int, what: str) -> int:
        delivered = 0
        while True:
            message = next(self.matching(link), None)
            if message is None:
                return delivered
            if delivered >= step_max:
                raise ScenarioError(
                    f"{what}: still {plural(len(self.pending), 'message')} in flight after "
                    f"step_max={step_max} deliveries (a message loop?)"
                )
            self.deliver(message)
            delivered += 1

    def fire_timers(self, node: ScenarioNode, *, idle_silent: bool) -> int:
        fired = 0
        for timer_id in list(node.timers):
            if not node.up or timer_id not in node.timers:
                continue
            del node.timers[timer_id]
            name = "tick" if timer_id == TICK_TIMER else f"timer {timer_id}"
            self.step(
                node, TimerFired(timer_id), f"{node.node_id}: {name}", idle_silent=idle_silent
            )
            fired += 1
        return fired

    def unsettled(self) -> list[str]:
        """Why the correct, running nodes are not yet quiet (empty when they are)."""
        reasons = []
        if self.pending:
            reasons.append(f"{plural(len(self.pending), 'message')} in flight")
        live = [node for node in self.nodes if node.up and node.strategy is None]
        peers = {node.node_id for node in live}
        for node in live:
            core = node.core
            assert core is not None
            for peer in sorted(peers - {node.node_id}):
                if core.reliable.unacked[peer]:
                    reasons.append(f"node {node.node_id} awaits acks from {peer}")
                if core.reliable.acks_pending[peer]:
                    reasons.append(f"node {node.node_id} owes acks to {peer}")
            if any(timer_id != TICK_TIMER for timer_id in node.timers):
                reasons.append(f"node {node.node_id} has protocol timers armed")
        return reasons

    def summary(self) -> str:
        return ", ".join(f"{kind} x{count}" for kind, count in self.tally.items()) or "nothing"


