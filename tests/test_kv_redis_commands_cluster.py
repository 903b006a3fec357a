"""The Redis commands applications use (issue 8, section 2), through redis-py against a
real 3-node Raft cluster of node processes on 127.0.0.1.

Every command family of ``docs/kv.md``'s table is exercised from a client on one
node and read back from a client on another (linearizable whichever node is
asked): expiry with the log's clock (a key set with PX expires for every node,
also when no write follows), redis-py's ``Lock`` (acquire, contention, release,
extend, expiry), the keyspace (SCAN with MATCH/COUNT/TYPE, KEYS, DBSIZE, TYPE,
RENAME, COPY, UNLINK, FLUSHDB), hashes, lists, sets and sorted sets, the string
commands, WATCH seeing an expiry, INFO's sections, CLIENT LIST/KILL, TIME and
ROLE, SET's errors naming the offending option, and redis-cli's ``--scan``,
``--bigkeys`` and ``--stat``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis
from redis.lock import Lock
from test_kv_transactions_cluster import SECTIONS, connect, port_of, ready

from replicaio.runtime.local import LocalCluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("redis_commands"), protocol="raft", nodes=3,
                      sections=SECTIONS) as made:
        made.start_all()
        ready(made)
        yield made


@pytest.fixture()
def clients(cluster: LocalCluster) -> Iterator[tuple[redis.Redis, redis.Redis]]:
    first, second = connect(port_of(cluster, 0)), connect(port_of(cluster, 1))
    yield first, second
    first.close()
    second.close()


def wait_until_gone(client: redis.Redis, key: str, seconds: float = 5.0) -> float:
    started = time.monotonic()
    while client.exists(key):
        assert time.monotonic() - started < seconds, f"{key} never expired"
        time.sleep(0.02)
    return time.monotonic() - started


def test_expiry_with_the_logs_clock_is_seen_by_every_node(
    clients: tuple[redis.Redis, redis.Redis],
) -> None:
    a, b = clients
    assert a.set("ex:k", "v", px=300) is True
    assert 0 < b.pttl("ex:k") <= 300
    assert b.ttl("ex:k") in (0, 1)
    # No write follows: the reads still see the key go (they run at the node's clock).
    waited = wait_until_gone(b, "ex:k")
    assert waited < 3.0
    assert a.get("ex:k") is None and a.pttl("ex:k") == -2 and a.ttl("ex:k") == -2
    assert a.set("ex:p", "v") and a.ttl("ex:p") == -1
    assert a.expire("ex:p", 100) and 99 <= b.ttl("ex:p") <= 100
    assert a.pexpire("ex:p", 50_000) and 49_000 < b.pttl("ex:p") <= 50_000
    assert a.persist("ex:p") and b.ttl("ex:p") == -1 and a.persist("ex:p") is False
    assert a.expire("ex:missing", 10) is False
    assert a.execute_command("SETEX", "ex:s", 100, "x") and 99 <= b.ttl("ex:s") <= 100
    assert a.psetex("ex:ps", 100_000, "x") and b.pttl("ex:ps") > 90_000
    assert a.getex("ex:s", px=200) == b"x" and b.pttl("ex:s") <= 200
    assert a.getex("ex:ps", persist=True) == b"x" and b.ttl("ex:ps") == -1
    assert a.set("ex:k2", "1", ex=100) and a.set("ex:k2", "2", keepttl=True)
    assert b.ttl("ex:k2") > 90 and b.get("ex:k2") == b"2"
    assert a.set("ex:k2", "3") and b.ttl("ex:k2") == -1  # SET drops the expiry
    assert a.expireat("ex:k2", int(time.time()) + 1000) and b.ttl("ex:k2") > 900
    assert a.expire("ex:k2", -1) and b.exists("ex:k2") == 0  # a past deadline deletes
    assert a.getdel("ex:p") == b"v" and b.get("ex:p") is None


def test_set_options_and_their_errors(clients: tuple[redis.Redis, redis.Redis]) -> None:
    a, b = clients
    assert a.set("so:k", "1", nx=True) is True
    assert a.set("so:k", "2", nx=True) is None
    assert a.set("so:k", "3", xx=True) is True and b.get("so:k") == b"3"
    assert a.set("so:absent", "x", xx=True) is None and b.exists("so:absent") == 0
    assert a.set("so:k", "4", get=True) == b"3"
    assert a.set("so:k", "5", xx=True, get=True, px=10_000) == b"4"
    with pytest.raises(redis.ResponseError, match="FOO"):
        a.execute_command("SET", "so:k", "v", "FOO")
    with pytest.raises(redis.ResponseError, match="NX and XX"):
        a.execute_command("SET", "so:k", "v", "NX", "XX")
    with pytest.raises(redis.ResponseError, match="EX 0"):
        a.execute_command("SET", "so:k", "v", "EX", "0")
    with pytest.raises(redis.ResponseError, match="EX and PX"):
        a.execute_command("SET", "so:k", "v", "EX", "1", "PX", "5")
    with pytest.raises(redis.ResponseError, match="not an integer"):
        a.execute_command("SET", "so:k", "v", "PX", "soon")
    assert b.get("so:k") == b"5"


def test_redis_py_lock_acquires_excludes_releases_extends_and_expires(
    clients: tuple[redis.Redis, redis.Redis],
) -> None:
    a, b = clients
    mine = Lock(a, "lock:1", timeout=5, blocking=False)
    theirs = Lock(b, "lock:1", timeout=5, blocking=False)
    assert mine.acquire()
    assert not theirs.acquire()
    assert mine.owned() and mine.locked()
    assert mine.extend(10)
    assert 10_000 < b.pttl("lock:1") <= 15_000
    assert mine.extend(3, replace_ttl=True) and b.pttl("lock:1") <= 3000
    assert mine.reacquire() and b.pttl("lock:1") > 4000
    mine.release()
    assert not mine.locked()
    assert theirs.acquire()
    with pytest.raises(redis.exceptions.LockError):
        mine.release()  # not ours: released nothing
    assert theirs.locked()
    theirs.release()
    short = Lock(a, "lock:2", timeout=0.3, blocking=False)
    assert short.acquire()
    wait_until_gone(b, "lock:2")
    assert Lock(b, "lock:2", timeout=5, blocking=False).acquire()
    with pytest.raises(redis.ResponseError, match="scripting is not supported"):
        a.eval("return redis.call('incr', KEYS[1])", 1, "x")


def test_keyspace_commands(clients: tuple[redis.Redis, redis.Redis]) -> None:
    a, b = clients
    for index in range(25):
        a.set(f"ks:{index:02d}", index)
    a.hset("ks:hash", "f", "v")
    scanned = list(b.scan_iter(match="ks:*", count=7))
    assert sorted(scanned) == sorted([f"ks:{i:02d}".encode() for i in range(25)] + [b"ks:hash"])
    assert len(scanned) == len(set(scanned))
    assert list(b.scan_iter(match="ks:*", _type="hash")) == [b"ks:hash"]
    assert sorted(b.keys("ks:0?")) == [f"ks:0{i}".encode() for i in range(10)]
    assert b.type("ks:hash") == b"hash" and b.type("ks:00") == b"string"
    assert b.type("ks:none") == b"none"
    assert a.rename("ks:00", "ks:renamed") and b.get("ks:renamed") == b"0"
    assert b.exists("ks:00") == 0
    with pytest.raises(redis.ResponseError, match="no such key"):
        a.rename("ks:absent", "ks:x")
    assert a.renamenx("ks:01", "ks:02") is False
    assert a.copy("ks:hash", "ks:hash2") and b.hgetall("ks:hash2") == {b"f": b"v"}
    assert a.copy("ks:hash", "ks:hash2") is False
    assert a.copy("ks:01", "ks:hash2", replace=True) and b.get("ks:hash2") == b"1"
    assert a.unlink("ks:01", "ks:02", "ks:absent") == 2
    size = b.dbsize()
    assert size >= 24
    a.flushdb()
    assert b.dbsize() == 0 and b.keys("*") == []


def test_hashes(clients: tuple[redis.Redis, redis.Redis]) -> None:
    a, b = clients
    assert a.hset("h", mapping={"a": "1", "b": "2"}) == 2
    assert a.hset("h", "a", "3") == 0
    assert b.hget("h", "a") == b"3" and b.hmget("h", ["a", "x"]) == [b"3", None]
    assert b.hgetall("h") == {b"a": b"3", b"b": b"2"}
    assert b.hkeys("h") == [b"a", b"b"] and b.hvals("h") == [b"3", b"2"]
    assert b.hlen("h") == 2 and b.hexists("h", "b") and not b.hexists("h", "z")
    assert a.hsetnx("h", "a", "9") == 0 and a.hsetnx("h", "c", "9") == 1
    assert a.hincrby("h", "n", 5) == 5 and a.hincrbyfloat("h", "n", 0.5) == 5.5
    assert b.hstrlen("h", "c") == 1
    assert a.hdel("h", "a", "b", "c", "n") == 4 and b.exists("h") == 0  # emptied: gone
    a.set("str", "x")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        a.hset("str", "f", "v")
    a.hset("h2", "f", "v")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        b.get("h2")
    assert b.mget("h2", "str") == [None, b"x"]


def test_lists(clients: tuple[redis.Redis, redis.Redis]) -> None:
    a, b = clients
    assert a.rpush("l", "a", "b", "c") == 3 and a.lpush("l", "z") == 4
    assert b.lrange("l", 0, -1) == [b"z", b"a", b"b", b"c"]
    assert b.llen("l") == 4 and b.lindex("l", -1) == b"c"
    assert a.lset("l", 1, "A") and b.lindex("l", 1) == b"A"
    assert a.linsert("l", "before", "b", "ab") == 5
    assert a.lrem("l", 0, "ab") == 1
    assert a.lpop("l") == b"z" and a.rpop("l", 2) == [b"c", b"b"]
    assert a.lmove("l", "l2", "LEFT", "RIGHT") == b"A" and b.exists("l") == 0
    assert a.rpoplpush("l2", "l2") == b"A"
    assert a.rpushx("absent", "x") == 0
    a.rpush("t", *range(10))
    assert a.ltrim("t", 2, 4) and b.lrange("t", 0, -1) == [b"2", b"3", b"4"]
    with pytest.raises(redis.ResponseError, match="not supported by replicaio"):
        a.blpop(["t"], timeout=1)


def test_sets_and_sorted_sets(clients: tuple[redis.Redis, redis.Redis]) -> None:
    a, b = clients
    assert a.sadd("s1", "a", "b", "c") == 3 and a.sadd("s1", "a") == 0
    a.sadd("s2", "b", "c", "d")
    assert b.smembers("s1") == {b"a", b"b", b"c"} and b.scard("s1") == 3
    assert b.sismember("s1", "a") and b.smismember("s1", ["a", "z"]) == [1, 0]
    assert b.sinter(["s1", "s2"]) == {b"b", b"c"}
    assert b.sunion(["s1", "s2"]) == {b"a", b"b", b"c", b"d"}
    assert b.sdiff(["s1", "s2"]) == {b"a"}
    assert a.sinterstore("s3", ["s1", "s2"]) == 2 and b.scard("s3") == 2
    assert a.srem("s1", "a", "z") == 1 and a.smove("s1", "s2", "b")
    popped = a.spop("s2")
    assert isinstance(popped, bytes) and b.sismember("s2", popped.decode()) == 0
    assert a.zadd("z", {"a": 1, "b": 2, "c": 3}) == 3
    assert a.zadd("z", {"a": 5}, xx=True, ch=True) == 1
    assert b.zscore("z", "a") == 5.0 and b.zcard("z") == 3
    assert b.zrange("z", 0, -1) == [b"b", b"c", b"a"]
    assert b.zrange("z", 0, -1, withscores=True) == [(b"b", 2.0), (b"c", 3.0), (b"a", 5.0)]
    assert b.zrevrange("z", 0, 0) == [b"a"]
    assert b.zrangebyscore("z", 2, "(5") == [b"b", b"c"]
    assert b.zcount("z", "-inf", "+inf") == 3 and b.zrank("z", "a") == 2
    assert b.zrevrank("z", "a") == 0
    assert a.zincrby("z", 1.5, "b") == 3.5
    assert a.zpopmin("z") == [(b"c", 3.0)] and a.zrem("z", "a") == 1
    assert a.zremrangebyscore("z", 0, 10) == 1 and b.exists("z") == 0


def test_string_commands(clients: tuple[redis.Redis, redis.Redis]) -> None:
    a, b = clients
    assert a.getset("st:k", "1") is None and a.getset("st:k", "2") == b"1"
    assert a.msetnx({"st:a": "1", "st:b": "2"}) is True
    assert a.msetnx({"st:b": "x", "st:c": "3"}) is False and b.exists("st:c") == 0
    assert a.incrbyfloat("st:f", 1.5) == 1.5 and a.incrbyfloat("st:f", 0.25) == 1.75
    a.set("st:r", "Hello World")
    assert b.getrange("st:r", 0, 4) == b"Hello" and b.getrange("st:r", -5, -1) == b"World"
    assert a.setrange("st:r", 6, "Redis") == 11 and b.get("st:r") == b"Hello Redis"
    assert a.setrange("st:pad", 3, "x") == 4 and b.get("st:pad") == b"\x00\x00\x00x"


def test_watch_sees_an_expiry(clients: tuple[redis.Redis, redis.Redis]) -> None:
    a, b = clients
    a.set("w:k", "v", px=200)
    with a.pipeline() as pipe:
        pipe.watch("w:k")
        time.sleep(0.4)
        b.set("w:other", "x")  # a write advances the log's clock past the deadline
        pipe.multi()
        pipe.set("w:out", "1")
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert b.get("w:out") is None


def test_info_client_time_role(cluster: LocalCluster,
                               clients: tuple[redis.Redis, redis.Redis]) -> None:
    a, b = clients
    a.set("info:k", "v", ex=100)
    b.get("info:k")  # the follower has applied it
    info = b.info()
    assert info["redis_version"] and "used_memory" in info and info["used_memory"] > 0
    assert info["connected_clients"] >= 1 and info["blocked_clients"] == 0
    assert info["total_commands_processed"] >= 1 and info["total_connections_received"] >= 1
    assert info["db0"]["keys"] >= 1 and info["db0"]["expires"] >= 1
    seconds, microseconds = b.time()
    assert abs(seconds + microseconds / 1e6 - time.time()) < 5
    roles = sorted(connect(port_of(cluster, node)).role()[0] for node in range(3))
    assert roles == [b"master", b"slave", b"slave"]
    a.client_setname("victim")
    listed = b.client_list()
    assert all("id" in entry and "addr" in entry for entry in listed)
    victim = connect(port_of(cluster, 1), client_name="victim")
    victim.ping()
    entry = next(item for item in b.client_list() if item["name"] == "victim")
    assert entry["cmd"] == "ping"  # its last command, lower case
    assert b.client_kill_filter(_id=entry["id"]) == 1
    time.sleep(0.1)
    assert all(item["name"] != "victim" for item in b.client_list())
    victim.close()


def test_resp2_clients_get_flat_replies(cluster: LocalCluster) -> None:
    old = connect(port_of(cluster, 2), protocol=2)
    old.hset("r2:h", "f", "v")
    old.zadd("r2:z", {"m": 1.5})
    old.sadd("r2:s", "x")
    assert old.hgetall("r2:h") == {b"f": b"v"}
    assert old.zscore("r2:z", "m") == 1.5
    assert old.zrange("r2:z", 0, -1, withscores=True) == [(b"m", 1.5)]
    assert old.smembers("r2:s") == {b"x"}
    old.close()


def redis_cli_binary() -> str:
    found = shutil.which("redis-cli")
    assert found is not None, "redis-cli is part of the test environment"
    return found


def test_redis_cli_scan_bigkeys_and_stat(cluster: LocalCluster) -> None:
    """The tools operators point at a Redis: ``redis-cli --scan``, ``--bigkeys``
    (SCAN, TYPE and the length commands) and ``--stat`` (INFO), against the
    node a client did not write through."""
    redis_cli = redis_cli_binary()
    writer = connect(port_of(cluster, 0))
    writer.set("cli:string", "x" * 70_000)
    writer.rpush("cli:list", *range(9))
    writer.hset("cli:hash", mapping={"a": "1", "b": "2"})
    writer.close()
    port = str(port_of(cluster, 1))
    scan = subprocess.run([redis_cli, "-p", port, "--scan", "--pattern", "cli:*"],
                          capture_output=True, timeout=30, check=True)
    assert sorted(scan.stdout.decode().split()) == ["cli:hash", "cli:list", "cli:string"]
    big = subprocess.run([redis_cli, "-p", port, "--bigkeys"], capture_output=True,
                         timeout=60, check=True).stdout.decode()
    assert "-------- summary -------" in big
    assert "Biggest string found '\"cli:string\"' has 70000 bytes" in big
    assert re.search(r"Biggest +list found '\"[^\"]+\"' has \d+ items", big)
    # --stat prints a line of INFO's figures every interval, until stopped.
    stat = subprocess.Popen(["stdbuf", "-o0", redis_cli, "-p", port, "--stat", "-i", "0.2"],
                            stdout=subprocess.PIPE)
    try:
        assert stat.stdout is not None
        lines = [stat.stdout.readline().decode() for _ in range(4)]
    finally:
        stat.kill()
        stat.wait(timeout=10)
    assert lines[1].split()[:5] == ["keys", "mem", "clients", "blocked", "requests"]
    keys, _, clients, blocked = lines[2].split()[:4]
    assert int(keys) >= 3 and int(clients) >= 1 and blocked == "0"


def test_ctl_status_and_health(cluster: LocalCluster, capsys: pytest.CaptureFixture[str]) -> None:
    """``replicaio ctl`` (runs last in this module: it kills a node)."""
    from replicaio.cli import main

    path = str(cluster.config_path)
    assert main(["ctl", "--cluster", path, "status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    nodes = report["nodes"]
    assert [item["node"] for item in nodes] == [0, 1, 2]
    assert all(item["reachable"] and item["term"] >= 1 for item in nodes)
    assert sorted(item["role"] for item in nodes) == ["follower", "follower", "leader"]
    assert len({item["leader"] for item in nodes}) == 1
    assert main(["ctl", "--cluster", path, "health"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["node", "address", "role"]
    assert table.count(" yes ") + table.count(" yes\n") >= 3 or table.count("yes") == 3
    assert main(["ctl", "member", "list", "--cluster", path, "--json"]) == 0
    members = json.loads(capsys.readouterr().out)
    assert members["voters"] == "0,1,2" and members["learners"] == ""
    follower = next(item["node"] for item in nodes if item["role"] == "follower")
    assert main(["ctl", "--cluster", path, "move-leader", str(follower), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["visible"] is True
    other = next(node for node in range(3) if node != follower)
    assert main(["ctl", "--cluster", path, "member", "remove", str(other), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["visible"] is True
    assert main(["ctl", "--cluster", path, "member", "remove", str(other)]) == 1
    assert "refused: not_a_member" in capsys.readouterr().err
    assert main(["ctl", "--cluster", path, "member", "add", str(other), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["visible"] is True
    assert main(["ctl", "--cluster", path, "member", "list"]) == 0
    assert "voters: 0,1,2" in capsys.readouterr().out
    nodes = json.loads((main(["ctl", "--cluster", path, "status", "--json"]) == 0
                       and capsys.readouterr().out) or "{}")["nodes"]
    follower = next(item["node"] for item in nodes if item["role"] == "follower")
    cluster.kill(follower)
    assert main(["ctl", "--cluster", path, "health", "--json", "--timeout", "2"]) == 1
    report = json.loads(capsys.readouterr().out)
    down = next(item for item in report["nodes"] if item["node"] == follower)
    assert down["reachable"] is False and report["healthy"] is False
    assert main(["ctl", "--cluster", path, "status"]) == 0
    assert "DOWN" in capsys.readouterr().out
