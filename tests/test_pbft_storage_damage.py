"""A PBFT replica whose storage lost writes it had synced (issue 9, for the
BFT protocols; ``replicaio/protocols/pbft/recovery.py``): it withholds its
votes until a stable checkpoint passes every number it may have voted on,
then votes again. Targeted simulations: the schedule where trusting the
damaged tail breaks agreement (the ``pbft-trust-damaged-tail`` variant), and
the recovery of a replica with only crash faults around it."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import pytest
from test_pbft_pitfalls import at, pbft_of, quiet_options, simulator

from replicaio.protocols.pbft.recovery import RECOVERING_KEY
from replicaio.sim.options import Crash, Partition, SimOptions

CUT_AT_US = 900_000


def lost_votes_options(seed: int) -> SimOptions:
    """n=4. Replica 2 is cut off while 0 (primary), 1 and 3 order the clients'
    batches; then 1's storage loses its records (every synced write) and the
    primary crashes for 0.8 s. Replica 3 is Byzantine
    and sends VIEW-CHANGEs with empty P sets. A VIEW-CHANGE from 1 without the
    certificates it had, with 3's and 2's, would let the next view drop what 0
    executed."""
    return replace(
        quiet_options(seed),
        safety_us=5_000_000, liveness_us=35_000_000,
        byzantine=(3,), behaviours=("pbft_drop_prepared",),
        partitions=(Partition(100_000, CUT_AT_US, (2,), True),),
        crashes=(
            Crash(1, CUT_AT_US, 50_000, False, 0, disk="lost_writes", lose_synced=10_000),
            Crash(0, CUT_AT_US, 800_000, False, 0),
        ),
    )


# 2 -> 3 with one batch in flight (PBFT's default): seed 2's broken run no
# longer breaks agreement (seeds 1-11: the variant is caught on 7 of them).
@pytest.mark.parametrize("seed", [1, 3])
def test_a_replica_that_lost_its_votes_withholds_them(seed: int) -> None:
    """Byzantine replica and damaged replica together are more than f: the
    cluster waits (replica 1 sends no VIEW-CHANGE and, primary of view 1, no
    NEW-VIEW) until the primary is back, and no wrong answer is given. The
    variant that trusts its damaged tail votes at once: agreement breaks."""
    result = simulator(lost_votes_options(seed)).run()
    assert result.violations == []
    counters = result.counters
    assert counters["storage_damage_reported"] == 1
    assert counters["pbft_storage_damaged_withholding"] == 1
    assert counters["pbft_withheld_view_changes"] >= 1
    assert counters["pbft_withheld_new_views"] >= 1
    broken = simulator(lost_votes_options(seed), "pbft-trust-damaged-tail").run()
    assert "agreement" in {violation["property"] for violation in broken.violations}
    assert "pbft_storage_damaged_withholding" not in broken.counters


def test_a_damaged_replica_recovers_once_a_checkpoint_passes_its_window() -> None:
    """Only crash faults: replica 1 loses its last 40 synced writes, withholds
    (also across a plain restart: the ``recovering`` record), fixes its target
    from 2f+1 peers' STATUS, and votes again once its stable checkpoint reaches
    it; every client operation is linearizable."""
    options = replace(
        quiet_options(2, ops=1200, clients=6),
        crashes=(
            Crash(1, 300_000, 50_000, False, 0, disk="lost_writes", lose_synced=40),
            Crash(1, 360_000, 50_000, False, 0),
        ),
    )
    sim = simulator(options)
    seen: list[tuple[int, bool]] = []

    def look(time_us: int) -> None:
        seen.append((time_us, pbft_of(sim, 1).withholding))

    for time_us in (355_000, 420_000, 3_000_000):
        at(sim, time_us, partial(look, time_us))
    result = sim.run()
    assert result.violations == []
    assert seen == [(355_000, True), (420_000, True), (3_000_000, False)]
    counters = result.counters
    assert counters["storage_damage_reported"] == 1
    assert counters["pbft_storage_damaged_withholding"] == 1
    assert counters["pbft_recovered_from_storage_damage"] == 1
    assert pbft_of(sim, 1).stable_seq > pbft_of(sim, 1).params.log_size
    assert pbft_of(sim, 1).context.load(RECOVERING_KEY) is None
