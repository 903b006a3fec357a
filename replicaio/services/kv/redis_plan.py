"""What a planned Redis command is, shared by the command modules.

A client command is planned (``redis_commands.plan``) into a :class:`Local`
reply or a :class:`Replicated` request; this module holds those types, the
:class:`Session` a command sees, the table entry :class:`CommandSpec`, the
typed :class:`CommandError` a handler raises for a client's bad input, and the
argument checks and error replies that ``redis_commands`` and
``redis_typed`` both use.

Both command modules import this one and ``redis_commands`` imports
``redis_typed``, never the other way: either can be imported first in a
fresh interpreter (``tests/test_import_first.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from replicaio.services.kv.resp import Reply, RespError
from replicaio.services.kv.state_machine import (
    INT64_MAX,
    INT64_MIN,
    KvError,
    KvParams,
    KvResult,
)

KV_PARAMS: Final = KvParams()  # the bounds the replicated store enforces (the registry's)
# Integers as Redis reads them (string2ll): no "+", no leading zero, no "-0".
_INTEGER = re.compile(rb"0|-?[1-9][0-9]{0,18}")


class Session(Protocol):
    """What a command may read or change of its connection."""

    protocol: int  # 2 or 3: the RESP version replies are encoded in
    name: bytes | None
    connection_id: int
    closing: bool  # set by QUIT: close once the reply is written

    def server_info(self) -> dict[str, dict[str, str | int]]:
        """INFO's sections, by name, each ``field -> value``."""
        ...

    @property
    def scripts(self) -> dict[str, str]:
        """The node's recognised scripts: SHA1 (hex) -> store command (bounded)."""
        ...

    def clients(self) -> list[dict[str, str | int]]:
        """CLIENT LIST: this node's connections, each ``field -> value``."""
        ...

    def kill_clients(self, client_id: int | None, address: str | None, skip_me: bool) -> int:
        """CLIENT KILL: close this node's matching connections; how many."""
        ...

    def server_time_us(self) -> int:
        """TIME: the node's wall clock, in microseconds."""
        ...

    def role(self) -> Reply:
        """ROLE: Redis's answer for this node's replication role."""
        ...


@dataclass(frozen=True, slots=True)
class Local:
    """A reply computed here; ``rejected`` is the counter reason of a bad command."""

    reply: Reply
    rejected: str | None = None


Finish = Callable[[Sequence[KvResult]], Reply]


@dataclass(frozen=True, slots=True, init=False)
class Replicated:
    """Key-value commands that go through SMR as one request (in this order)."""

    name: str  # the Redis command, lower case (a metrics label)
    commands: tuple[bytes, ...]
    read_only: bool
    finish: Finish

    def __init__(self, name: str, commands: tuple[bytes, ...], read_only: bool,
                 finish: Finish) -> None:
        # What the generated ``__init__`` of a frozen dataclass does, written out: that
        # one is generated source, interpreted even where this module is compiled, and
        # one plan is made per command.
        setter = object.__setattr__
        setter(self, "name", name)
        setter(self, "commands", commands)
        setter(self, "read_only", read_only)
        setter(self, "finish", finish)


Plan = Local | Replicated


class CommandError(Exception):
    """A client's bad command: ``reason`` is counted, ``text`` is the error reply."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason
        self.text = text


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """A command: arity as Redis states it (n: exactly n words with the name,
    -n: at least n), and its handler."""

    arity: int
    handler: Callable[[Session, list[bytes]], Plan]
    replicated: bool = False  # goes through SMR (else: answered by this node)


def printable(data: bytes, limit: int = 64) -> str:
    """Client bytes quoted into an error message: bounded, one line."""
    text = data[:limit].decode("utf-8", "replace")
    return text.replace("\r", " ").replace("\n", " ").replace("'", "")


def integer(word: bytes) -> int:
    """A signed 64-bit decimal, as Redis reads them; ``not_integer`` otherwise."""
    if _INTEGER.fullmatch(word) is None:
        raise CommandError("not_integer", "ERR value is not an integer or out of range")
    value = int(word)
    if not INT64_MIN <= value <= INT64_MAX:
        raise CommandError("not_integer", "ERR value is not an integer or out of range")
    return value


_KV_ERRORS: Final = {
    "wrong_type": "WRONGTYPE Operation against a key holding the wrong kind of value",
    "too_many_items": (
        f"OOM a collection holds at most {KV_PARAMS.items_max} items (KvParams.items_max)"
    ),
    "not_integer": "ERR value is not an integer or out of range",
    "overflow": "ERR increment or decrement would overflow",
    "key_too_large": f"ERR key too large (at most {KV_PARAMS.key_bytes_max} bytes)",
    "full": (
        "OOM the store is full (its keys_max keys, or maxmemory bytes as INFO memory shows: "
        "the protocol's memory= parameter); new data is refused"
    ),
    "result_too_large": (
        f"ERR reply too large: the values read exceed {KV_PARAMS.result_bytes_max} bytes "
        "(read fewer keys at once)"
    ),
}


def kv_error(error: KvError) -> RespError:
    """The Redis error for a key-value error result."""
    if error.code == "value_too_large":  # the store says its own bound
        return RespError(f"ERR value too large ({error.detail[:80]})")
    text = _KV_ERRORS.get(error.code)
    if text is None:  # our own bug (a malformed command), said as such
        return RespError(f"ERR internal error: {error.code}: {error.detail[:120]}")
    return RespError(text)


