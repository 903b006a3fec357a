"""The read-only optimisation (Castro and Liskov, TOCS 2002, section 5.1.3) in
the simulator: ``pbft:reads=1`` clients send each read unordered to every
replica, accept 2f+1 matching answers from the replicas' current states, and
otherwise read again through the log (under a new number); writes then need
2f+1 matching replies. A Byzantine replica answers every client with a result
it gave earlier (``pbft_stale_reads``); the histories stay linearizable
(``replicaio.check.linearizability``); so do they against one answering as
the correct replica that executed least would (``pbft_lagging_reads``), which
the broken client accepting f+1 (``pbft-read-only-f-plus-1``) falls for. The
live gateway's side: ``tests/test_kv_gateway_cluster.py``."""

from __future__ import annotations

import pytest

from replicaio.sim.kv_harness import KvWorkload, kv_options
from replicaio.sim.simulator import SimResult, Simulator

FAULTS = ("crash", "partition", "loss", "dup", "reorder")
PROTOCOL = "pbft:reads=1"


def run(seed: int, adversary: str = "pbft_stale_reads", protocol: str = PROTOCOL) -> SimResult:
    options = kv_options(seed, 4, FAULTS, KvWorkload(), byzantine=1,
                         adversary=(adversary,), protocol=PROTOCOL)
    return Simulator(protocol, options, f=1, record=False).run()


def test_unordered_reads_outvote_a_replica_answering_stale_results() -> None:
    served = fallbacks = 0
    for seed in range(1, 5):
        result = run(seed)
        assert result.violations == [], (seed, result.violations)
        assert result.stats["linearizable"] is True
        served += result.counters.get("smr_reads_unordered", 0)
        fallbacks += result.stats["client_unordered_fallbacks"]
    assert served > 0  # the replicas answered reads without ordering them
    assert fallbacks > 0  # and some reads split (the liar, or lagging replicas): read again


def test_without_the_option_reads_are_ordered() -> None:
    options = kv_options(3, 4, FAULTS, KvWorkload(), byzantine=1,
                         adversary=("pbft_stale_reads",), protocol="pbft")
    result = Simulator("pbft", options, f=1, record=False).run()
    assert result.violations == []
    assert "smr_reads_unordered" not in result.counters
    assert result.stats["client_unordered_fallbacks"] == 0


def test_2f_plus_1_outvote_a_replica_answering_as_the_most_lagging_one() -> None:
    """Section 5.1.3's quorum, and the adversary that needs it: the Byzantine
    replica answers each unordered read as the correct replica that executed
    least would, so its lie matches a lagging replica's honest answer. With
    2f+1 the histories stay linearizable; with f+1 (the broken client) the
    same seeds read values overwritten before the read began."""
    # Found again with one batch in flight (PBFT's default), and again (9 for 8)
    # once backups forwarded what they wait for on suspicion (2026-12-06).
    for seed in (3, 5, 9):
        result = run(seed, "pbft_lagging_reads")
        assert result.violations == [], (seed, result.violations)
        assert result.stats["linearizable"] is True
        assert result.stats["client_unordered_fallbacks"] > 0  # the lie split a read
        broken = run(seed, "pbft_lagging_reads", "pbft-read-only-f-plus-1")
        caught = {violation["property"] for violation in broken.violations}
        assert caught == {"linearizability"}, (seed, broken.violations)



def run_n(protocol: str, nodes: int, seed: int) -> SimResult:
    options = kv_options(seed, nodes, FAULTS, KvWorkload(), byzantine=1,
                         adversary=("pbft_lagging_reads",), protocol=protocol)
    return Simulator(protocol, options, f=1, record=False).run()


# Found 2026-12-06 (``swarm pbft:reads=1 --adversary pbft_lagging_reads``, f = 1)
# while reads and a fast reader's writes took 2f+1 whatever n: five replicas
# read stale values on seeds 2, 6, 9, 12 of 1-12, six on 1, 6, 9, 11, 12, and
# MinBFT with five (f = 1) on 13 of seeds 1-20.
@pytest.mark.parametrize("protocol, nodes, seed", [
    ("pbft:reads=1", 5, 2), ("pbft:reads=1", 6, 1), ("pbft:reads=1", 6, 6),
    ("minbft:reads=1", 5, 2),
])
def test_more_replicas_than_3f_plus_1_read_on_quorums_that_meet(
    protocol: str, nodes: int, seed: int
) -> None:
    """With n > 3f+1 (n > 2f+1 for MinBFT), 2f+1 matching answers may all come
    from replicas that have not executed a write the client saw complete on
    2f+1 replies (six replicas: the faulty one and two correct ones complete
    the write, the faulty one and two of the three others answer the read): the unordered
    read and the fast reader's write each need ceil((n + f + 1) / 2), any two
    of which share f+1 replicas, a correct one among them (docs/pbft.md, *The
    read-only optimisation for any n*). The broken client still on 2f+1
    (``pbft-read-only-2f-plus-1``) reads a stale value on the same runs."""
    result = run_n(protocol, nodes, seed)
    assert result.violations == [], (seed, result.violations[:1])
    assert result.stats["linearizable"] is True
    assert result.counters.get("smr_reads_unordered", 0) > 0
    if protocol.startswith("pbft"):
        broken = run_n("pbft-read-only-2f-plus-1", nodes, seed)
        caught = {violation["property"] for violation in broken.violations}
        assert caught == {"linearizability"}, (seed, broken.violations[:1])
