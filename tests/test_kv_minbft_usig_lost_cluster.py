"""A live MinBFT replica whose log lost its tail tells the operator and waits
for a new USIG epoch (docs/minbft.md, *Recovery of a lost USIG*; ADR 0026):
real node processes on 127.0.0.1, fsync, Ed25519 USIG keys. Node 2 is stopped,
the last segment of its log cut by 10 bytes (its USIG counter may have gone
back); restarted, it logs ``UsigLost`` at warning (an operator notice) and
stays inert, a plain restart included; once the operator runs ``kv
admit-usig``'s code and restarts it, it takes the new epoch, recovers from its
peers and answers reads with every acknowledged value.

Every wait is bounded; the fixture's finalizer kills every process.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_kv_minbft_usig_recovery import wait_for_counter
from test_kv_service_cluster import SECTIONS
from test_kv_storage_damage_cluster import check_reads, damage, last_segment, wait_for, write

from replicaio.runtime.kv.usig_admission import admit_usig_epoch
from replicaio.runtime.local import LocalCluster
from replicaio.testing.live import core_counters

DAMAGED = 2
ROUNDS_MAX = 30  # of 10 acknowledged SETs each


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    made = LocalCluster(tmp_path / "cluster", protocol="minbft", nodes=3, sections=SECTIONS,
                        metrics=True, auth="ed25519")
    yield made
    made.close()


def warned_usig_lost(cluster: LocalCluster, node: int) -> bool:
    """The node's log (JSON lines) of its current run has ``UsigLost`` at warning."""
    text = cluster.stderr_log(node, cluster.runs[node]).read_text()
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("level") == "warning" and entry.get("message") == "UsigLost":
                # the line says what to do, not only what happened
                advice = str(entry.get("advice", ""))
                return (entry.get("replica") == node
                        and f"replicaio kv admit-usig --cluster FILE --node {node}" in advice)
    return False


def test_a_replica_whose_log_lost_its_tail_warns_waits_for_admission_and_rejoins(
    cluster: LocalCluster,
) -> None:
    cluster.start_all()
    model: dict[str, str] = {}
    write(cluster, 0, model, "before", 20)
    assert cluster.stop(DAMAGED) == 0
    damage(last_segment(cluster, DAMAGED), "cut-10")
    for attempt in ("damaged", "restarted without an admission"):
        cluster.start(DAMAGED)
        cluster.wait_ready([DAMAGED])
        wait_for(lambda: warned_usig_lost(cluster, DAMAGED),
                 f"{attempt}: UsigLost at warning in node {DAMAGED}'s log")
        # SIGKILL: an inert node's SIGTERM exit took over 10 s once under load
        # 14 (the whole suite); how it stops is not what this test checks.
        cluster.kill(DAMAGED)
    # The two others are f+1: they keep serving while the damaged one waits.
    write(cluster, 0, model, "while-inert", 10)
    assert admit_usig_epoch(cluster.config_path, DAMAGED) == 1
    cluster.start(DAMAGED)
    cluster.wait_ready([DAMAGED])
    assert not warned_usig_lost(cluster, DAMAGED)
    wait_for_counter(cluster, DAMAGED, "minbft_usig_new_epoch", "new USIG")
    # It votes again once its stable checkpoint passed its peers' reports plus
    # a window: the writes move the checkpoints there.
    for round_ in range(ROUNDS_MAX):
        if core_counters(cluster, DAMAGED).get("minbft_recovered_usig", 0) >= 1:
            break
        write(cluster, 0, model, f"after-{round_}", 10)
    wait_for_counter(cluster, DAMAGED, "minbft_recovered_usig", "recovery")
    check_reads(cluster, DAMAGED, model)
