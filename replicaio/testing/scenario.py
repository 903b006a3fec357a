"""Scripted scenarios: real node cores on a hand-driven network, checked by trace.

The scripted sibling of the random simulator (``replicaio.sim.simulator``),
after etcd raft's datadriven testdata. A scenario file is a list of commands,
one per line; under each command, after a ``----`` line, the output it is
expected to print, ended by a blank line (or fenced by ``----``/``----``
pairs when the output itself holds blank lines)::

    # one correct broadcast
    cluster protocol=bracha n=4 f=1
    ----
    ...

    broadcast 0 v
    ----
    0: broadcast "v"
      0: persist 3 keys
      ...

The runner hosts every node's :class:`~replicaio.core.node.Node` exactly as a
live host would (persist and sync, then sends, timers, outputs), with a
:class:`~replicaio.storage.memory.MemoryStorage` per node; every message
crosses the network as bytes of the real codec. Nothing moves unless a
command says so: there is no clock (``tick`` fires every armed timer at
once) and no randomness (choice points take the first alternative unless
``choose=seeded``; Byzantine nodes draw from the ``seed`` of the cluster).
The command reference and the trace format are in ``docs/scenarios.md``.

Use: :func:`run_file` (compares and returns a :class:`FileResult`), or
``python -m replicaio.testing.scenario [--rewrite] FILE...``. A protocol
outside the built-in registry plugs in through :class:`ProtocolKit`; extra
commands through the ``commands`` mapping of :class:`Scenario`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import random
import shlex
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from replicaio.check.broadcast import BroadcastChecker, Violation
from replicaio.core.codec import Codec, DecodeError
from replicaio.core.config import ClusterConfig, Resilience
from replicaio.core.effects import Effects, Input, Receive, Request, Start, TimerFired
from replicaio.core.errors import ConfigError, UsageError
from replicaio.core.node import TICK_TIMER, Acks, Envelope, Hello, Node, NodeParams, ProtocolFactory
from replicaio.protocols.broadcast import (
    PROTOCOLS,
    Accepted,
    BroadcastFactory,
    BroadcastSpec,
    Delivered,
)
from replicaio.sim.adversary import BEHAVIOURS, Strategy
from replicaio.storage.memory import MemoryStorage

SEPARATOR = "----"
STEP_MAX_DEFAULT = 10_000


class ScenarioError(UsageError):
    """A scenario file is wrong (syntax, unknown node, impossible action) or a
    command could not complete (``stabilize`` over its step budget). ``str``
    reads ``path:line: message``."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line

    def locate(self, path: str, line: int) -> ScenarioError:
        """Attach the position of the command (kept if already known)."""
        if self.path is None:
            self.path, self.line = path, line
        return self

    def __str__(self) -> str:
        if self.path is None:
            return self.message
        return f"{self.path}:{self.line}: {self.message}"


# -- the file format -----------------------------------------------------------------------


@dataclass(slots=True)
class Directive:
    """One command of a file: its text, its expected output, the comments before it."""

    line: int  # 1-based line of the command
    text: str
    expected: str | None  # None: no ``----`` block yet (``--rewrite`` adds it)
    leading: list[str] = field(default_factory=list)  # comment and blank lines, kept


@dataclass(slots=True)
class ScenarioFile:
    path: str
    directives: list[Directive]
    trailing: list[str]


def parse_scenario(text: str, path: str = "<scenario>") -> ScenarioFile:
    """Split a file into directives; raise :class:`ScenarioError` on a malformed block."""
    lines = text.splitlines()
    directives: list[Directive] = []
    leading: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index].rstrip()
        if not line or line.lstrip().startswith("#"):
            leading.append(line)
            index += 1
            continue
        if line == SEPARATOR or line[0].isspace():
            raise ScenarioError(
                "expected a command here (commands start at column 1; "
                "an output block follows its command's '----')",
                path,
                index + 1,
            )
        directive = Directive(index + 1, line, None, leading)
        leading = []
        index += 1
        if index < len(lines) and lines[index].rstrip() == SEPARATOR:
            directive.expected, index = read_block(lines, index + 1, path)
        directives.append(directive)
    return ScenarioFile(path, directives, leading)


def read_block(lines: list[str], index: int, path: str) -> tuple[str, int]:
    """The output block starting at ``index``; returns it and the index after it."""
    body: list[str] = []
    if index < len(lines) and lines[index].rstrip() == SEPARATOR:
        opened = index
        index += 1
        while index + 1 < len(lines) and not (
            lines[index].rstrip() == SEPARATOR and lines[index + 1].rstrip() == SEPARATOR
        ):
            body.append(lines[index].rstrip())
            index += 1
        if index + 1 >= len(lines):
            raise ScenarioError("fenced output block never closed by '----' '----'", path, opened)
        index += 2
    else:
        while index < len(lines) and lines[index].strip():
            body.append(lines[index].rstrip())
            index += 1
    if index < len(lines) and not lines[index].strip():
        index += 1  # the blank line ending the block belongs to it
    return "\n".join(body), index


def render_scenario(scenario_file: ScenarioFile, outputs: Sequence[str | None]) -> str:
    """The file text with ``outputs`` as the expected blocks (canonical layout)."""
    parts: list[str] = []
    for directive, output in zip(scenario_file.directives, outputs, strict=True):
        leading = directive.leading
        if leading and not leading[0] and parts and not parts[-1]:
            leading = leading[1:]  # a block already ends with its blank line
        parts.extend(leading)
        parts.append(directive.text)
        if output is None:
            continue
        parts.append(SEPARATOR)
        if any(not line.strip() for line in output.split("\n")) and output:
            parts.extend([SEPARATOR, output, SEPARATOR, SEPARATOR])
        elif output:
            parts.append(output)
        parts.append("")
    parts.extend(scenario_file.trailing)
    return "\n".join(parts).rstrip("\n") + "\n"


# -- commands ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    """A command line split into its name and words (shell-like quoting, ``#`` comments)."""

    name: str
    words: tuple[str, ...]

    @staticmethod
    def parse(text: str) -> Command:
        try:
            words = shlex.split(text, comments=True)
        except ValueError as error:
            raise ScenarioError(f"cannot split the command: {error}") from None
        if not words:
            raise ScenarioError("empty command")
        return Command(words[0], tuple(words[1:]))

    def split(self, allowed: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        """Positional words and ``key=value`` options (only for keys in ``allowed``)."""
        positional: list[str] = []
        options: dict[str, str] = {}
        for word in self.words:
            key, equals, value = word.partition("=")
            if equals and key in allowed:
                if key in options:
                    raise ScenarioError(f"{self.name}: option {key} given twice")
                options[key] = value
            else:
                positional.append(word)
        return positional, options


def parse_int(text: str, what: str, low: int = 0) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ScenarioError(f"{what} must be an integer, got {text!r}") from None
    if value < low:
        raise ScenarioError(f"{what} must be >= {low}, got {value}")
    return value


# -- trace formatting ----------------------------------------------------------------------


def format_value(value: Any) -> str:
    """Bytes as ``"text"`` (or ``0x..`` when not printable), tuples recursively, else repr."""
    if isinstance(value, bytes):
        try:
            text = value.decode()
        except UnicodeDecodeError:
            return "0x" + value.hex()
        if not text.isprintable():
            return "0x" + value.hex()
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple):
        return "(" + ", ".join(format_value(item) for item in value) + ")"
    return repr(value)


def format_path(path: tuple[int | str, ...]) -> str:
    return "/".join(str(element) for element in path)


def format_message(message: Any) -> str:
    """One message as the trace shows it: ``ECHO bcast/0/0 "v"``, ``Acks ...``, ``Hello 2``."""
    if type(message) is Envelope:
        return f"{message.channel} {format_path(message.path)} {format_value(message.body)}"
    if type(message) is Hello:
        return f"Hello {message.incarnation}"
    if type(message) is Acks:
        by_path: dict[tuple[int | str, ...], list[str]] = {}
        for path, channel in message.items:
            by_path.setdefault(path, []).append(channel)
        groups = [
            ",".join(channels) if not path else f"{format_path(path)}:{','.join(channels)}"
            for path, channels in by_path.items()
        ]
        return "Acks " + " ".join(groups)
    if dataclasses.is_dataclass(message) and not isinstance(message, type):
        fields = " ".join(
            f"{item.name}={format_value(getattr(message, item.name))}"
            for item in dataclasses.fields(message)
        )
        return f"{type(message).__name__} {fields}".rstrip()
    return format_value(message)


def format_output(output: Any) -> str:
    """A broadcast output: ``accept 0/0 "v"``, ``deliver 0/0 "v"`` (``(recovered)``)."""
    if type(output) is Accepted:
        return f"accept {output.sender}/{output.seq} {format_value(output.value)}"
    if type(output) is Delivered:
        recovered = " (recovered)" if output.recovered else ""
        return f"deliver {output.sender}/{output.seq} {format_value(output.value)}{recovered}"
    return "output " + format_message(output)


def format_violation(violation: Violation) -> str:
    where = "" if violation.node is None else f" (node {violation.node})"
    return f"{violation.property}{where}: {violation.detail}"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


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
        for timer_id, _ in effects.timers_set:
            node.timers[timer_id] = None
        important: list[str] = []
        for output in effects.outputs:
            important.extend(self.on_output(node, output))
        lines.extend(important)
        for name, value in sorted(core.counters.items()):
            if value != counters_before.get(name, 0):
                lines.append(
                    f"{node.node_id}: count {name} +{value - counters_before.get(name, 0)}"
                )
        if idle_silent and not lines:
            return
        self.print_step(header, lines, important)

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

    def go_down(self, node: ScenarioNode, keep_unsynced: int) -> None:
        node.storage.crash(keep_unsynced=keep_unsynced)
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
        self.step(node, Start(node.storage.recover()), header)

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


# -- the built-in commands -----------------------------------------------------------------


def command(name: str) -> Callable[[CommandHandler], CommandHandler]:
    """Register a built-in command handler under ``name``."""

    def register(handler: CommandHandler) -> CommandHandler:
        Scenario.commands[name] = handler
        return handler

    return register


def no_more(command_: Command, positional: list[str], usage: str) -> None:
    if positional:
        raise ScenarioError(f"{command_.name}: unexpected {' '.join(positional)!r}; usage: {usage}")


def take_quiet(positional: list[str]) -> bool:
    if "quiet" in positional:
        positional.remove("quiet")
        return True
    return False


PARAM_NAMES = tuple(item.name for item in dataclasses.fields(NodeParams))
CLUSTER_OPTIONS = ("protocol", "n", "f", "byzantine", "seed", "choose", "step_max", *PARAM_NAMES)


@command("cluster")
def cluster(self: Scenario, command_: Command) -> None:
    """cluster protocol=NAME n=N [f=F] [byzantine=ID:BEHAVIOUR,...] [seed=S]
    [choose=first|seeded] [step_max=K] [NodeParams field=value ...]"""
    if self.nodes:
        raise ScenarioError("cluster: a scenario has one cluster, already defined")
    _, named = command_.split(("protocol",))
    name = named.get("protocol")
    kit = self.kits.get(name or "")
    if kit is None:
        raise ScenarioError(f"cluster: protocol= must be one of {', '.join(self.kits)}")
    positional, options = command_.split(CLUSTER_OPTIONS + kit.parameters)
    no_more(command_, positional, "cluster protocol=NAME n=N [option=value ...]")
    protocol_options = {key: options[key] for key in kit.parameters if key in options}
    if protocol_options:
        assert kit.configure is not None
        kit = kit.configure(protocol_options)
    if "n" not in options:
        raise ScenarioError("cluster: n= (number of nodes) is required")
    n = parse_int(options["n"], "n", 1)
    resilience = kit.factory.resilience
    f_default = {Resilience.ANY: 0, Resilience.BYZANTINE: (n - 1) // 3}.get(
        resilience, (n - 1) // 2
    )
    f = parse_int(options.get("f", str(f_default)), "f")
    seed = parse_int(options.get("seed", "0"), "seed")
    choose = options.get("choose", "first")
    if choose not in ("first", "seeded"):
        raise ScenarioError(f"cluster: choose= must be first or seeded, got {choose!r}")
    self.step_max = parse_int(options.get("step_max", str(STEP_MAX_DEFAULT)), "step_max", 1)
    behaviours = parse_byzantine(options.get("byzantine", ""))
    try:
        self.params = NodeParams(
            **{key: parse_int(options[key], key) for key in PARAM_NAMES if key in options}
        ).validate()
        self.config = ClusterConfig(n, f, tuple(behaviours), resilience).validate()
    except ConfigError as error:
        raise ScenarioError(f"cluster: {error}") from None
    self.kit = kit
    for name_, handler in kit.commands.items():
        self.handlers.setdefault(name_, handler)  # never over a built-in or a caller's
    self.checker = kit.checker(self.config) if kit.checker is not None else None
    faulty = f", byzantine {','.join(map(str, behaviours))}" if behaviours else ""
    shown = "".join(f" {key}={value}" for key, value in protocol_options.items())
    self.emit(f"cluster {name}: n={n} f={f}{faulty}{shown}")
    for node_id in range(n):
        strategy = None
        if node_id in behaviours:
            rng = random.Random(f"replicaio-scenario-adversary:{seed}:{node_id}")
            strategy = BEHAVIOURS[behaviours[node_id]](node_id, n, rng)
            lied_to = getattr(strategy, "lied_to", None)
            lies = f", lies to {','.join(map(str, sorted(lied_to)))}" if lied_to else ""
            self.emit(f"{node_id}: byzantine: {behaviours[node_id]}{lies}")
        rng = random.Random(f"replicaio-scenario-choices:{seed}:{node_id}")
        self.nodes.append(
            ScenarioNode(node_id, MemoryStorage(), strategy, rng if choose == "seeded" else None)
        )
    for node in self.nodes:
        self.start(node, f"{node.node_id}: start")


def parse_byzantine(text: str) -> dict[int, str]:
    behaviours: dict[int, str] = {}
    for item in filter(None, text.split(",")):
        node_text, colon, behaviour = item.partition(":")
        if not colon or behaviour not in BEHAVIOURS:
            raise ScenarioError(
                f"cluster: byzantine= takes ID:BEHAVIOUR items, BEHAVIOUR one of "
                f"{', '.join(BEHAVIOURS)}; got {item!r}"
            )
        behaviours[parse_int(node_text, "byzantine node id")] = behaviour
    return behaviours


@command("broadcast")
@command("request")
def broadcast(self: Scenario, command_: Command) -> None:
    """broadcast NODE VALUE: a client asks NODE to broadcast VALUE (UTF-8 bytes)."""
    positional, _ = command_.split(())
    if len(positional) != 2:
        raise ScenarioError(f"{command_.name}: usage: {command_.name} NODE VALUE")
    node = self.up_node(positional[0])
    value = positional[1].encode()
    self.step(node, Request(value), f"{node.node_id}: {command_.name} {format_value(value)}")


@command("deliver")
def deliver(self: Scenario, command_: Command) -> None:
    """deliver [FROM->TO] [count=K|all] [quiet]: without a count, the messages in
    flight now; count=K the K oldest; all until none is left (replies included)."""
    positional, options = command_.split(("count",))
    self.quiet = take_quiet(positional)
    count = options.get("count")
    if "all" in positional:
        positional.remove("all")
        count = "all"
    link: LinkFilter = (None, None)
    if positional:
        link = self.link_filter(positional.pop(0))
    no_more(command_, positional, "deliver [FROM->TO] [count=K|all] [quiet]")
    delivered = 0
    if count == "all":
        delivered = self.deliver_all(link, self.step_max, "deliver all")
    elif count is not None:
        for _ in range(parse_int(count, "count", 1)):
            message = next(self.matching(link), None)
            if message is None:
                break
            self.deliver(message)
            delivered += 1
    else:
        for message in list(self.matching(link)):
            if message in self.pending:
                self.deliver(message)
                delivered += 1
    if not delivered:
        self.emit("no messages in flight" + ("" if link == (None, None) else " on that link"))
    elif self.quiet:
        self.emit(f"delivered {self.summary()}")


def first_on(self: Scenario, command_: Command, link: LinkFilter, count: int) -> list[InFlight]:
    found = list(self.matching(link))[:count]
    if len(found) < count:
        raise ScenarioError(
            f"{command_.name}: {plural(len(found), 'message')} in flight on "
            f"{command_.words[0]}, needs {count}"
        )
    return found


@command("drop")
def drop(self: Scenario, command_: Command) -> None:
    """drop FROM->TO [count=K|all]: lose the oldest message(s) in flight on the link."""
    positional, options = command_.split(("count",))
    if len(positional) != 1:
        raise ScenarioError("drop: usage: drop FROM->TO [count=K|all]")
    link = self.link_filter(positional[0])
    count_text = options.get("count", "1")
    if count_text == "all":
        victims = list(self.matching(link))
        if not victims:
            raise ScenarioError(f"drop: nothing in flight on {positional[0]}")
    else:
        victims = first_on(self, command_, link, parse_int(count_text, "count", 1))
    for message in victims:
        self.pending.remove(message)
        self.emit(f"{message.describe()} dropped")


@command("duplicate")
def duplicate(self: Scenario, command_: Command) -> None:
    """duplicate FROM->TO: the oldest message on the link arrives twice."""
    positional, _ = command_.split(())
    if len(positional) != 1:
        raise ScenarioError("duplicate: usage: duplicate FROM->TO")
    (message,) = first_on(self, command_, self.link_filter(positional[0]), 1)
    copy = InFlight(message.source, message.destination, message.data, message.label)
    self.pending.insert(self.pending.index(message) + 1, copy)
    self.emit(f"{message.describe()} duplicated")


@command("reorder")
def reorder(self: Scenario, command_: Command) -> None:
    """reorder FROM->TO: the two oldest messages on the link swap places."""
    positional, _ = command_.split(())
    if len(positional) != 1:
        raise ScenarioError("reorder: usage: reorder FROM->TO")
    first, second = first_on(self, command_, self.link_filter(positional[0]), 2)
    i, j = self.pending.index(first), self.pending.index(second)
    self.pending[i], self.pending[j] = second, first
    self.emit(f"{second.describe()} now before")
    self.emit(f"{first.describe()}")


@command("partition")
def partition(self: Scenario, command_: Command) -> None:
    """partition A,B | C,D: cut every link between the groups (unlisted nodes form
    one more group); messages crossing a cut are lost when delivered."""
    groups: list[frozenset[int]] = []
    for part in " ".join(command_.words).split("|"):
        members = [self.node(text).node_id for text in part.replace(",", " ").split()]
        if not members:
            raise ScenarioError("partition: empty group; usage: partition A,B | C,D")
        groups.append(frozenset(members))
    listed = [node for group in groups for node in group]
    if len(listed) != len(set(listed)):
        raise ScenarioError("partition: a node is in two groups")
    rest = frozenset(range(len(self.nodes))) - set(listed)
    if rest:
        groups.append(rest)
    if len(groups) < 2:
        raise ScenarioError("partition: needs at least two groups")
    self.groups = groups
    self.emit("partition " + " | ".join(",".join(map(str, sorted(g))) for g in groups))


@command("heal")
def heal(self: Scenario, command_: Command) -> None:
    """heal: remove the partition."""
    no_more(command_, list(command_.words), "heal")
    self.emit("healed" if self.groups else "no partition to heal")
    self.groups = None


@command("crash")
def crash(self: Scenario, command_: Command) -> None:
    """crash NODE: power loss now (every write was synced). crash NODE keep_unsynced=K:
    power loss inside the node's next step, after its writes were issued and before
    the sync returned; the first K writes survive, its sends and outputs never leave."""
    positional, options = command_.split(("keep_unsynced",))
    if len(positional) != 1:
        raise ScenarioError("crash: usage: crash NODE [keep_unsynced=K]")
    node = self.up_node(positional[0])
    if node.crash_armed is not None:
        raise ScenarioError(f"crash: a crash of node {node.node_id} is already armed")
    if "keep_unsynced" in options:
        node.crash_armed = parse_int(options["keep_unsynced"], "keep_unsynced")
        self.emit(
            f"{node.node_id}: crash armed: inside its next step, keeping the first "
            f"{plural(node.crash_armed, 'unsynced write')}"
        )
        return
    self.go_down(node, 0)
    self.emit(f"{node.node_id}: crashed")


@command("restart")
def restart(self: Scenario, command_: Command) -> None:
    """restart NODE: a new incarnation recovers from the node's durable storage."""
    positional, _ = command_.split(())
    if len(positional) != 1:
        raise ScenarioError("restart: usage: restart NODE")
    node = self.node(positional[0])
    if node.up:
        raise ScenarioError(f"restart: node {node.node_id} is up (crash it first)")
    recovered = len(node.storage.recover())
    self.start(node, f"{node.node_id}: restart, {plural(recovered, 'durable key')}")


@command("tick")
def tick(self: Scenario, command_: Command) -> None:
    """tick [NODE|all] [quiet]: fire every timer armed now (retransmission ticks included)."""
    positional, _ = command_.split(())
    self.quiet = take_quiet(positional)
    targets = self.nodes
    if positional and positional[0] != "all":
        targets = [self.up_node(positional[0])]
    no_more(command_, positional[1:], "tick [NODE|all] [quiet]")
    fired = sum(self.fire_timers(node, idle_silent=False) for node in targets if node.up)
    if not fired:
        self.emit("no timers armed")
    elif self.quiet:
        self.emit(f"fired {plural(fired, 'timer')}")


@command("stabilize")
def stabilize(self: Scenario, command_: Command) -> None:
    """stabilize [step_max=K] [quiet]: heal, then deliver everything and tick everyone,
    alternately, until the correct running nodes are quiet (crashed nodes stay down)."""
    positional, options = command_.split(("step_max",))
    self.quiet = take_quiet(positional)
    no_more(command_, positional, "stabilize [step_max=K] [quiet]")
    step_max = parse_int(options.get("step_max", str(self.step_max)), "step_max", 1)
    if self.groups is not None:
        self.groups = None
        self.emit("healed")
    first_step = self.steps
    rounds = 0
    while True:
        self.deliver_all((None, None), step_max, "stabilize")
        reasons = self.unsettled()
        if not reasons:
            break
        if self.steps - first_step >= step_max:
            raise ScenarioError(
                f"stabilize: not settled after step_max={step_max} steps: " + "; ".join(reasons)
            )
        rounds += 1
        fired = sum(self.fire_timers(node, idle_silent=True) for node in self.nodes if node.up)
        if not fired and not self.pending:
            raise ScenarioError("stabilize: stuck, no timer armed: " + "; ".join(reasons))
    delivered = f"; delivered {self.summary()}" if self.quiet else ""
    self.emit(f"settled after {plural(rounds, 'tick round')}{delivered}")


@command("pending")
def pending(self: Scenario, command_: Command) -> None:
    """pending: the messages in flight, oldest first."""
    no_more(command_, list(command_.words), "pending")
    for message in self.pending:
        note = ""
        if not self.nodes[message.destination].up:
            note = " (to a down node)"
        elif self.blocked(message.source, message.destination):
            note = " (partitioned)"
        self.emit(message.describe() + note)
    if not self.pending:
        self.emit("no messages in flight")


@command("delivered")
def delivered(self: Scenario, command_: Command) -> None:
    """delivered: per node, what it delivered (across restarts)."""
    no_more(command_, list(command_.words), "delivered")
    assert self.kit is not None
    for node in self.nodes:
        shown = [self.kit.format_output(output).removeprefix("deliver ") for output in node.outputs]
        state = "" if node.up else " (down)"
        self.emit(f"{node.node_id}{state}: {', '.join(shown) if shown else 'nothing'}")


@command("check")
def check(self: Scenario, command_: Command) -> None:
    """check: safety violations seen so far, then the liveness check of the end of a run."""
    no_more(command_, list(command_.words), "check")
    if self.checker is None:
        raise ScenarioError("check: the protocol kit has no checker")
    found = self.violations + self.checker.finish(self.steps)
    for violation in found:
        self.emit(format_violation(violation))
    if not found:
        self.emit("ok")


@command("counters")
def counters(self: Scenario, command_: Command) -> None:
    """counters [NODE]: a node's counters, summed over its incarnations."""
    positional, _ = command_.split(())
    no_more(command_, positional[1:], "counters [NODE]")
    targets = [self.node(positional[0])] if positional else self.nodes
    for node in targets:
        total = dict(node.counters)
        if node.core is not None:
            for name, value in node.core.counters.items():
                total[name] = total.get(name, 0) + value
        shown = " ".join(f"{name}={value}" for name, value in sorted(total.items()))
        self.emit(f"{node.node_id}: {shown or 'none'}")


@command("storage")
def storage(self: Scenario, command_: Command) -> None:
    """storage NODE: the node's durable keys and values (what a crash keeps)."""
    positional, _ = command_.split(())
    if len(positional) != 1:
        raise ScenarioError("storage: usage: storage NODE")
    node = self.node(positional[0])
    for key, value in sorted(node.storage.recover().items()):
        self.emit(f"{key} = {format_value(self.codec.decode_value(value))}")
    if not node.storage.recover():
        self.emit("empty")


# -- files ---------------------------------------------------------------------------------


@dataclass(slots=True)
class FileResult:
    """The outcome of running one file: its text as written and as it should be."""

    path: Path
    expected_text: str
    actual_text: str
    mismatches: list[int]  # lines of the commands whose output differs

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def diff(self) -> str:
        """A unified diff from the file as written to the file as run."""
        return "".join(
            difflib.unified_diff(
                self.expected_text.splitlines(keepends=True),
                self.actual_text.splitlines(keepends=True),
                f"{self.path} (expected)",
                f"{self.path} (actual)",
            )
        )

    def rewrite(self) -> bool:
        """Write the actual outputs into the file; return whether it changed."""
        if self.actual_text == self.expected_text:
            return False
        self.path.write_text(self.actual_text)
        return True


def run_file(
    path: str | Path,
    *,
    kits: Mapping[str, ProtocolKit] | None = None,
    commands: Mapping[str, CommandHandler] | None = None,
    echo: Callable[[str], None] | None = None,
) -> FileResult:
    """Run every command of the file at ``path``; compare with the expected blocks.
    ``echo`` (if given) sees each command and its output as they run, so the
    trace leading to a :class:`ScenarioError` can be shown."""
    path = Path(path)
    text = path.read_text()
    scenario_file = parse_scenario(text, str(path))
    scenario = Scenario(kits, commands)
    outputs: list[str | None] = []
    mismatches: list[int] = []
    for directive in scenario_file.directives:
        try:
            output = scenario.execute(directive.text)
        except ScenarioError as error:
            raise error.locate(str(path), directive.line) from None
        except Exception as error:
            error.add_note(f"{path}:{directive.line}: while running {directive.text!r}")
            raise
        outputs.append(output)
        if echo is not None:
            echo(f"{directive.text}\n{SEPARATOR}\n{output}\n")
        if output != directive.expected:
            mismatches.append(directive.line)
    return FileResult(path, text, render_scenario(scenario_file, outputs), mismatches)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m replicaio.testing.scenario [--rewrite] FILE...``"""
    parser = argparse.ArgumentParser(prog="python -m replicaio.testing.scenario")
    parser.add_argument("--rewrite", action="store_true", help="write actual outputs into FILEs")
    parser.add_argument("--show", action="store_true", help="print every command's output")
    parser.add_argument("files", nargs="+", metavar="FILE")
    arguments = parser.parse_args(argv)
    status = 0
    for name in arguments.files:
        try:
            result = run_file(name, echo=print if arguments.show else None)
        except ScenarioError as error:
            print(f"error: {error}", file=sys.stderr)
            status = 2
            continue
        if arguments.rewrite:
            print(("rewrote " if result.rewrite() else "unchanged ") + name)
        elif result.ok:
            print(f"ok {name}")
        else:
            sys.stdout.write(result.diff())
            status = max(status, 1)
    return status


if __name__ == "__main__":
    # Run the module under its own name: kits (raft_kit) import it by name, and
    # their ScenarioErrors must be the class main() catches.
    from replicaio.testing import scenario as canonical

    sys.exit(canonical.main())
