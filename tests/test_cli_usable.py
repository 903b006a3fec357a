"""Issue 8, section 5: every command that prints a result takes --json, and every
subcommand takes --log-level (as well as `replicaio --log-level`)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from replicaio.cli import build_parser
from replicaio.cli_common import subparsers

# Commands whose output is not a result: a tour, and a command whose only output is
# already one JSON object per value (broadcast) or file paths and instructions (certs).
NO_JSON = {"replicaio demo", "replicaio broadcast", "replicaio certs init",
           "replicaio node", "replicaio kv node", "replicaio kv gateway"}


def leaves() -> list[argparse.ArgumentParser]:
    return [parser for parser in subparsers(build_parser())
            if not any(isinstance(action, argparse._SubParsersAction)
                       for action in parser._actions)]


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def test_every_result_printing_command_takes_json_and_every_command_log_level() -> None:
    found = leaves()
    assert len(found) > 20
    for parser in found:
        assert "--log-level" in options(parser), parser.prog
        if parser.prog not in NO_JSON:
            assert "--json" in options(parser), parser.prog


def test_log_level_after_the_subcommand_configures_the_command_logs() -> None:
    done = subprocess.run([sys.executable, "-m", "replicaio.cli", "protocols", "--json",
                           "--log-level", "debug"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "bracha" in json.loads(done.stdout)["protocols"]
    bad = subprocess.run([sys.executable, "-m", "replicaio.cli", "protocols", "--log-level",
                          "loud"], capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2 and "invalid choice: 'loud'" in bad.stderr


def test_check_transactions_json(tmp_path: Path) -> None:
    history = tmp_path / "txn.jsonl"
    run = subprocess.run([sys.executable, "-m", "replicaio.cli", "sim", "txn", "--groups", "2",
                          "--nodes", "3", "--seed", "2", "--history", str(history)],
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    done = subprocess.run([sys.executable, "-m", "replicaio.cli", "check-transactions",
                           str(history), "--json"], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["valid"] is True and report["anomalies"] == []
    assert report["transactions"] >= report["committed"] > 0
    assert report["workload"] == "list-append"
