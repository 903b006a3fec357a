"""The command-line side of replicated services (``replicaio sim raft ...``).

``replicaio.cli`` stays protocol-neutral; for a service name (``raft``, its
broken variants, see ``replicaio.assembly.SERVICES``) it asks this module
for the extra flags, the options of a run, how to run it (keeping the
harness, for ``--history``) and the report fields:

    replicaio sim raft --nodes 5 --seed 7 --faults crash,partition \\
        [--clients C] [--ops K] [--membership-every MS] [--snapshot-every B] \\
        [--nemesis MS] [--prompt-waves W] [--json] [--history FILE] [--log FILE]
    replicaio swarm raft --nodes 5 --seeds 1000 --faults crash,partition,loss,dup,reorder

Membership changes and snapshots happen within ordinary runs: by default a
change is asked every 400 ms of virtual time during the safety phase
(``--membership-every 0`` turns them off), and SMR snapshots every 16 applied
batches (``--snapshot-every``; 0 turns them off). With the ``crash`` fault, a
nemesis also crashes the current leader about every second (``--nemesis``),
and half the time a second node briefly, inside a step, during the election
that follows: random crash times alone rarely hit leaders and elections.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from replicaio.assembly import service_spec
from replicaio.core.config import Resilience
from replicaio.core.errors import UsageError
from replicaio.sim.kv_harness import KvHarness, KvWorkload, kv_options
from replicaio.sim.options import (
    CLOCK_DRIFT_PPM_DEFAULT,
    SimOptions,
    parse_adversary,
    parse_faults,
)
from replicaio.sim.profiles import (
    LONG_CLIENT_OPS_MAX,
    LONG_FAULT_WINDOW_US,
    LONG_HOLD_ACROSS_RESTART,
    LONG_OPS_FACTOR,
    LONG_SESSIONS_MAX,
    LONG_SNAPSHOT_EVERY,
    check_profile,
    long_crashes,
)
from replicaio.sim.simulator import SimResult, Simulator

MEMBERSHIP_EVERY_MS = 400
NEMESIS_EVERY_MS = 2000


def is_service(protocol: str) -> bool:
    """Whether ``protocol`` names a replicated service (with the KV clients)."""
    return service_spec(protocol) is not None


def add_service_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags that only replicated services use (ignored by the broadcast family)."""
    group = parser.add_argument_group("replicated services (raft)")
    group.add_argument("--clients", type=int, default=None,
                       help=f"closed-loop KV clients (default {KvWorkload().clients})")
    group.add_argument("--ops", type=int, default=None,
                       help=f"client operations in the run (default {KvWorkload().ops})")
    group.add_argument("--membership-every", type=int, default=None, metavar="MS",
                       help="ask for a membership change or leadership transfer every MS "
                       f"ms of virtual time (default {MEMBERSHIP_EVERY_MS}; 0: never)")
    group.add_argument("--nemesis", type=int, default=None, metavar="MS",
                       help="with the crash fault: crash the leader about every MS ms "
                       f"(default {NEMESIS_EVERY_MS}; 0: never)")
    group.add_argument("--snapshot-every", type=int, default=None, metavar="B",
                       help="SMR snapshot (and log compaction) every B applied batches "
                       "(default 16; 0: never)")
    group.add_argument("--think", type=int, default=None, metavar="MS",
                       help="a client's pause between operations is drawn from 0..MS ms "
                       f"(default {KvWorkload().think_us_max // 1000}; larger spreads the "
                       "quota of operations over more of the faulty stretch)")
    group.add_argument("--prompt-waves", type=int, default=None, metavar="W",
                       help="waves of probes once the cluster settled after the heal, each "
                       "answered on its first attempt or the run fails 'prompt' (default "
                       f"{KvWorkload().prompt_waves}; 0: no probes)")


def is_long(args: argparse.Namespace) -> bool:
    return check_profile(getattr(args, "profile", "default")) == "long"


def service_protocol(args: argparse.Namespace) -> str:
    """The protocol name with its parameters (``raft:snapshot=8``), as logged.
    The long profile snapshots more often and remembers few sessions."""
    base, _, given = str(args.protocol).partition(":")
    parameters = [item for item in given.split(",") if item]
    named = {item.partition("=")[0] for item in parameters}
    snapshot = getattr(args, "snapshot_every", None)
    if snapshot is None and is_long(args):
        snapshot = LONG_SNAPSHOT_EVERY
    if snapshot is not None and "snapshot" not in named:
        parameters.append(f"snapshot={snapshot}")
    if is_long(args) and "sessions" not in named:
        parameters.append(f"sessions={LONG_SESSIONS_MAX}")
    return f"{base}:{','.join(parameters)}" if parameters else base


def workload_of(args: argparse.Namespace) -> KvWorkload:
    base = KvWorkload()
    membership = getattr(args, "membership_every", None)
    if membership is None:
        membership = MEMBERSHIP_EVERY_MS
    nemesis = getattr(args, "nemesis", None)
    if nemesis is None:
        nemesis = NEMESIS_EVERY_MS
    if membership < 0 or nemesis < 0:
        raise UsageError("--membership-every and --nemesis must be >= 0")
    waves = getattr(args, "prompt_waves", None)
    think = getattr(args, "think", None)
    if think is not None and think < 0:
        raise UsageError("--think must be >= 0")
    long = is_long(args)
    ops = base.ops * LONG_OPS_FACTOR if long else base.ops
    return KvWorkload(
        clients=args.clients if getattr(args, "clients", None) is not None else base.clients,
        ops=args.ops if getattr(args, "ops", None) is not None else ops,
        membership_every_us=membership * 1000,
        nemesis_every_us=nemesis * 1000,
        client_ops_max=LONG_CLIENT_OPS_MAX if long else base.client_ops_max,
        fault_window_us=LONG_FAULT_WINDOW_US if long else base.fault_window_us,
        prompt_waves=waves if waves is not None else base.prompt_waves,
        think_us_max=think * 1000 if think is not None else base.think_us_max,
    ).validate()


def service_options(args: argparse.Namespace, seed: int) -> SimOptions:
    """The options of run ``seed`` of a service (workload in ``extra``)."""
    found = service_spec(args.protocol)
    assert found is not None
    spec, _ = found
    if args.byzantine and spec.resilience not in (Resilience.BYZANTINE,
                                                  Resilience.BYZANTINE_TRUSTED):
        raise UsageError(f"{args.protocol} tolerates crash faults only: no --byzantine")
    options = kv_options(
        seed, args.nodes, parse_faults(args.faults), workload_of(args),
        encode=not args.no_encode, clock_drift_ppm=clock_drift_of(args),
        byzantine=args.byzantine,
        adversary=parse_adversary(
            getattr(args, "adversary", None) or getattr(args, "behaviour", None)
        ),
        protocol=args.protocol.partition(":")[0],
    )
    if is_long(args):
        options = replace(
            options,
            crashes=long_crashes(seed, options.crashes),
            hold_across_restart=LONG_HOLD_ACROSS_RESTART,
        )
    return options


def clock_drift_of(args: argparse.Namespace) -> int:
    """``--clock-drift`` (ppm), or the default bound."""
    drift = getattr(args, "clock_drift", None)
    return CLOCK_DRIFT_PPM_DEFAULT if drift is None else int(drift)


def default_f(args: argparse.Namespace) -> int:
    f: int | None = args.f
    if f is not None:
        return f
    nodes: int = args.nodes
    found = service_spec(args.protocol)
    if found is not None and found[0].resilience is Resilience.BYZANTINE:
        return (nodes - 1) // 3
    return (nodes - 1) // 2


def run_service(
    args: argparse.Namespace,
    options: SimOptions,
    log_path: str | None = None,
    history_path: str | None = None,
) -> SimResult:
    """Run one simulation of a service; write its client history if asked."""
    protocol = service_protocol(args)
    if log_path is None:
        simulator = Simulator(protocol, options, f=default_f(args))
        result = simulator.run()
    else:
        with open(log_path, "wb") as sink:
            simulator = Simulator(protocol, options, f=default_f(args), log_sink=sink)
            result = simulator.run()
    if history_path is not None:
        harness = simulator.harness
        assert isinstance(harness, KvHarness)
        harness.require_recorder().dump(history_path)
    return result


def reproduce_words(args: argparse.Namespace) -> list[str]:
    """The service flags of a reproducing command line."""
    words: list[str] = []
    for flag, name in (
        ("--clients", "clients"),
        ("--ops", "ops"),
        ("--membership-every", "membership_every"),
        ("--nemesis", "nemesis"),
        ("--snapshot-every", "snapshot_every"),
        ("--prompt-waves", "prompt_waves"),
        ("--think", "think"),
    ):
        value = getattr(args, name, None)
        if value is not None:
            words += [flag, str(value)]
    return words


def report_fields(result: SimResult) -> dict[str, Any]:
    """Top-level JSON fields of a service run."""
    stats = result.stats
    return {
        "linearizable": stats.get("linearizable"),
        "ops_completed": stats.get("ops_completed", 0),
        "ops_invoked": stats.get("ops_invoked", 0),
    }


REPORT_ROWS = (
    "ops_invoked",
    "ops_completed",
    "ops_failed",
    "ops_unknown",
    "client_attempts",
    "client_redirects",
    "client_timeouts",
    "membership_requests",
    "nemesis_crashes",
    "raft_leaders_elected",
    "raft_term_max",
    "raft_commit_index_max",
    "raft_reads_confirmed",
    "pbft_view_max",
    "pbft_executed_max",
    "pbft_state_transfers",
    "linearizable",
    "linearizability_seconds",
)
