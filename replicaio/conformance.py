"""The protocol conformance kit: the standard checks every registered protocol passes.

``replicaio conformance NAME...`` (or ``--all``) and
:func:`replicaio.testing.conformance.assert_conformant` run, for a protocol
built in or registered by a plug-in (entry point group ``replicaio.protocols``):

* ``registered``: the name resolves to a factory, with its fault model;
* ``purity``: the modules the protocol is written in import nothing that makes
  a run depend on more than its inputs (I/O, clock, randomness, threads, the
  hosts); the same list as the ``deterministic`` import-linter contract;
* ``determinism``: one seed run twice gives the same event log (its sha256),
  and, in two fresh processes with different ``PYTHONHASHSEED``, still the same
  one (a ``set`` of strings deciding an order shows up here);
* ``replay``: every node of that run re-executes from the event log with every
  effect matching;
* ``bounded-footprint``: the factory declares what a node may hold
  (``footprint_max``), so every run holds each correct node to it;
* ``checkers``: ``seeds`` runs under every fault (crash, partition, loss,
  duplication, reordering; Byzantine nodes up to f where the fault model has
  them) and every checker of the protocol holds (safety after every step,
  liveness after healing, bounded memory).

Each run is built by the ``replicaio sim`` parser, so a failure's reproduce
line is the exact command to run. Guarantee: a protocol that passes has met
these checks on these seeds; it says nothing about other seeds (run
``replicaio swarm`` for that).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from replicaio.assembly import (
    TRANSACTIONAL,
    broadcast_spec,
    protocol_factory,
    protocol_names,
    service_spec,
)
from replicaio.core.config import Resilience
from replicaio.core.errors import UsageError

# The deterministic import-linter contract's forbidden modules (pyproject.toml;
# tests/test_conformance.py keeps the two lists equal).
FORBIDDEN_IMPORTS: Final = (
    "asyncio", "socket", "time", "random", "os", "threading", "subprocess", "selectors",
    "multiprocessing", "uuid", "secrets", "datetime",
    "replicaio.sim", "replicaio.runtime", "replicaio.storage.file",
)
FAULTS_ALL: Final = "crash,partition,loss,dup,reorder"
SEEDS_DEFAULT: Final = 5
SERVICE_OPS: Final = 60  # client operations per service run: enough to cross snapshots
PROCESS_TIMEOUT_S: Final = 300.0


@dataclass(slots=True)
class Check:
    """One check's verdict."""

    name: str
    passed: bool
    detail: str = ""
    reproduce: str = ""


@dataclass(slots=True)
class ConformanceReport:
    """Every check of one protocol."""

    protocol: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def failures(self) -> list[Check]:
        return [check for check in self.checks if not check.passed]

    def as_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "passed": self.passed,
            "checks": [
                {"name": check.name, "passed": check.passed, "detail": check.detail,
                 **({"reproduce": check.reproduce} if check.reproduce else {})}
                for check in self.checks
            ],
        }


def conformant_protocols() -> list[str]:
    """Every registered protocol that claims to be correct (broken variants excluded)."""
    found = []
    for name in protocol_names():
        spec: Any = broadcast_spec(name)
        if spec is None:
            service = service_spec(name)
            spec = service[0] if service is not None else TRANSACTIONAL.get(name)
        if spec is not None and not spec.broken:
            found.append(name)
    return found


def cluster_words(name: str) -> list[str]:
    """The cluster of the checks: the smallest that tolerates a fault of the model,
    with a Byzantine node where the model has them."""
    resilience = protocol_factory(name).resilience
    spec = broadcast_spec(name)
    f = 1
    nodes = resilience.nodes_min(f) if resilience is not Resilience.ANY else 3
    if spec is not None and spec.nodes_min is not None:
        nodes = max(nodes, spec.nodes_min(f))
    words = ["--nodes", str(nodes)]
    if resilience in (Resilience.BYZANTINE, Resilience.BYZANTINE_TRUSTED) and (
            spec is not None):  # services' Byzantine runs are their own suites
        words += ["--byzantine", "1"]
    if spec is None:
        words += ["--ops", str(SERVICE_OPS)]
    if name in TRANSACTIONAL:
        words += ["--groups", "2"]
    return words


class Runner:
    """Runs ``replicaio sim`` command lines in this process."""

    def __init__(self, name: str) -> None:
        from replicaio.cli import build_parser

        self.name = name
        self.parser = build_parser()
        self.cluster = cluster_words(name)

    def words(self, seed: int, *extra: str) -> list[str]:
        return ["sim", self.name, *self.cluster, "--faults", FAULTS_ALL, *extra,
                "--seed", str(seed)]

    def run(self, seed: int, *extra: str, log: str | None = None) -> tuple[Any, str]:
        """(the run's result, its reproduce line)."""
        from replicaio.cli import reproduce_command, run_one

        args = self.parse(self.words(seed, *extra))
        return run_one(args, seed, log), reproduce_command(args, seed)

    def reproduce(self, seed: int) -> str:
        from replicaio.cli import reproduce_command

        return reproduce_command(self.parse(self.words(seed)), seed)

    def parse(self, words: list[str]) -> argparse.Namespace:
        """The words parsed as ``replicaio`` parses them, ``--groups`` folded into the
        protocol name included (without it the in-process run of a transactional
        protocol was another cluster than the reproduce line and the fresh
        processes ran)."""
        from replicaio.sim import txn_cli

        args = self.parser.parse_args(words)
        txn_cli.normalize(args)
        return args


def check_registered(name: str) -> Check:
    try:
        factory = protocol_factory(name)
    except UsageError as error:
        return Check("registered", False, str(error))
    return Check("registered", True, f"{type(factory).__name__}, {factory.resilience.value} "
                 "fault model")


def protocol_modules(name: str) -> list[str]:
    """The modules a protocol is written in: its broadcast instance function's and
    runner's, or its service builder's; for replicaio's own protocols, the
    deterministic packages (test_purity.py holds those to the same list)."""
    spec = broadcast_spec(name)
    if spec is not None:
        roots: list[Any] = [spec.instance, spec.runner]
    else:
        service = service_spec(name)
        transactional = TRANSACTIONAL.get(name.partition(":")[0])
        if service is not None:
            roots = [service[0].build]
        elif transactional is not None:
            roots = [transactional.node_type, transactional.store_type]
        else:
            roots = []
    modules = sorted({getattr(root, "__module__", "") for root in roots} - {""})
    if any(module.startswith("replicaio.") for module in modules):
        modules = [m for m in modules if not m.startswith("replicaio.")] + [
            "replicaio.core", "replicaio.interfaces", "replicaio.protocols", "replicaio.smr",
            "replicaio.services", "replicaio.testing.variants"]
    return modules


def module_files(module: str) -> list[Path]:
    """The source files of ``module`` (every file under it, for a package)."""
    found = importlib.util.find_spec(module)
    if found is None or found.origin is None:
        return []
    origin = Path(found.origin)
    if found.submodule_search_locations:
        return sorted(origin.parent.rglob("*.py"))
    return [origin]


def forbidden_imports(path: Path) -> Iterable[str]:
    """``"file:line imports X"`` for every forbidden import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        for imported in names:
            if any(imported == bad or imported.startswith(bad + ".")
                   for bad in FORBIDDEN_IMPORTS):
                yield f"{path.name}:{node.lineno} imports {imported}"
                break


def check_purity(name: str) -> Check:
    modules = protocol_modules(name)
    files = [path for module in modules for path in module_files(module)]
    if not files:
        return Check("purity", False, f"no source found for {modules}")
    bad = [found for path in files for found in forbidden_imports(path)]
    if bad:
        return Check("purity", False, "; ".join(bad[:5]))
    return Check("purity", True, f"{len(files)} file(s) of {', '.join(modules)}")


def sha256_of(path: str) -> str:
    with open(path, "rb") as stream:
        return hashlib.sha256(stream.read()).hexdigest()


def check_determinism_and_replay(runner: Runner, seed: int,
                                folder: str) -> tuple[list[Check], Any]:
    """Determinism and replay checks of run ``seed``, and its result."""
    logs = [os.path.join(folder, f"run{index}.log") for index in (1, 2)]
    first, reproduce = runner.run(seed, log=logs[0])
    second, _ = runner.run(seed, log=logs[1])
    same = first.log_sha256 == second.log_sha256 and sha256_of(logs[0]) == sha256_of(logs[1])
    detail = f"seed {seed} twice: event log sha256 {first.log_sha256[:16]}"
    if not same:
        detail += f" then {second.log_sha256[:16]}"
    checks = [Check("determinism", same, detail, "" if same else reproduce)]
    checks.append(check_replay(logs[0], first.options.nodes, reproduce))
    return checks, first


def check_replay(log: str, nodes: int, reproduce: str) -> Check:
    from replicaio.trace.replay import replay

    steps = 0
    for node in range(nodes):
        with open(log, "rb") as stream:
            result = replay(stream, node, protocol_factory)
        if not result.matched:
            return Check("replay", False, f"node {node} diverged: {result.divergence}", reproduce)
        steps += result.steps
    return Check("replay", True, f"{nodes} nodes, {steps} steps, every effect matches")


def check_hash_seeds(runner: Runner, seed: int, expected: str) -> Check:
    """The same run in two fresh processes with different string hash seeds."""
    words = [sys.executable, "-c", "import sys; from replicaio.cli import main; "
             "sys.exit(main(sys.argv[1:]))", *runner.words(seed), "--json"]
    found = []
    for hash_seed in ("1", "2"):
        environment = {**os.environ, "PYTHONHASHSEED": hash_seed}
        try:
            done = subprocess.run(words, capture_output=True, text=True, env=environment,
                                  timeout=PROCESS_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:  # a report, not a traceback without one
            return Check("determinism-across-processes", False,
                         f"PYTHONHASHSEED={hash_seed}: no result within "
                         f"{PROCESS_TIMEOUT_S:.0f} s")
        try:
            found.append(json.loads(done.stdout)["log_sha256"])
        except (ValueError, KeyError):
            return Check("determinism-across-processes", False,
                         f"PYTHONHASHSEED={hash_seed}: exit {done.returncode}: "
                         f"{done.stderr.strip()[-300:]}")
    same = found == [expected, expected]
    detail = "PYTHONHASHSEED 1 and 2 give the in-process hash" if same else (
        f"in-process {expected[:16]}, PYTHONHASHSEED=1 {found[0][:16]}, =2 {found[1][:16]}: "
        "an order depends on str/bytes hashing (sort, or use a dict)")
    return Check("determinism-across-processes", same, detail)


def check_footprint(name: str) -> Check:
    declare: Callable[..., Any] | None = getattr(protocol_factory(name), "footprint_max", None)
    if declare is None:
        return Check("bounded-footprint", False, "the factory declares no footprint_max, so "
                     "no run can hold a node to a memory bound")
    return Check("bounded-footprint", True, "footprint_max declared; every run below holds "
                 "each correct node to it")


def check_seeds(runner: Runner, seeds: Sequence[int], known: dict[int, Any]) -> Check:
    """The checkers on every seed (``known``: results already run, by seed)."""
    for seed in seeds:
        if seed in known:
            result, reproduce = known[seed], runner.reproduce(seed)
        else:
            result, reproduce = runner.run(seed)
        if result.violations:
            first = result.violations[0]
            return Check("checkers", False, f"seed {seed}: {first['property']}: "
                         f"{first['detail']}", reproduce)
    where = f"seeds {seeds[0]}..{seeds[-1]}" if seeds else "no seeds"
    return Check("checkers", True, f"{where} under {FAULTS_ALL}: every property held")


def check_protocol(name: str, *, seeds: int = SEEDS_DEFAULT, first_seed: int = 1,
                   processes: bool = True) -> ConformanceReport:
    """Every standard check of protocol ``name``; see the module docstring."""
    report = ConformanceReport(name)
    registered = check_registered(name)
    report.checks.append(registered)
    if not registered.passed:
        return report
    report.checks.append(check_purity(name))
    runner = Runner(name)
    with tempfile.TemporaryDirectory(prefix="replicaio-conformance-") as folder:
        checks, first = check_determinism_and_replay(runner, first_seed, folder)
    report.checks += checks
    if processes and checks[0].passed:
        report.checks.append(check_hash_seeds(runner, first_seed, first.log_sha256))
    report.checks.append(check_footprint(name))
    report.checks.append(check_seeds(runner, range(first_seed, first_seed + seeds),
                                     {first_seed: first}))
    return report


def print_report(report: ConformanceReport) -> None:
    verdict = "CONFORMS" if report.passed else "DOES NOT CONFORM"
    print(f"{report.protocol}: {verdict}")
    for check in report.checks:
        mark = "ok  " if check.passed else "FAIL"
        print(f"  {mark} {check.name:30} {check.detail}")
        if check.reproduce:
            print(f"       reproduce: {check.reproduce}")


def command_conformance(args: argparse.Namespace) -> int:
    names = conformant_protocols() if args.all else list(args.protocols)
    if not names:
        raise UsageError("name a protocol (see `replicaio protocols`) or give --all")
    reports = []
    for name in names:
        report = check_protocol(name, seeds=args.seeds, first_seed=args.first_seed,
                                processes=not args.in_process)
        reports.append(report)
        if not args.json:
            print_report(report)
    if args.json:
        print(json.dumps({"protocols": [report.as_dict() for report in reports],
                          "passed": all(report.passed for report in reports)}, sort_keys=True))
    return 0 if all(report.passed for report in reports) else 1


def add_conformance_command(commands: Any) -> None:
    """``replicaio conformance``: see the module docstring."""
    from replicaio.cli_common import positive_int, seed_or_random

    parser = commands.add_parser(
        "conformance", help="run the standard checks on protocols (determinism, replay, "
        "purity, bounded footprint, the checkers under faults)")
    parser.add_argument("protocols", nargs="*", metavar="PROTOCOL",
                        help="protocol names (see `replicaio protocols`)")
    parser.add_argument("--all", action="store_true",
                        help="every registered protocol except the broken variants")
    parser.add_argument("--seeds", type=positive_int, default=SEEDS_DEFAULT,
                        help="seeds the checkers run under every fault")
    parser.add_argument("--first-seed", type=seed_or_random, default=1, metavar="N|random",
                        help="the first seed ('random' draws one)")
    parser.add_argument("--in-process", action="store_true",
                        help="skip the two fresh processes of the PYTHONHASHSEED check")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.set_defaults(handler=command_conformance)
