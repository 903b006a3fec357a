"""A live MinBFT replica whose USIG state and data are wiped rejoins once the
operator admits a new USIG epoch (issue 11's recovery, ADR 0026): real
processes on 127.0.0.1, fsync, Ed25519 USIG keys, redis-py through the
gateway. Node 2 is killed with SIGKILL and its data directory deleted; the
operator runs ``kv admit-usig``'s code on the cluster file and restarts it;
its peers switch its stream to epoch 1, it withholds until its stable
checkpoint passes their reports, then votes: with node 0 killed afterwards,
nodes 1 and 2 alone (f+1) change the view and keep serving. The history is
linearizable. Every wait is bounded; the finalizer kills every process."""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

from test_kv_gateway_cluster import GatewayWorkload, behind_gateway, wait_for_progress
from test_kv_service_cluster import SECTIONS

from replicaio.check.linearizability import check_linearizable
from replicaio.runtime.config import load_cluster_file
from replicaio.runtime.kv.usig_admission import admit_usig_epoch
from replicaio.runtime.local import LocalCluster
from replicaio.testing.live import core_counters

RECOVERY_DEADLINE_S = 90.0


def wait_for_counter(cluster: LocalCluster, node: int, name: str, what: str) -> None:
    deadline = time.monotonic() + RECOVERY_DEADLINE_S
    while time.monotonic() < deadline:
        # (the metrics endpoint may open after the client port wait_ready saw)
        with contextlib.suppress(OSError):
            if core_counters(cluster, node).get(name, 0) >= 1:
                return
        time.sleep(0.5)
    raise AssertionError(f"{what}: no {name} on node {node} in {RECOVERY_DEADLINE_S} s; "
                         f"log: {cluster.tail(node, 20)}")


def test_a_wiped_replica_rejoins_under_an_admitted_usig_epoch_and_serves(
    tmp_path: Path,
) -> None:
    cluster = LocalCluster(tmp_path / "cluster", protocol="minbft", nodes=3, sections=SECTIONS,
                           auth="ed25519", metrics=True)
    with behind_gateway(cluster, tmp_path / "gateway.log") as gateway:
        workload = GatewayWorkload(cluster, 3, gateway.port)
        workload.start()
        try:
            wait_for_progress(workload, 20)
            cluster.kill(2)
            shutil.rmtree(cluster.cluster.nodes[2].data_dir)  # USIG state and data gone
            assert admit_usig_epoch(cluster.config_path, 2) == 1
            admitted = load_cluster_file(cluster.config_path).nodes[2]
            assert admitted.usig_epoch == 1 and admitted.usig_admission is not None
            wait_for_progress(workload, 10)
            cluster.start(2)
            cluster.wait_ready([2])
            wait_for_counter(cluster, 2, "minbft_usig_new_epoch", "new USIG")
            for peer in (0, 1):
                wait_for_counter(cluster, peer, "minbft_stream_epoch_switched", "peer switch")
            wait_for_counter(cluster, 2, "minbft_recovered_usig", "recovery")
            cluster.kill(0)  # now 1 and 2 alone must change the view and serve
            wait_for_progress(workload, 30)
        finally:
            workload.finish()
    operations = workload.recorder.operations()
    result = check_linearizable(operations, time_budget_s=120)
    assert result.linearizable is True, result.describe()[:2000]
    assert workload.ok_count() >= 60
