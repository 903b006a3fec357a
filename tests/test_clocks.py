"""Clocks that drift (replicaio.sim.options, the simulator) and Raft's lease reads
(replicaio.protocols.raft.lease), which are only as safe as the drift bound.

Both directions: with every clock within the bound Raft assumes, lease reads
stay linearizable; with one clock far beyond it (the ``clock`` fault) the same
schedule gives a stale read, which the checkers catch, and read-index (which
assumes nothing about clocks) stays linearizable on it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from replicaio.core.errors import ConfigError, UsageError
from replicaio.protocols.raft.messages import BecameLeader, RaftAdmin
from replicaio.protocols.raft.params import RaftParams
from replicaio.sim.kv_harness import KvHarness, KvWorkload, kv_options
from replicaio.sim.options import FAULT_KINDS, Partition, SimOptions
from replicaio.sim.shrink import candidates
from replicaio.sim.simulator import TIMER, SimResult, Simulator, SimulatorApi

DRIFT_PPM = 10_000  # the bound Raft's lease assumes (RaftParams default)
SLOW_PPM = -750_000  # a clock running at a quarter of true time: the clock fault
CUT_AFTER_US = 300_000


def test_clock_rates_are_drawn_from_the_seed_within_the_bound() -> None:
    seen: set[int] = set()
    for seed in range(50):
        options = SimOptions.draw(seed, 5, 0, (), clock_drift_ppm=DRIFT_PPM)
        assert options == SimOptions.draw(seed, 5, 0, (), clock_drift_ppm=DRIFT_PPM)
        assert len(options.clock_rates_ppm) == len(options.clock_offsets_us) == 5
        assert all(abs(rate) <= DRIFT_PPM for rate in options.clock_rates_ppm)
        seen.update(options.clock_rates_ppm)
        options.validate()
    assert len(seen) > 100
    exact = SimOptions.draw(1, 5, 0, (), clock_drift_ppm=0)
    assert exact.clock_rates_ppm == exact.clock_offsets_us == ()


def test_clocks_change_no_other_option() -> None:
    network = tuple(kind for kind in FAULT_KINDS if kind != "clock")
    one = SimOptions.draw(7, 4, 1, network, clock_drift_ppm=0)
    two = SimOptions.draw(7, 4, 1, network, clock_drift_ppm=DRIFT_PPM)
    assert replace(two, clock_drift_ppm=0, clock_rates_ppm=(), clock_offsets_us=()) == one


def test_only_the_clock_fault_goes_beyond_the_bound() -> None:
    beyond = 0
    for seed in range(20):
        options = SimOptions.draw(seed, 5, 0, ("clock",), clock_drift_ppm=DRIFT_PPM)
        options.validate()
        far = [rate for rate in options.clock_rates_ppm if abs(rate) > DRIFT_PPM]
        assert 1 <= len(far) <= 2
        beyond += len(far)
        with pytest.raises(UsageError, match="beyond the drift bound"):
            replace(options, faults=()).validate()
    assert beyond >= 20
    # shrinking tries the run with every clock back within the bound
    options = SimOptions.draw(3, 5, 0, ("clock",), clock_drift_ppm=DRIFT_PPM)
    clipped = [c for c in candidates(options) if c.clock_rates_ppm != options.clock_rates_ppm]
    assert len(clipped) == 1
    assert all(abs(rate) <= DRIFT_PPM for rate in clipped[0].clock_rates_ppm)


def test_a_node_timers_run_at_its_clock_rate() -> None:
    options = replace(
        SimOptions.draw(1, 4, 0, (), clock_drift_ppm=0),
        faults=("clock",),
        clock_rates_ppm=(1_000_000, -500_000, 0, 250_000),
        clock_offsets_us=(5, 0, 0, 0),
    )
    simulator = Simulator("beb", options, record=False)
    for node in simulator.nodes:
        simulator.restart(node)  # a start arms the tick timer (its Hello awaits acks)
    tick_us = simulator.params.tick_us
    timers = {event[3]: event[0] for event in simulator.heap if event[2] == TIMER}
    assert timers == {0: tick_us // 2, 1: tick_us * 2, 2: tick_us, 3: tick_us * 4 // 5}
    simulator.now = 1_000
    assert [simulator.clock_us(node) for node in range(4)] == [2_005, 500, 1_000, 1_250]


def test_lease_params_are_validated() -> None:
    params = RaftParams(read_lease=True, clock_drift_ppm_max=DRIFT_PPM).validate()
    assert params.lease_us < params.election_timeout_min_us
    assert params.lease_us == 300_000 * 990_000 // 1_010_000
    with pytest.raises(ConfigError, match="check_quorum"):
        RaftParams(read_lease=True, check_quorum=False).validate()
    with pytest.raises(ConfigError, match="outlast a heartbeat"):
        RaftParams(read_lease=True, clock_drift_ppm_max=800_000).validate()
    with pytest.raises(ConfigError, match="clock_drift_ppm_max"):
        RaftParams(clock_drift_ppm_max=-1).validate()


def test_lease_reads_stay_linearizable_within_the_drift_bound() -> None:
    lease_reads = 0
    for seed in range(1, 7):
        workload = KvWorkload(clients=4, ops=120)
        options = kv_options(seed, 3, ("crash", "partition", "loss", "dup", "reorder"),
                             workload, clock_drift_ppm=DRIFT_PPM)
        result = Simulator("raft:lease=1", options, f=1, record=False).run()
        assert result.violations == [], seed
        assert result.stats["linearizable"] is True
        lease_reads += result.counters.get("raft_reads_lease", 0)
    assert lease_reads > 50


def isolated_slow_node(seed: int, rate_ppm: int) -> SimOptions:
    """Three nodes, node ``seed % 3``'s clock at ``rate_ppm``."""
    workload = KvWorkload(clients=5, ops=400, membership_every_us=0)
    options = kv_options(seed, 3, ("partition", "clock"), workload, clock_drift_ppm=DRIFT_PPM)
    slow = seed % 3
    rates = tuple(rate_ppm if node == slow else 0 for node in range(3))
    return replace(options, clock_rates_ppm=rates, partitions=())


def run(protocol: str, options: SimOptions) -> SimResult:
    """Run ``options``, moving leadership to the slow node (a transfer asked every
    300 ms) and cutting it off for 1.5 s soon after it becomes leader: it keeps
    its clients, and for a while its belief that it leads."""
    simulator = Simulator(protocol, options, f=1, record=False)
    slow = options.clock_rates_ppm.index(min(options.clock_rates_ppm))
    api = SimulatorApi(simulator)
    harness = simulator.harness
    assert isinstance(harness, KvHarness)
    leader = [-1]

    def observe(node: int, output: Any, time_us: int) -> None:
        if type(output) is not BecameLeader:
            return
        leader[0] = node
        if node == slow and not simulator.liveness:
            start = time_us + CUT_AFTER_US  # once its lease holds and clients found it
            api.partition(Partition(start, start + 1_500_000, (slow,), True))

    def transfer() -> None:
        if simulator.liveness:
            return
        if leader[0] not in (-1, slow):
            api.request(leader[0], harness.codec.encode(RaftAdmin("transfer", slow)))
        api.call_at(api.now() + 300_000, transfer)

    harness.observers.append(observe)
    api.call_at(300_000, transfer)
    return simulator.run()


SEEDS = range(1, 9)


def test_a_slow_leader_clock_beyond_the_bound_gives_a_stale_lease_read() -> None:
    found = []
    for seed in SEEDS:
        result = run("raft:lease=1", isolated_slow_node(seed, SLOW_PPM))
        found += [(seed, violation["property"]) for violation in result.violations]
    assert found
    assert {name for _, name in found} <= {"linearizable_read", "linearizability"}


def test_the_same_schedules_within_the_bound_hold() -> None:
    lease_reads = 0
    for seed in SEEDS:
        result = run("raft:lease=1", isolated_slow_node(seed, -DRIFT_PPM))
        assert result.violations == [], seed
        lease_reads += result.counters.get("raft_reads_lease", 0)
    assert lease_reads > 100


def test_read_index_assumes_nothing_about_clocks() -> None:
    for seed in SEEDS:
        result = run("raft", isolated_slow_node(seed, SLOW_PPM))
        assert result.violations == [], seed
        assert "raft_reads_lease" not in result.counters
