"""The Redis commands of the KV service: what each one means in key-value operations.

Theory of operation
-------------------
:func:`plan` turns one parsed client command (``argv``: its name, then its
arguments, all ``bytes``) into a :class:`Plan`:

* :class:`Local`: answered by this node alone, at once (``PING``, ``ECHO``,
  ``HELLO``, ``CLIENT``, ``SELECT``, ``COMMAND``, ``CONFIG GET``, ``INFO``,
  ``QUIT``, ``RESET``); connection state (the RESP version, the client name)
  is changed through the :class:`Session`;
* :class:`Replicated`: one or more key-value commands of
  ``replicaio.services.kv.state_machine`` that must go through SMR together
  (one replicated request, executed at one position of the log), whether they
  only read (``read_only``: served through the read barrier) and ``finish``,
  which turns their results into the Redis reply.

Bad input never raises out of :func:`plan`: an unknown command, a wrong number
of arguments, a non-integer, an unsupported option or an oversized key or
value becomes a :class:`Local` error reply, with ``rejected`` set to a stable
reason the service counts (``rejected_resp_command_<reason>``).

The command table with semantics and errors is in ``docs/kv.md``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Final

from replicaio import __version__
from replicaio.services.kv.redis_plan import (
    KV_PARAMS,
    CommandError,
    CommandSpec,
    Finish,
    Local,
    Plan,
    Replicated,
    Session,
    integer,
    kv_error,
    printable,
)
from replicaio.services.kv.redis_typed import TYPED_COMMANDS, client_kill, client_list, typed
from replicaio.services.kv.resp import (
    OK,
    PONG,
    RESP2,
    RESP3,
    Reply,
    RespError,
    RespSimple,
)
from replicaio.services.kv.state_machine import (
    INT64_MIN,
    VALUE_BYTES_CEILING,
    KvError,
    KvOk,
    KvResult,
    encode_command,
)

_CLIENT_NAME = re.compile(rb"[!-~]*")  # printable ASCII, no spaces (as Redis requires)


def plan(session: Session, argv: list[bytes]) -> Plan:
    """What ``argv`` means; never raises for any client input."""
    assert argv, "the parser skips empty commands"
    name = argv[0].lower()
    spec = COMMANDS.get(name)
    try:
        if spec is None:
            raise CommandError("unknown_command", unknown_command_text(argv))
        arity = spec.arity
        if (arity > 0 and len(argv) != arity) or (arity < 0 and len(argv) < -arity):
            raise CommandError(
                "wrong_arity",
                f"ERR wrong number of arguments for '{printable(name)}' command",
            )
        return spec.handler(session, argv)
    except CommandError as error:
        return Local(RespError(error.text), error.reason)


def is_replicated(argv: list[bytes]) -> bool:
    """Whether ``argv`` names a command that goes through SMR (a local command,
    or a bad one, is answered here: it must wait for the replies before it,
    since ``HELLO`` changes how they are encoded)."""
    spec = COMMANDS.get(argv[0].lower())
    return spec is not None and spec.replicated


def unknown_command_text(argv: list[bytes]) -> str:
    words = " ".join(f"'{printable(word)}'" for word in argv[1:4])
    return f"ERR unknown command '{printable(argv[0])}', with args beginning with: {words}"


# -- argument checks --------------------------------------------------------------------------


def key(word: bytes) -> bytes:
    if len(word) > KV_PARAMS.key_bytes_max:
        raise CommandError(
            "key_too_large", f"ERR key too large (at most {KV_PARAMS.key_bytes_max} bytes)"
        )
    return word


def value(word: bytes) -> bytes:
    """A value argument: longer than any store takes is refused here; the
    store refuses one over its own ``value_bytes_max`` (the protocol's
    ``values=``), naming it."""
    if len(word) > VALUE_BYTES_CEILING:
        raise CommandError(
            "value_too_large", f"ERR value too large (at most {VALUE_BYTES_CEILING} bytes)"
        )
    return word


# -- results to replies ------------------------------------------------------------------------

def first_error(results: Sequence[KvResult]) -> RespError | None:
    for result in results:
        if isinstance(result, KvError):
            return kv_error(result)
    return None


def single(result: KvResult, convert: Callable[[object], Reply]) -> Reply:
    if isinstance(result, KvError):
        return kv_error(result)
    return convert(result.value)


def as_bulk(payload: object) -> Reply:
    if payload is None or isinstance(payload, bytes):
        return payload
    return RespError(f"ERR internal error: unexpected result {type(payload).__name__}")


def as_integer(payload: object) -> Reply:
    if type(payload) is int:
        return payload
    return RespError(f"ERR internal error: unexpected result {type(payload).__name__}")


def as_flag(payload: object) -> Reply:
    """True/False as the integers 1/0 (what Redis answers for SETNX, CAS...)."""
    return 1 if payload is True else 0


# -- key-value commands ------------------------------------------------------------------------


def replicated(
    name: str, commands: list[bytes], finish: Finish, *, read_only: bool = False
) -> Replicated:
    return Replicated(name, tuple(commands), read_only, finish)


def finish_get(results: Sequence[KvResult]) -> Reply:
    """GET's reply (a module function, not a lambda per command: the front's
    lone GET shares it, ADR 0064)."""
    return single(results[0], as_bulk)


def command_get(session: Session, argv: list[bytes]) -> Plan:
    return replicated("get", [encode_command("get", key(argv[1]))], finish_get, read_only=True)


def command_strlen(session: Session, argv: list[bytes]) -> Plan:
    def finish(results: Sequence[KvResult]) -> Reply:
        found = single(results[0], as_bulk)
        return len(found) if isinstance(found, bytes) else 0 if found is None else found

    return replicated("strlen", [encode_command("get", key(argv[1]))], finish, read_only=True)


def command_set(session: Session, argv: list[bytes]) -> Plan:
    target, data = key(argv[1]), value(argv[2])
    options = [word.upper() for word in argv[3:]]
    if not options:
        return replicated("set", [encode_command("put", target, data)], finish_set)
    if options == [b"NX"]:  # set only if absent: a cas from "absent"
        return replicated(
            "set",
            [encode_command("cas", target, None, data)],
            lambda results: single(results[0], lambda swapped: OK if swapped is True else None),
        )

    return typed(session, "set", argv[1:])  # the store parses the options, naming a bad one


def ok(payload: object) -> Reply:
    return OK


def finish_set(results: Sequence[KvResult]) -> Reply:
    """A plain SET's reply (a module function, not a lambda per command: the front
    answers ``state_machine.PUT_RESULT`` with ``OK`` when it finds this one, ADR 0064)."""
    return single(results[0], ok)


def command_setnx(session: Session, argv: list[bytes]) -> Plan:
    return replicated(
        "setnx",
        [encode_command("cas", key(argv[1]), None, value(argv[2]))],
        lambda results: single(results[0], as_flag),
    )


def command_cas(session: Session, argv: list[bytes]) -> Plan:
    """``CAS key expected new``: 1 if the value was ``expected`` and is now ``new``,
    else 0 (an absent key never matches; create with ``SET key value NX``)."""
    return replicated(
        "cas",
        [encode_command("cas", key(argv[1]), value(argv[2]), value(argv[3]))],
        lambda results: single(results[0], as_flag),
    )


def command_del(session: Session, argv: list[bytes]) -> Plan:
    def finish(results: Sequence[KvResult]) -> Reply:
        error = first_error(results)
        if error is not None:
            return error
        return sum(1 for result in results if isinstance(result, KvOk) and result.value is True)

    return replicated("del", [encode_command("delete", key(word)) for word in argv[1:]], finish)


def command_exists(session: Session, argv: list[bytes]) -> Plan:
    return typed(session, "exists", [key(word) for word in argv[1:]])


def increment(name: str, target: bytes, delta: int) -> Replicated:
    return replicated(
        name,
        [encode_command("incr", key(target), delta)],
        lambda results: single(results[0], as_integer),
    )


def command_incr(session: Session, argv: list[bytes]) -> Plan:
    return increment("incr", argv[1], 1)


def command_decr(session: Session, argv: list[bytes]) -> Plan:
    return increment("decr", argv[1], -1)


def command_incrby(session: Session, argv: list[bytes]) -> Plan:
    return increment("incrby", argv[1], integer(argv[2]))


def command_decrby(session: Session, argv: list[bytes]) -> Plan:
    delta = integer(argv[2])
    if delta == INT64_MIN:
        raise CommandError("not_integer", "ERR decrement would overflow")
    return increment("decrby", argv[1], -delta)


def command_append(session: Session, argv: list[bytes]) -> Plan:
    return replicated(
        "append",
        [encode_command("append", key(argv[1]), value(argv[2]))],
        lambda results: single(results[0], as_integer),
    )


def command_mget(session: Session, argv: list[bytes]) -> Plan:
    def finish(results: Sequence[KvResult]) -> Reply:
        # A key of another type reads as nil (as Redis); any other error is the reply.
        error = first_error([result for result in results
                             if not (isinstance(result, KvError) and result.code == "wrong_type")])
        if error is not None:
            return error
        return [as_bulk(result.value) if isinstance(result, KvOk) else None
                for result in results]

    commands = [encode_command("get", key(word)) for word in argv[1:]]
    return replicated("mget", commands, finish, read_only=True)


def command_mset(session: Session, argv: list[bytes]) -> Plan:
    if len(argv) % 2 == 0:
        raise CommandError("wrong_arity", "ERR wrong number of arguments for 'mset' command")
    commands = [
        encode_command("put", key(argv[index]), value(argv[index + 1]))
        for index in range(1, len(argv), 2)
    ]

    def finish(results: Sequence[KvResult]) -> Reply:
        return first_error(results) or OK

    return replicated("mset", commands, finish)


# -- connection and server commands (answered locally) -------------------------------------


def command_ping(session: Session, argv: list[bytes]) -> Plan:
    if len(argv) > 2:
        raise CommandError("wrong_arity", "ERR wrong number of arguments for 'ping' command")
    return Local(argv[1] if len(argv) == 2 else PONG)


def command_echo(session: Session, argv: list[bytes]) -> Plan:
    return Local(argv[1])


def command_hello(session: Session, argv: list[bytes]) -> Plan:
    """``HELLO [protover [AUTH user pass] [SETNAME name]]``: switch RESP version,
    answer the server's handshake map (in the new version)."""
    protocol = session.protocol
    if len(argv) >= 2:
        try:
            protocol = integer(argv[1])
        except CommandError:
            raise CommandError(
                "not_integer", "ERR Protocol version is not an integer or out of range"
            ) from None
        if protocol not in (RESP2, RESP3):
            raise CommandError("unsupported_protocol", "NOPROTO unsupported protocol version")
    name = session.name
    index = 2
    while index < len(argv):
        option = argv[index].upper()
        if option == b"AUTH" and index + 2 < len(argv):
            raise CommandError(
                "auth_unsupported",
                "ERR AUTH is not supported: replicaio's client port has no authentication",
            )
        if option == b"SETNAME" and index + 1 < len(argv):
            name = client_name(argv[index + 1])
            index += 2
            continue
        raise CommandError("syntax", f"ERR Syntax error in HELLO option '{printable(option)}'")
    session.protocol = protocol
    session.name = name
    return Local(
        {
            "server": "replicaio",
            "version": __version__,
            "proto": protocol,
            "id": session.connection_id,
            "mode": "standalone",
            "role": "master",  # every node takes reads and writes (followers forward)
            "modules": [],
        }
    )


def client_name(word: bytes) -> bytes | None:
    if _CLIENT_NAME.fullmatch(word) is None:
        raise CommandError(
            "syntax", "ERR Client names cannot contain spaces, newlines or special characters."
        )
    return word or None


def command_client(session: Session, argv: list[bytes]) -> Plan:
    sub = argv[1].upper()
    if sub == b"SETINFO" and len(argv) == 4:
        return Local(OK)  # library name and version: accepted, not kept
    if sub == b"SETNAME" and len(argv) == 3:
        session.name = client_name(argv[2])
        return Local(OK)
    if sub == b"GETNAME" and len(argv) == 2:
        return Local(session.name)
    if sub == b"ID" and len(argv) == 2:
        return Local(session.connection_id)
    if sub == b"LIST":
        return Local(client_list(session))
    if sub == b"KILL" and len(argv) >= 3:
        return Local(client_kill(session, argv))
    if sub in (b"SETINFO", b"SETNAME", b"GETNAME", b"ID"):
        raise CommandError(
            "wrong_arity", f"ERR wrong number of arguments for 'client|{printable(sub.lower())}'"
        )
    raise CommandError(
        "unknown_subcommand",
        f"ERR unknown subcommand '{printable(argv[1])}'. replicaio's CLIENT takes SETINFO, "
        "SETNAME, GETNAME, ID, LIST, KILL",
    )


def command_select(session: Session, argv: list[bytes]) -> Plan:
    if integer(argv[1]) != 0:
        raise CommandError("db_out_of_range", "ERR DB index is out of range")
    return Local(OK)


def command_command(session: Session, argv: list[bytes]) -> Plan:
    """No command metadata is published (clients only use it for hints)."""
    if len(argv) == 1:
        return Local([])
    sub = argv[1].upper()
    if sub == b"DOCS":
        return Local({})
    if sub == b"COUNT":
        return Local(0)
    if sub == b"INFO":
        return Local([None] * (len(argv) - 2))
    raise CommandError("unknown_subcommand", f"ERR unknown subcommand '{printable(argv[1])}'")


def command_config(session: Session, argv: list[bytes]) -> Plan:
    sub = argv[1].upper()
    if sub == b"GET":
        if len(argv) < 3:
            raise CommandError(
                "wrong_arity", "ERR wrong number of arguments for 'config|get' command"
            )
        return Local({})  # no Redis configuration exists here: an honest empty answer
    raise CommandError(
        "unsupported_option",
        f"ERR CONFIG {printable(sub)} is not supported by replicaio (configure the cluster "
        "file)",
    )


def command_info(session: Session, argv: list[bytes]) -> Plan:
    sections = session.server_info()
    wanted = {word.lower().decode("utf-8", "replace") for word in argv[1:]}
    if not wanted or wanted & {"all", "everything", "default"}:
        wanted = {name.lower() for name in sections}
    lines: list[str] = []
    for name, fields in sections.items():
        if name.lower() not in wanted:
            continue
        if lines:
            lines.append("")
        lines.append(f"# {name}")
        lines.extend(f"{field}:{item}" for field, item in fields.items())
    text = "\r\n".join(lines) + ("\r\n" if lines else "")
    return Local(text.encode())


def command_quit(session: Session, argv: list[bytes]) -> Plan:
    session.closing = True
    return Local(OK)


def command_reset(session: Session, argv: list[bytes]) -> Plan:
    session.protocol = RESP2
    session.name = None
    return Local(RespSimple("RESET"))


COMMANDS: Final[dict[bytes, CommandSpec]] = {
    b"get": CommandSpec(2, command_get, replicated=True),
    b"strlen": CommandSpec(2, command_strlen, replicated=True),
    b"set": CommandSpec(-3, command_set, replicated=True),
    b"setnx": CommandSpec(3, command_setnx, replicated=True),
    b"cas": CommandSpec(4, command_cas, replicated=True),
    b"del": CommandSpec(-2, command_del, replicated=True),
    b"exists": CommandSpec(-2, command_exists, replicated=True),
    b"incr": CommandSpec(2, command_incr, replicated=True),
    b"decr": CommandSpec(2, command_decr, replicated=True),
    b"incrby": CommandSpec(3, command_incrby, replicated=True),
    b"decrby": CommandSpec(3, command_decrby, replicated=True),
    b"append": CommandSpec(3, command_append, replicated=True),
    b"mget": CommandSpec(-2, command_mget, replicated=True),
    b"mset": CommandSpec(-3, command_mset, replicated=True),
    b"ping": CommandSpec(-1, command_ping),
    b"echo": CommandSpec(2, command_echo),
    b"hello": CommandSpec(-1, command_hello),
    b"client": CommandSpec(-2, command_client),
    b"select": CommandSpec(2, command_select),
    b"command": CommandSpec(-1, command_command),
    b"config": CommandSpec(-2, command_config),
    b"info": CommandSpec(-1, command_info),
    b"quit": CommandSpec(-1, command_quit),
    b"reset": CommandSpec(1, command_reset),
}

for _name, _spec in TYPED_COMMANDS.items():
    COMMANDS.setdefault(_name, _spec)  # SET, EXISTS above plan their own fast paths
COMMANDS[b"unlink"] = COMMANDS[b"del"]
METRIC_NAMES: Final = frozenset(name.decode() for name in COMMANDS)
