"""The ``replicaio torture`` command (see ``docs/torture.md``).

    replicaio torture [--protocol raft] [--nodes 5] [--duration 120] [--seed S]
                      [--clients 10] [--faults KIND,...] [--out DIR] [--json]
                      [--byzantine BEHAVIOUR[+BEHAVIOUR]|seed [--byzantine-node N]]

Exit status: 0 the run passed; 1 it found a problem (the report says which, and
the command to rerun it); 2 it could not run (not root, a tool missing).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from replicaio.torture.nemesis import FAULT_KINDS

EXIT_PASSED = 0
EXIT_FAILED = 1


def add_torture_command(commands: Any) -> None:
    """Add ``torture`` to the ``replicaio`` parser's subparsers."""
    parser = commands.add_parser(
        "torture", help="a live cluster in network namespaces under real faults (root)")
    parser.add_argument("--protocol", default="raft",
                        help="a replicated service (raft, pbft, minbft)")
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of faults")
    parser.add_argument("--seed", type=int, default=0, help="draws the fault schedule")
    parser.add_argument("--clients", type=int, default=10, help="redis-py connections")
    parser.add_argument("--faults", default=",".join(FAULT_KINDS),
                        help=f"comma-separated kinds (default all: {','.join(FAULT_KINDS)})")
    parser.add_argument("--out", default="torture-runs", help="runs go in OUT/seed-S-...")
    parser.add_argument("--check-budget", type=float, default=120.0,
                        help="seconds the linearizability check may take")
    parser.add_argument("--progress-timeout", type=float, default=30.0)
    parser.add_argument("--json", action="store_true", help="print the result as JSON too")
    parser.add_argument("--tls", action="store_true",
                        help="mutual TLS 1.3 on the peer and client ports (certs init)")
    parser.add_argument("--byzantine", default="", metavar="BEHAVIOUR[+BEHAVIOUR]|seed",
                        help="one node runs the simulator's adversary behaviours on the real "
                        "network (pbft, minbft; `seed`: a mix drawn from the seed); clients "
                        "use the other nodes")
    parser.add_argument("--byzantine-node", type=int, default=None,
                        help="which node is Byzantine (default: drawn from the seed)")
    parser.set_defaults(handler=command_torture)


def command_torture(args: argparse.Namespace) -> int:
    from replicaio.assembly import service_spec
    from replicaio.core.errors import UsageError
    from replicaio.torture.run import TortureOptions, result_json, run_torture, summary

    if service_spec(args.protocol) is None:
        raise UsageError(f"--protocol {args.protocol!r} is not a replicated service (try raft)")
    faults = tuple(kind for kind in args.faults.split(",") if kind)
    options = TortureOptions(
        protocol=args.protocol, nodes=args.nodes, duration_s=args.duration, seed=args.seed,
        clients=args.clients, faults=faults, out=Path(args.out),
        check_budget_s=args.check_budget, progress_timeout_s=args.progress_timeout,
        tls=args.tls, byzantine=args.byzantine, byzantine_node=args.byzantine_node,
    )
    result = run_torture(options, say=lambda line: print(line, flush=True))
    text = summary(result)
    (result.directory / "report.txt").write_text(text + "\n")
    print(text, flush=True)
    if args.json:
        print(json.dumps(result_json(result)))
    return EXIT_PASSED if result.passed else EXIT_FAILED
