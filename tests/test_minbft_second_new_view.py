"""A faulty primary's second NEW-VIEW of a view, shown to a backup whose
stream of it was resumed past the first (docs/minbft.md, *A second NEW-VIEW
of a view*).

n=3, replica 1 Byzantine (``minbft_second_new_view``). Replica 0 (primary of
view 0) is cut off; replicas 1 and 2 change to view 1, whose NEW-VIEW (from
1's and 2's VIEW-CHANGEs) they certify and execute, then go on executing new
batches. Replica 0 comes back and moves to view 1 too; replica 1 kept its
NEW-VIEW from it, and now certifies, with its own USIG, a fresh CHECKPOINT of
an old stable checkpoint (to ``Resume`` 0's stream past the first NEW-VIEW),
a second NEW-VIEW of view 1 from its own and 0's VIEW-CHANGEs (0's shows the
PREPAREs it sent just before the cut, so the header differs) and its
certified NEW-VIEW-COMMIT of it. A resumed stream that took any NEW-VIEW of a
view from the receiver's on (the broken variant
``minbft-resume-forgets-new-views``, the rule before) let replica 0 commit,
which with n = 3 completes a second certificate of view 1, and execute
batches where replica 2 executed others. Now a ``Resume`` carries the USIG's
attestation made at the CHECKPOINT's counter (the highest view of a NEW-VIEW
it had certified), and the resumed stream takes no NEW-VIEW of a view up to
it."""

from __future__ import annotations

import pytest
from minbft_lies import properties, run_cut, swarm_seed

from replicaio.sim.options import Partition
from replicaio.sim.simulator import SimResult

CUT_US = 300_000
CUT_LENGTH_US = 1_500_000
LIE = ("minbft_second_new_view",)
BROKEN = "minbft-resume-forgets-new-views"


def run(seed: int, adversary: tuple[str, ...], protocol: str = "minbft") -> SimResult:
    return run_cut(seed, adversary, protocol, liar=1,
                   partitions=(Partition(CUT_US, CUT_US + CUT_LENGTH_US, (0,), True),))


@pytest.mark.parametrize("seed", [1, 2])
def test_a_second_new_view_past_a_resume_is_refused(seed: int) -> None:
    lied = run(seed, LIE)
    assert lied.violations == [], lied.violations[:2]
    assert lied.stats["linearizable"] is True
    # The lie was told: the victim's stream resumed, the second NEW-VIEW refused.
    assert lied.counters.get("minbft_streams_resumed", 0) > 0
    assert lied.counters.get("minbft_rejected_new_view_skipped_view", 0) > 0


@pytest.mark.parametrize("seed", [1, 2])
def test_without_the_attestation_the_second_header_is_certified_and_executed(
    seed: int,
) -> None:
    lied = run(seed, LIE, BROKEN)
    assert "agreement" in properties(lied)


def test_the_same_schedule_without_the_lie_is_safe() -> None:
    honest = run(1, ())
    assert honest.violations == []
    assert honest.stats["linearizable"] is True


@pytest.mark.parametrize("seed", [29, 45])
def test_the_swarm_with_the_lie_forced_catches_the_variant_and_passes_the_protocol(
    seed: int,
) -> None:
    """Seeds of `replicaio swarm minbft --nodes 3 --byzantine 1 --adversary
    minbft_second_new_view --faults crash,partition,loss,dup,reorder`: the
    variant fails agreement on 12 of 300 (22 and 40 the first two until
    MinBFT's reads shared barriers, 2026-12-05; 4 and 21 since; 21 and 45
    since backups forward what they wait for on suspicion, 2026-12-06; 29, 45
    and 47 of the first 120 since ADR 0035, the same day), the protocol passes
    all 300."""
    broken, fixed = swarm_seed(seed, LIE, BROKEN)
    assert "agreement" in properties(broken)
    assert fixed.violations == []
