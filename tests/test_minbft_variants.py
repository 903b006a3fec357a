"""Each broken MinBFT variant (``replicaio.testing.variants.minbft``) is caught
by the agreement checker on a pinned seed of the default swarm (n=3, one
Byzantine replica, every fault kind); the real protocol passes the same run.
A quorum of f commitments lets two batches execute at one number; a USIG
that writes its counter after releasing the UI gives one value to two
messages after a crash (the trusted component's one duty)."""

from __future__ import annotations

import pytest

from replicaio.assembly import SERVICES
from replicaio.sim.kv_harness import KvWorkload, kv_options
from replicaio.sim.simulator import Simulator
from replicaio.testing.variants.minbft import MINBFT_VARIANTS

ALL_FAULTS = ("crash", "partition", "loss", "dup", "reorder")
PINNED: dict[str, int] = {  # variant -> the first seed its agreement breaks on
    "minbft-commit-off-by-one": 1,
    "minbft-usig-late-write": 12,
}
# Variants caught by a targeted schedule instead (the test that pins their seeds).
TARGETED: dict[str, str] = {
    "minbft-vote-while-recovering": "test_minbft_recovery.py::"
    "test_a_replica_under_a_new_epoch_withholds_what_it_may_have_forgotten",
    "minbft-new-view-uncertified": "test_minbft_new_view_gap.py::"
    "test_without_the_certificate_the_lies_outrank_an_executed_batch",
    "minbft-resume-forgets-new-views": "test_minbft_second_new_view.py::"
    "test_without_the_attestation_the_second_header_is_certified_and_executed",
    "minbft-anchor-unattested": "test_minbft_fresh_anchor.py::"
    "test_without_the_attested_anchor_a_correct_replica_executes_other_batches",
    "minbft-quorum-f-plus-one": "test_minbft_quorum.py::"
    "test_four_replicas_agree_and_the_paper_count_does_not",
    "minbft-log-from-anchor": "test_minbft_decided_before_anchor.py::"
    "test_without_the_decided_mark_a_correct_replica_executes_other_batches",
    "minbft-suspects-alone": "test_primary_down_one_front.py::"
    "test_a_single_group_through_one_front_does_not_stall_on_a_lone_suspicion",
    **{name: "test_minbft_one_front_stalls.py::"
       "test_the_swarm_finds_each_old_rule_and_the_protocol_passes" for name in (
           "minbft-joins-without-view-change", "minbft-primary-gives-up-alone",
           "minbft-untaken-decisions")},
    "minbft-request-timer-oldest": "test_minbft_request_timer.py::"
    "test_a_queue_longer_than_the_request_timer_does_not_replace_a_correct_primary",
    "minbft-backoff-reset-by-view-start": "test_minbft_timer_backoff.py::"
    "test_a_timer_shorter_than_a_round_backs_off_until_views_execute",
    "minbft-backoff-reset-by-one-batch": "test_minbft_timer_backoff.py::"
    "test_one_batch_executed_does_not_reset_the_back_off",
    "minbft-backoff-never-reset": "test_minbft_timer_backoff.py::"
    "test_a_group_with_sparse_traffic_replaces_each_cut_off_primary",
    "minbft-renumbers-after-restart": "test_minbft_one_front_stalls.py::"
    "test_a_restarted_primary_numbers_above_the_new_view",
    "minbft-backoff-idle-not-progress": "test_minbft_timer_backoff.py::"
    "test_a_group_with_sparse_writes_counts_idle_timeouts_as_progress",
    "minbft-fast-write-quorum-f": "test_minbft_fast_reads.py::"
    "test_a_write_quorum_one_too_small_reads_stale_values",
    # Only the audit sees them (ADR 0071): pinned there with the other checkers' verdicts.
    **{name: "test_minbft_audit.py::test_the_swarm_finds_what_only_the_audit_sees"
       for name in ("minbft-stream-stalls-after-view-change", "minbft-gc-keeps-stable-number")},
}


def properties_violated(protocol: str, seed: int) -> set[str]:
    workload = KvWorkload(nemesis_every_us=2_000_000)
    options = kv_options(seed, 3, ALL_FAULTS, workload, byzantine=1, adversary=None,
                         protocol="minbft")
    outcome = Simulator(protocol, options, f=1, record=False).run()
    return {violation["property"] for violation in outcome.violations}


def test_every_variant_is_pinned_and_registered() -> None:
    assert set(PINNED) | set(TARGETED) == set(MINBFT_VARIANTS)
    for name in MINBFT_VARIANTS:
        assert SERVICES[name].broken and SERVICES[name].family == "minbft"


@pytest.mark.parametrize("name", sorted(PINNED))
def test_the_swarm_catches_the_variant_and_passes_the_real_protocol(name: str) -> None:
    assert "agreement" in properties_violated(name, PINNED[name])
    assert properties_violated("minbft", PINNED[name]) == set()
