"""``replicaio ctl snapshot save|restore`` on real clusters (issue 8, section 3): a
consistent backup of a live cluster taken while a client writes, restored into a NEW
cluster that then holds exactly the saved data (every type, the expiry deadlines),
and the refusals: a damaged or truncated file, a non-empty ``--out``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis

from replicaio.runtime.local import free_port_block

CLI = [sys.executable, "-m", "replicaio.cli"]


def replicaio(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *arguments], capture_output=True, text=True, timeout=180,
                          check=False)


def fill(client: redis.Redis) -> None:
    client.set("string", "value")
    client.set("binary", bytes(range(256)) * 200)  # 51,200 bytes, every byte value
    client.rpush("list", *[f"item{i}" for i in range(1500)])
    client.hset("hash", mapping={f"field{i}": f"value{i}" for i in range(700)})
    client.sadd("set", *[f"member{i}" for i in range(400)])
    client.zadd("zset", {f"member{i}": i / 7 for i in range(400)} | {"inf": float("inf")})
    client.set("expiring", "soon", px=600_000)


def dump(client: redis.Redis) -> dict[bytes, object]:
    """Every key's type and whole value."""
    found: dict[bytes, object] = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"string":
            found[key] = client.get(key)
        elif kind == b"list":
            found[key] = client.lrange(key, 0, -1)
        elif kind == b"hash":
            found[key] = client.hgetall(key)
        elif kind == b"set":
            found[key] = client.smembers(key)
        else:
            assert kind == b"zset", kind
            found[key] = client.zrange(key, 0, -1, withscores=True)
    return found


def test_save_while_writing_then_restore_into_a_new_cluster(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "restored"
    base = free_port_block(10)
    up = replicaio("kv", "up", "--nodes", "3", "--base-port", str(base), "--data-dir",
                   str(source), "--no-fsync", "--no-metrics")
    assert up.returncode == 0, up.stdout + up.stderr
    client = redis.Redis(port=base + 1, socket_timeout=20)
    stop = threading.Event()
    writes: list[int] = []

    def write_pairs() -> None:
        """Two counters moved together in one transaction: any consistent state has
        them equal."""
        writer = redis.Redis(port=base + 2, socket_timeout=20)
        while not stop.is_set():
            with writer.pipeline() as pipe:
                pipe.incr("left")
                pipe.incr("right")
                writes.append(pipe.execute()[0])
        writer.close()

    writer = threading.Thread(target=write_pairs)
    try:
        fill(client)
        writer.start()
        while len(writes) < 20:
            time.sleep(0.05)
        backup = tmp_path / "backup.snap"
        saved = replicaio("ctl", "--cluster", str(source / "cluster.toml"), "snapshot", "save",
                          str(backup), "--json")
        assert saved.returncode == 0, saved.stdout + saved.stderr
        header = json.loads(saved.stdout)
        stop.set()
        writer.join(timeout=30)
        assert header["keys"] == 9 and header["applied_index"] > 0
        expected = dump(client)
        ttl_at_save = client.pttl("expiring")
    finally:
        stop.set()
        client.close()
        replicaio("kv", "down", "--data-dir", str(source))
    new_base = free_port_block(10)
    restored = replicaio("ctl", "snapshot", "restore", str(backup), "--out", str(target),
                         "--nodes", "3", "--base-port", str(new_base), "--json")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    report = json.loads(restored.stdout)
    assert report["keys_restored"] == report["keys_saved"] == 9
    again = replicaio("kv", "up", "--data-dir", str(target), "--nodes", "3", "--base-port",
                      str(new_base))
    assert again.returncode == 0, again.stdout + again.stderr
    try:
        new = redis.Redis(port=new_base + 1, socket_timeout=20)
        found = dump(new)
        left_text, right_text = found.pop(b"left"), found.pop(b"right")
        assert isinstance(left_text, bytes) and isinstance(right_text, bytes)  # two strings
        left, right = int(left_text), int(right_text)
        assert left == right  # the backup is one consistent state
        assert 20 <= left <= max(writes)
        for key in (b"left", b"right"):
            expected.pop(key)
        assert found == expected
        assert new.pttl("string") == -1
        assert 0 < new.pttl("expiring") <= 600_000
        assert abs(new.pttl("expiring") - ttl_at_save) < 120_000  # the same deadline
        new.close()
    finally:
        replicaio("kv", "down", "--data-dir", str(target))
    # A restore never writes over a cluster, and never takes a damaged file.
    again = replicaio("ctl", "snapshot", "restore", str(backup), "--out", str(target))
    assert again.returncode == 2 and "not empty" in again.stderr
    data = backup.read_bytes()
    damaged = tmp_path / "damaged.snap"
    damaged.write_bytes(data[:-10] + bytes(10))
    refused = replicaio("ctl", "snapshot", "restore", str(damaged), "--out",
                        str(tmp_path / "other"))
    assert refused.returncode == 2 and "sha256 does not match" in refused.stderr
    damaged.write_bytes(data[:-1000])
    refused = replicaio("ctl", "snapshot", "restore", str(damaged), "--out",
                        str(tmp_path / "other"))
    assert refused.returncode == 2 and "truncated" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "other").exists()
