"""The broadcast family: best-effort, reliable (Bracha) and consistent (echo).

Each protocol is a one-instance ``async`` function (read it first: it is the
paper's pseudo-code) run for many senders and sequence numbers by
:class:`~replicaio.protocols.broadcast.instances.Instances`. ``PROTOCOLS``
maps the CLI names to a :class:`BroadcastSpec` saying what each one claims,
so the checkers hold each protocol to exactly its own guarantees. The
deliberately broken variants live in ``replicaio.testing.variants.broadcast``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from replicaio.core.config import ClusterConfig, Resilience
from replicaio.core.context import Context
from replicaio.core.errors import ConfigError
from replicaio.interfaces.broadcast import Accepted, Delivered
from replicaio.protocols.broadcast.beb import best_effort
from replicaio.protocols.broadcast.bracha import bracha
from replicaio.protocols.broadcast.echo import consistent
from replicaio.protocols.broadcast.instances import InstanceFunction, Instances

__all__ = [
    "PROTOCOLS",
    "Accepted", "BroadcastProtocol", "BroadcastSpec",
    "Delivered",
    "Instances",
]


@dataclass(frozen=True, slots=True)
class BroadcastSpec:
    """A broadcast protocol and the properties it claims."""

    name: str
    instance: InstanceFunction
    resilience: Resilience
    agreement: bool  # no two correct nodes deliver different values for one instance
    totality: bool  # if a correct node delivers an instance, every correct node does
    broken: bool = False  # a deliberately wrong variant, to show the checkers bite
    summary: str = ""
    window_max: int = 64  # Instances: open instances per sender
    retained_max: int = 32  # Instances: delivered instances kept per sender
    archived_max: int = 96  # Instances: collected instances whose values stay for catch-up
    # The link whose message a peer's delivery vouches for (catch-up), if any.
    vouch_link: str | None = None
    # What runs the instances (a test-support module may plant a bug in a subclass).
    runner: Callable[..., Instances] = Instances
    # The least n for f faults when the protocol needs more than its resilience
    # says (Imbs and Raynal's two-step broadcast: n >= 5f + 1); None: the resilience's.
    nodes_min: Callable[[int], int] | None = None


class BroadcastProtocol:
    """A node protocol: one :class:`Instances` of a broadcast at path ``("bcast",)``."""

    def __init__(self, spec: BroadcastSpec, context: Context) -> None:
        if spec.nodes_min is not None and context.n < spec.nodes_min(context.f):
            raise ConfigError(f"{spec.name} with f={context.f} needs n >= "
                              f"{spec.nodes_min(context.f)}, got n={context.n}")
        self.spec = spec
        self.instances = spec.runner(
            context.child("bcast"),
            spec.instance,
            window_max=spec.window_max,
            retained_max=spec.retained_max,
            archived_max=spec.archived_max,
            vouch_link=spec.vouch_link,
        )

    def start(self) -> None:
        self.instances.start()

    def on_request(self, payload: Any) -> str | None:
        return self.instances.broadcast(payload)


class BroadcastFactory:
    """Builds :class:`BroadcastProtocol` for a spec; what a host is given."""

    def __init__(self, spec: BroadcastSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.resilience = spec.resilience

    def __call__(self, context: Context) -> BroadcastProtocol:
        return BroadcastProtocol(self.spec, context)

    def footprint_max(self, config: ClusterConfig) -> dict[str, int]:
        """What a node may hold whatever its peers send (checked by the simulator,
        see ``replicaio.sim.footprint``): every open instance lies in its
        sender's window, so at most ``n * window_max`` of them, each with a
        task or two and a few durable records (a link's value per destination
        and the delivery record), plus the archived delivery records of up to
        ``archived_max`` collected instances per sender, and one catch-up task."""
        instances = config.n * self.spec.window_max
        links_per_instance = 3
        records = instances * (links_per_instance * (config.n + 1) + 1)
        records += config.n * self.spec.archived_max
        return {
            "contexts": instances + 8,
            "tasks": 2 * instances + 9,
            "sent_paths": instances + 8,
            "storage_keys": records + config.n + 8,
        }


PROTOCOLS: dict[str, BroadcastSpec] = {
    spec.name: spec
    for spec in (
        BroadcastSpec(
            "beb", best_effort, Resilience.ANY, agreement=False, totality=False,
            summary="best-effort broadcast",
        ),
        BroadcastSpec(
            "bracha", bracha, Resilience.BYZANTINE, agreement=True, totality=True,
            summary="Bracha's Byzantine reliable broadcast, n >= 3f+1",
            vouch_link="READY",
        ),
        BroadcastSpec(
            "echo", consistent, Resilience.BYZANTINE, agreement=True, totality=False,
            summary="consistent (authenticated echo) broadcast, n >= 3f+1",
        ),
    )
}
