"""The state machine's typed values, expiry by the log's clock, bounds and snapshot format 3.

Deterministic claims of ``state_machine``/``commands_*``: time enters only
through ``advance_clock`` (a batch's stamp) and ``at`` reads; an expiry is a
removal with a new version; a read never changes the state; two replicas fed
the same commands and stamps (one restored from a snapshot midway) end equal,
byte for byte; the bounds (items_max, bytes_max) refuse instead of growing;
snapshots are version 3, version 2 is read, others are refused by name.
"""

from __future__ import annotations

import random

import pytest

from replicaio.core.codec import Codec
from replicaio.services.kv import (
    KeyValueStateMachine,
    KvError,
    KvOk,
    KvParams,
    commands_keys,
    decode_result,
)
from replicaio.services.kv.commands_keys import CURSOR_MAX, decode_cursor
from replicaio.services.kv.state_machine import (
    KvSnapshotError,
    encode_at,
    encode_command,
    encode_exec,
    encode_redis,
    is_write,
)
from replicaio.services.kv.values import glob_match

RAW = Codec()


def redis(kv: KeyValueStateMachine, name: str, *words: bytes | str | int) -> object:
    command = encode_redis(name, *[str(word).encode() if not isinstance(word, bytes) else word
                                   for word in words])
    result = decode_result(kv.apply(command))
    return result.value if isinstance(result, KvOk) else result


def read(kv: KeyValueStateMachine, name: str, *words: bytes, at: int = 0) -> object:
    command = encode_redis(name, *words)
    result = decode_result(kv.read(encode_at(at, command) if at else command))
    return result.value if isinstance(result, KvOk) else result


def test_expiry_follows_the_log_clock_and_takes_a_version() -> None:
    kv = KeyValueStateMachine()
    kv.advance_clock(1000)
    assert redis(kv, "set", b"k", b"v", b"PX", b"100") == "OK"
    version = kv.version(b"k")
    assert read(kv, "pttl", b"k") == 100
    kv.advance_clock(1050)
    assert read(kv, "pttl", b"k") == 50
    kv.advance_clock(900)  # a clock behind (a new leader's) never moves time back
    assert kv.now_ms == 1050
    # A read at a later node clock sees it gone, and changes nothing.
    assert read(kv, "exists", b"k", at=1100) == 0
    assert b"k" in kv.data and kv.version(b"k") == version
    kv.advance_clock(1100)  # the log reaches the deadline: removed, with a new version
    assert b"k" not in kv.data and kv.version(b"k") > version
    assert read(kv, "pttl", b"k") == -2


def test_lazy_expiry_on_write_and_the_per_batch_bound() -> None:
    kv = KeyValueStateMachine(KvParams(expire_per_batch_max=2))
    kv.advance_clock(10)
    for index in range(5):
        redis(kv, "set", f"k{index}", b"v", b"PX", b"5")
    kv.advance_clock(20)
    assert len(kv.data) == 3  # two removed by the clock, the others wait
    assert decode_result(kv.apply(encode_command("get", b"k4"))) == KvOk(None)  # lazily gone
    assert b"k4" not in kv.data


def test_set_keeps_or_drops_the_ttl_and_append_incr_keep_it() -> None:
    kv = KeyValueStateMachine()
    redis(kv, "set", b"k", b"1", b"EX", b"10")
    kv.apply(encode_command("incr", b"k", 1))
    kv.apply(encode_command("append", b"k", b"0"))
    assert kv.expires[b"k"] == 10_000
    redis(kv, "set", b"k", b"x", b"KEEPTTL")
    assert kv.expires[b"k"] == 10_000
    kv.apply(encode_command("put", b"k", b"y"))
    assert b"k" not in kv.expires


def test_watch_aborts_when_a_watched_key_expires() -> None:
    kv = KeyValueStateMachine()
    kv.advance_clock(100)
    redis(kv, "set", b"w", b"v", b"PX", b"10")
    version = kv.version(b"w")
    kv.advance_clock(105)
    exec_command = encode_exec([(b"w", version)], [encode_command("put", b"out", b"1")])
    result = decode_result(kv.apply(exec_command))
    assert isinstance(result, KvOk) and result.value is not None  # not yet expired
    kv.advance_clock(200)
    kv.expiry_heap.clear()  # (so only the lazy path can see it)
    exec_command = encode_exec([(b"w", version)], [encode_command("put", b"out2", b"1")])
    assert decode_result(kv.apply(exec_command)) == KvOk(None)  # aborted
    assert b"out2" not in kv.data


def test_types_and_wrongtype() -> None:
    kv = KeyValueStateMachine()
    assert redis(kv, "hset", b"h", b"f", b"v") == 1
    assert redis(kv, "rpush", b"l", b"a", b"b") == 2
    assert redis(kv, "sadd", b"s", b"x") == 1
    assert redis(kv, "zadd", b"z", b"1.5", b"m") == 1
    assert [read(kv, "type", key) for key in (b"h", b"l", b"s", b"z", b"n")] == [
        "hash", "list", "set", "zset", "none"]
    wrong = redis(kv, "lpush", b"h", b"x")
    assert isinstance(wrong, KvError) and wrong.detail.startswith("WRONGTYPE")
    got = decode_result(kv.apply(encode_command("get", b"l")))
    assert isinstance(got, KvError) and got.code == "wrong_type"
    assert redis(kv, "lpop", b"l", b"2") == (b"a", b"b") and b"l" not in kv.data


def test_collection_and_store_bounds_refuse() -> None:
    kv = KeyValueStateMachine(KvParams(items_max=3, bytes_max=2000))
    assert redis(kv, "sadd", b"s", b"a", b"b", b"c") == 3
    refused = redis(kv, "sadd", b"s", b"d")
    assert isinstance(refused, KvError) and refused.code == "too_many_items"
    full = redis(kv, "set", b"big", b"x" * 1900)
    assert isinstance(full, KvError) and full.code == "full"
    assert kv.used_bytes <= 2000


def test_reads_never_change_the_state_and_refuse_writes() -> None:
    kv = KeyValueStateMachine()
    redis(kv, "hset", b"h", b"f", b"v")
    before = kv.snapshot()
    for name in ("hgetall", "type", "ttl", "exists", "dbsize", "keys", "scan"):
        words = {"keys": (b"*",), "scan": (b"0",), "dbsize": ()}.get(name, (b"h",))
        read(kv, name, *words, at=10**9)
    assert kv.snapshot() == before
    refused = decode_result(kv.read(encode_redis("hset", b"h", b"g", b"w")))
    assert isinstance(refused, KvError) and refused.code == "not_read_only"
    assert is_write(encode_redis("hset", b"h", b"g", b"w"))
    assert not is_write(encode_at(5, encode_redis("hget", b"h", b"g")))


def test_scan_returns_every_stable_key_exactly_once_despite_changes() -> None:
    kv = KeyValueStateMachine()
    for index in range(50):
        redis(kv, "set", f"k{index:03d}", b"v")
    seen: list[bytes] = []
    cursor = b"0"
    rounds = 0
    while True:
        reply = read(kv, "scan", cursor, b"COUNT", b"7")
        assert isinstance(reply, tuple)
        cursor, keys = reply
        assert 0 <= int(cursor) <= CURSOR_MAX  # clients parse it as an unsigned 64-bit integer
        seen.extend(keys)
        redis(kv, "set", f"new{rounds}", b"v")  # changes during the scan
        kv.apply(encode_command("delete", b"k049"))
        rounds += 1
        if cursor == b"0":
            break
    stable = [f"k{index:03d}".encode() for index in range(49)]
    assert all(seen.count(key) == 1 for key in stable)
    assert decode_cursor(b"18446744073709551615") == CURSOR_MAX
    for bad in (b"18446744073709551616", b"-1", b"x", b"1" * 30):
        assert decode_cursor(bad) is None
        refused = read(kv, "scan", bad)
        assert isinstance(refused, KvError) and "invalid cursor" in refused.detail


def test_scan_keeps_colliding_keys_in_one_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys of one position (a 64-bit hash collision) come in one batch, so a
    cursor never falls between them."""
    kv = KeyValueStateMachine()
    for index in range(9):
        redis(kv, "set", f"c{index}", b"v")
    monkeypatch.setattr(commands_keys, "key_position", lambda key: 1 + int(key[1:]) // 3)
    seen: list[bytes] = []
    cursor = b"0"
    batches = []
    while True:
        reply = read(kv, "scan", cursor, b"COUNT", b"2")
        assert isinstance(reply, tuple)
        cursor, keys = reply
        batches.append(sorted(keys))
        seen.extend(keys)
        if cursor == b"0":
            break
    assert sorted(seen) == [f"c{index}".encode() for index in range(9)]
    assert batches[0] == [b"c0", b"c1", b"c2"]  # COUNT 2, but the third shares the position


def test_glob() -> None:
    assert glob_match(b"h?llo", b"hello") and glob_match(b"h*o", b"heeello")
    assert glob_match(b"h[ae]llo", b"hallo") and not glob_match(b"h[^e]llo", b"hello")
    assert glob_match(b"h[a-c]llo", b"hbllo") and glob_match(b"a\\*", b"a*")
    assert not glob_match(b"a\\*", b"ab") and glob_match(b"*", b"")


def random_commands(rng: random.Random, count: int) -> list[tuple[int, bytes]]:
    keys = [b"a", b"b", b"c"]
    commands: list[tuple[int, bytes]] = []
    clock = 0
    for _ in range(count):
        clock += rng.randrange(0, 30)
        key = rng.choice(keys)
        choice = rng.randrange(8)
        if choice == 0:
            command = encode_redis("set", key, b"v", b"PX", str(rng.randrange(1, 60)).encode())
        elif choice == 1:
            command = encode_redis("hset", key, rng.choice(keys), b"x")
        elif choice == 2:
            command = encode_redis("rpush", key, b"e")
        elif choice == 3:
            command = encode_redis("zadd", key, str(rng.randrange(9)).encode(), b"m")
        elif choice == 4:
            command = encode_redis("expire", key, b"1")
        elif choice == 5:
            command = encode_redis("rename", key, rng.choice(keys))
        elif choice == 6:
            command = encode_redis("sadd", key, b"s")
        else:
            command = encode_command("delete", key)
        commands.append((clock, command))
    return commands


@pytest.mark.parametrize("seed", range(20))
def test_replicas_agree_byte_for_byte_across_a_snapshot(seed: int) -> None:
    rng = random.Random(seed)
    commands = random_commands(rng, 200)
    cut = rng.randrange(len(commands))
    one, two = KeyValueStateMachine(), KeyValueStateMachine()
    results_one: list[bytes] = []
    results_two: list[bytes] = []
    for index, (clock, command) in enumerate(commands):
        if index == cut:
            restored = KeyValueStateMachine()
            restored.restore(two.snapshot())
            two = restored
        for replica, results in ((one, results_one), (two, results_two)):
            replica.advance_clock(clock)
            results.append(replica.apply(command))
    assert results_one == results_two
    assert one.snapshot() == two.snapshot()
    assert one.used_bytes == two.used_bytes


def test_snapshot_versions() -> None:
    kv = KeyValueStateMachine()
    old = RAW.encode_value(["replicaio.kv", 2, [[b"k", b"v", 1]], 1, 0, []])
    kv.restore(old)
    assert kv.data == {b"k": b"v"} and kv.version(b"k") == 1 and kv.now_ms == 0
    for version in (1, 4, "x"):
        with pytest.raises(KvSnapshotError, match="version"):
            kv.restore(RAW.encode_value(["replicaio.kv", version, [], 0, 0, [], 0]))
    redis(kv, "zadd", b"z", b"2.5", b"m")
    kv.advance_clock(77)
    redis(kv, "set", b"e", b"v", b"PX", b"5")
    other = KeyValueStateMachine()
    other.restore(kv.snapshot())
    assert other.snapshot() == kv.snapshot() and other.expires == {b"e": 82}
    decoded = RAW.decode_value(kv.snapshot())
    assert isinstance(decoded, tuple) and decoded[:2] == ("replicaio.kv", 3)
