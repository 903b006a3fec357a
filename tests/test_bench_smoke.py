"""The benchmarks still run (tiny sizes), so they cannot rot unnoticed."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_sim.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_sim", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_sim"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_bench_sim_json_in_every_mode(capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_bench()
    status = bench.main(["--sizes", "4", "--requests", "2", "--runs", "2", "--json"])
    assert status == 0
    report = json.loads(capsys.readouterr().out)
    rows = report["rows"]
    assert [row["mode"][0] for row in rows] == ["a", "b", "c"]
    for row in rows:
        assert row["n"] == 4
        assert row["f"] == 1
        assert row["requests"] == 2 * 4 * 2  # runs x nodes x requests per node
        assert row["deliveries"] == 2 * 4 * 4 * 2  # every instance at every node
        assert row["messages_delivered"] > 0
        assert row["deliveries_per_second"] > 0
    # Same seeds, same run: the modes only change how messages travel.
    assert len({row["messages_delivered"] for row in rows}) == 1
    assert all(len(digest) == 64 for digest in rows[0]["log_sha256"])
    assert rows[1]["log_sha256"] == ["", ""]


def test_bench_sim_table_and_profile(capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_bench()
    status = bench.main(
        ["--sizes", "4", "--modes", "c", "--requests", "1", "--runs", "1",
         "--profile", "--top", "5"]
    )
    assert status == 0
    out = capsys.readouterr().out
    assert "deliv./s" in out
    assert "c (objects)" in out
    assert "profile n=4 mode c" in out
    assert "scheduler/tasks" in out


def test_bench_sim_counts_opcodes_per_delivery(capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_bench()
    status = bench.main(["--sizes", "4", "--modes", "a", "--requests", "2", "--runs", "1",
                         "--opcodes", "--top", "5", "--json"])
    assert status == 0
    report = json.loads(capsys.readouterr().out)
    (counted,) = report["opcodes"]
    assert counted["mode"] == "a"
    assert counted["opcodes_per_delivery"] > 0
    assert counted["calls_per_delivery"] > 0
    assert len(counted["top"]) == 5
    assert any("simulator.py" in entry["function"] for entry in counted["top"])


def test_bench_sim_refuses_an_empty_workload() -> None:
    bench = load_bench()
    with pytest.raises(SystemExit):
        bench.main(["--sizes", "4", "--requests", "0"])


def test_bench_flush_layouts_runs_every_layout(tmp_path: Path) -> None:
    script = BENCH.parent / "bench_flush_layouts.py"
    done = subprocess.run(
        [sys.executable, str(script), "--writers", "2", "--batches", "5", "--rounds", "1",
         "--directory", str(tmp_path / "disk")],
        capture_output=True, text=True, timeout=120, check=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("round 0")]
    assert [line.split()[2] for line in lines] == ["two-files", "one-file", "data-only"]
    assert all("batches/s per writer" in line for line in lines)
    assert not (tmp_path / "disk").exists()  # it cleans up after itself


# The anchors' node scripts import what only their benchmark's own environment has.
NEEDS_ITS_OWN_ENV = {"kv_pysyncobj_node.py"}


@pytest.mark.parametrize(
    "script",
    sorted(path.name for path in BENCH.parent.glob("*.py") if path.name not in NEEDS_ITS_OWN_ENV),
)
def test_every_benchmark_prints_its_help(script: str) -> None:
    """`--help` works (bench_kv's once failed on a '%' in a help text)."""
    result = subprocess.run(
        [sys.executable, str(BENCH.parent / script), "--help"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout
