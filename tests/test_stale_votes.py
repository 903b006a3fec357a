"""Late votes below the stable checkpoint are counted as stale, not as
rejections: under load a replica's checkpoint passes numbers whose last
COMMITs are still on the way (harmless), and counting them as
``*_rejected_commit_out_of_window`` (hundreds a second live) hid the
rejections that matter: a message really above the window. A fault-free
simulated run at a queue longer than a checkpoint interval has many stale
votes and no rejection for the window."""

from __future__ import annotations

from dataclasses import replace

import pytest

from replicaio.sim.kv_harness import KvWorkload, kv_options
from replicaio.sim.simulator import Simulator


@pytest.mark.parametrize(("protocol", "nodes"), [("minbft", 3), ("pbft", 4)])
def test_late_votes_below_the_stable_checkpoint_are_stale_not_rejected(
    protocol: str, nodes: int,
) -> None:
    options = replace(
        kv_options(2, nodes, (), KvWorkload(clients=40, ops=600, think_us_max=0),
                   byzantine=0, protocol=protocol),
        sync_us_mean=2_000,
    )
    result = Simulator(protocol, options, f=1).run()
    assert result.ok, result.violations[:2]
    counters = result.counters
    assert counters.get(f"{protocol}_stale_commit", 0) > 0
    rejected = {name: value for name, value in counters.items()
                if name.startswith(f"{protocol}_rejected_") and "window" in name}
    assert rejected == {}
