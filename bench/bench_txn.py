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
latency of committed ones (p50, p99). Nothing is asserted: figures go to
docs/benchmarks.md with the machine's load.

    .venv/bin/python bench/bench_txn.py --seconds 10 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from replicaio.assembly import TXN_GROUPS_DEFAULT
from replicaio.runtime.local import LocalCluster
from replicaio.runtime.txn_client import TransactionAborted, TransactionUnknown, TxnClient
from replicaio.services.txn.slots import SlotMap

FAST = {"transport": {"reconnect_delay_ms_min": 10, "reconnect_delay_ms_max": 200}}


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
                  shape: str, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    counts = {"committed": 0, "aborted": 0, "unknown": 0}
    deadline = time.monotonic() + seconds
    groups = len(accounts)

    async def worker(index: int) -> None:
        client = await TxnClient.connect(addresses, timeout_s=10.0)
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

    started = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    elapsed = time.monotonic() - started
    ordered = sorted(latencies)
    return {
        "clients": clients, "shape": shape,
        "committed_per_s": round(counts["committed"] / elapsed, 1),
        "aborts_per_commit": round(counts["aborted"] / max(1, counts["committed"]), 2),
        "unknown": counts["unknown"],
        "p50_ms": round(1000 * statistics.median(ordered), 1) if ordered else None,
        "p99_ms": round(1000 * ordered[int(0.99 * (len(ordered) - 1))], 1) if ordered else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--accounts", type=int, default=1000, help="per group, low contention")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        cluster = LocalCluster(Path(directory), protocol="txn", nodes=args.nodes,
                               sections=FAST)
        try:
            cluster.start_all()
            addresses = [entry.client for entry in cluster.cluster.nodes]
            for contention, per_group in (("low", args.accounts), ("high", 2)):
                accounts = accounts_by_group(TXN_GROUPS_DEFAULT, per_group)

                async def run_one(clients: int, shape: str,
                                  accounts: list[list[str]] = accounts) -> dict[str, Any]:
                    funder = await TxnClient.connect(addresses)
                    await fund(funder, [name for names in accounts for name in names])
                    await funder.close()
                    return await measure(addresses, accounts, clients, shape, args.seconds)

                for clients in args.clients:
                    for shape in ("single", "cross"):
                        row = asyncio.run(run_one(clients, shape))
                        row["contention"] = contention
                        rows.append(row)
                        if not args.json:
                            print(row, flush=True)
        finally:
            cluster.close()
    if args.json:
        print(json.dumps({"load": os.getloadavg(), "python": sys.version.split()[0],
                          "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
