"""Broadcast protocols configured small, and deliberately broken variants of the
multi-instance component, for tests of the framework's checkers and modes.

* :class:`SmallInstancesFactory` runs a broadcast with a small window and
  retention, so garbage collection happens within a few requests (the
  crash-prefix mode, ``replicaio.sim.prefixes``, checks small runs).
* :class:`WatermarkLastInstances` is the garbage-collection write order fixed
  in issue 7: it erases the delivered records *before* it saves the advanced
  ``low`` watermark. A crash keeping a prefix of that step's writes restarts
  with the old watermark and no record, and a peer's re-send delivers the
  instance again. The crash-prefix mode must catch it.
* :class:`CollectsFreshInstances` is the other collection bug found later (long
  profile, aimed crash, seed 130): collection past an instance delivered in the
  same step. A crash keeping that step's new watermark but not its output
  loses the delivery for good. The aimed crashes of the long profile must
  catch it.

Never used in production code (house rule: broken variants live here).
"""

from __future__ import annotations

from typing import Any

from replicaio.core.config import Resilience
from replicaio.core.context import Context
from replicaio.protocols.broadcast import PROTOCOLS, BroadcastSpec, Instances

WINDOW_MAX_SMALL = 4
RETAINED_MAX_SMALL = 2
ARCHIVED_MAX = 96  # Instances' default


class WatermarkLastInstances(Instances):
    """BROKEN on purpose: collection erases before it saves the watermark (the
    shipped collection otherwise: only the write order differs)."""

    def move_watermark(self, sender: int, low: int) -> None:
        self.erase_below(sender, low)
        self.context.persist(f"low:{sender}", low)


class CollectsFreshInstances(Instances):
    """BROKEN on purpose: collection passes the instances delivered in this very
    step (the shipped collection otherwise). A crash inside that step may keep
    the new watermark and lose the delivery's output, which nobody announces
    again below the watermark at restart."""

    def fresh_deliveries(self) -> Any:
        return ()


class SmallInstancesProtocol:
    """A node protocol: ``instances_class`` of ``spec`` with a small window."""

    def __init__(self, spec: BroadcastSpec, context: Context, instances_class: type[Instances],
                 window_max: int, retained_max: int, archived_max: int) -> None:
        self.instances = instances_class(
            context.child("bcast"), spec.instance, window_max=window_max,
            retained_max=retained_max, archived_max=archived_max,
        )

    def start(self) -> None:
        self.instances.start()

    def on_request(self, payload: Any) -> str | None:
        return self.instances.broadcast(payload)


class SmallInstancesFactory:
    """A :class:`~replicaio.core.node.ProtocolFactory` for a broadcast of the
    registry (``bracha``, ``echo``, ``beb``) run by ``instances_class`` with a
    small window and retention (and ``archived_max`` records archived beyond
    it: 0 erases a record as its instance is collected, as before the archive)."""

    def __init__(
        self,
        protocol: str,
        instances_class: type[Instances] = Instances,
        *,
        window_max: int = WINDOW_MAX_SMALL,
        retained_max: int = RETAINED_MAX_SMALL,
        archived_max: int = ARCHIVED_MAX,
    ) -> None:
        self.spec = PROTOCOLS[protocol]
        self.name = protocol
        self.resilience: Resilience = self.spec.resilience
        self.instances_class = instances_class
        self.window_max = window_max
        self.retained_max = retained_max
        self.archived_max = archived_max

    def __call__(self, context: Context) -> SmallInstancesProtocol:
        return SmallInstancesProtocol(
            self.spec, context, self.instances_class, self.window_max, self.retained_max,
            self.archived_max,
        )
