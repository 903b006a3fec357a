"""A checker is only trusted once a deliberately broken protocol makes it fail:
each broken PBFT variant (``replicaio.testing.variants.pbft``) is caught, on a
pinned seed of the default swarm (n=4, one Byzantine replica, every fault
kind), by the property it breaks; the real protocol passes the same run.
Seeds to first failure over longer sweeps: docs/benchmarks.md."""

from __future__ import annotations

import pytest

from replicaio.assembly import SERVICES
from replicaio.sim.kv_harness import KvWorkload, kv_options
from replicaio.sim.simulator import Simulator
from replicaio.testing.variants.pbft import PBFT_VARIANTS

ALL_FAULTS = ("crash", "partition", "loss", "dup", "reorder")

# variant -> (seed, forced adversary or None for the seed's own draw)
PINNED: dict[str, tuple[int, tuple[str, ...] | None]] = {
    # 35 -> 6 when reads began to share barrier batches (other numbers, other runs).
    "pbft-commit-off-by-one": (6, ("pbft_drop_prepared",)),
    # 3 -> 4 when SmrParams gained batch_fill_min (an int the adversary's probe
    # takes, so its forged values and draws moved; PBFT's steps did not: seeds
    # 4, 7, 9, 10, 13 of 1-15 catch it, the real protocol passes each).
    # Caught by the audit since ADR 0071 (a prepared slot's PREPAREs recounted),
    # before the liveness check at the end of the run that caught it until then.
    "pbft-prepare-off-by-one": (4, None),
    "pbft-forget-pre-prepares": (15, None),
    # 10 -> 5 with one batch in flight (PBFT's default; seeds 1-4 miss it).
    "pbft-no-view-change-resend": (5, None),
    "pbft-ignore-prepared-set": (4, None),
    # Re-pinned from 4 when SMR's replica gained int attributes (snapshots sized
    # by bytes): the adversary's pool (``sim/adversary.py`` ``probe``) takes every
    # int attribute of the correct replicas, so any new one shifts the forged
    # values and every later draw; PBFT's own steps are unchanged (seed 4 is still
    # caught with that attribute a string). The variant is rare in the plain swarm
    # (seeds 1-67 miss it now); its targeted schedule is test_pbft_storage_damage.
    # Then 68 -> 118 when the backups' request timer stopped replacing busy
    # primaries (fewer view changes; seeds 1-117 miss it).
    # Then 118 -> 68 when reads began to share barrier batches (seeds 1-67 miss
    # it; 179 is the next). Since backups forward what they wait for on
    # suspicion (2026-12-06) seeds 1-418 miss it: caught by its targeted
    # schedule only (CAUGHT_ELSEWHERE).
    # The client's side: a Byzantine replica answering unordered reads as the
    # lagging correct replica would (the variant's own runs draw it, seed 1 of
    # its swarm fails alike; forced here, so the real client runs the same run).
    # 1 -> 3 with one batch in flight (PBFT's default).
    "pbft-read-only-f-plus-1": (3, ("pbft_lagging_reads",)),
    # The request-timer bugs of ADR 0074's finding 3 and its sibling, caught by
    # ``prompt`` with slow links (2026-12-08, seeds 1-300 of ``swarm VARIANT
    # --nodes 4 --byzantine 1 --faults crash,partition,loss,dup,reorder,slow``):
    # watches-refused fails 246 only (the seed that found the bug),
    # watches-executed 63, 124, 159, 172, 246 and 254.
    "pbft-watches-refused": (246, None),
    "pbft-watches-executed": (63, None),
}
# variant -> the test whose targeted run catches it (a loaded run the default
# swarm does not draw: the request timer matters only once a batch round takes
# longer than the timer)
CAUGHT_ELSEWHERE = {
    # Four replicas are 3f+1 exactly, where 2f+1 is right: caught with five.
    "pbft-quorum-2f-plus-1": "tests/test_pbft_quorum.py::"
        "test_five_replicas_with_a_byzantine_one_agree_and_2f_plus_1_does_not",
    # The client's 2f+1 whatever n: caught with five and six replicas.
    "pbft-read-only-2f-plus-1": "tests/test_pbft_read_only.py::"
        "test_more_replicas_than_3f_plus_1_read_on_quorums_that_meet",
    "pbft-trust-damaged-tail":
        "tests/test_pbft_storage_damage.py::test_a_replica_that_lost_its_votes_withholds_them",
    "pbft-request-timer-not-doubled":
        "tests/test_pbft_sim.py::test_a_request_timer_that_never_doubles_is_caught_by_liveness",
    # Views counted over a loaded run with an 8 ms timer (no property breaks:
    # the older rules replace more primaries, every run stays safe and live).
    "pbft-backoff-reset-by-view-start": "tests/test_pbft_timer_backoff.py::"
        "test_a_timer_shorter_than_a_round_backs_off_until_views_hold",
    "pbft-backoff-reset-by-one-batch": "tests/test_pbft_timer_backoff.py::"
        "test_one_batch_executed_does_not_reset_the_back_off",
    # One client with long think times and the primaries cut off in turn (the
    # default swarm's clients execute four batches in most views).
    "pbft-backoff-idle-not-progress": "tests/test_pbft_timer_backoff.py::"
        "test_a_group_with_sparse_traffic_counts_idle_timeouts_as_progress",
    "pbft-backoff-never-reset": "tests/test_pbft_timer_backoff.py::"
        "test_a_group_with_sparse_traffic_counts_idle_timeouts_as_progress",
    # Only with every client through one node and the primary kept down (the
    # default clients send a retry to every replica).
    "pbft-suspects-alone": "tests/test_primary_down_one_front.py::"
        "test_a_single_group_through_one_front_does_not_stall_on_a_lone_suspicion",
    # Only the audit sees it (ADR 0071): there with the other checkers' verdicts.
    "pbft-gc-keeps-stable-number": "tests/test_pbft_audit.py::"
        "test_the_swarm_finds_a_garbage_collection_off_by_one_that_no_other_checker_sees",
}
# variant -> its fault kinds, if more than ALL_FAULTS (disk faults: a replica
# whose storage lost writes, besides the Byzantine one; slow links: the sweep
# that found the request timer's bug)
FAULTS = {
    "pbft-trust-damaged-tail": (*ALL_FAULTS, "disk"),
    "pbft-watches-refused": (*ALL_FAULTS, "slow"),
    "pbft-watches-executed": (*ALL_FAULTS, "slow"),
}
# variant -> the real protocol it is compared with, if not plain "pbft" (the
# broken client's real counterpart reads unordered with 2f+1)
REAL = {"pbft-read-only-f-plus-1": "pbft:reads=1"}


def violations(
    protocol: str, seed: int, adversary: tuple[str, ...] | None,
    faults: tuple[str, ...] = ALL_FAULTS,
) -> set[str]:
    options = kv_options(
        seed, 4, faults, KvWorkload(nemesis_every_us=2_000_000), byzantine=1,
        adversary=adversary, protocol="pbft",
    )
    result = Simulator(protocol, options, f=1, record=False).run()
    return {violation["property"] for violation in result.violations}


def test_every_variant_is_pinned_and_registered() -> None:
    assert set(PINNED) | set(CAUGHT_ELSEWHERE) == set(PBFT_VARIANTS)
    assert not set(PINNED) & set(CAUGHT_ELSEWHERE)
    for name in PBFT_VARIANTS:
        assert SERVICES[name].broken and SERVICES[name].family == "pbft"


@pytest.mark.parametrize("name", sorted(PINNED))
def test_the_swarm_catches_the_variant_and_passes_the_real_protocol(name: str) -> None:
    seed, adversary = PINNED[name]
    faults = FAULTS.get(name, ALL_FAULTS)
    assert PBFT_VARIANTS[name].caught_by in violations(name, seed, adversary, faults)
    assert violations(REAL.get(name, "pbft"), seed, adversary, faults) == set()
