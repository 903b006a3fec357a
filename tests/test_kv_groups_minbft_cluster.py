"""A sharded Redis store over MinBFT groups (protocol ``txn-kv-minbft``, ``kv up
--groups 3 --protocol minbft``): three node processes on 127.0.0.1, each
hosting a replica of three MinBFT groups with a USIG per group (ADR 0031:
one Ed25519 key per node, the group in what each USIG certifies), through
redis-py and redis-cli on the nodes' own Redis ports. As
``test_kv_groups_pbft_cluster.py`` (which says what a node's front does on
BFT groups), with n = 2f+1 = 3.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from test_kv_groups_cluster import connect, key_in, leader_of, transfers_through_a_kill
from test_kv_minbft_usig_recovery import core_counters, wait_for_counter

from replicaio.core.errors import UsageError
from replicaio.core.stream import GROUP_PATH
from replicaio.runtime.config import load_cluster_file
from replicaio.runtime.kv.usig_admission import admit_group_usig_epochs, admit_usig_epoch
from replicaio.runtime.local import LocalCluster
from replicaio.storage.file import FileStorage

GROUPS = 3
DEADLINE_S = 60.0
SECTIONS: dict[str, dict[str, Any]] = {
    "protocol.params": {"groups": GROUPS},
    "node": {"tick_us": 10_000},
    "transport": {"reconnect_delay_ms_min": 10, "reconnect_delay_ms_max": 200},
    "host": {"client_service": "resp", "fsync": False},
    "service": {"retry_after_ms": 300, "retry_backoff_ms": 20, "request_timeout_ms": 8000},
}
ACCOUNTS = [key_in(group, f"mbft{index}-") for index in range(2) for group in range(GROUPS)]
BALANCE = 100
GROUP_KEY = f"s{GROUP_PATH}"  # a group's slice of a node's storage: "sgroup/i<g>/..."


def ports(cluster: LocalCluster) -> list[int]:
    return [entry.client.port for entry in cluster.cluster.nodes]


def until_serving(cluster: LocalCluster, node: int = 0) -> None:
    """A write in every group answers through ``node``'s front."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            client = connect(ports(cluster)[node])
            for group in range(GROUPS):
                client.set(key_in(group, "probe"), "1")
            client.close()
            return
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    made = LocalCluster(tmp_path_factory.mktemp("minbft-groups"), protocol="txn-kv-minbft",
                        nodes=3, sections=SECTIONS)
    try:
        made.start_all()
        until_serving(made)
        yield made
    finally:
        made.close()


def test_transactions_across_minbft_groups_apply_whole(cluster: LocalCluster) -> None:
    client = connect(ports(cluster)[1])
    keys = [key_in(group, "multi") for group in range(GROUPS)]
    assert client.mset({key: str(index) for index, key in enumerate(keys)})
    assert client.mget(keys) == ["0", "1", "2"]
    a, b, c = (key_in(group, "tx") for group in range(GROUPS))
    client.set(c, "seen")
    pipe = client.pipeline(transaction=True)
    pipe.set(a, 10).incrby(b, 5).get(c).rpush(a + "-list", "x", "y").get(a)
    assert pipe.execute() == [True, 5, "seen", 2, "10"]
    other = connect(ports(cluster)[2])  # another node's replicas executed the same
    assert other.mget([a, b]) == ["10", "5"]
    assert other.lrange(a + "-list", 0, -1) == ["x", "y"]


def test_watch_across_minbft_groups_aborts_on_a_change(cluster: LocalCluster) -> None:
    client = connect(ports(cluster)[0])
    other = connect(ports(cluster)[2])
    a, b = key_in(0, "watch"), key_in(2, "watch")
    client.mset({a: "1", b: "1"})
    pipe = client.pipeline(transaction=True)
    pipe.watch(a, b)
    other.set(b, "changed")
    pipe.multi()
    pipe.set(a, "mine").set(b, "mine")
    with pytest.raises(redis.WatchError):
        pipe.execute()
    assert client.mget([a, b]) == ["1", "changed"]


def test_redis_cli_multi_exec_across_minbft_groups(cluster: LocalCluster) -> None:
    redis_cli = shutil.which("redis-cli")
    assert redis_cli is not None, "redis-cli is part of the test environment"
    a, b = key_in(0, "cli"), key_in(1, "cli")
    script = f"MULTI\nSET {a} 1\nINCRBY {b} 7\nGET {a}\nEXEC\n"
    done = subprocess.run([redis_cli, "-p", str(ports(cluster)[2])], input=script.encode(),
                          capture_output=True, timeout=60, check=True)
    assert done.stdout.decode().split() == ["OK", "QUEUED", "QUEUED", "QUEUED", "OK", "7", "1"]


def test_transfers_across_minbft_groups_keep_the_total_through_a_kill(
        cluster: LocalCluster) -> None:
    transfers_through_a_kill(cluster, ACCOUNTS, BALANCE, kill=2, label="MinBFT",
                             deadline_s=DEADLINE_S)



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
