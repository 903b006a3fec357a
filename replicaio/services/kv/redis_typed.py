"""The Redis front's typed, expiry and keyspace commands, lock scripts and server commands.

Theory of operation
-------------------
Each command of :data:`TYPED_COMMANDS` is planned as **one** ``redis``
command of the state machine (``state_machine.encode_redis``), with the
client's arguments as they came: the state machine parses them and answers
Redis's exact reply or error (``commands_table``), so a command means the
same on every replica and inside a transaction. Reads (``read_only`` in
``commands_table``) take the read barrier; everything else goes through the
log. The Redis arity is checked here, so a wrong number of arguments is a
queue-time error inside ``MULTI``, as in Redis.

``EVAL``/``EVALSHA``/``SCRIPT``: Lua is not run. A script is recognised by the
Redis calls it makes (:func:`script_kind`): a client library's lock release
(``get`` then ``del``: compare-and-delete), extension (``get``, ``pttl``,
``pexpire``) and re-acquisition (``get``, ``pexpire``), with one key, run as
the store's ``lock_release``/``lock_extend``/``lock_reacquire`` commands
(atomic, replicated). Any other script is refused. ``SCRIPT LOAD`` remembers a
recognised script's SHA1 in the node's bounded table (``Session.scripts``).

Blocking pops (``BLPOP``, ``BRPOP``, ``BLMOVE``, ``BRPOPLPUSH``, ``BZPOPMIN``,
``BZPOPMAX``) are refused with a clear error: a blocked client would hold a
replicated request open on a node; poll with ``LPOP``/``RPOP`` instead.

Server commands answered by the node alone: ``TIME`` (its wall clock), ``ROLE``
(the Raft role as Redis's master/slave), ``CLIENT LIST``/``CLIENT KILL`` (this
node's connections), through the :class:`~replicaio.services.kv.redis_commands.Session`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Final

from replicaio.services.kv.commands_table import REDIS_COMMANDS
from replicaio.services.kv.redis_plan import (
    KV_PARAMS,
    CommandError,
    CommandSpec,
    Local,
    Plan,
    Replicated,
    Session,
    integer,
    kv_error,
    printable,
)
from replicaio.services.kv.resp import OK, RESP2, Reply, RespDouble, RespError, RespSet, RespSimple
from replicaio.services.kv.state_machine import KvError, KvResult, encode_redis

# Redis's arity of each command the state machine runs (n: exactly n words with
# the name, -n: at least n).
ARITY: Final[dict[str, int]] = {
    "set": -3, "setex": 4, "psetex": 4, "getex": -2, "getdel": 2, "getset": 3, "msetnx": -3,
    "incrbyfloat": 3, "getrange": 4, "setrange": 4, "exists": -2, "dbsize": 1, "type": 2,
    "keys": 2, "scan": -2, "ttl": 2, "pttl": 2, "expiretime": 2, "pexpiretime": 2,
    "expire": -3, "pexpire": -3, "expireat": -3, "pexpireat": -3, "persist": 2,
    "rename": 3, "renamenx": 3, "copy": -3, "flushdb": -1, "flushall": -1,
    "hset": -4, "hsetnx": 4, "hmset": -4, "hget": 3, "hmget": -3, "hgetall": 2, "hkeys": 2,
    "hvals": 2, "hlen": 2, "hexists": 3, "hstrlen": 3, "hdel": -3, "hincrby": 4,
    "hincrbyfloat": 4, "lpush": -3, "rpush": -3, "lpushx": -3, "rpushx": -3, "lpop": -2,
    "rpop": -2, "llen": 2, "lrange": 4, "lindex": 3, "lset": 4, "lrem": 4, "ltrim": 4,
    "linsert": 5, "lmove": 5, "rpoplpush": 3, "sadd": -3, "srem": -3, "smembers": 2, "sismember": 3,
    "smismember": -3, "scard": 2, "spop": -2, "srandmember": -2, "sinter": -2, "sunion": -2,
    "sdiff": -2, "sinterstore": -3, "sunionstore": -3, "sdiffstore": -3, "smove": 4,
    "zadd": -4, "zincrby": 4, "zrem": -3, "zscore": 3, "zmscore": -3, "zcard": 2,
    "zcount": 4, "zrange": -4, "zrevrange": -4, "zrangebyscore": -4, "zrevrangebyscore": -4,
    "zrank": 3, "zrevrank": 3, "zpopmin": -2, "zpopmax": -2, "zremrangebyscore": 4,
}
KEYLESS: Final = frozenset({"dbsize", "keys", "scan", "flushdb", "flushall"})
BLOCKING: Final = frozenset({b"blpop", b"brpop", b"blmove", b"brpoplpush", b"bzpopmin",
                             b"bzpopmax", b"blmpop", b"bzmpop"})
SCRIPTS_MAX: Final = 1024  # scripts one node remembers (SCRIPT LOAD)
_CALL = re.compile(rb"""redis\.p?call\(\s*['"]([A-Za-z]+)['"]""")
SCRIPT_KINDS: Final = {
    frozenset({"get", "del"}): ("lock_release", 1),  # (command, ARGV words it takes)
    frozenset({"get", "pttl", "pexpire"}): ("lock_extend", 3),
    frozenset({"get", "pexpire"}): ("lock_reacquire", 2),
}
UNSUPPORTED_SCRIPT: Final = (
    "ERR scripting is not supported by replicaio: only client locks' compare-and-delete and "
    "compare-and-expire scripts are recognised (see docs/kv.md)"
)


def script_kind(text: bytes) -> str | None:
    """Which store command a script is, judged by the Redis calls it makes."""
    calls = frozenset(name.decode().lower() for name in _CALL.findall(text))
    found = SCRIPT_KINDS.get(calls)
    return None if found is None else found[0]


def generic_reply(payload: object) -> Reply:
    """A ``redis`` command's payload as a Redis reply."""
    if payload is None or isinstance(payload, bytes):
        return payload
    if isinstance(payload, bool):
        return int(payload)
    if isinstance(payload, int):
        return payload
    if isinstance(payload, str):
        return RespSimple(payload)
    if isinstance(payload, tuple | list):
        return [generic_reply(item) for item in payload]
    return RespError(f"ERR internal error: unexpected result {type(payload).__name__}")


# RESP3 shapes of replies (in RESP2 all of them are flat arrays or bulk strings).
SETS: Final = frozenset({"smembers", "sinter", "sunion", "sdiff"})
MAPS: Final = frozenset({"hgetall"})
DOUBLES: Final = frozenset({"zscore", "zincrby", "zadd", "zmscore"})
SCORED: Final = frozenset({"zrange", "zrevrange", "zrangebyscore", "zrevrangebyscore"})
POPS: Final = frozenset({"zpopmin", "zpopmax"})


def double(item: Reply) -> Reply:
    return RespDouble(item) if isinstance(item, bytes) else item


def pairs(flat: Reply) -> list[Reply]:
    assert isinstance(flat, list)
    return [[flat[index], double(flat[index + 1])] for index in range(0, len(flat) - 1, 2)]


def shaped(name: str, arguments: Sequence[bytes], reply: Reply, protocol: int) -> Reply:
    """``reply`` with the RESP3 types Redis gives it (maps, sets, doubles, score pairs);
    in RESP2 Redis answers the flat arrays and bulk strings as they are."""
    if isinstance(reply, RespError) or reply is None or protocol == RESP2:
        return reply
    if name in SETS and isinstance(reply, list):
        return RespSet(reply)
    if name in MAPS and isinstance(reply, list):
        return {reply[index]: reply[index + 1]
                for index in range(0, len(reply) - 1, 2)}
    if name in DOUBLES:
        return [double(item) for item in reply] if isinstance(reply, list) else double(reply)
    if name in SCORED and any(word.upper() == b"WITHSCORES" for word in arguments):
        return pairs(reply)
    if name in POPS:
        return pairs(reply) if len(arguments) > 1 else (pairs(reply) or [[]])[0]
    return reply


def finish_one(name: str, arguments: Sequence[bytes], protocol: int,
               results: Sequence[KvResult]) -> Reply:
    result = results[0]
    if isinstance(result, KvError):
        if result.code == "redis":
            return RespError(result.detail)
        return kv_error(result)
    return shaped(name, arguments, generic_reply(result.value), protocol)


def typed(session: Session, name: str, arguments: Sequence[bytes]) -> Replicated:
    """The plan of the store's Redis command ``name``; its reply takes the shapes of
    the connection's RESP version now (``HELLO`` waits for the commands before it)."""
    spec = REDIS_COMMANDS[name]
    protocol = session.protocol
    return Replicated(
        name, (encode_redis(name, *arguments),), spec.read_only,
        lambda results: finish_one(name, arguments, protocol, results),
    )


def command_typed(session: Session, argv: list[bytes]) -> Plan:
    name = argv[0].lower().decode()
    if name not in KEYLESS and len(argv[1]) > KV_PARAMS.key_bytes_max:
        raise CommandError(
            "key_too_large", f"ERR key too large (at most {KV_PARAMS.key_bytes_max} bytes)"
        )
    return typed(session, name, argv[1:])


def command_blocking(session: Session, argv: list[bytes]) -> Plan:
    raise CommandError(
        "blocking_unsupported",
        f"ERR {printable(argv[0]).upper()} is not supported by replicaio: a blocked client "
        "would hold a replicated request open; poll with LPOP/RPOP/LMOVE/ZPOPMIN instead",
    )


# -- lock scripts --------------------------------------------------------------------------


def run_script(session: Session, kind: str | None, argv: list[bytes]) -> Plan:
    """``EVAL``/``EVALSHA`` of a recognised script: its store command."""
    if kind is None:
        raise CommandError("script_unsupported", UNSUPPORTED_SCRIPT)
    count = integer(argv[2])
    expected = next(words for command, words in SCRIPT_KINDS.values() if command == kind)
    if count != 1 or len(argv) != 4 + expected:
        raise CommandError(
            "script_unsupported", f"ERR this script takes 1 key and {expected} argument(s)"
        )
    return typed(session, kind, argv[3:])


def command_eval(session: Session, argv: list[bytes]) -> Plan:
    return run_script(session, script_kind(argv[1]), argv)


def command_evalsha(session: Session, argv: list[bytes]) -> Plan:
    kind = session.scripts.get(argv[1].lower().decode("ascii", "replace"))
    if kind is None:
        raise CommandError("noscript", "NOSCRIPT No matching script. Please use EVAL.")
    return run_script(session, kind, argv)


def command_script(session: Session, argv: list[bytes]) -> Plan:
    sub = argv[1].upper()
    scripts = session.scripts
    if sub == b"LOAD" and len(argv) == 3:
        kind = script_kind(argv[2])
        if kind is None:
            raise CommandError("script_unsupported", UNSUPPORTED_SCRIPT)
        sha = hashlib.sha1(argv[2], usedforsecurity=False).hexdigest()
        if sha not in scripts and len(scripts) >= SCRIPTS_MAX:
            del scripts[next(iter(scripts))]
        scripts[sha] = kind
        return Local(sha.encode())
    if sub == b"EXISTS" and len(argv) >= 3:
        return Local([int(word.lower().decode("ascii", "replace") in scripts)
                      for word in argv[2:]])
    if sub == b"FLUSH":
        scripts.clear()
        return Local(OK)
    raise CommandError("unknown_subcommand",
                       f"ERR unknown subcommand or wrong arguments for 'script|"
                       f"{printable(argv[1]).lower()}'")


# -- server commands answered by this node -------------------------------------------------


def command_time(session: Session, argv: list[bytes]) -> Plan:
    microseconds = session.server_time_us()
    return Local([str(microseconds // 1_000_000).encode(),
                  str(microseconds % 1_000_000).encode()])


def command_role(session: Session, argv: list[bytes]) -> Plan:
    return Local(session.role())


def client_list(session: Session) -> Reply:
    lines = [" ".join(f"{name}={value}" for name, value in client.items())
             for client in session.clients()]
    return "".join(line + "\n" for line in lines).encode()


def client_kill(session: Session, argv: list[bytes]) -> Reply:
    """``CLIENT KILL addr:port`` (old form: OK or an error) or ``CLIENT KILL
    [ID id] [ADDR addr:port] [SKIPME yes|no]`` (the number closed)."""
    if len(argv) == 3:
        killed = session.kill_clients(None, argv[2].decode("utf-8", "replace"), False)
        if not killed:
            raise CommandError("no_such_client", "ERR No such client")
        return OK
    ids: int | None = None
    address: str | None = None
    skip_me = True
    words = argv[2:]
    if len(words) % 2:
        raise CommandError("syntax", "ERR syntax error")
    for option, value in zip(words[0::2], words[1::2], strict=True):
        option = option.upper()
        if option == b"ID":
            ids = integer(value)
        elif option == b"ADDR":
            address = value.decode("utf-8", "replace")
        elif option == b"SKIPME":
            skip_me = value.lower() != b"no"
        else:
            raise CommandError("syntax", f"ERR syntax error: unsupported CLIENT KILL filter "
                                         f"'{printable(option)}' (ID, ADDR, SKIPME)")
    return session.kill_clients(ids, address, skip_me)


TYPED_COMMANDS: Final[dict[bytes, CommandSpec]] = {
    **{name.encode(): CommandSpec(arity, command_typed, replicated=True)
       for name, arity in ARITY.items()},
    **{name: CommandSpec(-1, command_blocking) for name in BLOCKING},
    b"eval": CommandSpec(-3, command_eval, replicated=True),
    b"evalsha": CommandSpec(-3, command_evalsha, replicated=True),
    b"script": CommandSpec(-2, command_script),
    b"time": CommandSpec(1, command_time),
    b"role": CommandSpec(1, command_role),
}
