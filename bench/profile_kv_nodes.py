"""Where a live replicaio KV spends its CPU: every node under cProfile.

Starts ``replicaio node`` processes (Raft n=3 by default; ``--protocol pbft``:
PBFT n=4 with Ed25519 node and client keys, as ``bench_kv.py`` runs it), with
SMR, KV and the RESP front, fsync on unless ``--no-fsync``, each inside
:func:`profiled_node`, which runs the node's main thread under ``cProfile``
with **thread CPU time** as its clock (so time a process spends waiting for
the CPU on a loaded machine, or for the disk, is not counted: the figures are
CPU, not wall time). A closed loop of ``--clients`` RESP clients SETs 100-byte
values for ``--seconds``; then the nodes are stopped (SIGTERM, a clean exit
writes each profile) and the script prints:

* ops, wall rate, p50, and per node: CPU per 1,000 operations from /proc
  (user and system, every thread, so the fsync thread's system time too);
* the top functions by self CPU time of the leader and of one follower, and
  the share of self time per source file.

    .venv/bin/python bench/profile_kv_nodes.py --clients 1 --seconds 10
    .venv/bin/python bench/profile_kv_nodes.py --clients 64 --seconds 10 --top 40
    .venv/bin/python bench/profile_kv_nodes.py --protocol pbft --clients 64 --seconds 10

cProfile slows Python code (about 1.5-2x), so absolute CPU figures are higher
than without it; the shares are what to read. Load average and the disk's
fdatasync latency are printed with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_kv import OpError, RespClient, cpu_seconds, fsync_probe  # noqa: E402

from replicaio.runtime.local import LocalCluster  # noqa: E402


def profiled_node(output: str, argv: list[str]) -> None:
    """Run ``replicaio`` with ``argv`` under cProfile (thread CPU time); the
    profile is written to ``output`` when the node exits."""
    from replicaio.cli import main

    profile = cProfile.Profile(time.thread_time)
    if os.environ.get("PROFILE_KV_OFF"):  # the same run without the profiler, to compare
        main(argv)
        return
    profile.enable()
    try:
        main(argv)
    except SystemExit:
        pass
    finally:
        profile.disable()
        profile.dump_stats(output)


def thread_cpu(pid: int) -> dict[str, tuple[float, float]]:
    """User and system CPU seconds of each thread of ``pid``: ``main``, or the
    thread's id (Python does not name its threads for the kernel); a thread
    gone by then is not counted."""
    ticks = os.sysconf("SC_CLK_TCK")
    found: dict[str, tuple[float, float]] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            rest = (task / "stat").read_text().rpartition(")")[2]
        except OSError:
            continue
        name = "main" if task.name == str(pid) else f"t{task.name}"
        fields = rest.split()
        user, system = found.get(name, (0.0, 0.0))
        found[name] = (user + int(fields[11]) / ticks, system + int(fields[12]) / ticks)
    return found


def thread_report(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]],
                  ops: int) -> str:
    """Each thread's user + system CPU per 1,000 ops between two ``thread_cpu``."""
    parts = []
    for name, (user, system) in sorted(after.items()):
        user0, system0 = before.get(name, (0.0, 0.0))
        parts.append(f"{name} {1e6 * (user - user0) / ops:.0f}u+"
                     f"{1e6 * (system - system0) / ops:.0f}s")
    return ", ".join(parts)


def leader_of(cluster: LocalCluster, protocol: str) -> int:
    import urllib.request

    if protocol != "raft":
        return 0  # the primary of view 0 (bench_kv.py's PbftSystem)

    for _ in range(300):
        for node in range(3):
            address = cluster.cluster.nodes[node].metrics
            assert address is not None
            try:
                with urllib.request.urlopen(f"http://{address.host}:{address.port}/metrics",
                                            timeout=5) as page:
                    text = page.read().decode()
            except OSError:
                continue  # not listening yet, or too slow under load: ask again
            won = down = 0.0
            for line in text.splitlines():
                if line.startswith('replicaio_core_events_total{event="raft_elections_won"}'):
                    won = float(line.rpartition(" ")[2])
                if line.startswith('replicaio_core_events_total{event="raft_leader_stepped_down"}'):
                    down = float(line.rpartition(" ")[2])
            if won - down >= 1:
                return node
        time.sleep(0.1)
    raise RuntimeError("no leader")


async def drive(port: int, clients: int, seconds: float, mixed: bool = False) -> list[float]:
    connections = [await RespClient.connect(port) for _ in range(clients)]
    value = b"v" * 100
    latencies: list[float] = []
    refusals: list[int] = []
    deadline = time.perf_counter() + seconds

    async def one(index: int, client: RespClient) -> None:
        key = 0
        while time.perf_counter() < deadline:
            key = (key * 7 + index + 1) % 1000
            begun = time.perf_counter()
            try:
                if mixed and key % 2:  # 50/50 GET/SET, as bench_kv.py's mixed workload
                    await client.get(b"key:%d" % key)
                else:
                    await client.set(b"key:%d" % key, value)
            except OpError:  # refused or timed out (a loaded machine): counted, not timed
                refusals.append(index)
                continue
            latencies.append(time.perf_counter() - begun)

    await asyncio.gather(*(one(index, client) for index, client in enumerate(connections)))
    for client in connections:
        client.writer.close()
    if refusals:
        print(f"{len(refusals)} requests refused or timed out (not in the figures)")
    return latencies


def report(path: Path, title: str, top: int) -> None:
    stats = pstats.Stats(str(path))
    total = sum(entry[2] for entry in stats.stats.values())  # type: ignore[attr-defined]
    print(f"\n{title}: {total:.2f} s of main-thread CPU under cProfile")
    by_file: dict[str, float] = {}
    rows = []
    for (filename, line, name), entry in stats.stats.items():  # type: ignore[attr-defined]
        calls, self_s, cumulative_s = entry[1], entry[2], entry[3]
        short = filename.split("/replicaio/")[-1] if "/replicaio/" in filename else (
            filename.rsplit("/", 1)[-1])
        by_file[short] = by_file.get(short, 0.0) + self_s
        rows.append((self_s, calls, cumulative_s, f"{short}:{line}({name})"))
    print("  self share by file:")
    for name, seconds in sorted(by_file.items(), key=lambda item: -item[1])[:18]:
        print(f"    {100 * seconds / total:5.1f} %  {name}")
    print(f"  {'self %':>7} {'calls':>9} {'cum s':>7}  function")
    for self_s, calls, cumulative_s, where in sorted(rows, reverse=True)[:top]:
        print(f"  {100 * self_s / total:6.1f}% {calls:9d} {cumulative_s:7.2f}  {where}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--workload", choices=("set", "mixed"), default="set",
                        help="mixed: half GETs, half SETs")
    parser.add_argument("--no-fsync", action="store_true", help="fsync off (labelled)")
    parser.add_argument("--protocol-params", default="", help="e.g. snapshot=256")
    parser.add_argument("--protocol", choices=("raft", "pbft"), default="raft")
    parser.add_argument("--auth", choices=("hmac", "ed25519"), default="",
                        help="channel and node keys (default: hmac for raft, ed25519 for pbft)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the run's directory (profiles, node logs, data)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="profile-kv-"))
    sections: dict[str, dict[str, Any]] = {
        "host": {"fsync": not args.no_fsync, "client_service": "resp"}}
    if args.protocol_params:
        sections["protocol.params"] = {
            key: int(value) for key, value in
            (item.split("=") for item in args.protocol_params.split(","))}
    nodes = 3 if args.protocol == "raft" else 4
    auth = args.auth or ("hmac" if args.protocol == "raft" else "ed25519")
    cluster = LocalCluster(workdir, protocol=args.protocol, nodes=nodes, sections=sections,
                           metrics=True, auth=auth)
    processes = []
    for node in range(nodes):
        output = workdir / f"node-{node}.prof"
        code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); "
                f"from profile_kv_nodes import profiled_node; "
                f"profiled_node({str(output)!r}, ['node', '--config', "
                f"{str(cluster.config_path)!r}, '--id', '{node}', '--log-level', 'warning'])")
        with open(workdir / f"node-{node}.log", "wb") as log:
            process = subprocess.Popen([sys.executable, "-c", code], stderr=log)
        processes.append(process)
        cluster.processes[node] = process
    try:
        cluster.wait_ready(range(nodes), 30.0)
        leader = leader_of(cluster, args.protocol)
        port = int(cluster.cluster.nodes[leader].client.port)
        load_before = os.getloadavg()
        disk = fsync_probe(workdir)
        cpu_before = [cpu_seconds([process.pid]) for process in processes]
        threads_before = [thread_cpu(process.pid) for process in processes]
        began = time.perf_counter()
        latencies = asyncio.run(drive(port, args.clients, args.seconds,
                                      args.workload == "mixed"))
        wall = time.perf_counter() - began
        cpu = [cpu_seconds([process.pid]) - before
               for process, before in zip(processes, cpu_before, strict=True)]
        threads_after = [thread_cpu(process.pid) for process in processes]
        load_after = os.getloadavg()
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(30)
    latencies.sort()
    ops = len(latencies)
    fsync = "off (labelled)" if args.no_fsync else "on"
    what = "SETs" if args.workload == "set" else "GETs/SETs"
    print(f"{args.protocol} n={nodes} auth {auth}, clients {args.clients}, fsync {fsync}, "
          f"{ops} {what} in {wall:.1f} s = {ops / wall:.0f}/s, "
          f"p50 {1e3 * latencies[ops // 2]:.2f} ms, p99 {1e3 * latencies[int(ops * 0.99)]:.2f} ms")
    print(f"load average {load_before[0]:.2f} -> {load_after[0]:.2f}; disk 4 KiB append + "
          f"fdatasync p50 {disk['p50_ms']} ms, p99 {disk['p99_ms']} ms (cProfile on)")
    for node in range(nodes):
        role = "leader" if node == leader else "follower"
        print(f"  node {node} ({role}): {1e3 * cpu[node] / ops * 1000:.0f} ms CPU per 1,000 ops"
              f" (by thread, ms user + system: "
              f"{thread_report(threads_before[node], threads_after[node], ops)})")
    if not os.environ.get("PROFILE_KV_OFF"):  # (no profiles without the profiler)
        report(workdir / f"node-{leader}.prof", f"leader (node {leader})", args.top)
        follower = next(node for node in range(nodes) if node != leader)
        report(workdir / f"node-{follower}.prof", f"follower (node {follower})", args.top)
    if args.keep:
        print(f"profiles, logs and data kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
