"""A cluster of real node processes on 127.0.0.1, for tests and benchmarks.

:class:`LocalCluster` writes a cluster file with free ports (below the
kernel's ephemeral range, see :func:`free_port_block`), starts each node as
``python -m replicaio.cli node`` (its own process), and can stop (SIGTERM),
kill (SIGKILL) and restart any of them with its data directory intact. Every
run of a node records its own event log (``node-I.run-K.events``) and stderr
(``node-I.run-K.log``). With ``tls``, ``certs init`` makes ``directory/certs``
and both ports speak mutual TLS. ``close`` kills whatever is still running:
use it in a ``finally`` or a fixture finalizer.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from replicaio.runtime.client import StreamClient
from replicaio.runtime.config import (
    ClusterFile,
    load_cluster_file,
    render_cluster_file,
    write_node_key,
    write_usig_keys,
)

LOOPBACK = "127.0.0.1"
# What a node's log or :meth:`LocalCluster.wait_ready` says when a port is another
# process's; how many times a first start moves the cluster to fresh ports for it.
PORT_TAKEN_SIGNS = ("address already in use", "is another process's")
PORT_MOVES_MAX = 2


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux), or
    the IANA dynamic range elsewhere."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49152, 65535


def _listen_region() -> range:
    """Where this process picks listening ports: below the ephemeral range, so
    that no outgoing connection (ours or another test's) can take a port
    between our check and the node's bind, and split between pytest-xdist
    workers so that two workers never hand out the same port."""
    low, high = _ephemeral_range()
    start, stop = (10000, low) if low - 10000 >= 4000 else (high + 1, 65536)
    if stop - start < 4000:
        return range(1024, 65536)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or "1")
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    if workers > 1:
        width = (stop - start) // workers
        start = start + (index % workers) * width
        stop = start + width
    return range(start, stop)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _listening_inodes(port: int) -> set[str] | None:
    """The inodes of the TCP sockets listening on ``port`` (any address), from
    ``/proc/net/tcp`` and ``tcp6``; ``None`` where there is no such file."""
    found: set[str] = set()
    read = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        read = True
        for line in lines:
            fields = line.split()
            # local_address is ADDRESS:PORT in hex; state 0A is LISTEN
            if len(fields) > 9 and fields[3] == "0A" and \
                    int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.add(fields[9])
    return found if read else None


def listens_on(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` holds a socket listening on ``port``; ``None``
    where this cannot be told (no ``/proc``). A port that accepts connections
    may be another process's: a node whose bind failed exits, and a concurrent
    test run's node may hold the port (see :meth:`LocalCluster.wait_ready`)."""
    inodes = _listening_inodes(port)
    if inodes is None:
        return None
    if not inodes:
        return False
    wanted = {f"socket:[{inode}]" for inode in inodes}
    try:
        descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return None
    for descriptor in descriptors:
        with contextlib.suppress(OSError):
            if os.readlink(descriptor) in wanted:
                return True
    return False


def free_port_block(count: int) -> int:
    """A base port whose next ``count`` ports were free on 127.0.0.1 a moment
    ago, taken from below the kernel's ephemeral range (see
    :func:`_listen_region`) at a random place, so that concurrent test runs
    rarely collide and outgoing connections never do (bounded attempts)."""
    assert count >= 1
    region = _listen_region()
    chooser = random.Random()  # not protocol code: spreading test ports apart
    for _ in range(200):
        base = chooser.randrange(region.start, max(region.start + 1, region.stop - count))
        if base + count > 65536:
            continue
        if all(_bindable(port) for port in range(base, base + count)):
            return base
    raise RuntimeError(f"no block of {count} free ports on {LOOPBACK} in {region}")


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that were free on 127.0.0.1 a moment ago, from
    below the ephemeral range (see :func:`free_port_block`)."""
    base = free_port_block(count)
    return list(range(base, base + count))


class LocalCluster:
    """Node processes of one cluster; see the module docstring."""

    def __init__(
        self,
        directory: Path,
        *,
        protocol: str = "bracha",
        nodes: int = 4,
        f: int | None = None,
        sections: dict[str, dict[str, Any]] | None = None,
        metrics: bool = False,
        loops: tuple[str, ...] = ("auto",),
        tls: bool = False,
        auth: str = "hmac",
        usig: str = "ed25519",
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        ports = free_ports(3 * nodes)
        secret = directory / "cluster.key"
        secret.write_text("5e" * 32 + "\n")
        tables: list[dict[str, Any]] = []
        for node_id in range(nodes):
            table: dict[str, Any] = {
                "id": node_id,
                "peer": f"{LOOPBACK}:{ports[node_id]}",
                "client": f"{LOOPBACK}:{ports[nodes + node_id]}",
                "data_dir": f"node-{node_id}",
            }
            if metrics:
                table["metrics"] = f"{LOOPBACK}:{ports[2 * nodes + node_id]}"
            if auth == "ed25519":  # node keys, and with them Ed25519 client signatures
                write_node_key(directory, table)
            if tls:
                table["tls_cert"] = f"certs/node-{node_id}.pem"
                table["tls_key"] = f"certs/node-{node_id}.key"
            tables.append(table)
        if tls:  # mutual TLS on both ports, certificates in directory/certs
            from replicaio.runtime.certs import init_certs

            init_certs(directory / "certs", nodes)
            sections = {**(sections or {}), "tls": {"ca_file": "certs/ca.pem"}}
        sections = {**(sections or {}), **write_usig_keys(directory, protocol, tables, usig)}
        self.config_path = directory / "cluster.toml"
        self.config_path.write_text(
            render_cluster_file(protocol=protocol, nodes=tables, auth=auth, f=f,
                                secret_file="cluster.key" if auth == "hmac" else None,
                                sections=sections)
        )
        self.cluster: ClusterFile = load_cluster_file(self.config_path)
        self.loops = loops
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.runs: dict[int, int] = dict.fromkeys(range(nodes), 0)

    # -- processes ---------------------------------------------------------------------------

    def event_log(self, node_id: int, run: int) -> Path:
        return self.directory / f"node-{node_id}.run-{run}.events"

    def stderr_log(self, node_id: int, run: int) -> Path:
        return self.directory / f"node-{node_id}.run-{run}.log"

    def start(
        self, node_id: int, *, join: bool = False, byzantine: str | None = None
    ) -> subprocess.Popen[bytes]:
        """Start node ``node_id`` (``join``: on a new disk replacing a lost one;
        ``byzantine``: as a faulty replica with these adversary behaviours)."""
        assert node_id not in self.processes, f"node {node_id} is running"
        self.runs[node_id] += 1
        run = self.runs[node_id]
        command = [
            sys.executable, "-m", "replicaio.cli", "node", "--config", str(self.config_path),
            "--id", str(node_id), "--event-log", str(self.event_log(node_id, run)),
            "--loop", self.loops[node_id % len(self.loops)],
        ]
        if join:
            command.append("--join")
        if byzantine is not None:
            command.extend(("--byzantine", byzantine))
        with open(self.stderr_log(node_id, run), "wb") as output:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
            )
        self.processes[node_id] = process
        return process

    # A node that is not listening within this is reported with its log. Generous:
    # under a load of 15+ on 2 cores (parallel test runs) a node's imports and key
    # loading alone took over 20 s; a ready node returns at once.
    READY_TIMEOUT_S = 60.0

    def start_all(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Start every node and wait until each serves on its own ports. On the
        cluster's first start, a port that another process bound between its
        choice and the node's bind (a concurrent test run) moves the whole
        cluster to a fresh block of ports, on fresh disks (at most twice)."""
        for moves_left in range(PORT_MOVES_MAX, -1, -1):
            first = not any(self.runs.values())
            for node_id in range(self.cluster.n):
                self.start(node_id)
            try:
                self.wait_ready(range(self.cluster.n), timeout_s)
                return
            except RuntimeError as error:
                if not (first and moves_left and any(
                        sign in str(error) for sign in PORT_TAKEN_SIGNS)):
                    raise
            self.close()
            self.move_ports()

    def move_ports(self) -> None:
        """Give every node fresh ports (the cluster file rewritten), a fresh data
        directory and run numbering from 1 again (the failed runs' logs kept
        aside as ``*.port-taken``). Only before any node has served."""
        assert not self.processes, "move_ports with nodes running"
        old = [port for entry in self.cluster.nodes
               for port in (entry.peer.port, entry.client.port)] + [
            entry.metrics.port for entry in self.cluster.nodes if entry.metrics is not None]
        new = free_ports(len(old))
        text = self.config_path.read_text()
        for before, after in zip(old, new, strict=True):
            text = text.replace(f'"{LOOPBACK}:{before}"', f'"{LOOPBACK}:{after}"')
        self.config_path.write_text(text)
        self.cluster = load_cluster_file(self.config_path)
        for entry in self.cluster.nodes:
            shutil.rmtree(self.directory / entry.data_dir, ignore_errors=True)
            for run in range(1, self.runs[entry.id] + 1):
                for path in (self.event_log(entry.id, run), self.stderr_log(entry.id, run)):
                    with contextlib.suppress(OSError):
                        path.rename(path.with_name(path.name + ".port-taken"))
            self.runs[entry.id] = 0

    def wait_ready(self, node_ids: Any, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Return once every node's client port accepts *and is the node's own*;
        raise with its log otherwise. A port that accepts may be another
        process's: the ports were free when chosen, but a concurrent test run may
        bind one before the node does. The node then exits (address in use)
        while a test talks to the other process: a cross-group MGET through such
        a port read ``[None, None]`` (a key-value node of another cluster) and
        looked like a stale read (docs/transactions.md, *Reads across groups*)."""
        deadline = time.monotonic() + timeout_s
        for node_id in node_ids:
            entry = self.cluster.nodes[node_id]
            while True:
                process = self.processes[node_id]
                if process.poll() is not None:
                    raise RuntimeError(f"node {node_id} exited: {self.tail(node_id)}")
                try:
                    with socket.create_connection((entry.client.host, entry.client.port), 0.2):
                        pass
                    owned = listens_on(process.pid, entry.client.port)
                    if owned is None or owned:
                        break
                    problem = f"its client port {entry.client.port} is another process's"
                except OSError:
                    problem = "not ready"
                if time.monotonic() > deadline:
                    raise RuntimeError(f"node {node_id} {problem}: {self.tail(node_id)}")
                time.sleep(0.02)

    def tail(self, node_id: int, lines: int = 10) -> str:
        path = self.stderr_log(node_id, self.runs[node_id])
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def kill(self, node_id: int) -> None:
        """SIGKILL: the node dies wherever it is (its data directory stays)."""
        process = self.processes.pop(node_id)
        process.kill()
        process.wait(10)

    def stop(self, node_id: int, timeout_s: float = 10.0) -> int:
        """SIGTERM and wait: a clean stop; returns the exit status."""
        process = self.processes.pop(node_id)
        process.terminate()
        try:
            return process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
            raise

    def close(self) -> None:
        for node_id in list(self.processes):
            self.kill(node_id)

    def client(self, node_id: int, timeout_s: float = 10.0) -> StreamClient:
        return StreamClient(self.cluster.nodes[node_id].client, timeout_s=timeout_s)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
