"""How much distinct code one SET runs on each node: a call census (issue 13, ADR 0061).

ADR 0060 found that at one client every step starts cold, so what a SET costs there
follows the *distinct* code it runs more than how fast that code is. This script
counts it. It starts a three-node cluster the way ``bench_kv.py`` does (replicaio's
Raft KV with the Redis front, and with ``--floor`` the floor of
``bench/kv_floor_node.py`` beside it), with ``bench/census/sitecustomize.py`` in
every node (a profile hook counting every Python and C call on every thread), sends
``--sets`` SETs from one client after ``--warmup`` more, and takes a snapshot of
every node's counts just before and just after (SIGUSR1). Per node it prints the
functions called at least ``--min-per-set`` times per SET (Python and C), the calls
per SET, and the modules they are in.

The nodes run interpreted (``REPLICAIO_COMPILED=0``): a compiled function is
invisible to the profile hook. The compiled build runs the same functions, some
inlined; the distinct code per SET is the same order. Times are meaningless under
the hook (it slows a node several times); counts are exact up to background work
in the window (heartbeats, timers: a fraction of a call per SET, below the
threshold).

    python bench/census_kv_calls.py --sets 2000 --floor
    python bench/census_kv_calls.py --sets 500 --json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_kv import (  # noqa: E402
    PROCESSES,
    FloorSystem,
    ReplicaioSystem,
    RespClient,
    Settings,
    System,
    cpu_seconds,
    run_async,
)

CENSUS = HERE / "census"


def snapshot(pids: list[int], directory: Path, index: int) -> dict[int, dict[tuple[str, int,
                                                                                  str], int]]:
    """Every node's counts so far (SIGUSR1, then wait for its file)."""
    for pid in pids:
        os.kill(pid, signal.SIGUSR1)
    found: dict[int, dict[tuple[str, int, str], int]] = {}
    deadline = time.monotonic() + 60.0
    while len(found) < len(pids):
        if time.monotonic() > deadline:
            raise SystemExit(f"census: no snapshot {index} from {set(pids) - set(found)}")
        for pid in pids:
            path = directory / f"{pid}.{index}.json"
            if pid not in found and path.exists():
                found[pid] = {(f, line, name): count
                              for f, line, name, count in json.loads(path.read_text())}
        time.sleep(0.05)
    return found


def module_of(filename: str) -> str:
    if filename == "<C>":
        return "<C>"
    if "/replicaio/" in filename:
        return "replicaio/" + filename.rsplit("/replicaio/", 1)[1]
    return Path(filename).name


def report(before: dict[tuple[str, int, str], int], after: dict[tuple[str, int, str], int],
           sets: int, minimum: float, limit: int | None = 40) -> dict[str, Any]:
    """Functions called at least ``minimum`` times per SET between the snapshots (the
    ``limit`` most called of them by name, every one with ``None``)."""
    per_set = {key: (count - before.get(key, 0)) / sets for key, count in after.items()}
    kept = {key: value for key, value in per_set.items() if value >= minimum}
    modules: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for (filename, _line, _name), value in kept.items():
        entry = modules[module_of(filename)]
        entry[0] += 1
        entry[1] += value
    python = [key for key in kept if key[0] != "<C>"]
    return {
        "functions": len(kept),
        "python_functions": len(python),
        "c_functions": len(kept) - len(python),
        "calls_per_set": round(sum(kept.values()), 1),
        "python_calls_per_set": round(sum(kept[key] for key in python), 1),
        "modules": sorted(([name, int(n), round(calls, 1)] for name, (n, calls)
                           in modules.items()), key=lambda row: (-row[1], row[0])),
        "top": [[module_of(f) + f":{line} {name}", round(value, 2)] for (f, line, name), value
                in sorted(kept.items(), key=lambda item: -item[1])[:limit]],
    }


async def sets(port: int, count: int, value: bytes) -> None:
    client = await RespClient.connect(port)
    try:
        for index in range(count):
            await client.set(b"key:%d" % (index % 1000), value)
    finally:
        await client.close()


def census(system: System, roles: dict[int, str], port: int, args: argparse.Namespace,
           directory: Path) -> dict[str, Any]:
    run_async(sets(port, args.warmup, b"v" * args.value_bytes))
    pids = list(roles)
    before = snapshot(pids, directory, 0)
    run_async(sets(port, args.sets, b"v" * args.value_bytes))
    after = snapshot(pids, directory, 1)
    limit = None if args.list else 40
    return {roles[pid]: report(before[pid], after[pid], args.sets, args.min_per_set, limit)
            for pid in pids}


def thread_times(pid: int) -> dict[int, tuple[int, int, int]]:
    """Each thread of ``pid``: (user ticks, system ticks, voluntary context switches),
    from /proc (a thread gone meanwhile is left out)."""
    found: dict[int, tuple[int, int, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            status = (task / "status").read_text()
        except OSError:
            continue
        switches = next((int(line.split()[1]) for line in status.splitlines()
                         if line.startswith("voluntary_ctxt_switches")), 0)
        found[int(task.name)] = (int(fields[11]), int(fields[12]), switches)
    return found


def by_thread(pid: int, before: dict[int, tuple[int, int, int]],
              after: dict[int, tuple[int, int, int]], sets: int) -> dict[str, Any]:
    """Per SET: the main thread's and the other threads' user and system CPU (us)
    and wake-ups (voluntary context switches: each a sleep the thread woke from)."""
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    parts: dict[str, list[float]] = {"main": [0.0, 0.0, 0.0], "threads": [0.0, 0.0, 0.0]}
    for tid, (user, system, switches) in after.items():
        was = before.get(tid, (0, 0, 0))
        part = parts["main" if tid == pid else "threads"]
        part[0] += (user - was[0]) * tick_us / sets
        part[1] += (system - was[1]) * tick_us / sets
        part[2] += (switches - was[2]) / sets
    return {name: {"user_us": round(user, 1), "system_us": round(system, 1),
                   "wakeups": round(wakeups, 2)}
            for name, (user, system, wakeups) in parts.items()}


def cpu_per_set(roles: dict[int, str], port: int, args: argparse.Namespace) -> dict[str, Any]:
    """``--cpu``: each node's CPU time (user + system, all threads, from /proc) per SET
    over the same SETs, without the hook, the build as deployed; and the same split
    into the main thread and the others (the disk threads), with wake-ups."""
    run_async(sets(port, args.warmup, b"v" * args.value_bytes))
    threads_before = {pid: thread_times(pid) for pid in roles}
    before = {pid: cpu_seconds([pid]) for pid in roles}
    started = time.perf_counter()
    run_async(sets(port, args.sets, b"v" * args.value_bytes))
    elapsed = time.perf_counter() - started
    after = {pid: cpu_seconds([pid]) for pid in roles}
    threads_after = {pid: thread_times(pid) for pid in roles}
    found: dict[str, Any] = {
        roles[pid]: {"cpu_us_per_set": round((after[pid] - before[pid]) * 1e6 / args.sets, 1),
                     "threads": by_thread(pid, threads_before[pid], threads_after[pid],
                                          args.sets)}
        for pid in roles}
    found["client"] = {"sets_per_s": round(args.sets / elapsed, 1),
                       "round_trip_us": round(elapsed * 1e6 / args.sets, 1)}
    return found


def print_report(name: str, nodes: dict[str, Any], top: int) -> None:
    print(f"\n{name}: per SET, functions called >= the threshold on each node")
    print(f"  {'node':10} {'functions':>9} {'python':>7} {'C':>5} {'calls':>7} "
          f"{'python calls':>12}")
    for role, found in nodes.items():
        print(f"  {role:10} {found['functions']:9} {found['python_functions']:7} "
              f"{found['c_functions']:5} {found['calls_per_set']:7} "
              f"{found['python_calls_per_set']:12}")
    for role, found in nodes.items():
        print(f"  {role}: modules (functions, calls per SET)")
        for module, functions, calls in found["modules"][:top]:
            print(f"    {module:58} {functions:4} {calls:8}")
    if not any(len(found["top"]) > 40 for found in nodes.values()):
        return
    for role, found in nodes.items():
        print(f"  {role}: every function counted (calls per SET)")
        for name, calls in sorted(found["top"]):
            print(f"    {calls:7} {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", type=int, default=2000, help="SETs counted")
    parser.add_argument("--warmup", type=int, default=300, help="SETs before counting")
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--min-per-set", type=float, default=0.5,
                        help="a function counts if called at least this often per SET")
    parser.add_argument("--floor", action="store_true",
                        help="the floor (bench/kv_floor_node.py) too, after replicaio")
    parser.add_argument("--top", type=int, default=25, help="modules listed per node")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    parser.add_argument("--list", action="store_true",
                        help="every function counted, by module (not only the 40 most called)")
    parser.add_argument("--cpu", action="store_true",
                        help="no census: each node's CPU time per SET, the build as deployed")
    args = parser.parse_args(argv)
    if args.sets <= 0 or args.warmup < 0 or args.min_per_set <= 0:
        parser.error("--sets and --min-per-set must be positive, --warmup not negative")
    workdir = Path(tempfile.mkdtemp(prefix="census-kv-"))
    directory = workdir / "census"
    directory.mkdir()
    results: dict[str, Any] = {"sets": args.sets, "warmup": args.warmup,
                               "min_per_set": args.min_per_set, "systems": {}}
    saved = {name: os.environ.get(name) for name in
             ("REPLICAIO_CENSUS_DIR", "REPLICAIO_COMPILED", "PYTHONPATH")}
    if not args.cpu:
        os.environ["REPLICAIO_CENSUS_DIR"] = str(directory)
        os.environ["REPLICAIO_COMPILED"] = "0"
        os.environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(CENSUS), saved["PYTHONPATH"]]))

    def measure(system: System, roles: dict[int, str], port: int) -> dict[str, Any]:
        if args.cpu:
            return cpu_per_set(roles, port, args)
        return census(system, roles, port, args, directory)

    try:
        settings = Settings(workdir=workdir, warmup_s=0, duration_s=0, keys=1000,
                            value_bytes=args.value_bytes, front="resp", node_params={},
                            protocol_params={}, install=False)
        replicaio = ReplicaioSystem(settings)
        replicaio.start()
        try:
            pids = {process.pid: node for node, process in replicaio.cluster.processes.items()}
            roles = {pid: "leader" if node == replicaio.leader else f"follower {node}"
                     for pid, node in pids.items()}
            port = replicaio.client_port()
            results["systems"]["replicaio"] = measure(replicaio, roles, port)
        finally:
            replicaio.stop()
        if args.floor:
            floor = FloorSystem(settings, 2)
            floor.start()
            try:
                roles = {process.pid: role for process, role in
                         zip(floor.processes, ("follower 1", "follower 2", "leader"),
                             strict=True)}
                results["systems"]["floor"] = measure(floor, roles, floor.port)
            finally:
                floor.stop()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        PROCESSES.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=1))
    elif args.cpu:
        print(f"CPU per SET (us, user + system, every thread) over {args.sets} SETs of one "
              f"client after {args.warmup}; the build as deployed")
        for name, nodes in results["systems"].items():
            client = nodes.pop("client")
            print(f"  {name:10} " + ", ".join(f"{role} {found['cpu_us_per_set']}"
                                              for role, found in sorted(nodes.items()))
                  + f"; {client['sets_per_s']} SETs/s, round trip {client['round_trip_us']} us")
            for role, found in sorted(nodes.items()):
                print(f"    {role:10} " + "; ".join(
                    f"{part} {figures['user_us']}u + {figures['system_us']}s us, "
                    f"{figures['wakeups']} wake-ups" for part, figures in found["threads"].items()))
    else:
        print(f"SETs counted {args.sets} (after {args.warmup}), one client, interpreted "
              f"build, threshold {args.min_per_set} calls per SET")
        for name, nodes in results["systems"].items():
            print_report(name, dict(sorted(nodes.items())), args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
