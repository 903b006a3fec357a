"""The typed values of the key-value store, their sizes, and the helpers its commands share.

A key holds one of five types, as in Redis: a string (``bytes``), a
:class:`Hash` (field -> value), a :class:`ListValue`, a :class:`SetValue` and a
:class:`ZSet` (member -> score). The collections are ``dict`` s and ``list`` s,
so iteration follows insertion order, which is the same on every replica
(every replica applies the same commands in the same order, and snapshots keep
that order). Commands that Redis answers in an unspecified order (``SMEMBERS``,
``HKEYS``, ``SPOP``...) answer in this deterministic one.

:func:`value_bytes` is what the store counts against ``KvParams.bytes_max``:
the bytes of every key, field and element, plus a fixed overhead each, so the
memory a store holds is bounded whatever its clients send.

:class:`Refused` is how a command fails: an error result with a stable code
(:data:`ERROR_CODES`); code ``redis`` carries the exact Redis error text in its
detail (``WRONGTYPE ...``, ``ERR syntax error``...), which the Redis front
answers as is.
"""

from __future__ import annotations

import math
import re
from typing import Final

ERROR_CODES: Final = frozenset(
    {
        "malformed",  # not a msgpack array starting with an operation name
        "unknown_op",  # an operation this store does not have
        "bad_arguments",  # wrong number or types of arguments
        "key_too_large",  # key longer than KvParams.key_bytes_max
        "value_too_large",  # value (or the result of an append) too long
        "not_integer",  # incr on a value that is not a decimal integer
        "overflow",  # incr result outside signed 64 bits
        "full",  # a new key while KvParams.keys_max keys exist, or bytes_max reached
        "not_read_only",  # a write operation given to read()
        "result_too_large",  # a batch's results would exceed KvParams.result_bytes_max
        "wrong_type",  # the key holds another type than the command works on
        "too_many_items",  # a collection would exceed KvParams.items_max
        "redis",  # a Redis command's own error: the detail is the Redis error text
    }
)

WRONGTYPE: Final = "WRONGTYPE Operation against a key holding the wrong kind of value"
KEY_OVERHEAD_BYTES: Final = 64  # what a key costs beyond its bytes (tables, version)
ITEM_OVERHEAD_BYTES: Final = 16  # what a field, element or member costs beyond its bytes

INT64_MIN: Final = -(1 << 63)
INT64_MAX: Final = (1 << 63) - 1
# Redis's integers: no sign but "-", no leading zero, no "-0" (string2ll).
DECIMAL: Final = re.compile(rb"0|-?[1-9][0-9]{0,18}")
_FLOAT: Final = re.compile(rb"[+-]?(inf|infinity|[0-9]*\.?[0-9]+([eE][+-]?[0-9]+)?|[0-9]+\.)",
                           re.IGNORECASE)


class Refused(Exception):
    """A command is refused with an error result (caught by the state machine)."""

    def __init__(self, code: str, detail: str) -> None:
        assert code in ERROR_CODES, code
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


def redis_error(text: str) -> Refused:
    """A Redis error, answered to the client exactly as ``text``."""
    return Refused("redis", text)


class Hash(dict[bytes, bytes]):
    """A Redis hash: field -> value, in insertion order."""

    __slots__ = ()


class ListValue(list[bytes]):
    """A Redis list."""

    __slots__ = ()


class SetValue(dict[bytes, None]):
    """A Redis set (a dict for its deterministic insertion order)."""

    __slots__ = ()


class ZSet(dict[bytes, float]):
    """A Redis sorted set: member -> score; ordered by (score, member) on demand."""

    __slots__ = ()

    def ordered(self) -> list[tuple[bytes, float]]:
        return sorted(self.items(), key=lambda item: (item[1], item[0]))


Collection = Hash | ListValue | SetValue | ZSet
Value = bytes | Collection

TYPE_NAMES: Final[dict[type, str]] = {
    bytes: "string", Hash: "hash", ListValue: "list", SetValue: "set", ZSet: "zset",
}
# Snapshot type codes (part of the snapshot format: never renumber).
TYPE_CODES: Final[dict[type, int]] = {bytes: 0, Hash: 1, ListValue: 2, SetValue: 3, ZSet: 4}


def value_bytes(key: bytes, value: Value) -> int:
    """What ``key`` holding ``value`` counts against ``KvParams.bytes_max``."""
    size = len(key) + KEY_OVERHEAD_BYTES
    if isinstance(value, bytes):
        return size + len(value)
    if isinstance(value, Hash):
        return size + sum(len(f) + len(v) + ITEM_OVERHEAD_BYTES for f, v in value.items())
    if isinstance(value, ZSet):
        return size + sum(len(member) + 2 * ITEM_OVERHEAD_BYTES for member in value)
    return size + sum(len(item) + ITEM_OVERHEAD_BYTES for item in value)


def item_bytes(item: bytes) -> int:
    return len(item) + ITEM_OVERHEAD_BYTES


# -- arguments ------------------------------------------------------------------------------


def integer(word: object, text: str = "ERR value is not an integer or out of range") -> int:
    """A signed 64-bit decimal as Redis reads them, else a Redis error."""
    if not isinstance(word, bytes) or DECIMAL.fullmatch(word) is None:
        raise redis_error(text)
    number = int(word)
    if not INT64_MIN <= number <= INT64_MAX:
        raise redis_error(text)
    return number


def number(word: object, text: str = "ERR value is not a valid float") -> float:
    """A finite or infinite double as Redis reads them (no NaN), else a Redis error."""
    if not isinstance(word, bytes) or len(word) > 64 or _FLOAT.fullmatch(word) is None:
        raise redis_error(text)
    value = float(word)
    if math.isnan(value):
        raise redis_error(text)
    return value


def format_number(value: float) -> bytes:
    """A double as Redis prints it: integers without a fraction, ``inf``, ``-inf``."""
    if math.isinf(value):
        return b"inf" if value > 0 else b"-inf"
    if value == int(value) and abs(value) < 1e17:
        return str(int(value)).encode()
    return repr(value).encode()


def words(arguments: tuple[object, ...]) -> tuple[bytes, ...]:
    """The arguments of a Redis command, all ``bytes`` (else ``bad_arguments``)."""
    if not all(isinstance(word, bytes) for word in arguments):
        raise Refused("bad_arguments", "the arguments of a Redis command are bytes")
    return tuple(word for word in arguments if isinstance(word, bytes))


def glob_match(pattern: bytes, subject: bytes) -> bool:
    """Redis's glob (``*``, ``?``, ``[...]`` with ``^`` and ranges, ``\\`` escapes)."""
    return _glob(pattern, 0, subject, 0, 0)


def _glob(pattern: bytes, p: int, subject: bytes, s: int, depth: int) -> bool:
    if depth > 32:  # bound the backtracking of many stars (Redis bounds it too)
        return False
    while p < len(pattern):
        char = pattern[p]
        if char == 0x2A:  # *
            while p + 1 < len(pattern) and pattern[p + 1] == 0x2A:
                p += 1
            if p + 1 == len(pattern):
                return True
            return any(
                _glob(pattern, p + 1, subject, start, depth + 1)
                for start in range(s, len(subject) + 1)
            )
        if s >= len(subject):
            return False
        if char == 0x3F:  # ?
            p, s = p + 1, s + 1
            continue
        if char == 0x5B:  # [
            matched, p = _glob_class(pattern, p + 1, subject[s])
            if not matched:
                return False
            s += 1
            continue
        if char == 0x5C and p + 1 < len(pattern):  # \
            p += 1
            char = pattern[p]
        if char != subject[s]:
            return False
        p, s = p + 1, s + 1
    return s == len(subject)


def _glob_class(pattern: bytes, p: int, char: int) -> tuple[bool, int]:
    negate = p < len(pattern) and pattern[p] == 0x5E  # ^
    if negate:
        p += 1
    matched = False
    while p < len(pattern) and pattern[p] != 0x5D:  # ]
        if pattern[p] == 0x5C and p + 1 < len(pattern):
            p += 1
            matched = matched or pattern[p] == char
        elif p + 2 < len(pattern) and pattern[p + 1] == 0x2D:  # a-z
            low, high = sorted((pattern[p], pattern[p + 2]))
            matched = matched or low <= char <= high
            p += 2
        else:
            matched = matched or pattern[p] == char
        p += 1
    return matched != negate, p + 1
