"""What a simulated run asks of a protocol family: a workload and its checkers.

A :class:`Harness` draws the client requests of a run from its options and
watches every node output with the checkers of the properties the protocol
claims. The simulator knows nothing else about the protocol.

A harness whose clients react to what they see (closed-loop clients with
timeouts and retries, ``replicaio.sim.kv_harness``) also has ``bind(api)``:
the simulator calls it once, before ``requests``, with a :class:`HarnessApi`
through which the harness reads the virtual clock, makes requests and
schedules its own callbacks during the run. Everything it does that way goes
through the event heap, so the run stays a pure function of its options.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Protocol

from replicaio.assembly import broadcast_spec
from replicaio.check.broadcast import BroadcastChecker, Violation
from replicaio.core.config import ClusterConfig
from replicaio.core.errors import UsageError
from replicaio.interfaces.broadcast import BroadcastClaims, Delivered
from replicaio.sim.options import Crash, Partition, SimOptions


class HarnessApi(Protocol):
    """What the simulator offers a harness that acts during the run."""

    def now(self) -> int:
        """The virtual time, in microseconds."""
        ...

    def request(self, node: int, payload: Any) -> None:
        """Feed ``node`` a ``Request(payload)`` input now (after the current event);
        dropped and counted if the node is down."""
        ...

    def call_at(self, time_us: int, callback: Callable[[], None]) -> None:
        """Call ``callback()`` at virtual time ``time_us`` (not before now)."""
        ...

    def crash(self, crash: Crash) -> None:
        """Crash ``crash.node`` now as the options' crashes do (a fault the harness
        aims, say at the current leader); ignored in the liveness phase."""
        ...

    def partition(self, partition: Partition) -> None:
        """Cut links as the options' partitions do (a fault the harness aims, say
        isolating the current leader); none holds in the liveness phase."""
        ...


class Harness(Protocol):
    """Workload and checkers of one protocol family (``bind(api)`` is optional,
    see the module docstring; so is ``kept_down(node)``, told before the
    liveness phase of each node the ``degraded`` kind keeps down for good)."""

    def requests(self, options: SimOptions) -> list[tuple[int, int, Any]]:
        """``(time_us, node, payload)`` for every client request of the run."""
        ...

    def on_output(self, node: int, output: Any, time_us: int) -> list[Violation]:
        """Check one output (safety, as it happens)."""
        ...

    def finish(self, time_us: int) -> list[Violation]:
        """Check the liveness properties once the run has settled."""
        ...

    def settled(self) -> bool:
        """Whether every liveness obligation is met (the run may stop)."""
        ...

    def summary(self) -> dict[str, Any]:
        """Protocol-level figures for the report."""
        ...


class BroadcastHarness:
    """Every node (correct or not) broadcasts unique values at seeded times."""

    def __init__(self, spec: BroadcastClaims, config: ClusterConfig) -> None:
        self.spec = spec
        self.config = config
        self.checker = BroadcastChecker(spec, config.correct)

    def requests(self, options: SimOptions) -> list[tuple[int, int, Any]]:
        rng = random.Random(f"replicaio-requests:{options.seed}")
        found = []
        for node in range(options.nodes):
            at_us = rng.randrange(0, options.request_spacing_us + 1)
            for index in range(options.requests_per_node):
                value = f"v{node}.{index}.s{options.seed}".encode()
                found.append((at_us, node, value))
                at_us += rng.randrange(1, 2 * options.request_spacing_us + 1)
        return sorted(found, key=lambda request: (request[0], request[1]))

    def on_output(self, node: int, output: Any, time_us: int) -> list[Violation]:
        return self.checker.on_output(node, output, time_us)

    def finish(self, time_us: int) -> list[Violation]:
        return self.checker.finish(time_us)

    def kept_down(self, node: int) -> None:
        self.checker.kept_down(node)

    def settled(self) -> bool:
        return self.checker.settled()

    def summary(self) -> dict[str, Any]:
        return {
            "instances_accepted": len(self.checker.accepted),
            "instances_delivered": len(self.checker.delivered),
            "deliveries": self.checker.deliveries,
        }


def harness_for(protocol: str, config: ClusterConfig) -> Harness:
    """The harness of ``protocol``."""
    from replicaio.sim.kv_harness import kv_harness_for
    from replicaio.sim.txn_harness import txn_harness_for

    transactional = txn_harness_for(protocol, config)
    if transactional is not None:
        return transactional
    replicated = kv_harness_for(protocol, config)
    if replicated is not None:
        return replicated
    spec = broadcast_spec(protocol)
    if spec is None:
        raise UsageError(f"no simulation harness for protocol {protocol!r}")
    if spec.nodes_min is not None and config.n < spec.nodes_min(config.f):
        raise UsageError(f"{protocol} with f={config.f} needs n >= {spec.nodes_min(config.f)}, "
                         f"got n={config.n} (--nodes, --f)")
    return BroadcastHarness(spec, config)


__all__ = ["BroadcastHarness", "Delivered", "Harness", "HarnessApi", "harness_for"]
