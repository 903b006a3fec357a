"""The Grafana dashboard's queries against a real Prometheus scraping a live cluster.

Grafana itself cannot be installed where the suite runs, so this checks what it would
show: a real ``prometheus`` (Debian's package, installed by ``./run setup``) scrapes
the metrics endpoints of a live three-node Raft KV cluster on loopback while a
redis-py client writes, and every PromQL expression of
``deploy/grafana/replicaio-dashboard.json`` (its ``$instance`` variable set to all
nodes, ``$__rate_interval`` to a window four scrapes wide) must return a non-empty
result through Prometheus's HTTP API. A metric renamed in the code, or a typo in a
query, makes a panel empty and this test fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from replicaio.runtime.local import LocalCluster, free_ports
from replicaio.testing.browser import find_chromium, read_png, screenshot

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "replicaio-dashboard.json"
PROMETHEUS = shutil.which("prometheus")
SCRAPE_S = 1
RATE_WINDOW = f"{4 * SCRAPE_S}s"
QUERY_DEADLINE_S = 40.0

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="no prometheus binary (./run setup installs Debian's package as root)",
)


# Graphed in the screenshot: four of the dashboard's main panels.
SCREENSHOT_QUERIES = (
    "replicaio_protocol_commit_index",
    f"rate(replicaio_kv_request_seconds_count[{RATE_WINDOW}])",
    f"histogram_quantile(0.99, sum by (le, instance) "
    f"(rate(replicaio_fsync_seconds_bucket[{RATE_WINDOW}])))",
    "sum by (instance) (replicaio_peer_connected)",
)


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression) of every target, Grafana's variables filled in."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expression = (target["expr"].replace("$instance", ".*")
                          .replace("$__rate_interval", RATE_WINDOW))
            queries.append((panel["title"], expression))
    variable = dashboard["templating"]["list"][1]["query"]["query"]
    assert variable.startswith("label_values(") and variable.endswith(", instance)")
    queries.append(("variable instance", variable.removeprefix("label_values(")
                    .removesuffix(", instance)")))
    return queries


def query(port: int, expression: str) -> list[Any]:
    url = (f"http://127.0.0.1:{port}/api/v1/query?"
           + urllib.parse.urlencode({"query": expression}))
    with urllib.request.urlopen(url, timeout=5) as page:
        answer = json.loads(page.read())
    assert answer["status"] == "success", answer
    result: Any = answer["data"]["result"]
    return [result] if answer["data"]["resultType"] == "scalar" else list(result)


def start_prometheus(directory: Path, targets: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_ports(1)[0]
    config = directory / "prometheus.yml"
    config.write_text(
        f"global:\n  scrape_interval: {SCRAPE_S}s\n  evaluation_interval: {SCRAPE_S}s\n"
        "scrape_configs:\n  - job_name: replicaio\n    static_configs:\n"
        f"      - targets: {json.dumps(targets)}\n"
    )
    assert PROMETHEUS is not None
    log = (directory / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={directory / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2):
                return process, port
        except (urllib.error.URLError, ConnectionError):
            assert process.poll() is None, (directory / "prometheus.log").read_text()[-2000:]
            time.sleep(0.2)
    process.kill()
    raise AssertionError("prometheus never became ready")


def write(clients: list[redis.Redis], seconds: float, start: int = 0) -> int:
    """SET and GET on every node for ``seconds``; returns the count of writes."""
    written = start
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for client in clients:
            try:
                client.set(f"k{written % 50}", written)
                client.get(f"k{written % 50}")
            except redis.ResponseError:
                pass  # a node that cannot serve it yet: fine, it is counted
            written += 1
    return written


def graph_screenshot(port: int) -> None:
    chromium, why_not = find_chromium()
    assert chromium is not None, why_not
    parameters: dict[str, str] = {}
    for index, expression in enumerate(SCREENSHOT_QUERIES):
        parameters |= {f"g{index}.expr": expression, f"g{index}.tab": "0",
                       f"g{index}.range_input": "1m", f"g{index}.stacked": "0"}
    url = f"http://127.0.0.1:{port}/graph?" + urllib.parse.urlencode(parameters)
    path = ROOT / "docs" / "images" / "prometheus-dashboard.png"
    # Taller than the page: a viewport that must scroll renders shifted.
    screenshot(chromium, url, path, width=1300, height=3300, budget_ms=15000)
    width, height, _rows = read_png(path)
    assert (width, height) == (1300, 3300)


def test_every_dashboard_query_returns_data_from_a_live_cluster(tmp_path: Path) -> None:
    sections: dict[str, dict[str, Any]] = {
        "node": {"tick_us": 10_000},
        "host": {"client_service": "resp"},
    }
    queries = dashboard_queries()
    assert len(queries) > 20
    with LocalCluster(tmp_path / "c", protocol="raft", nodes=3, sections=sections,
                      metrics=True) as cluster:
        cluster.start_all()
        targets = [str(node.metrics) for node in cluster.cluster.nodes]
        prometheus, port = start_prometheus(tmp_path, targets)
        clients = [redis.Redis(port=node.client.port, socket_timeout=5,
                               retry=Retry(NoBackoff(), 0)) for node in cluster.cluster.nodes]
        try:
            empty = list(queries)
            deadline = time.monotonic() + QUERY_DEADLINE_S
            written = 0
            while empty and time.monotonic() < deadline:
                written = write(clients, 0.5, written)  # keeps every rate() above zero
                empty = [(title, expression) for title, expression in empty
                         if not query(port, expression)]
            assert not empty, f"dashboard queries with no data after {QUERY_DEADLINE_S}s: {empty}"
            up = query(port, 'up{job="replicaio"}')
            assert sorted(sample["metric"]["instance"] for sample in up) == sorted(targets)
            assert all(sample["value"][1] == "1" for sample in up)
            if os.environ.get("REPLICAIO_WRITE_DOC_IMAGES") == "1":
                written = write(clients, 45, written)
                writer = threading.Thread(target=write, args=(clients, 20, written))
                writer.start()  # still under load while the page queries
                graph_screenshot(port)
                writer.join()
        finally:
            for client in clients:
                client.close()
            prometheus.terminate()
            prometheus.wait(timeout=10)
