"""Redis clients on MinBFT (n = 3, one USIG per replica) through the client-side
gateway, with real processes on 127.0.0.1 and fsync (issue 11): redis-py
through ``replicaio kv gateway`` (f+1 = 2 matching replies), concurrent
clients while the primary of view 0 is killed with SIGKILL (the two others
move to view 1 and go on) and restarted (it resumes its USIG counter from its
disk); the history is checked linearizable. Every wait is bounded; the
fixture's finalizer kills every process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_kv_gateway_cluster import (
    Gateway,
    GatewayWorkload,
    assert_linearizable,
    behind_gateway,
    kill_and_restart_under_load,
    wait_for_progress,
)
from test_kv_service_cluster import SECTIONS, connect

from replicaio.cli import main as cli_main
from replicaio.runtime.local import LocalCluster
from replicaio.testing.live import core_counters, runtime_counters
from replicaio.torture.workload import COUNTERS, REGISTERS


@pytest.fixture
def minbft(tmp_path: Path) -> Iterator[tuple[LocalCluster, Gateway]]:
    cluster = LocalCluster(tmp_path / "cluster", protocol="minbft", nodes=3, sections=SECTIONS,
                           auth="ed25519")
    with behind_gateway(cluster, tmp_path / "gateway.log") as gateway:
        yield cluster, gateway


def test_redis_clients_through_the_gateway_survive_kill_9_of_the_primary(
    minbft: tuple[LocalCluster, Gateway], capsys: pytest.CaptureFixture[str],
) -> None:
    cluster, gateway = minbft
    client = connect(gateway.port)
    assert client.set("hello", "world") is True
    assert client.get("hello") == b"world"
    assert client.incr("c0") == 1
    client.delete("c0")
    client.close()

    workload = GatewayWorkload(cluster, 3, gateway.port)
    kill_and_restart_under_load(cluster, workload, 0)  # the primary of view 0
    assert_linearizable(workload, "kv-gateway-minbft-history.jsonl")
    assert workload.ok_count() >= 60
    assert set(REGISTERS) | set(COUNTERS)

    # Every step of a live BFT node replays exactly with the node's keys from
    # the cluster file: its Ed25519 signatures and USIG certificates come out
    # the same (node 1 through the view change, node 0 resuming its USIG
    # counter from its disk). Without the keys it diverges, and says why.
    for node_id, run in ((1, 1), (0, 2)):
        assert cluster.stop(node_id) == 0
        log = str(cluster.event_log(node_id, run))
        assert cli_main(["replay", log, "--node", str(node_id),
                         "--cluster", str(cluster.config_path), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["matched"] is True and report["steps"] > 100, report
    assert cli_main(["replay", log, "--node", "0", "--json"]) == 1  # diverges without them
    report = json.loads(capsys.readouterr().out)
    assert report["matched"] is False and "--cluster" in report["hint"]


def test_an_hmac_usig_cluster_serves_past_a_live_byzantine_primary(tmp_path: Path) -> None:
    """The other USIG scheme, live: one HMAC key shared by the trusted
    components (``[usig] kind = "hmac"``, its own file, not the cluster's auth
    secret). The primary of view 0 runs ``--byzantine`` with MinBFT's
    withholding behaviour (half of its UI messages to one backup dropped, the
    gaps held and asked for again) plus garbage; clients through the gateway
    keep getting answers and the history is linearizable."""
    cluster = LocalCluster(tmp_path / "cluster", protocol="minbft", nodes=3, sections=SECTIONS,
                           auth="ed25519", usig="hmac", metrics=True)
    assert cluster.cluster.usig == "hmac"
    assert cluster.cluster.usig_secret not in (None, cluster.cluster.secret)
    gateway: Gateway | None = None
    try:
        for replica in range(3):
            cluster.start(replica, byzantine="minbft_withhold+garbage" if replica == 0 else None)
        cluster.wait_ready(range(3))
        gateway = Gateway(cluster, tmp_path / "gateway.log")
        workload = GatewayWorkload(cluster, 3, gateway.port)
        workload.start()
        try:
            wait_for_progress(workload, 60)
        finally:
            workload.finish()
        lies = runtime_counters(cluster, 0).get("byzantine_sends", 0)
    finally:
        if gateway is not None:
            gateway.close()
        cluster.close()
    assert lies > 0
    assert_linearizable(workload)


@pytest.mark.parametrize("behaviour", ["minbft_equivocate", "minbft_forge_log+minbft_selective"])
def test_a_live_byzantine_primary_minting_uis_is_replaced_and_clients_are_answered(
    tmp_path: Path, behaviour: str,
) -> None:
    """MinBFT's UI-minting behaviours, live: the Byzantine primary of view 0
    asks its own USIG for UIs on lies (an equivocating PREPARE for half of the
    backups; VIEW-CHANGEs that hide entries, sent to some peers only), as the
    hybrid model allows, with its counter written durably before each lie
    leaves. The correct replicas do not take the lies, move past the primary,
    and the clients through the gateway keep getting linearizable answers."""
    cluster = LocalCluster(tmp_path / "cluster", protocol="minbft", nodes=3, sections=SECTIONS,
                           auth="ed25519", metrics=True)
    gateway: Gateway | None = None
    try:
        for replica in range(3):
            cluster.start(replica, byzantine=behaviour if replica == 0 else None)
        cluster.wait_ready(range(3))
        gateway = Gateway(cluster, tmp_path / "gateway.log")
        workload = GatewayWorkload(cluster, 3, gateway.port)
        workload.start()
        try:
            wait_for_progress(workload, 60)
            wait_for_progress(workload, 30)
        finally:
            workload.finish()
        lies = runtime_counters(cluster, 0).get("byzantine_sends", 0)
        correct = [core_counters(cluster, replica) for replica in (1, 2)]
    finally:
        if gateway is not None:
            gateway.close()
        cluster.close()
    print(behaviour, "lies", lies, "correct replicas", correct)
    assert lies > 0
    if behaviour == "minbft_equivocate":
        # the lie reached a backup, certified: a view change followed
        assert any(counters.get("minbft_views_started", 0) >= 1 for counters in correct), correct
    assert_linearizable(workload)
    assert workload.ok_count() >= 30
