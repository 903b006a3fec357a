"""A node's footprint: how much it holds, checked against a configured bound.

"Nothing a peer sends may make a correct node grow without bound" is a
safety property the simulator checks like any other. Memory itself is too
coarse and too costly to measure per step, so the simulator counts what a
node accumulates in its core, cheaply (a few ``len`` calls), every
``CHECK_EVERY_STEPS`` steps and at the end of the run:

* ``contexts``: live components (routes), e.g. open broadcast instances;
* ``tasks``: tasks of those components;
* ``sent_paths``: components whose sent messages are retained;
* ``unacked``: messages retained for retransmission, over all peers;
* ``storage_keys``: durable records;
* ``timers``: armed timers;
* ``stream_inbox``: messages waiting in stream inboxes;
* anything the protocol reports itself through an optional
  ``footprint() -> Mapping[str, int]`` method of its node protocol object
  (its own buffers: a reply cache, pending requests).

The bound comes from the protocol factory's optional
``footprint_max(config) -> Mapping[str, int]``, derived from the cluster
configuration and the protocol's own windows; a measure without a bound is
reported but not checked. Exceeding a bound is a ``bounded-memory``
violation naming the measure, its value and its bound.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from replicaio.core.node import Node

CHECK_EVERY_STEPS = 256  # a power of two: the check is a mask on the step count


def footprint(core: Node) -> dict[str, int]:
    """What ``core`` holds now (see the module docstring)."""
    routes = core.routes
    streams = {id(stream): stream for stream in core.streams.values()}
    measured = {
        "contexts": len(routes),
        "tasks": sum(len(context.tasks.tasks) for context in routes.values()),
        "sent_paths": len(core.reliable.sent),
        "unacked": sum(len(unacked) for unacked in core.reliable.unacked),
        "storage_keys": len(core.storage),
        "timers": len(core.timers),
        "stream_inbox": sum(len(stream.inbox) for stream in streams.values()),
    }
    own = getattr(core.protocol, "footprint", None)
    if own is not None:
        measured.update(own())
    return measured


def footprint_bounds(factory: Any, config: Any) -> Mapping[str, int]:
    """The bounds a protocol factory declares for ``config`` (none: empty)."""
    declare = getattr(factory, "footprint_max", None)
    if declare is None:
        return {}
    bounds: Mapping[str, int] = declare(config)
    return bounds


def over_bounds(measured: Mapping[str, int], bounds: Mapping[str, int]) -> list[str]:
    """``"name=value > bound"`` for every measure above its bound."""
    return [
        f"{name}={measured[name]} > {bound}"
        for name, bound in bounds.items()
        if name in measured and measured[name] > bound
    ]
