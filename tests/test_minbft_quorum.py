"""MinBFT's quorums meet whatever n is. The paper runs n = 2f+1 replicas and
counts f + 1; the framework accepts n >= 2f+1 (``--nodes 4`` gives f = 1), and
with four replicas two quorums of f + 1 = 2 need not share a replica: found by
pbft28 (agreement broken, no fault and no Byzantine replica, on seeds 2, 3 and 5
of the 8 ms run of ``test_pbft_sim.py`` with MinBFT). A quorum is a majority,
n // 2 + 1: f + 1 when n = 2f+1, never more than the n - f correct replicas."""

from __future__ import annotations

import pytest
from test_pbft_sim import short_timer_options

from replicaio.protocols.minbft.minbft import Minbft
from replicaio.sim.simulator import Simulator


@pytest.mark.parametrize(("n", "f", "quorum"), [(3, 1, 2), (4, 1, 3), (5, 1, 3), (5, 2, 3),
                                                (6, 2, 4), (7, 3, 4)])
def test_a_quorum_is_a_majority_and_within_the_correct_replicas(
        n: int, f: int, quorum: int) -> None:
    replica = Minbft.__new__(Minbft)  # the count alone (no context, no USIG)
    replica.n, replica.f = n, f
    assert replica.quorum == quorum
    assert 2 * replica.quorum > n and replica.quorum <= n - f
    assert replica.quorum == f + 1 or n > 2 * f + 1


@pytest.mark.parametrize("protocol", ["minbft:view_timeout=8", "minbft-quorum-f-plus-one"])
def test_four_replicas_agree_and_the_paper_count_does_not(protocol: str) -> None:
    # four replicas, no fault, a short timer; seed 2 until MinBFT's timers
    # backed off as PBFT's (ADR 0046), which moved the run: 3 is the first of 1-3
    options = short_timer_options(3)
    timer = "" if protocol.endswith("=8") else ":view_timeout=8"
    outcome = Simulator(protocol + timer, options, f=1, record=False).run()
    broken = {violation["property"] for violation in outcome.violations}
    if protocol.startswith("minbft-quorum"):
        assert "agreement" in broken
    else:
        assert outcome.violations == [], outcome.violations[:2]
        assert outcome.stats["linearizable"] is True
