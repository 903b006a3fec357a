"""Redis clients on PBFT through the client-side gateway, with real processes on
127.0.0.1 and fsync (issue 10 section 4): ``replicaio kv gateway`` answers a
command only once f+1 replicas agree. A 4-node PBFT cluster with Ed25519 node
keys (so clients sign with Ed25519 too) runs concurrent SET/GET/INCR/APPEND/CAS
from redis-py through the gateway while a backup is killed with SIGKILL and
restarted, and again with the *primary* killed (one view change, then the new
primary keeps its view under load); the histories are checked linearizable. Bad
input on the gateway's port and on a replica's ``REPLICAIO.SUBMIT`` is
rejected and counted, and the gateway keeps serving.

Every wait is bounded; the fixture's finalizer kills every process.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from test_kv_service_cluster import (
    CLIENT_TIMEOUT_S,
    DEADLINE_S,
    LOCAL,
    SECTIONS,
    Workload,
    connect,
    runtime_counters,
    send_and_close,
)

from replicaio.check.history import dump_history
from replicaio.check.linearizability import check_linearizable
from replicaio.runtime.local import LocalCluster, free_ports
from replicaio.runtime.smr_client import SmrClient
from replicaio.services.kv.state_machine import KvOk, decode_result, encode_command
from replicaio.smr.auth import client_id_of
from replicaio.torture.workload import COUNTERS, REGISTERS

ROOT = Path(__file__).resolve().parent.parent


class Gateway:
    """A ``replicaio kv gateway`` process."""

    def __init__(self, cluster: LocalCluster, log: Path, *options: str) -> None:
        self.port = free_ports(1)[0]
        self.log = log
        with open(log, "wb") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "replicaio.cli", "kv", "gateway", "--cluster",
                 str(cluster.config_path), "--port", str(self.port), *options],
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            )
        # A process start, as a node's (LocalCluster.wait_ready): at load 17 on
        # 2 cores the gateway's imports took 22 s, past the 20 s of DEADLINE_S.
        deadline = time.monotonic() + LocalCluster.READY_TIMEOUT_S
        try:
            while True:
                assert self.process.poll() is None, log.read_text()
                try:
                    socket.create_connection((LOCAL, self.port), 0.2).close()
                    return
                except OSError:
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.05)
        except BaseException:
            self.close()  # (a fixture whose gateway did not start cannot close it)
            raise

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


@contextlib.contextmanager
def behind_gateway(cluster: LocalCluster, log: Path,
                   start: Callable[[], None] | None = None) -> Iterator[Gateway]:
    """``cluster`` started (every node, or by ``start``) with a gateway in front of it;
    both stopped on the way out, however it is left."""
    gateway: Gateway | None = None
    try:
        (start or cluster.start_all)()
        gateway = Gateway(cluster, log)
        yield gateway
    finally:
        if gateway is not None:
            gateway.close()
        cluster.close()


class GatewayWorkload(Workload):
    """The service tests' concurrent clients, every one through the gateway."""

    def __init__(self, cluster: LocalCluster, clients: int, port: int) -> None:
        super().__init__(cluster, clients)
        self.port = port

    def open(self, rng: Any) -> redis.Redis:
        while not self.stop.is_set():
            client = connect(self.port)
            try:
                client.ping()
                return client
            except (redis.RedisError, OSError):
                client.close()
                time.sleep(0.05)
        raise InterruptedError


@contextlib.contextmanager
def pbft_behind_gateway(tmp_path: Path) -> Iterator[tuple[LocalCluster, Gateway]]:
    """A 4-node PBFT cluster with Ed25519 node keys, and a gateway in front."""
    cluster = LocalCluster(tmp_path / "cluster", protocol="pbft", nodes=4, sections=SECTIONS,
                           auth="ed25519")
    with behind_gateway(cluster, tmp_path / "gateway.log") as gateway:
        yield cluster, gateway


@pytest.fixture
def pbft(tmp_path: Path) -> Iterator[tuple[LocalCluster, Gateway]]:
    with pbft_behind_gateway(tmp_path) as running:
        yield running


def kill_and_restart_under_load(cluster: LocalCluster, workload: Workload, node: int) -> None:
    """Run ``workload`` through 20 operations, a kill -9 of ``node``, 20 more, its
    restart and 20 more; then stop it (also if a wait fails)."""
    workload.start()
    try:
        wait_for_progress(workload, 20)
        cluster.kill(node)
        wait_for_progress(workload, 20)
        cluster.start(node)
        cluster.wait_ready([node])
        wait_for_progress(workload, 20)
    finally:
        workload.finish()


def wait_for_progress(workload: Workload, more: int) -> None:
    target = workload.ok_count() + more
    deadline = time.monotonic() + DEADLINE_S
    while workload.ok_count() < target:
        assert time.monotonic() < deadline, f"no progress: {workload.ok_count()} < {target}"
        time.sleep(0.05)


def test_redis_clients_through_the_gateway_survive_kill_9_of_a_backup(
    pbft: tuple[LocalCluster, Gateway],
) -> None:
    cluster, gateway = pbft
    client = connect(gateway.port)
    assert client.set("hello", "world") is True
    assert client.get("hello") == b"world"
    assert client.incr("c0") == 1
    pipe = client.pipeline()
    pipe.set("r0", "a")
    pipe.append("r0", "b")
    pipe.get("r0")
    assert pipe.execute() == [True, 2, b"ab"]
    client.delete("r0", "c0")
    client.close()

    workload = GatewayWorkload(cluster, 4, gateway.port)
    # Node 2, a backup: f+1 of the other three still answer alike.
    kill_and_restart_under_load(cluster, workload, 2)
    print(f"history: {ROOT / 'artifacts' / 'kv-gateway-pbft-history.jsonl'} "
          f"({len(workload.recorder.operations())} operations)")
    assert_linearizable(workload, "kv-gateway-pbft-history.jsonl")
    assert workload.ok_count() >= 60
    assert set(REGISTERS) | set(COUNTERS)


def replication(cluster: LocalCluster, node: int) -> dict[str, Any]:
    client = connect(cluster.cluster.nodes[node].client.port)
    try:
        info = client.info("replication")
        assert isinstance(info, dict)
        return info
    finally:
        client.close()


def test_redis_clients_through_the_gateway_survive_kill_9_of_the_primary(
    pbft: tuple[LocalCluster, Gateway],
) -> None:
    """The primary killed under load: one view change (or a few), then the new
    primary keeps its view while the load goes on (it used to be replaced every
    ~1.5 s: backups relayed whole batches and watched their digests)."""
    cluster, gateway = pbft
    workload = GatewayWorkload(cluster, 4, gateway.port)
    workload.start()
    try:
        wait_for_progress(workload, 20)
        primary = int(replication(cluster, 1)["leader_node"])
        cluster.kill(primary)
        wait_for_progress(workload, 20)
        others = [node for node in range(4) if node != primary]
        view_before = max(int(replication(cluster, node)["term"]) for node in others)
        wait_for_progress(workload, 60)
        view_after = max(int(replication(cluster, node)["term"]) for node in others)
        cluster.start(primary)
        cluster.wait_ready([primary])
        wait_for_progress(workload, 20)
    finally:
        workload.finish()
    assert view_before >= 1
    assert view_after == view_before, (view_before, view_after)
    assert_linearizable(workload, "kv-gateway-pbft-primary-kill-history.jsonl")


def run_with_a_byzantine_replica(
    tmp_path: Path, node: int, behaviour: str, *gateway_options: str
) -> tuple[GatewayWorkload, dict[int, dict[str, float]], list[int]]:
    """Four replicas, ``node`` running ``behaviour``, four clients through a
    gateway until 60 more operations completed: the workload, every replica's
    counters (host's and core's together) and the correct replicas' views."""
    cluster = LocalCluster(tmp_path / "cluster", protocol="pbft", nodes=4, sections=SECTIONS,
                           auth="ed25519", metrics=True)
    gateway: Gateway | None = None
    try:
        for replica in range(4):
            cluster.start(replica, byzantine=behaviour if replica == node else None)
        cluster.wait_ready(range(4))
        gateway = Gateway(cluster, tmp_path / "gateway.log", *gateway_options)
        workload = GatewayWorkload(cluster, 4, gateway.port)
        workload.start()
        try:
            wait_for_progress(workload, 60)
        finally:
            workload.finish()
        views = [int(replication(cluster, replica)["term"]) for replica in range(4)
                 if replica != node]
        counters = {
            replica: runtime_counters(cluster, replica) | runtime_counters(cluster, replica, "core")
            for replica in range(4)
        }
    finally:
        if gateway is not None:
            gateway.close()
        cluster.close()
    return workload, counters, views


def assert_linearizable(workload: GatewayWorkload, history: str | None = None) -> None:
    """The workload's history is linearizable; with ``history``, it is written
    to ``artifacts/<history>`` first (the CI artifact)."""
    operations = workload.recorder.operations()
    if history is not None:
        artifacts = ROOT / "artifacts"
        artifacts.mkdir(exist_ok=True)
        dump_history(operations, artifacts / history)
    result = check_linearizable(operations, time_budget_s=120)
    assert result.linearizable is True, result.describe()[:2000]


@pytest.mark.parametrize(("node", "behaviour"), [
    (0, "pbft_invalid_batch"),  # the primary of view 0: must be replaced
    (2, "pbft_wrong_digest+pbft_forge_checkpoint+pbft_drop_prepared"),  # a lying backup
])
def test_a_live_byzantine_replica_does_not_stop_correct_answers(
    tmp_path: Path, node: int, behaviour: str
) -> None:
    """``replicaio node --byzantine``: one replica runs the simulator's PBFT
    behaviours on its real messages (signed with its own Ed25519 key); clients
    through the gateway keep getting answers, and the history is linearizable."""
    workload, counters, views = run_with_a_byzantine_replica(tmp_path, node, behaviour)
    assert counters[node].get("byzantine_sends", 0) > 0
    if node == 0:
        assert min(views) >= 1, views  # the faulty primary was replaced
    assert_linearizable(workload)


def test_fast_reads_through_the_gateway_outvote_a_replica_answering_stale_values(
    tmp_path: Path,
) -> None:
    """``kv gateway --fast-reads`` (the read-only optimisation, section 5.1.3):
    reads answered by 2f+1 matching replicas from their own state, with replica 2
    answering every client with a result it gave earlier; the history of the
    clients through the gateway is linearizable, and the correct replicas did
    serve unordered reads."""
    workload, counters, _ = run_with_a_byzantine_replica(
        tmp_path, 2, "pbft_stale_reads", "--fast-reads"
    )
    unordered = [counters[replica].get("smr_reads_unordered", 0) for replica in (0, 1, 3)]
    assert min(unordered) > 0, unordered
    assert counters[2].get("byzantine_outputs", 0) > 0
    assert_linearizable(workload)


def test_bad_input_on_the_gateway_and_on_submit_is_rejected_and_counted(
    pbft: tuple[LocalCluster, Gateway],
) -> None:
    cluster, gateway = pbft
    answer = send_and_close(gateway.port, b"*2\r\n$3\r\nGET\r\n$999999999\r\n")
    assert answer.startswith(b"-ERR Protocol error: invalid bulk length")
    send_and_close(gateway.port, bytes(range(256)) * 20, half_close=True)
    replica = cluster.cluster.nodes[1].client.port
    answer = send_and_close(replica, b"*2\r\n$16\r\nREPLICAIO.SUBMIT\r\n$5\r\nhello\r\n")
    assert answer.startswith(b"-ERR undecodable request"), answer
    answer = send_and_close(replica, b"*1\r\n$16\r\nREPLICAIO.SUBMIT\r\n")
    assert answer.startswith(b"-ERR wrong number of arguments"), answer
    answer = send_and_close(replica, b"*3\r\n$15\r\nREPLICAIO.AWAIT\r\n$1\r\nx\r\n$1\r\n1\r\n")
    assert answer.startswith(b"-ERR client and seq must be integers"), answer
    client = connect(gateway.port)
    assert client.set("still", "serving") is True
    assert client.get("still") == b"serving"
    client.close()
    metrics = connect(replica).info("stats")
    assert isinstance(metrics, dict)
    assert CLIENT_TIMEOUT_S > 0


def test_the_asyncio_client_library_signs_and_votes(
    pbft: tuple[LocalCluster, Gateway],
) -> None:
    """``SmrSession``: registered, numbered, signed (Ed25519) requests; each result
    vouched for by f+1 replicas; a refusal raised, not made up."""
    cluster, _ = pbft

    async def scenario() -> list[Any]:
        client = SmrClient(cluster.cluster)
        try:
            session = client.session()
            public = getattr(session.signer, "public", b"")
            assert session.signer.client == client_id_of(public)
            found = [await session.execute(encode_command("incr", b"lib", 5)) for _ in range(3)]
            found.append(await session.execute(encode_command("get", b"lib")))
            other = client.session()
            found.append(await other.execute(encode_command("append", b"lib", b"x")))
            return found
        finally:
            client.close()

    results = [decode_result(result) for result in asyncio.run(scenario())]
    assert results == [KvOk(5), KvOk(10), KvOk(15), KvOk(b"15"), KvOk(3)]


def test_redis_cli_and_redis_benchmark_work_through_the_gateway(
    pbft: tuple[LocalCluster, Gateway],
) -> None:
    """Issue 10 section 4: the Redis tools users point at a server work through
    the gateway: redis-cli's commands and a MULTI/EXEC block, redis-benchmark's
    SET and GET (every reply still voted by f+1 replicas), and what they wrote
    is there afterwards through the gateway and on a replica's own port."""
    cluster, gateway = pbft
    redis_cli = shutil.which("redis-cli")
    redis_benchmark = shutil.which("redis-benchmark")
    assert redis_cli is not None and redis_benchmark is not None, (
        "redis-tools is part of the test environment (./run setup installs it)")
    port = str(gateway.port)

    def cli(*args: str, stdin: str | None = None) -> str:
        done = subprocess.run([redis_cli, "-p", port, *args], input=stdin, text=True,
                              capture_output=True, timeout=DEADLINE_S, check=False)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    assert cli("SET", "tool", "cli").strip() == "OK"
    assert cli("INCRBY", "tool:n", "41").strip() == "41"
    block = cli(stdin="MULTI\nINCR tool:n\nAPPEND tool x\nGET tool\nEXEC\n")
    assert block.split() == ["OK", "QUEUED", "QUEUED", "QUEUED", "42", "4", "clix"], block
    bench = subprocess.run(
        [redis_benchmark, "-p", port, "-t", "set,get", "-n", "300", "-c", "4", "-r", "50",
         "-d", "16", "-q"],
        text=True, capture_output=True, timeout=DEADLINE_S * 2, check=True)
    lines = {line.split(":")[0].strip(): line for line in bench.stdout.splitlines()
             if "requests per second" in line}
    assert {"SET", "GET"} <= set(lines), bench.stdout + bench.stderr
    assert "error" not in bench.stdout.lower(), bench.stdout
    keys = set(cli("--scan", "--pattern", "key:*").split())
    assert keys and len(keys) <= 50, keys
    client = connect(gateway.port)
    replica = connect(cluster.cluster.nodes[1].client.port)
    try:
        for key in sorted(keys)[:5]:
            value = client.get(key)
            assert value is not None and len(value) == 16
            assert replica.get(key) == value
        assert client.get("tool:n") == b"42"
    finally:
        client.close()
        replica.close()
