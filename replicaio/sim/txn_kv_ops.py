"""The transaction workloads' micro-operations as a sharded key-value cluster runs them.

A ``txn-kv`` group (:class:`~replicaio.services.txn.kv_store.KvTxnStore`) takes
micro-operations ``kv`` (one key-value command) and ``check`` (a key's version),
the forms the Redis front's cross-group ``MULTI``/``EXEC``/``WATCH`` sends,
and answers a committed transaction with each ``kv`` command's result. The
simulated clients' workloads are written in the transaction store's own
micro-operations; this module maps one to the other, so the same checkers
judge both clusters:

============  ===========================  ===================================
workload op   key-value command             read back as
============  ===========================  ===================================
``append``    ``RPUSH key element``        (the element, as the history has it)
``r``         ``LRANGE key 0 -1``          the list's elements as integers
              (list-append) or ``GET key``  the integer (bank), ``None`` if
              (bank)                        absent
``add``       ``incr key delta``           (the delta)
``check``     ``check`` (a version)        nothing
============  ===========================  ===================================

``WATCH`` (list-append): every key a transaction reads is also asked its
version (``version_op``, after the workload's operations, so replies line up),
which the client remembers; a third of its later transactions carry a
``check`` of one remembered version, as a client that ``WATCH``ed the key
before its ``MULTI`` sends: the attempt aborts ``version`` if the key was
written since. The check adds no operation to the history (an aborted attempt
is a ``fail`` there like any other).

An absent list reads as ``None`` (``LRANGE`` answers an empty list), as the
transaction store answers a key never written.
"""

from __future__ import annotations

from typing import Any, Final

from replicaio.check.transactions.history import ADD, APPEND, READ
from replicaio.services.kv.state_machine import (
    VERSION,
    KvOk,
    decode_result,
    encode_command,
    encode_redis,
)
from replicaio.services.txn.kv_store import KV
from replicaio.services.txn.store import CHECK

LISTS: Final = "lists"  # reads are LRANGE (list-append)
COUNTERS: Final = "counters"  # reads are GET of an integer (bank)


class ReplyError(ValueError):
    """A committed transaction's reply that is not what its command returns."""


def to_kv(kind: str, key: bytes, argument: Any, reads: str) -> list[Any]:
    """The ``txn-kv`` micro-operation for one workload micro-operation."""
    if kind == CHECK:
        return [CHECK, key, argument]
    if kind == APPEND:
        return [KV, key, encode_redis("rpush", key, str(argument).encode())]
    if kind == ADD:
        return [KV, key, encode_command("incr", key, int(argument))]
    assert kind == READ, kind
    if reads == LISTS:
        return [KV, key, encode_redis("lrange", key, b"0", b"-1")]
    return [KV, key, encode_command("get", key)]


def read_of(kind: str, reply: object, reads: str) -> Any:
    """What a committed ``kind`` read, from its command's reply (``None`` for a
    write); :class:`ReplyError` for a reply the command cannot give."""
    if not isinstance(reply, bytes):
        raise ReplyError(f"{kind}: no reply ({reply!r})")
    result = decode_result(reply)
    if not isinstance(result, KvOk):
        raise ReplyError(f"{kind}: {result!r}")
    if kind != READ:
        return None
    value = result.value
    if reads == LISTS:
        if not isinstance(value, tuple):
            raise ReplyError(f"LRANGE answered {value!r}")
        try:
            elements = tuple(int(item) for item in value if isinstance(item, bytes))
        except ValueError as error:
            raise ReplyError(f"LRANGE answered {value!r}") from error
        if len(elements) != len(value):
            raise ReplyError(f"LRANGE answered {value!r}")
        return elements or None
    if value is None:
        return None
    if not isinstance(value, bytes):
        raise ReplyError(f"GET answered {value!r}")
    try:
        return int(value)
    except ValueError as error:
        raise ReplyError(f"GET answered {value!r}") from error


def version_op(key: bytes) -> list[Any]:
    """The ``kv`` micro-operation that reads ``key``'s version (what WATCH checks)."""
    return [KV, key, encode_command(VERSION, key)]


def version_of(reply: object) -> int:
    """The version a :func:`version_op` answered; :class:`ReplyError` if it did not."""
    result = decode_result(reply) if isinstance(reply, bytes) else None
    if not (isinstance(result, KvOk) and type(result.value) is int and result.value >= 0):
        raise ReplyError(f"VERSION answered {result!r}")
    return result.value
