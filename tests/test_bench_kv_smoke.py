"""The live KV benchmark harness still runs (replicaio only, tiny and bounded), so it
cannot rot unnoticed. The anchors (PySyncObj, etcd, Redis) are not part of CI: they
need installing, and ``bench/bench_kv.py`` is run by hand (docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_kv.py"


def test_bench_kv_against_replicaio_only_json_and_cleanup() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--systems", "replicaio", "--clients", "1,4",
         "--workloads", "set,mixed", "--repeat", "1", "--duration", "0.7", "--warmup", "0.2",
         "--idle-seconds", "0", "--redis-benchmark", "", "--pysyncobj-memory", "",
         "--no-install", "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["skipped"].get("replicaio") is None, report["skipped"]
    rows = {(row["workload"], row["clients"]): row for row in report["rows"]}
    assert set(rows) == {("set", 1), ("set", 4), ("mixed", 1), ("mixed", 4)}
    for row in rows.values():
        assert row["system"] == "replicaio"
        assert row["ops"] > 0 and row["ops_per_s"] > 0
        assert 0 < row["p50_ms"] <= row["p99_ms"]
    conditions = report["conditions"]
    assert conditions["value_bytes"] == 100
    assert conditions["disk_fdatasync_4k"]["p50_ms"] > 0
    assert report["systems"]["replicaio"]["nodes"] == 3
    # Every process was stopped and the temporary directory removed.
    assert not Path(report["workdir"]["path"]).exists()


def test_bench_kv_floor_answers_sets_and_gets_with_both_flush_counts() -> None:
    """The floor (``bench/kv_floor_node.py``, the thinnest replicated KV with replicaio's
    shape) serves the closed loop's SETs and GETs through three real processes and
    their fsynced logs, with one flush per batch, with a lone batch's mark flush, and
    with ballast (distinct functions run per batch)."""
    done = subprocess.run(
        [sys.executable, str(BENCH), "--systems", "floor,floor-1flush", "--floor-ballast", "20",
         "--clients", "1,4", "--workloads", "set,mixed", "--repeat", "1", "--duration", "0.5",
         "--warmup", "0.2",
         "--idle-seconds", "0", "--redis-benchmark", "", "--pysyncobj-memory", "",
         "--no-install", "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["skipped"] == {}, report["skipped"]
    rows = {(row["system"], row["workload"], row["clients"]): row for row in report["rows"]}
    assert set(rows) == {(system, workload, clients)
                         for system in ("floor", "floor-1flush", "floor+ballast20")
                         for workload in ("set", "mixed") for clients in (1, 4)}
    for row in rows.values():
        assert row["ops"] > 0 and not row["errors"], row
    assert report["systems"]["floor"]["loop"] == "uvloop"
    assert not Path(report["workdir"]["path"]).exists()


HOPS = BENCH.parent / "trace_kv_hops.py"


def test_trace_kv_hops_follows_sets_through_every_node() -> None:
    """The opt-in hop stamps (REPLICAIO_HOP_TRACE) of three live nodes merge with the
    client's: every SET is followed from the client to the leader, a follower's sync
    and back, and every hop is in order (no negative span)."""
    done = subprocess.run(
        [sys.executable, str(HOPS), "--sets", "40", "--warmup", "10", "--json"],
        capture_output=True, text=True, timeout=90, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)["reports"][0]
    assert report["sets"] == 40
    assert report["sets_followed"] >= 30, report["not_followed_at"]
    assert len(report["critical_path"]) == 18
    for hop in report["critical_path"] + report["leader_sync"]:
        assert hop["p50_us"] >= 0, hop


CENSUS = BENCH.parent / "census_kv_calls.py"


def test_census_counts_the_code_one_set_runs_on_every_node() -> None:
    """``census_kv_calls.py`` counts, between two snapshots of a profile hook in every
    node, the functions one SET runs: the leader runs more than a follower (it also
    parses, commits and replies), and replicaio's nodes run more than the floor's."""
    done = subprocess.run(
        [sys.executable, str(CENSUS), "--sets", "60", "--warmup", "20", "--floor", "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    systems = json.loads(done.stdout)["systems"]
    replicaio, floor = systems["replicaio"], systems["floor"]
    assert len(replicaio) == 3 and "leader" in replicaio, sorted(replicaio)
    leader = replicaio.pop("leader")
    for follower in replicaio.values():
        assert 0 < follower["python_functions"] < leader["python_functions"], follower
        # Only the leader parses and answers the client's SET.
        # (A SET's plan is made by ``redis_commands``' table or the front's lone
        # SET path; both make a ``redis_plan.Replicated``.)
        assert not any(module.endswith(("redis_commands.py", "redis_plan.py"))
                       for module, _functions, _calls in follower["modules"])
    assert any(module.endswith(("redis_commands.py", "redis_plan.py"))
               for module, _functions, _calls in leader["modules"]), leader["modules"]
    assert 0 < floor["leader"]["python_functions"] < leader["python_functions"]


def test_census_cpu_mode_reads_each_nodes_cpu_per_set() -> None:
    """``--cpu``: no hook, each node's CPU time per SET from /proc, and the client's round
    trip; a leader does more per SET than nothing."""
    done = subprocess.run(
        [sys.executable, str(CENSUS), "--cpu", "--sets", "100", "--warmup", "20", "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    nodes = json.loads(done.stdout)["systems"]["replicaio"]
    client = nodes.pop("client")
    assert client["sets_per_s"] > 0 and client["round_trip_us"] > 0
    assert len(nodes) == 3 and nodes["leader"]["cpu_us_per_set"] > 0, nodes
    # Split by thread: the main thread works on every SET, and the disk threads
    # (fsync on) sleep in at least one flush per SET.
    threads = nodes["leader"]["threads"]
    assert threads["main"]["user_us"] + threads["main"]["system_us"] > 0, threads
    assert threads["threads"]["wakeups"] >= 1, threads
