"""The Grafana dashboard file (deploy/grafana/replicaio-dashboard.json) as a file: valid
JSON, every panel queries Prometheus through the data-source variable, ids unique, panels
laid out without overlap, and every metric it names declared by the code that exports
metrics. That the nodes really export them is tests/test_viz_live.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "replicaio-dashboard.json"
EXPORTERS = ("replicaio/runtime/metrics.py", "replicaio/runtime/kv/service.py",
             "replicaio/services/kv/status.py")
SUFFIXES = ("_total", "_bucket", "_sum", "_count")


def load() -> dict[str, Any]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(dashboard, dict)
    return dashboard


def declared_metrics() -> set[str]:
    """Names the exporters can produce: literal names, the per-stat counters, and the
    protocol gauges made from the status fields."""
    names: set[str] = set()
    for path in EXPORTERS:
        text = (ROOT / path).read_text(encoding="utf-8")
        names.update(re.findall(r'"(replicaio_[a-z_]+)"', text))
        for stats in re.findall(r'for stat in \(([^)]*)\)', text):
            names.update(f"replicaio_{stat}" for stat in re.findall(r'"(\w+)"', stats))
    status = (ROOT / "replicaio/services/kv/status.py").read_text(encoding="utf-8")
    fields = re.search(r"VIEW_FIELDS = \(([^)]*)\)", status)
    assert fields is not None
    extra = ["is_leader", "log_entries", "snapshot_bytes"]
    names.update(f"replicaio_protocol_{name}" for name in
                 [*re.findall(r'"(\w+)"', fields.group(1)), *extra])
    return names


def base_name(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def test_every_panel_queries_prometheus_through_the_variable() -> None:
    dashboard = load()
    assert dashboard["uid"] == "replicaio-cluster"
    variables = {item["name"] for item in dashboard["templating"]["list"]}
    assert {"datasource", "instance"} <= variables
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    assert len(panels) >= 20
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert "replicaio_" in target["expr"], panel["title"]
            assert 'instance=~"$instance"' in target["expr"], panel["title"]
            assert target["expr"].count("(") == target["expr"].count(")"), panel["title"]


def test_panels_do_not_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in load()["panels"]:
        box = panel["gridPos"]
        assert box["x"] >= 0 and box["x"] + box["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(box["x"], box["x"] + box["w"])
                 for y in range(box["y"], box["y"] + box["h"])}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_every_queried_metric_is_declared_by_an_exporter() -> None:
    declared = declared_metrics()
    queried = {base_name(name) for panel in load()["panels"]
               for target in panel.get("targets", [])
               for name in re.findall(r"\breplicaio_\w+", target["expr"])}
    missing = sorted(queried - declared)
    assert not missing, f"the dashboard queries metrics nothing declares: {missing}"
