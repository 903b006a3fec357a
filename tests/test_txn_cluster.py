"""Live transactions across groups: three node processes on 127.0.0.1 host three Raft
groups each; clients of the Python API (``async with client.transaction()``) move money
between accounts in different groups while the leader of one group and then of
another are killed with -9 and restarted. The bank total holds, every client commits,
and once the leases run out no replica of any group holds a lock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from replicaio.runtime.config import Address
from replicaio.runtime.local import LocalCluster
from replicaio.runtime.txn_client import (
    Transaction,
    TransactionAborted,
    TransactionUnknown,
    TxnClient,
)
from replicaio.services.txn.slots import SlotMap

FAST = {
    "node": {"tick_us": 10_000},
    "transport": {"reconnect_delay_ms_min": 10, "reconnect_delay_ms_max": 200},
}
ACCOUNTS = [f"a{i}" for i in range(6)]
BALANCE = 100
DEADLINE_S = 60.0


def test_accounts_span_groups() -> None:
    assert {SlotMap.even(3).group_of(a.encode()) for a in ACCOUNTS} == {0, 1, 2}


async def until(condition: object, what: str, timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def read_all(client: TxnClient) -> list[int]:
    handles: list[int] = []

    def body(t: Transaction) -> None:
        handles.clear()
        handles.extend(t.read(account) for account in ACCOUNTS)

    for _ in range(50):
        try:
            done = await client.run(body)
            return [done.value(handle) or 0 for handle in handles]
        except TransactionUnknown:
            await asyncio.sleep(0.1)
    raise AssertionError("no read of every account committed")


async def deposit(watcher: TxnClient) -> None:
    """Every account gets its opening balance, once (a retry after an unknown
    first attempt finds it done and aborts on the version check)."""

    def body(t: Transaction) -> None:
        for account in ACCOUNTS:
            t.check(account, 0)
            t.add(account, BALANCE)

    try:
        await watcher.run(body)
    except TransactionAborted as error:
        assert error.reason == "version"


async def transfer_worker(addresses: list[Address], index: int, stop: asyncio.Event,
                          counts: dict[str, int], *, timeout_s: float,
                          pause_s: float) -> None:
    """Transfers of 1 between accounts of different groups until ``stop``, each
    outcome counted (``committed``, ``aborted``: pause, ``unknown``)."""
    client = await TxnClient.connect(addresses, timeout_s=timeout_s)
    step = 0
    while not stop.is_set():
        step += 1
        source, target = ACCOUNTS[(index + step) % 6], ACCOUNTS[(index + 2 * step + 1) % 6]
        if source == target:
            continue
        if await counted_transfer(client, source, target, counts) == "aborted":
            await asyncio.sleep(pause_s)
    await client.close()


async def counted_transfer(client: TxnClient, source: str, target: str,
                           counts: dict[str, int]) -> str:
    """Move 1 from ``source`` to ``target`` in one transaction; its outcome
    (``committed``, ``aborted``, ``unknown``), counted in ``counts``."""
    try:
        async with client.transaction() as t:
            t.add(source, -1)
            t.add(target, 1)
        outcome = "committed"
    except TransactionAborted:
        outcome = "aborted"
    except TransactionUnknown:
        outcome = "unknown"
    counts[outcome] += 1
    return outcome


def start_transfers(addresses: list[Address], workers: int, stop: asyncio.Event,
                    counts: dict[str, int], *, timeout_s: float,
                    pause_s: float) -> list[asyncio.Task[None]]:
    """``workers`` clients running ``transfer_worker`` until ``stop``."""
    return [asyncio.get_running_loop().create_task(transfer_worker(
        addresses, index, stop, counts, timeout_s=timeout_s, pause_s=pause_s))
        for index in range(workers)]


async def kill_and_restart(cluster: LocalCluster, node: int, counts: dict[str, int]) -> None:
    """Kill ``node`` with -9, start it again a second later, and wait until it is
    ready and one more transfer committed."""
    cluster.kill(node)
    await asyncio.sleep(1.0)
    cluster.start(node)
    await asyncio.to_thread(cluster.wait_ready, [node])
    before = counts["committed"]
    await until(lambda: counts["committed"] > before, "a transfer after the restart")


def run_live(
    cluster: LocalCluster, scenario: Callable[[], Coroutine[Any, Any, dict[str, int]]],
    what: str, start: Callable[[LocalCluster], None] = LocalCluster.start_all,
) -> dict[str, int]:
    """The counts of ``scenario`` run on ``cluster`` once ``start`` started its
    nodes, printed with ``what`` and the time it took; the cluster is closed
    after, whatever happens."""
    try:
        start(cluster)
        started = time.monotonic()
        counts = asyncio.run(scenario())
        print(f"{what} {counts} in {time.monotonic() - started:.1f} s")
        return counts
    finally:
        cluster.close()


async def scenario(cluster: LocalCluster) -> dict[str, int]:
    addresses = [entry.client for entry in cluster.cluster.nodes]
    watcher = await TxnClient.connect(addresses, timeout_s=5.0)
    await watcher.watch()
    await deposit(watcher)
    counts = {"committed": 0, "aborted": 0, "unknown": 0}
    stop = asyncio.Event()
    workers = start_transfers(addresses, 4, stop, counts, timeout_s=5.0, pause_s=0.01)
    await until(lambda: counts["committed"] >= 5, "transfers before the kills")
    for group in (0, 1):  # a coordinator's leader, then a participant's (another group)
        await until(lambda g=group: g in watcher.leaders, f"group {group}'s leader")
        await kill_and_restart(cluster, watcher.leaders[group][1], counts)
    stop.set()
    await asyncio.gather(*workers)
    balances = await read_all(watcher)
    assert sum(balances) == BALANCE * len(ACCOUNTS), balances
    assert all(balance >= 0 for balance in balances), balances
    await watcher.watch()  # reconnect to the restarted nodes
    await until(lambda: len(watcher.reports) == 9 and not watcher.held(),
                "every replica of every group to release its locks")
    await watcher.close()
    return counts


def test_bank_total_holds_with_leaders_killed(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, protocol="txn", nodes=3, sections=FAST)
    counts = run_live(cluster, lambda: scenario(cluster), "live transfers")
    assert counts["committed"] >= 10
