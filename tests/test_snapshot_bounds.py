"""Snapshots stay within what the protocols carry to a lagging replica.

A store that could grow past what its protocol transfers would work until it
did, then leave every replica that needs a snapshot behind for good (a Raft
follower used to refuse anything over 64 MiB while the store allowed 512 MiB).
These tests fill stores and session tables to their bounds with random
content and check the encoded snapshot against the declared bound, and check
that every key-value protocol is assembled with a transfer ceiling at or above
that bound (or refused by name).
"""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from replicaio.assembly import (
    BFT_STORE_BYTES_DEFAULT,
    bft_constants,
    bft_kv_params,
    kv_params,
    protocol_factory,
    snapshot_bytes_needed,
    split_name,
)
from replicaio.core.codec import Codec
from replicaio.core.errors import ConfigError, UsageError
from replicaio.services.kv import KeyValueStateMachine, KvParams, decode_result
from replicaio.services.kv.state_machine import encode_command, encode_redis
from replicaio.smr.params import SmrConstants
from replicaio.smr.protocol import SmrFactory
from replicaio.smr.replica import encode_snapshot
from replicaio.smr.sessions import SessionTable

SMALL = KvParams(
    key_bytes_max=48, value_bytes_max=2048, keys_max=400, command_bytes_max=4096,
    result_bytes_max=4096, tombstones_max=64, items_max=64, bytes_max=48 * 1024,
)


def fill(kv: KeyValueStateMachine, rng: random.Random, commands: int) -> None:
    """Random writes of every type, deletes (tombstones) and expiries, until
    the store refuses more (``full``) often; refusals are fine, that is the
    point: the store at its bounds."""
    for step in range(commands):
        key = bytes(rng.randrange(97, 123) for _ in range(rng.randrange(1, 49)))
        kind = rng.randrange(8)
        if kind == 0:
            command = encode_command("put", key, rng.randbytes(rng.randrange(0, 2049)))
        elif kind == 1:
            command = encode_redis("hset", key, rng.randbytes(rng.randrange(1, 40)),
                                   rng.randbytes(rng.randrange(0, 200)))
        elif kind == 2:
            command = encode_redis("rpush", key, *[rng.randbytes(rng.randrange(0, 100))
                                                   for _ in range(rng.randrange(1, 8))])
        elif kind == 3:
            command = encode_redis("zadd", key, str(rng.uniform(-1e9, 1e9)).encode(),
                                   rng.randbytes(rng.randrange(1, 60)))
        elif kind == 4:
            command = encode_redis("sadd", key, rng.randbytes(rng.randrange(1, 60)))
        elif kind == 5:
            command = encode_redis("pexpire", key, str(rng.randrange(1, 10**9)).encode())
        else:
            command = encode_command("delete", key)
        decode_result(kv.apply(command))
        if step % 7 == 0:  # deletes of present keys: tombstones at their bound
            present = sorted(kv.data)
            if present:
                decode_result(kv.apply(encode_command("delete", rng.choice(present))))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
@example(seed=137811214)  # its last writes revive a deleted key: 63 tombstones of 64
def test_a_full_store_snapshot_stays_within_its_declared_bound(seed: int) -> None:
    kv = KeyValueStateMachine(SMALL)
    rng = random.Random(seed)
    fill(kv, rng, 1500)
    # A write to a deleted key takes its tombstone away (the key lives again):
    # top the tombstones up to their bound with deletes of present keys.
    for _ in range(SMALL.tombstones_max):
        if len(kv.tombstones) == SMALL.tombstones_max or not kv.data:
            break
        decode_result(kv.apply(encode_command("delete", rng.choice(sorted(kv.data)))))
    assert kv.used_bytes > SMALL.bytes_max // 2, "the workload must fill the store"
    assert len(kv.tombstones) == SMALL.tombstones_max
    assert len(kv.snapshot()) <= SMALL.snapshot_bytes_bound()


def test_the_bound_is_tight_enough_to_mean_something() -> None:
    """Dropping the tombstones from the bound would be caught: a store of
    long deleted keys needs them."""
    params = KvParams(key_bytes_max=1024, value_bytes_max=1024, keys_max=10,
                      command_bytes_max=4096, tombstones_max=200, bytes_max=4096)
    kv = KeyValueStateMachine(params)
    for number in range(400):
        key = f"{number:04d}".encode() * 256
        decode_result(kv.apply(encode_command("put", key, b"")))
        decode_result(kv.apply(encode_command("delete", key)))
    size = len(kv.snapshot())
    assert len(kv.tombstones) == 200
    assert size <= params.snapshot_bytes_bound()
    assert size > params.bytes_max + 256, "tombstones alone exceed bytes_max here"


def test_session_results_are_bounded_in_bytes_least_recently_used_first() -> None:
    table = SessionTable(sessions_max=10, results_bytes_max=100)
    table.record(1, 1, b"a" * 40, 1)
    table.record(2, 1, b"b" * 40, 2)
    table.record(1, 2, b"c" * 10, 3)  # client 1 is now the most recent
    table.record(3, 1, b"d" * 60, 4)  # 40 + 10 + 60 > 100: client 2 goes
    assert list(table) == [1, 3]
    assert table.result_bytes == 70 and table.evictions == 1
    table.record(4, 1, b"e" * 500, 5)  # alone over the bound: kept, every other one goes
    assert list(table) == [4]
    assert table.result_bytes == 500
    copy = SessionTable(sessions_max=10, results_bytes_max=100)
    copy.replace(table.records())  # one oversized newest session is a valid table
    assert copy.result_bytes == 500
    with pytest.raises(UsageError, match="results_bytes_max"):
        copy.replace([(1, 1, b"x" * 60, 1), (2, 1, b"y" * 60, 2)])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_an_smr_snapshot_of_full_tables_stays_within_its_bound(seed: int) -> None:
    rng = random.Random(seed)
    constants = SmrConstants(sessions_max=50, session_results_bytes_max=3000,
                             snapshot_interval=8).validate()
    table = SessionTable(constants.sessions_max, constants.session_results_bytes_max)
    result_max = 2000
    for index in range(1, 400):
        client = rng.randrange(2**63)
        table.record(client, rng.randrange(1, 2**62), rng.randbytes(rng.randrange(result_max)),
                     index)
    kv = KeyValueStateMachine(SMALL)
    fill(kv, rng, 800)
    application = kv.snapshot()
    data = encode_snapshot(Codec(frame_bytes_max=1 << 30, items_max=1 << 20), 2**62,
                           application, table.records())
    bound = constants.snapshot_bytes_bound(len(application), result_max)
    assert len(data) <= bound


@pytest.mark.parametrize("name", ["raft", "pbft", "minbft", "raft:memory=2048", "pbft:memory=16"])
def test_every_kv_protocol_carries_its_stores_largest_snapshot(name: str) -> None:
    """The protocol's transfer ceiling is derived from the store's bound."""
    factory = protocol_factory(name)
    assert isinstance(factory, SmrFactory)
    base, parameters = split_name(name)
    if base == "raft":
        kv = kv_params(parameters, KvParams().bytes_max)
        constants = factory.constants
    else:
        kv = bft_kv_params(parameters)
        constants = bft_constants(parameters, 16)
    needed = constants.snapshot_bytes_bound(kv.snapshot_bytes_bound(), kv.result_bytes_bound())
    store = factory.state_machine()
    assert isinstance(store, KeyValueStateMachine)
    assert store.params == kv
    if "memory" in parameters:
        assert kv.bytes_max == parameters["memory"] << 20
    elif base != "raft":
        assert kv.bytes_max == BFT_STORE_BYTES_DEFAULT
    assert needed <= snapshot_bytes_needed(name, kv, constants, 1 << 40)


def test_a_store_too_large_for_the_protocol_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"memory="):
        protocol_factory("pbft:memory=100")
    with pytest.raises(ConfigError, match=r"memory="):
        protocol_factory("minbft:memory=64")
    with pytest.raises(ConfigError, match=r"bytes_max must be >= 1"):
        protocol_factory("raft:memory=0")


def test_kv_up_refuses_a_bft_store_that_cannot_be_transferred(tmp_path: object) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "replicaio.cli", "kv", "up", "--protocol", "pbft:memory=100",
         "--nodes", "4", "--data-dir", str(tmp_path), "--no-fsync"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "memory=" in done.stderr and "Traceback" not in done.stderr


def test_a_live_cluster_holds_what_memory_says_and_refuses_more_with_oom(
    tmp_path: object,
) -> None:
    """``raft:memory=1``: a 1 MiB store, Redis's maxmemory with noeviction."""
    import redis  # the real client, against real node processes

    from replicaio.runtime.local import free_port_block

    base = free_port_block(10)
    directory = f"{tmp_path}/kv"
    command = [sys.executable, "-m", "replicaio.cli", "kv"]
    up = subprocess.run([*command, "up", "--protocol", "raft:memory=1", "--nodes", "3",
                         "--base-port", str(base), "--data-dir", directory, "--no-fsync"],
                        capture_output=True, text=True, timeout=120)
    try:
        assert up.returncode == 0, up.stderr
        client = redis.Redis(port=base + 1, socket_timeout=30)
        assert client.info("memory")["maxmemory"] == 1 << 20
        value = b"v" * (100 * 1024)
        written = 0
        # redis-py turns the reply's OOM code into its OutOfMemoryError
        with pytest.raises(redis.exceptions.OutOfMemoryError, match="store is full"):
            for number in range(20):
                client.set(f"k{number}", value)
                written += 1
        assert 5 <= written < 11, written  # 1 MiB holds ten such values, less their keys
        assert client.get("k0") == value
        client.delete("k0", "k1")  # room again: writes resume
        client.set("again", value)
        assert client.get("again") == value
    finally:
        subprocess.run([*command, "down", "--data-dir", directory], capture_output=True,
                       timeout=120)
