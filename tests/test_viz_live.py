"""Seeing a live cluster: ``replicaio status`` against a real 3-node Raft KV cluster on
127.0.0.1 (its metrics endpoints), the Grafana dashboard's queries against what the
nodes really export, and the nodes' own event logs drawn as one diagram, merged by
time. Each test stands alone (xdist may run them in different processes, each with its own
cluster). Every wait is bounded; the fixture kills every process."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry

from replicaio.cli import main
from replicaio.runtime.local import LocalCluster
from replicaio.testing.browser import dump_dom, find_chromium, screenshot
from replicaio.trace.diagram import FORGED, UNMATCHED, build_diagram, load_log

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "replicaio-dashboard.json"
SECTIONS: dict[str, dict[str, Any]] = {
    "node": {"tick_us": 10_000},
    "transport": {"reconnect_delay_ms_min": 10, "reconnect_delay_ms_max": 200},
    "host": {"client_service": "resp", "fsync": False},
    "service": {"retry_after_ms": 300, "retry_backoff_ms": 20, "request_timeout_ms": 2500},
}
DEADLINE_S = 30.0
WRITES = 30


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("live"), protocol="raft", nodes=3,
                      sections=SECTIONS, metrics=True) as made:
        made.start_all()
        write(made, WRITES)
        yield made


def write(cluster: LocalCluster, count: int) -> None:
    """``count`` SETs, each retried on the next node until one takes it (bounded)."""
    deadline = time.monotonic() + DEADLINE_S
    attempt = 0
    for index in range(count):
        while True:
            attempt += 1
            node = attempt % cluster.cluster.n
            client = redis.Redis(host="127.0.0.1", port=cluster.cluster.nodes[node].client.port,
                                 socket_timeout=3.0, retry=Retry(NoBackoff(), 0))
            try:
                if client.set(f"k{index}", f"v{index}"):
                    break
            except redis.RedisError:
                pass
            finally:
                client.close()
            assert time.monotonic() < deadline, "no node took the writes"
            time.sleep(0.05)


def status(cluster: LocalCluster, capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    code = main(["status", "--cluster", str(cluster.config_path), "--once", "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_status_shows_roles_terms_indexes_lag_and_connections(
    cluster: LocalCluster, capsys: pytest.CaptureFixture[str],
) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while True:  # followers apply what the leader committed shortly after
        code, found = status(cluster, capsys)
        rows = found["nodes"]
        if code == 0 and all(row["lag"] == 0 and row["peers_connected"] == 2 for row in rows):
            break
        assert time.monotonic() < deadline, f"never caught up: {rows}"
        time.sleep(0.2)
    assert found["protocol"].startswith("raft") and found["n"] == 3
    assert [row["node"] for row in rows] == [0, 1, 2]
    roles = sorted(row["role"] for row in rows)
    assert roles == ["follower", "follower", "leader"]
    leader = next(row["node"] for row in rows if row["role"] == "leader")
    assert {row["leader"] for row in rows} == {leader}
    assert len({row["term"] for row in rows}) == 1 and rows[0]["term"] >= 1
    assert all(row["commit_index"] >= WRITES and row["applied_index"] == row["commit_index"]
               for row in rows)
    assert all(row["up"] and row["incarnation"] >= 1 and row["steps"] > 0 for row in rows)
    capsys.readouterr()
    assert main(["status", "--cluster", str(cluster.config_path), "--once"]) == 0
    table = capsys.readouterr().out
    assert "leader" in table and "follower" in table and "2/2" in table


def test_status_names_a_node_that_does_not_answer(
    cluster: LocalCluster, capsys: pytest.CaptureFixture[str],
) -> None:
    cluster.kill(2)
    try:
        code, found = status(cluster, capsys)
        assert code == 1
        down = found["nodes"][2]
        assert down["up"] is False and down["error"]
        assert all(row["up"] for row in found["nodes"][:2])
    finally:
        cluster.start(2)
        cluster.wait_ready([2])


def exported_metrics(cluster: LocalCluster) -> set[str]:
    names: set[str] = set()
    for entry in cluster.cluster.nodes:
        assert entry.metrics is not None
        url = f"http://{entry.metrics.host}:{entry.metrics.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            names.add(family.name)
            names.update(sample.name for sample in family.samples)
    return names


def test_the_dashboard_queries_only_metrics_the_nodes_export(cluster: LocalCluster) -> None:
    write(cluster, 5)  # every node has served a command: the latency histogram has samples
    exported = exported_metrics(cluster)
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {name for panel in dashboard["panels"] for target in panel.get("targets", [])
               for name in re.findall(r"\breplicaio_\w+", target["expr"])}
    assert len(queried) > 20
    missing = sorted(queried - exported)
    assert not missing, f"the dashboard queries metrics no node exports: {missing}"


def test_live_event_logs_draw_as_one_diagram(
    cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    cluster.kill(2)
    write(cluster, 5)
    cluster.start(2)  # a new run of node 2: a new log
    cluster.wait_ready([2])
    write(cluster, 5)
    for node in list(cluster.processes):
        cluster.stop(node)  # a clean stop flushes the event logs
    logs = sorted(cluster.directory.glob("node-*.events"))
    assert len(logs) >= 4  # node 2 ran at least twice
    for node in range(cluster.cluster.n):  # up again for whatever runs next
        cluster.start(node)
    cluster.wait_ready(range(cluster.cluster.n))
    page = tmp_path / "live.html"
    assert main(["replay", *map(str, logs), "--html", str(page)]) == 0
    assert "diagram:" in capsys.readouterr().err
    loaded = []
    for path in logs:
        with path.open("rb") as stream:
            loaded.append(load_log(stream, path.name))
    for log in loaded:  # each run paired its clocks and said how well (a bound, >= 0)
        options = log.header["options"]
        assert isinstance(options["started_unix_us"], int) and options["clock_error_us"] >= 0
    model = build_diagram(loaded)
    assert model["meta"]["live"] is True and model["meta"]["n"] == 3
    assert all(node["logged"] for node in model["nodes"])
    events, columns = model["events"], model["messages"]
    assert min(events["t"]) < 2_000_000  # one time axis: the first starts near zero
    assert events["t"] == sorted(events["t"])
    delivered = [m for m in range(len(columns["t0"])) if columns["recv"][m] >= 0]
    assert len(delivered) > 100
    assert not any(columns["flags"][m] & (UNMATCHED | FORGED) for m in delivered)
    # Same host, one wall clock: a delivery never precedes its send by more than the
    # error of taking each start instant (well under a millisecond).
    assert all(columns["t1"][m] >= columns["t0"][m] - 5_000 for m in delivered)
    restarts = [i for i, kind in enumerate(events["kind"]) if kind == 0 and events["inc"][i] > 1]
    assert {events["node"][i] for i in restarts} == {2}
    assert any(span[0] == 2 for span in model["downs"])
    check_cut_logs(logs, model, tmp_path, capsys)
    chromium, _ = find_chromium()
    if chromium is not None:
        dom = dump_dom(chromium, page.as_uri())
        assert "replicaio: raft" in dom and "live nodes" in dom
        assert f'data-steps="{len(events["t"])}"' in dom
        if os.environ.get("REPLICAIO_WRITE_DOC_IMAGES") == "1":
            screenshot(chromium, page.as_uri() + "#mode=order", ROOT / "docs" / "images" /
                       "diagram-live.png", width=1400, height=860)


def check_cut_logs(logs: list[Path], whole: dict[str, Any], tmp_path: Path,
                   capsys: pytest.CaptureFixture[str]) -> None:
    """A live log cut mid-record (a node killed while writing it), or ending in
    garbage, still draws: every whole record, and the page and stderr say it was cut."""
    steps = len(whole["events"]["t"])
    for how in ("mid-record", "garbage"):
        cut = []
        for path in logs:
            copy = tmp_path / how / path.name
            copy.parent.mkdir(exist_ok=True)
            data = path.read_bytes()
            copy.write_bytes(data[:-7] if how == "mid-record" else data + bytes(16))
            cut.append(copy)
        page = tmp_path / f"{how}.html"
        assert main(["replay", *map(str, cut), "--html", str(page)]) == 0
        said = capsys.readouterr().err
        assert said.count("warning: event log") == len(logs), said
        assert ("cut mid-record" if how == "mid-record" else "malformed record") in said
        html = page.read_text()
        assert html.count('class="cut-log"') == len(logs)
        diagram = re.search(r"diagram: (\d+) steps", said)
        assert diagram is not None, said
        drawn = int(diagram.group(1))
        assert 0 < steps - len(logs) <= drawn <= steps


def test_wall_clock_pairing_keeps_the_tightest_bracket(monkeypatch: pytest.MonkeyPatch) -> None:
    """A live log's header pairs the wall clock with the monotonic one. A node
    preempted between two readings (here 5 ms on the first try) must not shift
    its whole log by that long: the tightest of the bracketed tries is taken."""
    from replicaio.runtime import logs

    wall_true = 1_700_000_000_000_000_000  # ns; the wall clock minus the monotonic one
    readings: list[int] = []

    class Clock:
        now = 10_000_000_000

        def monotonic_ns(self) -> int:
            value = self.now
            self.now += 2_000  # 2 us a reading
            return value

        def time_ns(self) -> int:
            value = self.now + wall_true
            readings.append(value)
            # Preempted for 5 ms right after the wall reading on the first try only.
            self.now += 5_000_000 if len(readings) == 1 else 2_000
            return value

    monkeypatch.setattr(logs, "time", Clock())
    offset, error = logs.wall_minus_monotonic_us()
    assert len(readings) == logs.WALL_PAIR_TRIES
    assert error <= 3  # half of a 4 us bracket, rounded up
    assert abs(offset - wall_true // 1000) <= error
