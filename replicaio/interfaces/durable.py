"""What a host that holds every node's disk shows a protocol's god's-eye checks.

Some safety facts are about several nodes' disks at once, which no node can
see: Raft's "committed once replicated on a majority of the servers" (section
5.3) is about what a majority *durably holds* when the leader commits. The
simulator holds every node's storage, so a protocol factory may declare
checks it runs on chosen outputs with a :class:`DurableView` (the factory's
optional ``durable_checks() -> Mapping[type, DurableCheck]``; Raft's in
``replicaio.protocols.raft.durable``). A check only reads; each problem it
returns is a violation of the property it names, at that output.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol


class DurableView(Protocol):
    """Every node's disk and live protocol object, read-only."""

    def records(self, node: int) -> Mapping[str, bytes]:
        """What ``node``'s disk holds now: every synced record (key -> value),
        whether the node is up or down."""
        ...

    def lost(self) -> Collection[int]:
        """Nodes whose disks lost synced writes so far in the run (injected
        storage faults): what they acknowledged may be gone."""
        ...

    def protocol(self, node: int) -> Any | None:
        """``node``'s live node protocol object (``None`` while it is down)."""
        ...


# (node, output, view) -> [(property, detail)]
DurableCheck = Callable[[int, Any, DurableView], list[tuple[str, str]]]

__all__ = ["DurableCheck", "DurableView"]
