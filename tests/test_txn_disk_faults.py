"""Disk faults on nodes of several groups (issue 12): a node's groups share its
storage, so a damaged disk (a lost suffix, a torn write, a log cut back to its
intact prefix) damages every group's log on it, and each group's replica must
recover its own, as a single-group node does (docs/transactions.md, *Disk
faults*)."""

from __future__ import annotations

from replicaio.assembly import damaged_disks_max, recovers_lost_state
from replicaio.sim.simulator import SimResult, Simulator
from replicaio.sim.txn_harness import TxnWorkload, takes_disk_faults, txn_options

FAULTS = ("crash", "partition", "loss", "dup", "reorder", "disk")


def test_transactional_factories_recover_lost_state() -> None:
    for name in ("txn", "txn-kv", "txn-pbft", "txn-kv-pbft", "txn-minbft", "txn-kv-minbft"):
        assert recovers_lost_state(name), name
        assert recovers_lost_state(f"{name}:groups=2"), name
    for name in ("txn", "txn-kv", "txn-pbft", "txn-kv-pbft", "txn-minbft", "txn-kv-minbft"):
        assert takes_disk_faults(name), name
    # f faults in all, Byzantine nodes included: the transaction harness excuses
    # no liveness (a PBFT service's checker does beyond f: up to f besides).
    assert damaged_disks_max("txn-pbft", 4, 0) == 1
    assert damaged_disks_max("txn-pbft", 4, 1) == 0 < damaged_disks_max("pbft", 4, 1)
    assert damaged_disks_max("txn-minbft", 5, 1) == damaged_disks_max("txn", 3, 0) == 1


def run(protocol: str, seed: int, nodes: int = 3) -> SimResult:
    options = txn_options(seed, nodes, FAULTS, TxnWorkload(), protocol=protocol)
    return Simulator(f"{protocol}:groups=3", options).run()


def test_every_raft_group_of_a_damaged_node_rejoins() -> None:
    """``replicaio sim txn:groups=3 --nodes 3 --faults
    crash,partition,loss,dup,reorder,disk --seed 56``: the damaged node's
    Raft replica of each group takes a new disk identity and rejoins as a
    learner, promoted once caught up; every property holds."""
    for protocol in ("txn", "txn-kv"):
        result = run(protocol, 56)
        assert result.ok, (protocol, result.violations)
        assert result.stats["disk_faults"] > 0
        assert result.counters.get("raft_storage_damaged_rejoining", 0) >= 3
        assert result.counters.get("raft_learners_promoted", 0) > 0


def test_the_swarm_finds_a_repair_done_for_the_first_group_only() -> None:
    """``replicaio swarm txn-raft-first-group-repairs --groups 3 --nodes 3
    --faults crash,partition,loss,dup,reorder,disk --seeds 60`` fails 47 of
    60 seeds (durable_state, election_safety, ...); seed 56: two leaders of
    one term in a group whose replica voted again with the vote it lost."""
    result = run("txn-raft-first-group-repairs", 56)
    assert not result.ok
    assert "election_safety" in {violation["property"] for violation in result.violations}


def test_a_pbft_group_with_a_withholding_replica_does_not_stall() -> None:
    """``replicaio sim txn-pbft:groups=3 --nodes 4 --faults
    crash,partition,loss,dup,reorder,disk --seed 20``: node 2's disk is
    damaged again and again, so in every group its replica withholds its votes
    (docs/pbft.md) and only 2f+1 replicas vote. In group 0 the primary lost a
    COMMIT of its view for number 34 that the two others had executed (one in
    the view before, one before a restart that kept no COMMITs of its own);
    nothing moved it, and a transaction's locks stayed held for the whole
    liveness phase (``locks_released``). The replicas that executed 34 now
    vouch for it with a COMMIT of the current view once the primary's STATUS
    shows it stuck there (``NormalCase.vouch_executed``). The variant without
    that (``txn-pbft-no-vouch``, the code before) stalled on this seed until
    replicas took their view's NEW-VIEW PRE-PREPAREs once their window reached
    them (``ViewChanges.accept_carried``, 2026-12-06), which now moves it there
    too; ``swarm txn-pbft-no-vouch:groups=3 --nodes 4 --faults
    crash,partition,loss,dup,reorder,disk --seeds 60`` then failed seed 43 only
    (group 1 left with an open record), which the vouching passes. Since a
    backup's request timer restarts when it executes something (2026-12-06)
    the variant passes seed 43 too, and seeds 1-200 of that swarm (and 1-60 of
    ``txn-pbft-no-vouch:fronts=1 --ops-max 1 --faults ...,disk,degraded``): no
    seed catches it now; the real protocol's seeds stay pinned."""
    result = run("txn-pbft", 20, nodes=4)
    assert result.ok, result.violations
    assert result.counters.get("pbft_storage_damaged_withholding", 0) > 0
    assert result.counters.get("pbft_executed_vouched", 0) > 0
    fixed = run("txn-pbft", 43, nodes=4)
    assert fixed.ok, fixed.violations
    assert fixed.counters.get("pbft_executed_vouched", 0) > 0
