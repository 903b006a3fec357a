"""bench/mutants_swarm.py: its sites are real edits, and its oracle catches a
planted bug the swarm is known to catch while the unmutated package passes."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "mutants_swarm.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutants_swarm", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutants_swarm"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


SOURCE = '''
def f(a, b, log):
    assert a < 10
    if a >= b and not log:
        log.append(a + 1)
        return True
    log.count("x")
    log.reject("bad_signature")
    return False


def describe(a):
    return a == 1
'''


def test_every_site_is_one_edit_and_checks_and_counters_are_left_alone() -> None:
    bench = load()
    sites = bench.sites_of(SOURCE)
    kinds = [site.kind for site in sites]
    assert kinds == ["comparison", "negation", "boolean", "off-by-one", "call-dropped",
                     "return-flipped", "return-flipped"], kinds
    original = ast.dump(ast.parse(SOURCE))
    mutants = {bench.mutant_source(SOURCE, site.index) for site in sites}
    assert len(mutants) == len(sites)  # each a different program
    for mutant in mutants:
        assert ast.dump(ast.parse(mutant)) != original
        assert "assert a < 10" in mutant and "def describe(a):\n    return a == 1" in mutant
    assert "if a > b and (not log):" in bench.mutant_source(SOURCE, 0)
    # a BFT protocol's reject("reason") only counts; a reject with more to it does not
    assert not any("reject" in site.source for site in sites)
    assert [site.kind for site in bench.sites_of("def g(r):\n    r.reject(1, 2)\n")] == [
        "call-dropped"]


def test_a_dropped_append_is_caught_and_the_report_says_by_what() -> None:
    """Raft's follower dropping the entries it should append (a site the swarm
    catches at once) is reported caught, after the unmutated package passed."""
    bench = load()
    module = "replicaio/protocols/raft/replication.py"
    (site,) = [site for site in bench.sites_of((ROOT / module).read_text())
               if site.kind == "call-dropped" and site.change.startswith("log.append(")]
    done = subprocess.run(
        [sys.executable, str(BENCH), "--module", module, "--site", f"{module}:{site.index}",
         "--plan", "raft --nodes 3 --faults crash,loss --seeds 6", "--json"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (line,) = done.stdout.strip().splitlines()
    outcome = json.loads(line)
    assert outcome["verdict"] == "caught" and outcome["properties"], outcome
    assert outcome["site"]["index"] == site.index
