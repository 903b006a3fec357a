"""Node processes of a torture, one per network namespace.

:class:`NamespacedCluster` writes the cluster file (every node on its own
address, the same ports on each), starts ``replicaio kv node`` inside each
node's namespace (``ip netns exec``), and kills (SIGKILL), pauses (SIGSTOP),
resumes (SIGCONT) and restarts nodes with their data directories intact.
Each run of a node writes its output to ``node-I.run-K.log``. ``close``
resumes and kills whatever still runs; it is idempotent. With ``tls``, ``certs
init`` makes ``certs/`` (each node's certificate names its namespace address)
and both ports speak mutual TLS 1.3; the workload's clients present
``certs/client.pem``. With ``byzantine_nodes`` (node -> behaviour mix) those nodes run
``kv node --byzantine MIX`` at every start: the simulator's adversary rewrites
every message they send (``replicaio node --byzantine``); :meth:`correct_nodes`
are the others, the only ones the workload and the judge talk to.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from replicaio.runtime.config import (
    ClusterFile,
    load_cluster_file,
    render_cluster_file,
    write_node_key,
    write_usig_keys,
)
from replicaio.torture.network import Testbed
from replicaio.torture.workload import ClientCertificate, Endpoint

PEER_PORT = 7100
CLIENT_PORT = 6379
METRICS_PORT = 9100
SECRET = "7e" * 32
SECTIONS: dict[str, dict[str, Any]] = {
    "node": {"tick_us": 10_000},
    "transport": {"reconnect_delay_ms_min": 10, "reconnect_delay_ms_max": 300},
    "host": {"client_service": "resp"},  # fsync stays on: acknowledged means durable
    "service": {"retry_after_ms": 300, "retry_backoff_ms": 20, "request_timeout_ms": 2500},
}
READY_TIMEOUT_S = 30.0
# The node's event counters by name (``replicaio.runtime.metrics``), as scraped.
EVENT_FAMILIES = ("replicaio_core_events_total{", "replicaio_runtime_events_total{")


def byzantine(protocol: str) -> bool:
    """Whether ``protocol`` (a replicated service) tolerates Byzantine nodes."""
    from replicaio.assembly import service_spec
    from replicaio.core.config import Resilience

    found = service_spec(protocol)
    return found is not None and found[0].resilience is not Resilience.CRASH


class NamespacedCluster:
    """See the module docstring."""

    def __init__(self, directory: Path, testbed: Testbed, protocol: str, *,
                 tls: bool = False, byzantine_nodes: dict[int, str] | None = None) -> None:
        self.directory = directory
        self.testbed = testbed
        self.byzantine = dict(byzantine_nodes or {})
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "cluster.key").write_text(SECRET + "\n")
        tables: list[dict[str, Any]] = [
            {
                "id": node,
                "peer": f"{testbed.address(node)}:{PEER_PORT}",
                "client": f"{testbed.address(node)}:{CLIENT_PORT}",
                "metrics": f"{testbed.address(node)}:{METRICS_PORT}",
                "data_dir": f"node-{node}",
            }
            for node in range(testbed.nodes)
        ]
        sections = dict(SECTIONS)
        self.client_tls: ClientCertificate | None = None
        if tls:
            from replicaio.runtime.certs import init_certs

            certs = directory / "certs"
            init_certs(certs, testbed.nodes,
                       hosts=tuple(str(testbed.address(node)) for node in range(testbed.nodes)))
            sections["tls"] = {"ca_file": "certs/ca.pem", "peer": True, "client": True}
            for table in tables:
                table["tls_cert"] = f"certs/node-{table['id']}.pem"
                table["tls_key"] = f"certs/node-{table['id']}.key"
            self.client_tls = ClientCertificate(str(certs / "ca.pem"), str(certs / "client.pem"),
                                                str(certs / "client.key"))
        auth = "ed25519" if byzantine(protocol) else "hmac"
        if auth == "ed25519":  # BFT nodes (and their clients' requests) sign with Ed25519
            for table in tables:
                write_node_key(directory, table)
        sections = {**sections, **write_usig_keys(directory, protocol, tables)}
        self.config_path = directory / "cluster.toml"
        self.config_path.write_text(render_cluster_file(
            protocol=protocol, nodes=tables, auth=auth,
            secret_file="cluster.key" if auth == "hmac" else None, sections=sections))
        self.cluster: ClusterFile = load_cluster_file(self.config_path)
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.paused: set[int] = set()
        self.runs: dict[int, int] = dict.fromkeys(range(testbed.nodes), 0)

    @property
    def n(self) -> int:
        return self.cluster.n

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint(entry.client.host, entry.client.port, self.client_tls)
                for entry in self.cluster.nodes]

    def correct_nodes(self) -> list[int]:
        """The nodes that run the protocol as written (all but the Byzantine ones)."""
        return [node for node in range(self.n) if node not in self.byzantine]

    def correct_endpoints(self) -> list[Endpoint]:
        """Client endpoints of the correct nodes: a Byzantine node's own clients
        have no guarantee in the BFT model, so nothing is asked of its front."""
        endpoints = self.endpoints()
        return [endpoints[node] for node in self.correct_nodes()]

    def events(self, node: int, attempts: int = 3, timeout_s: float = 5.0
               ) -> dict[str, float] | None:
        """``node``'s event counters since its last start (its metrics endpoint:
        ``replicaio_core_events`` and ``replicaio_runtime_events`` by name);
        ``None`` if it did not answer (a loaded node may take seconds)."""
        entry = self.cluster.nodes[node]
        if entry.metrics is None:
            return None
        url = f"http://{entry.metrics.host}:{entry.metrics.port}/metrics"
        for attempt in range(attempts):
            try:
                with urllib.request.urlopen(url, timeout=timeout_s) as response:
                    text = response.read().decode("utf-8", "replace")
                break
            except OSError:
                if attempt == attempts - 1:
                    return None
                time.sleep(0.5)
        found: dict[str, float] = {}
        for line in text.splitlines():
            if not line.startswith(EVENT_FAMILIES):
                continue
            labels, _, value = line.rpartition(" ")
            name = labels.split('event="', 1)[1].split('"', 1)[0]
            found[name] = found.get(name, 0.0) + float(value)
        return found

    def data_dir(self, node: int) -> Path:
        return self.cluster.nodes[node].data_dir

    def log_path(self, node: int) -> Path:
        return self.directory / f"node-{node}.run-{self.runs[node]}.log"

    def start(self, node: int) -> None:
        assert node not in self.processes, f"node {node} is running"
        self.runs[node] += 1
        command = [*self.testbed.exec_prefix(node), sys.executable, "-m", "replicaio.cli",
                   "kv", "node", "--config", str(self.config_path), "--id", str(node)]
        if node in self.byzantine:
            command += ["--byzantine", self.byzantine[node]]
        with open(self.log_path(node), "wb") as output:
            self.processes[node] = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def running(self, node: int) -> bool:
        process = self.processes.get(node)
        return process is not None and process.poll() is None

    def kill(self, node: int) -> None:
        """SIGKILL (``kill -9``): the node dies wherever it is; its data stays."""
        process = self.processes.pop(node, None)
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        self.paused.discard(node)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)

    def pause(self, node: int) -> None:
        process = self.processes.get(node)
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGSTOP)
            self.paused.add(node)

    def resume(self, node: int) -> None:
        process = self.processes.get(node)
        if process is not None and node in self.paused:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)
        self.paused.discard(node)

    def restart_dead(self) -> list[int]:
        """Start every node whose process is gone (killed, or exited by itself)."""
        restarted = []
        for node in range(self.n):
            process = self.processes.get(node)
            if process is not None and process.poll() is not None:
                self.processes.pop(node)
            if node not in self.processes:
                self.start(node)
                restarted.append(node)
        return restarted

    def wait_ready(self, nodes: list[int], timeout_s: float = READY_TIMEOUT_S) -> str | None:
        """``None`` once every node in ``nodes`` accepts on its client port, else why not."""
        deadline = time.monotonic() + timeout_s
        for node in nodes:
            entry = self.cluster.nodes[node]
            while True:
                if not self.running(node):
                    return f"node {node} exited: {self.tail(node)}"
                try:
                    with socket.create_connection((entry.client.host, entry.client.port), 0.5):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        return f"node {node} not ready after {timeout_s} s: {self.tail(node)}"
                    time.sleep(0.05)
        return None

    def tail(self, node: int, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path(node).read_text(errors="replace")
            return " | ".join(text.splitlines()[-lines:])
        return ""

    def close(self) -> None:
        for node in list(self.processes):
            self.resume(node)
            self.kill(node)
