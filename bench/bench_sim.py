"""Simulator throughput: Bracha message deliveries per wall-clock second.

Runs ``replicaio.sim`` on Bracha's reliable broadcast with no faults and
counts the network messages delivered to nodes (``stats["messages_delivered"]``:
SEND, ECHO, READY, Acks and Hello) per second of wall time, in three modes:

* ``a``: wire codec on and event log recorded (what ``replicaio sim`` does);
* ``b``: codec on, no event log (``simulate(..., record=False)``);
* ``c``: no codec, no log (``SimOptions.draw(..., encode=False)``).

Requests are spread over virtual time by the harness (the seed draws the
spacing); ``Instances`` rejects a request beyond a sender's window
(``window_max`` = 64 undelivered-or-retained instances), so a configuration
runs ``runs`` seeds (seeds 1, 2, ...; the same seeds in every mode) of
``requests`` per node and refuses to report unless every request was taken,
every run is free of violations and every instance was delivered at every
node.

    taskset -c 0 .venv/bin/python bench/bench_sim.py              # n = 4, 16, 64; modes a, b, c
    taskset -c 0 .venv/bin/python bench/bench_sim.py --sizes 4 --modes c --json
    taskset -c 0 .venv/bin/python bench/bench_sim.py --sizes 4 --modes a --profile

``--profile`` runs each configuration under cProfile once more (slower) and
prints where the time goes, per component and per function. ``--opcodes``
counts the bytecodes and Python calls each function executes per delivered
message instead (``sys.settrace``, much slower): a count, so the same on a
loaded machine as on a quiet one, and what most of the interpreter's
instructions follow (the per-delivery figure is the run's minus a one-request
run's, so start-up is not counted).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import platform
import pstats
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from replicaio import compiled
from replicaio.sim.options import SimOptions
from replicaio.sim.simulator import SimResult, simulate

PROTOCOL = "bracha"
MODES = {
    "a": ("codec+log", True, True),
    "b": ("codec", True, False),
    "c": ("objects", False, False),
}
# n -> (requests per node per run, runs): a few seconds per mode before the
# optimisations; messages per instance grow as ~2n^2, hence fewer requests.
WORKLOADS = {4: (800, 1), 16: (16, 1), 64: (1, 1)}


@dataclass(slots=True)
class Row:
    """One configuration's totals over its runs."""

    n: int
    f: int
    runs: int
    requests_per_node: int
    requests: int
    mode: str
    encode: bool
    record: bool
    messages_delivered: int
    deliveries: int
    steps: int
    wall_seconds: float
    cpu_seconds: float
    deliveries_per_second: float
    us_per_delivery: float
    deliveries_per_cpu_second: float
    log_sha256: list[str]


def workload(n: int, requests: int | None, runs: int | None) -> tuple[int, int]:
    default_requests, default_runs = WORKLOADS.get(n, (1, 1))
    return (
        requests if requests is not None else default_requests,
        runs if runs is not None else default_runs,
    )


def run_once(n: int, seed: int, requests: int, encode: bool, record: bool) -> SimResult:
    options = SimOptions.draw(seed, n, requests_per_node=requests, encode=encode)
    return simulate(PROTOCOL, options, record=record)


def check(result: SimResult, n: int, requests: int) -> None:
    """A benchmark of a broken run measures nothing: refuse it."""
    if not result.ok:
        raise SystemExit(f"seed {result.seed}: violations {result.violations}")
    stats = result.stats
    if stats["requests"] != n * requests or stats["deliveries"] != n * n * requests:
        raise SystemExit(
            f"seed {result.seed}: {stats['requests']} requests, {stats['deliveries']} "
            f"deliveries; expected {n * requests} and {n * n * requests}"
        )


def measure(n: int, mode: str, requests: int, runs: int) -> Row:
    name, encode, record = MODES[mode]
    delivered = deliveries = steps = taken = 0
    wall = cpu = 0.0
    digests = []
    for seed in range(1, runs + 1):
        gc.collect()
        started, started_cpu = time.perf_counter(), time.process_time()
        result = run_once(n, seed, requests, encode, record)
        wall += time.perf_counter() - started
        cpu += time.process_time() - started_cpu
        check(result, n, requests)
        delivered += result.stats["messages_delivered"]
        deliveries += result.stats["deliveries"]
        steps += result.stats["steps"]
        taken += result.stats["requests"]
        digests.append(result.log_sha256)
    return Row(
        n=n,
        f=(n - 1) // 3,
        runs=runs,
        requests_per_node=requests,
        requests=taken,
        mode=f"{mode} ({name})",
        encode=encode,
        record=record,
        messages_delivered=delivered,
        deliveries=deliveries,
        steps=steps,
        wall_seconds=round(wall, 3),
        cpu_seconds=round(cpu, 3),
        deliveries_per_second=round(delivered / wall),
        us_per_delivery=round(wall / delivered * 1e6, 2),
        deliveries_per_cpu_second=round(delivered / cpu),
        log_sha256=digests,
    )


# -- profile ------------------------------------------------------------------

COMPONENTS = (
    ("codec", ("replicaio/core/codec.py", "msgpack")),
    ("event log", ("replicaio/trace/", "hashlib", "_hashlib")),
    ("scheduler/tasks", ("replicaio/core/scheduler.py", "replicaio/core/lines.py")),
    ("links", ("replicaio/core/context.py",)),
    ("node step/dispatch", ("replicaio/core/node.py", "replicaio/core/effects.py")),
    ("protocol", ("replicaio/protocols/",)),
    ("network/heap", ("replicaio/sim/simulator.py", "heapq", "random", "_random")),
    ("checkers", ("replicaio/check/", "replicaio/sim/harness.py")),
    ("storage", ("replicaio/storage/",)),
)


def component_of(filename: str, function: str) -> str:
    where = f"{filename}:{function}"
    for component, marks in COMPONENTS:
        if any(mark in where for mark in marks):
            return component
    return "other (builtins)"


def profile(n: int, mode: str, requests: int, runs: int, top: int) -> dict[str, Any]:
    """Self time per component and the top functions, under cProfile."""
    _, encode, record = MODES[mode]
    profiler = cProfile.Profile()
    profiler.enable()
    for seed in range(1, runs + 1):
        run_once(n, seed, requests, encode, record)
    profiler.disable()
    stats = pstats.Stats(profiler)
    table: dict[tuple[str, int, str], Any] = stats.stats  # type: ignore[attr-defined]
    per_component: dict[str, float] = {}
    total = 0.0
    for (filename, _, function), (_, _, self_time, _, _) in table.items():
        component = component_of(filename, function)
        per_component[component] = per_component.get(component, 0.0) + self_time
        total += self_time
    # Builtins called from a file count for the file that called them most.
    ranked = sorted(per_component.items(), key=lambda item: -item[1])
    functions = sorted(table.items(), key=lambda item: -item[1][2])[:top]
    return {
        "n": n,
        "mode": mode,
        "total_self_seconds": round(total, 3),
        "components": {name: round(100 * seconds / total, 1) for name, seconds in ranked},
        "top": [
            {
                "function": f"{os.path.relpath(filename) if '/' in filename else filename}"
                f":{line}({function})",
                "calls": calls,
                "self_seconds": round(self_time, 3),
                "cumulative_seconds": round(cumulative, 3),
            }
            for (filename, line, function), (_, calls, self_time, cumulative, _) in functions
        ],
    }


def count_opcodes(n: int, mode: str, requests: int, top: int) -> dict[str, Any]:
    """Bytecodes and calls per function per delivered message (seed 1), the
    one-request run's counts subtracted."""
    _, encode, record = MODES[mode]
    opcodes: dict[tuple[str, int, str], int] = {}
    calls: dict[tuple[str, int, str], int] = {}

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        code = frame.f_code
        key = (code.co_filename, code.co_firstlineno, code.co_name)
        if event == "call":
            calls[key] = calls.get(key, 0) + 1
            frame.f_trace_opcodes = True
        elif event == "opcode":
            opcodes[key] = opcodes.get(key, 0) + 1
        return tracer

    counted: list[tuple[dict[Any, int], dict[Any, int], int]] = []
    for size in (requests, 1):
        opcodes, calls = {}, {}
        sys.settrace(tracer)
        try:
            result = run_once(n, 1, size, encode, record)
        finally:
            sys.settrace(None)
        counted.append((opcodes, calls, result.stats["messages_delivered"]))
    (ops, calls_made, delivered), (ops_one, calls_one, delivered_one) = counted
    messages = max(1, delivered - delivered_one)
    per_function = {
        key: ((ops[key] - ops_one.get(key, 0)) / messages,
              (calls_made.get(key, 0) - calls_one.get(key, 0)) / messages)
        for key in ops
    }
    ranked = sorted(per_function.items(), key=lambda item: -item[1][0])[:top]
    return {
        "n": n,
        "mode": mode,
        "opcodes_per_delivery": round(sum(pair[0] for pair in per_function.values()), 1),
        "calls_per_delivery": round(
            (sum(calls_made.values()) - sum(calls_one.values())) / messages, 2),
        "top": [
            {"function": f"{os.path.relpath(filename)}:{line}({function})",
             "opcodes": round(count, 1), "calls": round(made, 2)}
            for (filename, line, function), (count, made) in ranked
        ],
    }


def print_opcodes(report: dict[str, Any]) -> None:
    print(f"\nopcodes n={report['n']} mode {report['mode']}: "
          f"{report['opcodes_per_delivery']} bytecodes and "
          f"{report['calls_per_delivery']} Python calls per delivered message")
    print(f"  {'opcodes':>8} {'calls':>6}  function")
    for entry in report["top"]:
        print(f"  {entry['opcodes']:>8.1f} {entry['calls']:>6.2f}  {entry['function']}")


def print_profile(report: dict[str, Any]) -> None:
    print(f"\nprofile n={report['n']} mode {report['mode']} "
          f"(cProfile self time {report['total_self_seconds']} s)")
    for name, share in report["components"].items():
        print(f"  {name:<22} {share:5.1f} %")
    print(f"  {'calls':>9} {'self s':>7} {'cum s':>7}  function")
    for entry in report["top"]:
        print(f"  {entry['calls']:>9} {entry['self_seconds']:>7.3f} "
              f"{entry['cumulative_seconds']:>7.3f}  {entry['function']}")


# -- main ---------------------------------------------------------------------


def parse_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def print_table(rows: Sequence[Row]) -> None:
    header = (
        f"{'n':>3} {'f':>3} {'runs x req/node':>15} {'mode':<14} {'msgs delivered':>14} "
        f"{'bcast deliv.':>12} {'wall s':>8} {'deliv./s':>9} {'us/deliv.':>9} {'cpu s':>8} "
        f"{'deliv./cpu s':>12}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row.n:>3} {row.f:>3} {f'{row.runs} x {row.requests_per_node}':>15} "
            f"{row.mode:<14} {row.messages_delivered:>14} {row.deliveries:>12} "
            f"{row.wall_seconds:>8.3f} {row.deliveries_per_second:>9} "
            f"{row.us_per_delivery:>9.2f} {row.cpu_seconds:>8.3f} "
            f"{row.deliveries_per_cpu_second:>12}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="4,16,64", help="cluster sizes (default 4,16,64)")
    parser.add_argument("--modes", default="a,b,c", help="modes among a, b, c (default all)")
    parser.add_argument("--requests", type=int, help="requests per node per run")
    parser.add_argument("--runs", type=int, help="seeds per configuration")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--profile", action="store_true", help="also profile each configuration")
    parser.add_argument("--opcodes", action="store_true",
                        help="also count bytecodes per delivery and function (sys.settrace)")
    parser.add_argument("--top", type=int, default=25,
                        help="functions shown by --profile and --opcodes")
    arguments = parser.parse_args(argv)
    sizes = [int(size) for size in parse_list(arguments.sizes)]
    modes = parse_list(arguments.modes)
    for mode in modes:
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    if arguments.requests is not None and arguments.requests < 1:
        parser.error("--requests must be >= 1")
    if (arguments.profile or arguments.opcodes) and compiled.status()["loaded"]:
        # cProfile and the bytecode tracer see a compiled module as one opaque
        # call: run the whole benchmark again with every module interpreted
        # (ADR 0034), so its rows and its profile describe the same code.
        rerun = subprocess.run(
            [sys.executable, __file__, *(sys.argv[1:] if argv is None else argv)],
            env={**os.environ, "REPLICAIO_COMPILED": "0"}, capture_output=True, text=True,
            check=False,
        )
        print(rerun.stdout, end="")
        print(rerun.stderr, end="", file=sys.stderr)
        return rerun.returncode
    rows: list[Row] = []
    profiles: list[dict[str, Any]] = []
    opcode_counts: list[dict[str, Any]] = []
    # One tiny run first: the modules a run imports on first use (about 45 ms
    # of CPU) would otherwise be charged to the first configuration measured.
    run_once(4, 1, 1, encode=True, record=True)
    for n in sizes:
        requests, runs = workload(n, arguments.requests, arguments.runs)
        for mode in modes:
            rows.append(measure(n, mode, requests, runs))
            if arguments.profile:
                profiles.append(profile(n, mode, requests, runs, arguments.top))
            if arguments.opcodes:
                opcode_counts.append(count_opcodes(n, mode, requests, arguments.top))
    machine = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "cpus": os.cpu_count(),
        "compiled": compiled.describe(),
    }
    if arguments.json:
        report = {"protocol": PROTOCOL, "machine": machine, "rows": [asdict(row) for row in rows]}
        if profiles:
            report["profiles"] = profiles
        if opcode_counts:
            report["opcodes"] = opcode_counts
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    print(f"{PROTOCOL}, no faults; python {machine['python']} on {machine['machine']}, "
          f"{machine['cpus_available']} of {machine['cpus']} cpus available to this process; "
          f"{machine['compiled']}")
    print_table(rows)
    for report in profiles:
        print_profile(report)
    for report in opcode_counts:
        print_opcodes(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
