"""Would the swarms find a bug planted anywhere in a protocol? A mutation sweep.

The hand-made variants (``replicaio/testing/variants``) each plant one bug
someone thought of. This sweep plants the bugs nobody thought of: it parses a
module, lists every place one small edit changes its meaning (a comparison
made strict or loose, ``== <-> !=``, ``+ 1`` made ``+ 0``, ``and <-> or``, a
``not`` dropped, a call statement dropped: a missing persist, send or wake-up,
a returned ``True``/``False`` flipped), and for each chosen site runs the
simulator's swarms on a scratch copy of the package with that one edit, the
interpreted build (``REPLICAIO_COMPILED=0``). A mutant is *caught* when some
plan's swarm reports a violation (or the run fails outright), and *survives*
when every plan passes.

A survivor is a lead, not a verdict: some edits change nothing that matters
(an equivalent mutant: ``>=`` where equality never happens, a dropped call
whose work is redone later), and some guard a caller's misuse the simulator
never makes. The rest are the gaps: a bug the swarms would not find. Triage
each by reading it; a real gap becomes a variant (``replicaio/testing/
variants``), a check or a workload change, pinned by a test.

Not mutated: ``assert`` statements (the checks themselves), calls that only
count, log or observe (``count``, ``observe``, ``note``, ...), and functions
that only describe or audit (``describe*``, ``audit*``, ``__repr__``).

Run (the default plans are Raft's; a plan is a ``replicaio swarm`` argument
string, run in order until one catches the mutant)::

    .venv/bin/python bench/mutants_swarm.py \\
        --module replicaio/protocols/raft/replication.py --mutants 40 --seed 1
    .venv/bin/python bench/mutants_swarm.py --module replicaio/smr/replica.py --list
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_PLANS = (
    "raft --nodes 3 --faults crash,partition,loss,dup,reorder,sync --seeds 150",
    "raft --nodes 3 --profile long --faults crash,partition,loss,sync --seeds 40",
    "raft --nodes 3 --faults partition,slow,sync --seeds 80",
    "raft --nodes 5 --faults crash,partition,loss,degraded --seeds 60",
    "raft --nodes 3 --faults crash,disk,partition,sync --seeds 80",
    # Followers acknowledging one entry at a time (a quorum's matches above a commit
    # index the term rule holds back) and snapshots in pieces of 64 bytes (the
    # simulated stores' snapshots, a few hundred bytes, are otherwise one record):
    # code paths the other plans never reach (check40).
    "raft:entries=1,piece=64 --nodes 3 --faults crash,partition,loss,dup,reorder,sync "
    "--seeds 100",
)

SWAPPED_COMPARISONS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In,
    ast.Is: ast.IsNot, ast.IsNot: ast.Is,
}
QUIET_CALLS = frozenset({
    "count", "observe", "note", "debug", "info", "warning", "error", "exception", "log",
    "trace", "inc", "set_gauge", "record",
})
QUIET_FUNCTION_PREFIXES = ("describe", "audit", "__repr__", "__str__", "_describe")


@dataclass(frozen=True, slots=True)
class Site:
    """One place one edit changes: its index in the module's walk, and what."""

    index: int
    line: int
    kind: str  # comparison, off-by-one, boolean, negation, call-dropped, return-flipped
    change: str
    source: str  # the original line, stripped


@dataclass(slots=True)
class Outcome:
    module: str
    site: Site
    verdict: str  # caught, survived, error
    plan: str  # the plan that caught it (or the last run)
    properties: list[str]
    seconds: float


def quiet_call(call: ast.Call) -> bool:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else (
        func.id if isinstance(func, ast.Name) else "")
    if name == "reject" and len(call.args) == 1 and isinstance(call.args[0], ast.Constant) and (
        isinstance(call.args[0].value, str)
    ):
        return True  # the BFT protocols' ``reject("reason")``: a counter (protocols/bft.py)
    return name in QUIET_CALLS or name.startswith("audit")


class Mutator(ast.NodeTransformer):
    """Walks a module in a fixed order; lists its sites, or applies the one at ``target``."""

    def __init__(self, target: int | None) -> None:
        self.target = target
        self.sites: list[tuple[int, str, str]] = []  # (line, kind, change)
        self.quiet = 0  # inside an assert or a describing/auditing function

    def site(self, node: ast.AST, kind: str, change: str) -> bool:
        """Record a site; whether it is the one to apply."""
        if self.quiet:
            return False
        index = len(self.sites)
        self.sites.append((getattr(node, "lineno", 0), kind, change))
        return index == self.target

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        quiet = node.name.startswith(QUIET_FUNCTION_PREFIXES)
        self.quiet += quiet
        self.generic_visit(node)
        self.quiet -= quiet
        return node

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        return node  # the checks themselves are not mutated

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        swapped = SWAPPED_COMPARISONS.get(type(node.ops[0]))
        if swapped is not None and self.site(
            node, "comparison", f"{type(node.ops[0]).__name__} -> {swapped.__name__}"
        ):
            node.ops = [swapped(), *node.ops[1:]]
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.Add | ast.Sub):
            for side in ("left", "right"):
                operand = getattr(node, side)
                if (isinstance(operand, ast.Constant) and operand.value == 1
                        and type(operand.value) is int
                        and self.site(node, "off-by-one", f"{side} 1 -> 0")):
                    setattr(node, side, ast.Constant(0))
        return node

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST:
        self.generic_visit(node)
        if (isinstance(node.op, ast.Add | ast.Sub) and isinstance(node.value, ast.Constant)
                and node.value.value == 1 and type(node.value.value) is int
                and self.site(node, "off-by-one", "augmented 1 -> 0")):
            node.value = ast.Constant(0)
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        self.generic_visit(node)
        other = ast.Or if isinstance(node.op, ast.And) else ast.And
        if self.site(node, "boolean", f"{type(node.op).__name__} -> {other.__name__}"):
            node.op = other()
        return node

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.Not) and self.site(node, "negation", "not dropped"):
            return node.operand
        return node

    def visit_Expr(self, node: ast.Expr) -> ast.AST:
        self.generic_visit(node)
        value = node.value
        if isinstance(value, ast.Await):
            value = value.value
        if (isinstance(value, ast.Call) and not quiet_call(value)
                and self.site(node, "call-dropped", ast.unparse(value)[:60])):
            return ast.copy_location(ast.Pass(), node)
        return node

    def visit_Return(self, node: ast.Return) -> ast.AST:
        self.generic_visit(node)
        value = node.value
        if (isinstance(value, ast.Constant) and type(value.value) is bool
                and self.site(node, "return-flipped", f"{value.value} -> {not value.value}")):
            node.value = ast.Constant(not value.value)
        return node


def sites_of(source: str) -> list[Site]:
    mutator = Mutator(None)
    mutator.visit(ast.parse(source))
    lines = source.splitlines()
    return [Site(index, line, kind, change, lines[line - 1].strip() if line else "")
            for index, (line, kind, change) in enumerate(mutator.sites)]


def mutant_source(source: str, index: int) -> str:
    tree = ast.parse(source)
    mutator = Mutator(index)
    tree = ast.fix_missing_locations(mutator.visit(tree))
    assert len(mutator.sites) > index, (index, len(mutator.sites))
    return ast.unparse(tree)


def run_plan(work: Path, plan: str, timeout_s: float) -> tuple[str, list[str]]:
    """One swarm on the scratch package: ``passed``, ``caught`` or ``error``, and
    the properties it reported."""
    command = [sys.executable, "-m", "replicaio.cli", "swarm", *shlex.split(plan),
               "--jobs", "1", "--json", "--no-shrink"]
    environment = {**os.environ, "REPLICAIO_COMPILED": "0", "PYTHONPATH": str(work)}
    # Its own process group: on a timeout the swarm's worker processes go too
    # (killing the swarm alone once left a hung worker running for half an hour).
    process = subprocess.Popen(command, cwd=work, env=environment, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return "caught", ["timeout"]  # a mutant that hangs the simulator is found
    try:
        report = json.loads(stdout)
    except json.JSONDecodeError:
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        return "error", [tail[:160]]
    properties = sorted({violation["property"] for violation in report.get("violations", [])})
    if report.get("failed", 0) or properties:
        return "caught", properties or ["failed"]
    return "passed", []


def clear_bytecode(path: Path) -> None:
    cache = path.parent / "__pycache__"
    if cache.is_dir():
        for compiled in cache.glob(f"{path.stem}.*.pyc"):
            compiled.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--module", action="append", required=True,
                        help="a module to mutate, as a path from the repository root "
                        "(repeat for several)")
    parser.add_argument("--mutants", type=int, default=30,
                        help="sites drawn from all of the modules' (0: every site)")
    parser.add_argument("--seed", type=int, default=1, help="draws the sites")
    parser.add_argument("--plan", action="append", default=None,
                        help="a `replicaio swarm` argument string (repeat; run in order "
                        "until one catches the mutant; default: Raft's four plans)")
    parser.add_argument("--site", action="append", default=[], metavar="MODULE:INDEX",
                        help="run these sites only (as --list numbers them; repeat)")
    parser.add_argument("--kinds", default="",
                        help="only these site kinds, comma-separated (comparison, "
                        "off-by-one, boolean, negation, call-dropped, return-flipped)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds one plan may take on one mutant (beyond: caught)")
    parser.add_argument("--tree", type=Path, default=ROOT,
                        help="the checkout whose package is mutated (default: this one)")
    parser.add_argument("--list", action="store_true", help="list the sites and stop")
    parser.add_argument("--json", action="store_true", help="print JSON lines only")
    options = parser.parse_args()
    plans = tuple(options.plan or DEFAULT_PLANS)
    kinds = {kind for kind in options.kinds.split(",") if kind}

    everything: list[tuple[str, Site]] = []
    root: Path = options.tree.resolve()
    for module in options.module:
        path = root / module
        if not path.is_file() or path.suffix != ".py" or "replicaio" not in path.parts:
            parser.error(f"{module}: not a module of the replicaio package")
        for site in sites_of(path.read_text()):
            if not kinds or site.kind in kinds:
                everything.append((module, site))
    if options.list:
        for module, site in everything:
            print(f"{module}:{site.line} #{site.index} {site.kind} {site.change}: {site.source}")
        print(f"{len(everything)} sites")
        return 0
    chosen = everything
    if options.site:
        wanted = set()
        for text in options.site:
            module, _, index = text.rpartition(":")
            if module not in options.module or not index.isdigit():
                parser.error(f"--site {text}: MODULE:INDEX with MODULE one of --module")
            wanted.add((module, int(index)))
        chosen = [(module, site) for module, site in everything
                  if (module, site.index) in wanted]
    elif options.mutants and options.mutants < len(everything):
        chosen = sorted(random.Random(options.seed).sample(everything, options.mutants),
                        key=lambda pair: (pair[0], pair[1].index))

    with tempfile.TemporaryDirectory(prefix="replicaio-mutants-") as folder:
        work = Path(folder)
        shutil.copytree(root / "replicaio", work / "replicaio",
                        ignore=shutil.ignore_patterns("_compiled", "__pycache__", "*.so"))
        say = (lambda text: None) if options.json else print
        say(f"{len(chosen)} mutants of {len(everything)} sites in "
            f"{', '.join(options.module)}; plans, in order until one catches:")
        for plan in plans:
            say(f"  swarm {plan}")
        for plan in plans:  # the protocol as it is must pass every plan
            verdict, properties = run_plan(work, plan, options.timeout)
            if verdict != "passed":
                print(f"the unmutated package fails `swarm {plan}`: {verdict} {properties}")
                return 2
        outcomes: list[Outcome] = []
        for module, site in chosen:
            target = work / module
            original = target.read_text()
            target.write_text(mutant_source(original, site.index))
            clear_bytecode(target)
            started = time.monotonic()
            verdict, properties, used = "survived", [], plans[-1]
            try:
                for plan in plans:
                    result, found = run_plan(work, plan, options.timeout)
                    if result != "passed":
                        verdict, properties, used = result, found, plan
                        break
            finally:
                target.write_text(original)
                clear_bytecode(target)
            outcome = Outcome(module, site, verdict, used, properties,
                              round(time.monotonic() - started, 1))
            outcomes.append(outcome)
            if options.json:
                print(json.dumps(asdict(outcome)), flush=True)
            else:
                shown = ", ".join(properties) if verdict != "survived" else ""
                print(f"{verdict:8} {Path(module).name}:{site.line} {site.kind} "
                      f"[{site.change}] {site.source[:70]}  {shown} ({outcome.seconds} s)",
                      flush=True)
        caught = sum(outcome.verdict == "caught" for outcome in outcomes)
        errors = sum(outcome.verdict == "error" for outcome in outcomes)
        say(f"caught {caught} of {len(outcomes)}; survived "
            f"{len(outcomes) - caught - errors}; errors {errors}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
