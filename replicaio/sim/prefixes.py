"""Crash consistency, checked exhaustively: every prefix of every step's writes.

The storage contract lets a crash keep any prefix of a step's unsynced
writes (``MemoryStorage.crash``), so every such prefix must be a state the
node restarts from correctly. The swarm samples that space (a mid-step crash
keeps a drawn number of writes); this mode enumerates it, after ALICE's
crash-prefix checking:

1. run the simulation once, as ``simulate`` would (same seed, same faults);
2. at every step of a correct node that writes, and for every prefix
   ``0..len(writes)`` of its writes, build a *shadow* node: a fresh core
   restarted (``Start``) from the durable state before the step plus that
   prefix;
3. hand the shadow every message the real node has received so far, this
   step's included (the peers' re-sends a restart provokes, and duplicates,
   which the fault model allows at any time), in arrival order;
4. feed the shadow's outputs to a *fork* of the run's checkers (their state
   as of this step): a shadow that delivers an instance again, decides
   differently, or fails an assertion or raises on any of it is a failure,
   reported with the node, step, time and prefix.

The shadows never touch the real run: their messages go nowhere and client
replies (``Reply``, ``Redirect``, ``Rejected``) are not checked (the clients
of the real run never see them); the protocol's own checkers see the rest.

Cost is steps x prefixes x messages received, so this is for *small* runs (a
protocol configured with small windows and retention, a few requests):
``states_max`` bounds the number of shadows, ``received_max`` the messages
replayed to each (the most recent ones). The result says whether the check
was exhaustive.

From the command line: ``replicaio explore PROTOCOL --seed S --crash-prefixes``.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from replicaio.core.effects import Effects, Input, Receive, Start
from replicaio.core.node import Node, NodeParams, ProtocolFactory, choose_first
from replicaio.sim.options import SimOptions
from replicaio.sim.simulator import SimNode, Simulator
from replicaio.smr.api import Redirect, Rejected, Reply
from replicaio.storage.memory import MemoryStorage

STATES_MAX = 20_000  # shadows (restarted prefix states) per run
RECEIVED_MAX = 4_096  # messages replayed to each shadow (the most recent)
FAILURES_MAX = 5

CLIENT_OUTPUTS = (Reply, Redirect, Rejected)


@dataclass(slots=True)
class PrefixResult:
    """What checking every prefix of one run found."""

    steps_checked: int = 0
    states_checked: int = 0
    exhaustive: bool = True
    run_violations: list[dict[str, Any]] = field(default_factory=list)
    run_counters: dict[str, int] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and not self.run_violations


class RecordingNode(Node):
    """A node that adds each step's writes to ``recording`` while it is a list:
    how the checker sees a step's batch, whichever way the simulator then writes
    it. (``Node`` has no instance dict compiled or interpreted, ADR 0041, so its
    ``step`` cannot be replaced on one instance.)"""

    recording: list[tuple[str, bytes | None]] | None = None

    def step(self, event: Input) -> Effects:
        effects = super().step(event)
        recording = self.recording
        if recording is not None:
            recording.extend(effects.persists)
        return effects


class PrefixSimulator(Simulator):
    """A :class:`Simulator` that restarts a shadow node from every prefix of every
    correct node's step; see the module docstring."""

    def __init__(
        self,
        protocol: str,
        options: SimOptions,
        *,
        f: int | None = None,
        factory: ProtocolFactory | None = None,
        params: NodeParams | None = None,
        states_max: int = STATES_MAX,
        received_max: int = RECEIVED_MAX,
        failures_max: int = FAILURES_MAX,
        on_state: Callable[[bool], None] | None = None,
    ) -> None:
        # Every step syncs at once here (no group commit): the shadows restart
        # from the durable state before a step plus a prefix of that step's writes.
        options = replace(options, sync_us_mean=0)
        super().__init__(protocol, options, f=f, record=False, factory=factory, params=params)
        self.result = PrefixResult()
        self.on_state = on_state  # called after each prefix state checked (a progress bar)
        self.states_max = states_max
        self.failures_max = failures_max
        self.received: list[deque[tuple[int, Any]]] = [
            deque(maxlen=received_max) for _ in range(options.nodes)
        ]
        self.truncated = False

    def make_core(self, node: SimNode, factory: ProtocolFactory,
                  kind: type[Node] = RecordingNode) -> Node:
        """A :class:`RecordingNode`, so that ``step`` sees each batch's writes."""
        return super().make_core(node, factory, kind)

    def step(self, node: SimNode, event: Input, data: bytes | None = None) -> None:
        if isinstance(event, Receive):
            self.received[node.node_id].append((event.source, event.message))
        if node.strategy is not None or node.pending_crash is not None or not self.checking():
            super().step(node, event, data)
            return
        before = node.storage.clone()
        assert before.unsynced_count == 0, "every step ends with a sync"
        # The checkers as they stand before this step's outputs: a crash inside the
        # step (any prefix) comes before the host releases them.
        checkers = self.fork_checkers(self.harness_checkers())
        persists: list[tuple[str, bytes | None]] = []
        core = node.core
        assert isinstance(core, RecordingNode)
        core.recording = persists
        try:
            super().step(node, event, data)
        finally:
            core.recording = None
        if persists:
            self.check_step(node, event, before, persists, checkers)

    def checking(self) -> bool:
        result = self.result
        if len(result.failures) >= self.failures_max:
            return False
        if result.states_checked >= self.states_max:
            result.exhaustive = False
            return False
        return True

    def check_step(
        self,
        node: SimNode,
        event: Input,
        before: MemoryStorage,
        writes: list[tuple[str, bytes | None]],
        checkers: list[Any],
    ) -> None:
        result = self.result
        result.steps_checked += 1
        if len(self.received[node.node_id]) == self.received[node.node_id].maxlen:
            result.exhaustive = False  # older messages are no longer replayed
        for keep in range(len(writes) + 1):
            if not self.checking():
                return
            result.states_checked += 1
            found = self.shadow(node, before, writes[:keep], self.fork_checkers(checkers))
            if self.on_state is not None:
                self.on_state(found is not None)
            if found is not None:
                result.failures.append({
                    "node": node.node_id,
                    "time_us": self.now,
                    "step": self.stats["steps"],
                    "input": type(event).__name__,
                    "kept": keep,
                    "writes": len(writes),
                    "keys": [key for key, _ in writes],
                    **found,
                })
                return

    def shadow(
        self,
        node: SimNode,
        before: MemoryStorage,
        kept: list[tuple[str, bytes | None]],
        checkers: list[Any],
    ) -> dict[str, Any] | None:
        """Restart a shadow of ``node`` from ``before`` plus ``kept``; replay what the
        node received; the first violation it causes, or None."""
        storage = before.clone()
        for key, value in kept:
            if value is None:
                storage.delete(key)
            else:
                storage.put(key, value)
        storage.sync()
        core = Node(node.node_id, self.config, self.factory, choose=choose_first,
                    params=self.params, codec=self.codec)
        inputs: list[Input] = [Start(storage.recover())]
        inputs += [Receive(source, message) for source, message in self.received[node.node_id]]
        for position, event in enumerate(inputs):
            try:
                effects = core.step(event)
            except Exception as error:  # any escape is the finding
                kind = "assertion" if isinstance(error, AssertionError) else "raised"
                return {"property": kind, "detail": repr(error)[:2000], "replayed": position}
            for output in effects.outputs:
                if isinstance(output, CLIENT_OUTPUTS):
                    continue
                for checker in checkers:
                    for violation in checker.on_output(node.node_id, output, self.now):
                        return {**violation.as_dict(), "replayed": position}
        return None

    def harness_checkers(self) -> list[Any]:
        """The run's protocol checkers (a broadcast harness has one, a service's a list)."""
        harness = self.harness
        checker = getattr(harness, "checker", None)
        if checker is not None:
            return [checker]
        return list(getattr(harness, "checkers", ()))

    @staticmethod
    def fork_checkers(checkers: list[Any]) -> list[Any]:
        """Independent copies of ``checkers`` as they stand now."""
        return [copy.deepcopy(checker) for checker in checkers]


def check_prefixes(
    protocol: str,
    options: SimOptions,
    *,
    f: int | None = None,
    factory: ProtocolFactory | None = None,
    states_max: int = STATES_MAX,
    received_max: int = RECEIVED_MAX,
    on_state: Callable[[bool], None] | None = None,
) -> PrefixResult:
    """Run ``options`` once and restart a shadow from every prefix of every step's
    writes; see the module docstring. ``factory`` overrides the protocol's
    (a protocol configured small, or a broken variant under test); ``on_state(failed)``
    is called after each prefix state checked."""
    simulator = PrefixSimulator(
        protocol, options, f=f, factory=factory, states_max=states_max,
        received_max=received_max, on_state=on_state,
    )
    run = simulator.run()
    result = simulator.result
    result.run_violations = run.violations
    result.run_counters = run.counters
    return result
