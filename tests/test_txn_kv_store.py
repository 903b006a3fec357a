"""One group of a sharded Redis store (``services/txn/kv_store.py``), as its state
machine: locks bind single-group commands, a cross-group transaction's commands
run at commit on its locked keys only, WATCH versions are checked at prepare,
and a snapshot keeps prepared commands."""

from __future__ import annotations

from typing import Any

from replicaio.core.codec import Codec
from replicaio.services.kv.state_machine import (
    KvError,
    decode_result,
    encode_batch,
    encode_command,
    encode_redis,
)
from replicaio.services.txn.kv_store import (
    LOCKED_RESULT,
    REPLIES_MAX,
    KvTxnStore,
    command_keys,
)
from replicaio.services.txn.protocol import TxnNode
from replicaio.services.txn.store import unclaimed

CODEC = Codec()


def run(store: KvTxnStore, *command: Any) -> tuple[Any, ...]:
    """The store's answer without what it claims (tests/test_txn_certificates.py)."""
    answer = unclaimed(CODEC.decode_value(store.apply(CODEC.encode_value(list(command)))))
    assert isinstance(answer, tuple)
    return answer


def value(result: bytes) -> object:
    decoded = decode_result(result)
    return getattr(decoded, "value", decoded)


def prepare(store: KvTxnStore, nonce: int, *ops: list[Any]) -> tuple[Any, ...]:
    return run(store, "prepare", 7, nonce, 0, list(ops))


def test_command_keys_of_every_shape() -> None:
    assert command_keys(("get", b"a")) == (b"a",)
    assert command_keys(("redis", "rename", (b"a", b"b"))) == (b"a", b"b")
    assert command_keys(("redis", "msetnx", (b"a", b"1", b"b", b"2"))) == (b"a", b"b")
    assert command_keys(("redis", "sunionstore", (b"d", b"s1", b"s2"))) == (b"d", b"s1", b"s2")
    assert command_keys(("redis", "hset", (b"h", b"f", b"v"))) == (b"h",)
    assert command_keys(("redis", "dbsize", ())) is None
    batch = CODEC.decode_value(encode_batch([encode_command("get", b"x"),
                                             encode_command("put", b"y", b"1")]))
    assert command_keys(batch) == (b"x", b"y")


def test_locked_keys_refuse_single_group_commands_until_commit() -> None:
    store = KvTxnStore()
    assert value(store.apply(encode_command("put", b"a", b"1"))) is None
    assert prepare(store, 1, ["kv", b"a", encode_command("incr", b"a", 5)])[0] == "prepared"
    assert store.apply(encode_command("put", b"a", b"9")) == LOCKED_RESULT
    assert store.read(encode_command("get", b"a")) == LOCKED_RESULT
    assert store.apply(encode_redis("dbsize")) == LOCKED_RESULT  # keyless while locked
    assert value(store.apply(encode_command("put", b"other", b"x"))) is None  # not locked
    committed = run(store, "commit", 7, 1)
    assert committed[0] == "committed"
    assert [value(result) for result in committed[1]] == [6]
    assert value(store.read(encode_command("get", b"a"))) == b"6"
    assert not store.locks and not store.commands


def test_abort_drops_the_commands() -> None:
    store = KvTxnStore()
    prepare(store, 1, ["kv", b"a", encode_command("put", b"a", b"x")])
    assert run(store, "abort", 7, 1) == ("aborted",)
    assert value(store.read(encode_command("get", b"a"))) is None
    assert not store.locks and not store.commands


def test_a_watched_version_that_changed_refuses_the_prepare() -> None:
    store = KvTxnStore()
    store.apply(encode_command("put", b"w", b"1"))
    version = value(store.read(encode_command("version", b"w")))
    store.apply(encode_command("put", b"w", b"2"))
    refused = prepare(store, 1, ["check", b"w", version],
                      ["kv", b"z", encode_command("put", b"z", b"1")])
    assert refused == ("refused", "version")
    current = value(store.read(encode_command("version", b"w")))
    assert prepare(store, 2, ["check", b"w", current])[0] == "prepared"


def test_a_command_outside_its_locks_is_refused_at_commit() -> None:
    store = KvTxnStore()
    prepare(store, 1, ["kv", b"a", encode_command("put", b"a", b"1")])
    store.commands[(7, 1)] = (encode_command("put", b"b", b"stolen"),)  # a forged effect
    committed = run(store, "commit", 7, 1)
    result = decode_result(committed[1][0])
    assert isinstance(result, KvError) and result.code == "outside_locks", result
    assert value(store.read(encode_command("get", b"b"))) is None
    assert store.counters["effect_outside_locks"] == 1


def test_a_kv_operation_must_name_one_of_its_keys() -> None:
    store = KvTxnStore()
    answer = prepare(store, 1, ["kv", b"x", encode_command("put", b"a", b"1")])
    assert answer[0] == "error" and not store.locks


def test_snapshot_keeps_prepared_commands_and_the_store() -> None:
    store = KvTxnStore()
    store.apply(encode_command("put", b"k", b"v"))
    prepare(store, 1, ["kv", b"a", encode_command("append", b"a", b"xy")])
    copy = KvTxnStore()
    copy.restore(store.snapshot())
    assert copy.snapshot() == store.snapshot()
    assert copy.apply(encode_command("get", b"a")) == LOCKED_RESULT
    assert [value(result) for result in run(copy, "commit", 7, 1)[1]] == [2]
    assert value(copy.read(encode_command("get", b"k"))) == b"v"


def test_a_repeated_commit_answers_the_same_results() -> None:
    """Every driver of one attempt (an f+1 client or the gateway has every node
    drive it) commits it; each must hear the commands' results, not only the
    first: the store answers them again, from a bounded table kept in snapshots.
    (Before, a repeated commit answered ``[committed, claim]`` and its driver took
    the claim's items for the replies: a wrong reply f+1 drivers agreed on.)"""
    store = KvTxnStore()
    prepare(store, 1, ["kv", b"a", encode_command("incr", b"a", 5)])
    first = run(store, "commit", 7, 1)
    again = run(store, "commit", 7, 1)
    assert first == again and [value(result) for result in again[1]] == [5]
    restored = KvTxnStore()
    restored.restore(store.snapshot())
    assert run(restored, "commit", 7, 1) == first
    for nonce in range(2, REPLIES_MAX + 3):  # bounded: the oldest results go first
        prepare(store, nonce, ["kv", b"a", encode_command("incr", b"a", 1)])
        run(store, "commit", 7, nonce)
    assert len(store.replies) == REPLIES_MAX and (7, 1) not in store.replies
    assert run(store, "commit", 7, 1) == ("committed",)  # known committed, results gone
    assert store.footprint()["txn_kv_replies"] <= store.footprint_max()["txn_kv_replies"]


def test_a_driver_takes_no_claim_for_the_replies() -> None:
    """A commit answered without results (``[committed, claim]``: applied before,
    its results forgotten) gives its driver no replies (``replies_lost``)."""
    plan = {0: [(0, ["kv", b"a", encode_command("incr", b"a", 1)])]}
    claim = ("claim", "applied", 7, 1, "committed")
    assert TxnNode.replies(plan, [0], [("committed", claim)]) is None
    assert TxnNode.replies(plan, [0], [("committed", (b"r",), claim)]) == [b"r"]
