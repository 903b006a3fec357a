"""Scenario files (``scenarios/*.txt``) and the scenario runner itself.

Every file runs and must print exactly its expected blocks; on a mismatch the
test shows a unified diff. After a deliberate change, regenerate and review:

    REPLICAIO_REWRITE=1 .venv/bin/pytest tests/test_scenarios.py
    git diff scenarios/
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from replicaio.testing.scenario import (
    InFlight,
    Scenario,
    ScenarioError,
    main,
    parse_scenario,
    render_scenario,
    run_file,
)

SCENARIOS = sorted((Path(__file__).parent.parent / "scenarios").glob("*.txt"))
REWRITE = os.environ.get("REPLICAIO_REWRITE", "") not in ("", "0")


@pytest.mark.parametrize("path", SCENARIOS, ids=[path.name for path in SCENARIOS])
def test_scenario_file(path: Path) -> None:
    result = run_file(path)
    if REWRITE:
        result.rewrite()
        return
    if not result.ok:
        pytest.fail(f"{path}: output differs\n{result.diff()}", pytrace=False)


def test_one_scenario_per_fault_kind_exists() -> None:
    names = {path.stem for path in SCENARIOS}
    expected = {
        "bracha_happy",
        "bracha_loss",
        "bracha_duplicate",
        "bracha_reorder",
        "bracha_partition",
        "bracha_crash_restart",
        "bracha_byzantine_equivocation",
        "echo_equivocation",
        "beb_crash",
        "broken_echo_caught",
    }
    assert expected <= names, sorted(expected - names)


def test_all_scenarios_run_fast() -> None:
    started = time.perf_counter()
    for path in SCENARIOS:
        run_file(path)
    assert time.perf_counter() - started < 10


# -- the file format ---------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "case.txt"
    path.write_text(text)
    return path


CLUSTER = "cluster protocol=beb n=2\n"


def test_rewrite_fills_missing_blocks_and_is_stable(tmp_path: Path) -> None:
    path = write(tmp_path, f"# a comment\n{CLUSTER}\nbroadcast 0 x  # trailing comment\n")
    first = run_file(path)
    assert not first.ok
    assert first.rewrite()
    second = run_file(path)
    assert second.ok, second.diff()
    assert not second.rewrite()
    text = path.read_text()
    assert text.startswith("# a comment\ncluster protocol=beb n=2\n----\ncluster beb: n=2 f=0\n")
    assert 'broadcast 0 x  # trailing comment\n----\n0: broadcast "x"\n' in text


def test_mismatch_shows_a_unified_diff(tmp_path: Path) -> None:
    path = write(tmp_path, f"{CLUSTER}----\nsomething else\n")
    result = run_file(path)
    assert result.mismatches == [1]
    diff = result.diff()
    assert "-something else" in diff
    assert "+cluster beb: n=2 f=0" in diff


def test_fenced_blocks_round_trip() -> None:
    text = "cmd a\n----\n----\nline\n\nafter blank\n----\n----\n\ncmd b\n----\nok\n"
    parsed = parse_scenario(text)
    assert [directive.expected for directive in parsed.directives] == [
        "line\n\nafter blank",
        "ok",
    ]
    outputs = [directive.expected for directive in parsed.directives]
    assert render_scenario(parsed, outputs) == text


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (f"{CLUSTER}\nfrobnicate 1\n", 3, "unknown command 'frobnicate'"),
        ("deliver\n", 1, "no cluster yet"),
        (f"{CLUSTER}\ndeliver 0->7\n", 3, "no node 7"),
        (f"{CLUSTER}\ndrop 0-1\n", 3, "expected a link FROM->TO"),
        (f"{CLUSTER}\nreorder 0->1\n", 3, "reorder: 1 message in flight on 0->1, needs 2"),
        (f"{CLUSTER}\ncrash 0\n\ncrash 0\n", 5, "node 0 is down"),
        (f"{CLUSTER}\nrestart 0\n", 3, "node 0 is up"),
        ("cluster protocol=bracha n=3 f=1\n", 1, "needs n >= 4"),
        ("cluster protocol=paxos n=3\n", 1, "protocol= must be one of"),
        ("cluster protocol=bracha n=4 byzantine=3\n", 1, "ID:BEHAVIOUR"),
        (f"{CLUSTER}\nbroadcast 0 'unclosed\n", 3, "cannot split the command"),
        ("  indented\n", 1, "commands start at column 1"),
        (f"{CLUSTER}----\n----\nnever closed\n", 2, "fenced output block never closed"),
    ],
)
def test_errors_carry_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError) as caught:
        run_file(path)
    assert caught.value.path == str(path)
    assert caught.value.line == line
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"{path}:{line}: ")


def test_stabilize_reports_its_step_budget(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # Node 1 keeps losing everything node 0 retransmits: never settles.
    scenario = Scenario()
    scenario.execute("cluster protocol=beb n=2")
    scenario.execute("partition 0 | 1")
    scenario.execute("broadcast 0 x")
    scenario.execute("deliver all")
    scenario.groups = [frozenset({0}), frozenset({1})]  # stabilize heals; cut again
    original = scenario.deliver

    def deliver_but_lose_to_1(message: InFlight) -> None:
        if message.destination == 1:
            scenario.pending.remove(message)
            return
        original(message)

    monkeypatch.setattr(scenario, "deliver", deliver_but_lose_to_1)
    with pytest.raises(ScenarioError, match=r"not settled after step_max=50 steps: .*awaits acks"):
        scenario.execute("stabilize step_max=50")


def test_deliver_all_reports_its_step_budget() -> None:
    scenario = Scenario()
    scenario.execute("cluster protocol=bracha n=4 step_max=5")
    with pytest.raises(ScenarioError, match=r"deliver all: still .* after step_max=5"):
        scenario.execute("deliver all")


def test_seeded_choices_and_byzantine_runs_are_reproducible() -> None:
    def run() -> list[str]:
        scenario = Scenario()
        outputs = [
            scenario.execute("cluster protocol=bracha n=4 byzantine=3:garbage seed=7 choose=seeded")
        ]
        outputs.append(scenario.execute("broadcast 3 x"))
        outputs.append(scenario.execute("stabilize"))
        outputs.append(scenario.execute("check"))
        return outputs

    first = run()
    assert first == run()
    assert "garbage" in first[1]
    assert first[-1] == "ok"


def test_user_protocol_kit_and_command(tmp_path: Path) -> None:
    from replicaio.protocols.broadcast import PROTOCOLS
    from replicaio.testing.scenario import ProtocolKit, broadcast_kit

    base = broadcast_kit(PROTOCOLS["beb"])
    kit = ProtocolKit(base.factory, None, lambda output: f"got {type(output).__name__}")

    def hello(scenario: Scenario, command: object) -> None:
        scenario.emit(f"hello from a custom command, {len(scenario.nodes)} nodes")

    path = write(tmp_path, "cluster protocol=mine n=2\n\nbroadcast 0 x\n\nhello\n")
    result = run_file(path, kits={"mine": kit}, commands={"hello": hello})
    assert "0: got Accepted" in result.actual_text
    assert "hello from a custom command, 2 nodes" in result.actual_text


def test_command_line_rewrites_and_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, CLUSTER)
    assert main([str(path)]) == 1
    assert main(["--rewrite", str(path)]) == 0
    assert main([str(path)]) == 0
    assert f"ok {path}" in capsys.readouterr().out
    broken = tmp_path / "broken.txt"
    broken.write_text("deliver\n")
    assert main([str(broken)]) == 2
    assert f"{broken}:1: no cluster yet" in capsys.readouterr().err
