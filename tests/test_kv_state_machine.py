"""The key-value state machine: each operation, bad commands as typed results,
bounds, snapshots, determinism."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicaio.core.codec import Codec
from replicaio.core.errors import ConfigError, UsageError
from replicaio.services.kv import (
    ERROR_CODES,
    KeyValueStateMachine,
    KvError,
    KvOk,
    KvParams,
    KvSnapshotError,
    decode_result,
    encode_command,
)
from replicaio.services.kv.state_machine import (
    INT64_MAX,
    INT64_MIN,
    WATCH_KEYS_MAX,
    decode_batch_result,
    decode_exec_result,
    encode_batch,
    encode_exec,
    is_write,
)

RAW = Codec()


def run(kv: KeyValueStateMachine, op: str, key: bytes, *arguments: bytes | int | None) -> object:
    result = decode_result(kv.apply(encode_command(op, key, *arguments)))
    assert isinstance(result, KvOk), result
    return result.value


def version_of(kv: KeyValueStateMachine, key: bytes) -> int:
    """The ``version`` command's answer for ``key`` (0 if it never existed)."""
    version = run(kv, "version", key)
    assert isinstance(version, int), version
    return version


def fails(kv: KeyValueStateMachine, command: bytes) -> str:
    result = decode_result(kv.apply(command))
    assert isinstance(result, KvError), result
    assert result.code in ERROR_CODES
    return result.code


def test_get_put_delete() -> None:
    kv = KeyValueStateMachine()
    assert run(kv, "get", b"k") is None
    assert run(kv, "put", b"k", b"v1") is None
    assert run(kv, "get", b"k") == b"v1"
    assert run(kv, "put", b"k", b"v2") is None
    assert run(kv, "get", b"k") == b"v2"
    assert run(kv, "delete", b"k") is True
    assert run(kv, "delete", b"k") is False
    assert run(kv, "get", b"k") is None


def test_compare_and_set() -> None:
    kv = KeyValueStateMachine()
    assert run(kv, "cas", b"k", b"x", b"a") is False  # absent is not b"x"
    assert run(kv, "get", b"k") is None
    assert run(kv, "cas", b"k", None, b"a") is True  # nil expects absent
    assert run(kv, "cas", b"k", None, b"b") is False
    assert run(kv, "cas", b"k", b"a", b"b") is True
    assert run(kv, "get", b"k") == b"b"


def test_append_creates_and_concatenates() -> None:
    kv = KeyValueStateMachine()
    assert run(kv, "append", b"k", b"ab") == 2
    assert run(kv, "append", b"k", b"cd") == 4
    assert run(kv, "get", b"k") == b"abcd"


def test_increment() -> None:
    kv = KeyValueStateMachine()
    assert run(kv, "incr", b"n", 5) == 5  # absent reads as 0
    assert run(kv, "incr", b"n", -7) == -2
    assert run(kv, "get", b"n") == b"-2"
    run(kv, "put", b"n", b"41")
    assert run(kv, "incr", b"n", 1) == 42


def test_increment_errors_are_typed_and_change_nothing() -> None:
    kv = KeyValueStateMachine()
    run(kv, "put", b"s", b"hello")
    assert fails(kv, encode_command("incr", b"s", 1)) == "not_integer"
    assert run(kv, "get", b"s") == b"hello"
    run(kv, "put", b"n", str(INT64_MAX).encode())
    assert fails(kv, encode_command("incr", b"n", 1)) == "overflow"
    assert run(kv, "get", b"n") == str(INT64_MAX).encode()
    run(kv, "put", b"m", str(INT64_MIN).encode())
    assert fails(kv, encode_command("incr", b"m", -1)) == "overflow"
    assert fails(kv, RAW.encode_value(["incr", b"n", "1"])) == "bad_arguments"
    assert fails(kv, RAW.encode_value(["incr", b"n", 1.5])) == "bad_arguments"
    assert fails(kv, RAW.encode_value(["incr", b"n", True])) == "bad_arguments"
    assert kv.errors == {"not_integer": 1, "overflow": 2, "bad_arguments": 3}


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (b"", "malformed"),
        (b"\xc1", "malformed"),
        (RAW.encode_value("get"), "malformed"),
        (RAW.encode_value([]), "malformed"),
        (RAW.encode_value([1, b"k"]), "malformed"),
        (RAW.encode_value(["frobnicate", b"k"]), "unknown_op"),
        (RAW.encode_value(["get"]), "bad_arguments"),
        (RAW.encode_value(["get", b"k", b"extra"]), "bad_arguments"),
        (RAW.encode_value(["get", "k"]), "bad_arguments"),
        (RAW.encode_value(["put", b"k", "v"]), "bad_arguments"),
        (RAW.encode_value(["put", b"k", None]), "bad_arguments"),
        (RAW.encode_value(["cas", b"k", 3, b"v"]), "bad_arguments"),
        (RAW.encode_value(["append", b"k", 3]), "bad_arguments"),
        (RAW.encode_value(["get", b"k" * 2000]), "key_too_large"),
    ],
)
def test_bad_commands_are_typed_results(command: bytes, code: str) -> None:
    kv = KeyValueStateMachine()
    assert fails(kv, command) == code
    assert kv.data == {}
    assert kv.errors == {code: 1}


def test_non_bytes_command_is_malformed_not_an_exception() -> None:
    kv = KeyValueStateMachine()
    result = decode_result(kv.apply("put k v"))  # type: ignore[arg-type]
    assert result == KvError("malformed", "a command is bytes")


def test_bounds_are_reached() -> None:
    kv = KeyValueStateMachine(KvParams(key_bytes_max=4, value_bytes_max=8, keys_max=2,
                                       command_bytes_max=64))
    assert fails(kv, encode_command("put", b"kkkkk", b"v")) == "key_too_large"
    assert fails(kv, encode_command("put", b"k", b"v" * 9)) == "value_too_large"
    run(kv, "append", b"a", b"12345")
    assert fails(kv, encode_command("append", b"a", b"6789")) == "value_too_large"
    assert run(kv, "get", b"a") == b"12345"
    run(kv, "put", b"b", b"x")
    assert fails(kv, encode_command("put", b"c", b"x")) == "full"
    assert fails(kv, encode_command("incr", b"c", 1)) == "full"
    assert fails(kv, encode_command("cas", b"c", None, b"x")) == "full"
    run(kv, "put", b"b", b"y")  # an existing key still takes writes
    run(kv, "delete", b"b")
    run(kv, "put", b"c", b"x")  # and a freed slot is usable
    assert len(kv.data) == 2
    assert fails(kv, b"\x92" + b"\xc4\x80" + b"x" * 128) == "malformed"  # over command_bytes_max


def test_params_are_validated() -> None:
    with pytest.raises(ConfigError):
        KvParams(keys_max=0).validate()
    with pytest.raises(ConfigError):
        KvParams(key_bytes_max=10, value_bytes_max=10, command_bytes_max=15).validate()


def test_a_value_far_above_64_kib_is_stored_and_a_batch_stops_after_its_budget() -> None:
    kv = KeyValueStateMachine()
    big = bytes(range(256)) * (4 * 1024 * 1024 // 256)  # 4 MiB
    assert run(kv, "put", b"big", big) is None
    assert run(kv, "get", b"big") == big
    too_big = b"x" * (kv.params.value_bytes_max + 1)
    assert fails(kv, encode_command("put", b"k", too_big)) == "value_too_large"
    # A batch: the first result is always whole; once the results pass
    # result_bytes_max, the rest does not run (answered result_too_large), so a
    # front sends it again and every command still runs once, in order.
    commands = [encode_command("incr", b"n", 1), encode_command("get", b"big"),
                encode_command("incr", b"n", 1), encode_command("get", b"big")]
    results = decode_batch_result(kv.apply(encode_batch(commands)))
    assert isinstance(results, tuple)
    decoded = [decode_result(result) for result in results]
    assert decoded[:2] == [KvOk(1), KvOk(big)]
    assert [item.code for item in decoded[2:] if isinstance(item, KvError)] == [
        "result_too_large", "result_too_large"]
    assert run(kv, "get", b"n") == b"1"  # the INCR after the cut did not run
    first_big = decode_batch_result(kv.read(encode_batch(commands[1::2])))
    assert isinstance(first_big, tuple) and decode_result(first_big[0]) == KvOk(big)
    # An exec is all or nothing: every command runs, its results may hold one
    # value more, and a result that does not fit is replaced.
    outcome = decode_exec_result(kv.apply(encode_exec([], [*commands, commands[1]])))
    assert isinstance(outcome, tuple) and run(kv, "get", b"n") == b"3"
    assert decode_result(outcome[1]) == decode_result(outcome[3]) == KvOk(big)
    last = decode_result(outcome[4])
    assert isinstance(last, KvError) and last.code == "result_too_large"


def test_read_serves_gets_only() -> None:
    kv = KeyValueStateMachine()
    run(kv, "put", b"k", b"v")
    assert decode_result(kv.read(encode_command("get", b"k"))) == KvOk(b"v")
    result = decode_result(kv.read(encode_command("put", b"k", b"w")))
    assert isinstance(result, KvError)
    assert result.code == "not_read_only"
    assert run(kv, "get", b"k") == b"v"
    assert is_write(encode_command("put", b"k", b"w"))
    assert not is_write(encode_command("get", b"k"))
    assert is_write(b"garbage")


def test_encode_command_refuses_misuse() -> None:
    with pytest.raises(UsageError):
        encode_command("frobnicate", b"k")
    with pytest.raises(UsageError):
        encode_command("put", b"k")
    with pytest.raises(UsageError):
        encode_command("incr", b"k", 1 << 70)


def test_decode_result_never_raises() -> None:
    for data in (b"\xc1", RAW.encode_value(["ok"])):
        result = decode_result(data)
        assert isinstance(result, KvError) and result.code == "bad_result", result
    assert decode_result(RAW.encode_value(["error", 1, "x"])) == KvError(
        "bad_result", "not a result: ('error', 1, 'x')"
    )


def test_snapshot_round_trip_and_versioning() -> None:
    kv = KeyValueStateMachine()
    for index in range(50):
        run(kv, "put", f"k{index}".encode(), f"v{index}".encode())
    run(kv, "incr", b"n", 3)
    snapshot = kv.snapshot()
    other = KeyValueStateMachine()
    other.restore(snapshot)
    assert other.data == kv.data
    assert other.snapshot() == snapshot
    assert other.versions == kv.versions
    assert (other.revision, other.floor) == (kv.revision, kv.floor)
    decoded = RAW.decode_value(snapshot)
    assert isinstance(decoded, tuple) and decoded[:2] == ("replicaio.kv", 3)
    # Equal states give equal bytes: keys in byte order, whatever dict order they have.
    shuffled = KeyValueStateMachine()
    shuffled.restore(snapshot)
    shuffled.data = dict(sorted(shuffled.data.items(), reverse=True))
    assert shuffled.snapshot() == snapshot
    # Restoring replaces everything.
    run(other, "put", b"extra", b"x")
    other.restore(KeyValueStateMachine().snapshot())
    assert other.data == {}


@pytest.mark.parametrize(
    "snapshot",
    [
        b"\xc1",
        RAW.encode_value(["replicaio.kv", 3, [], 0, 0, []]),
        RAW.encode_value(["replicaio.kv", 1, [[b"k", b"v"]]]),  # no versions: refused
        RAW.encode_value(["replicaio.kv", 2, []]),
        RAW.encode_value(["other", 2, [], 0, 0, []]),
        RAW.encode_value(["replicaio.kv", 2, [[b"k", "v", 1]], 1, 0, []]),
        RAW.encode_value(["replicaio.kv", 2, [[b"k", b"v", 1], [b"k", b"w", 1]], 1, 0, []]),
        RAW.encode_value(["replicaio.kv", 2, [[b"k", b"v"]], 1, 0, []]),
        RAW.encode_value(["replicaio.kv", 2, [[b"k", b"v", 2]], 1, 0, []]),  # version > revision
        RAW.encode_value(["replicaio.kv", 2, [], 1, 2, []]),  # floor > revision
        RAW.encode_value(["replicaio.kv", 2, [[b"k", b"v", 1]], 2, 0, [[b"k", 2]]]),
        RAW.encode_value(["replicaio.kv", 2, [], 3, 0, [[b"a", 2], [b"b", 1]]]),  # unordered
    ],
)
def test_restore_refuses_what_snapshot_did_not_produce(snapshot: bytes) -> None:
    kv = KeyValueStateMachine()
    run(kv, "put", b"keep", b"me")
    with pytest.raises(KvSnapshotError):
        kv.restore(snapshot)
    assert kv.data == {b"keep": b"me"}


def test_restore_refuses_more_keys_than_keys_max() -> None:
    big = KeyValueStateMachine()
    for index in range(5):
        run(big, "put", bytes([index]), b"v")
    small = KeyValueStateMachine(KvParams(keys_max=4))
    with pytest.raises(KvSnapshotError):
        small.restore(big.snapshot())


# -- versions and transactions (exec) ------------------------------------------------------------


def execute(
    kv: KeyValueStateMachine, watches: list[tuple[bytes, int]], *commands: bytes
) -> list[object] | None:
    """An exec's per-command results (KvOk value or KvError), or None if aborted."""
    found = decode_exec_result(kv.apply(encode_exec(watches, list(commands))))
    assert not isinstance(found, KvError), found
    if found is None:
        return None
    results = [decode_result(item) for item in found]
    return [result.value if isinstance(result, KvOk) else result for result in results]


def test_every_modification_and_only_a_modification_changes_a_version() -> None:
    kv = KeyValueStateMachine()
    assert run(kv, "version", b"k") == 0
    run(kv, "put", b"k", b"1")
    assert run(kv, "version", b"k") == 1
    for unchanged in (
        encode_command("get", b"k"),
        encode_command("cas", b"k", b"other", b"x"),  # fails: no change
        encode_command("delete", b"absent"),
        encode_command("version", b"k"),
    ):
        kv.apply(unchanged)
    assert run(kv, "version", b"k") == 1
    assert run(kv, "version", b"absent") == 0
    run(kv, "put", b"k", b"1")  # the same value: still a modification (as Redis)
    assert run(kv, "version", b"k") == 2
    run(kv, "incr", b"k", 0)
    run(kv, "append", b"k", b"")
    run(kv, "cas", b"k", b"1", b"1")
    assert run(kv, "version", b"k") == 5
    run(kv, "put", b"s", b"text")
    assert fails(kv, encode_command("incr", b"s", 1)) == "not_integer"
    assert run(kv, "version", b"s") == 6
    assert run(kv, "delete", b"k") is True
    assert run(kv, "version", b"k") == 7  # a tombstone keeps the deletion's version
    assert kv.revision == 7
    assert decode_result(kv.read(encode_command("version", b"k"))) == KvOk(7)
    assert not is_write(encode_command("version", b"k"))


def test_exec_runs_every_command_at_one_point_and_a_runtime_error_stops_nothing() -> None:
    kv = KeyValueStateMachine()
    run(kv, "put", b"text", b"abc")
    results = execute(
        kv, [],
        encode_command("put", b"a", b"1"),
        encode_command("incr", b"text", 1),  # a runtime error: only this command fails
        encode_command("incr", b"a", 4),
        encode_command("get", b"a"),
    )
    assert results is not None
    assert results[0] is None and results[2] == 5 and results[3] == b"5"
    assert isinstance(results[1], KvError) and results[1].code == "not_integer"
    assert kv.data == {b"text": b"abc", b"a": b"5"}
    assert execute(kv, []) == []  # an empty transaction


def test_exec_aborts_whole_if_a_watched_key_changed_after_the_watch() -> None:
    kv = KeyValueStateMachine()
    run(kv, "put", b"w", b"0")
    watched = version_of(kv, b"w")
    run(kv, "put", b"w", b"0")  # modified (to the same value) by anyone
    before = (dict(kv.data), dict(kv.versions), kv.revision)
    assert execute(kv, [(b"w", watched)], encode_command("put", b"x", b"1")) is None
    assert (kv.data, kv.versions, kv.revision) == before  # nothing applied
    fresh = version_of(kv, b"w")
    assert execute(kv, [(b"w", fresh)], encode_command("put", b"x", b"1")) == [None]
    assert kv.data[b"x"] == b"1"


def test_watching_an_absent_key_sees_it_created_and_deleted_again() -> None:
    kv = KeyValueStateMachine()
    absent = version_of(kv, b"ghost")
    run(kv, "put", b"ghost", b"boo")
    run(kv, "delete", b"ghost")
    assert b"ghost" not in kv.data
    assert execute(kv, [(b"ghost", absent)], encode_command("put", b"y", b"1")) is None
    assert b"y" not in kv.data


def test_tombstones_are_bounded_and_versions_never_go_back() -> None:
    kv = KeyValueStateMachine(KvParams(tombstones_max=2))
    seen: dict[bytes, int] = {}
    for key in (b"a", b"b", b"c", b"d"):
        run(kv, "put", key, b"v")
        run(kv, "delete", key)
        seen[key] = version_of(kv, key)
    assert len(kv.tombstones) == 2  # the bound was reached: a and b were forgotten
    assert kv.floor == seen[b"b"]
    for key, version in seen.items():
        assert version_of(kv, key) >= version
    # A modification after a watch always changes what the watch read.
    watched = version_of(kv, b"a")
    run(kv, "put", b"a", b"again")
    run(kv, "delete", b"a")
    for key in (b"e", b"f", b"g"):  # push a's new tombstone out too
        run(kv, "put", key, b"v")
        run(kv, "delete", key)
    assert b"a" not in kv.tombstones
    assert execute(kv, [(b"a", watched)], encode_command("put", b"z", b"1")) is None


def test_exec_refuses_nesting_and_bad_watches() -> None:
    kv = KeyValueStateMachine()
    nested = execute(
        kv, [], encode_exec([], [encode_command("put", b"a", b"1")]),
        encode_command("put", b"b", b"2"),
    )
    assert nested is not None and isinstance(nested[0], KvError) and nested[1] is None
    assert kv.data == {b"b": b"2"}
    assert fails(kv, RAW.encode_value(["exec", [[b"k"]], []])) == "bad_arguments"
    assert fails(kv, RAW.encode_value(["exec", [[b"k", "1"]], []])) == "bad_arguments"
    assert fails(kv, RAW.encode_value(["exec", [], [1]])) == "bad_arguments"
    inner = RAW.decode_value(kv.apply(RAW.encode_value(["batch", [encode_exec([], [])]])))
    assert isinstance(inner, tuple) and isinstance(inner[1], tuple)
    assert isinstance(inner[1][0], bytes), inner
    assert decode_result(inner[1][0]) == KvError("bad_arguments", "exec inside a batch or exec")
    too_many = [[b"k", 0]] * (WATCH_KEYS_MAX + 1)
    assert fails(kv, RAW.encode_value(["exec", too_many, []])) == "bad_arguments"
    with pytest.raises(UsageError):
        encode_exec([(b"k", 0)] * (WATCH_KEYS_MAX + 1), [])
    with pytest.raises(UsageError):
        encode_command("exec", b"k")


def test_read_serves_an_exec_of_reads_after_checking_its_watches() -> None:
    kv = KeyValueStateMachine()
    run(kv, "put", b"a", b"1")
    version = version_of(kv, b"a")
    command = encode_exec([(b"a", version)], [encode_command("get", b"a")])
    found = decode_exec_result(kv.read(command))
    assert found is not None and not isinstance(found, KvError)
    assert decode_result(found[0]) == KvOk(b"1")
    run(kv, "put", b"a", b"2")
    assert decode_exec_result(kv.read(command)) is None
    writes = encode_exec([], [encode_command("put", b"a", b"3")])
    found = decode_exec_result(kv.read(writes))
    assert found is not None and not isinstance(found, KvError)
    assert decode_result(found[0]) == KvError("not_read_only", "put changes the state")
    assert kv.data[b"a"] == b"2"


OPERATION = st.one_of(
    st.tuples(st.just("get"), st.sampled_from([b"a", b"b", b"c"])),
    st.tuples(st.just("put"), st.sampled_from([b"a", b"b"]), st.binary(max_size=4)),
    st.tuples(st.just("delete"), st.sampled_from([b"a", b"b", b"c"])),
    st.tuples(st.just("cas"), st.sampled_from([b"a", b"c"]),
              st.one_of(st.none(), st.binary(max_size=2)), st.binary(max_size=2)),
    st.tuples(st.just("append"), st.sampled_from([b"a", b"b"]), st.binary(max_size=3)),
    st.tuples(st.just("incr"), st.sampled_from([b"c", b"a"]),
              st.integers(min_value=INT64_MIN, max_value=INT64_MAX)),
    st.tuples(st.just("version"), st.sampled_from([b"a", b"b", b"c"])),
    st.binary(max_size=6),
)
EXEC = st.tuples(
    st.just("exec"),
    st.lists(st.tuples(st.sampled_from([b"a", b"b", b"c"]), st.integers(0, 12)), max_size=2),
    st.lists(OPERATION, max_size=3),
)


def encoded(item: object) -> bytes:
    if isinstance(item, bytes):
        return item
    assert isinstance(item, tuple)
    if item[0] == "exec":
        return encode_exec(item[1], [encoded(command) for command in item[2]])
    return encode_command(*item)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(OPERATION, EXEC), max_size=40), st.integers(min_value=0, max_value=40))
def test_deterministic_and_snapshot_anywhere(operations: list[object], cut: int) -> None:
    """Two replicas given the same commands agree on every result and byte of state;
    a replica restored from a snapshot taken anywhere continues identically (versions,
    tombstones and the floor included: tombstones_max is tiny here)."""
    commands = [encoded(item) for item in operations]
    params = KvParams(tombstones_max=2)
    one, two = KeyValueStateMachine(params), KeyValueStateMachine(params)
    results = [one.apply(command) for command in commands]
    assert results == [two.apply(command) for command in commands]
    assert one.snapshot() == two.snapshot()
    prefix = KeyValueStateMachine(params)
    for command in commands[:cut]:
        prefix.apply(command)
    restored = KeyValueStateMachine(params)
    restored.restore(prefix.snapshot())
    assert [restored.apply(command) for command in commands[cut:]] == results[cut:]
    assert restored.snapshot() == one.snapshot()


def test_matches_the_checker_model_on_a_random_run() -> None:
    """The store agrees with the linearizability checker's sequential model, so a
    history of a correct cluster is judged against what the store really does."""
    from replicaio.check.history import Operation
    from replicaio.check.linearizability import KEY_VALUE_MODEL

    rng = random.Random(5)
    kv = KeyValueStateMachine()
    states: dict[str, str | None] = {}
    for step in range(2000):
        key = rng.choice("ab")
        kind = rng.choice(["get", "put", "delete", "cas", "append", "incr"])
        value = expected = output = None
        if kind == "put":
            value = rng.choice(["1", "22", f"x{step}"])
            run(kv, "put", key.encode(), value.encode())
        elif kind == "append":
            value = rng.choice(["3", "y"])
            run(kv, "append", key.encode(), value.encode())
        elif kind == "cas":
            expected = rng.choice([None, states.get(key), "1"])
            value = f"c{step}"
            swapped = run(kv, "cas", key.encode(), None if expected is None else expected.encode(),
                          value.encode())
            output = "ok" if swapped else "fail"
        elif kind == "incr":
            value = str(rng.randint(-3, 3))
            response = decode_result(kv.apply(encode_command("incr", key.encode(), int(value))))
            if isinstance(response, KvError):
                assert response.code == "not_integer"
                continue
            output = str(response.value)
        elif kind == "delete":
            run(kv, "delete", key.encode())
        else:
            read = run(kv, "get", key.encode())
            assert read is None or isinstance(read, bytes)
            output = None if read is None else read.decode()
        op = Operation(0, kind, key, value, expected, output, step, step, "ok")
        accepted, states[key] = KEY_VALUE_MODEL.step(states.get(key), op)
        assert accepted, (step, op)
