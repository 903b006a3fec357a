"""The `replicaio` command: exact forms, JSON fields, exit codes, determinism
across separate processes."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from replicaio.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "replicaio.cli", *args],
        capture_output=True, text=True, timeout=300, check=False,
    )


def test_sim_json_has_the_documented_fields(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["sim", "bracha", "--nodes", "4", "--byzantine", "1",
                   "--faults", "crash,partition,loss,dup,reorder", "--seed", "3", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert status == 0
    assert report["protocol"] == "bracha"
    assert report["seed"] == 3
    assert report["violations"] == []
    assert len(report["log_sha256"]) == 64
    assert "replicaio sim bracha --nodes 4 --byzantine 1" in report["reproduce"]


def test_determinism_across_two_processes() -> None:
    args = ("sim", "bracha", "--nodes", "4", "--byzantine", "1",
            "--faults", "crash,partition,loss,dup,reorder", "--seed", "42", "--json")
    first = run_cli(*args)
    second = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    one, two = json.loads(first.stdout), json.loads(second.stdout)
    assert one["log_sha256"] == two["log_sha256"]
    assert one["stats"]["steps"] == two["stats"]["steps"]


def test_violation_exits_1_and_prints_a_reproducing_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(["sim", "echo-weak", "--nodes", "4", "--byzantine", "1",
                   "--behaviour", "equivocate", "--seed", "1"])
    out = capsys.readouterr().out
    assert status == 1
    assert "agreement" in out
    assert "reproduce: replicaio sim echo-weak --nodes 4 --byzantine 1" in out


def test_swarm_reports_failures_with_reproduce_commands(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(["swarm", "echo-weak", "--nodes", "4", "--byzantine", "1",
                   "--seeds", "8", "--jobs", "2", "--no-shrink", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert status == 1
    assert report["seeds"] == 8
    assert report["failed"] >= 1
    assert report["violations"]
    failure = report["failures"][0]
    # the printed command really reproduces the failure
    args = [*failure["reproduce"].split()[1:], "--json"]
    assert main(args) == 1
    again = json.loads(capsys.readouterr().out)
    assert again["violations"] == failure["violations"]


def test_swarm_passes_for_a_correct_protocol(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["swarm", "bracha", "--nodes", "4", "--byzantine", "1",
                   "--seeds", "20", "--jobs", "2", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert status == 0
    assert report["failed"] == 0
    assert report["violations"] == []


def test_replay_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "run.log"
    assert main(["sim", "bracha", "--nodes", "4", "--byzantine", "1", "--faults",
                 "crash,loss", "--seed", "5", "--log", str(log), "--json"]) == 0
    capsys.readouterr()
    assert main(["replay", str(log), "--node", "0", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["matched"] is True
    assert report["steps"] > 0


@pytest.mark.parametrize("argv", [
    ["sim", "nosuch", "--nodes", "4", "--seed", "1"],
    ["sim", "bracha", "--nodes", "3", "--byzantine", "1", "--seed", "1"],
    ["sim", "bracha", "--nodes", "4", "--faults", "fire", "--seed", "1"],
    ["sim", "beb", "--nodes", "4", "--byzantine", "1", "--seed", "1"],
    ["replay", "/nonexistent/run.log", "--node", "0"],
])
def test_usage_errors_exit_2_with_a_message(
    argv: list[str], capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"replicaio {argv[0]}: error:" in err  # the subcommand's usage and the reason
    assert f"usage: replicaio {argv[0]}" in err and "Traceback" not in err


@pytest.mark.parametrize(("argv", "reason"), [
    (["sim", "beb", "--nodes", "0", "--seed", "1"], "--nodes: must be >= 1"),
    (["swarm", "beb", "--nodes", "3", "--seeds", "0"], "--seeds: must be >= 1"),
    (["sim", "beb", "--nodes", "3", "--seed", "1", "--history", "/nonexistent/h.jsonl"],
     "no such directory"),
    (["sim", "beb", "--nodes", "3", "--seed", "1", "--log", "/proc/x.log"], "cannot write"),
    (["sim", "beb", "--nodes", "3", "--seed", "1", "--log", "/"], "is a directory"),
])
def test_usage_errors_show_the_subcommand_usage_never_a_traceback(
    argv: list[str], reason: str, capsys: pytest.CaptureFixture[str],
) -> None:
    with contextlib.suppress(SystemExit):  # argparse's own errors exit 2 themselves
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert reason in err and f"usage: replicaio {argv[0]}" in err and "Traceback" not in err


def test_printing_commands_take_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["protocols", "--json"]) == 0
    assert "raft" in json.loads(capsys.readouterr().out)["protocols"]
    history = tmp_path / "h.jsonl"
    assert main(["sim", "raft", "--nodes", "3", "--seed", "2", "--ops", "30",
                 "--history", str(history)]) == 0
    capsys.readouterr()
    assert main(["check-history", str(history), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["linearizable"] is True


def test_a_closed_pipe_ends_quietly() -> None:
    reader = subprocess.Popen(  # a reader that goes away at once
        [sys.executable, "-m", "replicaio.cli", "protocols"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert reader.stdout is not None
    reader.stdout.close()
    _, err = reader.communicate(timeout=60)
    assert reader.returncode in (0, 141) and b"Traceback" not in err


def test_swarm_first_seed_random_prints_its_range(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["swarm", "beb", "--nodes", "3", "--seeds", "2", "--first-seed", "random",
                 "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    start, end = map(int, out.split("seeds ")[1].split()[0].split(".."))
    assert end == start + 1


def test_help_states_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["swarm", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # (however the lines wrap)
    assert "(default: 1)" in out and "(default: replicaio-failures)" in out


def test_replay_rejects_a_file_that_is_not_a_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    bogus = tmp_path / "bogus.log"
    bogus.write_bytes(b"\x00garbage")
    assert main(["replay", str(bogus), "--node", "0"]) == 2


def test_swarm_shrinks_the_first_failure_and_the_file_replays_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(["swarm", "echo-weak", "--nodes", "4", "--byzantine", "1", "--faults",
                   "crash,partition,loss,dup,reorder", "--seeds", "6", "--jobs", "1",
                   "--shrink-dir", str(tmp_path), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert status == 1
    shrunk = report["failures"][0]["shrunk"]
    assert Path(shrunk["file"]).exists()
    args = [*shrunk["reproduce"].split()[1:], "--json"]
    assert main(args) == 1
    again = json.loads(capsys.readouterr().out)
    assert again["violations"][0]["property"] == shrunk["property"]


def test_version_names_the_installed_distribution() -> None:
    from importlib.metadata import version

    done = run_cli("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"replicaio {version('replicaio')}"


def test_the_package_is_marked_typed_and_licensed() -> None:
    from importlib.metadata import metadata

    import replicaio

    assert (Path(replicaio.__file__).parent / "py.typed").is_file()
    assert metadata("replicaio")["License-Expression"] == "Apache-2.0"


def test_the_guided_demo_runs_to_the_end(capsys: pytest.CaptureFixture[str]) -> None:
    """``./run demo`` is the README's first command: it must keep working as
    options are added (it once built its arguments by hand and broke)."""
    from replicaio.cli import main as cli_main

    assert cli_main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "the checker caught the broken variant" in out
    assert "DIVERGED" not in out
    assert "byzantine=[0] ['pbft_invalid_batch']" in out  # the primary of view 0
    assert re.search(r"pbft view max +[1-9]", out)  # ... was replaced
    assert "linearizable: every key linearizable" in out


def test_disk_faults_the_fault_model_leaves_no_room_for_are_said_to_be_inert(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A swarm asked for disk faults where the bound gives no node a faulty disk
    (MinBFT n=3 with its one Byzantine replica) used to pass silently, as if it
    had survived storage faults: it says so on stderr, and the run shows 0."""
    from replicaio.cli import main as cli_main

    base = ["--nodes", "3", "--faults", "crash,disk", "--seed", "1"]
    assert cli_main(["sim", "minbft", *base, "--byzantine", "1"]) == 0
    captured = capsys.readouterr()
    assert "warning: --faults disk: minbft with 3 nodes and 1 Byzantine" in captured.err
    assert re.search(r"disk faults +0 ", captured.out)
    assert cli_main(["sim", "minbft", *base]) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err
    assert re.search(r"disk faults +[1-9]", captured.out)


def test_swarm_help_names_every_fault_kind(capsys: pytest.CaptureFixture[str]) -> None:
    """The ``--faults`` help is built from the kinds the options accept, so a new
    kind is never missing from it (``slow`` once was)."""
    from replicaio.sim.options import FAULT_KINDS

    with pytest.raises(SystemExit):
        main(["swarm", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ",".join(FAULT_KINDS).replace(" ", "") in text.replace(" ", "")
