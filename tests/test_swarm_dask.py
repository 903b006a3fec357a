"""``replicaio swarm --dask``: the same seeds on a Dask ``LocalCluster`` of worker
processes give the same report as a local swarm: verdicts, event-log hashes,
reproduce commands, and the same shrunk schedule for a broken variant."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from distributed import LocalCluster

from replicaio.cli import main


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        yield str(cluster.scheduler_address)


def swarm(capsys: pytest.CaptureFixture[str], arguments: list[str]) -> tuple[int, dict[str, Any]]:
    status = main(["swarm", *arguments, "--json"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report.pop("wall_seconds")
    return status, report


@pytest.mark.parametrize("arguments", [
    ["raft", "--nodes", "3", "--seeds", "4", "--faults", "crash,partition"],
    ["echo-weak", "--nodes", "4", "--byzantine", "1", "--seeds", "3"],  # broken: caught
])
def test_a_dask_swarm_reports_what_a_local_swarm_reports(
    scheduler: str, capsys: pytest.CaptureFixture[str], tmp_path: Any, arguments: list[str]
) -> None:
    shrink = ["--shrink-dir", str(tmp_path)]
    local = swarm(capsys, [*arguments, *shrink, "--jobs", "2"])
    remote = swarm(capsys, [*arguments, *shrink, "--dask", scheduler])
    assert remote == local
    status, report = local
    assert len(report["log_sha256"]) == report["seeds"]
    assert all(report["log_sha256"].values())
    if arguments[0] == "echo-weak":
        assert status != 0 and report["failed"] >= 1 and report["failures"][0]["shrunk"]


def test_an_unreachable_scheduler_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["swarm", "raft", "--nodes", "3", "--seeds", "1", "--dask",
                   "tcp://127.0.0.1:9", "--dask-timeout", "2"])
    assert status == 2
    assert "cannot reach the Dask scheduler" in capsys.readouterr().err
