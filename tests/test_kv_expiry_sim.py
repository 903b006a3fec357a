"""Expiry by the log's clock and lists in the simulator: the default workload writes
keys with deadlines (``putx``: ``SET ... PXAT``), reads them as they expire, pushes
to and reads lists; histories are linearizable under faults, and a store that
expires by its own clock (``replicaio.testing.variants.kv.LocalClockExpiry``) is
caught by a seed sweep. Also: the model's steps, one by one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from replicaio import assembly
from replicaio.check.history import GET, LRANGE, PUT, PUTX, RPUSH, Operation, validate_history
from replicaio.check.linearizability import KEY_VALUE_MODEL, check_linearizable
from replicaio.core.config import Resilience
from replicaio.protocols.raft import Raft, RaftAdmin, RaftParams
from replicaio.sim.kv_harness import KvHarness, KvWorkload, kv_options
from replicaio.sim.simulator import Simulator
from replicaio.smr.params import SmrParams
from replicaio.smr.protocol import SmrFactory
from replicaio.testing.variants.kv import LocalClockExpiry

TIMED = KvWorkload(clients=5, ops=200, mix=((PUTX, 40), (GET, 40), (PUT, 5), (RPUSH, 10),
                                            (LRANGE, 10)))


def op(kind: str, value: str | None, expected: str | None, output: str | None, call: int,
       returned: int | None, status: str = "ok", key: str = "x") -> Operation:
    return Operation(0, kind, key, value, expected, output, call, returned, status)


def test_model_reads_a_key_until_its_deadline_then_absent() -> None:
    ok = check_linearizable
    written = op(PUTX, "v", "10", None, 1_000, 2_000)  # deadline 10 ms; calls in us
    assert ok([written, op(GET, None, None, "v", 3_000, 4_000)]).linearizable
    assert ok([written, op(GET, None, None, None, 3_000, 12_000)]).linearizable  # may be due
    assert not ok([written, op(GET, None, None, None, 3_000, 5_000)]).linearizable  # too soon
    assert not ok([written, op(GET, None, None, "v", 11_000, 12_000)]).linearizable  # too late
    # Seen expired, a later read cannot see it back (the clock never goes back).
    history = [written, op(GET, None, None, None, 3_000, 12_000),
               op(GET, None, None, "v", 13_000, 14_000)]
    assert not ok(history).linearizable
    # A put drops the deadline.
    history = [written, op(PUT, "w", None, None, 3_000, 4_000),
               op(GET, None, None, "w", 50_000, 51_000)]
    assert ok(history).linearizable


def test_model_lists() -> None:
    pushes = [op(RPUSH, "a", None, "1", 0, 1, key="l"), op(RPUSH, "b", None, "2", 2, 3, key="l")]
    read = op(LRANGE, None, None, '["a", "b"]', 4, 5, key="l")
    assert check_linearizable([*pushes, read]).linearizable
    wrong = op(LRANGE, None, None, '["b", "a"]', 4, 5, key="l")
    assert not check_linearizable([*pushes, wrong]).linearizable
    validate_history([*pushes, read])
    assert KEY_VALUE_MODEL.is_read_only(read)


@pytest.fixture
def local_clock() -> Iterator[str]:
    name = "raft-local-clock-expiry"

    def build(full_name: str, parameters: Any) -> SmrFactory:
        return SmrFactory(
            full_name, Resilience.CRASH, lambda context: Raft(context, RaftParams().validate()),
            LocalClockExpiry, SmrParams(), ordering_path="raft", admin_types=(RaftAdmin,),
        )

    assembly.SERVICES[name] = assembly.ServiceSpec(
        name, "raft", Resilience.CRASH, build, "BROKEN on purpose: local-clock expiry",
        broken=True,
    )
    try:
        yield name
    finally:
        del assembly.SERVICES[name]


def run(service: str, seed: int, faults: tuple[str, ...] = ()) -> tuple[Simulator, Any]:
    simulator = Simulator(service, kv_options(seed, 3, faults, TIMED), f=1, record=False)
    return simulator, simulator.run()


def test_simulated_expiry_and_lists_are_linearizable_under_faults() -> None:
    for seed, faults in ((1, ()), (2, ("crash", "partition", "loss"))):
        simulator, result = run("raft", seed, faults)
        assert result.violations == [], result.violations
        harness = simulator.harness
        assert isinstance(harness, KvHarness)
        done = [item for item in harness.operations() if item.status == "ok"]
        assert sum(1 for item in done if item.op == PUTX) > 20
        assert any(item.op == LRANGE and item.output not in (None, "[]") for item in done)
        expired = [item for item in done if item.op == GET and item.key.startswith("x")
                   and item.output is None]
        assert expired  # reads saw keys gone
    assert any(kind == PUTX for kind, _ in KvWorkload().mix)  # the default workload too


def test_a_seed_sweep_catches_expiry_by_a_local_clock(local_clock: str) -> None:
    caught = []
    for seed in range(1, 6):
        _, result = run(local_clock, seed)
        if "linearizability" in {violation["property"] for violation in result.violations}:
            caught.append(seed)
    assert len(caught) >= 2, f"caught only on seeds {caught}"
    _, correct = run("raft", caught[0])
    assert correct.violations == []
