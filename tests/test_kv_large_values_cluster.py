"""Values far above 64 KiB on a live 3-node cluster, through redis-py (issue 8,
section 2): a 4 MiB value and one of exactly ``value_bytes_max`` travel the log,
the WAL (fsync on) and a snapshot to a follower that was down while they were
written; that follower, made leader, answers them whole from its own state. A
pipeline that mixes large reads with writes is answered in order, each command
run once (the store stops a batch after its result budget and the front sends
the rest again), and a transaction reads its large value back. The nodes' logs
report their own snapshots (``snapshot taken``) and the follower's install
(``snapshot installed from the leader``).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis

from replicaio.runtime.local import free_port_block
from replicaio.services.kv.redis_plan import KV_PARAMS

CLI = [sys.executable, "-m", "replicaio.cli"]
MIB = 1 << 20
T = TypeVar("T")


def cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *arguments], capture_output=True, text=True, timeout=120,
                          check=False)


def pattern(size: int, seed: bytes) -> bytes:
    """``size`` bytes that differ everywhere (a lost or shifted chunk shows)."""
    blocks = (hashlib.blake2b(seed + index.to_bytes(8, "little")).digest()
              for index in range(size // 64 + 1))
    return b"".join(blocks)[:size]


def patient(call: Callable[[], T], timeout_s: float = 120.0) -> T:
    """``call()``, again while the cluster answers TRYAGAIN, or UNKNOWN for a
    write (a large write with fsync on a loaded machine can outlast the front's
    5 s request timeout; SET and GET are safe to repeat)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except redis.exceptions.ResponseError as error:  # TRYAGAIN, or UNKNOWN (a write)
            if not str(error).startswith(("TRYAGAIN", "UNKNOWN")) and not isinstance(
                    error, redis.exceptions.TryAgainError):
                raise
            assert time.monotonic() < deadline, "the cluster kept answering TRYAGAIN"
            time.sleep(0.5)


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def status(directory: Path) -> list[dict[str, object]]:
    done = cli("ctl", "--cluster", str(directory / "cluster.toml"), "status", "--json")
    nodes: list[dict[str, object]] = json.loads(done.stdout)["nodes"]
    return nodes


def events(directory: Path, node: int) -> list[dict[str, object]]:
    text = (directory / f"node-{node}.log").read_text(errors="replace")
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Path, list[dict[str, object]]]]:
    directory = tmp_path / "kv"
    base = free_port_block(10)
    up = cli("kv", "up", "--nodes", "3", "--base-port", str(base), "--data-dir",
             str(directory), "--protocol", "raft:snapshot=4", "--no-metrics", "--json")
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield directory, json.loads(up.stdout)["nodes"]
    finally:
        cli("kv", "down", "--data-dir", str(directory))


def wait_for(condition: object, what: str, timeout_s: float = 60.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.2)


def test_large_values_reach_a_follower_by_snapshot_and_are_served_whole(
    cluster: tuple[Path, list[dict[str, object]]],
) -> None:
    directory, nodes = cluster
    ports = {int(str(item["id"])): int(str(item["client"]).rsplit(":", 1)[1]) for item in nodes}
    pids = {int(str(item["id"])): int(str(item["pid"])) for item in nodes}
    report = status(directory)
    leader = next(int(str(item["node"])) for item in report if item["role"] == "leader")
    follower = next(node for node in ports if node != leader)
    os.kill(pids[follower], signal.SIGKILL)
    wait_for(lambda: not pid_alive(pids[follower]), "the follower died")

    big = pattern(4 * MIB, b"big")
    largest = pattern(KV_PARAMS.value_bytes_max, b"largest")
    client = redis.Redis(port=ports[leader], socket_timeout=60)
    assert client.set("big", big) is True
    assert client.set("largest", largest) is True
    with pytest.raises(redis.ResponseError, match="value too large"):
        client.set("over", largest + b"!")
    assert client.append("big", b"+tail") == len(big) + 5
    # A pipeline mixing large reads with writes: in order, each write once.
    with client.pipeline(transaction=False) as pipe:
        for _ in range(3):
            pipe.get("big")
            pipe.incr("n")
            pipe.get("largest")
            pipe.incr("n")
        answers = pipe.execute()
    assert answers == [big + b"+tail", 1, largest, 2, big + b"+tail", 3, largest, 4,
                       big + b"+tail", 5, largest, 6]
    # A transaction (redis-py's default pipeline) writes and reads back one.
    with client.pipeline() as pipe:
        pipe.set("in-exec", big)
        pipe.get("in-exec")
        pipe.incr("n")
        assert pipe.execute() == [True, big, 7]
    for index in range(24):  # many batches: the leader compacts past the follower
        assert client.set(f"small:{index}", index) is True
    client.close()

    restarted = cli("kv", "up", "--node", str(follower), "--data-dir", str(directory), "--json")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr

    def installed() -> bool:
        return any(event["message"] == "snapshot installed from the leader"
                   for event in events(directory, follower))

    wait_for(installed, "the follower installed the leader's snapshot")
    assert cli("ctl", "--cluster", str(directory / "cluster.toml"), "move-leader",
               str(follower)).returncode == 0
    wait_for(lambda: any(item["role"] == "leader" and item["node"] == follower
                         for item in status(directory)), "the follower leads")
    # The follower, now leader, serves reads from its own state machine.
    reader = redis.Redis(port=ports[follower], socket_timeout=60)
    assert reader.get("big") == big + b"+tail"
    assert reader.get("largest") == largest
    assert reader.get("in-exec") == big
    assert reader.strlen("largest") == KV_PARAMS.value_bytes_max
    assert reader.getrange("big", 4 * MIB - 2, -1) == big[-2:] + b"+tail"
    assert reader.get("n") == b"7" and reader.get("small:23") == b"23"
    assert reader.exists("over") == 0
    reader.close()
    taken = [event for node in ports for event in events(directory, node)
             if event["message"] == "snapshot taken"]
    assert taken and max(int(str(event["size"])) for event in taken) > 12 * MIB
    assert all(str(event["at"]).endswith("Z") and int(str(event["index"])) >= 4
               for event in taken)


def test_values_sets_a_larger_value_bound_and_the_whole_path_follows(tmp_path: Path) -> None:
    """``raft:values=12288``: values up to 12 MiB, above the default 8 MiB
    (the protocol's parameter, a cluster constant); SMR's command and batch
    bounds, the peer and client frames and the Redis front's parser follow it,
    so a 12 MiB value is
    replicated (a majority wrote it: its AppendEntries crossed the transport)
    and read back whole, one byte more is refused naming the bound, and a
    bound beyond what a log entry and a WAL record carry is refused by name."""
    too_large = cli("kv", "up", "--protocol", "raft:values=65536", "--nodes", "3",
                    "--data-dir", str(tmp_path / "refused"), "--no-fsync")
    assert too_large.returncode == 2, too_large.stderr
    assert "values=65536 KiB must be in 1..32768 KiB" in too_large.stderr
    base = free_port_block(10)
    directory = tmp_path / "kv"
    up = cli("kv", "up", "--protocol", "raft:values=12288", "--nodes", "3", "--base-port",
             str(base), "--data-dir", str(directory))
    try:
        assert up.returncode == 0, up.stderr
        cluster = (directory / "cluster.toml").read_text()
        assert "values = 12288" in cluster
        leader = next(int(str(item["node"])) for item in status(directory)
                      if item["role"] == "leader")
        port = base + 1 + leader
        client = redis.Redis(port=port, socket_timeout=120)
        largest = pattern(12 * MIB, b"twelve")
        assert patient(lambda: client.set("largest", largest)) is True
        assert patient(lambda: client.get("largest")) == largest
        assert client.strlen("largest") == 12 * MIB
        with pytest.raises(redis.ResponseError, match=r"value too large \(at most 12582912 bytes"):
            client.set("over", largest + b"!")
        with pytest.raises(redis.ResponseError, match=r"value too large \(at most 12582912 bytes"):
            client.append("largest", b"!")  # the result of an append is a value too
        assert client.get("largest") == largest
    finally:
        cli("kv", "down", "--data-dir", str(directory))
