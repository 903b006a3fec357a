"""A PBFT replica recovering from storage damage says so (docs/pbft.md, *Storage
damage: votes withheld until recovered*), with real node processes, real files
and fsync on 127.0.0.1: ``INFO replication`` shows ``recovering:1`` and
``/healthz`` answers 503 with the reason while it withholds its votes, then
``recovering:0`` and 200 once its stable checkpoint passed its target, having
executed what the others committed. Raft's damaged-tail reporting is the model
(``tests/test_kv_storage_damage_cluster.py``).

Every wait is bounded; the fixture's finalizer kills every process.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_kv_service_cluster import SECTIONS
from test_kv_storage_damage_cluster import (
    check_reads,
    damage,
    info,
    last_segment,
    wait_for,
    write,
)

from replicaio.runtime.local import LocalCluster

PRIMARY, DAMAGED = 0, 2


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """Four PBFT replicas, Ed25519 node keys, metrics on."""
    made = LocalCluster(tmp_path / "cluster", protocol="pbft", nodes=4, sections=SECTIONS,
                        metrics=True, auth="ed25519")
    yield made
    made.close()


def health(cluster: LocalCluster, node: int) -> tuple[int, dict[str, Any]]:
    """``/healthz`` of ``node``: the HTTP status and the JSON report."""
    address = cluster.cluster.nodes[node].metrics
    assert address is not None
    url = f"http://{address.host}:{address.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as page:
            return page.status, json.loads(page.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def executed(cluster: LocalCluster, node: int) -> int:
    return int(info(cluster, node, "replication")["commit_index"])


def test_a_pbft_replica_recovering_from_storage_damage_is_reported_until_it_recovers(
    cluster: LocalCluster,
) -> None:
    cluster.start_all()
    model: dict[str, str] = {}
    write(cluster, PRIMARY, model, "before", 20)
    wait_for(lambda: executed(cluster, DAMAGED) >= executed(cluster, PRIMARY),
             "the backup to execute what the primary did")
    assert int(info(cluster, DAMAGED, "replication")["recovering"]) == 0
    assert health(cluster, DAMAGED)[0] == 200
    assert cluster.stop(DAMAGED) == 0
    damage(last_segment(cluster, DAMAGED), "cut-half")
    cluster.start(DAMAGED)
    cluster.wait_ready([DAMAGED])
    wait_for(lambda: int(info(cluster, DAMAGED, "replication")["recovering"]) == 1,
             "INFO to say the damaged replica is recovering")
    code, report = health(cluster, DAMAGED)
    assert code == 503, report
    assert any(reason.startswith("recovering") for reason in report["reasons"]), report
    assert health(cluster, PRIMARY)[0] == 200
    # The three others order on; the damaged one executes what they commit and,
    # once a stable checkpoint passes its target (2 windows at most), votes again.
    round_ = 0
    while int(info(cluster, DAMAGED, "replication")["recovering"]) == 1:
        assert round_ < 8, info(cluster, DAMAGED, "replication")
        write(cluster, PRIMARY, model, f"after{round_}", 20)
        round_ += 1
    wait_for(lambda: health(cluster, DAMAGED)[0] == 200, "the recovered replica to be healthy")
    # It executes what the others committed (its state is theirs), and the
    # cluster's answers are right.
    wait_for(lambda: executed(cluster, DAMAGED) >= executed(cluster, PRIMARY),
             "the recovered replica to execute what the primary did")
    check_reads(cluster, PRIMARY, model)
