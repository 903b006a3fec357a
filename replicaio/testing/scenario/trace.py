"""How a scenario prints what happened: values, paths, messages, outputs, violations."""

from __future__ import annotations

from typing import Any

import msgspec

from replicaio.check.broadcast import Violation
from replicaio.core.node import Acks, Envelope, Hello
from replicaio.protocols.broadcast import (
    Accepted,
    Delivered,
)


def format_value(value: Any) -> str:
    """Bytes as ``"text"`` (or ``0x..`` when not printable), tuples recursively, else repr."""
    if isinstance(value, bytes):
        try:
            text = value.decode()
        except UnicodeDecodeError:
            return "0x" + value.hex()
        if not text.isprintable():
            return "0x" + value.hex()
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple):
        return "(" + ", ".join(format_value(item) for item in value) + ")"
    return repr(value)


def format_path(path: tuple[int | str, ...]) -> str:
    return "/".join(str(element) for element in path)


def format_message(message: Any) -> str:
    """One message as the trace shows it: ``ECHO bcast/0/0 "v"``, ``Acks ...``, ``Hello 2``."""
    if type(message) is Envelope:
        return f"{message.channel} {format_path(message.path)} {format_value(message.body)}"
    if type(message) is Hello:
        return f"Hello {message.incarnation}"
    if type(message) is Acks:
        by_path: dict[tuple[int | str, ...], list[str]] = {}
        for path, channel in message.items:
            by_path.setdefault(path, []).append(channel)
        groups = [
            ",".join(channels) if not path else f"{format_path(path)}:{','.join(channels)}"
            for path, channels in by_path.items()
        ]
        return "Acks " + " ".join(groups)
    if isinstance(message, msgspec.Struct):
        fields = " ".join(
            f"{name}={format_value(getattr(message, name))}"
            for name in message.__struct_fields__
        )
        return f"{type(message).__name__} {fields}".rstrip()
    return format_value(message)


def format_output(output: Any) -> str:
    """A broadcast output: ``accept 0/0 "v"``, ``deliver 0/0 "v"`` (``(recovered)``)."""
    if type(output) is Accepted:
        return f"accept {output.sender}/{output.seq} {format_value(output.value)}"
    if type(output) is Delivered:
        recovered = " (recovered)" if output.recovered else ""
        return f"deliver {output.sender}/{output.seq} {format_value(output.value)}{recovered}"
    return "output " + format_message(output)


def format_violation(violation: Violation) -> str:
    where = "" if violation.node is None else f" (node {violation.node})"
    return f"{violation.property}{where}: {violation.detail}"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"

