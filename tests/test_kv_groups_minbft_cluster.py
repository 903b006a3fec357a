"""A sharded Redis store over MinBFT groups (protocol ``txn-kv-minbft``): what is
MinBFT's own, a USIG per group (ADR 0031) wiped in one group and admitted again,
with three node processes on 127.0.0.1. What the store does on MinBFT groups as on
PBFT groups (MULTI/EXEC, WATCH and redis-cli across groups, transfers through a
kill) is tested on both by ``test_kv_groups_bft_cluster.py``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis
from test_kv_groups_bft_cluster import DEADLINE_S, GROUPS, SECTIONS, ports, until_serving
from test_kv_groups_cluster import connect, key_in, leader_of
from test_kv_minbft_usig_recovery import wait_for_counter

from replicaio.core.errors import UsageError
from replicaio.core.stream import GROUP_PATH
from replicaio.runtime.config import load_cluster_file
from replicaio.runtime.kv.usig_admission import admit_group_usig_epochs, admit_usig_epoch
from replicaio.runtime.local import LocalCluster
from replicaio.storage.file import FileStorage
from replicaio.testing.live import core_counters

GROUP_KEY = f"s{GROUP_PATH}"  # a group's slice of a node's storage: "sgroup/i<g>/..."


def test_a_wiped_usig_of_one_group_is_admitted_in_that_group_and_the_node_serves_again(
        tmp_path: Path) -> None:
    """Node 2's USIG of group 1 is wiped while it is down (its other groups'
    USIGs and every group's data intact). ``kv admit-usig --group 1`` admits
    epoch 1 of that group's USIG only (an admission naming group 1); without
    ``--group`` the command refuses (which groups lost their USIG is the
    operator's to verify: admitting an intact one would give the node a second
    counter). Restarted, node 2's group-1 replica starts the new epoch, its
    peers switch to it, it withholds until it recovered, then votes: with the
    third node killed, node 2 and group 1's primary alone (f+1) serve group 1."""
    cluster = LocalCluster(tmp_path / "cluster", protocol="txn-kv-minbft", nodes=3,
                           sections=SECTIONS, auth="ed25519", metrics=True)
    stop = threading.Event()
    written = [0]

    def write_group_1() -> None:  # keeps group 1 moving, so node 2 can recover
        client = connect(ports(cluster)[0])
        while not stop.is_set():
            try:
                client.set(key_in(1, f"w{written[0] % 8}"), str(written[0]))
                written[0] += 1
            except redis.RedisError:
                time.sleep(0.1)
        client.close()

    writer = threading.Thread(target=write_group_1, daemon=True)
    try:
        cluster.start_all()
        until_serving(cluster)
        cluster.kill(2)
        with FileStorage(cluster.cluster.nodes[2].data_dir) as storage:
            usigs = [key for key in storage.recover()
                     if key.startswith(f"{GROUP_KEY}/i1/") and key.endswith("#usig")]
            assert len(usigs) == 1, usigs
            storage.delete(usigs[0])  # group 1's USIG state gone
            storage.sync()
        with pytest.raises(UsageError, match="--group"):
            admit_usig_epoch(cluster.config_path, 2)
        with pytest.raises(UsageError, match="no group 3"):
            admit_group_usig_epochs(cluster.config_path, 2, GROUPS)
        assert admit_group_usig_epochs(cluster.config_path, 2, 1) == {1: 1}
        admitted = load_cluster_file(cluster.config_path).nodes[2]
        assert [(group, epoch) for group, epoch, _ in admitted.usig_groups] == [(1, 1)]
        writer.start()
        cluster.start(2)
        cluster.wait_ready([2])
        wait_for_counter(cluster, 2, "minbft_usig_new_epoch", "group 1's new USIG")
        for peer in (0, 1):
            wait_for_counter(cluster, peer, "minbft_stream_epoch_switched", "peer switch")
        wait_for_counter(cluster, 2, "minbft_recovered_usig", "recovery")
        counters = core_counters(cluster, 2)
        assert counters.get("minbft_usig_new_epoch") == 1  # group 1's only
        assert counters.get("minbft_usig_admission_invalid", 0) == 0
        stop.set()
        writer.join(timeout=30)
        # The node that is neither node 2 nor group 1's primary is killed: a
        # commit needs f+1 = 2 replicas, so group 1 moves only if node 2's
        # replica votes again. (Not its primary: a group whose primary is down
        # changes views only when f+1 backups have something pending, and a
        # node's in-node calls go to its own replica only: Not yet, docs.)
        primary = leader_of(cluster, 1, [0, 1, 2])
        victim = 1 if primary != 1 else 0
        survivor = 1 - victim
        cluster.kill(victim)
        client = connect(ports(cluster)[survivor])
        deadline = time.monotonic() + DEADLINE_S
        for index in range(20):
            while True:
                try:
                    client.set(key_in(1, f"after{index}"), str(index))
                    break
                except redis.RedisError:
                    assert time.monotonic() < deadline, f"group 1 stalled; primary {primary}"
                    time.sleep(0.3)
        assert client.get(key_in(1, "after19")) == "19"
        client.close()
    finally:
        stop.set()
        cluster.close()
