"""The agreement violation MinBFT's NEW-VIEW choice had, and the new-view
certificate that closes it (docs/minbft.md, *The NEW-VIEW choice*).

The choice ranks an entry of a higher view first. One Byzantine replica of
n=3 used to break that: as the primary of view 1 it never sends its
NEW-VIEW, and before its VIEW-CHANGE for view 2 it certifies, with its own
USIG, PREPAREs of view 1 for the numbers its log shows above its anchor,
each with another batch (``minbft_prepare_unseen_view``). The log is
contiguous and every entry verifies, so the new primary (correct) chose the
view-1 lies over the view-0 batches replica 0 executed, and replica 2, cut
off while 0 and 1 executed them, executed the lies.

Now a VIEW-CHANGE that shows an entry of a view above 0 must carry that
view's NEW-VIEW certificate (f+1 commitments to one NEW-VIEW header), and
view 1 has none: the Byzantine replica's VIEW-CHANGEs are refused and
counted, and the run is safe. The pre-fix rule is kept as the broken variant
``minbft-new-view-uncertified``, which the same schedule catches."""

from __future__ import annotations

import pytest
from minbft_lies import properties, run_cut, swarm_seed

from replicaio.sim.options import Partition
from replicaio.sim.simulator import SimResult

CUT_US = 300_000
LIE = ("minbft_prepare_unseen_view",)


def run(seed: int, adversary: tuple[str, ...], protocol: str = "minbft") -> SimResult:
    """Replica 2 cut off while 0 (primary of view 0) and 1 execute; then
    replica 0 cut off, so 1 and 2 change views without it."""
    return run_cut(seed, adversary, protocol, liar=1, partitions=(
        Partition(CUT_US, CUT_US + 400_000, (2,), True),
        Partition(CUT_US + 400_000, CUT_US + 3_000_000, (0,), True)))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_prepares_of_a_view_no_correct_replica_started_are_refused(seed: int) -> None:
    lied = run(seed, LIE)
    assert lied.violations == [], lied.violations[:2]
    assert lied.stats["linearizable"] is True
    assert lied.counters.get("minbft_new_view_conflicts_executed", 0) == 0
    # The lies were told, and the VIEW-CHANGEs showing them refused.
    assert lied.counters.get("minbft_rejected_view_change_uncertified_view", 0) > 0
    assert lied.counters.get("minbft_new_view_certified", 0) > 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_without_the_certificate_the_lies_outrank_an_executed_batch(seed: int) -> None:
    lied = run(seed, LIE, "minbft-new-view-uncertified")
    assert lied.counters.get("minbft_new_view_conflicts_executed", 0) > 0
    assert "agreement" in properties(lied)


def test_the_same_schedule_without_the_lies_is_safe() -> None:
    honest = run(1, ())
    assert honest.violations == []
    assert honest.stats["linearizable"] is True
    assert honest.counters.get("minbft_new_view_conflicts_executed", 0) == 0


@pytest.mark.parametrize("seed", [8, 19])
def test_the_swarm_with_the_lie_forced_catches_the_variant_and_passes_the_protocol(
    seed: int,
) -> None:
    """Seeds of `replicaio swarm minbft --nodes 3 --byzantine 1 --adversary
    minbft_prepare_unseen_view --faults crash,partition,loss,dup,reorder`:
    main before the certificate failed agreement on 10 of the first 100, the
    variant on 26 of 300; the protocol passes all 300. Pinned 8 and 13 until
    MinBFT's reads shared barriers (2026-12-05), which moved the schedules: the
    first two of 1..120 where the variant breaks agreement are 6 and 46; since
    backups forward what they wait for on suspicion (2026-12-06) 1, 14, 19,
    26, 31, 46, 64, 69 and 80 of 1..80; since MinBFT's timers back off as
    PBFT's (ADR 0046) 8, 19 and 26 are the first three of 1..26."""
    broken, fixed = swarm_seed(seed, LIE, "minbft-new-view-uncertified")
    assert "agreement" in properties(broken)
    assert fixed.violations == []
    assert fixed.counters.get("minbft_rejected_view_change_uncertified_view", 0) > 0
