"""The simulator's and the node core's fast paths against naive recomputation.

Each optimised structure of the hot path (the per-path index of durable keys,
...) is checked after every step of fault-heavy simulated runs against what a
naive scan of the node's state says it must be.
"""

from __future__ import annotations

from typing import Any

import pytest

from replicaio.core.node import Node
from replicaio.sim.options import SimOptions, parse_faults
from replicaio.sim.simulator import SimNode, Simulator


def naive_storage_keys(node: Node) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for key in node.storage:
        grouped.setdefault(key[: key.find("#") + 1], []).append(key)
    return grouped


def check_node(node: Node) -> None:
    assert {prefix: list(keys) for prefix, keys in node.storage_keys.items()} == (
        naive_storage_keys(node)
    )


class CheckedSimulator(Simulator):
    """Checks every live core after each of its steps."""

    def step(self, node: SimNode, event: Any) -> None:
        super().step(node, event)
        if node.core is not None:
            check_node(node.core)


@pytest.mark.parametrize("seed", range(1, 9))
def test_fast_paths_match_naive_state_under_faults(seed: int) -> None:
    faults = parse_faults("crash,partition,loss,dup,reorder")
    options = SimOptions.draw(seed, 4, 1, faults, requests_per_node=20)
    result = CheckedSimulator("bracha", options).run()
    assert result.ok, result.violations
