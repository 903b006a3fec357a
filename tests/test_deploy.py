"""Deployment: the Kubernetes manifests in deploy/kubernetes/ validated offline with
``kubernetes-validate`` (strict: unknown fields are errors) and checked against
each other and against the cluster file they carry; the Containerfile's ports;
and, with real processes, the node's ``/healthz`` and ``/livez`` as the
manifests' probes use them, through a disk replacement with ``--join``.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import redis
import yaml
from redis.backoff import NoBackoff
from redis.retry import Retry

from replicaio.runtime.config import parse_cluster
from replicaio.runtime.local import LocalCluster

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.37.0"
DEADLINE_S = 30.0


def documents() -> list[dict[str, Any]]:
    found = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        found += [document for document in yaml.safe_load_all(path.read_text()) if document]
    return found


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [document for document in documents() if document["kind"] == kind]


def test_every_manifest_is_valid_kubernetes_and_the_validator_would_say_otherwise() -> None:
    kinds = set()
    for document in documents():
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        kinds.add(document["kind"])
    assert kinds == {"ConfigMap", "Secret", "Service", "PodDisruptionBudget", "StatefulSet"}
    broken = copy.deepcopy(by_kind("StatefulSet")[0])
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_manifests_agree_with_each_other_and_with_their_cluster_file(tmp_path: Path) -> None:
    (statefulset,) = by_kind("StatefulSet")
    (configmap,) = by_kind("ConfigMap")
    (budget,) = by_kind("PodDisruptionBudget")
    headless = next(s for s in by_kind("Service") if s["spec"].get("clusterIP") == "None")
    text = configmap["data"]["cluster.toml"]
    secret = tmp_path / "cluster.key"
    secret.write_text("ab" * 32)
    text = text.replace("/etc/replicaio/secret/cluster.key", str(secret))
    import tomllib

    cluster = parse_cluster(tomllib.loads(text), base=tmp_path)
    spec = statefulset["spec"]
    assert spec["replicas"] == cluster.n
    assert spec["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert budget["spec"]["minAvailable"] == cluster.n // 2 + 1  # a Raft majority
    name = statefulset["metadata"]["name"]
    ports = {port["name"]: port["containerPort"]
             for port in spec["template"]["spec"]["containers"][0]["ports"]}
    assert {port["name"]: port["port"] for port in headless["spec"]["ports"]} == ports
    for entry in cluster.nodes:
        host = f"{name}-{entry.id}.{spec['serviceName']}"  # the pod's stable DNS name
        assert (entry.peer.host, entry.peer.port) == (host, ports["peer"])
        assert (entry.client.host, entry.client.port) == (host, ports["redis"])
        assert entry.metrics is not None
        assert (entry.metrics.host, entry.metrics.port) == (host, ports["metrics"])
        mount = next(m["mountPath"] for m in spec["template"]["spec"]["containers"][0]
                     ["volumeMounts"] if m["name"] == "data")
        assert entry.data_dir.is_relative_to(mount)
    container = spec["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(ports["metrics"])
    assert annotations["prometheus.io/scrape"] == "true"
    containerfile = (ROOT / "deploy" / "Containerfile").read_text()
    exposed = next(line for line in containerfile.splitlines() if line.startswith("EXPOSE"))
    assert sorted(exposed.split()[1:]) == sorted(str(port) for port in ports.values())
    assert "-c constraints.txt" in containerfile


def health(cluster: LocalCluster, node: int, path: str = "/healthz") -> tuple[int, Any]:
    address = cluster.cluster.nodes[node].metrics
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as page:
            body = page.read().decode()
            status = page.status
    except urllib.error.HTTPError as error:
        body, status = error.read().decode(), error.code
    except urllib.error.URLError:  # not listening yet (it opens after the client port)
        return 0, {}
    return status, json.loads(body) if path == "/healthz" else body


def wait_health(cluster: LocalCluster, node: int, status: int) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        found, report = health(cluster, node)
        if found == status:
            return dict(report)
        assert time.monotonic() < deadline, (node, found, report)
        time.sleep(0.2)


def test_healthz_follows_the_leader_and_a_replaced_disk_joining_with_join(
    tmp_path: Path
) -> None:
    sections: dict[str, dict[str, Any]] = {
        "node": {"tick_us": 10_000},
        "transport": {"reconnect_delay_ms_min": 10, "reconnect_delay_ms_max": 200},
        "host": {"client_service": "resp", "fsync": False},
    }
    with LocalCluster(tmp_path / "c", protocol="raft", nodes=3, sections=sections,
                      metrics=True) as cluster:
        cluster.start_all()
        reports = [wait_health(cluster, node, 200) for node in range(3)]
        assert all(report["healthy"] and report["leader"] >= 0 for report in reports)
        assert health(cluster, 0, "/livez") == (200, "ok\n")
        client = redis.Redis(port=cluster.cluster.nodes[0].client.port, socket_timeout=5,
                             retry=Retry(NoBackoff(), 0))
        for index in range(20):
            assert client.set(f"k{index}", "v") is True

        # Node 2's disk is lost: it comes back empty, with --join.
        cluster.kill(2)
        shutil.rmtree(cluster.cluster.nodes[2].data_dir)
        cluster.start(2, join=True)
        cluster.wait_ready([2])
        wait_health(cluster, 2, 200)  # caught up and registered again
        assert client.set("after", "join") is True

        # Without a majority no leader is known: not ready, but alive.
        cluster.kill(1)
        cluster.kill(2)
        report = wait_health(cluster, 0, 503)
        assert "no leader known" in report["reasons"], report
        assert health(cluster, 0, "/livez")[0] == 200
        client.close()


def test_a_cluster_whose_addresses_are_dns_names_serves(tmp_path: Path) -> None:
    """Every address in the cluster file a host name (``localhost``), as on several
    hosts or in Kubernetes: each node binds and dials names, not numbers."""
    import subprocess
    import sys

    from replicaio.runtime.local import free_port_block

    base = free_port_block(10)
    directory = tmp_path / "dns"
    command = [sys.executable, "-m", "replicaio.cli", "kv"]
    try:
        up = subprocess.run([*command, "up", "--nodes", "3", "--base-port", str(base),
                             "--data-dir", str(directory), "--host", "localhost", "--no-fsync"],
                            capture_output=True, text=True, timeout=90, check=False)
        assert up.returncode == 0, up.stdout + up.stderr
        assert 'peer = "localhost:' in (directory / "cluster.toml").read_text()
        writer = redis.Redis(host="localhost", port=base + 1, socket_timeout=5,
                             retry=Retry(NoBackoff(), 0))
        assert writer.set("named", "yes") is True
        reader = redis.Redis(host="localhost", port=base + 3, socket_timeout=5,
                             retry=Retry(NoBackoff(), 0))
        assert reader.get("named") == b"yes"
        with urllib.request.urlopen(f"http://localhost:{base + 7}/healthz", timeout=5) as page:
            assert json.loads(page.read())["healthy"] is True
    finally:
        subprocess.run([*command, "down", "--data-dir", str(directory)], capture_output=True,
                       timeout=60, check=False)
