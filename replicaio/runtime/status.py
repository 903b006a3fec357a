"""``replicaio status --cluster FILE``: every node's state, read from its metrics endpoint.

For each ``[[nodes]]`` entry with a ``metrics`` address the command fetches
``/metrics`` (HTTP/1.0, at most ``RESPONSE_BYTES_MAX`` bytes, within
``--timeout``), all nodes at once, and shows one row per node: up or not,
role, term (or view), commit and applied index, lag (entries behind the
highest commit index any node reports), connected peers and clients,
incarnation, inbox depth, steps. Figures a protocol does not export show as
``-``; which gauges they come from is in docs/visualisation.md.

It refreshes every ``--interval`` seconds until interrupted (a ``rich`` live
table when stdout is a terminal, else one table per refresh); ``--once``
prints one and exits, ``--json`` prints one JSON object per refresh. Exit
status: 0 when every node answered, 1 when one did not (``--once``), 2 for a
usage error (no cluster file, no metrics addresses).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from replicaio.core.errors import UsageError
from replicaio.runtime.config import Address, ClusterFile, load_cluster_file

RESPONSE_BYTES_MAX = 4 << 20
TIMEOUT_S_DEFAULT = 2.0
INTERVAL_S_DEFAULT = 1.0


@dataclass(slots=True)
class NodeStatus:
    """What one node's metrics say (``error`` set when they could not be read)."""

    node: int
    address: str
    up: bool = False
    error: str = ""
    role: str = "-"
    term: int | None = None
    view: int | None = None
    leader: int | None = None
    commit_index: int | None = None
    applied_index: int | None = None
    last_index: int | None = None
    lag: int | None = None
    peers_connected: int | None = None
    peers: int = 0
    clients: int | None = None
    incarnation: int | None = None
    inbox: int | None = None
    steps: int | None = None
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        found = {name: getattr(self, name) for name in self.__slots__ if name != "extra"}
        return found


async def fetch_metrics(address: Address, timeout_s: float) -> str:
    """The text of ``http://address/metrics`` (raises ``OSError``/``TimeoutError``)."""
    async def get() -> bytes:
        reader, writer = await asyncio.open_connection(address.host, address.port)
        try:
            writer.write(b"GET /metrics HTTP/1.0\r\nHost: " + address.host.encode()
                         + b"\r\n\r\n")
            await writer.drain()
            return await reader.read(RESPONSE_BYTES_MAX)
        finally:
            writer.close()

    response = await asyncio.wait_for(get(), timeout_s)
    head, _, body = response.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n", 1)[0] + b" ":
        raise OSError(f"unexpected answer {head[:60]!r}")
    return body.decode("utf-8", "replace")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page: (name, sorted labels) -> value."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def read_status(node: int, address: str, text: str) -> NodeStatus:
    """A node's row from the text of its metrics page."""
    values = samples(text)
    status = NodeStatus(node=node, address=address, up=True)

    def gauge(name: str) -> int | None:
        value = values.get((name, ()))
        return None if value is None else int(value)

    status.term = gauge("replicaio_protocol_term")
    status.view = gauge("replicaio_protocol_view")
    status.leader = gauge("replicaio_protocol_leader")
    status.commit_index = gauge("replicaio_protocol_commit_index")
    status.applied_index = gauge("replicaio_protocol_applied_index")
    if status.applied_index is None:
        status.applied_index = gauge("replicaio_protocol_smr_applied")
    status.last_index = gauge("replicaio_protocol_last_index")
    status.clients = gauge("replicaio_client_connections")
    status.incarnation = gauge("replicaio_incarnation")
    status.inbox = gauge("replicaio_inbox_depth")
    steps = values.get(("replicaio_steps_total", ()))
    status.steps = None if steps is None else int(steps)
    roles = [dict(labels).get("role", "") for (name, labels), value in values.items()
             if name == "replicaio_protocol_role" and value == 1]
    if roles:
        status.role = roles[0]
    elif gauge("replicaio_protocol_is_leader") is not None:
        status.role = "leader" if gauge("replicaio_protocol_is_leader") else "follower"
    connected = [value for (name, _), value in values.items()
                 if name == "replicaio_peer_connected"]
    status.peers = len(connected)
    status.peers_connected = int(sum(connected)) if connected else None
    return status


async def poll(cluster: ClusterFile, timeout_s: float) -> list[NodeStatus]:
    """Every node's status, fetched concurrently; lag filled in across nodes."""
    async def one(node: int, address: Address) -> NodeStatus:
        try:
            text = await fetch_metrics(address, timeout_s)
        except (OSError, TimeoutError, ValueError) as error:
            reason = "timed out" if isinstance(error, TimeoutError) else str(error) or repr(error)
            return NodeStatus(node=node, address=str(address), error=reason)
        try:
            return read_status(node, str(address), text)
        except ValueError as error:
            return NodeStatus(node=node, address=str(address), error=f"bad metrics: {error}")

    found = await asyncio.gather(*(one(entry.id, entry.metrics) for entry in cluster.nodes
                                   if entry.metrics is not None))
    commits = [row.commit_index for row in found if row.commit_index is not None]
    if commits:
        for row in found:
            reached = row.applied_index if row.applied_index is not None else row.commit_index
            if reached is not None:
                row.lag = max(0, max(commits) - reached)
    return list(found)


COLUMNS = (("node", "node"), ("up", "up"), ("role", "role"), ("term", "term/view"),
           ("leader", "leader"), ("commit_index", "commit"), ("applied_index", "applied"),
           ("lag", "lag"), ("peers_connected", "peers"), ("clients", "clients"),
           ("incarnation", "inc"), ("inbox", "inbox"), ("steps", "steps"))


def cell(row: NodeStatus, name: str) -> str:
    if name == "up":
        return "up" if row.up else f"DOWN ({row.error})"
    if name == "term":
        value = row.term if row.term is not None else row.view
        return "-" if value is None else str(value)
    if name == "peers_connected":
        if row.peers_connected is None:
            return "-"
        return f"{row.peers_connected}/{row.peers}"
    value = getattr(row, name)
    return "-" if value is None else str(value)


def render_table(cluster: ClusterFile, rows: list[NodeStatus]) -> Any:
    from rich.table import Table

    table = Table(title=f"{cluster.protocol}, {cluster.n} nodes "
                  f"({time.strftime('%H:%M:%S')})", title_justify="left")
    for _, heading in COLUMNS:
        table.add_column(heading, justify="left" if heading in ("up", "role") else "right")
    for row in rows:
        style = None if row.up else "red"
        if row.role == "leader":
            style = "bold"
        table.add_row(*(cell(row, name) for name, _ in COLUMNS), style=style)
    return table


def report(cluster: ClusterFile, rows: list[NodeStatus]) -> dict[str, Any]:
    return {"protocol": cluster.protocol, "n": cluster.n, "time": round(time.time(), 3),
            "nodes": [row.as_dict() for row in rows]}


def command_status(args: argparse.Namespace) -> int:
    cluster = load_cluster_file(args.cluster)
    if not any(entry.metrics is not None for entry in cluster.nodes):
        raise UsageError(f"{args.cluster}: no node has a metrics address "
                         "([[nodes]] metrics = \"host:port\")")
    if args.interval <= 0 or args.timeout <= 0:
        raise UsageError("--interval and --timeout must be positive")
    if args.once:
        rows = asyncio.run(poll(cluster, args.timeout))
        show(cluster, rows, args.json)
        return 0 if all(row.up for row in rows) else 1
    try:
        if args.json or not sys.stdout.isatty():
            while True:
                show(cluster, asyncio.run(poll(cluster, args.timeout)), args.json)
                sys.stdout.flush()
                time.sleep(args.interval)
        live_table(cluster, args)
    except KeyboardInterrupt:
        pass
    return 0


def live_table(cluster: ClusterFile, args: argparse.Namespace) -> None:
    from rich.live import Live

    rows = asyncio.run(poll(cluster, args.timeout))
    with Live(render_table(cluster, rows), auto_refresh=False) as live:
        while True:
            time.sleep(args.interval)
            rows = asyncio.run(poll(cluster, args.timeout))
            live.update(render_table(cluster, rows), refresh=True)


def show(cluster: ClusterFile, rows: list[NodeStatus], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report(cluster, rows), sort_keys=True))
        return
    from rich.console import Console

    Console(width=max(110, Console().width)).print(render_table(cluster, rows))


def add_status_command(commands: Any) -> None:
    """Add ``status`` to the ``replicaio`` parser's subparsers."""
    parser = commands.add_parser("status", help="each live node's role, term, indexes, lag "
                                 "and connections, from its metrics endpoint")
    parser.add_argument("--cluster", required=True, metavar="FILE", help="the cluster file")
    parser.add_argument("--once", action="store_true", help="print once and exit (1 if a "
                        "node did not answer)")
    parser.add_argument("--json", action="store_true", help="one JSON object per refresh")
    parser.add_argument("--interval", type=float, default=INTERVAL_S_DEFAULT,
                        help="seconds between refreshes (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S_DEFAULT,
                        help="seconds to wait for each endpoint (default %(default)s)")
    parser.set_defaults(handler=command_status)
