"""The command-line side of transactional clusters (``replicaio sim txn ...``).

    replicaio sim txn --groups 3 --nodes 3 --faults crash,partition,loss,dup,reorder --seed 7
    replicaio swarm txn --groups 3 --nodes 3 --faults crash,partition,loss,dup,reorder \\
        --seeds 1000 [--workload bank]

``--groups G`` becomes the protocol name's parameter (``txn:groups=3``), which
the event log records, so a replay rebuilds the same nodes. ``--workload``
picks list-append (strict serializability, the default) or bank (the total).
"""

from __future__ import annotations

import argparse

from replicaio.assembly import faults_tolerated, transactional_spec
from replicaio.check.transactions import BANK, LIST_APPEND, dump_transactions
from replicaio.core.errors import UsageError
from replicaio.sim.options import SimOptions, parse_adversary, parse_faults
from replicaio.sim.simulator import SimResult, Simulator
from replicaio.sim.txn_harness import TxnHarness, TxnWorkload, txn_options


def add_txn_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("transactional clusters (txn)")
    group.add_argument("--groups", type=int, default=None,
                       help="replicated groups, each on every node (default 3)")
    group.add_argument("--workload", choices=(LIST_APPEND, BANK), default=LIST_APPEND,
                       help="list-append (strict serializability) or bank (the total)")
    group.add_argument("--transactions", type=int, default=None,
                       help=f"transactions in the run (default {TxnWorkload().transactions})")
    group.add_argument("--ops-max", type=int, default=None,
                       help="list-append: operations per transaction at most (default "
                       f"{TxnWorkload().ops_max}; 1: every transaction touches one key, so one "
                       "group, as single-key commands do)")


def is_transactional(protocol: str) -> bool:
    return transactional_spec(protocol) is not None


def normalize(args: argparse.Namespace) -> None:
    """Fold ``--groups`` into the protocol name (what the event log records)."""
    groups = getattr(args, "groups", None)
    if groups is None or not is_transactional(args.protocol):
        return
    base, _, given = str(args.protocol).partition(":")
    parameters = [item for item in given.split(",") if item and not item.startswith("groups=")]
    args.protocol = f"{base}:{','.join([f'groups={groups}', *parameters])}"
    args.groups = None


def options_of(args: argparse.Namespace, seed: int) -> SimOptions:
    found = transactional_spec(args.protocol)
    assert found is not None
    if args.byzantine and found[0].ordering == "raft":
        raise UsageError(f"{args.protocol} tolerates crash faults only: no --byzantine")
    base = TxnWorkload()
    workload = TxnWorkload(
        workload=args.workload,
        transactions=args.transactions if args.transactions is not None else base.transactions,
        clients=args.clients if getattr(args, "clients", None) is not None else base.clients,
        ops_max=args.ops_max if getattr(args, "ops_max", None) is not None else base.ops_max,
    )
    adversary = getattr(args, "adversary", None) or getattr(args, "behaviour", None)
    return txn_options(seed, args.nodes, parse_faults(args.faults), workload,
                       encode=not args.no_encode, byzantine=args.byzantine,
                       adversary=parse_adversary(adversary) if adversary else None,
                       protocol=args.protocol.partition(":")[0])


def fault_bound(args: argparse.Namespace) -> int | None:
    """The f of the run: ``--f`` if given; MinBFT groups tolerate (n - 1) / 2
    (a USIG per node and group); ``None`` (the simulator's (n - 1) / 3) for the
    others, as their pinned runs have it."""
    given: int | None = getattr(args, "f", None)
    if given is not None:
        return given
    found = transactional_spec(args.protocol)
    if found is not None and found[0].ordering == "minbft":
        return faults_tolerated(args.protocol, args.nodes)
    return None


def run(args: argparse.Namespace, options: SimOptions, log_path: str | None,
        history_path: str | None) -> SimResult:
    """Run one simulation; write its transaction history (JSON lines) if asked,
    for ``replicaio check-transactions``."""
    f = fault_bound(args)
    if log_path is None:
        simulator = Simulator(args.protocol, options, f=f)
        result = simulator.run()
    else:
        with open(log_path, "wb") as sink:
            simulator = Simulator(args.protocol, options, f=f, log_sink=sink)
            result = simulator.run()
    if history_path is not None:
        harness = simulator.harness
        assert isinstance(harness, TxnHarness)
        dump_transactions(harness.transactions(), history_path)
    return result


def reproduce_words(args: argparse.Namespace) -> list[str]:
    if not is_transactional(args.protocol):
        return []
    words = []
    if getattr(args, "workload", LIST_APPEND) != LIST_APPEND:
        words += ["--workload", args.workload]
    if getattr(args, "transactions", None) is not None:
        words += ["--transactions", str(args.transactions)]
    if getattr(args, "ops_max", None) is not None:
        words += ["--ops-max", str(args.ops_max)]
    return words
