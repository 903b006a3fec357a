"""A node of several PBFT groups whose log is damaged in its middle starts,
cuts its log back and recovers every group's replica from its peers, with real
node processes, real files and fsync on 127.0.0.1.

``txn-kv-pbft``: four node processes, each hosting a replica of three PBFT
groups in one storage (``assembly.recovers_lost_state``: a node's groups share
its storage, and each group's replica recovers its own log). Node 2 is
stopped, a byte of a record in the middle of its last write-ahead log
segment is flipped (later batches of every group follow), and it is started
again: the storage cuts the log back to its intact prefix (the
rest kept in ``damaged-1/``) and reports it (``INFO persistence``), every
group's replica on the node withholds its votes (docs/pbft.md, *Storage
damage: votes withheld until recovered*; ``INFO groups``: ``group_G_recovering``)
until a stable checkpoint of its group passes what it may have voted for, and
then executes what the others did. Every key then reads right through the
node's own port. The same for Raft groups is
``tests/test_kv_groups_storage_damage_cluster.py``; MinBFT groups do not take this path
(a damaged disk's USIG is refused until the operator admits a new one:
``tests/test_kv_minbft_usig_lost_cluster.py``).

Every wait is bounded; the fixture's finalizer kills every process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_kv_groups_bft_cluster import GROUPS, SECTIONS, until_serving
from test_kv_groups_cluster import connect, key_in
from test_kv_storage_damage_cluster import (
    LATER_BATCHES_MIN,
    batches_span,
    damage,
    info,
    last_segment,
    wait_for,
)

from replicaio.runtime.local import LocalCluster

DAMAGED = 2
FRONT = 0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    made = LocalCluster(tmp_path / "cluster", protocol="txn-kv-pbft", nodes=4,
                        sections={**SECTIONS, "host": {**SECTIONS["host"], "fsync": True}})
    try:
        yield made
    finally:
        made.close()


def write_every_group(cluster: LocalCluster, model: dict[str, str], prefix: str,
                      count: int) -> None:
    """``count`` SETs in every group through the front, each acknowledged."""
    client = connect(cluster.cluster.nodes[FRONT].client.port)
    try:
        for number in range(count):
            for group in range(GROUPS):
                key = key_in(group, f"{prefix}-{number}-")
                value = f"v-{key}"

                def acknowledged(key: str = key, value: str = value) -> bool:
                    return client.set(key, value) is True

                wait_for(acknowledged, f"SET {key}")
                model[key] = value
    finally:
        client.close()


def figures(cluster: LocalCluster, node: int) -> dict[str, Any]:
    return info(cluster, node, "groups")


def recovering(cluster: LocalCluster, node: int) -> int:
    """How many of ``node``'s group replicas withhold their votes."""
    found = figures(cluster, node)
    return sum(int(found[f"group_{g}_recovering"]) for g in range(GROUPS))


def executed_everywhere(cluster: LocalCluster, node: int) -> bool:
    """``node``'s replica of every group executed what the front's did."""
    mine, front = figures(cluster, node), figures(cluster, FRONT)
    return all(int(mine[f"group_{g}_commit_index"]) >= int(front[f"group_{g}_commit_index"])
               for g in range(GROUPS))


def test_a_node_of_several_pbft_groups_recovers_a_log_damaged_in_its_middle(
    cluster: LocalCluster,
) -> None:
    cluster.start_all()
    until_serving(cluster, FRONT)
    model: dict[str, str] = {}
    write_every_group(cluster, model, "before", 10)
    more = 0
    while batches_span(cluster, DAMAGED) < 2 * LATER_BATCHES_MIN + 2:
        assert more < 20, f"{more} more rounds, too few batches on node {DAMAGED}"
        write_every_group(cluster, model, f"more{more}", 3)
        more += 1
    wait_for(lambda: executed_everywhere(cluster, DAMAGED), "node 2 to execute everything")
    assert recovering(cluster, DAMAGED) == 0
    assert cluster.stop(DAMAGED) == 0
    damage(last_segment(cluster, DAMAGED), "flip-middle")
    cluster.start(DAMAGED)
    cluster.wait_ready([DAMAGED])
    wait_for(lambda: info(cluster, DAMAGED, "persistence")["storage_damage"]
             == "damaged log cut back to its intact prefix", "the damage reported")
    quarantine = cluster.directory / f"node-{DAMAGED}" / "damaged-1"
    assert [path.suffix for path in quarantine.iterdir()] == [".log"], quarantine
    wait_for(lambda: recovering(cluster, DAMAGED) == GROUPS,
             "every group's replica on the node to withhold its votes")
    # The others order on; each group's checkpoints pass the damaged replica's
    # target (two windows at most) and it votes again.
    round_ = 0
    while recovering(cluster, DAMAGED) > 0:
        assert round_ < 12, figures(cluster, DAMAGED)
        write_every_group(cluster, model, f"after{round_}", 8)
        round_ += 1
    wait_for(lambda: executed_everywhere(cluster, DAMAGED),
             "the recovered replicas to execute what the front's did")
    client = connect(cluster.cluster.nodes[DAMAGED].client.port)
    try:
        for key, value in sorted(model.items()):

            def reads_right(key: str = key, value: str = value) -> bool:
                return bool(client.get(key) == value)

            wait_for(reads_right, f"GET {key}")
    finally:
        client.close()
