"""The crash-prefix mode (replicaio.sim.prefixes): every prefix of every step's
writes is restarted from and re-checked. The correct protocols pass; the
garbage-collection write order fixed in issue 7 (records erased before the
watermark is saved; replicaio.testing.variants.instances) is caught."""

from __future__ import annotations

import json
from typing import Any

import pytest

from replicaio.cli import EXIT_VIOLATION, main
from replicaio.sim.kv_harness import KvWorkload, kv_options
from replicaio.sim.options import SimOptions
from replicaio.sim.prefixes import check_prefixes
from replicaio.testing.variants.instances import SmallInstancesFactory, WatermarkLastInstances


@pytest.mark.parametrize("protocol", ["bracha", "echo", "beb"])
def test_every_prefix_of_a_small_broadcast_run_restarts_correctly(protocol: str) -> None:
    for seed in (1, 2):
        options = SimOptions.draw(seed, 4, 0, ("dup", "reorder"), requests_per_node=4)
        result = check_prefixes(protocol, options, factory=SmallInstancesFactory(protocol))
        assert result.ok, (seed, result.failures, result.run_violations)
        assert result.exhaustive
        assert result.states_checked > result.steps_checked > 0
        # the run collected (a collecting step's prefixes were among those checked)
        assert result.run_counters["broadcast_instances_collected"] > 0


@pytest.mark.parametrize("protocol", ["bracha", "beb"])
def test_the_watermark_last_collection_order_is_caught(protocol: str) -> None:
    """``WatermarkLastInstances`` is the shipped collection with only its write order
    broken; with the archive off (as before the fix: collection erases the records
    it collects) a prefix keeping the erasure but not the watermark delivers an
    instance twice. The shipped order passes the same runs."""
    for seed in (1, 2, 3):
        options = SimOptions.draw(seed, 4, 0, (), requests_per_node=4)
        shipped = SmallInstancesFactory(protocol, archived_max=0)
        assert check_prefixes(protocol, options, factory=shipped).ok, seed
        factory = SmallInstancesFactory(protocol, WatermarkLastInstances, archived_max=0)
        result = check_prefixes(protocol, options, factory=factory)
        assert result.run_violations == []  # no crash lands there in the run itself
        assert result.failures, seed
        failure = result.failures[0]
        assert failure["property"] == "no-duplication"
        # kept: the records' erasure, not the watermark written after it
        kept_keys = failure["keys"][: failure["kept"]]
        assert any("#delivered:" in key for key in kept_keys)
        assert failure["keys"][-1].endswith(f"#low:{failure['keys'][-1][-1]}")
        assert all("#low:" not in key for key in kept_keys)


def test_every_prefix_of_a_small_raft_kv_run_restarts_correctly() -> None:
    workload = KvWorkload(clients=2, ops=12, membership_every_us=0)
    options = kv_options(1, 3, ("crash",), workload)
    result = check_prefixes("raft:snapshot=4", options, f=1)
    assert result.ok, (result.failures, result.run_violations)
    assert result.states_checked > 100
    assert result.run_counters["raft_compactions"] > 0


def test_explore_crash_prefixes_from_the_command_line(capsys: Any) -> None:
    status = main(["explore", "bracha", "--nodes", "4", "--seed", "2", "--requests", "2",
                   "--crash-prefixes", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert status == 0
    assert report["violations"] == []
    assert report["exhaustive"] is True
    assert report["states_checked"] > report["steps_checked"] > 0
    assert report["reproduce"].endswith("--seed 2 --crash-prefixes")


def test_the_watermark_last_variant_is_caught_from_the_command_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``replicaio explore bracha-watermark-last --crash-prefixes``: the registered
    variant runs small (window 4, 2 retained, archive off), so a four-request run
    collects and the crash-prefix mode finds the duplicate delivery."""
    code = main(["explore", "bracha-watermark-last", "--nodes", "4", "--requests", "4",
                 "--seed", "1", "--crash-prefixes", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == EXIT_VIOLATION
    assert report["violations"] and all(
        violation["property"] == "no-duplication" for violation in report["violations"]
    ), report["violations"]
