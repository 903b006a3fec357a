"""Messages per completed client operation: MinBFT n=3 against PBFT n=4 and Raft n=3.

Counts, not timings: each protocol runs the same simulated KV workload
(``replicaio sim P --nodes N --seed S --requests R --json``, no faults, no
Byzantine node) for the same seeds, and the simulator's ``messages_sent`` (every
node-to-node message, client requests and replies included, on the simulated
network) is divided by the operations completed. Deterministic: the same
command prints the same table on any machine (the seeds fix the workload,
the batching and every timer), so the figures do not depend on load.

    .venv/bin/python bench/bench_messages.py                     # seeds 1-5, 100 requests
    .venv/bin/python bench/bench_messages.py --seeds 10 --requests 200 --json

What a ratio says: MinBFT's normal case is PREPARE + n-1 COMMITs from every
backup to every replica (O(n^2), two phases); PBFT's is PRE-PREPARE + PREPARE +
COMMIT (O(n^2), three phases, with n = 3f+1 instead of 2f+1); Raft's is
AppendEntries and its acknowledgement (O(n)). All three batch, checkpoint or
heartbeat on top; docs/benchmarks.md has the table and its conditions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

SYSTEMS = (("minbft", 3), ("pbft", 4), ("raft", 3))  # (protocol, nodes)


def run(protocol: str, nodes: int, seed: int, requests: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "replicaio.cli", "sim", protocol, "--nodes", str(nodes),
               "--seed", str(seed), "--requests", str(requests), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench_messages: {' '.join(command)} failed:\n{done.stderr[-2000:]}")
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def measure(seeds: int, requests: int) -> list[dict[str, Any]]:
    rows = []
    for protocol, nodes in SYSTEMS:
        sent = completed = 0
        linearizable = True
        for seed in range(1, seeds + 1):
            report = run(protocol, nodes, seed, requests)
            stats = report["stats"]
            sent += int(stats["messages_sent"])
            completed += int(stats["ops_completed"])
            linearizable = linearizable and bool(report["linearizable"])
        rows.append({"protocol": protocol, "nodes": nodes, "seeds": seeds,
                     "requests_per_node": requests, "messages_sent": sent,
                     "ops_completed": completed, "linearizable": linearizable,
                     "messages_per_op": round(sent / max(completed, 1), 2)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 1..S per protocol")
    parser.add_argument("--requests", type=int, default=100, help="client requests per node")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = measure(args.seeds, args.requests)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    minbft = rows[0]["messages_per_op"]
    print("| protocol | n | ops completed | messages sent | messages/op | vs MinBFT |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        ratio = row["messages_per_op"] / minbft if minbft else 0.0
        print(f"| {row['protocol']} | {row['nodes']} | {row['ops_completed']} | "
              f"{row['messages_sent']} | {row['messages_per_op']} | {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
