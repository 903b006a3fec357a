"""The replicated key-value store's state machine: deterministic, bounded, msgpack.

Theory of operation
-------------------
:class:`KeyValueStateMachine` implements ``replicaio.smr.api.StateMachine``.
SMR hands it committed commands in the same order on every replica; it
executes them against a ``dict[bytes, bytes]`` and answers a result. It reads
no clock, no randomness and nothing but its inputs, so the same commands from
the same snapshot give the same results and the same state, byte for byte.

Every command is a msgpack array ``[op, key, arguments...]``; every result is
``["ok", payload]`` or ``["error", code, detail]``. The exact format, one row
per operation, is in ``docs/smr.md`` ("The key-value commands") and below:

============  ===============================  ===========================
op            arguments                         ``ok`` payload
============  ===============================  ===========================
``get``       key                               value (bin) or nil
``put``       key, value                        nil
``delete``    key                               true if the key existed
``cas``       key, expected (bin or nil), new   true if swapped, else false
``append``    key, suffix                       the new length (int)
``incr``      key, delta (int)                  the new value (int)
``version``   key                               the key's version (int)
``batch``     [command bytes, ...]              [result bytes, ...]
``exec``      [[key, version], ...],            [result bytes, ...], or nil
              [command bytes, ...]              if a watched key changed
``redis``     name (str), [argument bytes...]   the command's reply (see below)
``at``        time_ms, a read command           the read's payload (reads only)
============  ===============================  ===========================

**Redis commands.** ``redis`` runs one of the Redis commands of
:data:`~replicaio.services.kv.commands_table.REDIS_COMMANDS` (hashes, lists,
sets, sorted sets, expiry, keyspace, the string commands with options) on
typed values (``values``); its payload is bytes, an int, nil, a ``str`` (a
Redis simple string), or an array of those; its Redis errors are ``["error",
"redis", text]`` with the exact Redis text. The string operations above
(``get``, ``incr``...) on a key of another type fail ``wrong_type``.

**Time and expiry.** The store keeps the time of the log, ``now_ms``: SMR
calls :meth:`KeyValueStateMachine.advance_clock` with each committed batch's
time stamp (the leader's clock), and the store never lets it go back. A key
with a deadline at or before ``now_ms`` is gone: it is removed (through the
ordinary removal, so its version changes and ``WATCH`` sees it) when a command
touches it, and up to ``expire_per_batch_max`` due keys are removed, earliest
deadline first, whenever the clock advances, so expired keys do not pile up.
A read runs on the state at its read index, which may be older than the
clock of the node serving it: ``["at", time_ms, read]`` (the front sends
reads so, with its own clock) sees the keys due by ``max(now_ms, time_ms)``
as absent, without removing anything. Every replica computes the same state:
time enters only through the log.

Keys and values are ``bytes``. ``cas`` with ``expected`` nil succeeds only if
the key is absent. ``append`` onto an absent key creates it. ``incr`` reads an
absent key as 0, needs the stored value to be a decimal integer as Redis
reads them (ASCII, optional leading ``-``, no leading zero, no ``-0``) and
keeps values within signed 64 bits.

``batch`` (used by the Redis front to carry a client's pipeline as one
replicated request) executes up to :data:`BATCH_COMMANDS_MAX` commands in
order, at one position of the log, and answers each one's own result, exactly
as if they had been applied one by one; a failing command does not stop the
others (no rollback, like a Redis pipeline). ``read`` takes a batch of ``get``
commands. A batch inside a batch is ``bad_arguments``. Build one with
:func:`encode_batch`, read its result with :func:`decode_batch_result`. A
batch's results beyond its first command's (one value, at most
``value_bytes_max``) add up to at most ``result_bytes_max``: the batch stops
after the command whose result goes beyond it, and every command after that
one is answered ``result_too_large`` *without running*, so a result fits in
one message of the node's codec whatever a client asks for (many ``get`` s of
large values), and a front sends the rest again as the next request: the
commands still run in order, each once.

``exec`` is a Redis transaction (``MULTI`` ... ``EXEC``, optionally after
``WATCH``): one replicated command, so it is applied whole at one position of
the log or not at all. First its *watches* are checked: each names a key and
the version ``version`` answered for it when the client watched it (a
linearizable read). If any key's version differs now, the key was modified
since, and ``exec`` answers nil and applies nothing. Otherwise its commands run
in order, each answering its own result, like a batch: one failing at run time
(``incr`` on a non-integer) does not stop or undo the others (Redis's rule).
Build one with :func:`encode_exec`, read its result with
:func:`decode_exec_result`. ``read`` takes an ``exec`` of reads.

**Versions.** Every modification of a key (a ``put``, a successful ``cas``, an
``append``, an ``incr``, a ``delete`` of a present key) takes the next number
of a store-wide counter, ``revision``, as that key's version. A deleted key
keeps its version as a *tombstone*, so watching an absent key still sees it
created and deleted again; at most ``KvParams.tombstones_max`` tombstones are
kept, the oldest forgotten first, and ``floor`` (the highest revision forgotten)
is the version of every key without a version: versions only grow, so a
modification after a watch always changes the version the watch read. The
price of the bound is a rare spurious abort (a watched absent key whose
version rose to a new ``floor``), which Redis clients retry as any conflict.
Versions are part of the replicated state (and of the snapshot): every replica
computes the same ones.

A bad command is replicated like any other, so it must fail the same way on
every replica and never raise: it returns an error result with a stable
``code`` (:data:`ERROR_CODES`) and bumps :attr:`KeyValueStateMachine.errors`.
Bounds (:class:`KvParams`): key and value sizes, the number of keys (a
``put`` of a new key into a full store is ``full``), the items of one
collection (``items_max``) and the bytes of the whole store (``bytes_max``,
counted by ``values.value_bytes``: a command that would go beyond it is
``full``), so memory is bounded.

Snapshots (``kv_snapshot``) are ``["replicaio.kv", 3, [[key, type, value,
version, deadline], ...], revision, floor, [[key, version], ...], now_ms]``;
:data:`SNAPSHOT_VERSION` is 3. Format 2 (strings only, no expiry) is still
read; format 1 (no versions) is refused, as is any unknown version, with
:class:`KvSnapshotError` naming it.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import msgspec

from replicaio.core.codec import Codec, DecodeError, EncodeError
from replicaio.core.errors import ConfigError, UsageError
from replicaio.services.kv.commands_table import REDIS_COMMANDS
from replicaio.services.kv.kv_snapshot import (
    SNAPSHOT_FORMAT,
    SNAPSHOT_VERSION,
    decode_snapshot,
    encode_snapshot,
)
from replicaio.services.kv.values import (
    DECIMAL,
    ERROR_CODES,
    INT64_MAX,
    INT64_MIN,
    KEY_OVERHEAD_BYTES,
    WRONGTYPE,
    Collection,
    Refused,
    Value,
    value_bytes,
)

__all__ = ["ERROR_CODES", "INT64_MAX", "INT64_MIN", "SNAPSHOT_FORMAT", "SNAPSHOT_VERSION"]

GET: Final = "get"
PUT: Final = "put"
DELETE: Final = "delete"
CAS: Final = "cas"
APPEND: Final = "append"
INCR: Final = "incr"
VERSION: Final = "version"
REDIS: Final = "redis"  # one Redis command on typed values (commands_table)
AT: Final = "at"  # a read at a node's clock
OPERATIONS: Final = (GET, PUT, DELETE, CAS, APPEND, INCR, VERSION, REDIS)
READS: Final = frozenset({GET, VERSION})
BATCH: Final = "batch"  # a sequence of the operations above (not itself an operation)
EXEC: Final = "exec"  # a transaction: watches, then a sequence of operations
BATCH_COMMANDS_MAX: Final = 4096  # also the commands of one exec
WATCH_KEYS_MAX: Final = 4096  # watches carried by one exec

OK: Final = "ok"
ERROR: Final = "error"


RESULT_OVERHEAD_BYTES: Final = 16  # a result's envelope around its value, at most
SNAPSHOT_HEADER_BYTES: Final = 256  # a snapshot's format, version, counters and array headers
TOMBSTONE_OVERHEAD_BYTES: Final = 16  # a tombstone's encoding beyond its key's bytes
# A string value (or one field, element or member), at most: Redis's own limit is
# 512 MB; this one keeps a value, its command and its batch within one log entry,
# one peer message and one WAL record (docs/kv.md, "Large values").
VALUE_BYTES_MAX_DEFAULT: Final = 8 * 1024 * 1024
# The largest a cluster may set it to (the protocol's values= parameter): a value
# is one Raft log entry, sent alone in one peer frame, and one WAL record (at
# most 64 MiB, storage.base).
VALUE_BYTES_CEILING: Final = 32 * 1024 * 1024

_DECIMAL = DECIMAL

_ARITY: Final = {
    GET: 2, PUT: 3, DELETE: 2, CAS: 4, APPEND: 3, INCR: 3, VERSION: 2, BATCH: 2, EXEC: 3,
    REDIS: 3, AT: 3,
}
COMPOUND: Final = frozenset({BATCH, EXEC, REDIS, AT})  # not built by encode_command


class KvSnapshotError(UsageError):
    """A snapshot that :meth:`KeyValueStateMachine.snapshot` did not produce."""


@dataclass(frozen=True, slots=True)
class KvParams:
    """Bounds of one store (validated)."""

    key_bytes_max: int = 1024
    value_bytes_max: int = VALUE_BYTES_MAX_DEFAULT
    keys_max: int = 100_000
    command_bytes_max: int = VALUE_BYTES_MAX_DEFAULT + 64 * 1024
    # The results of one batch beyond its first command's (a value, at most):
    # with the short errors that replace what does not fit (BATCH_COMMANDS_MAX of
    # them), a batch's reply stays within one codec frame.
    result_bytes_max: int = 768 * 1024
    tombstones_max: int = 100_000  # versions of deleted keys kept for WATCH
    items_max: int = 65_536  # fields, elements or members of one collection
    bytes_max: int = 512 * 1024 * 1024  # the whole store (values.value_bytes of every key)
    expire_per_batch_max: int = 256  # due keys removed each time the clock advances

    def validate(self) -> KvParams:
        """Raise :class:`ConfigError` unless the bounds are usable."""
        for name in (
            "key_bytes_max", "value_bytes_max", "keys_max", "command_bytes_max", "tombstones_max",
            "items_max", "bytes_max", "expire_per_batch_max",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"KvParams.{name} must be >= 1")
        if self.result_bytes_max < RESULT_OVERHEAD_BYTES:
            raise ConfigError(f"KvParams.result_bytes_max must be >= {RESULT_OVERHEAD_BYTES}")
        if self.command_bytes_max < self.key_bytes_max + self.value_bytes_max:
            raise ConfigError(
                "KvParams.command_bytes_max must hold a key and a value "
                f"({self.key_bytes_max} + {self.value_bytes_max})"
            )
        return self

    def snapshot_bytes_bound(self) -> int:
        """The most :meth:`KeyValueStateMachine.snapshot` takes, encoded: the
        counted bytes (``bytes_max``; ``values.KEY_OVERHEAD_BYTES`` and
        ``ITEM_OVERHEAD_BYTES`` cover each entry's encoding), the tombstones,
        and the header. A protocol that cannot carry this much to a lagging
        replica would leave it behind for good once the store grew that large
        (``assembly.check_snapshot_fits`` refuses such a cluster)."""
        tombstones = self.tombstones_max * (self.key_bytes_max + TOMBSTONE_OVERHEAD_BYTES)
        return SNAPSHOT_HEADER_BYTES + self.bytes_max + tombstones

    def result_bytes_bound(self) -> int:
        """The most one command's (or batch's) encoded result takes: its first
        value, the rest within ``result_bytes_max``, and the short errors of
        the commands that did not fit."""
        return self.value_bytes_max + self.result_bytes_max + BATCH_COMMANDS_MAX * 64


# -- client side: commands and results ---------------------------------------

_CLIENT_CODEC = Codec(frame_bytes_max=VALUE_BYTES_CEILING + (1 << 20))


# The client codec's encoder without its checks, for the two commands a front
# builds per plain SET or GET from a key and a value it has bounded (ADR 0064).
_ENCODE: Final = msgspec.msgpack.Encoder().encode


def encode_put(key: bytes, value: bytes) -> bytes:
    """``encode_command("put", key, value)``, byte for byte, for a ``key`` and a
    ``value`` within the client codec's frame (a front's bounded arguments)."""
    return _ENCODE(["put", key, value])


def encode_get(key: bytes) -> bytes:
    """``encode_command("get", key)``, byte for byte (``key`` bounded, as above)."""
    return _ENCODE(["get", key])


# The result of every ``put`` that stored its value (``["ok", nil]``): a front
# answers a SET that got it without decoding it.
PUT_RESULT: Final = _CLIENT_CODEC.encode_value([OK, None])


def encode_command(op: str, key: bytes, *arguments: bytes | int | None) -> bytes:
    """The command bytes of ``op`` on ``key`` (see the module table).

    Raises :class:`UsageError` for an operation or argument the format has no
    room for (a caller bug); range and size checks are the store's job.
    """
    if op not in _ARITY or op in COMPOUND:
        raise UsageError(f"unknown key-value operation {op!r}")
    if len(arguments) + 2 != _ARITY[op]:
        raise UsageError(f"{op} takes {_ARITY[op] - 2} argument(s), got {len(arguments)}")
    try:
        return _CLIENT_CODEC.encode_value([op, key, *arguments])
    except EncodeError as error:
        raise UsageError(f"cannot encode {op} command: {error}") from None


def encode_redis(name: str, *arguments: bytes) -> bytes:
    """The command bytes of the Redis command ``name`` (lower case) on typed values."""
    try:
        return _CLIENT_CODEC.encode_value([REDIS, name, list(arguments)])
    except EncodeError as error:
        raise UsageError(f"cannot encode {name} command: {error}") from None


def encode_at(time_ms: int, command: bytes) -> bytes:
    """A read ``command`` to run as if the log's clock were at least ``time_ms``."""
    try:
        return _CLIENT_CODEC.encode_value([AT, time_ms, command])
    except EncodeError as error:
        raise UsageError(f"cannot encode at: {error}") from None


def encode_batch(commands: list[bytes] | tuple[bytes, ...]) -> bytes:
    """The command bytes of a ``batch`` of already encoded commands."""
    if not 1 <= len(commands) <= BATCH_COMMANDS_MAX:
        raise UsageError(f"a batch holds 1..{BATCH_COMMANDS_MAX} commands, got {len(commands)}")
    try:
        return _CLIENT_CODEC.encode_value([BATCH, list(commands)])
    except EncodeError as error:
        raise UsageError(f"cannot encode batch: {error}") from None


def encode_exec(
    watches: list[tuple[bytes, int]] | tuple[tuple[bytes, int], ...],
    commands: list[bytes] | tuple[bytes, ...],
) -> bytes:
    """The command bytes of an ``exec``: check ``watches`` (key, version), then run
    the already encoded ``commands`` (possibly none)."""
    if len(commands) > BATCH_COMMANDS_MAX or len(watches) > WATCH_KEYS_MAX:
        raise UsageError(
            f"an exec holds at most {BATCH_COMMANDS_MAX} commands and {WATCH_KEYS_MAX} watches"
        )
    try:
        return _CLIENT_CODEC.encode_value(
            [EXEC, [[key, version] for key, version in watches], list(commands)]
        )
    except EncodeError as error:
        raise UsageError(f"cannot encode exec: {error}") from None


@dataclass(frozen=True, slots=True)
class KvOk:
    """A successful result; ``value`` as in the module table."""

    value: bytes | int | bool | str | tuple[object, ...] | None


@dataclass(frozen=True, slots=True)
class KvError:
    """A typed failure: ``code`` is one of :data:`ERROR_CODES` (or ``bad_result``
    when the result bytes themselves are unreadable)."""

    code: str
    detail: str


KvResult = KvOk | KvError


def decode_result(data: bytes) -> KvResult:
    """Read a result; never raises (unreadable bytes give ``KvError("bad_result")``,
    since under a Byzantine model they may come from a faulty replica)."""
    try:
        value = _CLIENT_CODEC.decode_value(data)
    except DecodeError as error:
        return KvError("bad_result", str(error))
    if isinstance(value, tuple) and len(value) == 2 and value[0] == OK:
        payload = value[1]
        if payload is None or isinstance(payload, bytes | int | bool | str | tuple):
            return KvOk(payload)
    if (
        isinstance(value, tuple)
        and len(value) == 3
        and value[0] == ERROR
        and isinstance(value[1], str)
        and isinstance(value[2], str)
    ):
        return KvError(value[1], value[2])
    return KvError("bad_result", f"not a result: {value!r}"[:200])


def decode_batch_result(data: bytes) -> tuple[bytes, ...] | KvError:
    """The per-command result bytes of a ``batch`` (each one for :func:`decode_result`),
    or the batch's own error; never raises."""
    try:
        value = _CLIENT_CODEC.decode_value(data)
    except DecodeError as error:
        return KvError("bad_result", str(error))
    if (
        isinstance(value, tuple)
        and len(value) == 2
        and value[0] == OK
        and isinstance(value[1], tuple)
        and all(isinstance(item, bytes) for item in value[1])
    ):
        return tuple(item for item in value[1] if isinstance(item, bytes))
    result = decode_result(data)
    if isinstance(result, KvError):
        return result
    return KvError("bad_result", "not a batch result")


def decode_exec_result(data: bytes) -> tuple[bytes, ...] | KvError | None:
    """The per-command result bytes of an ``exec``, ``None`` if it was aborted (a
    watched key changed: nothing was applied), or its own error; never raises."""
    try:
        value = _CLIENT_CODEC.decode_value(data)
    except DecodeError as error:
        return KvError("bad_result", str(error))
    if isinstance(value, tuple) and len(value) == 2 and value[0] == OK and value[1] is None:
        return None
    return decode_batch_result(data)


def is_write(command: bytes) -> bool:
    """Whether ``command`` may change the state (anything but a well-formed read)."""
    try:
        value = _CLIENT_CODEC.decode_value(command)
    except DecodeError:
        return True
    if isinstance(value, tuple) and len(value) == 3 and value[0] == AT:
        return not isinstance(value[2], bytes) or is_write(value[2])
    if isinstance(value, tuple) and len(value) == 3 and value[0] == REDIS:
        spec = REDIS_COMMANDS.get(value[1]) if isinstance(value[1], str) else None
        return spec is None or not spec.read_only
    return not (isinstance(value, tuple) and len(value) == 2 and value[0] in READS)


# -- the state machine --------------------------------------------------------


_Refused = Refused  # (the store's historical name)


class KeyValueStateMachine:
    """A deterministic store of typed values with expiry; see the module docstring."""

    __slots__ = (
        "_codec", "data", "errors", "expires", "expiry_heap", "floor", "now_ms", "params",
        "reading", "revision", "sizes", "tombstones", "used_bytes", "versions", "view_ms",
    )

    def __init__(self, params: KvParams | None = None) -> None:
        self.params = (params or KvParams()).validate()
        self.data: dict[bytes, Value] = {}
        self.versions: dict[bytes, int] = {}  # present key -> revision of its last change
        self.tombstones: dict[bytes, int] = {}  # deleted key -> revision; oldest first
        self.revision = 0  # modifications so far: the last version handed out
        self.floor = 0  # the version of a key in neither table (see the module docstring)
        self.expires: dict[bytes, int] = {}  # key -> deadline (ms of the log's clock)
        # (deadline, key), possibly stale (checked against expires); popped in order
        self.expiry_heap: list[tuple[int, bytes]] = []
        self.now_ms = 0  # the log's clock: the largest batch time stamp applied
        self.reading = False  # a read runs: expired keys are hidden, never removed
        self.view_ms = 0  # a read's clock: max(now_ms, the time it was sent at)
        self.sizes: dict[bytes, int] = {}  # key -> values.value_bytes
        self.used_bytes = 0
        # error code -> how many commands failed with it (a client's bad input)
        self.errors: dict[str, int] = {}
        # One codec for commands, results and snapshots (each codec holds a packer
        # buffer); the size of a command is checked apart, in _parse.
        params = self.params
        self._codec = Codec(
            frame_bytes_max=min(
                1 << 40,
                1024 + 2 * params.bytes_max + params.keys_max * 128
                + params.tombstones_max * (params.key_bytes_max + 16),
            ),
            items_max=max(8, params.keys_max, params.tombstones_max, WATCH_KEYS_MAX,
                          2 * params.items_max),
            depth_max=4,
        )

    def version(self, key: bytes) -> int:
        """The version of ``key`` (see the module docstring)."""
        found = self.versions.get(key)
        if found is None:
            found = self.tombstones.get(key, self.floor)
        return found

    # -- Clocked -----------------------------------------------------------------

    def advance_clock(self, time_ms: int) -> None:
        """``smr.api.Clocked``: the log's clock is now at least ``time_ms``; remove up
        to ``expire_per_batch_max`` keys that are due, earliest deadline first."""
        if type(time_ms) is not int or time_ms <= self.now_ms:
            return
        self.now_ms = time_ms
        heap, expires = self.expiry_heap, self.expires
        removed = 0
        while heap and heap[0][0] <= time_ms and removed < self.params.expire_per_batch_max:
            deadline, key = heapq.heappop(heap)
            if expires.get(key) == deadline:
                self._remove(key)
                removed += 1

    def now(self) -> int:
        """The clock commands run at: the log's, or a read's (never earlier)."""
        return self.view_ms if self.reading else self.now_ms

    # -- StateMachine ----------------------------------------------------------

    def apply(self, command: bytes) -> bytes:
        """Execute ``command``; an error result for a bad one, never an exception.

        A ``put`` of a string within every bound (a Redis ``SET``: the commonest
        command) is stored here, in one function, as ``_store`` and ``touch``
        would store it (ADR 0064); any other command, or a ``put`` the store
        would refuse, takes the general path (:meth:`_apply_value`), which
        answers it exactly (nothing has changed by then)."""
        params = self.params
        if type(command) is not bytes or len(command) > params.command_bytes_max:
            return self._apply(command, nested=False)  # malformed, said by _decode
        try:
            value = self._codec.decode_value(command)
        except DecodeError:
            return self._apply(command, nested=False)
        if type(value) is tuple and len(value) == 3 and value[0] == PUT:
            key, data = value[1], value[2]
            if (type(key) is bytes and type(data) is bytes
                    and len(key) <= params.key_bytes_max and len(data) <= params.value_bytes_max):
                stored = self.data
                sizes = self.sizes
                size = len(key) + KEY_OVERHEAD_BYTES + len(data)  # values.value_bytes
                extra = size - sizes.get(key, 0)
                if ((key in stored or len(stored) < params.keys_max)
                        and self.used_bytes + extra <= params.bytes_max):
                    stored[key] = data
                    self.expires.pop(key, None)
                    self.used_bytes += extra
                    sizes[key] = size
                    self.revision += 1
                    self.versions[key] = self.revision
                    self.tombstones.pop(key, None)
                    return PUT_RESULT
        return self._apply_value(value, nested=False)

    def _apply(self, command: bytes, *, nested: bool) -> bytes:
        try:
            value = self._decode(command)
        except _Refused as refused:
            return self._error(refused)
        return self._apply_value(value, nested=nested)

    def _apply_value(self, value: object, *, nested: bool) -> bytes:
        """Execute a decoded command (see :meth:`_decode`)."""
        try:
            op, key, arguments = self._parse_value(value, nested=nested)
            if op == BATCH:
                payload: object = self._batch(arguments, self._apply, stop=True)
            elif op == EXEC:
                payload = self._exec(arguments, self._apply)
            elif op == AT:
                raise _Refused("bad_arguments", "at is for reads only")
            else:
                payload = self._execute(op, key, arguments)
        except _Refused as refused:
            return self._error(refused)
        return self._codec.encode_value([OK, payload])

    def _batch(
        self, commands: tuple[object, ...], run: Callable[..., bytes], *, stop: bool = False
    ) -> tuple[bytes, ...]:
        """Each command's result, in order. With ``stop`` (a batch), once the
        results exceed ``result_bytes_max`` the commands after the one that went
        beyond do not run and are answered ``result_too_large`` (a front sends
        them again): a result stays below ``result_bytes_max`` + one result (one
        value) + ``len(commands) * TOO_LARGE_BYTES``. Without (an exec: all or
        nothing) every command runs, its results may add up to one value more
        (``value_bytes_max``: a transaction that writes and reads back one large
        value), and a result that does not fit is replaced by
        ``result_too_large``."""
        results: list[bytes] = []
        size = 0
        budget = self.params.result_bytes_max
        if not stop:
            budget += self.params.value_bytes_max + RESULT_OVERHEAD_BYTES
        stopped = False
        for item in commands:
            if not isinstance(item, bytes):  # checked by _command_list
                continue
            if stopped:
                results.append(self._error(_Refused("result_too_large", "not run")))
                continue
            result = run(item, nested=True)
            if stop:
                stopped = size + len(result) > budget
            elif size + len(result) > budget:
                result = self._error(_Refused("result_too_large", ""))
            size += len(result)
            results.append(result)
        return tuple(results)

    def read(self, command: bytes) -> bytes:
        """Execute a read-only command (``get``, ``version``, a read ``redis``
        command, or a batch or exec of them, possibly inside ``at``); anything
        else is ``not_read_only``. Never changes the state."""
        self.reading, self.view_ms = True, self.now_ms
        try:
            return self._read(command, nested=False)
        finally:
            self.reading = False

    def _read(self, command: bytes, *, nested: bool) -> bytes:
        try:
            op, key, arguments = self._parse(command, nested=nested)
            if op == AT:
                time_ms, inner = arguments
                assert type(time_ms) is int and isinstance(inner, bytes)  # checked by _parse
                self.view_ms = max(self.now_ms, time_ms)
                return self._read(inner, nested=False)
            if op == BATCH:
                payload: object = self._batch(arguments, self._read, stop=True)
            elif op == EXEC:
                payload = self._exec(arguments, self._read)
            elif op == REDIS and REDIS_COMMANDS[str(key.decode())].read_only:
                payload = self._execute(op, key, arguments)
            elif op not in READS:
                raise _Refused("not_read_only", f"{op} changes the state")
            else:
                payload = self._execute(op, key, arguments)
        except _Refused as refused:
            return self._error(refused)
        return self._codec.encode_value([OK, payload])

    def _exec(
        self, arguments: tuple[object, ...], run: Callable[..., bytes]
    ) -> tuple[bytes, ...] | None:
        """Check the watches; if none changed, run every command (``run``: apply or read)."""
        watches, commands = arguments
        assert isinstance(watches, tuple) and isinstance(commands, tuple)  # checked by _parse
        for watch in watches:
            assert isinstance(watch, tuple)
            key, version = watch
            assert isinstance(key, bytes)
            if not self.reading:
                self.lookup(key)  # a key due to expire goes now: its version changes
            if self.version(key) != version:
                return None
        return self._batch(commands, run)

    def snapshot(self) -> bytes:
        """The whole state, versioned, keys in byte order (equal states, equal bytes)."""
        return encode_snapshot(self, self._codec)

    def restore(self, snapshot: bytes) -> None:
        """Replace the state by ``snapshot``; :class:`KvSnapshotError` if it is not one."""
        try:
            value = self._codec.decode_value(snapshot)
        except DecodeError as error:
            raise KvSnapshotError(f"unreadable key-value snapshot: {error}") from None
        state = decode_snapshot(value, self.params, KvSnapshotError)
        self.data, self.versions, self.tombstones, self.expires = (
            state.data, state.versions, state.tombstones, state.expires
        )
        self.revision, self.floor, self.now_ms = state.revision, state.floor, state.now_ms
        self.expiry_heap = sorted((deadline, key) for key, deadline in self.expires.items())
        self.sizes = {key: value_bytes(key, item) for key, item in self.data.items()}
        self.used_bytes = sum(self.sizes.values())
        assert len(self.data) <= self.params.keys_max

    # -- parsing and execution ---------------------------------------------------

    def _parse(
        self, command: bytes, *, nested: bool = False
    ) -> tuple[str, bytes, tuple[object, ...]]:
        return self._parse_value(self._decode(command), nested=nested)

    def _decode(self, command: bytes) -> object:
        """The plain data of ``command``; ``malformed`` if it is not bytes within
        ``command_bytes_max`` that decode."""
        if type(command) is not bytes:
            raise _Refused("malformed", "a command is bytes")
        if len(command) > self.params.command_bytes_max:
            raise _Refused("malformed", f"command of {len(command)} bytes over command_bytes_max")
        try:
            return self._codec.decode_value(command)
        except DecodeError as error:
            raise _Refused("malformed", str(error)) from None

    def _parse_value(
        self, value: object, *, nested: bool = False
    ) -> tuple[str, bytes, tuple[object, ...]]:
        """``(op, key, arguments)`` of a decoded command, its shape checked."""
        if not isinstance(value, tuple) or not value or not isinstance(value[0], str):
            raise _Refused("malformed", "a command is an array starting with the operation")
        op = value[0]
        arity = _ARITY.get(op)
        if arity is None:
            raise _Refused("unknown_op", f"no operation {op!r}"[:200])
        if len(value) != arity:
            raise _Refused("bad_arguments", f"{op} takes {arity - 2} argument(s)")
        if op in (BATCH, EXEC, AT) and nested:
            raise _Refused("bad_arguments", f"{op} inside a batch or exec")
        if op == BATCH:
            return op, b"", _command_list(value[1], 1)
        if op == EXEC:
            return op, b"", (self._watches(value[1]), _command_list(value[2], 0))
        if op == AT:
            if type(value[1]) is not int or not isinstance(value[2], bytes):
                raise _Refused("bad_arguments", "at is [time_ms, command]")
            return op, b"", value[1:]
        if op == REDIS:
            name, arguments = value[1], value[2]
            if not isinstance(name, str) or name not in REDIS_COMMANDS:
                raise _Refused("unknown_op", f"no Redis command {name!r}"[:200])
            if not isinstance(arguments, tuple):
                raise _Refused("bad_arguments", "a Redis command's arguments are an array")
            return op, name.encode(), arguments
        key = value[1]
        if not isinstance(key, bytes):
            raise _Refused("bad_arguments", "the key is bytes")
        if len(key) > self.params.key_bytes_max:
            raise _Refused("key_too_large", f"key of {len(key)} bytes")
        return op, key, value[2:]

    def _watches(self, watches: object) -> tuple[object, ...]:
        if not (isinstance(watches, tuple) and len(watches) <= WATCH_KEYS_MAX):
            raise _Refused("bad_arguments", f"exec watches are at most {WATCH_KEYS_MAX} pairs")
        for watch in watches:
            if not (
                isinstance(watch, tuple)
                and len(watch) == 2
                and isinstance(watch[0], bytes)
                and len(watch[0]) <= self.params.key_bytes_max
                and type(watch[1]) is int
            ):
                raise _Refused("bad_arguments", "an exec watch is [key, version]")
        return watches

    def _execute(self, op: str, key: bytes, arguments: tuple[object, ...]) -> object:
        if op == REDIS:
            return REDIS_COMMANDS[key.decode()].handler(self, arguments)
        if op == GET:
            return self.string(key)
        if op == VERSION:
            if not self.reading:
                self.lookup(key)
            return self.version(key)
        if op == DELETE:
            self.lookup(key)
            return self._remove(key)
        if op == PUT:
            self._store(key, self._bytes_argument(arguments[0]))
            return None
        if op == CAS:
            expected, new = arguments
            if expected is not None and not isinstance(expected, bytes):
                raise _Refused("bad_arguments", "cas expected is bytes or nil")
            new_value = self._bytes_argument(new)
            if self.string(key) != expected:
                return False
            self._store(key, new_value)
            return True
        if op == APPEND:
            suffix = self._bytes_argument(arguments[0])
            appended = (self.string(key) or b"") + suffix
            self._store(key, appended, keep_ttl=True)
            return len(appended)
        assert op == INCR
        return self._increment(key, arguments[0])

    def _increment(self, key: bytes, delta: object) -> int:
        if type(delta) is not int or not INT64_MIN <= delta <= INT64_MAX:
            raise _Refused("bad_arguments", "incr delta is a signed 64-bit int")
        current = self.string(key)
        if current is None:
            number = 0
        elif _DECIMAL.fullmatch(current) is None or not (
            INT64_MIN <= int(current) <= INT64_MAX
        ):
            raise _Refused("not_integer", "the value is not a signed 64-bit decimal integer")
        else:
            number = int(current)
        total = number + delta
        if not INT64_MIN <= total <= INT64_MAX:
            raise _Refused("overflow", "incr result outside signed 64 bits")
        self._store(key, str(total).encode("ascii"), keep_ttl=True)
        return total

    def _bytes_argument(self, value: object) -> bytes:
        if not isinstance(value, bytes):
            raise _Refused("bad_arguments", "values are bytes")
        if len(value) > self.params.value_bytes_max:
            raise _Refused("value_too_large", f"at most {self.params.value_bytes_max} bytes")
        return value

    # -- the store's primitives (the typed commands use only these) ---------------

    def lookup(self, key: bytes) -> Value | None:
        """The value of ``key``, or None if absent or expired (an expired key is
        removed, unless a read runs: then it is only hidden)."""
        found = self.data.get(key)
        if found is None:
            return None
        deadline = self.expires.get(key)
        if deadline is not None and deadline <= self.now():
            if not self.reading:
                self._remove(key)
            return None
        return found

    def string(self, key: bytes) -> bytes | None:
        """The string at ``key``; ``wrong_type`` if it holds a collection."""
        found = self.lookup(key)
        if found is not None and not isinstance(found, bytes):
            raise _Refused("wrong_type", WRONGTYPE)
        return found

    def collection(self, key: bytes, kind: type[Collection]) -> Collection | None:
        """The collection of type ``kind`` at ``key``; a Redis WRONGTYPE otherwise."""
        found = self.lookup(key)
        if found is not None and type(found) is not kind:
            raise _Refused("redis", WRONGTYPE)
        return found

    def room(self, extra_bytes: int) -> None:
        """Refuse (``full``) a change that would take the store beyond ``bytes_max``."""
        if self.used_bytes + extra_bytes > self.params.bytes_max:
            raise _Refused("full", f"the store holds {self.used_bytes} bytes (bytes_max)")

    def _store(self, key: bytes, value: Value, *, keep_ttl: bool = False) -> None:
        """Set ``key`` to ``value`` (a new version; the expiry is dropped unless
        ``keep_ttl``)."""
        if isinstance(value, bytes) and len(value) > self.params.value_bytes_max:
            raise _Refused("value_too_large", f"at most {self.params.value_bytes_max} bytes")
        if key not in self.data and len(self.data) >= self.params.keys_max:
            raise _Refused("full", f"{self.params.keys_max} keys already")
        size = value_bytes(key, value)
        self.room(size - self.sizes.get(key, 0))
        self.data[key] = value
        if not keep_ttl:
            self.expires.pop(key, None)
        self.touch(key, size)

    def touch(self, key: bytes, size: int | None = None) -> None:
        """``key`` was changed in place: a new version, its size counted again; an
        emptied collection is removed (as Redis does)."""
        value = self.data[key]
        if not isinstance(value, bytes) and not value:
            self._remove(key)
            return
        size = value_bytes(key, value) if size is None else size
        self.used_bytes += size - self.sizes.get(key, 0)
        self.sizes[key] = size
        self.revision += 1
        self.versions[key] = self.revision
        self.tombstones.pop(key, None)

    def set_deadline(self, key: bytes, deadline: int | None) -> None:
        """Give ``key`` (present) a deadline, or none; a modification (new version)."""
        assert key in self.data
        if deadline is None:
            if self.expires.pop(key, None) is None:
                return
        else:
            self.expires[key] = deadline
            heap = self.expiry_heap
            heapq.heappush(heap, (deadline, key))
            if len(heap) > 2 * len(self.expires) + 64:  # stale entries: rebuild
                self.expiry_heap = sorted((due, name) for name, due in self.expires.items())
        self.touch(key)

    def _remove(self, key: bytes) -> bool:
        """Delete ``key`` if present (the one way a key goes: its tombstone keeps a
        new version; the oldest tombstone beyond ``tombstones_max`` raises the floor)."""
        if self.data.pop(key, None) is None:
            return False
        del self.versions[key]
        self.expires.pop(key, None)
        self.used_bytes -= self.sizes.pop(key, 0)
        self.revision += 1
        self.tombstones[key] = self.revision
        if len(self.tombstones) > self.params.tombstones_max:
            oldest = next(iter(self.tombstones))
            self.floor = max(self.floor, self.tombstones.pop(oldest))
        return True

    def remove(self, key: bytes) -> bool:
        return self._remove(key)

    def _error(self, refused: _Refused) -> bytes:
        self.errors[refused.code] = self.errors.get(refused.code, 0) + 1
        return self._codec.encode_value([ERROR, refused.code, refused.detail[:200]])


def _command_list(commands: object, count_min: int) -> tuple[bytes, ...]:
    if not (
        isinstance(commands, tuple)
        and count_min <= len(commands) <= BATCH_COMMANDS_MAX
        and all(isinstance(item, bytes) for item in commands)
    ):
        raise _Refused(
            "bad_arguments", f"a batch or exec holds {count_min}..{BATCH_COMMANDS_MAX} commands"
        )
    return tuple(item for item in commands if isinstance(item, bytes))
