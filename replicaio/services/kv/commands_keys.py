"""Redis commands on keys, strings and expiry, executed by the state machine (deterministic).

Each handler takes the store (``KeyValueStateMachine``) and the command's
arguments and returns the reply's payload (``bytes``, ``int``, ``None``, a
``str`` for a simple string, a ``list`` for an array), or raises
``values.Refused``. They change the store only through its primitives
(``lookup``, ``_store``, ``touch``, ``set_deadline``, ``remove``), so every
change takes a version and is counted against the store's bounds; and they
read time only through ``store.now()``, the log's clock.
"""

from __future__ import annotations

import hashlib
import heapq
from typing import TYPE_CHECKING, Final

from replicaio.services.kv.values import (
    INT64_MAX,
    TYPE_NAMES,
    WRONGTYPE,
    Hash,
    ListValue,
    Refused,
    SetValue,
    Value,
    ZSet,
    format_number,
    glob_match,
    integer,
    number,
    redis_error,
    words,
)

if TYPE_CHECKING:
    from replicaio.services.kv.state_machine import KeyValueStateMachine as Store

OK: Final = "OK"
SCAN_COUNT_MAX: Final = 500  # keys one SCAN call looks at, at most (its reply stays small)
SYNTAX: Final = "ERR syntax error"


def need(arguments: tuple[object, ...], count: int, name: str) -> tuple[bytes, ...]:
    """The arguments as bytes, at least ``count`` of them."""
    found = words(arguments)
    if len(found) < count:
        raise redis_error(f"ERR wrong number of arguments for '{name}' command")
    return found


def string_value(store: Store, key: bytes) -> bytes | None:
    found = store.lookup(key)
    if found is not None and not isinstance(found, bytes):
        raise redis_error(WRONGTYPE)
    return found


def checked_value(store: Store, data: bytes) -> bytes:
    if len(data) > store.params.value_bytes_max:
        raise Refused("value_too_large", f"at most {store.params.value_bytes_max} bytes")
    return data


# -- expiry arguments -------------------------------------------------------------------------

EXPIRY_UNITS: Final = {b"EX": (1000, False), b"PX": (1, False), b"EXAT": (1000, True),
                       b"PXAT": (1, True)}


def deadline_of(store: Store, option: bytes, word: bytes, command: str) -> int:
    """The deadline (log ms) of ``option`` (EX, PX, EXAT, PXAT) with ``word``."""
    scale, absolute = EXPIRY_UNITS[option]
    amount = integer(word)
    text = f"ERR invalid expire time in '{command}' command ({option.decode()} {amount})"
    if amount <= 0:
        raise redis_error(text)
    if amount > INT64_MAX // scale:
        raise redis_error(text)
    deadline = amount * scale + (0 if absolute else store.now())
    if deadline > INT64_MAX:
        raise redis_error(text)
    return deadline


# -- strings with options ---------------------------------------------------------------------


def command_set(store: Store, arguments: tuple[object, ...]) -> object:
    """``SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]``; errors name
    the offending option."""
    args = need(arguments, 2, "set")
    key, data = args[0], checked_value(store, args[1])
    condition: bytes | None = None
    get = keep_ttl = False
    deadline: int | None = None
    expiry: bytes | None = None
    index = 2
    while index < len(args):
        option = args[index].upper()
        if option in (b"NX", b"XX"):
            if condition is not None and condition != option:
                raise redis_error(f"ERR syntax error: SET options {condition.decode()} and "
                                  f"{option.decode()} exclude each other")
            condition = option
        elif option == b"GET":
            get = True
        elif option == b"KEEPTTL" or option in EXPIRY_UNITS:
            if expiry is not None and expiry != option:
                raise redis_error(f"ERR syntax error: SET options {expiry.decode()} and "
                                  f"{option.decode()} exclude each other")
            expiry = option
            if option == b"KEEPTTL":
                keep_ttl = True
            else:
                if index + 1 >= len(args):
                    raise redis_error(f"ERR syntax error: SET option {option.decode()} needs "
                                      "a time")
                index += 1
                deadline = deadline_of(store, option, args[index], "set")
        else:
            shown = option[:32].decode("utf-8", "replace")
            raise redis_error(f"ERR syntax error: unknown SET option '{shown}' (SET takes NX, "
                              "XX, GET, EX, PX, EXAT, PXAT, KEEPTTL)")
        index += 1
    old = store.lookup(key)
    if get and old is not None and not isinstance(old, bytes):
        raise redis_error(WRONGTYPE)
    if (condition == b"NX" and old is not None) or (condition == b"XX" and old is None):
        return old if get else None
    store._store(key, data, keep_ttl=keep_ttl)
    if deadline is not None:
        store.set_deadline(key, deadline)
    return old if get else OK


def command_setex(store: Store, arguments: tuple[object, ...], option: bytes) -> object:
    args = need(arguments, 3, "setex")
    name = "setex" if option == b"EX" else "psetex"
    deadline = deadline_of(store, option, args[1], name)
    store._store(args[0], checked_value(store, args[2]))
    store.set_deadline(args[0], deadline)
    return OK


def command_getex(store: Store, arguments: tuple[object, ...]) -> object:
    args = need(arguments, 1, "getex")
    found = string_value(store, args[0])
    options = [word.upper() for word in args[1:]]
    if not options:
        return found
    if options == [b"PERSIST"]:
        if found is not None:
            store.set_deadline(args[0], None)
        return found
    if len(options) != 2 or options[0] not in EXPIRY_UNITS:
        shown = args[1][:32].decode("utf-8", "replace")
        raise redis_error(f"ERR syntax error: GETEX takes one of EX, PX, EXAT, PXAT with a "
                          f"time, or PERSIST (got '{shown}')")
    deadline = deadline_of(store, options[0], args[2], "getex")
    if found is not None:
        store.set_deadline(args[0], deadline)
    return found


def command_getdel(store: Store, arguments: tuple[object, ...]) -> object:
    key = need(arguments, 1, "getdel")[0]
    found = string_value(store, key)
    if found is not None:
        store.remove(key)
    return found


def command_getset(store: Store, arguments: tuple[object, ...]) -> object:
    key, data = need(arguments, 2, "getset")[:2]
    found = string_value(store, key)
    store._store(key, checked_value(store, data))
    return found


def command_msetnx(store: Store, arguments: tuple[object, ...]) -> object:
    args = need(arguments, 2, "msetnx")
    if len(args) % 2:
        raise redis_error("ERR wrong number of arguments for 'msetnx' command")
    pairs = [(args[index], checked_value(store, args[index + 1]))
             for index in range(0, len(args), 2)]
    if any(store.lookup(key) is not None for key, _ in pairs):
        return 0
    for key, data in pairs:
        store._store(key, data)
    return 1


def command_incrbyfloat(store: Store, arguments: tuple[object, ...]) -> object:
    key, word = need(arguments, 2, "incrbyfloat")[:2]
    delta = number(word)
    current = string_value(store, key)
    base = 0.0 if current is None else number(current, "ERR value is not a valid float")
    total = base + delta
    if total in (float("inf"), float("-inf")) or total != total:
        raise redis_error("ERR increment would produce NaN or Infinity")
    text = format_number(total)
    store._store(key, text, keep_ttl=True)
    return text


def command_getrange(store: Store, arguments: tuple[object, ...]) -> object:
    args = need(arguments, 3, "getrange")
    start, end = integer(args[1]), integer(args[2])
    found = string_value(store, args[0]) or b""
    size = len(found)
    if start < 0 and end < 0 and start > end:
        return b""
    start = max(0, start + size if start < 0 else start)
    end = end + size if end < 0 else end
    end = min(end, size - 1)
    return found[start : end + 1] if start <= end else b""


def command_setrange(store: Store, arguments: tuple[object, ...]) -> object:
    args = need(arguments, 3, "setrange")
    offset = integer(args[1])
    if offset < 0:
        raise redis_error("ERR offset is out of range")
    found = string_value(store, args[0])
    data = args[2]
    if not data:
        return len(found or b"")
    if offset + len(data) > store.params.value_bytes_max:
        raise redis_error(f"ERR string exceeds maximum allowed size "
                          f"({store.params.value_bytes_max} bytes, KvParams.value_bytes_max)")
    current = found or b""
    if len(current) < offset:
        current += b"\x00" * (offset - len(current))
    updated = current[:offset] + data + current[offset + len(data) :]
    store._store(args[0], updated, keep_ttl=True)
    return len(updated)


# -- expiry ------------------------------------------------------------------------------------


def command_expire(store: Store, arguments: tuple[object, ...], option: bytes,
                   name: str) -> object:
    """``EXPIRE``/``PEXPIRE``/``EXPIREAT``/``PEXPIREAT key time [NX|XX|GT|LT]``."""
    args = need(arguments, 2, name)
    key = args[0]
    scale, absolute = EXPIRY_UNITS[option]
    amount = integer(args[1])
    flags = {word.upper() for word in args[2:]}
    if not flags <= {b"NX", b"XX", b"GT", b"LT"} or len(flags) != len(args) - 2:
        raise redis_error(f"ERR Unsupported option {args[2][:32].decode('utf-8', 'replace')}")
    if {b"NX", b"XX"} <= flags or {b"GT", b"LT"} <= flags or (b"NX" in flags and len(flags) > 1):
        raise redis_error("ERR NX and XX, GT or LT options at the same time are not compatible")
    if abs(amount) > INT64_MAX // scale:
        raise redis_error(f"ERR invalid expire time in '{name}' command")
    deadline = amount * scale + (0 if absolute else store.now())
    if store.lookup(key) is None:
        return 0
    current = store.expires.get(key)
    if (b"NX" in flags and current is not None) or (b"XX" in flags and current is None):
        return 0
    if b"GT" in flags and (current is None or deadline <= current):
        return 0
    if b"LT" in flags and current is not None and deadline >= current:
        return 0
    if deadline <= store.now():
        store.remove(key)  # a deadline in the past deletes the key (as Redis)
        return 1
    store.set_deadline(key, deadline)
    return 1


def remaining_ms(store: Store, key: bytes) -> int:
    """-2: no such key; -1: no expiry; else the milliseconds left."""
    if store.lookup(key) is None:
        return -2
    deadline = store.expires.get(key)
    return -1 if deadline is None else max(0, deadline - store.now())


def command_ttl(store: Store, arguments: tuple[object, ...]) -> object:
    left = remaining_ms(store, need(arguments, 1, "ttl")[0])
    return left if left < 0 else (left + 500) // 1000


def command_pttl(store: Store, arguments: tuple[object, ...]) -> object:
    return remaining_ms(store, need(arguments, 1, "pttl")[0])


def command_expiretime(store: Store, arguments: tuple[object, ...], scale: int) -> object:
    key = need(arguments, 1, "expiretime")[0]
    if store.lookup(key) is None:
        return -2
    deadline = store.expires.get(key)
    return -1 if deadline is None else deadline // scale


def command_persist(store: Store, arguments: tuple[object, ...]) -> object:
    key = need(arguments, 1, "persist")[0]
    if store.lookup(key) is None or key not in store.expires:
        return 0
    store.set_deadline(key, None)
    return 1


# -- keyspace ----------------------------------------------------------------------------------


def live_keys(store: Store) -> list[bytes]:
    """The keys not due to expire at the store's clock, in byte order."""
    now, expires = store.now(), store.expires
    return sorted(key for key in store.data if expires.get(key, now + 1) > now)


def command_exists(store: Store, arguments: tuple[object, ...]) -> object:
    return sum(1 for key in need(arguments, 1, "exists") if store.lookup(key) is not None)


def command_dbsize(store: Store, arguments: tuple[object, ...]) -> object:
    now = store.now()
    return len(store.data) - sum(1 for deadline in store.expires.values() if deadline <= now)


def command_type(store: Store, arguments: tuple[object, ...]) -> object:
    found = store.lookup(need(arguments, 1, "type")[0])
    return "none" if found is None else TYPE_NAMES[type(found)]


def command_keys(store: Store, arguments: tuple[object, ...]) -> object:
    pattern = need(arguments, 1, "keys")[0]
    found = [key for key in live_keys(store) if glob_match(pattern, key)]
    if sum(len(key) + 8 for key in found) > store.params.result_bytes_max:
        raise Refused("result_too_large", "KEYS matched too many keys: use SCAN")
    return found


CURSOR_MAX: Final = (1 << 64) - 1  # Redis cursors are unsigned 64-bit integers


def key_position(key: bytes) -> int:
    """Where SCAN visits ``key``: a hash of the key in 1 .. 2**64 - 1, the same on
    every replica and in every process (never Python's salted ``hash``)."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % CURSOR_MAX + 1


def decode_cursor(word: bytes) -> int | None:
    """The position after which a SCAN resumes (``0``: from the start); None if
    the word is not an unsigned 64-bit decimal, which Redis refuses too."""
    if not word.isdigit() or len(word) > 20:
        return None
    value = int(word)
    return value if value <= CURSOR_MAX else None


def scan_batch(store: Store, after: int, count: int) -> tuple[int, list[bytes]]:
    """The keys of the ``count`` smallest positions above ``after`` (in position
    order; every key of the last position with them, so a collision never splits)
    and the cursor to resume from (``0``: nothing is left)."""
    positioned = ((position, key) for key in store.data
                  if (position := key_position(key)) > after)
    taken = heapq.nsmallest(count + 1, positioned)
    if len(taken) <= count:
        return 0, [key for _, key in taken]
    last = taken[count - 1][0]
    if taken[count][0] == last:  # a 64-bit collision: take every key of that position
        taken = sorted(item for item in ((key_position(key), key) for key in store.data)
                       if after < item[0] <= last)
    else:
        taken = taken[:count]
    return last, [key for _, key in taken]


def command_scan(store: Store, arguments: tuple[object, ...]) -> object:
    """``SCAN cursor [MATCH pattern] [COUNT n] [TYPE type]``: keys in the order of a
    deterministic 64-bit hash, after the cursor's position, so a key present for
    the whole scan is returned (exactly once), and the cursor is an unsigned
    64-bit integer as clients expect (redis-cli parses it with ``strtoull``)."""
    args = need(arguments, 1, "scan")
    after = decode_cursor(args[0])
    if after is None:
        raise redis_error("ERR invalid cursor")
    pattern: bytes | None = None
    wanted: str | None = None
    count = 10
    index = 1
    while index < len(args):
        option = args[index].upper()
        if index + 1 >= len(args) or option not in (b"MATCH", b"COUNT", b"TYPE"):
            raise redis_error(SYNTAX)
        word = args[index + 1]
        if option == b"MATCH":
            pattern = word
        elif option == b"COUNT":
            count = integer(word)
            if count < 1:
                raise redis_error(SYNTAX)
        else:
            wanted = word.lower().decode("utf-8", "replace")
        index += 2
    count = min(count, SCAN_COUNT_MAX)
    position, batch = scan_batch(store, after, count)
    cursor = str(position).encode()
    found: list[bytes] = []
    for key in batch:
        value = store.lookup(key)
        if value is None or (pattern is not None and not glob_match(pattern, key)):
            continue
        if wanted is not None and TYPE_NAMES[type(value)] != wanted:
            continue
        found.append(key)
    return [cursor, found]


def copied(value: Value) -> Value:
    if isinstance(value, Hash):
        return Hash(value)
    if isinstance(value, SetValue):
        return SetValue(value)
    if isinstance(value, ZSet):
        return ZSet(value)
    return value if isinstance(value, bytes) else ListValue(value)


def command_rename(store: Store, arguments: tuple[object, ...], only_new: bool) -> object:
    source, target = need(arguments, 2, "rename")[:2]
    value = store.lookup(source)
    if value is None:
        raise redis_error("ERR no such key")
    if only_new and store.lookup(target) is not None:
        return 0
    if source == target:
        return 0 if only_new else OK
    deadline = store.expires.get(source)
    store.remove(target)
    store.remove(source)
    store._store(target, value)
    if deadline is not None:
        store.set_deadline(target, deadline)
    return 1 if only_new else OK


def command_copy(store: Store, arguments: tuple[object, ...]) -> object:
    args = need(arguments, 2, "copy")
    source, target = args[0], args[1]
    replace = False
    index = 2
    while index < len(args):
        option = args[index].upper()
        if option == b"REPLACE":
            replace = True
            index += 1
        elif option == b"DB" and index + 1 < len(args):
            if integer(args[index + 1]) != 0:
                raise redis_error("ERR DB index is out of range")
            index += 2
        else:
            raise redis_error(SYNTAX)
    value = store.lookup(source)
    if value is None or source == target:
        return 0
    if store.lookup(target) is not None:
        if not replace:
            return 0
        store.remove(target)
    store._store(target, copied(value))
    deadline = store.expires.get(source)
    if deadline is not None:
        store.set_deadline(target, deadline)
    return 1


def command_flush(store: Store, arguments: tuple[object, ...]) -> object:
    if any(word.upper() not in (b"ASYNC", b"SYNC") for word in words(arguments)):
        raise redis_error(SYNTAX)
    for key in sorted(store.data):
        store.remove(key)
    return OK


# -- client lock scripts (compare-and-delete, compare-and-expire) ------------------------------


def command_lock_release(store: Store, arguments: tuple[object, ...]) -> object:
    """Delete ``key`` if it holds ``token``: 1, else 0 (a lock's release)."""
    key, token = need(arguments, 2, "lock_release")[:2]
    found = store.lookup(key)
    if found != token:
        return 0
    store.remove(key)
    return 1


def command_lock_extend(store: Store, arguments: tuple[object, ...]) -> object:
    """If ``key`` holds ``token`` and expires: its time to live becomes ``ms`` (or
    grows by it when ``replace`` is ``0``): 1, else 0 (a lock's extension)."""
    key, token, word, replace = need(arguments, 4, "lock_extend")[:4]
    milliseconds = integer(word)
    if store.lookup(key) != token:
        return 0
    left = remaining_ms(store, key)
    if left < 0:
        return 0
    total = milliseconds + (left if replace == b"0" else 0)
    if total <= 0:
        store.remove(key)
        return 1
    store.set_deadline(key, store.now() + total)
    return 1


def command_lock_reacquire(store: Store, arguments: tuple[object, ...]) -> object:
    """If ``key`` holds ``token``: its time to live becomes ``ms``: 1, else 0."""
    key, token, word = need(arguments, 3, "lock_reacquire")[:3]
    milliseconds = integer(word)
    if store.lookup(key) != token:
        return 0
    if milliseconds <= 0:
        store.remove(key)
    else:
        store.set_deadline(key, store.now() + milliseconds)
    return 1


__all__ = ["Hash", "ListValue", "SetValue", "ZSet"]
