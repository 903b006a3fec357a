"""Live certified transactions over PBFT groups: four node processes on 127.0.0.1 host
three PBFT groups each (keyed-hash node signatures); every vote, decision and acknowledgement
that moves a group carries a certificate of f+1 replicas' signed answers, collected
over TCP (``replicaio.smr.certified``). Clients of the Python API transfer between
accounts in different groups while one node is killed with -9 and restarted: the
bank total holds, transfers commit, and no replica of any group holds a lock."""

from __future__ import annotations

import asyncio
from pathlib import Path

from test_txn_cluster import (
    ACCOUNTS,
    BALANCE,
    FAST,
    counted_transfer,
    deposit,
    kill_and_restart,
    read_all,
    run_live,
    start_transfers,
    until,
)

from replicaio.runtime.local import LocalCluster
from replicaio.runtime.txn_client import TransactionAborted, TxnClient


async def scenario(cluster: LocalCluster) -> dict[str, int]:
    addresses = [entry.client for entry in cluster.cluster.nodes]
    watcher = await TxnClient.connect(addresses, timeout_s=10.0)
    await watcher.watch()
    await deposit(watcher)
    counts = {"committed": 0, "aborted": 0, "unknown": 0}
    stop = asyncio.Event()
    workers = start_transfers(addresses, 3, stop, counts, timeout_s=10.0, pause_s=0.02)
    await until(lambda: counts["committed"] >= 5, "certified transfers")
    await kill_and_restart(cluster, 3, counts)
    stop.set()
    await asyncio.gather(*workers)
    balances = await read_all(watcher)
    assert sum(balances) == BALANCE * len(ACCOUNTS), balances
    await watcher.watch()
    # n - f replicas of each group with nothing held (a PBFT replica left behind in
    # an idle group need not catch up: docs/transactions.md).
    await until(lambda: sum(1 for (node, group), report in watcher.reports.items()
                            if not (report.locks or report.prepared)) >= 9,
                "the replicas to release their locks")
    await watcher.close()
    return counts


def test_certified_transfers_over_pbft_groups(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, protocol="txn-pbft", nodes=4, sections=FAST)
    counts = run_live(cluster, lambda: scenario(cluster), "live certified transfers")
    assert counts["committed"] >= 5


LIAR = 3
BEHAVIOUR = "txn_lying_driver+txn_altering_driver"


async def outvoting(cluster: LocalCluster) -> dict[str, int]:
    addresses = [entry.client for entry in cluster.cluster.nodes]
    # f + 1 = 2 matching answers of the four nodes, every attempt sent to all.
    client = await TxnClient.connect(addresses, timeout_s=10.0, replies=2)
    await client.watch()
    await deposit(client)
    # The Byzantine node alone tells a client that an overdraft committed...
    fooled = await TxnClient.connect([addresses[LIAR]], timeout_s=10.0)
    async with fooled.transaction() as t:
        t.add(ACCOUNTS[0], -10 * BALANCE)
        t.add(ACCOUNTS[1], 10 * BALANCE)
    await fooled.close()
    # ... the same overdraft, asked of every node, is refused on f + 1 answers.
    try:
        async with client.transaction() as t:
            t.add(ACCOUNTS[0], -10 * BALANCE)
            t.add(ACCOUNTS[1], 10 * BALANCE)
        raise AssertionError("an overdraft committed")
    except TransactionAborted as error:
        assert error.reason == "insufficient", error.reason
    counts = {"committed": 0, "aborted": 0, "unknown": 0}
    for step in range(40):  # transfers, every one driven by the altering liar too
        source, target = ACCOUNTS[step % 6], ACCOUNTS[(step + 1 + step // 6) % 6]
        await counted_transfer(client, source, target, counts)
        if counts["committed"] >= 8:
            break
    balances = await read_all(client)
    assert sum(balances) == BALANCE * len(ACCOUNTS), balances
    counts["outvoted"] = client.outvoted[LIAR]
    await client.close()
    return counts


def test_an_f_plus_1_client_outvotes_a_lying_altering_driver(tmp_path: Path) -> None:
    """Node 3 runs live as a Byzantine driver that alters what its clients ask and
    lies about outcomes (``replicaio node --byzantine``; its replicas stay honest).
    A client asking it alone is told an overdraft committed; a client asking every
    node and accepting f + 1 matching answers is told it aborted, and its
    transfers, each also driven (altered) by node 3, keep the bank total: every
    group refuses operations its client did not sign."""
    cluster = LocalCluster(tmp_path, protocol="txn-pbft", nodes=4, sections=FAST)

    def start(cluster: LocalCluster) -> None:
        for node in range(4):
            cluster.start(node, byzantine=BEHAVIOUR if node == LIAR else None)
        cluster.wait_ready(range(4))

    counts = run_live(cluster, lambda: outvoting(cluster),
                      "live f+1 client against a lying altering driver:", start)
    assert counts["committed"] >= 1
