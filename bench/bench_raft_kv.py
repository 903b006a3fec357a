"""Raft + SMR + the KV store in the simulator: client operations per wall-clock
second, and a long run whose memory stays bounded by compaction.

Two parts (``--part``):

* ``throughput``: for each cluster size, ``--runs`` seeds back to back, each
  with ``--clients`` closed-loop clients and ``--ops`` operations, no faults
  (``--faults`` to add some); reports completed client operations per second
  of wall time (``ops_per_second``) and of CPU time (``ops_per_cpu_second``,
  steadier on a shared machine), node steps per second, and virtual
  operations per second. Event log on (what ``replicaio sim`` does) unless
  ``--no-log``. Seeds with a violation or a non-linearizable history are
  listed (``failed_seeds``).
* ``long``: one run of ``--long-ops`` operations (default 100,000) with crash
  and loss faults (random crashes drawn per 10 s, the leader-aimed nemesis
  every 2 s), a membership change or leadership transfer every second, clients that
  come and go (a new client id every ``--client-ops`` operations, so the
  session table must evict) and a small session table
  (``raft:sessions=N``). Every ``--sample-ms`` of virtual time it samples, on
  every live node, the Raft log held in memory (entries after the snapshot),
  the session table, the KV keys, SMR's pending/waiting queues, the
  interpreter's allocated blocks (everything, history and checkers included)
  and, every ``--trace-every`` samples, the bytes reachable from the largest
  node's core and simulated disk (``node_kib``); it reports their maxima per tenth
  of the run, so a reader sees whether anything grows. Then the history is
  checked.

    .venv/bin/python bench/bench_raft_kv.py                       # both parts
    .venv/bin/python bench/bench_raft_kv.py --part throughput --sizes 3 --json
    .venv/bin/python bench/bench_raft_kv.py --part long --long-ops 20000
    .venv/bin/python bench/bench_raft_kv.py --part throughput --protocol pbft --sizes 4

``--protocol`` measures another ordering protocol under the same SMR and KV
store in the throughput part (``pbft``, ``pbft:replica_macs=1``, ``minbft``;
f is the most the protocol tolerates at each size): simulated PBFT client
operations per second (issue 10 section 5).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
import types
from collections.abc import Sequence
from typing import Any

from replicaio import compiled
from replicaio.core.codec import Codec
from replicaio.sim.kv_harness import KvHarness, KvWorkload, kv_options
from replicaio.sim.options import parse_faults
from replicaio.sim.simulator import Simulator
from replicaio.smr.protocol import SmrProtocol


def tolerated(protocol: str, n: int) -> int:
    """The most faulty replicas ``protocol`` tolerates with ``n`` replicas."""
    name = protocol.partition(":")[0]
    if name == "pbft":
        return (n - 1) // 3
    return (n - 1) // 2  # raft (crash faults) and minbft (hybrid: 2f+1)


def throughput(sizes: list[int], runs: int, clients: int, ops: int, faults: str,
               record: bool, protocol: str = "raft") -> list[dict[str, Any]]:
    rows = []
    # One tiny run first, as bench_sim.py does: the modules a run imports on
    # first use (and the classes some build then) are not charged to seed 1.
    name = protocol.partition(":")[0]
    Simulator(protocol, kv_options(1, sizes[0], parse_faults(faults), KvWorkload(clients=2, ops=5),
                                   protocol=None if name == "raft" else name),
              f=tolerated(protocol, sizes[0]), record=record).run()
    for n in sizes:
        completed = steps = 0
        virtual_us = 0
        wall = cpu = 0.0
        failed: list[int] = []
        for seed in range(1, runs + 1):
            workload = KvWorkload(clients=clients, ops=ops)
            name = protocol.partition(":")[0]
            options = kv_options(seed, n, parse_faults(faults), workload,
                                 protocol=None if name == "raft" else name)
            started = time.perf_counter()
            started_cpu = time.process_time()
            result = Simulator(protocol, options, f=tolerated(protocol, n), record=record).run()
            wall += time.perf_counter() - started
            cpu += time.process_time() - started_cpu
            if result.violations or result.stats["linearizable"] is not True:
                failed.append(seed)  # reported: a benchmark is no place to hide a bug
            completed += result.stats["ops_completed"]
            steps += result.stats["steps"]
            virtual_us += result.stats["virtual_time_us"]
        rows.append({
            "protocol": protocol,
            "n": n,
            "runs": runs,
            "clients": clients,
            "faults": faults or "none",
            "event_log": record,
            "ops_completed": completed,
            "wall_seconds": round(wall, 3),
            "cpu_seconds": round(cpu, 3),
            "ops_per_second": round(completed / wall),
            "ops_per_cpu_second": round(completed / cpu),
            "failed_seeds": failed,
            "steps_per_second": round(steps / wall),
            "virtual_ops_per_second": round(completed / (virtual_us / 1e6)),
        })
    return rows


class Sampler:
    """Samples every live node's bounded structures on virtual time."""

    def __init__(self, simulator: Simulator, every_us: int, trace_every: int) -> None:
        self.simulator = simulator
        self.every_us = every_us
        self.trace_every = trace_every  # samples between two heap snapshots (0: none)
        self.node_kib = 0
        self.samples: list[dict[str, int]] = []
        harness = simulator.harness
        assert isinstance(harness, KvHarness)
        self.api = harness.require_api()
        self.api.call_at(every_us, self.sample)

    def sample(self) -> None:
        found = {"time_us": self.api.now(), "log_entries": 0, "sessions": 0, "keys": 0,
                 "pending": 0, "waiting": 0, "applied_max": 0,
                 "allocated_blocks": sys.getallocatedblocks()}
        if self.trace_every and len(self.samples) % self.trace_every == 0:
            self.node_kib = max(
                reachable_kib(node.core, node.storage)
                for node in self.simulator.nodes
                if node.core is not None
            )
        found["node_kib"] = self.node_kib
        for node in self.simulator.nodes:
            if node.core is None:
                continue
            protocol = node.core.protocol
            assert isinstance(protocol, SmrProtocol)
            view = protocol.ordering.observe()  # type: ignore[attr-defined]
            figures = protocol.replica.figures()
            found["log_entries"] = max(found["log_entries"], view.last_index - view.snapshot_index)
            found["sessions"] = max(found["sessions"], figures["sessions"])
            found["keys"] = max(found["keys"], len(protocol.state_machine.data))  # type: ignore[attr-defined]
            found["pending"] = max(found["pending"], figures["pending"])
            found["waiting"] = max(found["waiting"], figures["waiting"])
            found["applied_max"] = max(found["applied_max"], figures["applied"])
        self.samples.append(found)
        self.api.call_at(self.api.now() + self.every_us, self.sample)


SKIPPED_TYPES = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType,
                 types.CodeType, types.MethodType, Codec)


def reachable_kib(*roots: object) -> int:
    """Bytes reachable from ``roots`` (``sys.getsizeof`` over ``gc.get_referents``),
    in KiB, skipping classes, modules, functions and codecs (shared, fixed-size
    buffers): a node's core and its simulated disk, not the harness, the history
    or the checkers."""
    seen: set[int] = set()
    stack = list(roots)
    total = 0
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, SKIPPED_TYPES):
            continue
        seen.add(id(item))
        total += sys.getsizeof(item)
        stack.extend(gc.get_referents(item))
    return total // 1024


def long_run(ops: int, clients: int, client_ops: int, sessions: int, sample_ms: int,
             seed: int, nodes: int, trace_every: int) -> dict[str, Any]:
    workload = KvWorkload(
        clients=clients, ops=ops, client_ops_max=client_ops, membership_every_us=1_000_000,
        nemesis_every_us=2_000_000, fault_window_us=10_000_000, check_budget_s=600.0,
    )
    # Under these faults the clients complete about 300 operations per virtual
    # second: give the safety phase room for the whole quota.
    options = kv_options(seed, nodes, ("crash", "loss"), workload,
                         safety_us=max(2_000_000, ops * 5_000))
    protocol = f"raft:sessions={sessions}"
    simulator = Simulator(protocol, options, f=(nodes - 1) // 2, record=False)
    sampler = Sampler(simulator, sample_ms * 1000, trace_every)
    started = time.perf_counter()
    result = simulator.run()
    wall = time.perf_counter() - started
    samples = sampler.samples
    tenths = []
    for part in range(10):
        chunk = samples[part * len(samples) // 10:(part + 1) * len(samples) // 10]
        if chunk:
            tenths.append({key: max(sample[key] for sample in chunk) for key in chunk[0]})
    return {
        "protocol": protocol,
        "nodes": nodes,
        "seed": seed,
        "clients": clients,
        "ops_invoked": result.stats["ops_invoked"],
        "ops_completed": result.stats["ops_completed"],
        "ops_unissued": result.stats["ops_unissued"],
        "client_ids_used": result.stats["client_ids_used"],
        "violations": result.violations[:3],
        "linearizable": result.stats["linearizable"],
        "linearizability_seconds": result.stats["linearizability_seconds"],
        "wall_seconds": round(wall, 1),
        "virtual_seconds": round(result.stats["virtual_time_us"] / 1e6, 1),
        "crashes": result.stats["crashes"],
        "leaders_elected": result.stats.get("raft_leaders_elected"),
        "commit_index_max": result.stats.get("raft_commit_index_max"),
        "compactions": result.counters.get("raft_compactions", 0),
        "snapshots_installed": result.counters.get("raft_snapshots_installed", 0),
        "sessions_evicted": result.counters.get("smr_sessions_evicted", 0),
        "samples": len(samples),
        "per_tenth_max": tenths,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("throughput", "long", "both"), default="both")
    parser.add_argument("--sizes", default="3,5")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--ops", type=int, default=1000)
    parser.add_argument("--faults", default="")
    parser.add_argument("--no-log", action="store_true")
    parser.add_argument("--long-ops", type=int, default=100_000)
    parser.add_argument("--long-clients", type=int, default=20)
    parser.add_argument("--client-ops", type=int, default=200)
    parser.add_argument("--sessions", type=int, default=128)
    parser.add_argument("--sample-ms", type=int, default=250)
    parser.add_argument("--trace-every", type=int, default=20,
                        help="samples between two measures of node_kib")
    parser.add_argument("--no-trace", action="store_true", help="do not measure node_kib")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--protocol", default="raft",
                        help="throughput part: raft, pbft, pbft:replica_macs=1, minbft")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "compiled": compiled.planned(),
        "load_average": [round(load, 2) for load in os.getloadavg()],
    }
    if args.part in ("throughput", "both"):
        sizes = [int(size) for size in args.sizes.split(",")]
        report["throughput"] = throughput(
            sizes, args.runs, args.clients, args.ops, args.faults, not args.no_log,
            args.protocol,
        )
    if args.part in ("long", "both"):
        report["long"] = long_run(
            args.long_ops, args.long_clients, args.client_ops, args.sessions, args.sample_ms,
            args.seed, args.nodes, 0 if args.no_trace else args.trace_every,
        )
    if args.json:
        print(json.dumps(report, sort_keys=True))
        return 0
    print(f"python {report['python']} on {report['machine']}; {report['compiled']}; "
          f"load average {report['load_average']} at the start")
    for row in report.get("throughput", []):
        print(f"{row['protocol']} n={row['n']}: {row['ops_completed']} ops in "
              f"{row['wall_seconds']} s wall "
              f"-> {row['ops_per_second']} ops/s ({row['ops_per_cpu_second']} per CPU second; "
              f"{row['steps_per_second']} steps/s; failed seeds {row['failed_seeds']}; "
              f"{row['virtual_ops_per_second']} ops per virtual second; faults "
              f"{row['faults']}; event log {'on' if row['event_log'] else 'off'})")
    if "long" in report:
        long = dict(report["long"])
        tenths = long.pop("per_tenth_max")
        print(json.dumps(long, sort_keys=True))
        keys = list(tenths[0]) if tenths else []
        print("per tenth of the run (max over samples):")
        print("  " + "  ".join(f"{key:>16}" for key in keys))
        for row in tenths:
            print("  " + "  ".join(f"{row[key]:>16}" for key in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
