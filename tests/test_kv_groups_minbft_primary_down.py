"""A MinBFT group whose primary is down serves writes through one backup's port.

``kv up --groups 3 --protocol minbft`` (protocol ``txn-kv-minbft``), three node
processes on 127.0.0.1; node 0, the primary of view 0 of every group, is
killed with SIGKILL and stays down; every write then comes through node 1's
Redis port. Node 1's replica of each group relays the write to the dead
primary and is the only replica waiting for it; before 2026-12-06 its
request for a view change was the only one (not f+1), node 2 waited for
nothing, and no write answered for a minute (found live). Now node 1 forwards
its waiting batches to node 2 when it suspects the primary, node 2 times them
too, and each group moves to view 1 (docs/minbft.md, *A lone suspicion*;
simulated in ``tests/test_primary_down_one_front.py``). The same on a single
MinBFT group, whose node fronts call their own replica too.
"""

from __future__ import annotations

import time
from pathlib import Path

import redis
from test_kv_groups_bft_cluster import GROUPS, SECTIONS, ports, until_serving
from test_kv_groups_cluster import connect, key_in
from test_kv_service_cluster import SECTIONS as SINGLE_SECTIONS

from replicaio.runtime.local import LocalCluster

# Generous: a bound on a stall, not a performance figure (the view change takes
# about a second on a quiet machine; the suite runs on a loaded one).
DEADLINE_S = 180.0


def write_every_group(client: redis.Redis, round_number: int, deadline: float) -> None:
    """A SET in every group through ``client``'s node, each retried until it answers."""
    for group in range(GROUPS):
        set_until_answered(client, key_in(group, f"down{round_number}-"), str(round_number),
                           deadline)


def test_writes_through_a_backup_complete_with_every_groups_primary_killed(
        tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "cluster", protocol="txn-kv-minbft", nodes=3,
                           sections=SECTIONS)
    try:
        cluster.start_all()
        until_serving(cluster, node=1)
        cluster.kill(0)  # the primary of view 0 of every group, down for good
        client = connect(ports(cluster)[1])
        deadline = time.monotonic() + DEADLINE_S
        for round_number in range(3):
            write_every_group(client, round_number, deadline)
        other = connect(ports(cluster)[2])  # node 2's replicas executed them too
        keys = [key_in(group, "down2-") for group in range(GROUPS)]
        for key in keys:
            while other.get(key) != "2":
                assert time.monotonic() < deadline, f"{key} not on node 2"
                time.sleep(0.2)
        client.close()
        other.close()
    finally:
        cluster.close()


def test_writes_through_a_backup_of_a_single_minbft_group_complete_with_its_primary_killed(
        tmp_path: Path) -> None:
    """The same shape on a single MinBFT group (``kv up --protocol minbft``): the
    clients of node 1's Redis port are node 1's in-node clients too."""
    cluster = LocalCluster(tmp_path / "cluster", protocol="minbft", nodes=3,
                           sections=SINGLE_SECTIONS)
    try:
        cluster.start_all()
        deadline = time.monotonic() + DEADLINE_S
        client = connect(ports(cluster)[1])
        set_until_answered(client, "before", "0", deadline)
        cluster.kill(0)  # the primary of view 0, down for good
        for round_number in range(3):
            set_until_answered(client, f"single{round_number}", str(round_number), deadline)
        client.close()
    finally:
        cluster.close()


def set_until_answered(client: redis.Redis, key: str, value: str, deadline: float) -> None:
    while True:
        try:
            assert client.set(key, value)
            return
        except redis.RedisError:  # TRYAGAIN, UNKNOWN, a timeout: the group changes views
            assert time.monotonic() < deadline, f"{key}: no write answered"
            time.sleep(0.2)
