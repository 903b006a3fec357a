"""The ``rewrite`` fault kind (docs/simulation.md, "Lost overwrites"): lost
writes aimed right after a step that rewrites durable records in place, so
that what the step replaced comes back at the restart."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from replicaio.core.errors import UsageError
from replicaio.sim.kv_cli import MEMBERSHIP_EVERY_MS, NEMESIS_EVERY_MS
from replicaio.sim.kv_harness import KvWorkload, kv_options
from replicaio.sim.options import Crash, SimOptions, draw_disk_nodes
from replicaio.sim.shrink import candidates
from replicaio.sim.simulator import Simulator

FAULTS = ("crash", "partition", "loss", "dup", "reorder")
SWARM = KvWorkload(membership_every_us=MEMBERSHIP_EVERY_MS * 1000,
                   nemesis_every_us=NEMESIS_EVERY_MS * 1000)


def test_the_kind_adds_aimed_lost_writes_on_the_disk_nodes_and_moves_no_other_draw() -> None:
    for seed in range(1, 21):
        plain = kv_options(seed, 5, FAULTS, SWARM)
        rewrite = kv_options(seed, 5, (*FAULTS, "rewrite"), SWARM)
        added = [crash for crash in rewrite.crashes if crash.rewrite]
        assert [crash for crash in rewrite.crashes if not crash.rewrite] == list(plain.crashes)
        assert replace(rewrite, faults=FAULTS, crashes=plain.crashes) == plain
        assert added, seed
        disks = set(draw_disk_nodes(seed, list(range(5)), 2))
        assert {crash.node for crash in added} <= disks
        assert all(crash.disk == "lost_writes" and crash.mid_step for crash in added)
        # the same nodes as the disk kind's, which a run may also have
        with_disk = kv_options(seed, 5, (*FAULTS, "disk", "rewrite"), SWARM)
        assert {crash.node for crash in with_disk.crashes if crash.disk} <= disks


def test_broadcast_options_draw_the_kind_on_their_own_stream() -> None:
    plain = SimOptions.draw(3, 7, 1, FAULTS)
    rewrite = SimOptions.draw(3, 7, 1, (*FAULTS, "rewrite"))
    assert [crash for crash in rewrite.crashes if not crash.rewrite] == list(plain.crashes)
    assert any(crash.rewrite for crash in rewrite.crashes)


def test_options_with_the_kind_round_trip_and_runs_without_it_log_as_before() -> None:
    options = kv_options(9, 5, (*FAULTS, "rewrite"), SWARM)
    assert SimOptions.from_dict(json.loads(json.dumps(options.as_dict()))) == options
    assert all("rewrite" not in crash for crash in kv_options(9, 5, FAULTS, SWARM).as_dict()[
        "crashes"])
    aimed = next(crash for crash in options.crashes if crash.rewrite)
    assert replace(options, crashes=tuple(c for c in options.crashes if c is not aimed)) in list(
        candidates(options))
    for shrunk in candidates(options):  # (a clean crash keeps its aim: it lands at once)
        SimOptions.from_dict(json.loads(json.dumps(shrunk.as_dict())))
    with pytest.raises(UsageError, match="rewrite aim"):
        replace(options, crashes=(Crash(0, 10, 1_000, True, 0, rewrite=1),)).validate()


def test_the_aimed_fault_lands_after_a_rewrite_and_brings_the_replaced_records_back() -> None:
    """Seed 9 (5 nodes): a follower truncates a stale suffix; the aimed fault
    takes that step's writes back, the store reports the loss, and the node
    rejoins (a damaged disk takes a new identity); the correct protocol stays
    safe and live."""
    options = kv_options(9, 5, (*FAULTS, "rewrite"), SWARM)
    result = Simulator("raft", options, f=2, record=False).run()
    assert result.violations == []
    assert result.stats["crashes_after_rewrite"] == 1
    assert result.stats["disk_synced_writes_lost"] >= 2
    assert result.counters["raft_storage_damaged_rejoining"] >= 1
