"""Redis transactions (MULTI/EXEC/DISCARD/WATCH/UNWATCH) through redis-py and raw
RESP, against a real 3-node Raft cluster of node processes on 127.0.0.1.

Every claim of ``docs/kv.md`` ("Transactions") has a test here: a pipeline
transaction applies whole and answers each command; issue 8's example; a
queue-time error aborts the whole (EXECABORT); a run-time error is one element
of EXEC's array; WATCH conflicts from another client (a write, a deletion, an
absent key created and deleted) answer nil and apply nothing; DISCARD; the
errors of misplaced commands; the queue bounds; a dropped connection applies
nothing; redis-py's ``transaction()`` retry loop counts exactly under
concurrency; and transactions stay atomic while the leader is killed.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from replicaio.runtime.local import LocalCluster

LOCAL = "127.0.0.1"
DEADLINE_S = 20.0
CLIENT_TIMEOUT_S = 5.0
BOUNDS = {"transaction_commands_max": 16, "transaction_bytes_max": 4096, "watch_keys_max": 8}
SECTIONS: dict[str, dict[str, Any]] = {
    "node": {"tick_us": 10_000},
    "transport": {"reconnect_delay_ms_min": 10, "reconnect_delay_ms_max": 200},
    "host": {"client_service": "resp"},
    "service": {"retry_after_ms": 300, "retry_backoff_ms": 20, "request_timeout_ms": 2500,
                **BOUNDS},
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("transactions"), protocol="raft", nodes=3,
                      sections=SECTIONS) as made:
        made.start_all()
        ready(made)
        yield made


def connect(port: int, **options: Any) -> redis.Redis:
    """A redis-py client with every retry off."""
    return redis.Redis(host=LOCAL, port=port, socket_timeout=CLIENT_TIMEOUT_S,
                       socket_connect_timeout=2.0, retry=Retry(NoBackoff(), 0), **options)


def port_of(cluster: LocalCluster, node: int) -> int:
    return cluster.cluster.nodes[node].client.port


def ready(cluster: LocalCluster) -> None:
    """Wait until every node serves a write (a leader was elected)."""
    for node in range(cluster.cluster.n):
        deadline = time.monotonic() + DEADLINE_S
        client = connect(port_of(cluster, node))
        while True:
            try:
                if client.set(f"ready{node}", "1") is True:
                    break
            except (redis.RedisError, OSError):
                assert time.monotonic() < deadline, f"node {node} serves no write"
                time.sleep(0.1)
        client.close()


def multibulk(*words: str | bytes) -> bytes:
    encoded = [word.encode() if isinstance(word, str) else word for word in words]
    return b"*%d\r\n" % len(encoded) + b"".join(b"$%d\r\n%b\r\n" % (len(w), w) for w in encoded)


class Raw:
    """One raw RESP connection: send commands, read exactly the expected reply bytes."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((LOCAL, port), timeout=CLIENT_TIMEOUT_S)

    def talk(self, commands: list[tuple[str | bytes, ...]], expected: bytes) -> None:
        self.sock.sendall(b"".join(multibulk(*command) for command in commands))
        answer = b""
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while len(answer) < len(expected) and time.monotonic() < deadline:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        assert answer == expected

    def close(self) -> None:
        self.sock.close()


# -- redis-py pipelines -------------------------------------------------------------------------


def test_the_issue_example_applies_once_and_answers_each_command(cluster: LocalCluster) -> None:
    client = connect(port_of(cluster, 0))
    with client.pipeline() as pipe:  # transaction=True: MULTI, the commands, EXEC
        pipe.set("txk", "applied?")
        pipe.incr("txn")
        assert pipe.execute() == [True, 1]
    assert client.get("txk") == b"applied?" and client.get("txn") == b"1"
    with client.pipeline() as pipe:
        pipe.set("a", "1")
        pipe.get("a")
        pipe.incr("a")
        pipe.append("a", "0")
        pipe.mget("a", "txk")
        pipe.delete("a")
        pipe.exists("a")
        pipe.setnx("b", "x")
        pipe.strlen("b")
        assert pipe.execute() == [True, b"1", 2, 2, [b"20", b"applied?"], 1, 0, True, 1]
    with client.pipeline() as pipe:  # read-only transactions go through the read barrier
        pipe.get("txk")
        pipe.mget("txn", "b")
        assert pipe.execute() == [b"applied?", [b"1", b"x"]]
    client.close()


def test_a_queue_time_error_aborts_the_whole_transaction(cluster: LocalCluster) -> None:
    client = connect(port_of(cluster, 1))
    for bad, message in ((("FROBNICATE", "x"), "unknown command 'FROBNICATE'"),
                         (("GET",), "wrong number of arguments for 'get'"),
                         (("CLIENT", "ID"), "not allowed inside a transaction"),
                         (("SELECT", "0"), "not allowed inside a transaction")):
        with client.pipeline() as pipe:
            pipe.set("aborted", "1")
            pipe.incr("aborted-counter")
            pipe.execute_command(*bad)
            # redis-py reads EXEC's -EXECABORT and raises the queued command's error.
            with pytest.raises(redis.ResponseError, match=message):
                pipe.execute()
    raw = Raw(port_of(cluster, 1))
    raw.talk([("MULTI",), ("SET", "aborted", "1"), ("FROBNICATE",), ("EXEC",)], (
        b"+OK\r\n+QUEUED\r\n-ERR unknown command 'FROBNICATE', with args beginning with: \r\n"
        b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    ))
    raw.close()
    assert client.get("aborted") is None and client.get("aborted-counter") is None
    client.close()


def test_a_runtime_error_is_one_element_of_the_exec_reply(cluster: LocalCluster) -> None:
    client = connect(port_of(cluster, 2))
    client.set("text", "not a number")
    with client.pipeline() as pipe:
        pipe.set("before", "1")
        pipe.incr("text")
        pipe.incr("after")
        pipe.set("k", "v", ex=0)
        results = pipe.execute(raise_on_error=False)
    assert results[0] is True and results[2] == 1
    assert isinstance(results[1], redis.ResponseError) and "not an integer" in str(results[1])
    assert isinstance(results[3], redis.ResponseError) and "EX 0" in str(results[3])
    assert client.get("before") == b"1" and client.get("after") == b"1"
    assert client.get("text") == b"not a number" and client.get("k") is None
    client.close()


# -- WATCH --------------------------------------------------------------------------------------


def watched_transaction(client: redis.Redis, watched: str, between: Callable[[], Any]) -> bool:
    """WATCH ``watched``, run ``between`` (another client), then MULTI SET EXEC;
    whether EXEC applied."""
    with client.pipeline() as pipe:
        pipe.watch(watched)
        between()
        pipe.multi()
        pipe.set(f"{watched}-out", "applied")
        try:
            pipe.execute()
        except redis.WatchError:
            return False
    return True


def test_watch_aborts_on_another_clients_write_or_delete_and_applies_nothing(
    cluster: LocalCluster,
) -> None:
    mine, other = connect(port_of(cluster, 0)), connect(port_of(cluster, 1))
    mine.set("w1", "0")
    mine.set("w2", "0")
    assert not watched_transaction(mine, "w1", lambda: other.set("w1", "0"))  # same value
    assert not watched_transaction(mine, "w2", lambda: other.delete("w2"))
    assert not watched_transaction(
        mine, "w3", lambda: (other.set("w3", "x"), other.delete("w3"))  # absent, then absent
    )
    assert not watched_transaction(mine, "w4", lambda: mine.set("w4", "own"))  # own write too
    for key in ("w1", "w2", "w3", "w4"):
        assert mine.get(f"{key}-out") is None
    # No conflict: applied; a failed cas or a read is no modification.
    assert watched_transaction(mine, "w1", lambda: (other.get("w1"),
                                                    other.execute_command("CAS", "w1", "no", "x")))
    assert mine.get("w1-out") == b"applied"
    mine.close()
    other.close()


def test_transaction_helper_retries_to_an_exact_count_under_concurrency(
    cluster: LocalCluster,
) -> None:
    threads, increments = 4, 10
    errors: list[BaseException] = []
    attempts = [0]

    def increment(pipe: Any) -> None:
        attempts[0] += 1
        value = int(pipe.get("shared") or 0)
        pipe.multi()
        pipe.set("shared", value + 1)

    def worker(node: int) -> None:
        try:
            client = connect(port_of(cluster, node))
            for _ in range(increments):
                client.transaction(increment, "shared")
            client.close()
        except BaseException as error:  # reported below
            errors.append(error)

    running = [threading.Thread(target=worker, args=(index % 3,)) for index in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join(60)
    assert not errors, errors
    client = connect(port_of(cluster, 0))
    assert client.get("shared") == str(threads * increments).encode()
    client.close()
    assert attempts[0] >= threads * increments  # conflicts were retried, none applied twice


# -- raw RESP: exact replies, misplaced commands, DISCARD, bounds --------------------------------


def test_exact_replies_and_misplaced_commands(cluster: LocalCluster) -> None:
    raw = Raw(port_of(cluster, 1))
    raw.talk([("EXEC",), ("DISCARD",), ("MULTI", "x")], (
        b"-ERR EXEC without MULTI\r\n-ERR DISCARD without MULTI\r\n"
        b"-ERR wrong number of arguments for 'multi' command\r\n"
    ))
    raw.talk([("MULTI",), ("SET", "r1", "v"), ("MULTI",), ("WATCH", "r1"), ("PING",),
              ("INCR", "r2"), ("UNWATCH",), ("EXEC",)], (
        b"+OK\r\n+QUEUED\r\n-ERR MULTI calls can not be nested\r\n"
        b"-ERR WATCH inside MULTI is not allowed\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n"
        b"*4\r\n+OK\r\n+PONG\r\n:1\r\n+OK\r\n"
    ))
    raw.talk([("MULTI",), ("SET", "r3", "v"), ("DISCARD",), ("GET", "r3"), ("EXEC",)], (
        b"+OK\r\n+QUEUED\r\n+OK\r\n$-1\r\n-ERR EXEC without MULTI\r\n"
    ))
    raw.talk([("MULTI",), ("EXEC",)], b"+OK\r\n*0\r\n")
    other = connect(port_of(cluster, 2))
    raw.talk([("WATCH", "r4")], b"+OK\r\n")
    other.set("r4", "changed")
    raw.talk([("MULTI",), ("GET", "r4"), ("EXEC",), ("GET", "r5")],
             b"+OK\r\n+QUEUED\r\n*-1\r\n$-1\r\n")
    raw.talk([("WATCH", "r4"), ("UNWATCH",)], b"+OK\r\n+OK\r\n")
    other.set("r4", "again")
    raw.talk([("MULTI",), ("GET", "r4"), ("EXEC",)], b"+OK\r\n+QUEUED\r\n*1\r\n$5\r\nagain\r\n")
    raw.talk([("WATCH", "r4"), ("MULTI",), ("RESET",), ("EXEC",)],
             b"+OK\r\n+OK\r\n+RESET\r\n-ERR EXEC without MULTI\r\n")
    raw.close()
    other.close()


def test_queue_bounds_are_reached_with_a_clear_error_and_exec_aborts(
    cluster: LocalCluster,
) -> None:
    limit = BOUNDS["transaction_commands_max"]
    raw = Raw(port_of(cluster, 0))
    commands: list[tuple[str | bytes, ...]] = [("MULTI",)]
    commands += [("INCR", "bounded") for _ in range(limit + 1)]
    raw.talk([*commands, ("EXEC",)], b"+OK\r\n" + b"+QUEUED\r\n" * limit + (
        f"-ERR transaction too long: at most {limit} queued commands "
        "(service.transaction_commands_max); EXEC will abort\r\n"
    ).encode() + b"-EXECABORT Transaction discarded because of previous errors.\r\n")
    big = "v" * 3000
    raw.talk([("MULTI",), ("SET", "big1", big), ("SET", "big2", big), ("EXEC",)], (
        b"+OK\r\n+QUEUED\r\n-ERR transaction too large: at most 4096 bytes of queued commands "
        b"(service.transaction_bytes_max); EXEC will abort\r\n"
        b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    ))
    keys = [f"watch{index}" for index in range(BOUNDS["watch_keys_max"] + 1)]
    raw.talk([("WATCH", *keys)], (
        b"-ERR too many watched keys: at most 8 per connection (service.watch_keys_max)\r\n"
    ))
    raw.talk([("WATCH", *keys[:8]), ("WATCH", keys[8]), ("UNWATCH",), ("WATCH", keys[8])],
             b"+OK\r\n-ERR too many watched keys: at most 8 per connection "
             b"(service.watch_keys_max)\r\n+OK\r\n+OK\r\n")
    raw.close()
    client = connect(port_of(cluster, 0))
    assert client.get("bounded") is None and client.get("big1") is None
    client.close()


def test_a_dropped_connection_discards_its_queue(cluster: LocalCluster) -> None:
    raw = Raw(port_of(cluster, 2))
    raw.talk([("MULTI",), ("SET", "dropped", "1")], b"+OK\r\n+QUEUED\r\n")
    raw.close()
    time.sleep(0.3)
    client = connect(port_of(cluster, 2))
    assert client.get("dropped") is None
    client.close()


# -- atomicity across a leader failover ----------------------------------------------------------


def leader_of(cluster: LocalCluster) -> int:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        for node in cluster.processes:
            try:
                client = connect(port_of(cluster, node))
                role = client.info("replication")["role"]
                client.close()
            except (redis.RedisError, OSError):
                continue
            if role == "leader":
                return node
        time.sleep(0.1)
    raise AssertionError("no leader")


def test_transactions_stay_atomic_while_the_leader_is_killed(tmp_path: Path) -> None:
    """Writers run MULTI INCR x INCR y EXEC on every node while the leader is killed
    and restarted; readers' MGET x y never sees them differ, and at the end x == y
    with acknowledged <= x <= acknowledged + unknown outcomes."""
    cluster = LocalCluster(tmp_path / "failover", protocol="raft", nodes=3, sections=SECTIONS)
    stop = threading.Event()
    tally = {"acknowledged": 0, "unknown": 0, "reads": 0}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def writer(node: int) -> None:
        client = connect(port_of(cluster, node))
        while not stop.is_set():
            try:
                with client.pipeline() as pipe:
                    pipe.incr("x")
                    pipe.incr("y")
                    first, second = pipe.execute()
                assert first == second, (first, second)
                outcome = "acknowledged"
            except (redis.RedisError, OSError):
                outcome = "unknown"  # TRYAGAIN or a lost connection: may have applied
                client.close()
                time.sleep(0.05)
                client = connect(port_of(cluster, node))
            with lock:
                tally[outcome] += 1
        client.close()

    def reader(node: int) -> None:
        client = connect(port_of(cluster, node))
        while not stop.is_set():
            try:
                x, y = client.mget("x", "y")
            except (redis.RedisError, OSError):
                client.close()
                time.sleep(0.05)
                client = connect(port_of(cluster, node))
                continue
            if x != y:
                errors.append(AssertionError(f"half a transaction seen: x={x!r} y={y!r}"))
            with lock:
                tally["reads"] += 1
        client.close()

    def guarded(target: Callable[[int], None], node: int) -> None:
        try:
            target(node)
        except BaseException as error:  # reported below
            errors.append(error)

    try:
        cluster.start_all()
        ready(cluster)
        workers = [threading.Thread(target=guarded, args=(role, node))
                   for node in range(3) for role in (writer, reader)]
        for thread in workers:
            thread.start()
        time.sleep(1.0)
        leader = leader_of(cluster)
        cluster.kill(leader)
        time.sleep(1.5)
        cluster.start(leader)
        cluster.wait_ready([leader])
        time.sleep(1.5)
        stop.set()
        for thread in workers:
            thread.join(CLIENT_TIMEOUT_S * 3)
        assert not errors, errors[:3]
        client = connect(port_of(cluster, leader_of(cluster)))
        x, y = (int(value or 0) for value in client.mget("x", "y"))
        client.close()
        assert x == y
        assert tally["acknowledged"] <= x <= tally["acknowledged"] + tally["unknown"], (x, tally)
        assert tally["acknowledged"] > 20 and tally["reads"] > 20, tally
    finally:
        stop.set()
        cluster.close()
