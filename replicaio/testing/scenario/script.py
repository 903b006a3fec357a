"""The scenario file format and its command lines: parsing, rendering, errors."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

from replicaio.core.errors import UsageError

SEPARATOR = "----"


class ScenarioError(UsageError):
    """A scenario file is wrong (syntax, unknown node, impossible action) or a
    command could not complete (``stabilize`` over its step budget). ``str``
    reads ``path:line: message``."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line

    def locate(self, path: str, line: int) -> ScenarioError:
        """Attach the position of the command (kept if already known)."""
        if self.path is None:
            self.path, self.line = path, line
        return self

    def __str__(self) -> str:
        if self.path is None:
            return self.message
        return f"{self.path}:{self.line}: {self.message}"



# -- the file format -----------------------------------------------------------------------


@dataclass(slots=True)
class Directive:
    """One command of a file: its text, its expected output, the comments before it."""

    line: int  # 1-based line of the command
    text: str
    expected: str | None  # None: no ``----`` block yet (``--rewrite`` adds it)
    leading: list[str] = field(default_factory=list)  # comment and blank lines, kept


@dataclass(slots=True)
class ScenarioFile:
    path: str
    directives: list[Directive]
    trailing: list[str]


def parse_scenario(text: str, path: str = "<scenario>") -> ScenarioFile:
    """Split a file into directives; raise :class:`ScenarioError` on a malformed block."""
    lines = text.splitlines()
    directives: list[Directive] = []
    leading: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index].rstrip()
        if not line or line.lstrip().startswith("#"):
            leading.append(line)
            index += 1
            continue
        if line == SEPARATOR or line[0].isspace():
            raise ScenarioError(
                "expected a command here (commands start at column 1; "
                "an output block follows its command's '----')",
                path,
                index + 1,
            )
        directive = Directive(index + 1, line, None, leading)
        leading = []
        index += 1
        if index < len(lines) and lines[index].rstrip() == SEPARATOR:
            directive.expected, index = read_block(lines, index + 1, path)
        directives.append(directive)
    return ScenarioFile(path, directives, leading)


def read_block(lines: list[str], index: int, path: str) -> tuple[str, int]:
    """The output block starting at ``index``; returns it and the index after it."""
    body: list[str] = []
    if index < len(lines) and lines[index].rstrip() == SEPARATOR:
        opened = index
        index += 1
        while index + 1 < len(lines) and not (
            lines[index].rstrip() == SEPARATOR and lines[index + 1].rstrip() == SEPARATOR
        ):
            body.append(lines[index].rstrip())
            index += 1
        if index + 1 >= len(lines):
            raise ScenarioError("fenced output block never closed by '----' '----'", path, opened)
        index += 2
    else:
        while index < len(lines) and lines[index].strip():
            body.append(lines[index].rstrip())
            index += 1
    if index < len(lines) and not lines[index].strip():
        index += 1  # the blank line ending the block belongs to it
    return "\n".join(body), index


def render_scenario(scenario_file: ScenarioFile, outputs: Sequence[str | None]) -> str:
    """The file text with ``outputs`` as the expected blocks (canonical layout)."""
    parts: list[str] = []
    for directive, output in zip(scenario_file.directives, outputs, strict=True):
        leading = directive.leading
        if leading and not leading[0] and parts and not parts[-1]:
            leading = leading[1:]  # a block already ends with its blank line
        parts.extend(leading)
        parts.append(directive.text)
        if output is None:
            continue
        parts.append(SEPARATOR)
        if any(not line.strip() for line in output.split("\n")) and output:
            parts.extend([SEPARATOR, output, SEPARATOR, SEPARATOR])
        elif output:
            parts.append(output)
        parts.append("")
    parts.extend(scenario_file.trailing)
    return "\n".join(parts).rstrip("\n") + "\n"



# -- commands ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    """A command line split into its name and words (shell-like quoting, ``#`` comments)."""

    name: str
    words: tuple[str, ...]

    @staticmethod
    def parse(text: str) -> Command:
        try:
            words = shlex.split(text, comments=True)
        except ValueError as error:
            raise ScenarioError(f"cannot split the command: {error}") from None
        if not words:
            raise ScenarioError("empty command")
        return Command(words[0], tuple(words[1:]))

    def split(self, allowed: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        """Positional words and ``key=value`` options (only for keys in ``allowed``)."""
        positional: list[str] = []
        options: dict[str, str] = {}
        for word in self.words:
            key, equals, value = word.partition("=")
            if equals and key in allowed:
                if key in options:
                    raise ScenarioError(f"{self.name}: option {key} given twice")
                options[key] = value
            else:
                positional.append(word)
        return positional, options


def parse_int(text: str, what: str, low: int = 0) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ScenarioError(f"{what} must be an integer, got {text!r}") from None
    if value < low:
        raise ScenarioError(f"{what} must be >= {low}, got {value}")
    return value



def no_more(command_: Command, positional: list[str], usage: str) -> None:
    if positional:
        raise ScenarioError(f"{command_.name}: unexpected {' '.join(positional)!r}; usage: {usage}")


def take_quiet(positional: list[str]) -> bool:
    if "quiet" in positional:
        positional.remove("quiet")
        return True
    return False

