"""The ``replicaio`` command.

    replicaio sim PROTOCOL --nodes N [--byzantine F] [--faults ...] --seed S [--log FILE] [--json]
    replicaio sim raft --nodes N --seed S [--faults ...] [--clients C] [--ops K] [--history FILE]
    replicaio swarm PROTOCOL --nodes N [--byzantine F] --seeds K [--jobs J] [--json]
    replicaio sim ... --html OUT               (the run's space-time diagram)
    replicaio replay FILE --node I [--json]
    replicaio replay FILE... --html OUT        (one run, or live nodes' logs merged)
    replicaio check-history FILE
    replicaio status --cluster FILE [--once] [--json]
    replicaio check-transactions FILE [--bank-total N] [--json]
    replicaio sim txn --groups G --nodes N --seed S [--faults ...] [--workload bank]
    replicaio swarm txn --groups G --nodes N --seeds K [--faults ...]
    replicaio demo
    replicaio protocols [--json]
    replicaio conformance PROTOCOL... | --all [--seeds K] [--json]
    replicaio node --config FILE --id I [--event-log FILE]
    replicaio cluster up --protocol P --nodes N --base-port B --data-dir D
    replicaio cluster down --data-dir D
    replicaio broadcast --config FILE --node I VALUE
    replicaio kv up --nodes N --base-port P --data-dir D [--protocol raft]
    replicaio kv down --data-dir D
    replicaio kv node --config FILE --id I

Every subcommand takes ``--log-level`` (this command's own logs; as ``replicaio
--log-level L COMMAND``); every command that prints a result takes ``--json``.

Exit status: 0 when every property held (or the replay matched), 1 when a
property was violated (or the replay diverged), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as distribution_version
from typing import Any

from replicaio.assembly import protocol_factory
from replicaio.cli_common import (
    finish_parser,
    non_negative_int,
    positive_int,
    print_json,
    run_command,
    seed_or_random,
)
from replicaio.core.errors import UsageError
from replicaio.sim import kv_cli, txn_cli
from replicaio.sim.adversary import BEHAVIOURS
from replicaio.sim.options import (
    CLOCK_DRIFT_PPM_DEFAULT,
    FAULT_KINDS,
    SimOptions,
    parse_adversary,
    parse_faults,
)
from replicaio.sim.profiles import PROFILES, check_profile, long_broadcast
from replicaio.sim.progress import RunProgress
from replicaio.sim.simulator import SimResult, simulate
from replicaio.sim.txn_harness import takes_disk_faults

EXIT_OK = 0
EXIT_VIOLATION = 1
EXIT_USAGE = 2


def reproduce_command(args: argparse.Namespace, seed: int) -> str:
    """The one-line ``replicaio sim`` command that replays run ``seed``."""
    words = ["replicaio", "sim", args.protocol, "--nodes", str(args.nodes)]
    if args.byzantine:
        words += ["--byzantine", str(args.byzantine)]
    if args.f is not None:
        words += ["--f", str(args.f)]
    if args.behaviour:
        words += ["--behaviour", args.behaviour]
    if getattr(args, "adversary", None):
        words += ["--adversary", args.adversary]
    if args.faults:
        words += ["--faults", args.faults]
    if args.requests is not None:
        words += ["--requests", str(args.requests)]
    if getattr(args, "profile", "default") != "default":
        words += ["--profile", args.profile]
    if getattr(args, "clock_drift", None) is not None:
        words += ["--clock-drift", str(args.clock_drift)]
    words += kv_cli.reproduce_words(args)
    words += txn_cli.reproduce_words(args)
    words += ["--seed", str(seed)]
    return shlex.join(words)


def load_options(path: str) -> SimOptions:
    """Options from a JSON file (as written by shrinking or ``--json``)."""
    try:
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read options from {path}: {error}") from error
    if isinstance(data, dict) and "options" in data and "nodes" not in data:
        data = data["options"]
    if not isinstance(data, dict):
        raise UsageError(f"{path}: options must be a JSON object")
    return SimOptions.from_dict(data)


def draw_options(args: argparse.Namespace, seed: int) -> SimOptions:
    if getattr(args, "options", None):
        options = load_options(args.options)
        if options.nodes != args.nodes:
            raise UsageError(f"--nodes {args.nodes} but the options are for {options.nodes}")
        return options
    if kv_cli.is_service(args.protocol):
        return kv_cli.service_options(args, seed)
    if txn_cli.is_transactional(args.protocol):
        return txn_cli.options_of(args, seed)
    options = SimOptions.draw(
        seed,
        args.nodes,
        args.byzantine,
        parse_faults(args.faults),
        behaviour=args.behaviour,
        requests_per_node=args.requests,
        encode=not args.no_encode,
        adversary=parse_adversary(getattr(args, "adversary", None)),
        protocol=args.protocol,
        clock_drift_ppm=kv_cli.clock_drift_of(args),
    )
    if check_profile(getattr(args, "profile", "default")) == "long":
        options = long_broadcast(options, requests_per_node=args.requests)
    return options


def run_one(args: argparse.Namespace, seed: int, log_path: str | None = None) -> SimResult:
    options = draw_options(args, seed)
    if kv_cli.is_service(args.protocol):
        return kv_cli.run_service(args, options, log_path, getattr(args, "history", None))
    if txn_cli.is_transactional(args.protocol):
        return txn_cli.run(args, options, log_path, getattr(args, "history", None))
    if log_path is None:
        return simulate(args.protocol, options, f=args.f)
    with open(log_path, "wb") as sink:
        return simulate(args.protocol, options, f=args.f, log_sink=sink)


def inert_disk_faults(args: argparse.Namespace) -> str | None:
    """Why ``--faults disk`` would inject nothing in these runs, or ``None``: the
    fault model gives no node a faulty disk (a Byzantine node uses up the bound),
    or the harness has no storage faults. Said on stderr, so that a swarm is not
    read as having survived storage faults it never met."""
    if getattr(args, "options", None) or "disk" not in parse_faults(args.faults):
        return None
    protocol, nodes, byzantine = args.protocol, args.nodes, args.byzantine
    if txn_cli.is_transactional(protocol) and not takes_disk_faults(protocol):
        return (f"{protocol}: the transaction harness injects no disk faults "
                "(not for these groups yet)")
    if kv_cli.is_service(protocol) or txn_cli.is_transactional(protocol):
        from replicaio.assembly import damaged_disks_max

        bound = damaged_disks_max(protocol, nodes, byzantine)
    else:
        bound = (nodes - 1) // 3 - byzantine
    if bound >= 1:
        return None
    return (f"{protocol} with {nodes} nodes and {byzantine} Byzantine tolerates no node with "
            "a faulty disk besides them: no disk fault is injected (fewer Byzantine nodes "
            "or more nodes make room)")


def inert_degraded(args: argparse.Namespace) -> str | None:
    """Why ``--faults degraded`` would keep no node down in these runs, or
    ``None``: the Byzantine nodes already use up the fault bound, or the harness
    does not take the kind. (A seed whose disk faults use up the room keeps
    none down either; the run's report says so.)"""
    if getattr(args, "options", None) or "degraded" not in parse_faults(args.faults):
        return None
    protocol, nodes, byzantine = args.protocol, args.nodes, args.byzantine
    if kv_cli.is_service(protocol) or txn_cli.is_transactional(protocol):
        from replicaio.assembly import faults_tolerated

        room = faults_tolerated(protocol, nodes) - byzantine
    else:
        room = (nodes - 1) // 3 - byzantine
    if room >= 1:
        return None
    return (f"{protocol} with {nodes} nodes and {byzantine} Byzantine has no room for a "
            "node kept down besides them: no node is kept down")


def warn_inert_faults(args: argparse.Namespace) -> None:
    reason = inert_disk_faults(args)
    if reason is not None:
        print(f"warning: --faults disk: {reason}", file=sys.stderr)
    reason = inert_degraded(args)
    if reason is not None:
        print(f"warning: --faults degraded: {reason}", file=sys.stderr)


def command_sim(args: argparse.Namespace) -> int:
    if args.seed is None and not args.options:
        raise UsageError("give --seed S (or --options FILE)")
    warn_inert_faults(args)
    html = getattr(args, "html", None)
    log_path = args.log
    if html and not log_path:  # the diagram is drawn from the event log
        log_path = temporary_path(".log")
    try:
        result = run_one(args, args.seed if args.seed is not None else 0, log_path)
        if html:
            draw_html([log_path], html)
    finally:
        if log_path != args.log:
            os.unlink(log_path)
    report: dict[str, Any] = {
        "protocol": result.protocol,
        "seed": result.seed,
        "nodes": args.nodes,
        "byzantine": list(result.options.byzantine),
        "behaviours": list(result.options.behaviours),
        "faults": list(result.options.faults),
        "violations": result.violations,
        "log_sha256": result.log_sha256,
        "stats": result.stats,
        "counters": result.counters,
        "options": result.options.as_dict(),
        "reproduce": reproduce_command(args, result.seed),
    }
    if kv_cli.is_service(args.protocol):
        report.update(kv_cli.report_fields(result))
    history = getattr(args, "history", None)  # the demo builds its own arguments
    if history and (kv_cli.is_service(args.protocol)
                    or txn_cli.is_transactional(args.protocol)):
        report["history"] = history
    if args.options:
        report["reproduce"] += f" --options {shlex.quote(args.options)}"
    if args.log:
        report["log"] = args.log
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print_sim_report(report)
    return EXIT_VIOLATION if result.violations else EXIT_OK


def print_sim_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(100, Console().width))
    stats = report["stats"]
    options = report["options"]
    console.print(
        f"[bold]{report['protocol']}[/bold]  nodes={report['nodes']} "
        f"byzantine={report['byzantine']} {report['behaviours']}  "
        f"faults={','.join(report['faults']) or 'none'}  seed={report['seed']}"
    )
    table = Table(show_header=False, box=None, pad_edge=False)
    rows = [
        ("virtual time", f"{stats['virtual_time_us'] / 1e6:.3f} s "
         f"(safety phase {options['safety_us'] / 1e6:.3f} s)"),
        ("wall time", f"{stats['wall_seconds']:.3f} s"),
        ("requests", f"{stats['requests']} taken, {stats['requests_to_down_nodes']} to down nodes"),
        ("messages", f"{stats['messages_sent']} sent, {stats['messages_delivered']} delivered, "
         f"{stats['messages_lost']} lost, {stats['messages_duplicated']} duplicated, "
         f"{stats['messages_partitioned']} cut by partitions"),
        ("faults", f"{stats['crashes']} crashes ({stats['crashes_mid_step']} mid-step), "
         f"{stats['restarts']} restarts, {len(options['partitions'])} partitions"),
    ]
    if stats.get("disk_faults") or "disk" in report["faults"]:
        rows.append(("disk faults", f"{stats['disk_faults']} ({stats['disk_synced_writes_lost']} "
                     f"synced writes lost, {stats['disk_read_errors']} failed restarts)"))
    if "degraded" in report["faults"]:
        kept = options.get("kept_down", [])
        rows.append(("kept down",
                     f"nodes {list(kept)} from the heal on" if kept else "none (no room)"))
    for key in ("instances_accepted", "instances_delivered", "deliveries", *kv_cli.REPORT_ROWS,
                "transactions", "outcomes", "coordinator_leader_crashes"):
        if key in stats:
            rows.append((key.replace("_", " "), str(stats[key])))
    rejected = {k: v for k, v in report["counters"].items() if k.startswith(("rejected", "link_e"))}
    if rejected:
        rows.append(("rejected input", ", ".join(f"{k}={v}" for k, v in rejected.items())))
    for name, value in rows:
        table.add_row(f"  {name}", value)
    console.print(table)
    # Plain prints: these must never be wrapped or cut, people copy them.
    print(f"  event log sha256 {report['log_sha256']}"
          + (f" -> {report['log']}" if "log" in report else ""))
    if report["violations"]:
        console.print(f"[bold red]VIOLATED[/bold red] ({len(report['violations'])}):")
        for violation in report["violations"][:20]:
            console.print(f"  [red]{violation['property']}[/red]: {violation['detail']}")
        print(f"reproduce: {report['reproduce']}")
    else:
        console.print("[bold green]all properties hold[/bold green] "
                      "(safety checked on every output; liveness after healing)")


def swarm_worker(job: tuple[argparse.Namespace, int]) -> dict[str, Any]:
    args, seed = job
    try:
        result = run_one(args, seed)
    except AssertionError as error:  # a bug in the protocol or the framework: report it
        return {
            "seed": seed,
            "violations": [{"property": "assertion", "detail": repr(error)}],
            "reproduce": reproduce_command(args, seed),
        }
    return {
        "seed": seed,
        "violations": result.violations,
        "log_sha256": result.log_sha256,
        "reproduce": reproduce_command(args, seed),
        "deliveries": result.stats.get("deliveries", 0),
        **(kv_cli.report_fields(result) if kv_cli.is_service(args.protocol) else {}),
    }


def command_swarm(args: argparse.Namespace) -> int:
    if args.seeds < 1:
        raise UsageError("--seeds must be >= 1")
    warn_inert_faults(args)
    jobs = args.jobs or max(1, min(os.cpu_count() or 1, 8))
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    if not args.json:
        print(f"{args.protocol}: seeds {seeds.start}..{seeds.stop - 1}", flush=True)
    started = time.perf_counter()
    failures: list[dict[str, Any]] = []
    work = [(args, seed) for seed in seeds]
    if args.dask is not None:
        from replicaio.sim.fleet import map_on_dask

        results = collect(map_on_dask(args.dask, swarm_worker, work,
                                      connect_timeout_s=args.dask_timeout), len(work), args)
        results.sort(key=lambda item: int(item["seed"]))  # completion order -> seed order
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            stream = pool.map(swarm_worker, work, chunksize=max(1, len(work) // (jobs * 8)))
            results = collect(stream, len(work), args)
    for item in results:
        if item["violations"]:
            failures.append(item)
            if not args.json:
                first = item["violations"][0]
                print(f"FAIL seed {item['seed']}: {first['property']}: {first['detail']}")
                print(f"  reproduce: {item['reproduce']}")
    shrunk = None
    if failures and args.shrink:
        shrunk = shrink_failure(args, failures[0])
        failures[0]["shrunk"] = shrunk
    elapsed = time.perf_counter() - started
    if args.json:
        print(json.dumps({
            "protocol": args.protocol,
            "seeds": args.seeds,
            "first_seed": args.first_seed,
            "nodes": args.nodes,
            "byzantine": args.byzantine,
            "faults": list(parse_faults(args.faults)),
            "passed": len(results) - len(failures),
            "failed": len(failures),
            "violations": [
                {"seed": item["seed"], **violation}
                for item in failures for violation in item["violations"]
            ],
            "failures": failures,
            "wall_seconds": round(elapsed, 3),
            "log_sha256": {str(item["seed"]): item.get("log_sha256") for item in results},
            **swarm_service_fields(args, results),
        }, sort_keys=True))
    else:
        if shrunk is not None:
            print(f"shrunk seed {failures[0]['seed']} to {shrunk['crashes']} crash(es), "
                  f"{shrunk['partitions']} partition(s), loss={shrunk['loss']}, "
                  f"dup={shrunk['duplicate']}, reorder={shrunk['reorder_us']} us, "
                  f"{shrunk['requests_per_node']} request(s)/node in {shrunk['runs']} runs:")
            print(f"  reproduce: {shrunk['reproduce']}")
        verdict = "all passed" if not failures else f"{len(failures)} FAILED"
        fields = swarm_service_fields(args, results)
        if fields:
            verdict += (", every run linearizable" if fields["all_linearizable"] else
                        f", NOT linearizable: seeds {fields['not_linearizable_seeds'][:10]}")
        where = f"on {args.dask}" if args.dask else f"{jobs} jobs"
        print(f"{args.protocol}: {len(results)} seeds, {verdict} ({elapsed:.1f} s, {where})")
    return EXIT_VIOLATION if failures else EXIT_OK


def collect(stream: Iterator[dict[str, Any]], total: int,
            args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every result of ``stream``, with a progress bar (rate, failures, ETA) on stderr
    when it is a terminal (replicaio/sim/progress.py)."""
    results = []
    where = f" on {args.dask}" if args.dask else ""
    with RunProgress(f"{args.protocol} swarm{where}", total, unit="seeds") as progress:
        for item in stream:
            results.append(item)
            progress.advance(failed=bool(item["violations"]))
    return results


def swarm_service_fields(
    args: argparse.Namespace, results: list[dict[str, Any]]
) -> dict[str, Any]:
    """For services: whether every run's history was linearizable."""
    if not kv_cli.is_service(args.protocol):
        return {}
    not_linearizable = [item["seed"] for item in results if item.get("linearizable") is not True]
    return {
        "all_linearizable": not not_linearizable,
        "not_linearizable_seeds": not_linearizable,
        "ops_completed": sum(int(item.get("ops_completed", 0)) for item in results),
    }


def shrink_failure(args: argparse.Namespace, failure: dict[str, Any]) -> dict[str, Any]:
    """Shrink the fault schedule of a failing seed; write it where a person finds it."""
    from replicaio.sim.shrink import shrink

    options = draw_options(args, failure["seed"])
    property_name = failure["violations"][0]["property"]
    if kv_cli.is_service(args.protocol):
        result = shrink(kv_cli.service_protocol(args), options, property_name,
                        f=kv_cli.default_f(args))
    else:
        result = shrink(args.protocol, options, property_name, f=args.f)
    folder = args.shrink_dir
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{args.protocol}-seed{failure['seed']}-shrunk.json")
    with open(path, "w", encoding="utf-8") as stream:
        json.dump(result.options.as_dict(), stream, indent=1, sort_keys=True)
    command = reproduce_command(args, failure["seed"]) + f" --options {shlex.quote(path)}"
    return {
        "file": path,
        "reproduce": command,
        "property": property_name,
        "runs": result.runs,
        "crashes": len(result.options.crashes),
        "partitions": len(result.options.partitions),
        "loss": result.options.loss,
        "duplicate": result.options.duplicate,
        "reorder_us": result.options.reorder_us,
        "requests_per_node": result.options.requests_per_node,
    }


def temporary_path(suffix: str) -> str:
    import tempfile

    handle, path = tempfile.mkstemp(prefix="replicaio-", suffix=suffix)
    os.close(handle)
    return path


def draw_html(logs: list[str], html: str) -> None:
    """Write the space-time diagram of ``logs`` to ``html`` (said on stderr, so that
    ``--json`` output stays one object)."""
    from replicaio.trace.html import write_logs_html

    try:
        drawn = write_logs_html(logs, html)
    except OSError as error:
        raise UsageError(f"cannot draw {', '.join(logs)} into {html}: {error}") from error
    for name, why in sorted(drawn["cut"].items()):
        print(f"warning: event log {name} was {why}; drawn up to its last whole record",
              file=sys.stderr)
    print(f"diagram: {drawn['steps']} steps, {drawn['messages']} messages, "
          f"{drawn['violations']} violation(s) -> {html}", file=sys.stderr)


def live_node_extras(path: str) -> Callable[[dict[str, Any], int], dict[str, Any]]:
    """What a live node of the cluster file at ``path`` was built with besides
    its protocol: its signer, USIG scheme and the USIG admission its log's
    header names (not the cluster file's, which may be newer)."""
    from replicaio.assembly import usig_admission
    from replicaio.runtime.config import ClusterFileError, load_cluster_file

    try:
        cluster = load_cluster_file(path)
    except ClusterFileError as error:
        raise UsageError(str(error)) from error

    def extras(header: dict[str, Any], node_id: int) -> dict[str, Any]:
        if int(header["n"]) != cluster.n or str(header["protocol"]) != cluster.protocol:
            raise UsageError(f"{path} is not the cluster of this log ({cluster.protocol} with "
                             f"{cluster.n} nodes; the log: {header['protocol']} with "
                             f"{header['n']})")
        options = header.get("options") or {}
        admission: Any = None
        if "usig_groups" in options:  # a node of several MinBFT groups (ADR 0031)
            admission = {int(group): usig_admission(node_id, int(epoch), bytes.fromhex(str(text)))
                         for group, epoch, text in options["usig_groups"]}
        elif "usig_admission" in options:
            admission = usig_admission(node_id, int(options["usig_epoch"]),
                                       bytes.fromhex(str(options["usig_admission"])))
        return {"signer": cluster.signer(node_id), "usig_scheme": cluster.usig_scheme(node_id),
                "usig_admission": admission}

    return extras


def keys_hint(stream: Any) -> str | None:
    """Why a live node's replay may have diverged without being wrong: a live
    PBFT or MinBFT node signs what it sends (Ed25519 signatures are
    deterministic) and certifies with its USIG, and a replay without its keys
    signs differently. ``None`` for a simulated run or a crash-tolerant node."""
    from replicaio.core.config import Resilience
    from replicaio.trace.eventlog import EventLogError, read_log

    stream.seek(0)
    try:
        header, _ = read_log(stream)
        live = (header.get("options") or {}).get("host") == "live"
        resilience = protocol_factory(str(header["protocol"])).resilience
    except (EventLogError, KeyError, UsageError):
        return None
    if live and resilience in (Resilience.BYZANTINE, Resilience.BYZANTINE_TRUSTED):
        return (f"a live {header['protocol']} node signs with its own keys: replay it with "
                "--cluster FILE (the cluster file it ran with)")
    return None


def command_replay(args: argparse.Namespace) -> int:
    from replicaio.trace.replay import replay

    if args.html:
        draw_html(args.files, args.html)
        if args.node is None:
            return EXIT_OK
    if args.node is None:
        raise UsageError("give --node I (replay one node) or --html FILE (draw the run)")
    if len(args.files) != 1:
        raise UsageError("--node replays one log: give exactly one FILE")
    args.file = args.files[0]
    extras = live_node_extras(args.cluster) if args.cluster else None
    try:
        with open(args.file, "rb") as stream:
            result = replay(stream, args.node, protocol_factory, extras)
            hint = None if result.matched or extras is not None else keys_hint(stream)
    except OSError as error:
        raise UsageError(f"cannot read {args.file}: {error}") from error
    report = {
        "file": args.file,
        "node": result.node,
        "matched": result.matched,
        "steps": result.steps,
        "incarnations": result.incarnations,
        "divergence": result.divergence,
        "violations": [] if result.matched else [{"property": "replay", "detail": "diverged"}],
    }
    if hint is not None:
        report["hint"] = hint
    if args.json:
        print(json.dumps(report, sort_keys=True, default=repr))
    elif result.matched:
        print(f"node {result.node}: {result.steps} steps over {result.incarnations} "
              "incarnation(s) replayed; every effect matches")
    else:
        divergence = result.divergence or {}
        print(f"node {result.node}: DIVERGED at step {divergence.get('step')} "
              f"(t={divergence.get('time_us')} us, incarnation {divergence.get('incarnation')}) "
              f"in {divergence.get('part')}")
        print(f"  expected: {divergence.get('expected')!r}"[:2000])
        print(f"  actual:   {divergence.get('actual')!r}"[:2000])
        if hint is not None:
            print(f"  hint: {hint}")
    return EXIT_OK if result.matched else EXIT_VIOLATION


def command_explore(args: argparse.Namespace) -> int:
    from replicaio.sim.explore import explore

    if args.crash_prefixes:
        return command_crash_prefixes(args)
    options = draw_options(args, args.seed)
    with RunProgress(f"{args.protocol} explore", args.runs, unit="runs") as progress:
        result = explore(args.protocol, options, f=args.f, runs_max=args.runs,
                         on_run=lambda failed: progress.advance(failed=failed))
    report = {
        "protocol": args.protocol,
        "seed": args.seed,
        "runs": result.runs,
        "exhaustive": result.exhaustive,
        "choice_points_max": result.choice_points_max,
        "violations": [
            {"choices": failure["choices"], **violation}
            for failure in result.failures for violation in failure["violations"]
        ],
    }
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        scope = "every" if result.exhaustive else f"the first {result.runs}"
        print(f"{args.protocol} seed {args.seed}: explored {scope} choice sequence(s) "
              f"({result.runs} runs, up to {result.choice_points_max} choice points per run)")
        for failure in result.failures:
            first = failure["violations"][0]
            print(f"  FAIL with choices {failure['choices']}: {first['property']}: "
                  f"{first['detail']}")
    return EXIT_VIOLATION if result.failures else EXIT_OK


def command_crash_prefixes(args: argparse.Namespace) -> int:
    """``explore --crash-prefixes``: restart from every prefix of every step's writes."""
    from replicaio.sim.prefixes import check_prefixes

    options = draw_options(args, args.seed)
    if kv_cli.is_service(args.protocol):
        protocol, f = kv_cli.service_protocol(args), kv_cli.default_f(args)
    else:
        protocol, f = args.protocol, args.f
    # The bar counts prefix states against the bound (--states): a run with fewer
    # writing steps ends early, and the bar with it.
    with RunProgress(f"{protocol} crash prefixes", args.states, unit="states") as progress:
        result = check_prefixes(protocol, options, f=f, states_max=args.states,
                                on_state=lambda failed: progress.advance(failed=failed))
    violations = list(result.failures)
    violations += result.run_violations
    report = {
        "protocol": protocol,
        "seed": args.seed,
        "steps_checked": result.steps_checked,
        "states_checked": result.states_checked,
        "exhaustive": result.exhaustive,
        "violations": violations,
        "reproduce": reproduce_command(args, args.seed).replace(" sim ", " explore ", 1)
        + " --crash-prefixes",
    }
    if args.json:
        print(json.dumps(report, sort_keys=True, default=repr))
        return EXIT_VIOLATION if violations else EXIT_OK
    scope = "every" if result.exhaustive else "the first"
    print(f"{protocol} seed {args.seed}: restarted from {scope} {result.states_checked} prefix "
          f"state(s) of {result.steps_checked} writing step(s)")
    for failure in result.failures:
        print(f"  FAIL node {failure['node']} step {failure['step']} ({failure['input']}, "
              f"t={failure['time_us']} us) keeping {failure['kept']} of {failure['writes']} "
              f"writes {failure['keys'][:6]}: {failure['property']}: {failure['detail']}")
    for violation in result.run_violations:
        print(f"  FAIL (the run itself): {violation['property']}: {violation['detail']}")
    if violations:
        print(f"reproduce: {report['reproduce']}")
    return EXIT_VIOLATION if violations else EXIT_OK


def command_check_history(args: argparse.Namespace) -> int:
    from replicaio.check.linearizability import main_check_history

    return main_check_history(args.file, as_json=args.json)


def command_check_transactions(args: argparse.Namespace) -> int:
    from replicaio.check.transactions import main_check_transactions

    return main_check_transactions(args.file, bank_total=args.bank_total, as_json=args.json)


def command_protocols(args: argparse.Namespace) -> int:
    from replicaio.assembly import protocol_summaries

    summaries = protocol_summaries()
    if args.json:
        print_json({"protocols": summaries})
        return EXIT_OK
    for name, summary in summaries.items():
        print(f"{name:26} {summary}")
    return EXIT_OK


def command_demo(args: argparse.Namespace) -> int:
    """A tour: Bracha under every fault with a Byzantine sender, replay, and a
    broken variant caught by the checkers."""
    import tempfile

    from replicaio.trace.replay import replay

    print("== 1. Bracha's reliable broadcast, 4 nodes, 1 equivocating Byzantine node,")
    print("==    crashes, partitions, loss, duplication and reordering")
    # Every run is built by the parser, so new options always have their defaults.
    def parse(words: list[str]) -> argparse.Namespace:
        parsed = build_parser().parse_args(words)
        vars(parsed).pop("command_parser", None)  # a parser does not pickle (swarm workers)
        return parsed

    common = ["--nodes", "4", "--byzantine", "1", "--requests", "4"]
    faults = ["--faults", "crash,partition,loss,dup,reorder"]
    demo = parse(["sim", "bracha", *common, *faults, "--behaviour", "equivocate",
                  "--seed", str(args.seed)])
    with tempfile.TemporaryDirectory() as folder:
        demo.log = os.path.join(folder, "run.log")
        status = command_sim(demo)
        print("\n== 2. Replaying every node of that run from its event log")
        for node in range(demo.nodes):
            with open(demo.log, "rb") as stream:
                result = replay(stream, node, protocol_factory)
            verdict = "matches" if result.matched else f"DIVERGED {result.divergence}"
            print(f"   node {node}: {result.steps} steps, {result.incarnations} incarnation(s): "
                  f"{verdict}")
            status = status or (0 if result.matched else 1)
    print("\n== 3. A swarm of 50 seeds with random faults and Byzantine behaviours")
    swarm = parse(["swarm", "bracha", *common, *faults, "--seeds", "50", "--first-seed", "1"])
    status = status or command_swarm(swarm)
    print("\n== 4. The checkers bite: consistent broadcast delivering on f+1 echoes (broken)")
    broken = parse(["sim", "echo-weak", *common, "--behaviour", "equivocate", "--seed", "1"])
    caught = command_sim(broken) == EXIT_VIOLATION
    print("   -> the violation above is expected: the checker caught the broken variant"
          if caught else "   -> NOT CAUGHT: the checker failed to bite")
    print("\n== 5. Raft + state machine replication + a key-value store, 5 nodes, every fault;")
    print("==    closed-loop clients; the client history checked for linearizability")
    raft_args = parse([
        "sim", "raft", "--nodes", "5", "--faults", "crash,partition,loss,dup,reorder",
        "--seed", str(args.seed), "--clients", "5", "--ops", "300",
    ])
    status = status or command_sim(raft_args)
    status = status or demo_pbft()
    return status if caught else EXIT_VIOLATION


def demo_pbft() -> int:
    """The demo's PBFT part: a Byzantine primary replaced, the history checked."""
    import tempfile

    print("\n== 6. PBFT + SMR + KV, 4 replicas; replica 0, the primary of view 0, is Byzantine")
    print("==    (pbft_invalid_batch: it proposes forged requests, which no correct backup")
    print("==    prepares): it is replaced (pbft view max >= 1), clients keep their answers,")
    print("==    and the client history is checked with check-history")
    with tempfile.TemporaryDirectory() as folder:
        history = os.path.join(folder, "pbft-history.jsonl")
        # Seed 12 draws replica 0 as the Byzantine one (the primary of view 0).
        pbft_args = build_parser().parse_args([
            "sim", "pbft", "--nodes", "4", "--byzantine", "1", "--adversary",
            "pbft_invalid_batch", "--seed", "12", "--history", history,
        ])
        vars(pbft_args).pop("command_parser", None)
        status = command_sim(pbft_args)
        check = build_parser().parse_args(["check-history", history])
        vars(check).pop("command_parser", None)
        return status or int(check.handler(check))


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("protocol", help="beb, bracha, echo, raft (see `replicaio protocols`)")
    parser.add_argument("--nodes", type=positive_int, required=True, help="cluster size n")
    parser.add_argument("--byzantine", type=non_negative_int, default=0,
                        help="number of Byzantine nodes")
    parser.add_argument("--f", type=int, default=None,
                        help="faults tolerated (default: (n-1)//3)")
    parser.add_argument("--behaviour", choices=list(BEHAVIOURS), default=None,
                        help="force one Byzantine behaviour (default: drawn from the seed)")
    parser.add_argument("--adversary", default=None, metavar="B1,B2",
                        help="force every Byzantine node's behaviours, composed (e.g. "
                        f"forge,replay; from {', '.join(BEHAVIOURS)}; default: drawn from "
                        "the seed); see docs/adversary.md")
    parser.add_argument("--faults", default="",
                        help=f"comma list of {','.join(FAULT_KINDS)} (sync: group commit, a "
                        "sync takes time while the node keeps stepping; degraded: f nodes in "
                        "all, Byzantine ones included, stay down after the heal; slow: links "
                        "far slower than a timeout for a while; default: none: a run without "
                        "faults unless you name them)")
    parser.add_argument("--requests", type=int, default=None,
                        help="client requests per node (default: drawn from the seed)")
    parser.add_argument("--profile", choices=PROFILES, default="default",
                        help="workload profile: 'long' reaches garbage collection, windows, "
                        "session eviction, snapshots and long partitions (docs/simulation.md)")
    parser.add_argument("--clock-drift", type=int, default=None, metavar="PPM",
                        help="node clock rates are drawn within +-PPM parts per million "
                        f"(default {CLOCK_DRIFT_PPM_DEFAULT}); the clock fault goes beyond")
    parser.add_argument("--no-encode", action="store_true",
                        help="skip the wire codec between nodes (faster; the log still encodes)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    kv_cli.add_service_arguments(parser)
    txn_cli.add_txn_arguments(parser)


def package_version() -> str:
    """The installed distribution's version (a source tree without one says so)."""
    try:
        return distribution_version("replicaio")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="replicaio",
        description="Compose, simulate, check, replay and run replication protocols.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    parser.add_argument("--log-level", dest="cli_log_level", default=None,
                        choices=("debug", "info", "warning", "error"),
                        help="this command's own logs (JSON lines on stderr, ISO timestamps); "
                        "nodes started by cluster up / kv up take their own --log-level "
                        "(default: warnings only)")
    commands = parser.add_subparsers(dest="command", required=True)

    sim = commands.add_parser("sim", help="run one simulation and check every property")
    add_run_arguments(sim)
    sim.add_argument("--seed", type=int, default=None, help="the run's seed (required "
                     "unless --options gives the whole schedule)")
    sim.add_argument("--options", default=None,
                     help="run exactly these options (JSON, e.g. a shrunk schedule)")
    sim.add_argument("--log", default=None, help="write the event log to FILE")
    sim.add_argument("--html", default=None, metavar="OUT",
                     help="draw the run's space-time diagram into OUT (one self-contained "
                     "page; docs/visualisation.md)")
    sim.add_argument("--history", default=None,
                     help="write the client history to FILE (JSON lines; services and txn: "
                     "a transaction history for check-transactions)")
    sim.set_defaults(handler=command_sim)

    swarm = commands.add_parser("swarm", help="run many seeds in parallel processes")
    add_run_arguments(swarm)
    swarm.add_argument("--seeds", type=positive_int, required=True, help="how many seeds")
    swarm.add_argument("--first-seed", type=seed_or_random, default=1, metavar="N|random",
                       help="the first seed; 'random' draws one (the seed range is printed) "
                       "so that repeated swarms explore new seeds")
    swarm.add_argument("--jobs", type=positive_int, default=None,
                       help="worker processes (default: the CPUs, at most 8)")
    swarm.add_argument("--dask", default=None, metavar="tcp://HOST:8786",
                       help="run the seeds on this Dask scheduler's workers instead of local "
                       "processes (same verdicts and hashes; docs/simulation.md)")
    swarm.add_argument("--dask-timeout", type=float, default=30.0, metavar="SECONDS",
                       help="give up connecting to the Dask scheduler after this long "
                       "(default: %(default)s)")
    swarm.add_argument("--no-shrink", dest="shrink", action="store_false",
                       help="do not shrink the first failure's fault schedule")
    swarm.add_argument("--shrink-dir", default="replicaio-failures",
                       help="where shrunk schedules are written (default: %(default)s)")
    swarm.set_defaults(handler=command_swarm)

    explore_parser = commands.add_parser(
        "explore", help="enumerate every choice-point outcome of one seed's run")
    add_run_arguments(explore_parser)
    explore_parser.add_argument("--seed", type=int, required=True)
    explore_parser.add_argument("--runs", type=positive_int, default=1000,
                                help="re-executions at most")
    explore_parser.add_argument(
        "--crash-prefixes", action="store_true",
        help="instead of choices: restart each node from every prefix of every step's "
        "writes and re-check (replicaio.sim.prefixes; small runs)")
    explore_parser.add_argument("--states", type=int, default=20_000,
                                help="with --crash-prefixes: prefix states checked at most")
    explore_parser.set_defaults(handler=command_explore, options=None)

    replay_parser = commands.add_parser(
        "replay", help="re-execute a node from an event log, or draw the run (--html)")
    replay_parser.add_argument("files", nargs="+", metavar="FILE",
                               help="an event log (several with --html: live nodes' logs, "
                               "merged by time)")
    replay_parser.add_argument("--node", type=int, default=None, help="the node to re-execute")
    replay_parser.add_argument("--html", default=None, metavar="OUT",
                               help="draw the run's space-time diagram into OUT (one "
                               "self-contained page; docs/visualisation.md)")
    replay_parser.add_argument("--cluster", default=None, metavar="FILE",
                               help="the cluster file a live node ran with: its signing "
                               "and USIG keys (needed to replay a live PBFT or MinBFT node)")
    replay_parser.add_argument("--json", action="store_true")
    replay_parser.set_defaults(handler=command_replay)

    history = commands.add_parser("check-history", help="check a JSON-lines history")
    history.add_argument("file")
    history.add_argument("--json", action="store_true", help="one JSON object on stdout")
    history.set_defaults(handler=command_check_history)

    transactions = commands.add_parser(
        "check-transactions",
        help="check a JSON-lines transaction history (list-append: strict serializability; "
        "bank: the total)",
    )
    transactions.add_argument("file")
    transactions.add_argument("--bank-total", type=int, default=None,
                              help="the bank's total (a bank history needs it)")
    transactions.add_argument("--json", action="store_true", help="one JSON object on stdout")
    transactions.set_defaults(handler=command_check_transactions)

    demo = commands.add_parser("demo", help="a guided tour of the framework")
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(handler=command_demo)

    listing = commands.add_parser("protocols", help="list the protocols")
    listing.add_argument("--json", action="store_true", help="one JSON object on stdout")
    listing.set_defaults(handler=command_protocols)

    # The live runtime: node, cluster up|down, broadcast (replicaio/runtime/commands.py).
    from replicaio.runtime.commands import add_runtime_commands

    add_runtime_commands(commands)
    # The Redis-protocol key-value store: kv up|down|node (replicaio/runtime/kv/commands.py).
    from replicaio.runtime.kv.commands import add_kv_commands

    add_kv_commands(commands)
    # The operator's view of a live key-value cluster (replicaio/runtime/ctl.py).
    from replicaio.runtime.ctl import add_ctl_command

    add_ctl_command(commands)
    # Live torture in network namespaces (replicaio/torture/commands.py).
    from replicaio.torture.commands import add_torture_command

    add_torture_command(commands)
    # The standard checks of any registered protocol (replicaio/conformance.py).
    from replicaio.conformance import add_conformance_command

    add_conformance_command(commands)
    # Each live node's state from its metrics endpoint (replicaio/runtime/status.py).
    from replicaio.runtime.status import add_status_command

    add_status_command(commands)
    for node_parser in parsers_with_option(parser, "--byzantine"):
        node_parser.set_defaults(byzantine_builder=live_byzantine)
    return finish_parser(parser)


def parsers_with_option(parser: argparse.ArgumentParser, option: str) -> Iterator[Any]:
    """``parser`` and its subcommands' parsers, those that take ``option``."""
    if option in parser._option_string_actions:
        yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from parsers_with_option(sub, option)


def live_byzantine(mix: str, cluster: Any, node_id: int) -> Callable[[int, Any], list[Any]]:
    """``replicaio node --byzantine MIX``: the simulator's adversary behaviours
    (``replicaio.sim.adversary``, ``replicaio.sim.pbft_adversary``) rewriting a
    live node's messages. Behaviours that re-sign sign with the node's own key
    (it holds no other). ``rewrite`` runs live, and ``core_factory`` (the
    transaction drivers that lie or alter, ``replicaio.sim.txn_adversary``): what
    a behaviour would send on its own (``attack``) needs the simulator's view of
    the run."""
    # Registers PBFT's and MinBFT's behaviours (MinBFT's that mint UIs ask the
    # node's own USIG through the host's live view: Host.attach_live_view).
    import replicaio.sim.minbft_adversary
    import replicaio.sim.pbft_adversary
    import replicaio.sim.txn_adversary  # noqa: F401  (drivers that lie or alter)
    from replicaio.sim.adversary import BEHAVIOURS, Composite, PerGroup, build_strategy

    unknown = [name for name in mix.split("+") if name not in BEHAVIOURS]
    if unknown:
        known = ", ".join(sorted(BEHAVIOURS))
        raise UsageError(f"unknown behaviour {unknown[0]!r}; known: {known}")
    strategy = build_strategy(mix, node_id, cluster.n, int.from_bytes(os.urandom(4), "big"))
    parts = strategy.parts if isinstance(strategy, Composite) else [strategy]
    for part in parts:
        # A protocol's behaviour acting per group: its groups' instances take
        # the signer of its first one when they are made.
        part = part.plain if isinstance(part, PerGroup) else part
        if hasattr(part, "signer"):
            part.signer = cluster.signer(node_id)
    return strategy.rewrite


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # (a bad option: argparse prints the usage, exits 2)
    if args.cli_log_level is not None:
        from replicaio.runtime.logs import configure_logging

        configure_logging(args.cli_log_level)
    return run_command(parser, args, dispatch)


def dispatch(args: argparse.Namespace) -> int:
    if isinstance(getattr(args, "protocol", None), str):
        txn_cli.normalize(args)
    status: int = args.handler(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
