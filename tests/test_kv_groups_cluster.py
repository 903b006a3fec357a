"""A sharded Redis store (protocol ``txn-kv``, ``kv up --groups 3``): three node
processes on 127.0.0.1, each hosting a replica of three Raft groups, through
redis-py and redis-cli.

Claims of ``docs/transactions.md`` ("Redis clients") tested here: single-key
commands reach their group; MSET/MGET/DEL over keys of several groups apply
atomically; MULTI/EXEC across groups answers every command and applies all;
WATCH of keys in several groups aborts on a change by another client, in any
group; one command whose keys span groups is refused CROSSSLOT; INFO's
``# Groups`` names each group's leader; and (issue 12's live test) concurrent
redis-py transfers keep the bank total while the leader of a coordinator group
and then of a participant group are killed with -9, and afterwards every key
reads (nothing stays locked) and every replica reports no lock.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from replicaio.runtime.local import LocalCluster
from replicaio.services.txn.slots import SlotMap

LOCAL = "127.0.0.1"
GROUPS = 3
DEADLINE_S = 30.0
SECTIONS: dict[str, dict[str, Any]] = {
    "protocol.params": {"groups": GROUPS},
    "node": {"tick_us": 10_000},
    "transport": {"reconnect_delay_ms_min": 10, "reconnect_delay_ms_max": 200},
    "host": {"client_service": "resp", "fsync": False},
    "service": {"retry_after_ms": 300, "retry_backoff_ms": 20, "request_timeout_ms": 4000},
}
SLOTS = SlotMap.even(GROUPS)


def key_in(group: int, prefix: str) -> str:
    """A key of ``group``."""
    number = 0
    while SLOTS.group_of(f"{prefix}{number}".encode()) != group:
        number += 1
    return f"{prefix}{number}"


def connect(port: int) -> redis.Redis:
    return redis.Redis(host=LOCAL, port=port, socket_timeout=10.0, socket_connect_timeout=2.0,
                       retry=Retry(NoBackoff(), 0), decode_responses=True)


def ports(cluster: LocalCluster) -> list[int]:
    return [entry.client.port for entry in cluster.cluster.nodes]


def until_serving(cluster: LocalCluster) -> None:
    """Every group has a leader: a read of a key in each group answers."""
    deadline = time.monotonic() + DEADLINE_S
    probes = [key_in(group, "probe") for group in range(GROUPS)]
    while True:
        try:
            client = connect(ports(cluster)[0])
            for probe in probes:
                client.get(probe)
            client.close()
            return
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("groups"), protocol="txn-kv", nodes=3,
                      sections=SECTIONS) as made:
        made.start_all()
        until_serving(made)
        yield made


def test_keys_spread_over_groups_and_commands_reach_them(cluster: LocalCluster) -> None:
    client = connect(ports(cluster)[1])
    keys = [key_in(group, "single") for group in range(GROUPS)]
    for index, key in enumerate(keys):
        assert client.set(key, f"v{index}")
    assert [client.get(key) for key in keys] == ["v0", "v1", "v2"]
    assert client.incr(keys[0] + "-n") == 1
    info = client.info("groups")
    assert info["groups"] == GROUPS
    assert all(0 <= info[f"group_{group}_leader"] < 3 for group in range(GROUPS))


def test_multi_key_commands_across_groups_apply_whole(cluster: LocalCluster) -> None:
    client = connect(ports(cluster)[0])
    keys = [key_in(group, "multi") for group in range(GROUPS)]
    assert client.mset({key: str(index) for index, key in enumerate(keys)})
    assert client.mget(keys) == ["0", "1", "2"]
    assert client.delete(*keys[:2]) == 2
    assert client.mget(keys) == [None, None, "2"]


def test_multi_exec_across_groups_answers_every_command(cluster: LocalCluster) -> None:
    client = connect(ports(cluster)[2])
    _, b, c = multi_exec_across_groups(client, connect(ports(cluster)[0]))
    # A run-time error is that command's element; the rest applies (Redis's rule).
    pipe = client.pipeline(transaction=True)
    pipe.lpush(c, "not-a-list")
    pipe.incr(b)
    results = pipe.execute(raise_on_error=False)
    assert isinstance(results[0], redis.ResponseError) and results[1] == 6


def test_watch_across_groups_aborts_on_a_change_in_any_group(cluster: LocalCluster) -> None:
    client = connect(ports(cluster)[0])
    other = connect(ports(cluster)[1])
    a, b = key_in(0, "watch"), key_in(1, "watch")
    client.mset({a: "1", b: "1"})
    pipe = client.pipeline(transaction=True)
    pipe.watch(a, b)
    other.set(b, "changed")  # another client, another node, the other group
    pipe.multi()
    pipe.set(a, "mine")
    pipe.set(b, "mine")
    with pytest.raises(redis.WatchError):
        pipe.execute()
    assert client.mget([a, b]) == ["1", "changed"]
    pipe = client.pipeline(transaction=True)  # unchanged: it commits
    pipe.watch(a, b)
    pipe.multi()
    pipe.set(a, "mine")
    pipe.set(b, "mine")
    assert pipe.execute() == [True, True]
    assert other.mget([a, b]) == ["mine", "mine"]


def test_one_command_across_groups_is_crossslot(cluster: LocalCluster) -> None:
    client = connect(ports(cluster)[0])
    a, b = key_in(0, "rename"), key_in(1, "rename")
    client.set(a, "x")
    with pytest.raises(redis.ResponseError, match="hash to the same group"):  # CROSSSLOT
        client.rename(a, b)
    tagged = "{" + a + "}-copy"  # a hash tag keeps both in one group
    assert client.rename(a, tagged) and client.get(tagged) == "x"


def test_redis_cli_multi_exec_across_groups(cluster: LocalCluster) -> None:
    redis_cli_multi_exec(ports(cluster)[1], key_in(0, "cli"), key_in(2, "cli"), timeout_s=30)


def multi_exec_across_groups(client: redis.Redis, other: redis.Redis) -> tuple[str, str, str]:
    """A MULTI/EXEC through ``client`` over a key ``a``, ``b``, ``c`` of each group
    answers every command, and ``other`` (another node's front) reads what it
    wrote: ``(a, b, c)``."""
    a, b, c = (key_in(group, "tx") for group in range(GROUPS))
    client.set(c, "seen")
    assert cross_group_exec(client, a, b, c) == [True, 5, "seen", 2, "10"]
    assert other.mget([a, b]) == ["10", "5"]
    assert other.lrange(a + "-list", 0, -1) == ["x", "y"]
    return a, b, c


def cross_group_exec(client: redis.Redis, a: str, b: str, c: str) -> list[Any]:
    """What ``client`` is answered for MULTI, SET ``a`` 10, INCRBY ``b`` 5, GET
    ``c``, RPUSH ``a``-list x y, GET ``a``, EXEC (keys of different groups)."""
    pipe = client.pipeline(transaction=True)
    pipe.set(a, 10)
    pipe.incrby(b, 5)
    pipe.get(c)
    pipe.rpush(a + "-list", "x", "y")
    pipe.get(a)
    results: list[Any] = pipe.execute()
    return results


def redis_cli_multi_exec(port: int, a: str, b: str, *, timeout_s: float) -> None:
    """``redis-cli`` on ``port`` runs MULTI, SET ``a``, INCRBY ``b``, GET ``a``, EXEC
    (two keys of different groups) and prints every answer."""
    redis_cli = shutil.which("redis-cli")
    assert redis_cli is not None, "redis-cli is part of the test environment"
    script = f"MULTI\nSET {a} 1\nINCRBY {b} 7\nGET {a}\nEXEC\n"
    done = subprocess.run([redis_cli, "-p", str(port)], input=script.encode(),
                          capture_output=True, timeout=timeout_s, check=True)
    assert done.stdout.decode().split() == ["OK", "QUEUED", "QUEUED", "QUEUED", "OK", "7", "1"]


# -- issue 12's live test: transfers while leaders are killed ------------------------------

ACCOUNTS = [key_in(group, f"acct{index}-") for index in range(2) for group in range(GROUPS)]
BALANCE = 100


def transfer(client: redis.Redis, source: str, target: str, amount: int) -> bool:
    """One transfer as redis-py users write it: WATCH, read, MULTI/EXEC (retried on
    a conflict by the caller); False if the source lacks the money."""
    def body(pipe: Any) -> None:
        if int(pipe.get(source) or 0) < amount:
            pipe.multi()
            return
        pipe.multi()
        pipe.decrby(source, amount)
        pipe.incrby(target, amount)

    results = client.transaction(body, source, target)
    return bool(results)


def transfers_through_a_kill(cluster: LocalCluster, accounts: list[str], balance: int,
                             kill: int, label: str, deadline_s: float) -> None:
    """Four redis-py clients of nodes 0 and 1 transfer between ``accounts`` (WATCH,
    MULTI/EXEC across groups) while node ``kill`` (a backup of view 0 in every BFT
    group) is killed -9 after five commits and restarted after five more: the
    transfers go on and the bank total holds."""
    client = connect(ports(cluster)[0])
    assert client.mset({account: str(balance) for account in accounts})
    counts = {"committed": 0, "errors": 0}
    lock = threading.Lock()
    stop = threading.Event()

    def work(port: int, index: int) -> None:
        mine = connect(port)
        step = index
        while not stop.is_set():
            step += 1
            source = accounts[step % len(accounts)]
            target = accounts[(step * 5 + index + 1) % len(accounts)]
            if source == target:
                continue
            try:
                done = transfer(mine, source, target, 1)
                with lock:
                    counts["committed"] += int(done)
            except redis.RedisError:  # TRYAGAIN, a timeout: retried with the next one
                with lock:
                    counts["errors"] += 1
                time.sleep(0.05)
        mine.close()

    workers = [threading.Thread(target=work, args=(ports(cluster)[i % 2], i), daemon=True)
               for i in range(4)]
    for thread in workers:
        thread.start()
    deadline = time.monotonic() + deadline_s
    while counts["committed"] < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    cluster.kill(kill)
    before = counts["committed"]
    while counts["committed"] < before + 5 and time.monotonic() < deadline + deadline_s:
        time.sleep(0.1)
    cluster.start(kill)
    cluster.wait_ready([kill])
    time.sleep(1.0)
    stop.set()
    for thread in workers:
        thread.join(timeout=30)
    print(f"live transfers over {label} groups: {counts}")
    assert counts["committed"] >= before + 5 > 5
    balances = [int(value) for value in read_all(client, accounts, deadline_s)]
    assert sum(balances) == balance * len(accounts), balances


def balance_of(value: bytes | str | None) -> int:
    """An account's balance as read back: every account is set once and never deleted,
    so a missing one fails here rather than counting as 0."""
    assert value is not None, "an account is missing"
    return int(value)


def read_all(client: redis.Redis, accounts: list[str], deadline_s: float) -> list[Any]:
    """Every account in one MGET (a transaction across groups), asked again while
    the front answers TRYAGAIN (keys still locked by transfers the stopped workers
    left to their leases)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return list(client.mget(accounts))
        except redis.exceptions.TryAgainError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def worker(port: int, index: int, stop: threading.Event, counts: dict[str, int],
           lock: threading.Lock) -> None:
    client = connect(port)
    step = index
    while not stop.is_set():
        step += 1
        source = ACCOUNTS[step % len(ACCOUNTS)]
        target = ACCOUNTS[(step * 7 + index + 1) % len(ACCOUNTS)]
        if source == target:
            continue
        try:
            done = transfer(client, source, target, 1 + step % 5)
        except (redis.ConnectionError, redis.TimeoutError):
            time.sleep(0.2)
            client = connect(port)
            continue
        except redis.ResponseError:  # TRYAGAIN: no quorum yet, or an unknown outcome
            with lock:
                counts["errors"] += 1
            time.sleep(0.1)
            continue
        with lock:
            counts["committed" if done else "empty"] += 1


def leader_of(cluster: LocalCluster, group: int, alive: list[int]) -> int:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        for node in alive:
            try:
                leader = int(connect(ports(cluster)[node]).info("groups")[f"group_{group}_leader"])
            except redis.RedisError:
                continue
            if leader in alive:
                return leader
        assert time.monotonic() < deadline, f"no leader of group {group}"
        time.sleep(0.2)


def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_bank_total_holds_with_leaders_killed(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, protocol="txn-kv", nodes=3, sections=SECTIONS)
    try:
        cluster.start_all()
        until_serving(cluster)
        setup = connect(ports(cluster)[0])
        assert setup.mset(dict.fromkeys(ACCOUNTS, str(BALANCE)))
        stop = threading.Event()
        lock = threading.Lock()
        counts = {"committed": 0, "empty": 0, "errors": 0}
        threads = [threading.Thread(target=worker, args=(ports(cluster)[i % 3], i, stop,
                                                          counts, lock)) for i in range(6)]
        for thread in threads:
            thread.start()
        wait_for(lambda: counts["committed"] >= 5, "transfers before the kills")
        # Every transfer between groups 0 and 1 has one of them as coordinator and
        # the other as participant: kill the leader of each in turn.
        for group in (0, 1):
            victim = leader_of(cluster, group, [0, 1, 2])
            cluster.kill(victim)
            time.sleep(1.0)
            cluster.start(victim)
            cluster.wait_ready([victim])
            before = counts["committed"]
            wait_for(lambda b=before: counts["committed"] > b, "a transfer after the restart")
        stop.set()
        for thread in threads:
            thread.join(timeout=DEADLINE_S)
        reader = connect(ports(cluster)[2])
        balances = [balance_of(value) for value in reader.mget(ACCOUNTS)]
        assert sum(balances) == BALANCE * len(ACCOUNTS), balances
        assert all(balance >= 0 for balance in balances), balances
        # Nothing stays locked: every key reads one by one, on every node, and every
        # replica of every group reports no lock once the leases ran out.
        for port in ports(cluster):
            client = connect(port)
            assert sum(balance_of(client.get(account)) for account in ACCOUNTS) == BALANCE * len(
                ACCOUNTS)

        def unlocked() -> bool:
            for port in ports(cluster):
                info = connect(port).info("groups")
                if any(info[f"group_{group}_locks"] for group in range(GROUPS)):
                    return False
            return True

        wait_for(unlocked, "every replica of every group to report no lock")
        print(f"live redis transfers {counts}")
        assert counts["committed"] >= 10
    finally:
        cluster.close()
