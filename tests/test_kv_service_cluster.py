"""The Redis front of the KV store with real node processes on 127.0.0.1, driven by
redis-py with its retries off (``Retry(NoBackoff(), 0)``; ``retry_on_timeout``
is off by default): a 3-node Raft cluster under concurrent SET/GET/INCR/APPEND/CAS while
the leader and then a follower are killed with SIGKILL and restarted, and while
bad input hits one node's client and peer ports; then every node is killed at
once and restarted. The whole client history (the simulator's JSON-lines
format; timeouts and lost connections are ``info``) is checked linearizable and
written to ``artifacts/`` (the CI artifact; its path is printed). Also: a node
whose WAL has a corrupted middle record refuses to start, and ``replicaio kv
up`` / ``kv down``.

Every wait is bounded; the fixture's finalizer kills every process.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from replicaio.check.history import dump_history
from replicaio.check.linearizability import check_linearizable
from replicaio.cli import main
from replicaio.runtime.crypto import HmacAuthenticator
from replicaio.runtime.framing import frame_header
from replicaio.runtime.local import LocalCluster, free_port_block
from replicaio.runtime.transport import ephemeral_share, handshake_frame, transcript
from replicaio.storage.file import SEGMENT_RECORDS_START
from replicaio.torture.workload import COUNTERS, REGISTERS, Endpoint, execute
from replicaio.torture.workload import Workload as TortureWorkload

ROOT = Path(__file__).resolve().parent.parent
LOCAL = "127.0.0.1"
DEADLINE_S = 20.0
CLIENT_TIMEOUT_S = 5.0
SECTIONS: dict[str, dict[str, Any]] = {
    "node": {"tick_us": 10_000},
    "transport": {"reconnect_delay_ms_min": 10, "reconnect_delay_ms_max": 200},
    "host": {"client_service": "resp"},  # fsync stays on: acknowledged means durable
    "service": {"retry_after_ms": 300, "retry_backoff_ms": 20, "request_timeout_ms": 2500},
}


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    made: list[LocalCluster] = []

    def make(**options: Any) -> LocalCluster:
        options.setdefault("sections", SECTIONS)
        cluster = LocalCluster(tmp_path / f"cluster{len(made)}", protocol="raft", **options)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()


def connect(port: int) -> redis.Redis:
    """A redis-py client with every retry off."""
    return redis.Redis(
        host=LOCAL, port=port, socket_timeout=CLIENT_TIMEOUT_S, socket_connect_timeout=2.0,
        retry=Retry(NoBackoff(), 0),
    )


def port_of(cluster: LocalCluster, node: int) -> int:
    return cluster.cluster.nodes[node].client.port


def leader_of(cluster: LocalCluster, among: list[int]) -> int:
    """The node that says it leads (bounded wait)."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        for node in among:
            with contextlib.suppress(redis.RedisError, OSError):
                client = connect(port_of(cluster, node))
                role = client.info("replication")["role"]
                client.close()
                if role == "leader":
                    return node
        time.sleep(0.1)
    raise AssertionError("no leader")


class Workload(TortureWorkload):
    """The torture's concurrent redis-py clients (``replicaio.torture.workload``:
    one history, JSON-lines format) over ``cluster``'s Redis ports, with the
    tests' socket timeout and no acknowledged-key puts; ``finish`` fails the test
    on any client error."""

    def __init__(self, cluster: LocalCluster, clients: int) -> None:
        endpoints = [Endpoint(LOCAL, port_of(cluster, node)) for node in range(cluster.cluster.n)]
        super().__init__(endpoints, clients, seed=0, timeout_s=CLIENT_TIMEOUT_S,
                         acknowledged_share=0.0)
        self.cluster = cluster

    def finish(self) -> list[str]:
        problems = super().finish()
        assert not problems, problems
        return problems

    def ok_count(self) -> int:
        with self.lock:
            return sum(1 for op in self.recorder.operations() if op.status == "ok")


def final_reads(workload: Workload, keys: list[str]) -> dict[str, str | None]:
    """Read every key through rotating nodes, recorded in the history; retries on
    -TRYAGAIN (the restarted cluster may still be electing)."""
    found: dict[str, str | None] = {}
    cluster = workload.cluster
    deadline = time.monotonic() + DEADLINE_S
    for position, key in enumerate(keys):
        node = position % cluster.cluster.n
        while key not in found:
            assert time.monotonic() < deadline, f"cannot read {key} after the restart"
            actor = workload.new_client()
            client = connect(port_of(cluster, node))
            with workload.lock:
                handle = workload.recorder.invoke(actor, "get", key)
            try:
                value = client.get(key)
            except redis.ResponseError:
                workload.complete(handle, "fail")
                time.sleep(0.1)
                continue
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                workload.complete(handle, "info")
                time.sleep(0.1)
                continue
            finally:
                client.close()
            assert not isinstance(value, str)  # connect() leaves decode_responses off
            found[key] = None if value is None else value.decode()
            workload.complete(handle, "ok", found[key])
    return found


def no_quorum(workload: Workload, leader: int) -> None:
    """With its two peers killed, the leader answers a read -TRYAGAIN and a write
    -UNKNOWN after a bounded wait: no read from a possibly stale state, no write
    it cannot commit."""
    cluster = workload.cluster
    kinds = (("get", None), ("put", "lonely"), ("incr", "1"))
    clients = {kind: connect(port_of(cluster, leader)) for kind, _ in kinds}
    for kind in ("put", "incr"):
        # The writers' sessions are registered first (a key of their own, outside
        # the history): a connection that cannot even register gets TRYAGAIN, as
        # nothing of its command was sent.
        assert clients[kind].set(f"no-quorum-{kind}", "registered") is True
    for node in range(cluster.cluster.n):
        if node != leader:
            cluster.kill(node)

    def attempt(kind: str, value: str | None) -> None:
        key = "c0" if kind == "incr" else "r0"
        client = clients[kind]
        with workload.lock:
            handle = workload.recorder.invoke(workload.recorder.new_client(), kind, key, value)
        started = time.monotonic()
        try:
            # A read: TRYAGAIN (no effect). A write: UNKNOWN, its outcome unknown.
            expected = (redis.exceptions.TryAgainError if kind == "get"
                        else redis.exceptions.ResponseError)
            prefix = "no quorum" if kind == "get" else "^UNKNOWN no quorum"
            with pytest.raises(expected, match=prefix):
                execute(client, kind, key, value, None)
            assert time.monotonic() - started < CLIENT_TIMEOUT_S
        finally:
            workload.complete(handle, "fail" if kind == "get" else "info")
            client.close()

    with ThreadPoolExecutor(3) as pool:  # concurrently: one bounded wait for all
        waits = [pool.submit(attempt, kind, value) for kind, value in kinds]
        for done in waits:
            done.result()


# -- bad input on a live node -----------------------------------------------------------------


NO_NEWLINE = bytes(byte for byte in range(256) if byte != 0x0A)


def send_and_close(port: int, data: bytes, *, half_close: bool = False) -> bytes:
    with socket.create_connection((LOCAL, port), timeout=5.0) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        with contextlib.suppress(TimeoutError, ConnectionError):
            sock.settimeout(1.0)
            while chunk := sock.recv(65536):
                answer += chunk
        return answer


def attack(cluster: LocalCluster, node: int) -> dict[str, int]:
    """Bad input on ``node``'s client and peer ports; the counters each must move."""
    client, peer = port_of(cluster, node), cluster.cluster.nodes[node].peer.port
    answer = send_and_close(client, b"\x16\x03\x01" + NO_NEWLINE * 300)  # not RESP at all
    assert answer.startswith(b"-ERR Protocol error: too big inline request")
    answer = send_and_close(client, b"*2\r\n$3\r\nGET\r\n$999999999\r\n")  # oversized bulk
    assert answer.startswith(b"-ERR Protocol error: invalid bulk length")
    send_and_close(client, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\r\nabc", half_close=True)
    answer = send_and_close(client, b"*1\r\n$7\r\nFROBNIC\r\n*1\r\n$4\r\nPING\r\n")
    assert answer == b"-ERR unknown command 'FROBNIC', with args beginning with: \r\n+PONG\r\n"
    random_bytes = random.Random(7).randbytes(2000)
    send_and_close(client, random_bytes, half_close=True)  # whatever it parses as
    # Peer port: a node that is not in the cluster; node 0 with another cluster's key.
    send_and_close(peer, handshake_frame("hello", 7, node, secrets.token_bytes(32),
                                         ephemeral_share()[1]))
    with socket.create_connection((LOCAL, peer), timeout=5.0) as sock:
        nonce = secrets.token_bytes(32)
        _, share = ephemeral_share()
        sock.sendall(handshake_frame("hello", 0, node, nonce, share))
        challenge = msgpack.unpackb(read_frame(sock))
        impostor = HmacAuthenticator(0, b"another cluster's secret!", (0, node))
        text = transcript(0, node, nonce, challenge[3], share, challenge[4])
        proof = impostor.tag(node, text + b"dialer")
        sock.sendall(handshake_frame("proof", proof))
        sock.settimeout(2.0)
        with contextlib.suppress(TimeoutError, ConnectionError):
            assert sock.recv(100) == b""  # closed by the node
    send_and_close(peer, frame_header(1 << 30))  # an oversized frame
    return {
        "rejected_resp_inline_too_long": 1,
        "rejected_resp_invalid_bulk_length": 1,
        "rejected_resp_truncated_frame": 1,
        "rejected_resp_command_unknown_command": 1,
        "rejected_unknown_peer": 1,
        "rejected_bad_auth": 1,
        "rejected_oversized_frame": 1,
    }


def read_frame(sock: socket.socket) -> bytes:
    header = sock.recv(4, socket.MSG_WAITALL)
    return sock.recv(int.from_bytes(header, "big"), socket.MSG_WAITALL)


def runtime_counters(
    cluster: LocalCluster, node: int, kind: str = "runtime"
) -> dict[str, float]:
    """A node's counters from /metrics: the host's (``runtime``) or its core's (``core``)."""
    address = cluster.cluster.nodes[node].metrics
    assert address is not None
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as page:
        text = page.read().decode()
    found = {}
    prefix = f'replicaio_{kind}_events_total{{event="'
    for line in text.splitlines():
        if line.startswith(prefix):
            name, _, number = line[len(prefix):].partition('"} ')
            found[name] = float(number)
    assert "replicaio_protocol_term" in text and "replicaio_kv_request_seconds_bucket" in text
    return found


# -- the tests ----------------------------------------------------------------------------------


def test_redis_clients_see_one_linearizable_durable_store_through_kill_9_and_bad_input(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(nodes=3, metrics=True)
    cluster.start_all()
    nodes = list(range(3))
    leader = leader_of(cluster, nodes)
    workload = Workload(cluster, clients=6)
    workload.start()
    time.sleep(1.5)
    phases = {"before": workload.ok_count()}

    cluster.kill(leader)  # SIGKILL of the leader under load
    time.sleep(1.0)
    cluster.start(leader)
    cluster.wait_ready([leader])
    follower = next(node for node in nodes if node != leader_of(cluster, nodes))
    time.sleep(1.0)
    phases["leader killed"] = workload.ok_count()

    cluster.kill(follower)  # then a follower
    time.sleep(1.0)
    cluster.start(follower)
    cluster.wait_ready([follower])
    time.sleep(1.0)
    phases["follower killed"] = workload.ok_count()

    target = max(nodes)  # a node others dial: its peer port authenticates them
    expected = attack(cluster, target)
    time.sleep(1.0)
    workload.finish()
    phases["attacked"] = workload.ok_count()
    assert phases["before"] > 20 and phases["attacked"] - phases["follower killed"] > 20, phases
    counters = runtime_counters(cluster, target)
    for name, least in expected.items():
        assert counters.get(name, 0) >= least, (name, counters)
    survivor = connect(port_of(cluster, target))  # it keeps serving
    assert survivor.set("after-attack", "ok") is True and survivor.get("after-attack") == b"ok"
    survivor.close()

    # Acknowledged writes survive kill -9 of every node at once.
    acknowledged = {f"durable{index}": f"value{index}" for index in range(30)}
    writer = connect(port_of(cluster, 0))
    with writer.pipeline(transaction=False) as pipe, workload.lock:
        handles = []
        for key, value in acknowledged.items():  # one pipeline: concurrent operations
            handles.append(workload.recorder.invoke(workload.recorder.new_client(), "put",
                                                    key, value))
            pipe.set(key, value)
        assert pipe.execute() == [True] * len(acknowledged)
        for handle in handles:
            workload.recorder.ok(handle)
    writer.close()
    for process in cluster.processes.values():
        process.kill()
    for node in nodes:
        cluster.kill(node)
    for node in nodes:
        cluster.start(node)
    cluster.wait_ready(nodes)
    found = final_reads(workload, [*REGISTERS, *COUNTERS, *acknowledged])
    assert {key: found[key] for key in acknowledged} == acknowledged
    no_quorum(workload, leader_of(cluster, nodes))

    operations = workload.recorder.operations()
    artifacts = ROOT / "artifacts"
    artifacts.mkdir(exist_ok=True)
    path = artifacts / f"kv-cluster-history-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    dump_history(operations, path)
    print(f"\nKV history ({len(operations)} operations, {workload.ok_count()} ok): {path}")
    result = check_linearizable(operations, time_budget_s=60)
    assert result.linearizable is True, result.describe()


def test_a_kv_node_whose_wal_has_a_corrupted_middle_record_refuses_to_start(
    make_cluster: Callable[..., LocalCluster], capsys: pytest.CaptureFixture[str],
) -> None:
    cluster = make_cluster(nodes=1)
    cluster.start_all()
    client = connect(port_of(cluster, 0))
    deadline = time.monotonic() + DEADLINE_S
    written = 0
    while written < 3:  # one at a time: several batches in the log
        assert time.monotonic() < deadline
        try:
            client.set(f"k{written}", "v")
            written += 1
        except redis.ResponseError:  # before the node elects itself
            time.sleep(0.05)
    client.close()
    assert cluster.stop(0) == 0
    # The live node's event log, RESP requests included, replays exactly.
    assert main(["replay", str(cluster.event_log(0, 1)), "--node", "0"]) == 0
    assert "every effect matches" in capsys.readouterr().out
    segments = sorted((cluster.directory / "node-0").glob("wal-*.log"))
    data = bytearray(segments[0].read_bytes())
    data[SEGMENT_RECORDS_START + 5] ^= 0xFF  # inside the checksum of the first record
    segments[0].write_bytes(bytes(data))
    process = cluster.start(0)
    status = process.wait(DEADLINE_S)
    cluster.processes.pop(0)
    output = cluster.stderr_log(0, 2).read_text()
    assert status == 2
    assert "cannot open its storage" in output and "refusing to open" in output
    assert segments[0].name in output


def test_kv_up_gives_a_cluster_redis_clients_use_and_kv_down_stops_it(tmp_path: Path) -> None:
    base = free_port_block(10)
    directory = tmp_path / "kv"
    command = [sys.executable, "-m", "replicaio.cli", "kv"]
    try:
        up = subprocess.run(
            [*command, "up", "--nodes", "3", "--base-port", str(base), "--data-dir",
             str(directory), "--no-fsync"],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert up.returncode == 0, up.stderr + up.stdout
        ports = [base + 1, base + 2, base + 3]
        assert f"RESP ports {ports[0]} {ports[1]} {ports[2]}" in up.stdout
        for index, port in enumerate(ports):  # every node takes writes (followers forward)
            client = connect(port)
            assert client.set(f"k{index}", f"v{index}") is True
            client.close()
        for index, port in enumerate(ports):
            client = connect(port)
            assert client.get(f"k{(index + 1) % 3}") == f"v{(index + 1) % 3}".encode()
            client.close()
        with urllib.request.urlopen(f"http://{LOCAL}:{base + 7}/metrics", timeout=10) as page:
            assert "replicaio_protocol_commit_index" in page.read().decode()
    finally:
        down = subprocess.run([*command, "down", "--data-dir", str(directory)],
                              capture_output=True, text=True, timeout=60, check=False)
    assert down.returncode == 0, down.stderr
    assert "3 node process(es) stopped" in down.stdout
    assert not list(directory.glob("*.pid"))
