"""Transactions in the checker and the simulator: the history format's ``txn``
operations, the linearizability model of a multi-key atomic transaction (parts
tied by transactions, half-visible transactions refuted), agreement of that
model with the real store, simulated runs of Raft + SMR + KV whose clients run
transactions, and a deliberately non-atomic store
(``replicaio.testing.variants.kv.NonAtomicExec``) caught by a seed sweep."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from replicaio import assembly
from replicaio.check.history import (
    CAS,
    GET,
    INCR,
    PUT,
    TXN,
    HistoryError,
    MicroOperation,
    Operation,
    describe_operation,
    dump_history,
    encode_outputs,
    encode_transaction,
    load_history,
    transaction_key,
    validate_history,
)
from replicaio.check.linearizability import KEY_VALUE_MODEL, check_linearizable
from replicaio.core.config import Resilience
from replicaio.protocols.raft.messages import RaftAdmin
from replicaio.protocols.raft.params import RaftParams
from replicaio.protocols.raft.raft import Raft
from replicaio.services.kv.state_machine import KeyValueStateMachine
from replicaio.sim.kv_harness import KvHarness, KvWorkload, kv_options
from replicaio.sim.kv_transactions import transaction_command, transaction_outputs
from replicaio.sim.simulator import Simulator
from replicaio.smr.params import SmrParams
from replicaio.smr.protocol import SmrFactory
from replicaio.testing.variants.kv import NonAtomicExec


def txn(
    client: int, operations: list[MicroOperation], outputs: list[str | None] | None,
    call: float, returned: float | None, status: str = "ok",
) -> Operation:
    return Operation(
        client, TXN, transaction_key(operations), encode_transaction(operations), None,
        None if outputs is None else encode_outputs(outputs), call, returned, status,
    )


def single(client: int, op: str, key: str, value: str | None, output: str | None,
           call: float, returned: float) -> Operation:
    return Operation(client, op, key, value, None, output, call, returned, "ok")


WRITE_BOTH: list[MicroOperation] = [(PUT, "a", "1", None), (PUT, "b", "1", None)]
READ_BOTH: list[MicroOperation] = [(GET, "a", None, None), (GET, "b", None, None)]


# -- the checker ----------------------------------------------------------------------------------


def test_an_atomic_transaction_is_seen_whole_or_not_at_all() -> None:
    history = [
        txn(0, WRITE_BOTH, [None, None], 0, 10),
        txn(1, READ_BOTH, [None, None], 1, 2),  # before it: neither
        txn(2, READ_BOTH, ["1", "1"], 3, 4),  # after it: both
        single(3, "get", "c", None, None, 0, 1),  # an independent key stays its own part
    ]
    result = check_linearizable(history)
    assert result.linearizable is True, result.describe()
    assert set(result.per_key) == {"a+b", "c"}


def test_half_a_transaction_seen_is_not_linearizable_and_explained() -> None:
    history = [
        txn(0, WRITE_BOTH, [None, None], 0, 10),
        txn(1, READ_BOTH, ["1", None], 3, 4),  # half of it
    ]
    result = check_linearizable(history)
    assert result.linearizable is False
    text = result.describe()
    assert "key 'a+b'" in text and "txn [get 'a' => '1'; get 'b' => null]" in text
    # The same half seen by two single-key reads in real-time order is refuted too.
    history = [
        txn(0, WRITE_BOTH, [None, None], 0, 2),
        single(1, "get", "a", None, "1", 3, 4),
        single(1, "get", "b", None, None, 5, 6),
    ]
    assert check_linearizable(history).linearizable is False


def test_unknown_and_runtime_failed_operations_inside_a_transaction() -> None:
    bump: list[MicroOperation] = [(INCR, "n", "2", None), (PUT, "s", "x", None)]
    history = [
        single(0, "put", "n", "text", None, 0, 1),
        txn(1, bump, [None, None], 2, 3),  # incr found no integer; the put applied
        single(2, "get", "s", None, "x", 4, 5),
        txn(3, [(CAS, "s", "y", "x"), (INCR, "m", "1", None)], None, 6, None, "info"),
        single(4, "get", "m", None, "1", 7, 8),  # the unknown transaction took effect
        single(4, "get", "s", None, "y", 9, 10),
    ]
    assert check_linearizable(history).linearizable is True
    broken = [*history[:5], single(4, "get", "s", None, "x", 9, 10)]  # half of it
    assert check_linearizable(broken).linearizable is False


def test_transactions_round_trip_through_the_history_file(tmp_path: Path) -> None:
    history = [txn(0, WRITE_BOTH, [None, None], 0, 1.5),
               txn(1, READ_BOTH, None, 2, None, "info")]
    path = tmp_path / "history.jsonl"
    dump_history(history, path)
    assert load_history(path) == history
    assert describe_operation(history[0]) == (
        "client 0 txn [put 'a' '1'; put 'b' '1'] [0, 1.5] ok"
    )


@pytest.mark.parametrize(
    ("value", "key", "output"),
    [
        ("not json", "a", None),
        ("[]", "", None),
        ('[["frob", "a", null, null]]', "a", None),
        ('[["put", "a", null, null]]', "a", None),  # put needs a value
        ('[["get", "a", null, null]]', "b", None),  # key is not its keys
        ('[["get", "a", null, null]]', "a", "[]"),  # one output per operation
        ('[["cas", "a", "x", null]]', "a", '["maybe"]'),
    ],
)
def test_malformed_transactions_are_refused(value: str, key: str, output: str | None) -> None:
    op = Operation(0, TXN, key, value, None, output, 0, 1, "ok")
    with pytest.raises(HistoryError):
        validate_history([op])


def test_the_store_and_the_model_agree_on_random_transactions() -> None:
    """Transactions run on the real store; each with its real outputs must be a step
    of the checker's model, from the state the model tracked."""
    rng = random.Random(3)
    kv = KeyValueStateMachine()
    state: Any = None
    keys = ["a", "b", "c"]
    for step in range(400):
        operations: list[MicroOperation] = []
        for index in range(rng.randint(1, 4)):
            kind = rng.choice([GET, PUT, CAS, INCR, "delete", "append"])
            key = rng.choice(keys)
            value = {PUT: f"v{step}.{index}", CAS: f"c{step}", INCR: str(rng.randint(-2, 3)),
                     "append": rng.choice(["1", "z"])}.get(kind)
            expected = rng.choice([None, "1", f"v{step - 1}.0"]) if kind == CAS else None
            operations.append((kind, key, value, expected))
        outputs = transaction_outputs(operations, kv.apply(transaction_command(operations)))
        assert outputs is not None
        op = Operation(0, TXN, transaction_key(operations), encode_transaction(operations),
                       None, outputs, step, step, "ok")
        validate_history([op])
        accepted, state = KEY_VALUE_MODEL.step(state, op)
        assert accepted, describe_operation(op)
        # The workload writes strings only: any other kind of value fails the comparison.
        assert dict(state) == {key.decode(): value.decode() if isinstance(value, bytes) else value
                               for key, value in kv.data.items()}


# -- simulated runs ------------------------------------------------------------------------------


TXN_HEAVY = KvWorkload(clients=5, ops=150, mix=((TXN, 60), (GET, 20), (PUT, 20)))


@pytest.fixture
def non_atomic() -> Iterator[str]:
    """Register Raft + SMR + the non-atomic store as a service for one test."""
    name = "raft-nonatomic-exec"

    def build(full_name: str, parameters: Any) -> SmrFactory:
        return SmrFactory(
            full_name, Resilience.CRASH, lambda context: Raft(context, RaftParams().validate()),
            NonAtomicExec, SmrParams(), ordering_path="raft", admin_types=(RaftAdmin,),
        )

    assembly.SERVICES[name] = assembly.ServiceSpec(
        name, "raft", Resilience.CRASH, build, "BROKEN on purpose: non-atomic EXEC", broken=True
    )
    try:
        yield name
    finally:
        del assembly.SERVICES[name]


def run(service: str, seed: int, workload: KvWorkload, faults: tuple[str, ...] = ()) -> Any:
    simulator = Simulator(service, kv_options(seed, 3, faults, workload), f=1, record=False)
    return simulator, simulator.run()


def test_simulated_clients_run_transactions_and_the_history_is_linearizable() -> None:
    for seed, faults in ((1, ()), (2, ("crash", "partition", "loss"))):
        simulator, result = run("raft", seed, TXN_HEAVY, faults)
        assert result.violations == [], result.violations
        assert result.stats["linearizable"] is True
        harness = simulator.harness
        assert isinstance(harness, KvHarness)
        done = [op for op in harness.operations() if op.op == TXN and op.status == "ok"]
        assert len(done) > 30
        assert any('"put"' in (op.value or "") for op in done)
        assert any(op.value and '"put"' not in op.value and op.output for op in done)
    assert ("txn", 10) in KvWorkload().mix  # the default workload runs transactions too


def test_a_seed_sweep_catches_a_non_atomic_exec(non_atomic: str) -> None:
    caught = []
    for seed in range(1, 6):
        _, result = run(non_atomic, seed, TXN_HEAVY)
        if "linearizability" in {violation["property"] for violation in result.violations}:
            caught.append(seed)
    assert len(caught) >= 2, f"caught only on seeds {caught}"
    _, correct = run("raft", caught[0], TXN_HEAVY)
    assert correct.violations == []
