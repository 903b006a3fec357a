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
