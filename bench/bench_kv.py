"""The live replicaio KV side by side with PySyncObj, etcd and Redis, on this machine.

One run starts each system in turn on 127.0.0.1, drives the same closed-loop
workloads against it, stops it, and prints one table with the ratios
replicaio/anchor (``--json`` for the machine-readable report):

* **replicaio**: 3 Raft nodes (Raft + SMR + KV), each its own process
  (``replicaio node``, uvloop when installed), fsync on, metrics on. Through
  the Redis (RESP) front when it is registered (``--front resp``), else through
  the runtime's ``stream`` client service (``--front stream``).
* **pysyncobj**: 3 PySyncObj nodes from PyPI (installed by this script into
  ``bench/.venv-anchors``), journal file on (``FileJournal``: mmap, never
  fsync'ed on the write path). ``--pysyncobj-memory`` adds the in-memory
  variant that the issue's orientation figure used.
* **etcd**: 3 members of the Debian ``etcd-server`` (``apt-get install -y
  etcd-server`` after ``apt-get update`` when ``etcd`` is missing), fsync on
  (etcd's default).
* **redis**: one ``redis-server`` (Debian), ``appendonly yes``,
  ``appendfsync always``: the unreplicated upper bound.

Workloads: 100-byte values, keys drawn uniformly from ``--keys`` keys; a
closed loop of 1, 16, 64 and 256 concurrent clients (``--clients``), each with
one request outstanding; 100% SET (``set``), 50/50 GET/SET (``mixed``: its GETs'
and SETs' latencies are also reported apart, ``get_p50_ms``, ``set_p99_ms``...),
100% GET (``get``: nothing is preloaded, and a GET of a missing key still takes
the whole read path, replicaio's read-index barrier included) and ``mset``
(two keys). Each cell warms up for
``--warmup`` seconds, then measures for ``--duration`` seconds: throughput is
the requests completed inside the window per second, p50/p99 their latencies.
``--repeat`` (odd, default 3) runs every cell several times and keeps the run
with the median throughput (with its latencies); every run's throughput is
printed beside it and kept in the JSON.

How each system is driven (this affects fairness; docs/benchmarks.md):

* replicaio/resp and redis: this process, asyncio (uvloop when installed), one
  TCP connection per client, a minimal RESP2 client without pipelining. All
  replicaio clients talk to the leader (found from the nodes' metrics).
* replicaio/stream: this process, one TCP connection to the leader carrying
  every logical client (``smr.ClientRequest`` with its own client id and
  sequence numbers; every reply of the node reaches that one connection).
* etcd: this process, one HTTP/1.1 keep-alive connection per client to the
  leader's v3 JSON gateway (``POST /v3/kv/put``, ``POST /v3/kv/range``,
  linearizable reads). The gateway re-encodes each request as gRPC inside
  etcd, which costs etcd CPU that a Go gRPC client would not.
* pysyncobj: inside the leader's process (``bench/kv_pysyncobj_node.py``):
  ``C`` replicated calls in flight, each completion submits the next; GETs are
  replicated calls too (linearizable).

The load generator shares the machine's 2 cores with the servers; its CPU time
is reported per cell (``loadgen_cpu_s``) next to the servers' (``server_cpu_s``,
all nodes, from /proc), so a reader can see who paid for what.

``redis-benchmark -t set,get -n N -c C -d 100 -r K`` (Debian ``redis-tools``)
then runs against the replicaio RESP front (a client none of us wrote) and,
for calibration, against Redis.

    .venv/bin/python bench/bench_kv.py                         # everything, ~25 minutes
    .venv/bin/python bench/bench_kv.py --systems replicaio --clients 1,64 --duration 5
    .venv/bin/python bench/bench_kv.py --json > kv.json
    .venv/bin/python bench/bench_kv.py --systems replicaio --profile 20   # py-spy on the leader
    .venv/bin/python bench/bench_kv.py --systems replicaio --node-params tick_us=5000

Every process this script starts is killed at exit (also on Ctrl-C), and its
temporary directory removed (``--keep`` keeps it). Every anchor is optional:
one that cannot be installed or started is skipped with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import contextlib
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replicaio.runtime.local import free_ports

BENCH_DIR = Path(__file__).resolve().parent
ANCHORS_VENV = BENCH_DIR / ".venv-anchors"
PYSYNCOBJ_NODE = BENCH_DIR / "kv_pysyncobj_node.py"
FLOOR_NODE = BENCH_DIR / "kv_floor_node.py"
LOOPBACK = "127.0.0.1"
SYSTEMS = ("replicaio", "replicaio-pbft", "replicaio-pbft-gateway", "replicaio-minbft",
           "pysyncobj", "etcd", "redis", "replicaio-pbft-groups",
           "replicaio-pbft-groups-gateway", "replicaio-pbft-groups-gateway-wave",
           "replicaio-minbft-groups", "replicaio-minbft-groups-gateway", "floor",
           "floor-1flush")
SHARDED_GROUPS = 3  # the replicaio-pbft-groups systems: txn-kv-pbft:groups=3
OP_TIMEOUT_S = 5.0  # one request; beyond it the client counts a timeout (and retries)


class Skip(Exception):
    """This system cannot run here; the message says why."""


def log(message: str) -> None:
    print(f"[bench_kv] {message}", file=sys.stderr, flush=True)


# -- processes: every one we start is ours to kill ----------------------------------------------


class Processes:
    """Every child process of the run, killed (by pid) at exit whatever happens."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[Any]] = []

    def start(self, command: list[str], output: Path, **options: Any) -> subprocess.Popen[Any]:
        with open(output, "ab") as sink:
            process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT,
                                       **options)
        self.running.append(process)
        return process

    def track(self, process: subprocess.Popen[Any]) -> None:
        self.running.append(process)

    def stop(self, process: subprocess.Popen[Any], timeout_s: float = 5.0) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout_s)
        with contextlib.suppress(ValueError):
            self.running.remove(process)

    def stop_all(self) -> None:
        for process in list(self.running):
            with contextlib.suppress(Exception):
                self.stop(process, 3.0)


PROCESSES = Processes()


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of ``pids`` (and their threads), from /proc."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.1)
    raise Skip(f"{what} not ready after {timeout_s:.0f} s")


# -- statistics ---------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def summarize(latencies_s: list[float], window_s: float) -> dict[str, Any]:
    latencies_s.sort()
    return {
        "ops": len(latencies_s),
        "ops_per_s": round(len(latencies_s) / window_s, 1),
        "p50_ms": round(percentile(latencies_s, 0.50) * 1e3, 3),
        "p99_ms": round(percentile(latencies_s, 0.99) * 1e3, 3),
        "mean_ms": round(statistics.fmean(latencies_s) * 1e3, 3) if latencies_s else None,
    }


# -- clients ------------------------------------------------------------------------------------


class OpError(Exception):
    """The server answered with an error (counted; the client goes on)."""


class RespClient:
    """A minimal RESP2 client: one command at a time on one connection, no pipelining."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> RespClient:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    @staticmethod
    def encode(*words: bytes) -> bytes:
        parts = [b"*%d\r\n" % len(words)]
        for word in words:
            parts.append(b"$%d\r\n%s\r\n" % (len(word), word))
        return b"".join(parts)

    async def command(self, *words: bytes) -> Any:
        self.writer.write(self.encode(*words))
        return await self.reply()

    async def reply(self) -> Any:
        line = await self.reader.readuntil(b"\r\n")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise OpError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            length = int(rest)
            if length < 0:
                return None
            data = await self.reader.readexactly(length + 2)
            return data[:-2]
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [await self.reply() for _ in range(count)]
        if kind == b"_":  # RESP3 null, in case a server answers in RESP3
            return None
        raise OpError(f"unexpected reply {line[:40]!r}")

    async def set(self, key: bytes, value: bytes) -> None:
        if await self.command(b"SET", key, value) != b"OK":
            raise OpError("SET did not answer OK")

    async def get(self, key: bytes) -> Any:
        return await self.command(b"GET", key)

    async def mset(self, key: bytes, other: bytes, value: bytes) -> None:
        if await self.command(b"MSET", key, value, other, value) != b"OK":
            raise OpError("MSET did not answer OK")

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


class EtcdClient:
    """etcd's v3 JSON gateway over one HTTP/1.1 keep-alive connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 port: int) -> None:
        self.reader = reader
        self.writer = writer
        self.host = f"{LOOPBACK}:{port}".encode()

    @classmethod
    async def connect(cls, port: int) -> EtcdClient:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer, port)

    async def post(self, path: bytes, body: bytes) -> bytes:
        self.writer.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (path, self.host, len(body), body))
        status = await self.reader.readuntil(b"\r\n")
        length = -1
        chunked = False
        while True:
            header = await self.reader.readuntil(b"\r\n")
            if header == b"\r\n":
                break
            name, _, value = header.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            chunks = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                data = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                chunks.append(data[:-2])
            payload = b"".join(chunks)
        else:
            payload = await self.reader.readexactly(length) if length > 0 else b""
        if b" 200 " not in status:
            raise OpError(f"etcd: {status.strip()!r} {payload[:100]!r}")
        return payload

    async def set(self, key: bytes, value: bytes) -> None:
        body = b'{"key":"%s","value":"%s"}' % (base64.b64encode(key), base64.b64encode(value))
        await self.post(b"/v3/kv/put", body)

    async def get(self, key: bytes) -> Any:
        return await self.post(b"/v3/kv/range", b'{"key":"%s"}' % base64.b64encode(key))

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


class StreamMux:
    """One connection to a replicaio node's ``stream`` service carrying many logical
    clients; replies are matched to requests by ``(client, seq)``."""

    def __init__(self) -> None:
        from replicaio.core.codec import Codec

        self.codec = Codec()
        self.pending: dict[tuple[int, int], asyncio.Future[Any]] = {}
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None
        self.errors: dict[str, int] = {}

    async def open(self, port: int) -> None:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        self.writer = writer
        self.task = asyncio.get_running_loop().create_task(self.read_loop(reader))

    async def read_loop(self, reader: asyncio.StreamReader) -> None:
        from replicaio.runtime.framing import read_frame

        decode = self.codec.decode
        pending = self.pending
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
            while True:
                body = await read_frame(reader, 1 << 24)
                if body is None:
                    break
                message = decode(body)
                key = (getattr(message, "client", None), getattr(message, "seq", None))
                waiter = pending.pop(key, None)  # type: ignore[arg-type]
                if waiter is not None and not waiter.done():
                    waiter.set_result(message)
        for waiter in pending.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError("node closed the stream"))

    async def call(self, client: int, seq: int, command: bytes, read_only: bool) -> Any:
        from replicaio.runtime.framing import frame_header
        from replicaio.smr.api import ClientRequest

        assert self.writer is not None
        waiter = asyncio.get_running_loop().create_future()
        self.pending[(client, seq)] = waiter
        body = self.codec.encode_value(self.codec.encode(
            ClientRequest(client, seq, command, read_only)))
        self.writer.write(frame_header(len(body)) + body)
        try:
            return await asyncio.wait_for(waiter, OP_TIMEOUT_S)
        finally:
            self.pending.pop((client, seq), None)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        if self.writer is not None:
            self.writer.close()


class StreamKvClient:
    """One logical replicaio client (its own id, sequence numbers 1, 2, ...) on a mux."""

    def __init__(self, mux: StreamMux, client_id: int) -> None:
        self.mux = mux
        self.client_id = client_id
        self.seq = 0

    async def call(self, command: bytes, read_only: bool) -> Any:
        from replicaio.smr.api import Reply

        self.seq += 1
        for _attempt in range(20):  # a refusal (busy, no leader) is retried with the same seq
            try:
                answer = await self.mux.call(self.client_id, self.seq, command, read_only)
            except TimeoutError:
                self.mux.errors["timeout"] = self.mux.errors.get("timeout", 0) + 1
                continue
            if type(answer) is Reply:
                return answer.result
            reason = getattr(answer, "reason", type(answer).__name__)
            self.mux.errors[reason] = self.mux.errors.get(reason, 0) + 1
            await asyncio.sleep(0.002)
        raise OpError("no reply after 20 attempts")

    async def set(self, key: bytes, value: bytes) -> None:
        from replicaio.services.kv.state_machine import encode_command

        result = await self.call(encode_command("put", key, value), False)
        if not result.startswith(b"\x92\xa2ok"):  # ["ok", nil]
            raise OpError(f"put: {result[:40]!r}")

    async def get(self, key: bytes) -> Any:
        from replicaio.services.kv.state_machine import encode_command

        return await self.call(encode_command("get", key), True)

    async def close(self) -> None:
        pass


# -- the closed loop ----------------------------------------------------------------------------


WORKLOADS = {
    "set": "100% SET",
    "mixed": "50% GET / 50% SET (GET and SET latencies also apart)",
    "get": "100% GET (no preload: a GET of a missing key takes the same read path, "
           "replicaio's read-index barrier included)",
    "mset": "100% MSET of two random keys",
}


@dataclass
class CellResult:
    latencies_s: list[float] = field(default_factory=list)
    # The same latencies by kind of request ("get", "set"), for a mixed workload only.
    by_kind: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    loadgen_cpu_s: float = 0.0
    server_cpu_s: float = 0.0


async def closed_loop(
    connect: Callable[[int], Awaitable[Any]],
    clients: int,
    workload: str,
    warmup_s: float,
    duration_s: float,
    keys: int,
    value: bytes,
    server_pids: Sequence[int],
    seed: int,
) -> CellResult:
    """``clients`` clients, each with one request outstanding, for warmup + duration."""
    result = CellResult()
    connections = await asyncio.gather(*(connect(index) for index in range(clients)))
    loop = asyncio.get_running_loop()
    now = time.perf_counter  # uvloop's loop.time() ticks in whole milliseconds
    started = now()
    measure_from = started + warmup_s
    deadline = measure_from + duration_s
    latencies = result.latencies_s
    errors = result.errors
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}")
    mixed = workload == "mixed"
    only_gets = workload == "get"
    mset = workload == "mset"  # two keys: on a sharded store, in two groups 2 times in 3
    gets: list[float] = []
    sets: list[float] = []
    if mixed:
        result.by_kind = {"get": gets, "set": sets}

    async def one(connection: Any, index: int) -> None:
        rng = random.Random(seed * 100_003 + index)
        while True:
            begun = now()
            if begun >= deadline:
                return
            key = b"key:%d" % rng.randrange(keys)
            is_get = only_gets or (mixed and rng.random() < 0.5)
            try:
                if is_get:
                    await asyncio.wait_for(connection.get(key), OP_TIMEOUT_S * 4)
                elif mset:
                    other = b"key:%d" % rng.randrange(keys)
                    await asyncio.wait_for(connection.mset(key, other, value), OP_TIMEOUT_S * 4)
                else:
                    await asyncio.wait_for(connection.set(key, value), OP_TIMEOUT_S * 4)
            except (OpError, TimeoutError) as error:
                name = type(error).__name__ if isinstance(error, TimeoutError) else str(error)
                name = name[:60]
                errors[name] = errors.get(name, 0) + 1
                await asyncio.sleep(0.01)
                continue
            except (ConnectionError, OSError, asyncio.IncompleteReadError) as error:
                errors[f"connection: {type(error).__name__}"] = errors.get(
                    f"connection: {type(error).__name__}", 0) + 1
                return
            ended = now()
            if begun >= measure_from and ended <= deadline:
                latencies.append(ended - begun)
                if mixed:
                    (gets if is_get else sets).append(ended - begun)

    async def meter() -> None:
        await asyncio.sleep(max(0.0, measure_from - now()))
        cpu0, server0 = time.process_time(), cpu_seconds(server_pids)
        await asyncio.sleep(max(0.0, deadline - now()))
        result.loadgen_cpu_s = time.process_time() - cpu0
        result.server_cpu_s = cpu_seconds(server_pids) - server0

    tasks = [loop.create_task(one(connection, index))
             for index, connection in enumerate(connections)]
    await meter()
    _done, late = await asyncio.wait(tasks, timeout=OP_TIMEOUT_S * 4 + 2)
    for task in late:
        task.cancel()
    await asyncio.gather(*(connection.close() for connection in connections),
                         return_exceptions=True)
    return result


def run_async(coroutine: Awaitable[Any]) -> Any:
    try:
        import uvloop

        return uvloop.run(coroutine)  # type: ignore[arg-type]
    except ImportError:
        return asyncio.run(coroutine)  # type: ignore[arg-type]


# -- the systems --------------------------------------------------------------------------------


@dataclass
class Settings:
    workdir: Path
    warmup_s: float
    duration_s: float
    keys: int
    value_bytes: int
    front: str
    node_params: dict[str, int]
    protocol_params: dict[str, int]
    install: bool
    pbft_params: dict[str, int] = field(default_factory=dict)
    # Which Raft node replicaio's clients talk to: "leader", or "follower" (the first
    # node that does not lead: its writes are relayed to the leader and it learns
    # their commit from the leader's notices, ADR 0044's hurried path).
    connect: str = "leader"


class System:
    name = "?"
    durability = "?"
    driven = "?"
    nodes = 1

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def server_pids(self) -> list[int]:
        raise NotImplementedError

    def cell(self, clients: int, workload: str, seed: int) -> CellResult:
        """Default: the asyncio closed loop in this process with :meth:`connect`."""
        settings = self.settings
        result: CellResult = run_async(closed_loop(
            self.connect, clients, workload, settings.warmup_s, settings.duration_s,
            settings.keys, b"v" * settings.value_bytes, self.server_pids(), seed,
        ))
        return result

    async def connect(self, index: int) -> Any:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"nodes": self.nodes, "durability": self.durability, "driven": self.driven}


# A variant's nodes run under another interpreter (``python=PATH``: the .venv of
# another worktree, say main's, to measure the old code beside the new in one run).
VARIANT_PYTHON: dict[str, str] = {}


def parse_variant(
    text: str,
) -> tuple[str, dict[str, int], dict[str, int], dict[str, int]]:
    """``NAME:node.tick_us=5000,protocol.snapshot=64,host.batch_inputs_max=64``
    -> (name, node params, protocol params, host params); an item
    ``python=PATH`` runs the variant's nodes with that interpreter
    (``VARIANT_PYTHON``)."""
    name, _, spec = text.partition(":")
    sections: dict[str, dict[str, int]] = {"node": {}, "protocol": {}, "host": {}}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        if key.strip() == "python":
            VARIANT_PYTHON[f"replicaio[{name}]"] = value.strip()
            continue
        section, _, param = key.strip().partition(".")
        if section not in sections or not param:
            raise SystemExit(
                f"bench_kv: bad variant item {item!r} (node.X=N, protocol.X=N or host.X=N)")
        flag = {"true": True, "false": False}.get(value.strip().lower())
        sections[section][param] = int(value) if flag is None else flag
    return f"replicaio[{name}]", sections["node"], sections["protocol"], sections["host"]


class ReplicaioSystem(System):
    name = "replicaio"
    nodes = 3
    protocol = "raft"
    auth = "hmac"

    def __init__(self, settings: Settings, label: str = "replicaio",
                 node_params: dict[str, int] | None = None,
                 protocol_params: dict[str, int] | None = None,
                 host_params: dict[str, int] | None = None) -> None:
        super().__init__(settings)
        self.name = label
        self.host_params = host_params or {}
        self.node_params = settings.node_params if node_params is None else node_params
        self.protocol_params = (settings.protocol_params if protocol_params is None
                                else protocol_params)
        self.cluster: Any = None
        self.leader = -1
        self.front = settings.front
        self.mux: StreamMux | None = None
        self.cells = 0
        self.durability = "fsync on every group commit (FileStorage, fsync = true)"

    @staticmethod
    def resp_available() -> bool:
        import importlib

        from replicaio.runtime.client import SERVICES

        for module in ("replicaio.runtime.kv.service", "replicaio.services.kv.resp"):
            with contextlib.suppress(ImportError):
                importlib.import_module(module)  # registers the "resp" client service
        return "resp" in SERVICES

    def start(self) -> None:
        from replicaio.runtime.local import LocalCluster

        if self.front == "auto":
            self.front = "resp" if self.resp_available() else "stream"
        if self.front == "resp" and not self.resp_available():
            raise Skip("the RESP front (replicaio.services.kv.resp, client_service 'resp') "
                       "is not in this tree yet")
        target = self.settings.connect
        self.driven = (f"this process, asyncio, one RESP connection per client, to the {target}"
                       if self.front == "resp" else
                       f"this process, asyncio, one stream connection to the {target} muxing "
                       "every client")
        sections: dict[str, dict[str, Any]] = {"host": {"fsync": True, **self.host_params}}
        if self.front == "resp":
            sections["host"]["client_service"] = "resp"
        if self.node_params:
            sections["node"] = dict(self.node_params)
        if self.protocol_params:
            sections["protocol.params"] = dict(self.protocol_params)
        directory = self.settings.workdir / re.sub(r"[^A-Za-z0-9_.=-]", "_", self.name)
        self.cluster = LocalCluster(directory, protocol=self.protocol, nodes=self.nodes,
                                    sections=sections, metrics=True, auth=self.auth)
        # No event log: LocalCluster records one per run; a benchmark node does not.
        for node_id in range(self.nodes):
            self.start_node(node_id)
        self.cluster.wait_ready(range(self.nodes), 30.0)
        wait_for(self.find_leader, 30.0, f"a replicaio {self.protocol} leader")
        log(f"{self.name}: leader is node {self.leader}, front {self.front}")
        if self.front == "stream":
            self.warm_stream()

    def start_node(self, node_id: int) -> None:
        cluster = self.cluster
        cluster.runs[node_id] += 1
        python = VARIANT_PYTHON.get(self.name, sys.executable)
        # -P: without it ``-m`` puts the working directory first on sys.path, and a
        # variant's interpreter run from a worktree's root imports that worktree's
        # package instead of its own (a 'base' variant measured the new code).
        command = [python, "-P", "-m", "replicaio.cli", "node", "--config",
                   str(cluster.config_path), "--id", str(node_id), "--log-level", "warning"]
        process = PROCESSES.start(command, cluster.stderr_log(node_id, cluster.runs[node_id]),
                                  stdin=subprocess.DEVNULL)
        cluster.processes[node_id] = process

    def metrics(self, node_id: int) -> dict[str, float]:
        address = self.cluster.cluster.nodes[node_id].metrics
        with urllib.request.urlopen(f"http://{address.host}:{address.port}/metrics",
                                    timeout=5) as page:
            text = page.read().decode()
        found: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("#") or " " not in line:
                continue
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                found[name] = float(value)
        return found

    def find_leader(self) -> bool:
        leaders = []
        for node_id in range(self.nodes):
            figures = self.metrics(node_id)
            won = figures.get('replicaio_core_events_total{event="raft_elections_won"}', 0)
            down = figures.get('replicaio_core_events_total{event="raft_leader_stepped_down"}', 0)
            if won - down >= 1:
                leaders.append(node_id)
        if len(leaders) == 1:
            self.leader = leaders[0]
            return True
        return False

    def warm_stream(self) -> None:
        async def probe() -> None:
            mux = StreamMux()
            await mux.open(self.client_port())
            try:
                await StreamKvClient(mux, 1).set(b"probe", b"x")
            finally:
                await mux.close()

        run_async(probe())

    def client_node(self) -> int:
        """The node the clients talk to: the leader, or with ``--connect follower``
        the first node that does not lead."""
        if self.settings.connect == "follower" and self.protocol == "raft":
            return next(node for node in range(self.nodes) if node != self.leader)
        return self.leader

    def client_port(self) -> int:
        return int(self.cluster.cluster.nodes[self.client_node()].client.port)

    def describe(self) -> dict[str, Any]:
        found = super().describe()
        if self.name in VARIANT_PYTHON:
            found["python"] = VARIANT_PYTHON[self.name]
        return found

    def server_pids(self) -> list[int]:
        return [process.pid for process in self.cluster.processes.values()]

    def leader_pid(self) -> int:
        return int(self.cluster.processes[self.leader].pid)

    def elections(self) -> int:
        total = 0
        for node_id in range(self.nodes):
            with contextlib.suppress(Exception):
                total += int(self.metrics(node_id).get(
                    'replicaio_core_events_total{event="raft_elections_won"}', 0))
        return total

    def cell(self, clients: int, workload: str, seed: int) -> CellResult:
        # Leadership can move under load (a starved follower times out): every cell
        # starts by asking the nodes who leads now, and counts the elections it saw.
        previous = self.leader
        wait_for(self.find_leader, 30.0, "a replicaio Raft leader")
        if self.leader != previous:
            log(f"{self.name}: the leader moved from node {previous} to node {self.leader}")
        elections = self.elections()
        result = self.run_cell(clients, workload, seed)
        moved = self.elections() - elections
        if moved:
            result.errors["elections during the cell"] = moved
        return result

    def run_cell(self, clients: int, workload: str, seed: int) -> CellResult:
        if self.front == "resp":
            return super().cell(clients, workload, seed)
        settings = self.settings
        self.cells += 1
        base = self.cells * 100_000  # fresh client ids every cell: sequence numbers restart

        async def run() -> CellResult:
            mux = StreamMux()
            await mux.open(self.client_port())

            async def connect(index: int) -> StreamKvClient:
                return StreamKvClient(mux, base + index + 1)

            try:
                result = await closed_loop(
                    connect, clients, workload, settings.warmup_s, settings.duration_s,
                    settings.keys, b"v" * settings.value_bytes, self.server_pids(), seed)
            finally:
                await mux.close()
            for reason, count in mux.errors.items():
                result.errors[f"retried: {reason}"] = count
            return result

        return run_async(run())  # type: ignore[no-any-return]

    async def connect(self, index: int) -> Any:
        return await RespClient.connect(self.client_port())

    def counters(self) -> dict[int, dict[str, float]]:
        """Core and host figures of every node (retransmissions, batches, syncs)."""
        keep = ("retransmissions", "steps_total", "batches_total", "syncs_total",
                "messages_out_total", "fsync_seconds_sum", "fsync_seconds_count",
                "step_batch_inputs_sum", "step_batch_inputs_count", "timers_stale",
                "raft_elections_won", "bound_", "read", "timeout", "busy", "rejected",
                "raft_snapshot", "raft_compactions", "presumed_lost")
        nodes = {}
        for node_id in range(self.nodes):
            with contextlib.suppress(Exception):
                figures = self.metrics(node_id)
                nodes[node_id] = {name: value for name, value in figures.items()
                                  if any(word in name for word in keep)}
        return nodes

    def stop(self) -> None:
        if self.cluster is None:
            return
        for node_id in list(self.cluster.processes):
            PROCESSES.stop(self.cluster.processes.pop(node_id))


class PbftSystem(ReplicaioSystem):
    """The same KV store on PBFT, n = 4 (f = 1), Ed25519 node and client keys,
    clients on the RESP port of view 0's primary (a replica's own port is the
    trusted shortcut, docs/pbft.md; the gateway adds a hop and f+1 voting)."""

    name = "replicaio-pbft"
    nodes = 4
    protocol = "pbft"
    auth = "ed25519"

    def __init__(self, settings: Settings, label: str = "replicaio-pbft") -> None:
        super().__init__(settings, label, {}, dict(settings.pbft_params))

    def find_leader(self) -> bool:
        # Backups relay to the primary (SMR forwarding), so any replica serves;
        # view 0's primary saves the relay hop while the view holds.
        self.leader = 0
        return True

    def elections(self) -> int:
        total = 0
        for node_id in range(self.nodes):
            with contextlib.suppress(Exception):
                total += int(self.metrics(node_id).get(
                    'replicaio_core_events_total{event="pbft_view_changes"}', 0))
        return total


class PbftGatewaySystem(PbftSystem):
    """PBFT n=4 reached the way a Redis client without trust in any one replica
    reaches it: RESP clients -> ``replicaio kv gateway`` (signs each command with
    its client key, sends it to the replicas, answers on f+1 matching replies)
    -> the replicas. The gateway's CPU is counted with the servers'."""

    name = "replicaio-pbft-gateway"
    gateway_args: tuple[str, ...] = ()

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, "replicaio-pbft-gateway")
        self.gateway: subprocess.Popen[Any] | None = None
        self.gateway_port = 0

    def start(self) -> None:
        super().start()
        self.gateway_port = free_ports(1)[0]
        command = [sys.executable, "-m", "replicaio.cli", "kv", "gateway", "--cluster",
                   str(self.cluster.config_path), "--port", str(self.gateway_port),
                   *self.gateway_args]
        self.gateway = PROCESSES.start(command, self.cluster.directory / "gateway.log",
                                       stdin=subprocess.DEVNULL)

        def listening() -> bool:
            assert self.gateway is not None
            if self.gateway.poll() is not None:
                raise Skip("the gateway exited: "
                           + (self.cluster.directory / "gateway.log").read_text()[-300:])
            with contextlib.suppress(OSError):
                socket.create_connection((LOOPBACK, self.gateway_port), 0.2).close()
                return True
            return False

        wait_for(listening, 30.0, "the PBFT gateway's port")
        self.driven = ("this process, asyncio, one RESP connection per client, to "
                       "`replicaio kv gateway` (f+1 matching replies)")

    def client_port(self) -> int:
        return self.gateway_port

    def server_pids(self) -> list[int]:
        gateway = [] if self.gateway is None else [self.gateway.pid]
        return super().server_pids() + gateway

    def stop(self) -> None:
        if self.gateway is not None:
            PROCESSES.stop(self.gateway)
            self.gateway = None
        super().stop()


class PbftGroupsSystem(PbftSystem):
    """The sharded store over PBFT groups (``txn-kv-pbft:groups=3``, n = 4),
    clients on node 0's RESP port (the trusted shortcut: MSET across groups is a
    transaction that node drives, signed as the node)."""

    name = "replicaio-pbft-groups"
    protocol = "txn-kv-pbft"

    def __init__(self, settings: Settings, label: str = "replicaio-pbft-groups") -> None:
        ReplicaioSystem.__init__(self, settings, label, {}, {"groups": SHARDED_GROUPS})


class PbftGroupsGatewaySystem(PbftGatewaySystem):
    """The same sharded store through ``replicaio kv gateway``: single-group
    commands voted f+1 per group, MSET across groups an attempt the gateway signs
    and every node drives, accepted on f+1 matching outcomes."""

    name = "replicaio-pbft-groups-gateway"
    protocol = "txn-kv-pbft"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.name = "replicaio-pbft-groups-gateway"
        self.protocol_params = {"groups": SHARDED_GROUPS}


class PbftGroupsGatewayWaveSystem(PbftGroupsGatewaySystem):
    """The same, the gateway sending each attempt across groups to f+1 nodes first
    (the others once those cannot settle it, or after 500 ms:
    ``--txn-first-wave-ms 500``)."""

    name = "replicaio-pbft-groups-gateway-wave"
    gateway_args = ("--txn-first-wave-ms", "500")

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.name = "replicaio-pbft-groups-gateway-wave"


class MinbftSystem(PbftSystem):
    """The same KV store on MinBFT, n = 3 (f = 1: the USIG's hybrid model), clients
    on the RESP port of view 0's primary. Live, the USIG is software with a per-node
    Ed25519 key ([usig] in the cluster file, docs/minbft.md)."""

    name = "replicaio-minbft"
    nodes = 3
    protocol = "minbft"

    def __init__(self, settings: Settings) -> None:
        ReplicaioSystem.__init__(self, settings, "replicaio-minbft", {}, {})

    def elections(self) -> int:
        total = 0
        for node_id in range(self.nodes):
            with contextlib.suppress(Exception):
                total += int(self.metrics(node_id).get(
                    'replicaio_core_events_total{event="minbft_view_changes"}', 0))
        return total


class MinbftGroupsSystem(MinbftSystem):
    """The sharded store over MinBFT groups (``txn-kv-minbft:groups=3``, n = 3,
    f = 1), clients on node 0's RESP port (the trusted shortcut: MSET across
    groups is a transaction that node drives, vouched as the node)."""

    name = "replicaio-minbft-groups"
    protocol = "txn-kv-minbft"

    def __init__(self, settings: Settings) -> None:
        ReplicaioSystem.__init__(self, settings, "replicaio-minbft-groups", {},
                                 {"groups": SHARDED_GROUPS})


class MinbftGroupsGatewaySystem(PbftGroupsGatewaySystem):
    """The same sharded MinBFT store through ``replicaio kv gateway``: f+1 = 2
    matching replies of the 3 replicas per single-group command, MSET across
    groups an attempt the gateway signs and every node drives."""

    name = "replicaio-minbft-groups-gateway"
    nodes = 3
    protocol = "txn-kv-minbft"
    elections = MinbftSystem.elections

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.name = "replicaio-minbft-groups-gateway"


def resp_answers_ping(port: int) -> bool:
    """Whether the RESP server on ``port`` answers ``PING`` with ``PONG``."""

    async def ping() -> bool:
        client = await RespClient.connect(port)
        try:
            return bool(await client.command(b"PING") == b"PONG")
        finally:
            await client.close()

    return bool(run_async(ping()))


class ProcessesSystem(System):
    """A system of server processes this script started (``processes``), stopped
    together."""

    processes: list[subprocess.Popen[Any]]

    def server_pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def stop(self) -> None:
        for process in self.processes:
            PROCESSES.stop(process)
        self.processes = []


class RedisSystem(System):
    name = "redis"
    durability = "appendonly yes, appendfsync always (fsync before every reply)"
    driven = "this process, asyncio, one RESP connection per client"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.process: subprocess.Popen[Any] | None = None
        self.port = 0

    def start(self) -> None:
        ensure_apt("redis-server", "redis-server", self.settings.install)
        directory = self.settings.workdir / "redis"
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_ports(1)[0]
        self.process = PROCESSES.start(
            ["redis-server", "--port", str(self.port), "--bind", LOOPBACK, "--appendonly", "yes",
             "--appendfsync", "always", "--save", "", "--dir", str(directory),
             "--daemonize", "no", "--protected-mode", "no", "--loglevel", "warning"],
            directory / "redis.log", stdin=subprocess.DEVNULL)

        wait_for(lambda: resp_answers_ping(self.port), 20.0, "redis-server")

    async def connect(self, index: int) -> Any:
        return await RespClient.connect(self.port)

    def server_pids(self) -> list[int]:
        return [self.process.pid] if self.process is not None else []

    def stop(self) -> None:
        if self.process is not None:
            PROCESSES.stop(self.process)


class EtcdSystem(ProcessesSystem):
    name = "etcd"
    nodes = 3
    durability = "fsync of the WAL before every commit (etcd default)"
    driven = ("this process, asyncio, one HTTP/1.1 keep-alive connection per client to the "
              "leader's v3 JSON gateway")

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.processes: list[subprocess.Popen[Any]] = []
        self.client_ports: list[int] = []
        self.leader_port = 0
        self.version = ""

    def start(self) -> None:
        ensure_apt("etcd", "etcd-server", self.settings.install)
        self.version = subprocess.run(["etcd", "--version"], capture_output=True, text=True,
                                      check=False, timeout=20).stdout.splitlines()[0]
        members = self.nodes
        ports = free_ports(2 * members)
        peer_ports, self.client_ports = ports[:members], ports[members:]
        initial = ",".join(f"m{i}=http://{LOOPBACK}:{peer_ports[i]}" for i in range(members))
        for i in range(members):
            directory = self.settings.workdir / "etcd" / f"m{i}"
            directory.mkdir(parents=True, exist_ok=True)
            command = [
                "etcd", "--name", f"m{i}", "--data-dir", str(directory / "data"),
                "--listen-peer-urls", f"http://{LOOPBACK}:{peer_ports[i]}",
                "--initial-advertise-peer-urls", f"http://{LOOPBACK}:{peer_ports[i]}",
                "--listen-client-urls", f"http://{LOOPBACK}:{self.client_ports[i]}",
                "--advertise-client-urls", f"http://{LOOPBACK}:{self.client_ports[i]}",
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", "bench-kv", "--logger", "zap", "--log-level", "warn",
            ]
            self.processes.append(PROCESSES.start(command, directory / "etcd.log",
                                                  stdin=subprocess.DEVNULL))
        wait_for(self.find_leader, 30.0, "an etcd leader")
        log(f"etcd: {self.version}, leader on client port {self.leader_port}")

    def post(self, port: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(f"http://{LOOPBACK}:{port}{path}",
                                         data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=5) as page:
            answer: dict[str, Any] = json.loads(page.read())
        return answer

    def find_leader(self) -> bool:
        for port in self.client_ports:
            status = self.post(port, "/v3/maintenance/status", {})
            if status.get("leader") and status["header"]["member_id"] == status["leader"]:
                self.leader_port = port
                self.post(port, "/v3/kv/put", {"key": "cHJvYmU=", "value": "eA=="})
                return True
        return False

    async def connect(self, index: int) -> Any:
        return await EtcdClient.connect(self.leader_port)


class PySyncObjSystem(System):
    name = "pysyncobj"
    nodes = 3
    driven = ("inside the leader's process: C replicated calls in flight, each completion "
              "callback submits the next; GET is a replicated call")

    def __init__(self, settings: Settings, journal: bool = True) -> None:
        super().__init__(settings)
        self.journal = journal
        self.name = "pysyncobj" if journal else "pysyncobj-memory"
        self.durability = ("journal file on (mmap FileJournal; never fsync'ed on the write "
                           "path)" if journal else "in memory")
        self.processes: list[subprocess.Popen[Any]] = []
        self.leader: subprocess.Popen[Any] | None = None
        self.version = ""

    def start(self) -> None:
        python = ensure_anchors_venv(self.settings.install)
        self.version = subprocess.run(
            [str(python), "-c", "import pysyncobj.version as v; print(v.VERSION)"],
            capture_output=True, text=True, check=False, timeout=30).stdout.strip()
        ports = free_ports(self.nodes)
        addresses = [f"{LOOPBACK}:{port}" for port in ports]
        for i in range(self.nodes):
            directory = self.settings.workdir / self.name / f"n{i}"
            directory.mkdir(parents=True, exist_ok=True)
            command = [str(python), str(PYSYNCOBJ_NODE), "--self", addresses[i], "--partners",
                       ",".join(address for j, address in enumerate(addresses) if j != i)]
            if self.journal:
                command += ["--journal", str(directory / "journal.bin"),
                            "--dump", str(directory / "dump.bin")]
            with open(directory / "node.log", "ab") as errors:
                process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           stderr=errors, text=True, bufsize=1)
            PROCESSES.track(process)
            self.processes.append(process)
            self.read(process, 30.0)  # {"started": ...}
        wait_for(self.find_leader, 30.0, "a PySyncObj leader")
        log(f"{self.name}: pysyncobj {self.version}, leader pid {self.leader.pid}")  # type: ignore[union-attr]

    def ask(self, process: subprocess.Popen[Any], request: dict[str, Any],
            timeout_s: float) -> dict[str, Any]:
        assert process.stdin is not None
        process.stdin.write(json.dumps(request) + "\n")
        process.stdin.flush()
        return self.read(process, timeout_s)

    @staticmethod
    def read(process: subprocess.Popen[Any], timeout_s: float) -> dict[str, Any]:
        import selectors

        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout_s):
                raise Skip(f"pysyncobj node {process.pid} did not answer in {timeout_s:.0f} s")
        line = process.stdout.readline()
        if not line:
            raise Skip(f"pysyncobj node {process.pid} exited")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def find_leader(self) -> bool:
        for process in self.processes:
            status = self.ask(process, {"cmd": "status"}, 10.0)
            if status["leader"] and status["has_quorum"]:
                self.leader = process
                return True
        return False

    def cell(self, clients: int, workload: str, seed: int) -> CellResult:
        assert self.leader is not None
        settings = self.settings
        pids = self.server_pids()
        cpu0 = cpu_seconds(pids)
        answer = self.ask(self.leader, {
            "cmd": "run", "clients": clients, "warmup_s": settings.warmup_s,
            "duration_s": settings.duration_s, "workload": workload, "keys": settings.keys,
            "value_bytes": settings.value_bytes, "seed": seed,
        }, settings.warmup_s + settings.duration_s + 60.0)
        total_cpu = cpu_seconds(pids) - cpu0
        window = settings.duration_s / (settings.warmup_s + settings.duration_s)
        result = CellResult([latency / 1e6 for latency in answer["latencies_us"]])
        if answer["errors"]:
            result.errors["failed"] = answer["errors"]
        if answer["unfinished"]:
            result.errors["unfinished"] = answer["unfinished"]
        # The load runs inside the leader: all CPU is the servers'; the warm-up share is
        # estimated pro rata.
        result.server_cpu_s = total_cpu * window
        return result

    def server_pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def stop(self) -> None:
        for process in self.processes:
            with contextlib.suppress(Exception):
                assert process.stdin is not None
                process.stdin.write('{"cmd": "quit"}\n')
                process.stdin.flush()
        for process in self.processes:
            PROCESSES.stop(process)
        self.processes = []


class FloorSystem(ProcessesSystem):
    """``bench/kv_floor_node.py``: the thinnest Python replicated KV with replicaio's
    shape (its docstring says what it does and leaves out), as a floor beside
    replicaio at the same client count. Three nodes, node 0 leads (fixed)."""

    nodes = 3
    driven = "this process, asyncio, one RESP connection per client"

    def __init__(self, settings: Settings, flushes: int, ballast: int = 0) -> None:
        super().__init__(settings)
        self.flushes = flushes
        self.ballast = ballast
        self.name = ("floor" if flushes == 2 else "floor-1flush") + (
            f"+ballast{ballast}" if ballast else "")
        self.durability = (
            "fdatasync per batch; a lone batch's mark gets a second (replicaio's default)"
            if flushes == 2 else "fdatasync per batch (etcd's guarantee)")
        self.processes: list[subprocess.Popen[Any]] = []
        self.port = 0
        self.loop_name = ""

    def start(self) -> None:
        client_port, *peer_ports = free_ports(3)
        self.port = client_port
        for node in (1, 2, 0):
            directory = self.settings.workdir / self.name / f"n{node}"
            directory.mkdir(parents=True, exist_ok=True)
            command = [sys.executable, "-P", str(FLOOR_NODE), "--id", str(node), "--dir",
                       str(directory), "--flushes", str(self.flushes), "--ballast",
                       str(self.ballast)]
            command += (["--client-port", str(client_port), "--peers",
                         ",".join(map(str, peer_ports))] if node == 0
                        else ["--listen", str(peer_ports[node - 1])])
            with open(directory / "node.log", "ab") as errors:
                process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                           stdout=subprocess.PIPE, stderr=errors, text=True)
            PROCESSES.track(process)
            self.processes.append(process)
            ready = PySyncObjSystem.read(process, 30.0)
            self.loop_name = str(ready.get("loop", "?"))

        wait_for(lambda: resp_answers_ping(self.port), 20.0, self.name)
        log(f"{self.name}: loop {self.loop_name}")

    async def connect(self, index: int) -> Any:
        return await RespClient.connect(self.port)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "loop": self.loop_name}


# -- installing the anchors ---------------------------------------------------------------------


APT_UPDATED = [False]


def ensure_apt(binary: str, package: str, install: bool) -> None:
    if shutil.which(binary):
        return
    if not install:
        raise Skip(f"{binary} is not installed (Debian package {package}; run without "
                   "--no-install to let this script install it)")
    if os.geteuid() != 0:
        raise Skip(f"{binary} is not installed and installing {package} needs root")
    log(f"installing Debian package {package}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        if not APT_UPDATED[0]:
            subprocess.run(["apt-get", "update", "-q"], check=True, env=env, timeout=600,
                           capture_output=True)
            APT_UPDATED[0] = True
        subprocess.run(["apt-get", "install", "-y", "-q", package], check=True, env=env,
                       timeout=900, capture_output=True)
    except (subprocess.SubprocessError, OSError) as error:
        raise Skip(f"cannot install {package}: {error}") from None
    if not shutil.which(binary):
        raise Skip(f"{package} installed but {binary} is not on PATH")


def ensure_anchors_venv(install: bool) -> Path:
    """``bench/.venv-anchors`` with PySyncObj and py-spy (never the project's venv)."""
    python = ANCHORS_VENV / "bin" / "python"
    if python.exists():
        check = subprocess.run([str(python), "-c", "import pysyncobj"], capture_output=True,
                               check=False, timeout=60)
        if check.returncode == 0:
            return python
    if not install:
        raise Skip(f"{ANCHORS_VENV} has no pysyncobj (run without --no-install)")
    base = shutil.which("python3") or sys.executable
    log(f"creating {ANCHORS_VENV} with pysyncobj and py-spy")
    try:
        if not python.exists():
            subprocess.run([base, "-m", "venv", str(ANCHORS_VENV)], check=True, timeout=300,
                           capture_output=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "pysyncobj", "py-spy"],
                       check=True, timeout=900, capture_output=True)
    except (subprocess.SubprocessError, OSError) as error:
        raise Skip(f"cannot create the anchors venv with pysyncobj: {error}") from None
    return python


# -- redis-benchmark ----------------------------------------------------------------------------


def redis_benchmark(port: int, requests: int, clients: int, keys: int,
                    value_bytes: int, timeout_s: float, pipeline: int = 1) -> dict[str, Any]:
    """``redis-benchmark -t set,get`` against ``port`` (``-P pipeline`` commands in
    flight per client when above 1): rows by test, or the reason it failed."""
    command = ["redis-benchmark", "-h", LOOPBACK, "-p", str(port), "-t", "set,get",
               "-n", str(requests), "-c", str(clients), "-d", str(value_bytes),
               "-r", str(keys), "--csv"]
    if pipeline > 1:
        command[-1:-1] = ["-P", str(pipeline)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                              check=False)
    except subprocess.TimeoutExpired:
        return {"command": " ".join(command), "error": f"timed out after {timeout_s:.0f} s"}
    rows: dict[str, Any] = {}
    for line in done.stdout.splitlines():
        cells = [cell.strip('"') for cell in line.split(",")]
        if len(cells) >= 7 and cells[0] in ("SET", "GET"):
            rows[cells[0]] = {"ops_per_s": float(cells[1]), "p50_ms": float(cells[4]),
                              "p99_ms": float(cells[6])}
    answer: dict[str, Any] = {"command": " ".join(command), "rows": rows}
    if done.returncode != 0 or not rows:
        answer["error"] = (done.stderr or done.stdout).strip()[-300:] or f"exit {done.returncode}"
    return answer


# -- profiling ----------------------------------------------------------------------------------


def profile_leader(system: ReplicaioSystem, seconds: float, clients: int, workload: str,
                   output: Path, install: bool) -> dict[str, Any]:
    """py-spy on the replicaio leader while a closed loop runs: self and inclusive
    time of the top functions, counting only samples of a thread holding the GIL
    (``--gil``: Python work, not waits; the fsync worker thread releases it)."""
    try:
        python = ensure_anchors_venv(install)
    except Skip as reason:
        return {"error": str(reason)}
    pyspy = python.parent / "py-spy"
    if not pyspy.exists():
        return {"error": f"{pyspy} is missing"}
    raw = output.with_suffix(".collapsed")
    wait_for(system.find_leader, 30.0, "a replicaio Raft leader")
    command = [str(pyspy), "record", "--pid", str(system.leader_pid()), "--duration",
               str(int(seconds)), "--rate", "200", "--format", "raw", "--output", str(raw),
               "--nonblocking", "--gil"]
    spy = PROCESSES.start(command, output.with_suffix(".pyspy.log"))
    time.sleep(1.0)
    saved = system.settings.warmup_s, system.settings.duration_s
    system.settings.warmup_s, system.settings.duration_s = 0.5, seconds
    try:
        cell = system.run_cell(clients, workload, 99)
    finally:
        system.settings.warmup_s, system.settings.duration_s = saved
    with contextlib.suppress(subprocess.TimeoutExpired):
        spy.wait(30)
    PROCESSES.stop(spy)
    if not raw.exists():
        return {"error": output.with_suffix(".pyspy.log").read_text()[-500:]}
    return {"clients": clients, "workload": workload, "seconds": seconds,
            "cell": summarize(cell.latencies_s, seconds), **summarize_collapsed(raw)}


def summarize_collapsed(path: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    by_file: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = [re.sub(r" \((.*/)?([^/]+):\d+\)$", r" (\2)", frame)
                  for frame in stack.split(";")[1:]]  # drop the process/thread frame
        if not frames:
            continue
        own[frames[-1]] = own.get(frames[-1], 0) + count
        where = re.search(r"\(([^)]*)\)$", frames[-1])
        module = where.group(1) if where else "?"
        by_file[module] = by_file.get(module, 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count

    def share(table: dict[str, int]) -> list[tuple[str, float]]:
        ranked = sorted(table.items(), key=lambda item: -item[1])[:top]
        return [(name, round(100 * count / total, 1)) for name, count in ranked]

    return {"samples": total, "self_pct": share(own), "inclusive_pct": share(inclusive),
            "self_by_file_pct": share(by_file)}


# -- conditions ---------------------------------------------------------------------------------


def fsync_probe(directory: Path, rounds: int = 200) -> dict[str, float]:
    """The disk under the data directories: p50/p99 of a 4 KiB append + fdatasync."""
    path = directory / "fsync-probe"
    samples = []
    with open(path, "ab") as handle:
        for _ in range(rounds):
            handle.write(b"x" * 4096)
            handle.flush()
            begun = time.perf_counter()
            os.fdatasync(handle.fileno())
            samples.append(time.perf_counter() - begun)
    path.unlink()
    samples.sort()
    return {"p50_ms": round(percentile(samples, 0.5) * 1e3, 3),
            "p99_ms": round(percentile(samples, 0.99) * 1e3, 3)}


def conditions(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    return {
        "machine": f"{os.cpu_count()} cores ({cpu}), shared with other work",
        "load_average_at_start": [round(value, 2) for value in os.getloadavg()],
        "python": platform.python_version(),
        "event_loop": loop,
        "nodes": f"{args.nodes} (replicaio, pysyncobj, etcd), 1 (redis)",
        "clients": args.clients,
        "workloads": {name: WORKLOADS[name] for name in args.workloads.split(",") if name},
        "value_bytes": args.value_bytes,
        "keys": args.keys,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "repeat": args.repeat,
        "disk_fdatasync_4k": fsync_probe(workdir),
        "replicaio_node_params": args.node_params or "defaults",
        "replicaio_protocol_params": args.protocol_params or "defaults",
        "replicaio_clients_connect_to": args.connect,
    }


# -- the run ------------------------------------------------------------------------------------


def parse_params(text: str) -> dict[str, int]:
    params = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        params[name.strip()] = int(value)
    return params


def measure_cell(system: System, clients: int, workload: str, seed: int) -> dict[str, Any]:
    cell = system.cell(clients, workload, seed)
    summary = summarize(cell.latencies_s, system.settings.duration_s)
    for kind, latencies in sorted(cell.by_kind.items()):
        latencies.sort()
        summary[f"{kind}_ops"] = len(latencies)
        summary[f"{kind}_p50_ms"] = round(percentile(latencies, 0.50) * 1e3, 3)
        summary[f"{kind}_p99_ms"] = round(percentile(latencies, 0.99) * 1e3, 3)
    summary.update(
        errors=cell.errors,
        loadgen_cpu_s=round(cell.loadgen_cpu_s, 2),
        server_cpu_s=round(cell.server_cpu_s, 2),
        server_cpu_ms_per_kop=(round(cell.server_cpu_s * 1e6 / summary["ops"], 1)
                               if summary["ops"] else None),
        load_average=round(os.getloadavg()[0], 2),
    )
    kinds = "".join(f" {kind.upper()} p50 {summary[f'{kind}_p50_ms']} p99 "
                    f"{summary[f'{kind}_p99_ms']} ms" for kind in sorted(cell.by_kind))
    log(f"{system.name} {workload} c={clients}: {summary['ops_per_s']:.0f} ops/s "
        f"p50 {summary['p50_ms']} ms p99 {summary['p99_ms']} ms{kinds} errors {cell.errors or 0} "
        f"server cpu {summary['server_cpu_s']} s loadgen cpu {summary['loadgen_cpu_s']} s "
        f"load {summary['load_average']}")
    return summary


def median_row(system: str, workload: str, clients: int,
               runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput (its latencies with it), and every run's figure.

    ``runs`` has an odd length (``--repeat`` is checked), so the median is one real run.
    """
    assert len(runs) % 2 == 1, len(runs)
    ranked = sorted(runs, key=lambda run: run["ops_per_s"])
    median = dict(ranked[(len(ranked) - 1) // 2])
    median["runs_ops_per_s"] = [run["ops_per_s"] for run in runs]
    median["runs_p99_ms"] = [run["p99_ms"] for run in runs]
    return {"system": system, "workload": workload, "clients": clients, **median}


def ratios(rows: list[dict[str, Any]], baseline: str) -> list[dict[str, Any]]:
    """replicaio/anchor per (workload, clients): throughput and latency ratios."""
    by_key = {(row["system"], row["workload"], row["clients"]): row for row in rows}
    found = []
    anchors = sorted({row["system"] for row in rows
                      if row["system"] != baseline and not row["system"].startswith(baseline)})
    for (system, workload, clients), ours in by_key.items():
        if system != baseline:
            continue
        for anchor in anchors:
            theirs = by_key.get((anchor, workload, clients))
            if theirs is None or not theirs["ops_per_s"] or not ours["ops_per_s"]:
                continue
            found.append({
                "workload": workload, "clients": clients, "anchor": anchor,
                "throughput": round(ours["ops_per_s"] / theirs["ops_per_s"], 2),
                "p50": round(ours["p50_ms"] / theirs["p50_ms"], 2),
                "p99": round(ours["p99_ms"] / theirs["p99_ms"], 2),
            })
    return found


def bft_vs_raft(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each BFT cluster against Raft (``replicaio``) per (workload, clients):
    throughput ratio and server CPU per operation ratio."""
    by_key = {(row["system"], row["workload"], row["clients"]): row for row in rows}
    found = []
    for (system, workload, clients), row in sorted(by_key.items()):
        raft = by_key.get(("replicaio", workload, clients))
        if system == "replicaio" or raft is None or not raft["ops_per_s"]:
            continue
        cpu, raft_cpu = row.get("server_cpu_ms_per_kop"), raft.get("server_cpu_ms_per_kop")
        found.append({
            "system": system, "workload": workload, "clients": clients,
            "throughput": round(row["ops_per_s"] / raft["ops_per_s"], 2),
            "cpu_per_op": round(cpu / raft_cpu, 2) if cpu and raft_cpu else None,
        })
    return found


def print_report(report: dict[str, Any]) -> None:
    print("Conditions")
    for key, value in report["conditions"].items():
        print(f"  {key}: {value}")
    print("Systems")
    for name, info in report["systems"].items():
        print(f"  {name}: {info}")
    print()
    print(f"{'system':<24}{'workload':<8}{'clients':>8}{'ops/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'srv cpu ms/kop':>16}  every run's ops/s  errors")
    for row in sorted(report["rows"], key=lambda r: (r["system"], r["workload"], r["clients"])):
        print(f"{row['system']:<24}{row['workload']:<8}{row['clients']:>8}"
              f"{row['ops_per_s']:>10.0f}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}"
              f"{row['server_cpu_ms_per_kop'] or 0:>16.1f}  "
              f"{'/'.join(f'{run:.0f}' for run in row['runs_ops_per_s'])}  {row['errors'] or ''}")
    split = [row for row in report["rows"] if "get_p50_ms" in row]
    if split:
        print()
        print("the same runs by kind of request (latencies in ms)")
        print(f"{'system':<24}{'workload':<8}{'clients':>8}{'GET p50':>9}{'GET p99':>9}"
              f"{'SET p50':>9}{'SET p99':>9}{'GETs':>8}{'SETs':>8}")
        for row in sorted(split, key=lambda r: (r["system"], r["workload"], r["clients"])):
            print(f"{row['system']:<24}{row['workload']:<8}{row['clients']:>8}"
                  f"{row['get_p50_ms']:>9.2f}{row['get_p99_ms']:>9.2f}"
                  f"{row['set_p50_ms']:>9.2f}{row['set_p99_ms']:>9.2f}"
                  f"{row['get_ops']:>8}{row['set_ops']:>8}")
    if report["ratios"]:
        print()
        print("replicaio / anchor (throughput: >1 is better for replicaio; latency: <1 is better)")
        print(f"{'anchor':<18}{'workload':<8}{'clients':>8}{'thr':>8}{'p50':>8}{'p99':>8}")
        for ratio in sorted(report["ratios"], key=lambda r: (r["anchor"], r["workload"],
                                                              r["clients"])):
            print(f"{ratio['anchor']:<18}{ratio['workload']:<8}{ratio['clients']:>8}"
                  f"{ratio['throughput']:>8.2f}{ratio['p50']:>8.2f}{ratio['p99']:>8.2f}")
    if report.get("bft_vs_raft"):
        print()
        print("BFT cluster / Raft n=3 (throughput: >1 is better for the BFT cluster; "
              "server CPU per operation: <1 is better)")
        print(f"{'system':<24}{'workload':<8}{'clients':>8}{'thr':>8}{'cpu/op':>8}")
        for ratio in report["bft_vs_raft"]:
            cpu = "" if ratio["cpu_per_op"] is None else f"{ratio['cpu_per_op']:.2f}"
            print(f"{ratio['system']:<24}{ratio['workload']:<8}{ratio['clients']:>8}"
                  f"{ratio['throughput']:>8.2f}{cpu:>8}")
    for target, result in report.get("redis_benchmark", {}).items():
        print()
        print(f"redis-benchmark against {target}: {result.get('command', '')}")
        if "error" in result:
            print(f"  error: {result['error']}")
        for test, row in result.get("rows", {}).items():
            print(f"  {test}: {row['ops_per_s']:.0f} ops/s p50 {row['p50_ms']} ms "
                  f"p99 {row['p99_ms']} ms")
    if report.get("profile"):
        profile = report["profile"]
        print()
        if "error" in profile:
            print(f"profile: {profile['error']}")
        else:
            print(f"profile of the replicaio leader ({profile['samples']} samples, "
                  f"{profile['workload']} c={profile['clients']}: {profile['cell']})")
            print("  self time:")
            for name, pct in profile["self_pct"]:
                print(f"    {pct:5.1f}%  {name}")
            print("  self time by file:")
            for name, pct in profile["self_by_file_pct"]:
                print(f"    {pct:5.1f}%  {name}")
            print("  inclusive time:")
            for name, pct in profile["inclusive_pct"]:
                print(f"    {pct:5.1f}%  {name}")
    for name, reason in report["skipped"].items():
        print(f"skipped {name}: {reason}")


def print_markdown(report: dict[str, Any]) -> None:
    """The figure and ratio tables of a saved ``--json`` report, as Markdown."""
    rows = {(row["system"], row["workload"], row["clients"]): row for row in report["rows"]}
    systems = list(dict.fromkeys(row["system"] for row in report["rows"]))
    titles = {"set": "100% SET", "mixed": "50/50 GET/SET", "get": "100% GET",
              "mset": "100% MSET of two keys"}
    for workload, title in titles.items():
        clients = sorted({c for (_, w, c) in rows if w == workload})
        if not clients:
            continue
        print(f"\n{title}: ops/s, p50 / p99 ms (server CPU ms per 1000 ops)\n")
        print("| system | " + " | ".join(f"{c} clients" for c in clients) + " |")
        print("| --- |" + " --- |" * len(clients))
        for system in systems:
            cells = []
            for c in clients:
                row = rows.get((system, workload, c))
                cells.append("" if row is None else
                             f"{row['ops_per_s']:.0f}, {row['p50_ms']:.1f} / {row['p99_ms']:.1f}"
                             f" ({row['server_cpu_ms_per_kop'] or 0:.0f})")
            print(f"| {system} | " + " | ".join(cells) + " |")
    split = [row for row in report["rows"] if "get_p50_ms" in row]
    if split:
        print("\nThe same runs by kind of request: GET p50 / p99, SET p50 / p99 (ms)\n")
        print("| system | workload | clients | GET | SET |")
        print("| --- | --- | --- | --- | --- |")
        for row in split:
            print(f"| {row['system']} | {row['workload']} | {row['clients']} "
                  f"| {row['get_p50_ms']:.2f} / {row['get_p99_ms']:.2f} "
                  f"| {row['set_p50_ms']:.2f} / {row['set_p99_ms']:.2f} |")
    found = report.get("ratios", [])
    if found:
        print("\nreplicaio / anchor: throughput (p50, p99)\n")
        keys = sorted({(r["workload"], r["clients"]) for r in found},
                      key=lambda k: (k[0] != "set", k[1]))
        anchors = sorted({r["anchor"] for r in found})
        print("| workload, clients | " + " | ".join(anchors) + " |")
        print("| --- |" + " --- |" * len(anchors))
        by = {(r["anchor"], r["workload"], r["clients"]): r for r in found}
        for workload, c in keys:
            cells = []
            for anchor in anchors:
                r = by.get((anchor, workload, c))
                cells.append("" if r is None else
                             f"**{r['throughput']:.2f}** ({r['p50']:.2f}, {r['p99']:.2f})")
            print(f"| {workload}, {c} | " + " | ".join(cells) + " |")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help="comma-separated subset of " + ",".join(SYSTEMS))
    parser.add_argument("--clients", default="1,16,64,128,256")
    parser.add_argument("--workloads", default="set,mixed",
                        help="comma-separated: " + "; ".join(
                            f"{name}: {text}" for name, text in WORKLOADS.items()
                        ).replace("%", "%%"))  # argparse formats help with %
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per cell, odd (the median run is kept, every run shown)")
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=3,
                        help="cluster size of replicaio (Raft), etcd and PySyncObj")
    parser.add_argument("--connect", choices=("leader", "follower"), default="leader",
                        help="the Raft node replicaio's clients talk to (follower: writes "
                             "relayed to the leader; etcd's and PySyncObj's clients are not moved)")
    parser.add_argument("--front", choices=("auto", "resp", "stream"), default="auto",
                        help="replicaio client front (auto: resp when registered)")
    parser.add_argument("--node-params", default="",
                        help="replicaio [node] overrides, e.g. tick_us=5000,"
                             "retransmit_after_ticks=10")
    parser.add_argument("--protocol-params", default="",
                        help="replicaio [protocol.params], e.g. snapshot=64,batch=128")
    parser.add_argument("--pbft-params", default="",
                        help="[protocol.params] of the PBFT clusters, e.g. replica_macs=1")
    parser.add_argument("--gateway-clients", default="16",
                        help="client counts for replicaio-pbft-gateway")
    parser.add_argument("--floor-ballast", default="",
                        help="with the system floor: also the floor with N distinct small "
                             "functions run at each per-batch point (comma-separated Ns; "
                             "bench/kv_floor_node.py --ballast)")
    parser.add_argument("--variant", action="append", default=[],
                        help="another replicaio cluster measured alongside, e.g. "
                             "'fast-tick:node.tick_us=5000', 'snap64:protocol.snapshot=64' or "
                             "'batch64:host.batch_inputs_max=64' (repeatable)")
    parser.add_argument("--pysyncobj-memory", default="16,128",
                        help="clients for the in-memory PySyncObj variant ('' to skip)")
    parser.add_argument("--redis-benchmark", default="10000:1,20000:50",
                        help="N:C pairs for redis-benchmark, or N:C:P with -P P commands "
                             "pipelined per client ('' to skip)")
    parser.add_argument("--profile", type=float, default=0.0,
                        help="py-spy the replicaio leader for this many seconds (0: no)")
    parser.add_argument("--profile-clients", type=int, default=64)
    parser.add_argument("--idle-seconds", type=float, default=2.0,
                        help="measure each system's idle CPU for this long (0: skip)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-install", action="store_true",
                        help="skip anchors that are not installed instead of installing them")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--markdown", metavar="REPORT_JSON", default=None,
                        help="print the tables of a saved --json report as Markdown and exit")
    args = parser.parse_args(argv)
    if args.markdown:
        print_markdown(json.loads(Path(args.markdown).read_text()))
        return 0
    if args.repeat < 1 or args.repeat % 2 == 0:
        parser.error(f"--repeat must be odd (the median run is kept), got {args.repeat}")
    args.clients = [int(value) for value in args.clients.split(",") if value]
    workloads = [value for value in args.workloads.split(",") if value]
    if set(workloads) - set(WORKLOADS):
        parser.error(f"unknown workloads {sorted(set(workloads) - set(WORKLOADS))}")
    systems = [value for value in args.systems.split(",") if value]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}")

    workdir = Path(tempfile.mkdtemp(prefix="bench-kv-"))
    atexit.register(PROCESSES.stop_all)

    def on_signal(number: int, _frame: Any) -> None:
        PROCESSES.stop_all()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        raise SystemExit(128 + number)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for system_type in (ReplicaioSystem, EtcdSystem, PySyncObjSystem):
        system_type.nodes = args.nodes
    settings = Settings(workdir, args.warmup, args.duration, args.keys, args.value_bytes,
                        args.front, parse_params(args.node_params),
                        parse_params(args.protocol_params), not args.no_install,
                        parse_params(args.pbft_params), args.connect)
    report: dict[str, Any] = {"conditions": conditions(args, workdir), "systems": {},
                              "rows": [], "skipped": {}, "redis_benchmark": {}}
    redis_pairs = [tuple(int(x) for x in pair.split(":"))
                   for pair in args.redis_benchmark.split(",") if pair]

    def bench_redis_benchmark(target: str, port: int) -> None:
        if not redis_pairs:
            return
        try:
            ensure_apt("redis-benchmark", "redis-tools", settings.install)
        except Skip as reason:
            report["skipped"][f"redis-benchmark against {target}"] = str(reason)
            return
        for requests, clients, *pipeline in redis_pairs:
            depth = pipeline[0] if pipeline else 1
            key = f"{target} c={clients}" + (f" P={depth}" if depth > 1 else "")
            report["redis_benchmark"][key] = redis_benchmark(
                port, requests, clients, args.keys, args.value_bytes, 120.0, depth)

    # Every system runs at once and the cells are interleaved (round r: every workload,
    # every client count, every system in turn), so the systems share the machine's noise
    # instead of each getting its own quarter of an hour of it. Idle systems cost little:
    # their idle CPU is measured and reported.
    plan: list[tuple[System, list[int], list[str]]] = []
    for name in systems:
        if name == "replicaio":
            plan.append((ReplicaioSystem(settings), args.clients, workloads))
            for variant in args.variant:
                label, node, protocol, host = parse_variant(variant)
                plan.append((ReplicaioSystem(settings, label, node, protocol, host),
                             args.clients, workloads))
        elif name == "replicaio-pbft":
            plan.append((PbftSystem(settings), args.clients, workloads))
        elif name == "replicaio-pbft-gateway":
            plan.append((PbftGatewaySystem(settings),
                         [int(c) for c in args.gateway_clients.split(",") if c], workloads))
        elif name == "replicaio-minbft":
            plan.append((MinbftSystem(settings), args.clients, workloads))
        elif name == "replicaio-pbft-groups":
            plan.append((PbftGroupsSystem(settings), args.clients, workloads))
        elif name == "replicaio-pbft-groups-gateway":
            plan.append((PbftGroupsGatewaySystem(settings),
                         [int(c) for c in args.gateway_clients.split(",") if c], workloads))
        elif name == "replicaio-pbft-groups-gateway-wave":
            plan.append((PbftGroupsGatewayWaveSystem(settings),
                         [int(c) for c in args.gateway_clients.split(",") if c], workloads))
        elif name == "replicaio-minbft-groups":
            plan.append((MinbftGroupsSystem(settings), args.clients, workloads))
        elif name == "replicaio-minbft-groups-gateway":
            plan.append((MinbftGroupsGatewaySystem(settings),
                         [int(c) for c in args.gateway_clients.split(",") if c], workloads))
        elif name == "pysyncobj":
            plan.append((PySyncObjSystem(settings, journal=True), args.clients, workloads))
            if args.pysyncobj_memory:
                plan.append((PySyncObjSystem(settings, journal=False),
                             [int(c) for c in args.pysyncobj_memory.split(",")], ["set"]))
        elif name == "etcd":
            plan.append((EtcdSystem(settings), args.clients, workloads))
        elif name in ("floor", "floor-1flush"):
            plan.append((FloorSystem(settings, 2 if name == "floor" else 1), args.clients,
                         workloads))
            for ballast in ([int(n) for n in args.floor_ballast.split(",") if n]
                            if name == "floor" else []):
                plan.append((FloorSystem(settings, 2, ballast), args.clients, workloads))
        elif name == "redis":
            plan.append((RedisSystem(settings), args.clients, workloads))
    running: list[tuple[System, list[int], list[str]]] = []
    runs: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    try:
        for system, clients_list, system_workloads in plan:
            log(f"starting {system.name}")
            try:
                system.start()
            except Skip as reason:
                log(f"skipping {system.name}: {reason}")
                report["skipped"][system.name] = str(reason)
                system.stop()
                continue
            version = getattr(system, "version", "")
            report["systems"][system.name] = system.describe() | (
                {"version": version} if version else {})
            running.append((system, clients_list, system_workloads))
        for system, _, _ in running:  # what each costs while idle, every system started
            if args.idle_seconds <= 0:
                break
            before = cpu_seconds(system.server_pids())
            time.sleep(args.idle_seconds)
            report["systems"][system.name]["idle_cpu_pct"] = round(
                100 * (cpu_seconds(system.server_pids()) - before) / args.idle_seconds, 1)
        for attempt in range(args.repeat):
            for workload in workloads:
                for clients in sorted({c for _, cl, _ in running for c in cl}):
                    for system, clients_list, system_workloads in running:
                        if clients not in clients_list or workload not in system_workloads:
                            continue
                        runs.setdefault((system.name, workload, clients), []).append(
                            measure_cell(system, clients, workload, args.seed + attempt))
        for (name, workload, clients), found in runs.items():
            report["rows"].append(median_row(name, workload, clients, found))
        for system, _, _ in running:
            if isinstance(system, ReplicaioSystem):
                report["systems"][system.name]["front"] = system.front
                report["systems"][system.name]["node_params"] = system.node_params
                report["systems"][system.name]["protocol_params"] = system.protocol_params
                report["systems"][system.name]["host_params"] = system.host_params
                report["systems"][system.name]["counters_after"] = system.counters()
                if system.front == "resp":  # (each variant's too)
                    bench_redis_benchmark(system.name, system.client_port())
                else:
                    report["skipped"]["redis-benchmark against replicaio"] = (
                        "needs the RESP front (client_service 'resp'), not in this tree yet")
            if isinstance(system, RedisSystem):
                bench_redis_benchmark("redis", system.port)
        for system, _, _ in running:
            if isinstance(system, ReplicaioSystem) and system.name == "replicaio" \
                    and args.profile > 0:
                report["profile"] = profile_leader(
                    system, args.profile, args.profile_clients, "set", workdir / "profile",
                    settings.install)
    finally:
        for system, _, _ in running:
            with contextlib.suppress(Exception):
                system.stop()
        PROCESSES.stop_all()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"kept {workdir}")
    report["workdir"] = {"path": str(workdir), "kept": args.keep}
    report["ratios"] = ratios(report["rows"], "replicaio")
    report["bft_vs_raft"] = bft_vs_raft(report["rows"])
    report["conditions"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    if args.json:
        print(json.dumps(report, indent=1, sort_keys=True))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
