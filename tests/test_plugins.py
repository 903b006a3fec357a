"""Protocols from other packages (entry point group ``replicaio.protocols``): what a
plug-in gets, and what a bad one cannot break.

Each plug-in here is a real distribution on ``sys.path``: a module and a
``*.dist-info`` directory with its ``entry_points.txt``, found by
``importlib.metadata`` exactly as an installed package is (docs/tutorial.md
installs one with pip; tests/test_tutorial.py runs that). Every command runs in a
fresh process, since a process loads its plug-ins once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "plugin_protocol"

GOOD = '''
from replicaio.core.config import Resilience
from replicaio.protocols.broadcast import BroadcastSpec
from replicaio.protocols.broadcast.bracha import bracha

def spec():
    return BroadcastSpec("plug-rbc", bracha, Resilience.BYZANTINE, agreement=True,
                         totality=True, summary="bracha, through a plug-in",
                         vouch_link="READY")

def five_f():
    return BroadcastSpec("plug-five", bracha, Resilience.BYZANTINE, agreement=True,
                         totality=True, nodes_min=lambda f: 5 * f + 1)

def takes_bracha():
    return BroadcastSpec("bracha", bracha, Resilience.BYZANTINE, agreement=True,
                         totality=True)

def not_a_spec():
    return "raft"
'''
FAILING = "raise ImportError('plug_failing needs a library that is not installed')\n"
IMPURE = '''
import time
from replicaio.core.config import Resilience
from replicaio.protocols.broadcast import BroadcastSpec
from replicaio.protocols.broadcast.beb import best_effort as beb

async def instance(node, sender, value=None):
    return await beb(node, sender, value)

def spec():
    return BroadcastSpec("plug-impure", instance, Resilience.ANY, agreement=False,
                         totality=False)
'''
# Sends the first element of a set of bytes: an order that changes with the process's
# string hash seed, the trap the conformance kit's cross-process check is for.
SET_ORDER = '''
from replicaio.core.config import Resilience
from replicaio.protocols.broadcast import BroadcastSpec

async def instance(node, sender, value=None):
    (send,) = node.links("SEND")
    if value is not None:
        candidates = {value + bytes([i]) for i in range(8)}
        send.to_all(next(iter(candidates)))
    delivered = await send.from_peer(sender)
    return delivered

def spec():
    return BroadcastSpec("plug-set-order", instance, Resilience.ANY, agreement=False,
                         totality=False)
'''
ENTRY_POINTS = {
    "plug_good": {"plug-rbc": "plug_good:spec", "plug-five": "plug_good:five_f",
                  "bracha": "plug_good:takes_bracha", "plug-notspec": "plug_good:not_a_spec",
                  "plug-misnamed": "plug_good:spec"},
    "plug_failing": {"plug-failing": "plug_failing:spec"},
    "plug_impure": {"plug-impure": "plug_impure:spec"},
    "plug_set_order": {"plug-set-order": "plug_set_order:spec"},
}
SOURCES = {"plug_good": GOOD, "plug_failing": FAILING, "plug_impure": IMPURE,
           "plug_set_order": SET_ORDER}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of installed-looking distributions, one per plug-in module."""
    folder = tmp_path_factory.mktemp("site")
    for module, entries in ENTRY_POINTS.items():
        (folder / f"{module}.py").write_text(SOURCES[module])
        info = folder / f"{module}-0.1.dist-info"  # underscores: a dash ends the name
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
        lines = ["[replicaio.protocols]", *(f"{name} = {value}" for name, value in entries.items())]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return folder


def replicaio(site: Path, *words: str, hash_seed: str | None = None,
              cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(site)}
    if hash_seed is not None:
        environment["PYTHONHASHSEED"] = hash_seed
    return subprocess.run(
        [sys.executable, "-m", "replicaio.cli", *words], capture_output=True, text=True,
        env=environment, timeout=300, check=False, cwd=cwd,
    )


def test_protocols_lists_plug_ins_and_why_a_bad_one_did_not_load(site: Path) -> None:
    done = replicaio(site, "protocols", "--json")
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)["protocols"]
    assert listed["plug-rbc"] == "bracha, through a plug-in"
    assert "NOT LOADED" in listed["plug-failing"]
    assert "needs a library that is not installed" in listed["plug-failing"]
    assert "taken by a built-in" in listed["bracha"]
    assert "not a BroadcastSpec or ServiceSpec" in listed["plug-notspec"]
    assert "names itself 'plug-rbc'" in listed["plug-misnamed"]
    # The built-ins are untouched by the plug-in that claimed a built-in name.
    assert listed["raft"].startswith("Raft")


def test_a_plug_in_that_did_not_load_is_a_usage_error_naming_the_reason(site: Path) -> None:
    done = replicaio(site, "sim", "plug-failing", "--nodes", "4", "--seed", "1")
    assert done.returncode == 2
    assert "did not load" in done.stderr and "not installed" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_built_in_name_stays_the_built_in(site: Path) -> None:
    plain = replicaio(Path("/nonexistent"), "sim", "bracha", "--nodes", "4", "--byzantine",
                      "1", "--seed", "5", "--json")
    plugged = replicaio(site, "sim", "bracha", "--nodes", "4", "--byzantine", "1",
                        "--seed", "5", "--json")
    assert plain.returncode == plugged.returncode == 0, plugged.stderr
    assert json.loads(plain.stdout)["log_sha256"] == json.loads(plugged.stdout)["log_sha256"]


def test_sim_swarm_replay_and_explore_run_a_plug_in(site: Path, tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    sim = replicaio(site, "sim", "plug-rbc", "--nodes", "4", "--byzantine", "1", "--faults",
                    "crash,partition,loss,dup,reorder", "--seed", "4", "--log", str(log),
                    "--json")
    assert sim.returncode == 0, sim.stderr
    report = json.loads(sim.stdout)
    assert report["violations"] == [] and report["stats"]["deliveries"] > 0
    # The printed reproduce line runs the same run (same event log).
    again = replicaio(site, *report["reproduce"].split()[1:], "--json")
    assert json.loads(again.stdout)["log_sha256"] == report["log_sha256"]
    for node in range(4):
        replay = replicaio(site, "replay", str(log), "--node", str(node), "--json")
        assert replay.returncode == 0, replay.stderr
        assert json.loads(replay.stdout)["matched"] is True
    swarm = replicaio(site, "swarm", "plug-rbc", "--nodes", "4", "--byzantine", "1",
                      "--seeds", "6", "--jobs", "2", "--json", cwd=tmp_path)
    assert swarm.returncode == 0, swarm.stderr
    assert json.loads(swarm.stdout)["passed"] == 6
    explore = replicaio(site, "explore", "plug-rbc", "--nodes", "4", "--seed", "1",
                        "--requests", "1", "--runs", "20", "--json")
    assert explore.returncode == 0, explore.stderr


def test_a_stricter_node_bound_is_refused_up_front(site: Path) -> None:
    done = replicaio(site, "sim", "plug-five", "--nodes", "4", "--seed", "1")
    assert done.returncode == 2
    assert "plug-five with f=1 needs n >= 6, got n=4" in done.stderr
    fine = replicaio(site, "sim", "plug-five", "--nodes", "6", "--f", "1", "--seed", "1")
    assert fine.returncode == 0, fine.stderr


def report_of(done: subprocess.CompletedProcess[str]) -> Any:
    """The conformance report a run that found a failure printed. Exit 1 is also
    an uncaught exception's (a traceback, no report): then the failure shows its
    stderr, not a JSON error on empty output."""
    assert done.returncode == 1 and done.stdout.strip(), (done.returncode, done.stderr)
    return json.loads(done.stdout)


def test_conformance_catches_an_impure_plug_in(site: Path) -> None:
    done = replicaio(site, "conformance", "plug-impure", "--seeds", "1", "--in-process",
                     "--json")
    report_all = report_of(done)
    (report,) = report_all["protocols"]
    checks = {check["name"]: check for check in report["checks"]}
    assert checks["purity"]["passed"] is False
    assert "plug_impure.py:2 imports time" in checks["purity"]["detail"]
    assert checks["determinism"]["passed"] is True  # it never calls time: only the import


def test_conformance_catches_an_order_decided_by_string_hashing(site: Path) -> None:
    done = replicaio(site, "conformance", "plug-set-order", "--seeds", "1", "--json",
                     hash_seed="0")
    (report,) = report_of(done)["protocols"]
    checks = {check["name"]: check for check in report["checks"]}
    assert checks["determinism"]["passed"] is True  # one process: the same order twice
    assert checks["determinism-across-processes"]["passed"] is False
    assert "str/bytes hashing" in checks["determinism-across-processes"]["detail"]
