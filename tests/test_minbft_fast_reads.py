"""MinBFT's read-only optimisation at n = 2f+1 with Byzantine replicas
(docs/minbft.md, *Unordered reads*): unordered reads on every replica, a fast
reader's writes on f+1 (``replicaio.smr.client.fast_quorums``).

Before 2026-12-07 both took ceil((n + f + 1) / 2), which at n = 2f+1 is more
than the n - f correct replicas: a fast reader's write waited for a silent
replica, and ``swarm minbft:reads=1 --nodes 3 --byzantine 1 --adversary
pbft_lagging_reads --faults crash,partition,loss,dup,reorder`` failed liveness
on seeds 86 and 91. The broken client ``minbft-fast-write-quorum-f`` writes on
one reply fewer (f): the reply may be the faulty replica's alone, which then
answers a read as the correct replicas that had not run the write yet, and
the checker finds the stale read."""

from __future__ import annotations

import pytest

from replicaio.sim.kv_harness import KvWorkload, kv_options
from replicaio.sim.simulator import SimResult, Simulator

FAULTS = ("crash", "partition", "loss", "dup", "reorder")


def run(protocol: str, seed: int, nodes: int = 3, f: int = 1) -> SimResult:
    options = kv_options(seed, nodes, FAULTS, KvWorkload(), byzantine=f,
                         adversary=("pbft_lagging_reads",), protocol=protocol)
    return Simulator(protocol, options, f=f, record=False).run()


@pytest.mark.parametrize("nodes, f, seed", [(3, 1, 86), (3, 1, 91), (5, 2, 86)])
def test_fast_readers_writes_stay_live_with_f_silent_or_lying(
    nodes: int, f: int, seed: int
) -> None:
    """Seeds 86 and 91 of three replicas failed liveness with the symmetric
    quorums (a write waiting for all three replicas' replies); with reads on
    n and writes on f+1 every client completes after the heal and the history
    is linearizable, reads answered unordered and some falling back to the
    log; likewise five replicas with two Byzantine ones."""
    result = run("minbft:reads=1", seed, nodes, f)
    assert result.violations == [], (seed, result.violations[:1])
    assert result.stats["linearizable"] is True
    assert result.counters.get("smr_reads_unordered", 0) > 0
    assert result.stats["client_unordered_fallbacks"] > 0


@pytest.mark.parametrize("nodes, f, seed", [(3, 1, 3), (3, 1, 8), (5, 2, 4)])
def test_a_write_quorum_one_too_small_reads_stale_values(nodes: int, f: int, seed: int) -> None:
    """R + W = n + f: the broken client's write completes on the faulty
    replica's reply alone, and a read on every replica (the faulty one lying as
    the most lagging correct one) returns a value older than that write. The
    real client passes the same runs."""
    broken = run("minbft-fast-write-quorum-f", seed, nodes, f)
    caught = {violation["property"] for violation in broken.violations}
    assert caught == {"linearizability"}, (seed, broken.violations[:1])
    result = run("minbft:reads=1", seed, nodes, f)
    assert result.violations == [], (seed, result.violations[:1])
