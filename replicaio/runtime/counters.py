"""Named event counters of the runtime (the core keeps its own, ``Node.counters``).

Names are stable and become Prometheus labels: ``rejected_<reason>`` for input
refused from the network or a client, ``bound_<name>_max`` when a bound is hit,
plain nouns for everything else (``reconnects``, ``connections_replaced``).
"""

from __future__ import annotations


class Counters:
    """A ``name -> count`` map; reads from another thread copy it first."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: dict[str, int] = {}

    def count(self, name: str, by: int = 1) -> None:
        self.values[name] = self.values.get(name, 0) + by

    def get(self, name: str) -> int:
        return self.values.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        return dict(self.values)
