"""The built-in scenario commands (``cluster``, ``deliver``, ``crash``, ...).

Each is registered on :class:`~replicaio.testing.scenario.cluster.Scenario`
with :func:`command`; ``docs/scenarios.md`` is the reference.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

from replicaio.core.config import ClusterConfig, Resilience
from replicaio.core.effects import Request
from replicaio.core.errors import ConfigError
from replicaio.core.node import NodeParams
from replicaio.sim.adversary import BEHAVIOURS
from replicaio.storage.memory import MemoryStorage
from replicaio.testing.scenario.cluster import (
    STEP_MAX_DEFAULT,
    CommandHandler,
    InFlight,
    LinkFilter,
    Scenario,
    ScenarioNode,
)
from replicaio.testing.scenario.script import Command, ScenarioError, no_more, parse_int, take_quiet
from replicaio.testing.scenario.trace import format_value, format_violation, plural

# -- the built-in commands -----------------------------------------------------------------


def command(name: str) -> Callable[[CommandHandler], CommandHandler]:
    """Register a built-in command handler under ``name``."""

    def register(handler: CommandHandler) -> CommandHandler:
        Scenario.commands[name] = handler
        return handler

    return register




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
            strategy = BEHAVIOURS[behaviours[node_id]].factory(node_id, n, rng)
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
    the sync returned; the first K writes survive, its sends and outputs never leave.
    crash NODE lose_synced=K: a storage fault too, the last K synced writes are lost
    (a cut or torn tail, a flipped bit in the last records); the storage reports it."""
    positional, options = command_.split(("keep_unsynced", "lose_synced"))
    if len(positional) != 1:
        raise ScenarioError("crash: usage: crash NODE [keep_unsynced=K | lose_synced=K]")
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
    if "lose_synced" in options:
        lose = parse_int(options["lose_synced"], "lose_synced")
        if not 0 <= lose <= node.storage.synced_history_count:
            raise ScenarioError(
                f"crash: lose_synced must be in [0, {node.storage.synced_history_count}]"
            )
        self.go_down(node, 0, lose)
        self.emit(f"{node.node_id}: crashed, losing its last {plural(lose, 'synced write')}")
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
    damage = node.storage.damage
    reported = "" if damage is None else f" (the storage reports {damage.kind})"
    self.start(node, f"{node.node_id}: restart, {plural(recovered, 'durable key')}{reported}")


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


