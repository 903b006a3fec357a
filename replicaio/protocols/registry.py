"""Protocol names, as the CLI, the simulator and replay know them."""

from __future__ import annotations

from replicaio.core.errors import UsageError
from replicaio.core.node import ProtocolFactory
from replicaio.protocols.broadcast import PROTOCOLS as BROADCASTS
from replicaio.protocols.broadcast import BroadcastFactory


def protocol_names() -> list[str]:
    """Every protocol a host can run, in a stable order."""
    return list(BROADCASTS)


def protocol_factory(name: str) -> ProtocolFactory:
    """The factory a :class:`~replicaio.core.node.Node` is built with for ``name``."""
    spec = BROADCASTS.get(name)
    if spec is None:
        raise UsageError(f"unknown protocol {name!r}; known: {', '.join(protocol_names())}")
    return BroadcastFactory(spec)
