"""Redis transactions of one connection: ``MULTI``, ``EXEC``, ``DISCARD``, ``WATCH``, ``UNWATCH``.

Theory of operation
-------------------
A connection's :class:`Transaction` holds what Redis keeps per client: whether
a ``MULTI`` is open, the commands queued since, whether one of them was
refused at queue time (*dirty*), and the watched keys with the version each
had when it was watched. :func:`plan_transaction` decides what one command
means for it, before ``redis_commands.plan`` sees the command:

* ``None``: not a transaction matter (no ``MULTI`` open and not one of the
  five commands; or ``QUIT``/``RESET``, which run at once even inside
  ``MULTI``, as in Redis; ``RESET`` discards the transaction first);
* a :class:`~replicaio.services.kv.redis_commands.Local` reply: ``+OK``,
  ``+QUEUED``, or an error;
* a :class:`Watch`: read the watched keys' versions (one read-only SMR
  request, through the read barrier: linearizable), then remember them;
* an :class:`Exec`: the whole transaction as **one** ``exec`` command of the
  state machine (``state_machine.encode_exec``), replicated as one request:
  applied whole at one position of the log, on every replica, or not at all.

Redis's rules, kept here:

* inside ``MULTI`` a command is queued and answered ``+QUEUED``; ``EXEC``
  answers the array of their replies in order;
* a **queue-time error** (unknown command, wrong number of arguments, a
  command not allowed in a transaction, the queue bound) is answered at once
  and makes ``EXEC`` answer ``-EXECABORT`` and apply nothing;
* an error found while **running** a command (``INCR`` on a non-integer; also,
  as Redis, a bad argument such as ``SET`` with an unknown option) is that
  command's element of the ``EXEC`` array; the other commands apply;
* ``WATCH`` keys, then ``EXEC``: if any watched key was modified after it was
  watched (by anyone, this connection included, or deleted), ``EXEC`` answers
  the null array and applies nothing. The state machine checks this when it
  applies the ``exec``, against per-key versions (deterministic on every
  replica); ``EXEC`` and ``DISCARD`` clear the watches, as does ``UNWATCH``;
* ``MULTI`` inside ``MULTI``, ``WATCH`` inside ``MULTI``, ``EXEC`` or
  ``DISCARD`` without ``MULTI`` are errors (the first two leave the
  transaction open and clean);
* a closed connection discards its queue (nothing queued was sent anywhere).

Commands that may be queued: every replicated command, and ``PING``,
``ECHO``, ``UNWATCH`` (their replies are computed at queue time: they depend
on nothing replicated). Other local commands (``HELLO``, ``CLIENT``,
``SELECT``, ``CONFIG``, ``INFO``, ...) are refused at queue time.

Bounds (``RespParams``): ``transaction_commands_max`` queued commands,
``transaction_bytes_max`` bytes of them (their key-value commands, or their
arguments for local ones), ``watch_keys_max`` watched keys. Reaching one is a
queue-time error naming the bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from replicaio.services.kv.redis_commands import COMMANDS, key, plan
from replicaio.services.kv.redis_plan import (
    CommandError,
    Local,
    Replicated,
    Session,
    kv_error,
    printable,
)
from replicaio.services.kv.resp import NULL_ARRAY, OK, QUEUED, Reply, RespError
from replicaio.services.kv.state_machine import (
    BATCH_COMMANDS_MAX,
    WATCH_KEYS_MAX,
    KvError,
    KvOk,
    decode_batch_result,
    decode_exec_result,
    decode_result,
    encode_batch,
    encode_command,
    encode_exec,
)

# Each with its arity as Redis states it (n: exactly n words; -n: at least n).
TRANSACTION_COMMANDS: Final = {b"multi": 1, b"exec": 1, b"discard": 1, b"watch": -2,
                               b"unwatch": 1}
QUEUEABLE_LOCAL: Final = frozenset({b"ping", b"echo", b"unwatch"})
RUN_AT_ONCE: Final = frozenset({b"quit", b"reset"})  # even inside MULTI
QUEUE_TIME_REASONS: Final = frozenset({"unknown_command", "wrong_arity"})
EXECABORT: Final = RespError("EXECABORT Transaction discarded because of previous errors.")


@dataclass(frozen=True, slots=True)
class TransactionLimits:
    """The bounds of one connection's transaction (from ``RespParams``)."""

    commands_max: int
    bytes_max: int
    watch_keys_max: int

    def __post_init__(self) -> None:
        assert 1 <= self.commands_max <= BATCH_COMMANDS_MAX
        assert 1 <= self.watch_keys_max <= WATCH_KEYS_MAX
        assert self.bytes_max >= 1


@dataclass(frozen=True, slots=True)
class Queued:
    """A queued command: its replicated plan, or the reply computed at queue time."""

    planned: Replicated | None
    reply: Reply = None


@dataclass(slots=True)
class Transaction:
    """One connection's transaction state (see the module docstring)."""

    active: bool = False
    dirty: bool = False
    queued: list[Queued] = field(default_factory=list)
    queued_bytes: int = 0
    queued_commands: int = 0  # their key-value commands (one exec holds BATCH_COMMANDS_MAX)
    watches: dict[bytes, int] = field(default_factory=dict)  # key -> version when watched

    def discard(self) -> None:
        """Forget the queue and the watches (``EXEC``, ``DISCARD``, ``RESET``)."""
        self.active = self.dirty = False
        self.queued = []
        self.queued_bytes = self.queued_commands = 0
        self.watches = {}


@dataclass(frozen=True, slots=True)
class Watch:
    """Read the versions of ``keys`` (``command``, read-only), then watch them."""

    keys: tuple[bytes, ...]
    command: bytes

    def finish(self, transaction: Transaction, outcome: bytes | RespError) -> Reply:
        if isinstance(outcome, RespError):
            return outcome  # nothing is watched: the client may WATCH again
        if len(self.keys) == 1:
            results: Sequence[bytes] | KvError = (outcome,)
        else:
            results = decode_batch_result(outcome)
        if isinstance(results, KvError) or len(results) != len(self.keys):
            return RespError("ERR internal error: unreadable version result")
        versions: list[int] = []
        for item in results:
            result = decode_result(item)
            if not (isinstance(result, KvOk) and type(result.value) is int):
                return kv_error(result) if isinstance(result, KvError) else RespError(
                    "ERR internal error: a version is not an integer"
                )
            versions.append(result.value)
        for watched, version in zip(self.keys, versions, strict=True):
            # Watched twice: the first version counts (a change since then must abort).
            transaction.watches.setdefault(watched, version)
        return OK


@dataclass(frozen=True, slots=True)
class Exec:
    """The transaction as one ``exec`` command; ``finish`` builds ``EXEC``'s reply."""

    command: bytes
    read_only: bool
    queued: tuple[Queued, ...]
    commands: int  # key-value commands inside

    def finish(self, outcome: bytes | RespError) -> Reply:
        if isinstance(outcome, RespError):
            return outcome
        decoded = decode_exec_result(outcome)
        if decoded is None:
            return NULL_ARRAY  # a watched key changed: nothing was applied
        if isinstance(decoded, KvError) or len(decoded) != self.commands:
            return RespError(f"ERR internal error: unreadable exec result: {decoded!r}"[:200])
        results = [decode_result(item) for item in decoded]
        replies: list[Reply] = []
        offset = 0
        for queued in self.queued:
            if queued.planned is None:
                replies.append(queued.reply)
                continue
            count = len(queued.planned.commands)
            replies.append(queued.planned.finish(results[offset : offset + count]))
            offset += count
        return replies


TransactionPlan = Local | Watch | Exec | None


def plan_transaction(
    transaction: Transaction, session: Session, argv: list[bytes], limits: TransactionLimits
) -> TransactionPlan:
    """What ``argv`` means for the connection's transaction; never raises for any input."""
    name = argv[0].lower()
    arity = TRANSACTION_COMMANDS.get(name)
    if name == b"reset":
        transaction.discard()
    if arity is None:
        if not transaction.active or name in RUN_AT_ONCE:
            return None
        return queue(transaction, session, argv, limits)
    if (arity > 0 and len(argv) != arity) or (arity < 0 and len(argv) < -arity):
        return refuse(
            transaction, "wrong_arity",
            f"ERR wrong number of arguments for '{printable(name)}' command",
        )
    if name == b"multi":
        if transaction.active:
            return Local(RespError("ERR MULTI calls can not be nested"), "multi_nested")
        transaction.active = True
        return Local(OK)
    if name == b"watch":
        if transaction.active:
            return Local(RespError("ERR WATCH inside MULTI is not allowed"), "watch_in_multi")
        return watch(transaction, argv[1:], limits)
    if name == b"unwatch":
        if transaction.active:
            return queue(transaction, session, argv, limits)
        transaction.watches = {}
        return Local(OK)
    if not transaction.active:
        word = "EXEC" if name == b"exec" else "DISCARD"
        return Local(RespError(f"ERR {word} without MULTI"), f"{name.decode()}_without_multi")
    if name == b"discard":
        transaction.discard()
        return Local(OK)
    return execute(transaction)


def refuse(transaction: Transaction, reason: str, text: str) -> Local:
    """A queue-time error: answered now; inside MULTI, ``EXEC`` will abort."""
    if transaction.active:
        transaction.dirty = True
    return Local(RespError(text), reason)


def queue(
    transaction: Transaction, session: Session, argv: list[bytes], limits: TransactionLimits
) -> Local:
    """Queue a command inside MULTI (or refuse it: the transaction becomes dirty)."""
    name = argv[0].lower()
    spec = COMMANDS.get(name)
    allowed = name in QUEUEABLE_LOCAL or (spec is not None and spec.replicated)
    if spec is not None and not allowed:  # checked before planning: local commands act
        return refuse(
            transaction, "not_allowed_in_multi",
            f"ERR Command not allowed inside a transaction: '{printable(name)}' "
            "(replicaio queues replicated commands, PING, ECHO and UNWATCH)",
        )
    if len(transaction.queued) >= limits.commands_max:
        return refuse(
            transaction, "transaction_commands_max",
            f"ERR transaction too long: at most {limits.commands_max} queued commands "
            "(service.transaction_commands_max); EXEC will abort",
        )
    if name == b"unwatch":
        planned: Local | Replicated = Local(OK)
    else:
        planned = plan(session, argv)
    if isinstance(planned, Local) and planned.rejected in QUEUE_TIME_REASONS:
        assert isinstance(planned.reply, RespError) and planned.rejected is not None
        return refuse(transaction, planned.rejected, planned.reply.text)
    if isinstance(planned, Replicated):
        size = sum(len(command) for command in planned.commands)
        count = len(planned.commands)
        entry = Queued(planned)
    else:
        size = sum(len(word) for word in argv)
        count = 0
        entry = Queued(None, planned.reply)  # a reply now (PING) or a run-time error
    if transaction.queued_commands + count > BATCH_COMMANDS_MAX:
        return refuse(
            transaction, "transaction_commands_max",
            f"ERR transaction too long: at most {BATCH_COMMANDS_MAX} key-value operations "
            "in one transaction; EXEC will abort",
        )
    if transaction.queued_bytes + size > limits.bytes_max:
        return refuse(
            transaction, "transaction_bytes_max",
            f"ERR transaction too large: at most {limits.bytes_max} bytes of queued commands "
            "(service.transaction_bytes_max); EXEC will abort",
        )
    transaction.queued.append(entry)
    transaction.queued_bytes += size
    transaction.queued_commands += count
    return Local(QUEUED)


def watch(
    transaction: Transaction, words: list[bytes], limits: TransactionLimits
) -> Local | Watch:
    """``WATCH key...``: a read of the versions of the keys not watched yet."""
    fresh: dict[bytes, None] = {}
    for word in words:
        try:
            checked = key(word)
        except CommandError as error:
            return Local(RespError(error.text), error.reason)
        if checked not in transaction.watches:
            fresh[checked] = None
    if len(transaction.watches) + len(fresh) > limits.watch_keys_max:
        return Local(
            RespError(
                f"ERR too many watched keys: at most {limits.watch_keys_max} per connection "
                "(service.watch_keys_max)"
            ),
            "watch_keys_max",
        )
    if not fresh:
        return Local(OK)
    keys = tuple(fresh)
    commands = [encode_command("version", watched) for watched in keys]
    command = commands[0] if len(commands) == 1 else encode_batch(commands)
    return Watch(keys, command)


def execute(transaction: Transaction) -> Local | Exec:
    """``EXEC`` inside MULTI: abort if dirty, else the transaction as one command."""
    queued = tuple(transaction.queued)
    watches = tuple(transaction.watches.items())
    dirty = transaction.dirty
    transaction.discard()  # EXEC ends the transaction and clears the watches, always
    if dirty:
        return Local(EXECABORT, "execabort")
    commands = [
        command
        for entry in queued
        if entry.planned is not None
        for command in entry.planned.commands
    ]
    if not commands and not watches:
        return Local([entry.reply for entry in queued])  # nothing replicated to wait for
    read_only = all(entry.planned.read_only for entry in queued if entry.planned is not None)
    return Exec(encode_exec(watches, commands), read_only, queued, len(commands))
