"""The broadcast family under storage faults (``--faults crash,disk``; issue 9): a
node whose storage lost writes abstains for good (``StorageLost``, docs/storage.md
and ``replicaio.protocols.broadcast.instances``): it never delivers an instance a
second time, never sends a second value where it sent one, takes no broadcast, and
counts as faulty; the others stay safe and live. A variant that goes on as usual
after the loss is caught (it delivers again)."""

from __future__ import annotations

import pytest

from replicaio.sim.options import SimOptions
from replicaio.sim.simulator import Simulator

FAULTS = ("crash", "disk")


def run(protocol: str, seed: int, nodes: int = 4) -> tuple[bool, list[str], dict[str, int]]:
    options = SimOptions.draw(seed, nodes, 0, FAULTS, protocol=protocol)
    result = Simulator(protocol, options, record=False).run()
    return result.ok, [v["property"] for v in result.violations], result.counters


@pytest.mark.parametrize("protocol", ["bracha", "echo", "beb"])
def test_a_node_that_lost_writes_abstains_and_the_rest_stay_safe_and_live(
    protocol: str,
) -> None:
    abstained = refused = ignored = 0
    for seed in range(1, 41):
        ok, violations, counters = run(protocol, seed)
        assert ok, (protocol, seed, violations)
        abstained += counters.get("broadcast_storage_lost_abstaining", 0)
        refused += counters.get("request_rejected_storage_lost", 0)
        ignored += counters.get("ignored_storage_lost", 0)
    assert abstained > 0  # the faults did hit, and the nodes reacted:
    assert refused > 0  # no broadcast taken (a sequence number could repeat)
    assert ignored > 0  # no instance opened (an ECHO could differ from the lost one)


def test_disk_faults_fall_on_at_most_f_of_a_byzantine_tolerant_cluster() -> None:
    for seed in range(1, 80):
        for nodes in (4, 7, 10):
            options = SimOptions.draw(seed, nodes, 1, FAULTS, protocol="bracha")
            disks = {crash.node for crash in options.crashes if crash.disk}
            assert len(disks) <= (nodes - 1) // 3 - 1
            assert not disks & set(options.byzantine)


def test_going_on_after_a_loss_is_caught() -> None:
    found: set[str] = set()
    for seed in range(1, 41):
        _, violations, _ = run("bracha-trust-damaged-disk", seed)
        found.update(violations)
    assert "no-duplication" in found, found
