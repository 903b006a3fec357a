"""A MinBFT replica whose USIG state may be lost (issue 11's recovery, issue 9's
storage faults; ``replicaio/protocols/minbft/recovery.py``, ADR 0026): after
storage damage it stays inert until the operator admits a new USIG epoch
(``replicaio/sim/operator.py`` in the simulator), its peers switch its stream
to the admitted epoch, it withholds its votes until its stable checkpoint
passes every peer's report, then votes again. Targeted simulations with real
damage to its simulated disk; the admission's certificate per scheme."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from msgspec.structs import replace as replace_struct
from test_pbft_pitfalls import at

from replicaio.protocols.minbft.minbft import Minbft
from replicaio.protocols.minbft.recovery import RECOVERING_KEY, USIG_LOST_KEY
from replicaio.protocols.minbft.usig import (
    USIG_SIMULATION_SECRET,
    Ed25519KeyedUsigScheme,
    Ed25519UsigScheme,
    HmacUsigScheme,
    UsigAdmission,
    sign_admission,
)
from replicaio.sim.kv_harness import KvWorkload, kv_options
from replicaio.sim.options import Crash, Partition, SimOptions
from replicaio.sim.simulator import Simulator
from replicaio.smr.protocol import SmrProtocol

DAMAGE_AT_US = 300_000


def quiet(seed: int, nodes: int = 3, **workload: Any) -> SimOptions:
    """No random fault: each test adds its schedule."""
    return kv_options(seed, nodes, (), KvWorkload(**workload), protocol="minbft")


def simulator(options: SimOptions) -> Simulator:
    return Simulator("minbft", options, f=(options.nodes - 1) // 2, record=False)


def minbft_of(sim: Simulator, node: int) -> Minbft | None:
    core = sim.nodes[node].core
    if core is None:
        return None
    protocol = core.protocol
    assert isinstance(protocol, SmrProtocol)
    ordering = protocol.ordering
    assert isinstance(ordering, Minbft)
    return ordering


def state(sim: Simulator, node: int) -> str:
    """What ``node`` is doing: down, inert, withholding or voting (with its epoch)."""
    minbft = minbft_of(sim, node)
    if minbft is None:
        return "down"
    if minbft.usig is None:
        return "inert"
    epoch = minbft.usig.id().epoch
    return f"{'withholding' if minbft.withholding else 'voting'} {epoch}"


def damaged(options: SimOptions, *crashes: Crash, lose_synced: int = 40) -> SimOptions:
    """Replica 1's storage loses its last ``lose_synced`` synced writes at
    ``DAMAGE_AT_US``; then ``crashes``."""
    return replace(options, crashes=(
        Crash(1, DAMAGE_AT_US, 50_000, False, 0, disk="lost_writes", lose_synced=lose_synced),
        *crashes,
    ))


@pytest.mark.parametrize("lose_synced", [40, 100_000])
def test_a_replica_with_damaged_storage_waits_for_the_operator_then_rejoins(
    lose_synced: int,
) -> None:
    """A lost tail (40 writes) or the whole log: replica 1 starts inert (no
    message; its USIG counter may have gone back), the operator admits epoch 1
    and restarts it, its peers switch its stream, it withholds until its stable
    checkpoint passes their reports, then votes; every operation linearizable."""
    sim = simulator(damaged(quiet(1, ops=1200, clients=6), lose_synced=lose_synced))
    seen: list[str] = []
    for time_us in (DAMAGE_AT_US + 60_000, 4_000_000):
        at(sim, time_us, lambda: seen.append(state(sim, 1)))
    result = sim.run()
    assert result.violations == []
    assert result.stats["linearizable"] is True
    assert seen == ["inert", "voting 1"]
    counters = result.counters
    assert counters["storage_damage_reported"] == 1
    assert counters["minbft_usig_lost"] == 1
    assert result.stats["operator_usig_admissions"] == 1
    assert counters["minbft_usig_new_epoch"] == 1
    assert counters["minbft_stream_epoch_switched"] == 2  # both peers
    assert counters["minbft_recovery_target_set"] == 1
    assert counters["minbft_recovered_usig"] == 1
    for peer in (0, 2):
        minbft = minbft_of(sim, peer)
        assert minbft is not None and minbft.streams[1].epoch == 1


def test_a_plain_restart_before_the_admission_stays_inert() -> None:
    """The ``usig_lost`` record outlives the damage report (cleared once the
    start step is synced): restarted again before the operator acted, the
    replica is still inert and never resumes its old USIG; the admission then
    starts epoch 1. A restart while withholding keeps withholding."""
    options = damaged(quiet(2, ops=1200, clients=6),
                      Crash(1, DAMAGE_AT_US + 52_000, 2_000, False, 0))
    sim = simulator(options)
    seen: list[tuple[str, bool, bool]] = []

    def look() -> None:
        core = sim.nodes[1].core
        stored = {} if core is None else core.storage
        names = " ".join(stored)
        seen.append((state(sim, 1), USIG_LOST_KEY in names, RECOVERING_KEY in names))

    for time_us in (DAMAGE_AT_US + 51_000, DAMAGE_AT_US + 56_000, 4_000_000):
        at(sim, time_us, look)
    result = sim.run()
    assert result.violations == []
    assert seen[:2] == [("inert", True, False), ("inert", True, False)]
    assert seen[2] == ("voting 1", False, False)
    assert result.counters["minbft_usig_lost"] == 2
    assert result.counters["minbft_usig_new_epoch"] == 1


def test_the_admission_is_the_operator_s_for_every_scheme() -> None:
    """An admission verifies only under the operator's key, for the replica and
    epoch it names; a replica's own USIG key cannot make one."""
    hmac_scheme = HmacUsigScheme(USIG_SIMULATION_SECRET)
    derived = Ed25519UsigScheme(USIG_SIMULATION_SECRET)
    for scheme in (hmac_scheme, derived):
        admission = scheme.admit(1, 3)
        assert scheme.check_admission(admission)
        assert not scheme.check_admission(replace_struct(admission, epoch=4))
        assert not scheme.check_admission(replace_struct(admission, replica=2))
        assert not scheme.check_admission(replace_struct(admission, certificate=b"\x00" * 32))
    assert not hmac_scheme.check_admission(HmacUsigScheme(b"another secret of 16+").admit(1, 3))
    operator = bytes(range(32))
    node_key = bytes(range(1, 33))
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = Ed25519PrivateKey.from_private_bytes(node_key).public_key().public_bytes_raw()
    operator_public = Ed25519PrivateKey.from_private_bytes(operator).public_key() \
        .public_bytes_raw()
    keyed = Ed25519KeyedUsigScheme(0, node_key, {0: public}, operator_public)
    assert keyed.check_admission(sign_admission(operator, 0, 1))
    assert not keyed.check_admission(sign_admission(node_key, 0, 1))  # the replica's own key
    assert not Ed25519KeyedUsigScheme(0, node_key, {0: public}).check_admission(
        sign_admission(operator, 0, 1))  # no operator key configured: no admission
    assert not keyed.check_admission(UsigAdmission(0, 1, b"junk"))
    assert not keyed.check_admission(object())


def forgotten_commitments_options(seed: int) -> SimOptions:
    """n = 3, no Byzantine replica. Replica 2 is cut off while 0 (primary) and
    1 order the clients' batches (1's COMMITs make them execute at 0); then 1's
    storage loses everything, the operator admits epoch 1 for it, and the
    primary crashes before its own timer could end the view (it would, its
    PREPAREs no longer executing: test_minbft_unfollowable_view.py) and stays
    down after 2 comes back. A VIEW-CHANGE from 1, which forgot its
    commitments, with 2's would let view 1 decide other batches at numbers 0
    executed."""
    return replace(
        quiet(seed, ops=600, clients=4),
        safety_us=6_000_000, liveness_us=36_000_000,
        partitions=(Partition(50_000, 1_000_000, (2,), True),),
        crashes=(
            Crash(1, 700_000, 50_000, False, 0, disk="lost_writes", lose_synced=100_000),
            Crash(0, 800_000, 2_500_000, False, 0),
        ),
    )


# The variant breaks on 2, 4, 5, 8, 13 of 1..13 (since reads share barriers; 1, 2, 4, 8, 12 before;
# 6 and 10 of 1..10 since backups forward what they wait for on suspicion, 2026-12-06;
# 2, 4 and 6 of 1..6 since MinBFT's timers back off as PBFT's, ADR 0046).
@pytest.mark.parametrize("seed", [2, 6])
def test_a_replica_under_a_new_epoch_withholds_what_it_may_have_forgotten(seed: int) -> None:
    """Replica 1 sends no VIEW-CHANGE while it withholds (a peer is down, so its
    target is not even set): the view change waits for the primary, and no
    wrong answer is given. The variant that votes at once under the new
    epoch breaks agreement."""
    result = simulator(forgotten_commitments_options(seed)).run()
    assert result.violations == []
    assert result.counters["minbft_usig_new_epoch"] == 1
    assert result.counters["minbft_withheld_view_change"] >= 1
    broken = Simulator("minbft-vote-while-recovering", forgotten_commitments_options(seed),
                       f=1, record=False).run()
    assert "agreement" in {violation["property"] for violation in broken.violations}
