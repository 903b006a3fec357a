"""The simulator's cost in instructions: per KV client operation (Raft, PBFT, MinBFT), per
Bracha delivery.

Counts instructions with valgrind's callgrind, which the load of a shared
machine does not move (CPU time on the 2-core machine drifts by a third with
the other sessions' jobs). Two workloads, each measured as the difference of
two runs so that start-up, imports and the final checks' fixed part cancel:

* ``kv``: the Raft KV simulation (3 nodes, seed 1, 10 clients, event log
  recorded, the history checked for linearizability), N = 1,000 minus
  N = 10 operations in the quota: (instructions at 1,000 - at 10) /
  (operations completed at 1,000 - at 10), 1,010 - 20 = 990 operations.
  Each run first runs an unmeasured 1,000-operation simulation of seed 2, so
  that both runs have imported every module and built every class a run
  makes on first use (sim24's method).
* ``pbft`` and ``minbft``: the same KV simulation over PBFT (4 nodes, f = 1)
  and MinBFT (3 nodes, f = 1), N = 400 minus N = 10 operations (audit37: the
  cost of their self-audits, ADR 0071).
* ``bracha``: Bracha n = 4, seed 1, mode a (codec on, event log recorded),
  R = 100 minus R = 1 requests per node: (instructions at 100 - at 1) /
  (messages delivered at 100 - at 1) (sim21's method).

Every run prints its ``log_sha256``, so a change that moves a schedule shows
here too. Valgrind hides the CPU's SHA extensions: about 4k of Bracha's
instructions per delivery are the event log's SHA-256 in software.

    .venv/bin/python bench/callgrind_sim.py                    # both, this tree
    .venv/bin/python bench/callgrind_sim.py --what kv --json
    PYTHONPATH=<tree> .venv/bin/python <tree>/bench/callgrind_sim.py --keep /tmp/cg

``--top N`` prints the N functions whose instructions grew most between the
two runs, per unit (self instructions; ``--inclusive`` for inclusive ones),
from ``callgrind_annotate``: where the per-unit cost goes.
``--keep DIR`` leaves the callgrind output files there (``callgrind_annotate``
reads them); otherwise they go to a temporary directory that is removed.
The runs use the interpreter running this script and whatever ``replicaio``
it imports (``PYTHONPATH`` picks a tree; the compiled modules load unless
``REPLICAIO_COMPILED=0``). About 2 minutes of CPU per workload at 2 runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass

# workload -> (small, large) sizes of the two runs whose difference is measured
SIZES = {"kv": (10, 1000), "pbft": (10, 400), "minbft": (10, 400), "bracha": (1, 100)}
UNITS = {"kv": "client operation", "pbft": "client operation", "minbft": "client operation",
         "bracha": "delivery"}
KV_PROTOCOLS = {"kv": ("raft", 3), "pbft": ("pbft", 4), "minbft": ("minbft", 3)}
TOTALS = re.compile(rb"^(?:totals|summary):\s+(\d+)", re.MULTILINE)


@dataclass(slots=True)
class Run:
    """One run under callgrind: its size, instructions and what the simulation said."""

    size: int
    instructions: int
    count: int  # operations completed (kv) or messages delivered (bracha)
    steps: int
    log_sha256: str


@dataclass(slots=True)
class Figure:
    """A workload's per-unit cost: the difference of its two runs."""

    workload: str
    unit: str
    small: Run
    large: Run
    per_unit: float


def worker(workload: str, size: int) -> None:
    """Run one simulation (inside valgrind) and print what it counted as JSON."""
    from replicaio.sim.simulator import SimResult

    result: SimResult
    if workload in KV_PROTOCOLS:
        from replicaio.sim.kv_harness import KvWorkload, kv_options
        from replicaio.sim.simulator import Simulator

        protocol, nodes = KV_PROTOCOLS[workload]

        def run(seed: int, ops: int) -> SimResult:
            options = kv_options(seed, nodes, (), KvWorkload(clients=10, ops=ops),
                                 protocol=protocol)
            return Simulator(protocol, options, f=1, record=True).run()

        run(2, SIZES[workload][1])  # warm: every module and class a run makes on first use
        result = run(1, size)
        if not result.stats["linearizable"]:
            raise SystemExit("callgrind_sim: the history is not linearizable")
        count = int(result.stats["ops_completed"])
    elif workload == "bracha":
        from replicaio.sim.options import SimOptions
        from replicaio.sim.simulator import simulate

        options = SimOptions.draw(1, 4, requests_per_node=size, encode=True)
        result = simulate("bracha", options, record=True)
        count = int(result.stats["messages_delivered"])
    else:
        raise SystemExit(f"callgrind_sim: unknown workload {workload!r}")
    if result.violations:
        raise SystemExit(f"callgrind_sim: violations: {result.violations}")
    said = {"count": count, "steps": result.stats["steps"], "log_sha256": result.log_sha256}
    print(json.dumps(said))


def measure_run(workload: str, size: int, directory: str) -> Run:
    """Run ``worker`` under callgrind and read its instruction total."""
    out = os.path.join(directory, f"callgrind.{workload}.{size}.out")
    command = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
        sys.executable, os.path.abspath(__file__), "--worker", workload, str(size),
    ]
    # A fixed hash seed: string hashes move dict and set layouts, and with them
    # about 1 % of the count from one run to the next.
    env = dict(os.environ, PYTHONHASHSEED="0")
    completed = subprocess.run(command, capture_output=True, check=False, env=env)
    if completed.returncode != 0:
        sys.stderr.write(completed.stderr.decode(errors="replace")[-4000:])
        raise SystemExit(f"callgrind_sim: {workload} {size} failed ({completed.returncode})")
    said = json.loads(completed.stdout.decode().strip().splitlines()[-1])
    with open(out, "rb") as file:
        match = TOTALS.search(file.read())
    if match is None:
        raise SystemExit(f"callgrind_sim: no totals in {out}")
    return Run(size, int(match.group(1)), said["count"], said["steps"], said["log_sha256"])


ANNOTATED = re.compile(r"^\s*([\d,]+) \([ \d.]+%\)\s+(.*?)(?: \[[^\]]*\])?$")


def annotate(path: str, inclusive: bool) -> dict[str, int]:
    """Instructions per function (``file:function``) of one callgrind output file."""
    inclusive_flag = f"--inclusive={'yes' if inclusive else 'no'}"
    command = ["callgrind_annotate", "--threshold=100", inclusive_flag, path]
    text = subprocess.run(command, capture_output=True, check=True, text=True).stdout
    functions: dict[str, int] = {}
    for line in text.splitlines():
        match = ANNOTATED.match(line)
        if match is None or match.group(2) == "PROGRAM TOTALS":
            continue
        name = match.group(2).rsplit("/", 1)[-1]  # the build directory of the file is noise
        functions[name] = functions.get(name, 0) + int(match.group(1).replace(",", ""))
    return functions


def top(figure: Figure, directory: str, count: int, inclusive: bool) -> list[tuple[str, float]]:
    """The ``count`` functions with the most instructions per unit between the two runs."""
    def path(run: Run) -> str:
        return os.path.join(directory, f"callgrind.{figure.workload}.{run.size}.out")

    small = annotate(path(figure.small), inclusive)
    large = annotate(path(figure.large), inclusive)
    units = figure.large.count - figure.small.count
    names = set(small) | set(large)
    grown = {name: (large.get(name, 0) - small.get(name, 0)) / units for name in names}
    return sorted(grown.items(), key=lambda item: -item[1])[:count]


def measure(workload: str, directory: str) -> Figure:
    small_size, large_size = SIZES[workload]
    small = measure_run(workload, small_size, directory)
    large = measure_run(workload, large_size, directory)
    per_unit = (large.instructions - small.instructions) / (large.count - small.count)
    return Figure(workload, UNITS[workload], small, large, per_unit)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--what", default="kv,bracha",
                        help="workloads among kv, pbft, minbft, bracha (default kv,bracha)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--keep", metavar="DIR", help="leave the callgrind output files in DIR")
    parser.add_argument("--top", type=int, default=0, metavar="N",
                        help="print the N functions costing most per unit")
    parser.add_argument("--inclusive", action="store_true", help="--top by inclusive instructions")
    parser.add_argument("--worker", nargs=2, metavar=("WORKLOAD", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker[0], int(args.worker[1]))
        return 0
    workloads = [w.strip() for w in args.what.split(",") if w.strip()]
    for workload in workloads:
        if workload not in SIZES:
            parser.error(f"unknown workload {workload!r} (kv, pbft, minbft, bracha)")
    tops: dict[str, list[tuple[str, float]]] = {}

    def run_all(directory: str) -> list[Figure]:
        figures = [measure(w, directory) for w in workloads]
        if args.top:
            for figure in figures:
                tops[figure.workload] = top(figure, directory, args.top, args.inclusive)
        return figures

    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        figures = run_all(args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="callgrind-sim-") as directory:
            figures = run_all(directory)
    if args.json:
        print(json.dumps({"figures": [asdict(f) for f in figures], "top": tops}, indent=2))
        return 0
    for f in figures:
        print(
            f"{f.workload}: {f.per_unit:,.0f} instructions per {f.unit} "
            f"({f.large.instructions:,} at {f.large.size} - "
            f"{f.small.instructions:,} at {f.small.size}, "
            f"over {f.large.count - f.small.count:,}; steps {f.small.steps:,}/{f.large.steps:,}; "
            f"log_sha256 {f.small.log_sha256[:12]}... / {f.large.log_sha256[:12]}...)"
        )
        for name, per_unit in tops.get(f.workload, []):
            print(f"  {per_unit:12,.0f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
