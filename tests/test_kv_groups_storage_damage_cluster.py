"""A node of several groups whose log is damaged in its middle (issue 12): three
node processes on 127.0.0.1 (``txn-kv``, three Raft groups on every node),
real files and fsync.

A node's groups share one storage, so its write-ahead log interleaves every
group's records. The test stops a node, flips a byte in a record of group 1
in the middle of its log (later batches follow), and starts it again. The
store cuts the log back to its intact prefix (``FileStorage(repair=True)``,
now given to transactional clusters too: ``assembly.recovers_lost_state``
knows their factories), reports it, and every group's replica on the node
rejoins like a replaced disk: a new disk identity, no vote until its group's
leader caught it up and promoted it (``INFO groups``: ``group_<g>_recovering``).
The cluster keeps every key and the bank total, through the repaired node too,
and transfers across groups go on through it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import redis
from test_kv_groups_cluster import (
    ACCOUNTS,
    BALANCE,
    DEADLINE_S,
    GROUPS,
    SECTIONS,
    balance_of,
    connect,
    key_in,
    ports,
    until_serving,
    worker,
)
from test_kv_storage_damage_cluster import LATER_BATCHES_MIN, WARNING, records

from replicaio.core.node import Node
from replicaio.core.stream import GROUP_PATH
from replicaio.runtime.local import LocalCluster

LIVE_SECTIONS = {**SECTIONS, "host": {**SECTIONS["host"], "fsync": True}}
VICTIM = 2
DAMAGED_GROUP = 1
KIND = "damaged log cut back to its intact prefix"


def wait_for(condition: object, what: str, deadline_s: float = 2 * DEADLINE_S) -> None:
    assert callable(condition)
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            if condition():
                return
        except (redis.RedisError, OSError):
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def groups_info(cluster: LocalCluster, node: int) -> dict[str, int]:
    client = connect(ports(cluster)[node])
    try:
        return {key: int(value) for key, value in client.info("groups").items()}
    finally:
        client.close()


def caught_up(cluster: LocalCluster, node: int) -> bool:
    """``node`` applied, in every group, what that group's leader committed."""
    mine = groups_info(cluster, node)
    for group in range(GROUPS):
        leader = mine[f"group_{group}_leader"]
        if leader < 0:
            return False
        theirs = groups_info(cluster, leader)
        if mine[f"group_{group}_applied_index"] < theirs[f"group_{group}_commit_index"]:
            return False
    return True


def rejoined(cluster: LocalCluster, node: int) -> bool:
    found = groups_info(cluster, node)
    return all(found[f"group_{group}_recovering"] == 0 for group in range(GROUPS))


def write_keys(cluster: LocalCluster, node: int, model: dict[str, str], prefix: str) -> None:
    """SET keys of every group through ``node``, one at a time (many batches)."""
    client = connect(ports(cluster)[node])
    try:
        for number in range(12):
            for group in range(GROUPS):
                key = key_in(group, f"{prefix}-{number}-")
                value = f"v-{key}"
                assert client.set(key, value) is True
                model[key] = value
    finally:
        client.close()


def in_group(key: str, group: int) -> bool:
    """Whether storage key ``key`` is of ``group``'s replica (its path or below)."""
    path = Node.storage_key((GROUP_PATH, group), "")[:-1]  # without the '#'
    return key.startswith((path + "#", path + "/"))


def flip_in_group(directory: Path, group: int) -> str:
    """Flip a byte of a record of ``group`` in the middle of the node's last
    segment, with later batches after it; the record's key."""
    segment = sorted(directory.glob("wal-*.log"))[-1]
    found = records(segment)
    last = found[-1].batch
    candidates = [record for record in found
                  if in_group(record.key, group) and last >= record.batch + LATER_BATCHES_MIN]
    assert candidates, (segment, len(found), sorted({record.key[:24] for record in found}))
    middle = candidates[len(candidates) // 2]
    data = bytearray(segment.read_bytes())
    data[middle.end - 1] ^= 0x10
    segment.write_bytes(bytes(data))
    return middle.key


def check_keys(cluster: LocalCluster, node: int, model: dict[str, str]) -> None:
    client = connect(ports(cluster)[node])
    try:
        keys = sorted(model)
        for start in range(0, len(keys), 20):
            chunk = keys[start:start + 20]
            for key, value in zip(chunk, [client.get(key) for key in chunk], strict=True):
                assert value == model[key], (node, key, value)
    finally:
        client.close()


def bank_total(cluster: LocalCluster, node: int) -> int:
    client = connect(ports(cluster)[node])
    try:
        return sum(balance_of(value) for value in client.mget(ACCOUNTS))
    finally:
        client.close()


def transfers(cluster: LocalCluster, how_many: int) -> dict[str, int]:
    """Transfers across groups through every node (the repaired one too),
    until ``how_many`` committed."""
    stop = threading.Event()
    lock = threading.Lock()
    counts = {"committed": 0, "empty": 0, "errors": 0}
    threads = [threading.Thread(target=worker, args=(ports(cluster)[i % 3], i, stop, counts,
                                                      lock)) for i in range(6)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: counts["committed"] >= how_many, f"{how_many} transfers")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=DEADLINE_S)
    return counts


def test_a_node_of_several_groups_repairs_a_log_damaged_in_its_middle(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, protocol="txn-kv", nodes=3, sections=LIVE_SECTIONS)
    try:
        cluster.start_all()
        until_serving(cluster)
        setup = connect(ports(cluster)[0])
        assert setup.mset(dict.fromkeys(ACCOUNTS, str(BALANCE)))
        setup.close()
        model: dict[str, str] = {}
        before = transfers(cluster, 5)
        write_keys(cluster, 0, model, "a")
        write_keys(cluster, 1, model, "b")
        wait_for(lambda: caught_up(cluster, VICTIM), "the node to apply every group")
        incarnation = int(connect(ports(cluster)[VICTIM]).info("server")["incarnation"])
        assert cluster.stop(VICTIM) == 0
        directory = cluster.directory / f"node-{VICTIM}"
        key = flip_in_group(directory, DAMAGED_GROUP)
        cluster.start(VICTIM)
        cluster.wait_ready([VICTIM])
        log = cluster.stderr_log(VICTIM, cluster.runs[VICTIM])
        wait_for(lambda: WARNING in log.read_text(), "the warning in the node's log")
        wait_for(lambda: int(connect(ports(cluster)[VICTIM]).info("server")["incarnation"])
                 > incarnation, "a new incarnation")
        persistence = connect(ports(cluster)[VICTIM]).info("persistence")
        assert persistence["storage_damage"] == KIND, (key, persistence)
        quarantine = directory / "damaged-1"
        assert [path.suffix for path in quarantine.iterdir()] == [".log"], quarantine
        # Every group's replica on the node rejoins (each lost the same suffix of
        # the one log), is caught up, and answers right.
        wait_for(lambda: rejoined(cluster, VICTIM), "every group to re-admit the node")
        wait_for(lambda: caught_up(cluster, VICTIM), "the node to catch up in every group")
        for node in range(3):
            check_keys(cluster, node, model)
        assert bank_total(cluster, VICTIM) == BALANCE * len(ACCOUNTS)
        after = transfers(cluster, 5)
        write_keys(cluster, VICTIM, model, "c")
        for node in range(3):
            wait_for(lambda node=node: caught_up(cluster, node), f"node {node} to apply")
            check_keys(cluster, node, model)
            assert bank_total(cluster, node) == BALANCE * len(ACCOUNTS)
        print(f"damaged record {key}; transfers before {before}, after {after}")
    finally:
        cluster.close()
