"""The key-value model's transactions: a ``txn`` is several operations at one point.

Used by ``replicaio.check.linearizability.KeyValueModel``. Transactions tie
keys together: :func:`partition_by_transactions` puts every key a chain of
transactions connects into one part (named by its keys joined with ``+``), and
in a part that holds a transaction every operation becomes a ``txn`` (a single
one becomes a one-operation ``txn``, same effect and output) whose state is the
sorted tuple of the part's present keys and values (``None``: all absent).
Parts without transactions are left as they are (one key each).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

from replicaio.check.history import (
    APPEND,
    CAS,
    CAS_FAILED,
    CAS_SUCCEEDED,
    DELETE,
    GET,
    INCR,
    OK,
    PUT,
    TXN,
    Operation,
    decode_outputs,
    decode_transaction,
    encode_outputs,
    encode_transaction,
)

# What ``incr`` takes for a number, as the store (and Redis) reads one: no leading
# zero, no "-0", signed 64 bits.
STORED_INTEGER = re.compile(r"0|-?[1-9][0-9]{0,18}", re.ASCII)


def is_stored_integer(text: str) -> bool:
    return STORED_INTEGER.fullmatch(text) is not None and -(1 << 63) <= int(text) < 1 << 63


MultiState = tuple[tuple[str, str], ...]  # the present keys of a part, sorted, with values


def _as_transaction(op: Operation) -> Operation:
    """A single-key operation as a one-operation ``txn`` (same effect and output)."""
    if op.op == TXN:
        return op
    return replace(
        op,
        op=TXN,
        value=encode_transaction([(op.op, op.key, op.value, op.expected)]),
        expected=None,
        output=encode_outputs([op.output]) if op.status == OK else None,
    )


def _transaction_keys(op: Operation) -> list[str]:
    if op.op != TXN:
        return [op.key]
    assert op.value is not None
    return sorted({key for _, key, _, _ in decode_transaction(op.value)})


def step_transaction(state: MultiState | None, op: Operation) -> tuple[bool, MultiState | None]:
    """A ``txn`` on the values of its part: every operation in order, outputs checked.

    Inside a transaction a failing ``cas`` and an ``incr`` of a non-integer
    change nothing, and the other operations still take effect (as the store
    runs an ``exec``); an ``info`` transaction takes all its effects.
    """
    assert op.value is not None
    known = op.status == OK
    outputs = decode_outputs(op.output) if known and op.output is not None else None
    values = dict(state or ())
    for index, (kind, key, value, expected) in enumerate(decode_transaction(op.value)):
        current = values.get(key)
        output = None if outputs is None else outputs[index]
        if kind == GET:
            if known and output != current:
                return False, state
        elif kind == PUT:
            assert value is not None
            values[key] = value
        elif kind == DELETE:
            values.pop(key, None)
        elif kind == APPEND:
            assert value is not None
            values[key] = value if current is None else current + value
        elif kind == CAS:
            swapped = current == expected
            if known and output != (CAS_SUCCEEDED if swapped else CAS_FAILED):
                return False, state
            if swapped:
                assert value is not None
                values[key] = value
        else:
            assert kind == INCR and value is not None
            if current is not None and not is_stored_integer(current):
                if known and output is not None:
                    return False, state
                continue
            total = (0 if current is None else int(current)) + int(value)
            if known and (output is None or int(output) != total):
                return False, state
            values[key] = str(total)
    return True, tuple(sorted(values.items()))


def transaction_read_only(op: Operation) -> bool:
    assert op.value is not None
    outputs = decode_outputs(op.output) if op.status == OK and op.output is not None else None
    for index, (kind, _, value, expected) in enumerate(decode_transaction(op.value)):
        if kind == GET:
            continue
        if kind == CAS and (value == expected or (outputs and outputs[index] == CAS_FAILED)):
            continue
        return False
    return True


def partition_by_transactions(ops: Sequence[Operation]) -> dict[str, list[Operation]]:
    """One part per key, except that keys a ``txn`` touches together share one;
    order is kept."""
    leader: dict[str, str] = {}

    def find(key: str) -> str:
        root = leader.setdefault(key, key)
        while root != leader[root]:
            root = leader[root]
        while leader[key] != root:  # path compression
            leader[key], key = root, leader[key]
        return root

    transactional: set[str] = set()
    for op in ops:
        keys = _transaction_keys(op)
        first = find(keys[0])
        for key in keys[1:]:
            leader[find(key)] = first
        if op.op == TXN:
            transactional.add(first)
    transactional = {find(key) for key in transactional}
    members: dict[str, list[str]] = {}
    for key in sorted(leader):
        members.setdefault(find(key), []).append(key)
    names = {root: keys[0] if len(keys) == 1 else "+".join(keys)
             for root, keys in members.items()}
    parts: dict[str, list[Operation]] = {}
    for op in ops:
        root = find(_transaction_keys(op)[0])
        parts.setdefault(names[root], []).append(
            _as_transaction(op) if root in transactional else op
        )
    return parts
