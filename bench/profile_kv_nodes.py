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
* the machine's CPU over the run (/proc/stat: how busy its cores were, and
  how that splits into the nodes, this script's own load generator and the
  rest of the machine: other sessions' processes, interrupts): whether a
  client count is bounded by the CPU at all;
* the top functions by self CPU time of the leader and of one follower, and
  the share of self time per source file.

    .venv/bin/python bench/profile_kv_nodes.py --clients 1 --seconds 10
    .venv/bin/python bench/profile_kv_nodes.py --clients 64 --seconds 10 --top 40
    .venv/bin/python bench/profile_kv_nodes.py --protocol pbft --clients 64 --seconds 10

cProfile slows Python code (about 1.5-2x), so absolute CPU figures are higher
than without it; the shares are what to read. It sees interpreted functions
only: with the compiled build (ADR 0049) a node's batch loop, transport and
front run inside one compiled call and the profile is one line (uvloop's
``wrapper``); ``REPLICAIO_COMPILED=0`` in the environment profiles the same
code interpreted (the nodes inherit it), ``--perf`` samples the compiled one.
At one client a step's cost is mostly its code being cold (ADR 0060): for
that, ``bench/time_kv_steps.py``. Load average and the disk's
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

from bench_kv import (  # noqa: E402
    OpError,
    RespClient,
    cpu_seconds,
    fsync_probe,
    summarize_collapsed,
)

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


def thread_cpu(pid: int) -> dict[str, tuple[float, float, int]]:
    """User and system CPU seconds and voluntary context switches (wake-ups: each
    time the thread slept and was woken) of each thread of ``pid``: ``main``, or
    the thread's id (Python does not name its threads for the kernel); a thread
    gone by then is not counted."""
    ticks = os.sysconf("SC_CLK_TCK")
    found: dict[str, tuple[float, float, int]] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            rest = (task / "stat").read_text().rpartition(")")[2]
            status = (task / "status").read_text()
        except OSError:
            continue
        name = "main" if task.name == str(pid) else f"t{task.name}"
        fields = rest.split()
        switches = int(status.partition("voluntary_ctxt_switches:")[2].split()[0])
        found[name] = (int(fields[11]) / ticks, int(fields[12]) / ticks, switches)
    return found


def thread_report(before: dict[str, tuple[float, float, int]],
                  after: dict[str, tuple[float, float, int]], ops: int) -> str:
    """Each busy thread's user + system CPU (ms) per 1,000 ops between two
    ``thread_cpu``, and its wake-ups per op (``w``)."""
    parts = []
    for name, (user, system, switches) in sorted(after.items()):
        user0, system0, switches0 = before.get(name, (0.0, 0.0, 0))
        if user == user0 and system == system0 and name != "main":
            continue  # an idle thread (the resolver's, the executor's)
        parts.append(f"{name} {1e6 * (user - user0) / ops:.0f}u+"
                     f"{1e6 * (system - system0) / ops:.0f}s {(switches - switches0) / ops:.2f}w")
    return ", ".join(parts)


def machine_cpu() -> tuple[float, float, float]:
    """The machine's busy, stolen and total CPU seconds, all cores, from /proc/stat
    (busy: user, nice, system, irq, softirq; stolen: time the hypervisor ran
    something else while this VM wanted the CPU)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = fields[:8]
    busy = user + nice + system + irq + softirq
    return busy / ticks, steal / ticks, (busy + idle + iowait + steal) / ticks


def metrics_text(cluster: LocalCluster, node: int) -> str | None:
    """``node``'s metrics page (``None`` if it does not answer: not listening yet,
    or too slow under load)."""
    import urllib.request

    address = cluster.cluster.nodes[node].metrics
    assert address is not None
    try:
        with urllib.request.urlopen(f"http://{address.host}:{address.port}/metrics",
                                    timeout=5) as page:
            return str(page.read().decode())
    except OSError:
        return None


def node_stats(cluster: LocalCluster, node: int) -> dict[str, float]:
    """The host's step, batch, sync and message counters of ``node`` (from its
    metrics endpoint; empty if it does not answer)."""
    text = metrics_text(cluster, node)
    if text is None:
        return {}
    found: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in STAT_NAMES:
            found[STAT_NAMES[name]] = found.get(STAT_NAMES[name], 0.0) + float(value)
        elif name.startswith("replicaio_peer_messages_in_total"):
            found["messages_in"] = found.get("messages_in", 0.0) + float(value)
    return found


STAT_NAMES = {f"replicaio_{stat}_total": stat
              for stat in ("steps", "batches", "syncs", "outputs", "messages_out")}


def strace_start(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """``strace -c -f`` attached to ``pid`` (every thread), summary to ``output``."""
    return subprocess.Popen(["strace", "-c", "-f", "-q", "-o", str(output), "-p", str(pid)],
                            stderr=subprocess.DEVNULL)


def strace_report(output: Path, ops: int) -> str:
    """The system calls per operation of an ``strace -c`` summary (the top ones)."""
    calls: list[tuple[int, str]] = []
    for line in output.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
            calls.append((int(fields[3]), fields[-1]))
    total = sum(count for count, _ in calls)
    top = ", ".join(f"{name} {count / ops:.2f}" for count, name in sorted(calls, reverse=True)[:8])
    return f"{total / ops:.1f} system calls per op ({top})"


def leader_of(cluster: LocalCluster, protocol: str) -> int:
    if protocol != "raft":
        return 0  # the primary of view 0 (bench_kv.py's PbftSystem)

    for _ in range(300):
        for node in range(3):
            text = metrics_text(cluster, node)
            if text is None:
                continue  # ask again
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
    parser.add_argument("--host-params", default="",
                        help="[host] keys, e.g. sync_inline=true,pipeline=3")
    parser.add_argument("--protocol", choices=("raft", "pbft"), default="raft")
    parser.add_argument("--auth", choices=("hmac", "ed25519"), default="",
                        help="channel and node keys (default: hmac for raft, ed25519 for pbft)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the run's directory (profiles, node logs, data)")
    parser.add_argument("--py-spy", default="", metavar="PY_SPY",
                        help="py-spy (its path, or 'py-spy': the one ./run setup installs "
                        "beside this interpreter) records the leader's threads, --native, while "
                        "the clients run (it stops the process per sample: slows it)")
    parser.add_argument("--perf", choices=("leader", "follower"), default=None,
                        help="perf record (CPU samples, user and kernel) of the leader's or "
                        "a follower's threads while the clients run; perf report's top symbols")
    parser.add_argument("--perf-calls", choices=("fp", "dwarf"), default=None,
                        help="with --perf: record call chains (fp: frame pointers, the kernel's "
                        "whole, the interpreter's and compiled modules' cut short; dwarf: whole, "
                        "large files, slows the node); read them with --keep and perf report "
                        "-i DIR/leader.perf")
    parser.add_argument("--strace", action="store_true",
                        help="count each node's system calls per op (strace -c -f; slows it)")
    args = parser.parse_args()
    if args.py_spy == "py-spy":  # the dev dependency, beside this interpreter, else on PATH
        beside = Path(sys.executable).with_name("py-spy")
        args.py_spy = str(beside) if beside.exists() else (shutil.which("py-spy") or "")
        if not args.py_spy:
            parser.error("--py-spy py-spy: no py-spy beside this interpreter nor on PATH "
                         "(./run setup installs it)")
    workdir = Path(tempfile.mkdtemp(prefix="profile-kv-"))
    sections: dict[str, dict[str, Any]] = {
        "host": {"fsync": not args.no_fsync, "client_service": "resp"}}
    for item in filter(None, args.host_params.split(",")):
        key, _, value = item.partition("=")
        flag = {"true": True, "false": False}.get(value.strip().lower())
        sections["host"][key.strip()] = int(value) if flag is None else flag
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
        stats_before = [node_stats(cluster, node) for node in range(nodes)]
        tracers = [strace_start(process.pid, workdir / f"node-{node}.strace")
                   for node, process in enumerate(processes)] if args.strace else []
        spy = None
        if args.py_spy:
            spy = subprocess.Popen(
                [args.py_spy, "record", "--pid", str(processes[leader].pid), "--duration",
                 str(int(args.seconds)), "--rate", "250", "--format", "raw", "--native",
                 "--threads", "--output", str(workdir / "leader.collapsed")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        perf = None
        if args.perf:
            perf = subprocess.Popen(
                ["perf", "record", "-F", "1999", "-q",
                 *([f"--call-graph={args.perf_calls}"] if args.perf_calls else []), "-p",
                 str(processes[leader if args.perf == "leader" else (leader + 1) % nodes].pid),
                 "-o", str(workdir / "leader.perf"), "--", "sleep", str(args.seconds + 1)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if tracers or spy or perf:
            time.sleep(1.0)  # attached to every thread
        threads_before = [thread_cpu(process.pid) for process in processes]
        machine_before, driver_before = machine_cpu(), os.times()
        began = time.perf_counter()
        latencies = asyncio.run(drive(port, args.clients, args.seconds,
                                      args.workload == "mixed"))
        wall = time.perf_counter() - began
        machine_after, driver_after = machine_cpu(), os.times()
        for tracer in tracers:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(30)
        if spy is not None:
            spy.wait(60)
        if perf is not None:
            perf.wait(60)
        stats_after = [node_stats(cluster, node) for node in range(nodes)]
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
    busy, stolen, capacity = (after - before for after, before in
                              zip(machine_after, machine_before, strict=True))
    driver = (driver_after.user + driver_after.system
              - driver_before.user - driver_before.system)
    print(f"machine: {os.cpu_count()} cores {100 * busy / capacity:.0f} % busy over the run, "
          f"{100 * stolen / capacity:.0f} % stolen ({busy:.2f} and {stolen:.2f} of "
          f"{capacity:.2f} CPU s); per 1,000 ops: nodes "
          f"{1e6 * sum(cpu) / ops:.0f} ms, this load generator {1e6 * driver / ops:.0f} ms, "
          f"the rest of the machine {1e6 * (busy - sum(cpu) - driver) / ops:.0f} ms "
          f"(other processes, interrupts; the nodes' CPU counted from before the run's start "
          f"to after its end)")
    for node in range(nodes):
        role = "leader" if node == leader else "follower"
        print(f"  node {node} ({role}): {1e3 * cpu[node] / ops * 1000:.0f} ms CPU per 1,000 ops"
              f" (by thread, ms user + system, wake-ups per op: "
              f"{thread_report(threads_before[node], threads_after[node], ops)})")
        before, after = stats_before[node], stats_after[node]
        print("    per op: " + ", ".join(
            f"{stat} {(after.get(stat, 0.0) - before.get(stat, 0.0)) / ops:.2f}"
            for stat in ("batches", "steps", "syncs", "messages_out", "messages_in")))
        if args.strace:
            print("    " + strace_report(workdir / f"node-{node}.strace", ops))
    if not os.environ.get("PROFILE_KV_OFF"):  # (no profiles without the profiler)
        report(workdir / f"node-{leader}.prof", f"leader (node {leader})", args.top)
        follower = next(node for node in range(nodes) if node != leader)
        report(workdir / f"node-{follower}.prof", f"follower (node {follower})", args.top)
    if args.py_spy and (workdir / "leader.collapsed").exists():
        # The leader's main thread only (py-spy names it by the process id).
        main_only = workdir / "leader-main.collapsed"
        with open(workdir / "leader.collapsed") as raw, open(main_only, "w") as out:
            for line in raw:
                if line.startswith(f"thread ({processes[leader].pid}):"):
                    out.write(line)
        summary = summarize_collapsed(main_only, top=args.top)
        print(f"\nleader's main thread, py-spy --native: {summary['samples']} samples")
        for title in ("self_pct", "inclusive_pct", "self_by_file_pct"):
            print(f"  {title}:")
            for name, share in summary[title]:
                print(f"    {share:5.1f} %  {name}")
    if args.perf and (workdir / "leader.perf").exists():
        print(f"\n{args.perf}'s threads, perf (CPU samples by thread, library, symbol; "
              f"top {args.top}):")
        shown = subprocess.run(
            ["perf", "report", "-i", str(workdir / "leader.perf"), "--stdio", "--sort",
             "pid,dso,sym", "--percent-limit", "0.3"],
            capture_output=True, text=True, check=False).stdout
        rows = [line for line in shown.splitlines() if line.strip() and not line.startswith("#")]
        print("\n".join(rows[: args.top]))
    if args.keep:
        print(f"profiles, logs and data kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
