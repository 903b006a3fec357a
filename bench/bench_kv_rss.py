"""Memory of a live 3-node replicaio KV over a long run: RSS sampled while a
closed loop of RESP clients SETs (and GETs) many operations.

Starts 3 ``replicaio node`` processes (Raft + SMR + KV, RESP front, fsync on),
drives ``--ops`` operations from ``--clients`` connections to the leader (keys
drawn from ``--keys``, ``--value-bytes`` values, ``--gets`` share of GETs), and
samples every node's resident set size (``VmRSS`` in ``/proc/PID/status``) each
``--sample-seconds``. It prints the samples and, per node, the RSS after the
first tenth of the operations (warm: the store holds every key by then), the
last, and the largest: memory is flat when the last is close to the warm one.

    .venv/bin/python bench/bench_kv_rss.py --ops 1000000 --clients 64
    .venv/bin/python bench/bench_kv_rss.py --ops 200000 --clients 32 --json
    .venv/bin/python bench/bench_kv_rss.py --ops 100000 --tracemalloc /tmp/snaps

``--tracemalloc DIR`` runs the nodes under ``tracemalloc`` (slower;
``bench/tracemalloc_node.py``), snapshots every node after the warm tenth and
at the end, and prints, per node, the allocation sites that grew in between.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_kv import OpError, RespClient  # noqa: E402
from profile_kv_nodes import leader_of  # noqa: E402
from tracemalloc_node import diff as tracemalloc_diff  # noqa: E402

from replicaio.runtime.local import LocalCluster  # noqa: E402


def rss_kib(pid: int) -> int:
    """The resident set size of process ``pid`` in KiB (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


async def drive(port: int, args: argparse.Namespace, pids: list[int]) -> dict[str, Any]:
    connections = [await RespClient.connect(port) for _ in range(args.clients)]
    value = b"v" * args.value_bytes
    done = 0
    samples: list[dict[str, Any]] = []
    began = time.perf_counter()
    finished = asyncio.Event()
    snapshots = [args.ops // 10] if args.tracemalloc else []

    refused = 0

    async def one(index: int, client: RespClient) -> None:
        nonlocal done, refused
        key = index
        while done < args.ops:
            done += 1
            key = (key * 7919 + index + 1) % args.keys
            try:
                if args.gets and (done * 2654435761) % 1000 < args.gets * 1000:
                    await client.command(b"GET", b"key:%d" % key)
                else:
                    await client.set(b"key:%d" % key, value)
            except OpError:  # TRYAGAIN (a node paused by a tracemalloc snapshot): counted
                refused += 1

    async def sample() -> None:
        while not finished.is_set():
            samples.append({"seconds": round(time.perf_counter() - began, 1), "ops": done,
                            "rss_kib": [rss_kib(pid) for pid in pids]})
            if snapshots and done >= snapshots[0]:
                snapshots.pop()
                snapshot_all(pids, args.tracemalloc, 0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), args.sample_seconds)

    sampler = asyncio.create_task(sample())
    await asyncio.gather(*(one(index, client) for index, client in enumerate(connections)))
    finished.set()
    await sampler
    samples.append({"seconds": round(time.perf_counter() - began, 1), "ops": done,
                    "rss_kib": [rss_kib(pid) for pid in pids]})
    if args.tracemalloc:
        snapshot_all(pids, args.tracemalloc, 1)
    for client in connections:
        client.writer.close()
    return {"seconds": time.perf_counter() - began, "ops": done, "refused": refused,
            "samples": samples}


def snapshot_all(pids: list[int], directory: Path, number: int) -> None:
    """Every node dumps its tracemalloc snapshot ``number`` (SIGUSR1); waits for them."""
    for pid in pids:
        os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 120
    for pid in pids:
        done = directory / f"node-{pid}-{number}.snapshot.done"
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.2)


def leader_when_up(cluster: LocalCluster) -> int:
    """The leader, once every node's metrics page answers (a node under
    tracemalloc serves it seconds after its client port)."""
    for _ in range(60):
        try:
            return leader_of(cluster, "raft")
        except OSError:
            time.sleep(1.0)
    return leader_of(cluster, "raft")


def summary(samples: list[dict[str, Any]], ops: int, nodes: int) -> list[dict[str, int]]:
    warm = next(sample for sample in samples if sample["ops"] >= ops // 10)
    return [{
        "warm_kib": warm["rss_kib"][node],
        "last_kib": samples[-1]["rss_kib"][node],
        "max_kib": max(sample["rss_kib"][node] for sample in samples),
    } for node in range(nodes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--gets", type=float, default=0.0, help="share of GETs (0 to 1)")
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    parser.add_argument("--protocol-params", default="", help="e.g. snapshotkib=1024")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--tracemalloc", type=Path, metavar="DIR",
                        help="run the nodes under tracemalloc, snapshots in DIR")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-kv-rss-"))
    sections: dict[str, dict[str, Any]] = {"host": {"fsync": True, "client_service": "resp"}}
    if args.protocol_params:
        sections["protocol.params"] = {
            key: int(value) for key, value in
            (item.split("=") for item in args.protocol_params.split(","))}
    cluster = LocalCluster(workdir, protocol="raft", nodes=3, sections=sections, metrics=True,
                           auth="hmac")
    processes = []
    if args.tracemalloc:
        args.tracemalloc.mkdir(parents=True, exist_ok=True)
    for node in range(3):
        wrapper = ([str(HERE / "tracemalloc_node.py"), "--dir", str(args.tracemalloc),
                    "--frames", "1", "--"]
                   if args.tracemalloc else ["-m", "replicaio.cli"])
        command = [sys.executable, *wrapper, "node", "--config",
                   str(cluster.config_path), "--id", str(node), "--log-level", "warning"]
        with open(workdir / f"node-{node}.log", "wb") as log:
            process = subprocess.Popen(command, stderr=log, stdin=subprocess.DEVNULL)
        processes.append(process)
        cluster.processes[node] = process
    try:
        cluster.wait_ready(range(3), 300.0 if args.tracemalloc else 30.0)
        leader = leader_when_up(cluster)
        port = int(cluster.cluster.nodes[leader].client.port)
        load_before = os.getloadavg()
        result = asyncio.run(drive(port, args, [process.pid for process in processes]))
        load_after = os.getloadavg()
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(30)
    result.update(leader=leader, load=[round(load_before[0], 2), round(load_after[0], 2)],
                  options=vars(args), nodes=summary(result["samples"], args.ops, 3))
    if args.tracemalloc:
        result["traced_kib"] = {str(node): [
            [int(value) // 1024 for value in (args.tracemalloc / (
                f"node-{process.pid}-{number}.snapshot.done")).read_text().split()]
            for number in (0, 1)] for node, process in enumerate(processes)}
        result["tracemalloc"] = {
            str(node): tracemalloc_diff(args.tracemalloc / f"node-{process.pid}-0.snapshot",
                                        args.tracemalloc / f"node-{process.pid}-1.snapshot", 20)
            for node, process in enumerate(processes)}
    if args.json:
        print(json.dumps(result, indent=1, default=str))
        return
    print(f"{result['ops']} ops from {args.clients} clients in {result['seconds']:.0f} s "
          f"({result['ops'] / result['seconds']:.0f}/s, {result['refused']} refused), "
          f"leader node {leader}, load average "
          f"{load_before[0]:.1f} -> {load_after[0]:.1f}")
    print("seconds      ops  " + "  ".join(f"node {node} RSS MiB" for node in range(3)))
    for sample in result["samples"]:
        print(f"{sample['seconds']:7.1f} {sample['ops']:8d}  " + "  ".join(
            f"{kib / 1024:15.1f}" for kib in sample["rss_kib"]))
    for node, figures in enumerate(result["nodes"]):
        print(f"node {node}{' (leader)' if node == leader else ''}: warm (after 10% of the ops) "
              f"{figures['warm_kib'] / 1024:.1f} MiB, last {figures['last_kib'] / 1024:.1f} MiB, "
              f"max {figures['max_kib'] / 1024:.1f} MiB")
    for node, ((warm, warm_peak), (last, peak)) in result.get("traced_kib", {}).items():
        print(f"node {node}: traced heap {warm / 1024:.1f} MiB at the warm tenth (peak "
              f"{warm_peak / 1024:.1f} before it), {last / 1024:.1f} MiB at the end (peak "
              f"{peak / 1024:.1f} in between)")
    for node, lines in result.get("tracemalloc", {}).items():
        print(f"node {node}: allocation sites that grew from the warm tenth to the end")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
