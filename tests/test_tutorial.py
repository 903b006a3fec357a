"""docs/tutorial.md, followed to the letter: its files are the example plug-in package
(examples/plugin_protocol/), and every command it shows is run, in order, in a fresh
directory holding the files the tutorial wrote, with the package installed by pip
through the real entry point machinery (``importlib.metadata``).

Three things differ from a reader's shell, and only these: ``pip install .`` installs
into a temporary ``--target`` directory put on ``PYTHONPATH`` (``--no-deps``: the
suite's own replicaio is the one under test), the live cluster's base port is a free
one instead of 7400, and ``replicaio`` is this checkout's. A command marked
``# exits N`` must exit N, every other one 0; each output line the tutorial shows
under a command must appear in its output (whitespace collapsed).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from replicaio.runtime.local import free_port_block

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "docs" / "tutorial.md"
EXAMPLE = ROOT / "examples" / "plugin_protocol"
TUTORIAL_BASE_PORT = "7400"
FILE_BLOCK = re.compile(r"<!-- file: (?P<path>[^ ]+) -->\n```[a-z]*\n(?P<body>.*?)```", re.S)
CONSOLE_BLOCK = re.compile(r"```console\n(?P<body>.*?)```", re.S)
EXITS = re.compile(r"\s+# exits (\d+)$")


@dataclass
class Command:
    line: str
    status: int = 0
    expected: list[str] = field(default_factory=list)


def tutorial_files() -> dict[str, str]:
    return {match["path"]: match["body"] for match in FILE_BLOCK.finditer(TUTORIAL.read_text())}


def tutorial_commands() -> list[Command]:
    commands: list[Command] = []
    for block in CONSOLE_BLOCK.finditer(TUTORIAL.read_text()):
        for line in block["body"].splitlines():
            if line.startswith("$ "):
                text = line[2:]
                found = EXITS.search(text)
                status = int(found.group(1)) if found else 0
                commands.append(Command(EXITS.sub("", text), status))
            elif line.strip():
                commands[-1].expected.append(line)
    return commands


def collapse(text: str) -> str:
    return " ".join(text.split())


def test_the_tutorial_files_are_the_example_package() -> None:
    files = tutorial_files()
    assert set(files) == {"pyproject.toml", "replicaio_double_echo/__init__.py",
                          "replicaio_double_echo/protocol.py",
                          "replicaio_double_echo/broken.py", "tests/test_double_echo.py"}
    for path, body in files.items():
        assert (EXAMPLE / path).read_text() == body, f"docs/tutorial.md's {path} differs"


def shell_line(command: Command, site: Path) -> str:
    words = shlex.split(command.line)
    if words[:2] == ["pip", "install"]:
        return shlex.join([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                           "--disable-pip-version-check", "--target", str(site), *words[2:]])
    if f"--base-port {TUTORIAL_BASE_PORT}" in command.line:  # free ports, picked just now
        return command.line.replace(f"--base-port {TUTORIAL_BASE_PORT}",
                                    f"--base-port {free_port_block(12)}")
    return command.line


@pytest.mark.timeout(600)
def test_every_tutorial_command_does_what_the_tutorial_says(tmp_path: Path) -> None:
    package = tmp_path / "replicaio-double-echo"
    for path, body in tutorial_files().items():  # the reader writes the files shown
        (package / path).parent.mkdir(parents=True, exist_ok=True)
        (package / path).write_text(body)
    site = tmp_path / "site"
    environment = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(site),
    }
    commands = tutorial_commands()
    assert len(commands) >= 12
    outputs: dict[str, str] = {}
    try:
        for command in commands:
            done = subprocess.run(shell_line(command, site), shell=True, cwd=package,
                                  env=environment, capture_output=True, text=True,
                                  timeout=300, check=False)
            output = done.stdout + done.stderr
            outputs[command.line] = output
            assert done.returncode == command.status, (command.line, output[-3000:])
            for line in command.expected:
                assert collapse(line) in collapse(output), (command.line, line, output[-3000:])
    finally:
        if (package / "live").exists():
            subprocess.run([sys.executable, "-m", "replicaio.cli", "cluster", "down",
                            "--data-dir", str(package / "live")], env=environment,
                           capture_output=True, timeout=60, check=False)
    # The reproduce line the swarm printed is the command the tutorial runs next.
    swarm = next(line for line in outputs if line.startswith("replicaio swarm double-echo-weak"))
    printed = re.findall(r"reproduce: (replicaio sim [^\n]*--seed \d+)\n", outputs[swarm])
    assert any(line + " --log bad.log" in outputs for line in printed)
    assert (package / "bad.html").stat().st_size > 0
