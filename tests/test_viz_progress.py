"""`swarm` and `explore` show a progress bar (rate, failures so far, ETA) on stderr when
it is a terminal, and nothing else changes: run under a real pseudo-terminal, then with
stderr a pipe, and the JSON on stdout compared."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from typing import Any

SWARM = ["swarm", "echo-weak", "--nodes", "4", "--byzantine", "1", "--seeds", "24",
         "--jobs", "2", "--no-shrink", "--json"]
EXPLORE = ["explore", "bracha", "--nodes", "4", "--seed", "1", "--runs", "12", "--json"]
TIMEOUT_S = 240


def run(argv: list[str], *, terminal: bool) -> tuple[dict[str, Any], str]:
    """(the JSON on stdout, what stderr showed) of ``replicaio argv``."""
    environment = {**os.environ, "COLUMNS": "160", "TERM": "xterm"}
    if not terminal:
        done = subprocess.run([sys.executable, "-m", "replicaio.cli", *argv],
                              capture_output=True, text=True, timeout=TIMEOUT_S,
                              env=environment, check=False)
        return json.loads(done.stdout), done.stderr
    master, slave = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "replicaio.cli", *argv],
                               stdout=subprocess.PIPE, stderr=slave, env=environment)
    os.close(slave)
    shown = bytearray()
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal's last writer exited
                break
            if not chunk:
                break
            shown += chunk
        elif process.poll() is not None:
            break
    os.close(master)
    assert process.stdout is not None
    out = process.stdout.read().decode()
    process.wait(TIMEOUT_S)
    return json.loads(out), shown.decode("utf-8", "replace")


def test_swarm_shows_rate_failures_and_eta_on_a_terminal_only() -> None:
    report, shown = run(SWARM, terminal=True)
    assert "seeds/s" in shown and "ETA" in shown and "/24" in shown
    assert "failure" in shown
    assert report["failed"] > 0  # echo-weak is broken: the bar counted failures
    plain, quiet = run(SWARM, terminal=False)
    assert quiet == ""
    report.pop("wall_seconds")
    plain.pop("wall_seconds")
    assert report == plain


def test_explore_shows_its_progress_too() -> None:
    report, shown = run(EXPLORE, terminal=True)
    assert "runs/s" in shown and "bracha explore" in shown
    plain, quiet = run(EXPLORE, terminal=False)
    assert quiet == ""
    assert report == plain


def test_explore_crash_prefixes_shows_its_progress_too() -> None:
    argv = ["explore", "bracha", "--nodes", "4", "--seed", "1", "--crash-prefixes",
            "--states", "300", "--json"]
    report, shown = run(argv, terminal=True)
    assert "states/s" in shown and "bracha crash prefixes" in shown and "/300" in shown
    assert report["states_checked"] > 0
    plain, quiet = run(argv, terminal=False)
    assert quiet == ""
    assert report == plain
