"""The pitfalls that bit deployed PBFTs (issue 10), each a targeted simulation
named after it: the schedule that exposes it, and what must hold instead.
Where a pitfall is a missing mechanism, a broken variant without it
(``replicaio.testing.variants.pbft``) shows the same schedule catches it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from replicaio.assembly import protocol_factory
from replicaio.core.context import Context
from replicaio.protocols.pbft.pbft import Pbft
from replicaio.services.kv.state_machine import KeyValueStateMachine
from replicaio.sim.kv_harness import KvHarness, KvWorkload, kv_options
from replicaio.sim.options import Crash, Partition, SimOptions
from replicaio.sim.simulator import SimResult, Simulator
from replicaio.smr.protocol import SmrFactory, SmrProtocol


def quiet_options(seed: int, nodes: int = 4, **workload: Any) -> SimOptions:
    """A run without random faults: each test adds the one schedule it is about."""
    return kv_options(seed, nodes, (), KvWorkload(**workload), protocol="pbft")


def simulator(options: SimOptions, protocol: str = "pbft", **kwargs: Any) -> Simulator:
    return Simulator(protocol, options, f=(options.nodes - 1) // 3, record=False, **kwargs)


def pbft_of(sim: Simulator, node: int) -> Pbft:
    core = sim.nodes[node].core
    assert core is not None
    protocol = core.protocol
    assert isinstance(protocol, SmrProtocol)
    ordering = protocol.ordering
    assert isinstance(ordering, Pbft)
    return ordering


def at(sim: Simulator, time_us: int, callback: Callable[[], None]) -> None:
    harness = sim.harness
    assert isinstance(harness, KvHarness)
    api = harness.api
    assert api is not None
    api.call_at(time_us, callback)


def test_new_view_timer_starts_only_after_2f_plus_1_view_changes() -> None:
    """A backup cut off alone suspects the primary and moves to view 1, but with
    no 2f+1 VIEW-CHANGEs for view 1 it starts no new-view timer: it does not
    race through views 2, 3, ... on its own (section 4.5.2)."""
    options = replace(quiet_options(3), partitions=(Partition(100_000, 1_900_000, (3,), True),))
    sim = simulator(options)
    views: list[tuple[int, bool]] = []
    at(sim, 1_800_000, lambda: views.append((pbft_of(sim, 3).view, pbft_of(sim, 3).active)))
    result = sim.run()
    assert views == [(1, False)]
    assert result.violations == []


def test_view_change_is_resent_or_a_transient_partition_stalls_forever() -> None:
    """Fabric issue 1917: the VIEW-CHANGEs of a view change all lost to a
    transient partition. Re-sent, the view starts once it heals; never re-sent
    (the variant), the replicas wait for each other for ever."""
    options = replace(
        quiet_options(4), byzantine=(0,), behaviours=("pbft_silent_primary",),
        partitions=(Partition(300_000, 1_500_000, (1,), True),
                    Partition(300_000, 1_500_000, (2,), True)),
    )
    result = simulator(options).run()
    assert result.violations == []
    assert result.stats["pbft_view_max"] >= 1
    assert result.counters.get("pbft_view_change_resent", 0) > 0
    broken = simulator(options, "pbft-no-view-change-resend").run()
    assert [v["property"] for v in broken.violations] == ["liveness", "liveness"]


def lagging_run(seed: int) -> tuple[Simulator, SimResult]:
    """Replica 3 cut off while the others execute far more than L numbers, then
    the primary crashes: the view change mixes VIEW-CHANGEs whose stable
    checkpoints differ, and replica 3 must catch up by state transfer."""
    options = replace(
        quiet_options(seed, ops=1500, clients=6),
        partitions=(Partition(50_000, 1_200_000, (3,), True),),
        crashes=(Crash(0, 1_300_000, 2_000_000, False, 0),),
        safety_us=4_000_000, liveness_us=34_000_000,
    )
    sim = simulator(options)
    return sim, sim.run()


def test_a_replica_more_than_l_behind_catches_up_by_state_transfer() -> None:
    """Fabric issue 1120: the others discarded the messages replica 3 lacks; a
    checkpoint certificate picks the state, fetched and checked by digest."""
    sim, result = lagging_run(5)
    assert result.violations == []
    assert result.stats["pbft_state_transfers"] >= 1
    assert pbft_of(sim, 3).executed > 2 * pbft_of(sim, 3).params.log_size


def test_checkpoint_and_view_change_sets_kept_apart() -> None:
    """Fabric PR 1111: VIEW-CHANGEs whose stable checkpoints differ (replica 3's
    is older) still make a NEW-VIEW every replica accepts: min-s is the newest
    certified checkpoint among them, the quorum counts VIEW-CHANGEs only."""
    sim, result = lagging_run(6)
    assert result.violations == []
    assert result.stats["pbft_view_max"] >= 1
    views = {pbft_of(sim, node).view for node in (1, 2, 3)}
    assert len(views) == 1


def test_the_stable_checkpoint_keeps_its_certificate_for_view_changes() -> None:
    """concord-bft PR 1489: the proof of the stable checkpoint is kept, so the
    VIEW-CHANGE built from it is valid to every other replica."""
    options = quiet_options(7)
    sim = simulator(options)
    found: list[str | None] = []

    def check() -> None:
        pbft = pbft_of(sim, 1)
        assert pbft.stable_seq > 0
        assert len(pbft.stable_proof) == pbft.quorum
        view_change = pbft.view_changes.build(pbft.view + 1)
        found.append(pbft_of(sim, 2).view_changes.invalid(view_change, batches=True))

    at(sim, 1_500_000, check)
    assert sim.run().violations == []
    assert found == [None]


def test_state_transfer_carries_the_reply_cache() -> None:
    """concord-bft PR 1331: the state replica 3 fetches holds the session table,
    so it answers a retry of a request executed while it was cut off with the
    recorded result, and never executes it again."""
    sim, result = lagging_run(8)
    assert result.violations == []
    core = sim.nodes[3].core
    assert core is not None
    protocol = core.protocol
    assert isinstance(protocol, SmrProtocol)
    assert pbft_of(sim, 3).stable_seq > 0
    assert len(protocol.replica.sessions) > 0
    assert result.counters.get("smr_snapshots_restored", 0) > 0


def test_a_censoring_primary_cannot_starve_one_client() -> None:
    """Fabric PR 1943: a faulty primary that never orders one client's requests
    (here: replaces them by null requests) is replaced; every client completes
    operations after the heal."""
    options = replace(quiet_options(9), byzantine=(0,), behaviours=("pbft_censor",))
    result = simulator(options).run()
    assert result.violations == []
    assert result.stats["pbft_view_max"] >= 1


class ReplicaThreeDiverges(KeyValueStateMachine):
    """A state machine whose snapshot differs on one replica (non-determinism)."""

    def snapshot(self) -> bytes:
        return super().snapshot() + b"\x00"


def test_a_checkpoint_digest_outvoted_by_the_quorum_is_reported() -> None:
    """Non-determinism: replica 3's state differs; 2f+1 others certify theirs,
    and replica 3 reports its disagreement instead of ignoring it."""
    base = protocol_factory("pbft")
    assert type(base) is SmrFactory

    class Factory(SmrFactory):
        def __call__(self, context: Context) -> SmrProtocol:
            diverges = context.id == 3
            self.state_machine = ReplicaThreeDiverges if diverges else KeyValueStateMachine
            return super().__call__(context)

    factory = Factory.__new__(Factory)
    factory.__dict__.update(base.__dict__)
    result = simulator(quiet_options(10), factory=factory).run()
    properties = {violation["property"] for violation in result.violations}
    assert "checkpoint-determinism" in properties
    assert result.counters.get("pbft_checkpoint_disagreement", 0) > 0
