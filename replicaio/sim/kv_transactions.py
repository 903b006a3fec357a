"""Transactions of the simulated KV clients (``KvHarness``): what they run and how
their results are recorded.

A transaction is one ``exec`` command of the store (``MULTI``/``EXEC`` of the
Redis front, without ``WATCH``) over its own keys, ``t0``..``t2`` and the
counter ``tc``, which no single-key operation touches: so the history's parts
stay one key each, except the one part of these keys, which the checker
searches as one state (``replicaio.check.linearizability``). Three shapes, each
of which a non-atomic store would betray to another transaction: read every
key; write one fresh value to two or three keys and bump the counter; read
one key, compare-and-set another, put or delete a third. A transaction of reads
goes through the read barrier like a ``get`` (``read_via_log`` of them through
the log).
"""

from __future__ import annotations

import random

from replicaio.check.history import (
    APPEND,
    CAS,
    CAS_FAILED,
    CAS_SUCCEEDED,
    DELETE,
    GET,
    INCR,
    PUT,
    MicroOperation,
    encode_outputs,
)
from replicaio.services.kv.state_machine import (
    KvError,
    KvOk,
    decode_exec_result,
    decode_result,
    encode_command,
    encode_exec,
)

TRANSACTION_KEYS = ("t0", "t1", "t2")
TRANSACTION_COUNTER = "tc"


def draw_transaction(
    rng: random.Random, last_values: dict[str, str | None], unique: str
) -> list[MicroOperation]:
    """The operations of one transaction (values written are unique per write)."""
    shape = rng.random()
    if shape < 0.35:
        return [(GET, key, None, None) for key in (*TRANSACTION_KEYS, TRANSACTION_COUNTER)]
    if shape < 0.7:
        keys = rng.sample(TRANSACTION_KEYS, rng.randint(2, 3))
        writes: list[MicroOperation] = [
            (PUT, key, f"{unique}.{index}", None) for index, key in enumerate(keys)
        ]
        return [*writes, (INCR, TRANSACTION_COUNTER, str(rng.randint(1, 3)), None)]
    read, swapped, changed = rng.sample(TRANSACTION_KEYS, 3)
    expected = last_values.get(swapped) if rng.random() < 0.7 else None
    last: MicroOperation = (
        (PUT, changed, f"{unique}.p", None) if rng.random() < 0.7 else (DELETE, changed, None, None)
    )
    return [(GET, read, None, None), (CAS, swapped, f"{unique}.c", expected), last]


def transaction_command(operations: list[MicroOperation]) -> bytes:
    """The ``exec`` command of ``operations`` (no watches)."""
    commands = []
    for kind, key, value, expected in operations:
        arguments: list[bytes | int | None] = []
        if kind == INCR:
            assert value is not None
            arguments = [int(value)]
        elif kind == CAS:
            assert value is not None
            arguments = [None if expected is None else expected.encode(), value.encode()]
        elif kind in (PUT, APPEND):
            assert value is not None
            arguments = [value.encode()]
        commands.append(encode_command(kind, key.encode(), *arguments))
    return encode_exec([], commands)


def transaction_outputs(operations: list[MicroOperation], result: bytes) -> str | None:
    """The history ``output`` of an executed transaction, or ``None`` if its result is
    not what the store answers for it (then its effect is recorded as unknown)."""
    decoded = decode_exec_result(result)
    if decoded is None or isinstance(decoded, KvError) or len(decoded) != len(operations):
        return None
    outputs: list[str | None] = []
    for (kind, _, _, _), item in zip(operations, decoded, strict=True):
        found = decode_result(item)
        if isinstance(found, KvError):
            if kind != INCR or found.code != "not_integer":
                return None
            outputs.append(None)  # no integer: this one changed nothing
            continue
        outputs.append(_output_of(kind, found))
    return encode_outputs(outputs)


def _output_of(kind: str, result: KvOk) -> str | None:
    value = result.value
    if kind == GET:
        return None if not isinstance(value, bytes) else value.decode("utf-8", "replace")
    if kind == CAS:
        return CAS_SUCCEEDED if value is True else CAS_FAILED
    if kind == INCR:
        return str(value)
    return None
