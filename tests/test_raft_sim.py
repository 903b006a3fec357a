"""Raft + SMR + KV in the simulator: seed sweeps with every fault kind (crash-restart
losing unsynced writes included), every run linearizable and its liveness after
the heal, determinism of log_sha256, replay, the CLI fields, and the mutants
caught with reproducing commands. Longer sweeps: ``bench/bench_raft_kv.py``."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from replicaio.check.history import load_history
from replicaio.check.linearizability import check_linearizable
from replicaio.cli import main
from replicaio.sim.kv_harness import KvWorkload, kv_options
from replicaio.sim.simulator import SimResult, Simulator
from replicaio.smr.protocol import SmrProtocol

ALL_FAULTS = ("crash", "partition", "loss", "dup", "reorder")


def run(
    seed: int, nodes: int, faults: tuple[str, ...] = ALL_FAULTS, protocol: str = "raft",
    **workload: Any,
) -> SimResult:
    settings = {"membership_every_us": 400_000, "nemesis_every_us": 2_000_000, **workload}
    options = kv_options(seed, nodes, faults, KvWorkload(**settings))
    return Simulator(protocol, options, f=(nodes - 1) // 2, record=False).run()


def cli_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    status = main([*args, "--json"])
    return status, json.loads(capsys.readouterr().out)


# (5 nodes: 55 seeds; the first retried request executed again, smr_duplicates,
# came at seed 16 with commit notices at once and at seed 53 with them held 1 ms.)
@pytest.mark.parametrize(("nodes", "seeds"), [(3, range(1, 41)), (5, range(1, 56))])
def test_sweep_with_every_fault_is_safe_linearizable_and_live(nodes: int, seeds: range) -> None:
    totals: dict[str, int] = {}
    for seed in seeds:
        result = run(seed, nodes)
        assert result.violations == [], (seed, result.violations[:2])
        assert result.stats["linearizable"] is True, seed
        assert result.stats["ops_invoked"] + result.stats["ops_unissued"] >= 200, seed
        assert result.stats["ops_completed"] > 0, seed
        totals["ops_completed"] = totals.get("ops_completed", 0) + result.stats["ops_completed"]
        for name in ("crashes_mid_step", "messages_lost", "messages_duplicated",
                     "messages_partitioned", "membership_requests", "nemesis_crashes"):
            totals[name] = totals.get(name, 0) + int(result.stats[name])
        for name in ("raft_compactions", "smr_snapshots_restored", "raft_snapshots_installed",
                     "raft_config_changes_proposed", "smr_duplicates", "smr_forwarded"):
            totals[name] = totals.get(name, 0) + result.counters.get(name, 0)
    # Every kind of fault and every mechanism was exercised by the sweep, and the
    # histories were not trivial (the safety phase has room for 200 operations;
    # under all faults about a fifth of that completes).
    assert all(value > 0 for value in totals.values()), totals
    assert totals["ops_completed"] >= 20 * len(seeds), totals


@pytest.mark.parametrize("fault", ALL_FAULTS)
def test_each_fault_alone(fault: str) -> None:
    for seed in range(1, 5):
        result = run(seed, 3, (fault,), ops=120)
        assert result.violations == [], (fault, seed, result.violations[:2])
        assert result.stats["linearizable"] is True


def test_crashes_keeping_a_prefix_of_unsynced_writes_happen_and_are_survived() -> None:
    mid_step = 0
    for seed in range(1, 9):
        result = run(seed, 3, ("crash",), ops=150, nemesis_every_us=500_000)
        assert result.violations == [], (seed, result.violations[:2])
        mid_step += result.stats["crashes_mid_step"]
    assert mid_step >= 5


def test_a_long_run_keeps_the_sessions_bounded_and_compacts() -> None:
    result = run(4, 3, ("crash", "loss"), ops=1500, clients=8)
    assert result.violations == []
    assert result.stats["linearizable"] is True
    assert result.counters["raft_compactions"] >= 10


def test_cli_json_fields_and_history_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    history = tmp_path / "history.jsonl"
    status, report = cli_json(
        capsys, "sim", "raft", "--nodes", "3", "--seed", "7", "--faults", ",".join(ALL_FAULTS),
        "--clients", "4", "--ops", "80", "--history", str(history),
    )
    assert status == 0
    assert report["violations"] == []
    assert report["linearizable"] is True
    assert report["ops_completed"] > 0
    assert report["ops_invoked"] + report["stats"]["ops_unissued"] >= 80
    assert len(report["log_sha256"]) == 64
    assert report["reproduce"] == (
        "replicaio sim raft --nodes 3 --faults crash,partition,loss,dup,reorder "
        "--clients 4 --ops 80 --seed 7"
    )
    operations = load_history(history)
    assert len(operations) == report["ops_invoked"]
    assert check_linearizable(operations).linearizable is True


def test_log_sha256_is_the_same_in_two_processes() -> None:
    args = [sys.executable, "-m", "replicaio.cli", "sim", "raft", "--nodes", "5", "--seed", "11",
            "--faults", ",".join(ALL_FAULTS), "--ops", "100", "--json"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    second = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    one, two = json.loads(first.stdout), json.loads(second.stdout)
    assert one["log_sha256"] == two["log_sha256"]
    assert one["stats"]["steps"] == two["stats"]["steps"]


def test_snapshot_interval_is_a_protocol_parameter_recorded_for_replay(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    log = tmp_path / "run.log"
    status, report = cli_json(
        capsys, "sim", "raft", "--nodes", "3", "--seed", "3", "--faults", "crash,partition,loss",
        "--ops", "120", "--snapshot-every", "4", "--log", str(log),
    )
    assert status == 0, report["violations"]
    assert report["protocol"] == "raft:snapshot=4"
    assert report["counters"]["raft_compactions"] > 10
    assert "--snapshot-every 4" in report["reproduce"]
    for node in range(3):
        status, replayed = cli_json(capsys, "replay", str(log), "--node", str(node))
        assert status == 0, replayed["divergence"]
        assert replayed["matched"] is True
        assert replayed["steps"] > 0
    # crash-restarts happened in that run, so replay crossed incarnations
    assert report["stats"]["restarts"] > 0


def test_swarm_reports_every_run_linearizable(capsys: pytest.CaptureFixture[str]) -> None:
    status, report = cli_json(
        capsys, "swarm", "raft", "--nodes", "3", "--seeds", "4", "--jobs", "1",
        "--faults", "crash,partition", "--ops", "60",
    )
    assert status == 0
    assert report["passed"] == 4
    assert report["all_linearizable"] is True
    assert report["not_linearizable_seeds"] == []


# -- the mutants: each caught by a sweep; the reproducing commands are kept here -----------

MUTANT_CATCHES = [
    # (reproducing command, the property that must be violated); the Raft
    # checkers' own sweeps over the same mutants are in test_raft_mutants.py
    ("replicaio sim raft-follower-reads --nodes 5 --faults crash,partition,loss,dup,reorder "
     "--seed 1", "linearizable_read"),
    ("replicaio sim raft-commit-previous-term --nodes 3 --faults "
     "crash,partition,loss,dup,reorder --seed 2", "commit_rule"),
    ("replicaio sim raft-forget-vote --nodes 3 --faults crash,partition,loss,dup,reorder "
     "--seed 3", "durable_state"),
]


@pytest.mark.parametrize(("command", "violated"), MUTANT_CATCHES)
def test_mutants_are_caught(
    capsys: pytest.CaptureFixture[str], command: str, violated: str
) -> None:
    words = shlex.split(command)
    assert words[0] == "replicaio"
    status, report = cli_json(capsys, *words[1:])
    assert status == 1
    assert violated in {violation["property"] for violation in report["violations"]}
    assert report["reproduce"] == command


def test_the_correct_protocol_passes_the_mutants_seeds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for command, _ in MUTANT_CATCHES:
        words = shlex.split(command)
        words[2] = "raft"
        status, report = cli_json(capsys, *words[1:])
        assert status == 0, (command, report["violations"][:2])
        assert report["linearizable"] is True


def come_and_go(sessions: int, clients: int) -> tuple[SimResult, Simulator]:
    options = kv_options(6, 3, ("loss", "dup"), KvWorkload(
        clients=clients, ops=600, client_ops_max=10, membership_every_us=400_000,
    ))
    simulator = Simulator(f"raft:sessions={sessions}", options, f=1, record=False)
    return simulator.run(), simulator


def test_session_table_stays_bounded_while_clients_come_and_go() -> None:
    result, simulator = come_and_go(sessions=16, clients=4)
    assert result.violations == []
    assert result.stats["linearizable"] is True
    # 16 sessions, far more ids: (43 since refused forwards count as "may
    # still run", so a few operations end unknown and the churn is slower)
    assert result.stats["client_ids_used"] >= 40
    assert result.counters["smr_sessions_evicted"] > 0
    for node in simulator.nodes:
        assert node.core is not None
        protocol = node.core.protocol
        assert isinstance(protocol, SmrProtocol)
        assert len(protocol.replica.sessions) <= 16


def test_a_session_table_too_small_for_the_active_clients_stays_at_most_once() -> None:
    """With barely more sessions than active clients, retries outlive their
    sessions. An evicted client's request is refused (session_expired), never
    executed twice: the history stays linearizable."""
    result, _ = come_and_go(sessions=8, clients=6)
    assert result.counters["smr_sessions_evicted"] > 0
    assert result.counters["smr_session_expired"] > 0
    assert result.violations == []
    assert result.stats["linearizable"] is True


def test_the_benchmark_still_runs(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "bench" / "bench_raft_kv.py"
    spec = importlib.util.spec_from_file_location("bench_raft_kv", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_raft_kv"] = bench
    spec.loader.exec_module(bench)
    status = bench.main(["--sizes", "3", "--runs", "1", "--ops", "60", "--clients", "3",
                         "--long-ops", "300", "--long-clients", "4", "--client-ops", "20",
                         "--sessions", "8", "--sample-ms", "100", "--trace-every", "5", "--json"])
    assert status == 0
    report = json.loads(capsys.readouterr().out)
    [row] = report["throughput"]
    assert row["n"] == 3 and row["ops_per_second"] > 0
    long = report["long"]
    assert long["violations"] == [] and long["linearizable"] is True
    assert all(tenth["sessions"] <= 8 for tenth in long["per_tenth_max"])
    assert all(tenth["node_kib"] > 0 for tenth in long["per_tenth_max"][1:])
