"""Scripted scenarios: real node cores on a hand-driven network, checked by trace.

The scripted sibling of the random simulator (``replicaio.sim.simulator``),
after etcd raft's datadriven testdata. A scenario file is a list of commands,
one per line; under each command, after a ``----`` line, the output it is
expected to print, ended by a blank line (or fenced by ``----``/``----``
pairs when the output itself holds blank lines)::

    # one correct broadcast
    cluster protocol=bracha n=4 f=1
    ----
    ...

    broadcast 0 v
    ----
    0: broadcast "v"
      0: persist 3 keys
      ...

The runner hosts every node's :class:`~replicaio.core.node.Node` exactly as a
live host would (persist and sync, then sends, timers, outputs), with a
:class:`~replicaio.storage.memory.MemoryStorage` per node; every message
crosses the network as bytes of the real codec. Nothing moves unless a
command says so: there is no clock (``tick`` fires every armed timer at
once) and no randomness (choice points take the first alternative unless
``choose=seeded``; Byzantine nodes draw from the ``seed`` of the cluster).
The command reference and the trace format are in ``docs/scenarios.md``.

Use: :func:`run_file` (compares and returns a :class:`FileResult`), or
``python -m replicaio.testing.scenario [--rewrite] FILE...``. Modules:
``script`` (the file format), ``trace`` (printing), ``cluster`` (the
hand-driven cluster), ``commands`` (the built-in commands). A protocol
outside the built-in registry plugs in through :class:`ProtocolKit`; extra
commands through the ``commands`` mapping of :class:`Scenario`.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from replicaio.testing.scenario.cluster import (
    Checker,
    CommandHandler,
    InFlight,
    ProtocolKit,
    Scenario,
    ScenarioNode,
    broadcast_kit,
    builtin_kits,
)
from replicaio.testing.scenario.commands import command
from replicaio.testing.scenario.script import (
    SEPARATOR,
    Command,
    Directive,
    ScenarioError,
    ScenarioFile,
    no_more,
    parse_scenario,
    render_scenario,
    take_quiet,
)
from replicaio.testing.scenario.trace import (
    format_message,
    format_output,
    format_value,
    format_violation,
)

__all__ = [
    "SEPARATOR",
    "Checker",
    "Command",
    "CommandHandler",
    "Directive",
    "FileResult",
    "InFlight",
    "ProtocolKit",
    "Scenario",
    "ScenarioError",
    "ScenarioFile",
    "ScenarioNode",
    "broadcast_kit",
    "builtin_kits",
    "command",
    "format_message",
    "format_output",
    "format_value",
    "format_violation",
    "main",
    "no_more",
    "parse_scenario",
    "render_scenario",
    "run_file",
    "take_quiet",
]


# -- files ---------------------------------------------------------------------------------


@dataclass(slots=True)
class FileResult:
    """The outcome of running one file: its text as written and as it should be."""

    path: Path
    expected_text: str
    actual_text: str
    mismatches: list[int]  # lines of the commands whose output differs

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def diff(self) -> str:
        """A unified diff from the file as written to the file as run."""
        return "".join(
            difflib.unified_diff(
                self.expected_text.splitlines(keepends=True),
                self.actual_text.splitlines(keepends=True),
                f"{self.path} (expected)",
                f"{self.path} (actual)",
            )
        )

    def rewrite(self) -> bool:
        """Write the actual outputs into the file; return whether it changed."""
        if self.actual_text == self.expected_text:
            return False
        self.path.write_text(self.actual_text)
        return True


def run_file(
    path: str | Path,
    *,
    kits: Mapping[str, ProtocolKit] | None = None,
    commands: Mapping[str, CommandHandler] | None = None,
    echo: Callable[[str], None] | None = None,
) -> FileResult:
    """Run every command of the file at ``path``; compare with the expected blocks.
    ``echo`` (if given) sees each command and its output as they run, so the
    trace leading to a :class:`ScenarioError` can be shown."""
    path = Path(path)
    text = path.read_text()
    scenario_file = parse_scenario(text, str(path))
    scenario = Scenario(kits, commands)
    outputs: list[str | None] = []
    mismatches: list[int] = []
    for directive in scenario_file.directives:
        try:
            output = scenario.execute(directive.text)
        except ScenarioError as error:
            raise error.locate(str(path), directive.line) from None
        except Exception as error:
            error.add_note(f"{path}:{directive.line}: while running {directive.text!r}")
            raise
        outputs.append(output)
        if echo is not None:
            echo(f"{directive.text}\n{SEPARATOR}\n{output}\n")
        if output != directive.expected:
            mismatches.append(directive.line)
    return FileResult(path, text, render_scenario(scenario_file, outputs), mismatches)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m replicaio.testing.scenario [--rewrite] FILE...``"""
    parser = argparse.ArgumentParser(prog="python -m replicaio.testing.scenario")
    parser.add_argument("--rewrite", action="store_true", help="write actual outputs into FILEs")
    parser.add_argument("--show", action="store_true", help="print every command's output")
    parser.add_argument("files", nargs="+", metavar="FILE")
    arguments = parser.parse_args(argv)
    status = 0
    for name in arguments.files:
        try:
            result = run_file(name, echo=print if arguments.show else None)
        except ScenarioError as error:
            print(f"error: {error}", file=sys.stderr)
            status = 2
            continue
        if arguments.rewrite:
            print(("rewrote " if result.rewrite() else "unchanged ") + name)
        elif result.ok:
            print(f"ok {name}")
        else:
            sys.stdout.write(result.diff())
            status = max(status, 1)
    return status

