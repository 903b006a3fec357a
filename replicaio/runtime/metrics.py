"""Prometheus metrics of one live node, served over HTTP from the node's own loop.

Each node has its own registry (not the process-global one), read at scrape
time: nothing is copied on the hot path except two histogram observations per
batch, into :class:`LoopHistogram` (a bisect and two additions, no lock).
The endpoint (``[[nodes]] metrics = "host:port"``) is a minimal
HTTP/1.0 server on the node's asyncio loop, so no thread reads the node's
state while the loop changes it. Metric names and meanings: docs/runtime.md.

Next to ``/metrics``: ``/healthz`` answers 200 with a JSON report when the node
should get traffic (a readiness probe): it is serving (started, not stopping),
a leader is known (for protocols that have one), it is not recovering a lost
disk, and its applied index is at most ``HEALTH_LAG_MAX`` entries behind its
commit index; otherwise 503 with the reasons. ``/livez`` answers 200 while
the node's loop answers at all (a liveness probe: an election must not get
pods restarted).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from replicaio.runtime.config import Address
from replicaio.services.kv.status import protocol_status

if TYPE_CHECKING:
    from replicaio.runtime.host import NodeHost

FSYNC_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
REQUEST_HEAD_BYTES_MAX = 8192
REQUEST_TIMEOUT_S = 5.0
HEALTH_LAG_MAX = 10_000  # log entries committed but not yet applied, beyond which: unhealthy


class LoopHistogram:
    """One histogram's counts, observed from one thread only (a node's event loop).

    ``prometheus_client.Histogram.observe`` takes a lock for the sum and one for
    the bucket, with a Python loop over the bounds between them: 1.2 us per
    observation against 0.34 us here (a ``bisect`` and two additions; timeit,
    load 20), and the KV front observes every command (docs/benchmarks.md,
    "Histograms without locks"). Not thread-safe by design:
    the loop observes and the scrape (served on the same loop) reads.
    Exposed by :class:`LoopHistograms` as a Prometheus histogram (``_bucket``
    with cumulative ``le`` counts, ``_count``, ``_sum``)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # The first bound >= value: Prometheus buckets count value <= le.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value


class LoopHistograms(Collector):
    """A Prometheus histogram family of :class:`LoopHistogram` children, one per
    label value tuple (``labels``; a family without labels has one child,
    ``labels()``). Registered in ``registry`` when one is given."""

    def __init__(
        self, name: str, documentation: str, buckets: Iterable[float],
        labelnames: Iterable[str] = (), registry: CollectorRegistry | None = None,
    ) -> None:
        bounds = tuple(sorted(float(bound) for bound in buckets))
        if not bounds or len(set(bounds)) != len(bounds) or bounds[-1] == float("inf"):
            raise ValueError(f"{name}: buckets must be distinct finite bounds, got {bounds}")
        self.name = name
        self.documentation = documentation
        self.bounds = bounds
        self.labelnames = tuple(labelnames)
        self.children: dict[tuple[str, ...], LoopHistogram] = {}
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> LoopHistogram:
        """The child of ``values`` (made on first use; keep the set of values bounded)."""
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: labels {self.labelnames}, got {values}")
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = LoopHistogram(self.bounds)
        return child

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation,
                                       labels=list(self.labelnames))
        # ``repr`` writes every bound in use as prometheus_client's Go-style
        # formatting does (0.0001, 1.0; tests/test_metrics_histograms.py).
        edges = [repr(bound) for bound in self.bounds] + ["+Inf"]
        for values, child in sorted(self.children.items()):
            running = 0
            buckets: list[tuple[str, float]] = []
            for edge, count in zip(edges, child.counts, strict=True):
                running += count
                buckets.append((edge, running))
            family.add_metric(list(values), buckets, child.total)
        yield family


class NodeCollector(Collector):
    """Reads the host's counters, queues and stats at scrape time."""

    def __init__(self, host: NodeHost) -> None:
        self.host = host

    def collect(self) -> Iterator[Metric]:
        host = self.host
        core = CounterMetricFamily(
            "replicaio_core_events", "Node core events by name (rejections, bounds, "
            "retransmissions, restarts seen)", labels=["event"]
        )
        if host.core is not None:
            for name, value in sorted(host.core.counters.items()):
                core.add_metric([name], value)
        yield core
        runtime = CounterMetricFamily(
            "replicaio_runtime_events", "Runtime events by name (transport and client "
            "rejections, bound hits, connections)", labels=["event"]
        )
        for name, value in sorted(host.counters.snapshot().items()):
            runtime.add_metric([name], value)
        yield runtime
        for stat in ("steps", "batches", "syncs", "outputs", "messages_out"):
            family = CounterMetricFamily(f"replicaio_{stat}", f"Node {stat.replace('_', ' ')}")
            family.add_metric([], host.stats[stat])
            yield family
        yield from self.peers()
        inbox = GaugeMetricFamily("replicaio_inbox_depth", "Inputs waiting for a step")
        inbox.add_metric([], host.inbox_depth())
        yield inbox
        clients = GaugeMetricFamily("replicaio_client_connections", "Connected clients")
        clients.add_metric([], host.service.connections() if host.service is not None else 0)
        yield clients
        if host.core is not None:
            incarnation = GaugeMetricFamily("replicaio_incarnation", "This node's incarnation")
            incarnation.add_metric([], host.core.incarnation)
            yield incarnation
        if host.storage is not None:
            wal = GaugeMetricFamily("replicaio_wal_bytes", "Bytes in the write-ahead log")
            wal.add_metric([], host.storage.wal_bytes)
            yield wal
            damage = host.storage.damage
            damaged = GaugeMetricFamily(
                "replicaio_storage_damage", "1 if the storage lost writes it may have "
                "acknowledged when this incarnation started (see the log's warning)",
            )
            damaged.add_metric([], 0 if damage is None else 1)
            yield damaged
            discarded = GaugeMetricFamily(
                "replicaio_storage_bytes_discarded", "Bytes of a damaged or torn log tail "
                "discarded when this incarnation started",
            )
            discarded.add_metric([], host.storage.torn_bytes_discarded)
            yield discarded
        # A client service may add its own (the KV service: request latencies per
        # command, the protocol's gauges); read at scrape time like the rest.
        service_metrics = getattr(host.service, "collect_metrics", None)
        if service_metrics is not None:
            yield from service_metrics()

    def peers(self) -> Iterator[Metric]:
        transport = self.host.transport
        if transport is None:
            return
        frames_out = CounterMetricFamily("replicaio_peer_messages_out", "Frames sent to a peer",
                                         labels=["peer"])
        frames_in = CounterMetricFamily("replicaio_peer_messages_in",
                                        "Authenticated frames received from a peer",
                                        labels=["peer"])
        bytes_out = CounterMetricFamily("replicaio_peer_bytes_out", "Bytes sent to a peer",
                                        labels=["peer"])
        bytes_in = CounterMetricFamily("replicaio_peer_bytes_in", "Bytes received from a peer",
                                       labels=["peer"])
        dropped = CounterMetricFamily(
            "replicaio_peer_queue_dropped",
            "Messages dropped at outbound_queue_max or outbound_queue_bytes_max", labels=["peer"])
        depth = GaugeMetricFamily("replicaio_peer_queue_depth", "Messages queued for a peer",
                                  labels=["peer"])
        queued = GaugeMetricFamily("replicaio_peer_queue_bytes", "Bytes queued for a peer",
                                   labels=["peer"])
        connected = GaugeMetricFamily("replicaio_peer_connected",
                                      "1 while an authenticated connection is up",
                                      labels=["peer"])
        for peer, channel in sorted(transport.channels.items()):
            label = [str(peer)]
            frames_out.add_metric(label, channel.frames_out)
            frames_in.add_metric(label, channel.frames_in)
            bytes_out.add_metric(label, channel.bytes_out)
            bytes_in.add_metric(label, channel.bytes_in)
            dropped.add_metric(label, channel.dropped)
            depth.add_metric(label, len(channel.queue))
            queued.add_metric(label, channel.queued_bytes)
            connected.add_metric(label, 1 if channel.connection is not None else 0)
        yield from (frames_out, frames_in, bytes_out, bytes_in, dropped, depth, queued, connected)


class NodeMetrics:
    """The registry of one node and its HTTP endpoint."""

    def __init__(self, host: NodeHost) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.fsync_seconds = LoopHistograms(
            "replicaio_fsync_seconds", "Latency of one group-commit sync of a batch",
            FSYNC_BUCKETS, registry=self.registry,
        ).labels()
        self.batch_inputs = LoopHistograms(
            "replicaio_step_batch_inputs", "Inputs stepped together per batch (per sync)",
            BATCH_BUCKETS, registry=self.registry,
        ).labels()
        self.registry.register(NodeCollector(host))
        self.host = host

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """``/healthz``: whether this node should get traffic, and why (see the docstring
        of ``replicaio.runtime.metrics``)."""
        host = self.host
        status = protocol_status(host)
        reasons = []
        serving = host.ready.is_set() and not host.stopping and host.service is not None
        if not serving:
            reasons.append("not serving (starting or stopping)")
        leader = status.get("leader")
        if "term" in status and (leader is None or leader < 0):
            reasons.append("no leader known")
        if status.get("recovering", 0):
            reasons.append("recovering: may not vote until it caught up")
        lag = None
        if "commit_index" in status and "applied_index" in status:
            lag = status["commit_index"] - status["applied_index"]
            if lag > HEALTH_LAG_MAX:
                reasons.append(f"applied index {lag} behind the commit index")
        body: dict[str, Any] = {
            "healthy": not reasons, "serving": serving, "reasons": reasons,
            "node": host.node_id, "leader": leader, "term": status.get("term"),
            "commit_index": status.get("commit_index"),
            "applied_index": status.get("applied_index"), "lag": lag,
            "peers_connected": sum(1 for channel in (
                host.transport.channels.values() if host.transport is not None else ())
                if channel.connection is not None),
        }
        return not reasons, body

    async def serve(self, address: Address) -> asyncio.Server:
        return await asyncio.start_server(
            self.on_request, address.host, address.port, reuse_address=True
        )

    async def on_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
        except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, TimeoutError,
                ConnectionError):
            writer.close()
            return
        if len(head) > REQUEST_HEAD_BYTES_MAX:
            writer.close()
            return
        words = head.split(b" ", 2)
        path = words[1] if len(words) >= 2 and words[0] == b"GET" else b""
        if path in (b"/", b"/metrics"):
            body, status, kind = self.render(), b"200 OK", CONTENT_TYPE_LATEST.encode()
        elif path == b"/healthz":
            healthy, report = self.health()
            body = (json.dumps(report) + "\n").encode()
            status = b"200 OK" if healthy else b"503 Service Unavailable"
            kind = b"application/json"
        elif path == b"/livez":  # the loop answers: restart the process only if it does not
            body, status, kind = b"ok\n", b"200 OK", b"text/plain"
        else:
            body, status, kind = b"not found\n", b"404 Not Found", b"text/plain"
        writer.write(
            b"HTTP/1.0 " + status + b"\r\nContent-Type: " + kind
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
            + body
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()
