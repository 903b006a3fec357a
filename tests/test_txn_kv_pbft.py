"""The sharded Redis store over PBFT groups (``txn-kv-pbft``), simulated (issue 12).

The same key-value groups (``KvTxnStore``) and Redis-shaped transactions as
``txn-kv`` (RPUSH/LRANGE, INCR/GET, WATCH as version checks), ordered by PBFT:
every vote, decision and acknowledgement certified (ADR 0027), every attempt
signed by its client and checked by every group (ADR 0029), copies of signed
attempts refused by the groups' nonce windows (ADR 0030). One Byzantine node
drives as a liar, an alterer or a replayer; the histories stay strictly
serializable and the bank total holds."""

from __future__ import annotations

from typing import Any

import pytest

from replicaio.services.txn.protocol import TxnNode
from replicaio.sim.simulator import Simulator
from replicaio.sim.txn_harness import TxnWorkload, txn_options

BFT_FAULTS = ("crash", "loss", "dup", "reorder")


def run(protocol: str, seed: int, workload: TxnWorkload,
        adversary: tuple[str, ...] | None = None) -> tuple[Any, Simulator]:
    options = txn_options(seed, 4, BFT_FAULTS, workload, byzantine=1, adversary=adversary)
    simulator = Simulator(protocol, options)
    return simulator.run(), simulator


def store_counter(simulator: Simulator, name: str) -> int:
    total = 0
    for node in simulator.nodes:
        if node.core is not None:
            protocol = node.core.protocol
            assert isinstance(protocol, TxnNode)
            total += sum(store.counters.get(name, 0) for store in protocol.stores)
    return total


@pytest.mark.parametrize(("workload", "adversary"), [
    ("list-append", ("txn_lying_driver",)),
    ("bank", ("txn_altering_driver",)),
])
def test_key_value_groups_over_pbft_hold_against_a_byzantine_driver(
        workload: str, adversary: tuple[str, ...]) -> None:
    committed = 0
    for seed in (1, 2):
        result, simulator = run("txn-kv-pbft:groups=3", seed, TxnWorkload(workload=workload),
                                adversary)
        assert result.ok, (seed, result.violations)
        committed += result.stats["outcomes"].get("committed", 0)
        assert store_counter(simulator, "refused_unsigned") == 0  # every driver signs
    assert committed > 0


def test_key_value_groups_over_pbft_refuse_replayed_attempts() -> None:
    """Small tables (remember=16) and a replaying driver: copies are refused by the
    nonce windows, and the history has no element appended twice."""
    # (Seed 3 until 2026-12-06: drivers that ask a commit again changed its
    # schedule, and its three copies all came while the records remembered them.)
    result, simulator = run("txn-kv-pbft:groups=3,remember=16", 1,
                            TxnWorkload(transactions=300), ("txn_replaying_driver",))
    assert result.ok, result.violations
    assert result.counters.get("txn_requests_replayed", 0) > 0
    assert store_counter(simulator, "refused_begin_replayed") + store_counter(
        simulator, "refused_replayed") > 0
