"""The simulator's ``disk`` fault kind (docs/storage.md, "Storage faults in the
simulator"): storage faults drawn from the seed on at most f nodes, each found
damaged at its restart; Raft with SMR and KV clients stays safe and live."""

from __future__ import annotations

from replicaio.sim.kv_harness import KvWorkload, kv_options
from replicaio.sim.options import DISK_FAULTS, SimOptions
from replicaio.sim.simulator import Simulator

FAULTS = ("crash", "partition", "loss", "dup", "reorder", "disk")


def test_disk_faults_fall_on_at_most_f_nodes_and_leave_the_other_faults_alone() -> None:
    for seed in range(1, 60):
        for nodes in (3, 5):
            options = kv_options(seed, nodes, FAULTS, KvWorkload())
            disks = {crash.node for crash in options.crashes if crash.disk}
            assert 1 <= len(disks) <= (nodes - 1) // 2
            assert {crash.disk for crash in options.crashes} <= {"", *DISK_FAULTS}
            without = kv_options(seed, nodes, FAULTS[:-1], KvWorkload())
            assert without.partitions == options.partitions
            assert [crash for crash in options.crashes if not crash.disk] == list(without.crashes)
        drawn = SimOptions.draw(seed, 3, 0, FAULTS)
        assert len({crash.node for crash in drawn.crashes if crash.disk}) <= 1
    assert not [c for c in SimOptions.draw(1, 1, 0, FAULTS).crashes if c.disk]  # f = 0


def test_raft_under_disk_faults_is_safe_live_and_recovers_damaged_nodes() -> None:
    damaged_starts = mid_log_cuts = 0
    for seed in range(1, 8):
        options = kv_options(seed, 3, FAULTS, KvWorkload())
        simulator = Simulator("raft", options, f=1, record=False)
        result = simulator.run()
        assert result.ok, (seed, result.violations)
        damaged_starts += result.counters.get("raft_storage_damaged_rejoining", 0)
        assert result.stats["disk_faults"] > 0
        mid_log_cuts += result.stats["disk_mid_log_cuts"]
    assert damaged_starts > 0
    assert mid_log_cuts > 0  # flipped bits and misdirected writes mid-log, cut and recovered


def test_misdirected_writes_and_mid_log_damage_are_drawn_with_what_they_take_back() -> None:
    drawn = [crash for seed in range(1, 40)
             for crash in kv_options(seed, 3, FAULTS, KvWorkload()).crashes if crash.disk]
    misdirected = [crash.lose_synced for crash in drawn if crash.disk == "misdirected"]
    corrupt = [crash.lose_synced for crash in drawn if crash.disk == "corrupt"]
    assert 1 in misdirected and max(misdirected) > 1  # onto free space, onto an older record
    assert 0 in corrupt and max(corrupt) > 0  # the whole log, or back to a point in it
