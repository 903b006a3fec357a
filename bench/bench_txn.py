"""Live transactions across groups: committed transfers per second and latency.

Starts a local cluster of ``--nodes`` processes hosting three Raft groups
each (``txn``), then, for each client count (``--clients``,
default 16 and 64) and each shape, runs closed-loop clients of the Python API
(``replicaio.runtime.txn_client``) for ``--seconds``:

* ``cross``: a transfer between two accounts in two different groups (a
  two-phase commit over two groups plus the coordinator's);
* ``single``: a transfer between two accounts of one group (hash tags put both
  keys in one slot: the same protocol, one participant, which coordinates);

with contention ``low`` (``--accounts`` accounts per group, default 1000) and
``high`` (2 per group). Reports committed transfers per second, aborts per
committed one (no-wait refusals of locked keys), unknown outcomes, and the
latency of committed ones (p50, p99), and the groups' view changes during the
row, read from the nodes' metrics: ``views_started`` (views the groups started,
and ``views_per_min``), ``view_changes`` and ``suspicions`` (VIEW-CHANGEs
sent and primaries suspected, per replica; ``suspected``: what the suspecting
backups had waited for, ``suspected_why``: why it counted against the
primary; ``primaries_stalled``: MinBFT primaries that asked to end their own
view). Nothing is asserted: figures go to
docs/benchmarks.md with the machine's load.

``--protocol txn-pbft`` runs it over PBFT groups (certified, client-signed
attempts; 4 nodes unless ``--nodes``), ``--protocol txn-minbft`` over MinBFT
groups (a USIG per replica; 3 nodes unless ``--nodes``), and several
protocols given at once run one after the other in one invocation (one
cluster each, every row naming its protocol), so their ratios share the
machine's load. ``--replies 1 2`` measures, side by side in one run, the
client of one node (``TxnClient(replies=1)``: every attempt to one node,
which it trusts) against the f+1 client (``replies=2`` for f = 1: every
attempt to every node, an outcome on f+1 matching answers; ADR 0029).

``--front redis`` measures the Redis front of a sharded store instead
(``txn-kv``, ``kv up --groups 3``; with ``--protocol txn-pbft`` or
``txn-minbft``, ``txn-kv-pbft`` or ``txn-kv-minbft``, clients on node 0's own
port, the trusted shortcut), through redis-py's asyncio client, shapes side
by side in one run: ``get-set`` (one single-group command: ``INCRBY`` of
one account), ``multi-1`` (``MULTI``/``EXEC`` transferring between two accounts
of one group: one replicated command), ``multi-cross`` (the same transfer
between accounts of two groups: a transaction across groups). Lock conflicts
are retried inside the front; ``errors`` counts what reached the client.
``--through node gateway`` runs the Redis rows both on node 0's port and
through a ``replicaio kv gateway`` process on the same cluster (f+1 matching
replies per command, ADR 0029's rule for attempts across groups; the cluster's
clients then sign with Ed25519), the rows side by side; ``--redis-shapes``
picks the Redis shapes.

    .venv/bin/python bench/bench_txn.py --seconds 10 --json
    .venv/bin/python bench/bench_txn.py --protocol txn-pbft --nodes 4 --replies 1 2 \
        --clients 16 --contention low --shapes cross --seconds 8
    .venv/bin/python bench/bench_txn.py --front redis --seconds 8 --json
    .venv/bin/python bench/bench_txn.py --protocol txn txn-pbft txn-minbft --seconds 8
    .venv/bin/python bench/bench_txn.py --front redis --protocol txn txn-minbft --seconds 8
    .venv/bin/python bench/bench_txn.py --front redis --protocol txn-pbft \
        --through node gateway --redis-shapes get-set multi-1 --contention low --seconds 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from replicaio.assembly import TXN_GROUPS_DEFAULT
from replicaio.runtime.local import LocalCluster, free_ports
from replicaio.runtime.status import fetch_metrics, samples
from replicaio.runtime.txn_client import TransactionAborted, TransactionUnknown, TxnClient
from replicaio.services.txn.slots import SlotMap

FAST = {"transport": {"reconnect_delay_ms_min": 10, "reconnect_delay_ms_max": 200}}
# The API's protocol: its Redis store (``--front redis``) and its smallest cluster
# tolerating one fault (``--nodes`` overrides it).
PROTOCOLS = {"txn": ("txn-kv", 3), "txn-pbft": ("txn-kv-pbft", 4),
             "txn-minbft": ("txn-kv-minbft", 3)}


# The protocol events each row reports, summed over the nodes (and their groups):
# view changes started (``pbft_view_changes``: one per replica that sent a
# VIEW-CHANGE), views started, and the backups' suspicions of their primary.
# ``suspected_*``: what the suspecting backup had waited for (normal.py's
# ``suspicion``), ``new_view_timeouts``: views that did not start in time.
# MinBFT's (its ``minbft_`` counters, added in): a backup's suspicions by what it
# waited for (``relayed``, ``forwarded``, ``stalled``) and the primaries that
# asked to end their own view (``minbft_primary_stalled``).
SUSPECTED = ("relayed", "requests", "stalled", "forwarded")
REDIS_SHAPES = ("get-set", "multi-1", "multi-cross")
# Why a timed wait counted against the primary (``suspicion``: nothing executed
# during the timeout, a younger wait executed first, or it outlasted 4 timeouts).
SUSPECTED_WHY = ("nothing_executed", "overtaken", "patience")
EVENTS = ("pbft_view_changes", "pbft_views_started", "pbft_primary_suspected",
          "pbft_new_view_timeouts", "minbft_view_changes", "minbft_views_started",
          "minbft_primary_suspected", "minbft_new_view_timeouts", "minbft_primary_stalled",
          *(f"{family}_suspected_{why}" for family in ("pbft", "minbft")
            for why in SUSPECTED_WHY),
          *(f"{family}_primary_suspected_{cause}" for family in ("pbft", "minbft")
            for cause in SUSPECTED))


def events_of(cluster: LocalCluster) -> dict[str, float]:
    """The ``EVENTS`` counters of every node's metrics, summed (a node that does
    not answer counts nothing)."""
    async def read() -> dict[str, float]:
        totals = dict.fromkeys(EVENTS, 0.0)
        for entry in cluster.cluster.nodes:
            if entry.metrics is None:
                continue
            try:
                text = await fetch_metrics(entry.metrics, 5.0)
            except (OSError, TimeoutError):
                continue
            for (name, labels), value in samples(text).items():
                event = dict(labels).get("event")
                if name == "replicaio_core_events_total" and event in totals:
                    totals[event] += value
        return totals

    return asyncio.run(read())


def with_events(row: dict[str, Any], before: dict[str, float], after: dict[str, float],
                seconds: float, nodes: int) -> dict[str, Any]:
    """``row`` with the row's views started (each node hosts one replica of every
    group, so the replicas' count over ``nodes`` is the groups' views; per minute)
    and its VIEW-CHANGEs and suspicions (counted per replica)."""
    delta = {name: after[name] - before[name] for name in EVENTS}
    started = (delta["pbft_views_started"] + delta["minbft_views_started"]) / nodes
    row.update(views_started=round(started, 1),
               views_per_min=round(60 * started / seconds, 1),
               view_changes=int(delta["pbft_view_changes"] + delta["minbft_view_changes"]),
               suspicions=int(delta["pbft_primary_suspected"]
                              + delta["minbft_primary_suspected"]),
               suspected={cause: count for cause in SUSPECTED if (count := int(
                   delta[f"pbft_primary_suspected_{cause}"]
                   + delta[f"minbft_primary_suspected_{cause}"]))},
               new_view_timeouts=int(delta["pbft_new_view_timeouts"]
                                     + delta["minbft_new_view_timeouts"]))
    why = {reason: count for reason in SUSPECTED_WHY if (count := int(
        delta[f"pbft_suspected_{reason}"] + delta[f"minbft_suspected_{reason}"]))}
    if why:
        row.update(suspected_why=why)
    if delta["minbft_primary_stalled"]:
        row.update(primaries_stalled=int(delta["minbft_primary_stalled"]))
    return row


def accounts_by_group(groups: int, per_group: int) -> list[list[str]]:
    """``per_group`` account names living in each group (searched by slot)."""
    slots = SlotMap.even(groups)
    found: list[list[str]] = [[] for _ in range(groups)]
    index = 0
    while min(len(names) for names in found) < per_group:
        name = f"acct{index}"
        group = slots.group_of(name.encode())
        if len(found[group]) < per_group:
            found[group].append(name)
        index += 1
    return found


async def fund(client: TxnClient, names: list[str]) -> None:
    """Give every account a balance, once (``check`` version 0: a retry of an
    attempt that committed unseen aborts ``version``, and that is done too)."""
    for start in range(0, len(names), 16):
        chunk = names[start : start + 16]
        for _ in range(50):  # the groups may still be electing their leaders
            try:
                async with client.transaction() as t:
                    for name in chunk:
                        t.check(name, 0)
                        t.add(name, 1_000_000)
                break
            except TransactionAborted as error:
                if error.reason == "version":
                    break
                await asyncio.sleep(0.05)
            except TransactionUnknown:
                await asyncio.sleep(0.5)


async def measure(addresses: list[Any], accounts: list[list[str]], clients: int,
                  shape: str, seconds: float, replies: int = 1) -> dict[str, Any]:
    latencies: list[float] = []
    counts = {"committed": 0, "aborted": 0, "unknown": 0}
    deadline = time.monotonic() + seconds
    groups = len(accounts)

    async def worker(index: int) -> None:
        client = await TxnClient.connect(addresses, timeout_s=10.0, replies=replies)
        step = index
        while time.monotonic() < deadline:
            step += 1
            first = step % groups
            second = (first + 1) % groups if shape == "cross" else first
            names_a, names_b = accounts[first], accounts[second]
            a = names_a[(step * 7) % len(names_a)]
            b = names_b[(step * 13 + 1) % len(names_b)]
            if a == b:
                continue
            started = time.monotonic()
            try:
                async with client.transaction() as t:
                    t.add(a, -1)
                    t.add(b, 1)
                latencies.append(time.monotonic() - started)
                counts["committed"] += 1
            except TransactionAborted:
                counts["aborted"] += 1
            except TransactionUnknown:
                counts["unknown"] += 1
        await client.close()

    elapsed = await run_workers(worker, clients)
    return {
        "clients": clients, "shape": shape, "replies": replies,
        "committed_per_s": round(counts["committed"] / elapsed, 1),
        "aborts_per_commit": round(counts["aborted"] / max(1, counts["committed"]), 2),
        "unknown": counts["unknown"], **percentiles(latencies),
    }


async def run_workers(worker: Any, clients: int) -> float:
    """Run ``clients`` workers to the end; the seconds they took."""
    started = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    return time.monotonic() - started


def percentiles(latencies: list[float]) -> dict[str, float | None]:
    ordered = sorted(latencies)
    if not ordered:
        return {"p50_ms": None, "p99_ms": None}
    return {"p50_ms": round(1000 * statistics.median(ordered), 1),
            "p99_ms": round(1000 * ordered[int(0.99 * (len(ordered) - 1))], 1)}


async def measure_redis(port: int, accounts: list[list[str]], clients: int, shape: str,
                        seconds: float) -> dict[str, Any]:
    import redis.asyncio as aioredis
    from redis import RedisError

    latencies: list[float] = []
    counts = {"done": 0, "errors": 0}
    groups = len(accounts)
    deadline = time.monotonic() + seconds

    async def worker(index: int) -> None:
        client = aioredis.Redis(host="127.0.0.1", port=port, socket_timeout=30.0)
        step = index
        while time.monotonic() < deadline:
            step += 1
            first = step % groups
            second = (first + 1) % groups if shape == "multi-cross" else first
            a = accounts[first][(step * 7) % len(accounts[first])]
            b = accounts[second][(step * 13 + 1) % len(accounts[second])]
            if shape == "multi-1":  # two keys of one slot: one group, one command
                a, b = "{" + a + "}x", "{" + a + "}y"
            started = time.monotonic()
            try:
                if shape == "get-set":
                    await client.incrby(a, 1)
                else:
                    pipe = client.pipeline(transaction=True)
                    pipe.decrby(a, 1)
                    pipe.incrby(b, 1)
                    await pipe.execute()
                latencies.append(time.monotonic() - started)
                counts["done"] += 1
            except RedisError:
                counts["errors"] += 1
        await client.aclose()

    elapsed = await run_workers(worker, clients)
    return {
        "clients": clients, "shape": shape,
        "per_s": round(counts["done"] / elapsed, 1), "errors": counts["errors"],
        **percentiles(latencies),
    }


def nodes_of(args: argparse.Namespace, protocol: str) -> int:
    return int(args.nodes) if args.nodes is not None else PROTOCOLS[protocol][1]


def parse_params(text: str) -> dict[str, int]:
    """``"fill=1,notice_us=1000"`` -> ``{"fill": 1, "notice_us": 1000}`` ("" -> {})."""
    found: dict[str, int] = {}
    for item in filter(None, text.split(",")):
        key, equals, value = item.partition("=")
        if not equals:
            raise SystemExit(f"--params: {item!r} is not key=value")
        found[key] = int(value)
    return found


def redis_rows(args: argparse.Namespace, protocol: str, params: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    store, nodes = PROTOCOLS[protocol][0], nodes_of(args, protocol)
    sections: dict[str, dict[str, Any]] = {
        **FAST, "host": {"client_service": "resp"},
        "protocol.params": {"groups": TXN_GROUPS_DEFAULT, **parse_params(params)},
        "service": {"request_timeout_ms": 20_000},
    }
    through = args.through
    with tempfile.TemporaryDirectory() as directory:
        cluster = LocalCluster(Path(directory), protocol=store, nodes=nodes,
                               sections=sections, metrics=True,
                               auth="ed25519" if "gateway" in through else "hmac")
        gateway: subprocess.Popen[bytes] | None = None
        try:
            cluster.start_all()
            ports = {"node": cluster.cluster.nodes[0].client.port}
            asyncio.run(redis_ready(ports["node"]))
            if "gateway" in through:
                ports["gateway"] = free_ports(1)[0]
                gateway = subprocess.Popen(
                    [sys.executable, "-m", "replicaio.cli", "kv", "gateway", "--cluster",
                     str(cluster.config_path), "--port", str(ports["gateway"])],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
                asyncio.run(redis_ready(ports["gateway"]))
            for contention, per_group in (("low", args.accounts), ("high", 2)):
                if contention not in args.contention:
                    continue
                accounts = accounts_by_group(TXN_GROUPS_DEFAULT, per_group)
                for clients in args.clients:
                    for shape in args.redis_shapes:
                        for via in through:
                            before, started = events_of(cluster), time.monotonic()
                            row = asyncio.run(measure_redis(ports[via], accounts, clients,
                                                            shape, args.seconds))
                            with_events(row, before, events_of(cluster),
                                        time.monotonic() - started, nodes)
                            row.update(protocol=store, nodes=nodes, contention=contention,
                                       through=via, params=params,
                                       cluster_protocol=cluster.cluster.protocol)
                            rows.append(row)
                            if not args.json:
                                print(row, flush=True)
        finally:
            if gateway is not None:
                gateway.kill()
                gateway.wait(10)
            cluster.close()
    return rows


async def redis_ready(port: int) -> None:
    """Wait until every group answers (a leader each)."""
    import redis.asyncio as aioredis
    from redis import RedisError

    client = aioredis.Redis(host="127.0.0.1", port=port, socket_timeout=10.0)
    keys = [names[0] for names in accounts_by_group(TXN_GROUPS_DEFAULT, 1)]
    for _ in range(300):
        try:
            for key in keys:
                await client.get(key)
            break
        except RedisError:
            await asyncio.sleep(0.2)
    await client.aclose()


def api_rows(args: argparse.Namespace, protocol: str, params: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    nodes = nodes_of(args, protocol)
    sections: dict[str, dict[str, Any]] = {**FAST}
    if params:
        sections["protocol.params"] = {"groups": TXN_GROUPS_DEFAULT, **parse_params(params)}
    with tempfile.TemporaryDirectory() as directory:
        cluster = LocalCluster(Path(directory), protocol=protocol, nodes=nodes, sections=sections,
                               metrics=True)
        try:
            cluster.start_all()
            addresses = [entry.client for entry in cluster.cluster.nodes]
            for contention, per_group in (("low", args.accounts), ("high", 2)):
                if contention not in args.contention:
                    continue
                accounts = accounts_by_group(TXN_GROUPS_DEFAULT, per_group)

                async def fund_all(accounts: list[list[str]] = accounts) -> None:
                    funder = await TxnClient.connect(addresses)
                    await fund(funder, [name for names in accounts for name in names])
                    await funder.close()

                # Once per contention (a million each, a row moves at most a few
                # thousand): funding 3,000 accounts before every row took longer
                # than the row on BFT groups.
                asyncio.run(fund_all())
                for clients in args.clients:
                    for shape in args.shapes:
                        for replies in args.replies:
                            before, started = events_of(cluster), time.monotonic()
                            row = asyncio.run(measure(addresses, accounts, clients, shape,
                                                      args.seconds, replies))
                            with_events(row, before, events_of(cluster),
                                        time.monotonic() - started, nodes)
                            row.update(protocol=protocol, nodes=nodes, contention=contention,
                                       params=params, cluster_protocol=cluster.cluster.protocol)
                            rows.append(row)
                            if not args.json:
                                print(row, flush=True)
        finally:
            cluster.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=None,
                        help="nodes per cluster (default: 3, or 4 for txn-pbft)")
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--accounts", type=int, default=1000, help="per group, low contention")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--front", choices=("api", "redis"), default="api",
                        help="the Python API over the protocol, or redis-py over its "
                        "Redis store (txn-kv, txn-kv-pbft, txn-kv-minbft)")
    parser.add_argument("--protocol", choices=tuple(PROTOCOLS), nargs="+", default=["txn"],
                        help="the groups: Raft, PBFT or MinBFT; several run one after "
                        "the other in one invocation")
    parser.add_argument("--replies", type=int, nargs="+", default=[1],
                        help="TxnClient(replies=R) for each R, side by side (f+1: a BFT client)")
    parser.add_argument("--contention", choices=("low", "high"), nargs="+",
                        default=["low", "high"])
    parser.add_argument("--shapes", choices=("single", "cross"), nargs="+",
                        default=["single", "cross"])
    parser.add_argument("--redis-shapes", choices=REDIS_SHAPES, nargs="+",
                        default=list(REDIS_SHAPES), help="the shapes of --front redis")
    parser.add_argument("--through", choices=("node", "gateway"), nargs="+", default=["node"],
                        help="--front redis: on node 0's port, through a `kv gateway` "
                        "process, or both side by side")
    parser.add_argument("--params", nargs="+", default=[""],
                        help="the cluster file's [protocol.params] besides groups, as "
                        "key=value,...: each its own cluster, one after the other, for "
                        "--rounds rounds ('' = none: the live defaults)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every --params cluster this many times, in turn")
    args = parser.parse_args(argv)
    started = time.time()
    rows: list[dict[str, Any]] = []
    for protocol in args.protocol:
        for round_ in range(args.rounds):
            for params in args.params:
                measured = (redis_rows(args, protocol, params) if args.front == "redis"
                            else api_rows(args, protocol, params))
                for row in measured:
                    row["round"] = round_ + 1
                rows += measured
    if args.json:
        print(json.dumps({"load": os.getloadavg(), "python": sys.version.split()[0],
                          "started": time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                   time.gmtime(started)),
                          "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
