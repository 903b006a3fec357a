"""What every ``replicaio`` subcommand shares: argument types, help with defaults, and
how a run ends (exit codes, usage errors, a closed pipe).

Exit codes: 0 all good; 1 a property was violated (or a live command failed);
2 a usage error: the subcommand's usage and the reason on stderr, never a
traceback (a bad option value, ``--nodes 0``, an unwritable ``--log`` or
``--history`` path, a caller's misuse raised as ``ReplicaioError``); 141 the
reader of stdout went away (``replicaio protocols | head -1``), as a shell
reports a process ended by SIGPIPE.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

from replicaio.core.errors import ReplicaioError

EXIT_USAGE: Final = 2
EXIT_CLOSED_PIPE: Final = 141
# Options naming a file a command writes: checked before anything runs.
OUTPUT_PATH_OPTIONS: Final = ("log", "history", "event_log")
RANDOM_SEEDS_MAX: Final = 1 << 31
LOG_LEVELS: Final = ("debug", "info", "warning", "error")  # --first-seed random draws below this


def int_at_least(low: int, text: str) -> int:
    """``text`` as an integer >= ``low``, or an argparse error saying why not."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    return int_at_least(1, text)


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    return int_at_least(0, text)


def seed_or_random(text: str) -> int:
    """An argparse type for ``--first-seed``: an integer, or ``random`` (a fresh one, so
    repeated swarms explore new seeds; the command prints the range it ran)."""
    if text == "random":
        return secrets.randbelow(RANDOM_SEEDS_MAX)
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither an integer nor 'random'") from None


def subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every parser under ``parser`` (itself included), depth first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from subparsers(child)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that states every default (argparse's), and shows nothing for None."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in text:
            return action.help
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return f"{text} (default: %(default)s)".strip()
        return action.help


def finish_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Help with defaults everywhere, and each subcommand remembers its parser (so a
    usage error prints that subcommand's usage)."""
    for found in subparsers(parser):
        found.formatter_class = HelpFormatter
        found.set_defaults(command_parser=found)
        options = {option for action in found._actions for option in action.option_strings}
        leaf = not any(isinstance(action, argparse._SubParsersAction)
                       for action in found._actions)
        if found is not parser and leaf and "--log-level" not in options:
            # `replicaio sim ... --log-level debug` as well as `replicaio --log-level debug sim`
            found.add_argument("--log-level", dest="cli_log_level", default=argparse.SUPPRESS,
                               choices=LOG_LEVELS, help="this command's own logs (JSON lines "
                               "on stderr, ISO timestamps; default: warnings only)")
    return parser


def check_output_paths(args: argparse.Namespace) -> str | None:
    """Why a file the command would write cannot be written, or None."""
    for name in OUTPUT_PATH_OPTIONS:
        value = getattr(args, name, None)
        if not isinstance(value, str):
            continue
        path = Path(value)
        option = "--" + name.replace("_", "-")
        if path.is_dir():
            return f"{option} {value}: is a directory"
        folder = path.parent if str(path.parent) else Path(".")
        if not folder.is_dir():
            return f"{option} {value}: no such directory {folder}"
        if path.exists() and not os.access(path, os.W_OK):
            return f"{option} {value}: not writable"
        if not path.exists() and not os.access(folder, os.W_OK | os.X_OK):
            return f"{option} {value}: directory {folder} is not writable"
    return None


def run_command(parser: argparse.ArgumentParser, args: argparse.Namespace,
                handler: Callable[[argparse.Namespace], int]) -> int:
    """Run ``handler``, turning misuse into exit 2 with the subcommand's usage and a
    closed stdout into 141; never a traceback for either."""
    command_parser: argparse.ArgumentParser = getattr(args, "command_parser", parser)
    if hasattr(args, "command_parser"):
        del args.command_parser  # (a parser does not pickle: swarms send args to workers)
    reason = check_output_paths(args)
    if reason is not None:
        return usage_error(command_parser, reason)
    outputs = {getattr(args, name, None) for name in OUTPUT_PATH_OPTIONS} - {None}
    try:
        return handler(args)
    except ReplicaioError as error:
        return usage_error(command_parser, str(error))
    except BrokenPipeError:
        return closed_pipe()
    except OSError as error:
        if error.filename is None or str(error.filename) not in outputs:
            raise  # not the caller's output path: our bug or the machine's, shown whole
        return usage_error(command_parser, f"cannot write {error.filename}: {error.strerror}")


def usage_error(parser: argparse.ArgumentParser, reason: str) -> int:
    try:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {reason}", file=sys.stderr)
    except BrokenPipeError:
        pass
    return EXIT_USAGE


def closed_pipe() -> int:
    """stdout's reader is gone: point stdout at /dev/null so the interpreter's final
    flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_CLOSED_PIPE


def print_json(value: Any) -> None:
    print(json.dumps(value, sort_keys=True, default=str))
