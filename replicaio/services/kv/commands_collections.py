"""Redis commands on hashes, lists, sets and sorted sets, executed by the state machine.

Same contract as ``commands_keys``: deterministic handlers that change the
store only through its primitives. A collection is changed in place, then
``store.touch(key)`` gives it a new version and counts its size again (an
emptied collection is removed, as Redis does). Before a collection grows,
``grow`` checks ``KvParams.items_max`` and ``bytes_max``. Where Redis picks
at random (``SPOP``, ``SRANDMEMBER``), the store takes members in its
deterministic order (insertion order), so every replica picks the same.
Blocking pops are not commands of the store (the front refuses them).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, TypeVar

from replicaio.services.kv.commands_keys import OK, SYNTAX, need
from replicaio.services.kv.values import (
    Collection,
    Hash,
    ListValue,
    Refused,
    SetValue,
    ZSet,
    format_number,
    integer,
    item_bytes,
    number,
    redis_error,
)

if TYPE_CHECKING:
    from replicaio.services.kv.state_machine import KeyValueStateMachine as Store

C = TypeVar("C", Hash, ListValue, SetValue, ZSet)
NOT_FLOAT: Final = "ERR value is not a valid float"


def existing(store: Store, key: bytes, kind: type[C]) -> C | None:
    found = store.collection(key, kind)
    assert found is None or type(found) is kind
    return found


def create(store: Store, key: bytes, kind: type[C]) -> C:
    """The collection at ``key``, created empty (not stored yet) if absent."""
    found = existing(store, key, kind)
    if found is not None:
        return found
    return kind()


def grow(store: Store, key: bytes, collection: Collection, items: Sequence[bytes]) -> None:
    """Refuse adding ``items`` to ``collection`` beyond items_max, value_bytes_max or
    bytes_max (checked before anything changes)."""
    params = store.params
    if len(collection) + len(items) > params.items_max:
        raise Refused("too_many_items", f"a collection holds at most {params.items_max} items")
    for item in items:
        if len(item) > params.value_bytes_max:
            raise Refused("value_too_large", f"at most {params.value_bytes_max} bytes")
    store.room(sum(item_bytes(item) for item in items))


def save(store: Store, key: bytes, collection: Collection) -> None:
    """``collection`` (at ``key`` or new) was changed: store or touch it."""
    if store.data.get(key) is collection:
        store.touch(key)
    elif collection:
        store._store(key, collection)


# -- hashes ------------------------------------------------------------------------------------


def command_hset(store: Store, arguments: tuple[object, ...], only_new: bool = False) -> object:
    args = need(arguments, 3, "hset")
    if len(args) % 2 == 0 or (only_new and len(args) != 3):
        raise redis_error("ERR wrong number of arguments for 'hset' command")
    hash_value = create(store, args[0], Hash)
    pairs = list(zip(args[1::2], args[2::2], strict=True))
    if only_new and pairs[0][0] in hash_value:
        return 0
    grow(store, args[0], hash_value, [word for pair in pairs for word in pair])
    added = 0
    for field, value in pairs:
        added += field not in hash_value
        hash_value[field] = value
    save(store, args[0], hash_value)
    return added


def command_hmset(store: Store, arguments: tuple[object, ...]) -> object:
    command_hset(store, arguments)
    return OK


def command_hget(store: Store, arguments: tuple[object, ...]) -> object:
    key, field = need(arguments, 2, "hget")[:2]
    found = existing(store, key, Hash)
    return None if found is None else found.get(field)


def command_hmget(store: Store, arguments: tuple[object, ...]) -> object:
    args = need(arguments, 2, "hmget")
    found = existing(store, args[0], Hash) or Hash()
    return [found.get(field) for field in args[1:]]


def command_hgetall(store: Store, arguments: tuple[object, ...]) -> object:
    found = existing(store, need(arguments, 1, "hgetall")[0], Hash) or Hash()
    return [word for pair in found.items() for word in pair]


def command_hkeys(store: Store, arguments: tuple[object, ...]) -> object:
    return list(existing(store, need(arguments, 1, "hkeys")[0], Hash) or ())


def command_hvals(store: Store, arguments: tuple[object, ...]) -> object:
    return list((existing(store, need(arguments, 1, "hvals")[0], Hash) or Hash()).values())


def command_hlen(store: Store, arguments: tuple[object, ...]) -> object:
    return len(existing(store, need(arguments, 1, "hlen")[0], Hash) or ())


def command_hexists(store: Store, arguments: tuple[object, ...]) -> object:
    key, field = need(arguments, 2, "hexists")[:2]
    return int(field in (existing(store, key, Hash) or ()))


def command_hstrlen(store: Store, arguments: tuple[object, ...]) -> object:
    key, field = need(arguments, 2, "hstrlen")[:2]
    return len((existing(store, key, Hash) or Hash()).get(field, b""))


def command_hdel(store: Store, arguments: tuple[object, ...]) -> object:
    args = need(arguments, 2, "hdel")
    found = existing(store, args[0], Hash)
    if found is None:
        return 0
    removed = sum(1 for field in dict.fromkeys(args[1:]) if found.pop(field, None) is not None)
    if removed:
        store.touch(args[0])
    return removed


def command_hincrby(store: Store, arguments: tuple[object, ...], floating: bool) -> object:
    key, field, word = need(arguments, 3, "hincrby")[:3]
    hash_value = create(store, key, Hash)
    current = hash_value.get(field)
    if floating:
        base = 0.0 if current is None else number(current, "ERR hash value is not a float")
        total = base + number(word)
        if total in (float("inf"), float("-inf")):
            raise redis_error("ERR increment would produce NaN or Infinity")
        text = format_number(total)
        result: object = text
    else:
        base_int = 0 if current is None else integer(current, "ERR hash value is not an integer")
        total_int = base_int + integer(word)
        if not -(1 << 63) <= total_int < 1 << 63:
            raise redis_error("ERR increment or decrement would overflow")
        text = str(total_int).encode()
        result = total_int
    grow(store, key, hash_value, [field, text] if current is None else [])
    hash_value[field] = text
    save(store, key, hash_value)
    return result


# -- lists -------------------------------------------------------------------------------------


def command_push(store: Store, arguments: tuple[object, ...], left: bool,
                 only_existing: bool) -> object:
    args = need(arguments, 2, "push")
    found = existing(store, args[0], ListValue)
    if found is None and only_existing:
        return 0
    target = found if found is not None else ListValue()
    items = list(args[1:])
    grow(store, args[0], target, items)
    if left:
        target[:0] = items[::-1]
    else:
        target.extend(items)
    save(store, args[0], target)
    return len(target)


def command_pop(store: Store, arguments: tuple[object, ...], left: bool) -> object:
    args = need(arguments, 1, "pop")
    if len(args) > 2:
        raise redis_error(SYNTAX)
    count = integer(args[1], "ERR value is out of range, must be positive") if len(args) == 2 \
        else None
    if count is not None and count < 0:
        raise redis_error("ERR value is out of range, must be positive")
    found = existing(store, args[0], ListValue)
    if found is None:
        return None
    take = 1 if count is None else min(count, len(found))
    if left:
        popped = found[:take]
        del found[:take]
    else:
        popped = found[len(found) - take :][::-1]
        del found[len(found) - take :]
    if take:
        store.touch(args[0])
    return popped[0] if count is None else popped


def list_index(size: int, word: bytes) -> int:
    index = integer(word)
    return index + size if index < 0 else index


def command_lrange(store: Store, arguments: tuple[object, ...]) -> object:
    args = need(arguments, 3, "lrange")
    found = existing(store, args[0], ListValue) or ListValue()
    start = max(0, list_index(len(found), args[1]))
    stop = list_index(len(found), args[2])
    return list(found[start : stop + 1]) if start <= stop else []


def command_llen(store: Store, arguments: tuple[object, ...]) -> object:
    return len(existing(store, need(arguments, 1, "llen")[0], ListValue) or ())


def command_lindex(store: Store, arguments: tuple[object, ...]) -> object:
    key, word = need(arguments, 2, "lindex")[:2]
    found = existing(store, key, ListValue) or ListValue()
    index = list_index(len(found), word)
    return found[index] if 0 <= index < len(found) else None


def command_lset(store: Store, arguments: tuple[object, ...]) -> object:
    key, word, value = need(arguments, 3, "lset")[:3]
    found = existing(store, key, ListValue)
    if found is None:
        raise redis_error("ERR no such key")
    index = list_index(len(found), word)
    if not 0 <= index < len(found):
        raise redis_error("ERR index out of range")
    store.room(len(value))
    found[index] = value
    store.touch(key)
    return OK


def command_lrem(store: Store, arguments: tuple[object, ...]) -> object:
    key, word, value = need(arguments, 3, "lrem")[:3]
    count = integer(word)
    found = existing(store, key, ListValue)
    if found is None:
        return 0
    positions = [index for index, item in enumerate(found) if item == value]
    if count > 0:
        positions = positions[:count]
    elif count < 0:
        positions = positions[count:]
    for index in reversed(positions):
        del found[index]
    if positions:
        store.touch(key)
    return len(positions)


def command_ltrim(store: Store, arguments: tuple[object, ...]) -> object:
    args = need(arguments, 3, "ltrim")
    found = existing(store, args[0], ListValue)
    if found is None:
        return OK
    start = max(0, list_index(len(found), args[1]))
    stop = list_index(len(found), args[2])
    kept = found[start : stop + 1] if start <= stop else []
    if len(kept) != len(found):
        found[:] = kept
        store.touch(args[0])
    return OK


def command_linsert(store: Store, arguments: tuple[object, ...]) -> object:
    key, where, pivot, value = need(arguments, 4, "linsert")[:4]
    where = where.upper()
    if where not in (b"BEFORE", b"AFTER"):
        raise redis_error(SYNTAX)
    found = existing(store, key, ListValue)
    if found is None:
        return 0
    if pivot not in found:
        return -1
    grow(store, key, found, [value])
    index = found.index(pivot) + (where == b"AFTER")
    found.insert(index, value)
    store.touch(key)
    return len(found)


def command_lmove(store: Store, arguments: tuple[object, ...]) -> object:
    """``LMOVE source destination LEFT|RIGHT LEFT|RIGHT`` (and ``RPOPLPUSH``)."""
    source, target, from_side, to_side = need(arguments, 4, "lmove")[:4]
    sides = (from_side.upper(), to_side.upper())
    if any(side not in (b"LEFT", b"RIGHT") for side in sides):
        raise redis_error(SYNTAX)
    found = existing(store, source, ListValue)
    if found is None:
        return None
    destination = create(store, target, ListValue)
    item = found[0] if sides[0] == b"LEFT" else found[-1]
    if destination is not found:
        grow(store, target, destination, [item])
    del found[0 if sides[0] == b"LEFT" else -1]
    if destination is not found:
        store.touch(source)  # (removed if emptied)
    if sides[1] == b"LEFT":
        destination.insert(0, item)
    else:
        destination.append(item)
    save(store, target, destination)
    return item


def command_rpoplpush(store: Store, arguments: tuple[object, ...]) -> object:
    source, target = need(arguments, 2, "rpoplpush")[:2]
    return command_lmove(store, (source, target, b"RIGHT", b"LEFT"))


# -- sets --------------------------------------------------------------------------------------


def command_sadd(store: Store, arguments: tuple[object, ...]) -> object:
    args = need(arguments, 2, "sadd")
    found = create(store, args[0], SetValue)
    fresh = [member for member in dict.fromkeys(args[1:]) if member not in found]
    if not fresh:
        return 0
    grow(store, args[0], found, fresh)
    found.update(dict.fromkeys(fresh))
    save(store, args[0], found)
    return len(fresh)


def command_srem(store: Store, arguments: tuple[object, ...]) -> object:
    args = need(arguments, 2, "srem")
    found = existing(store, args[0], SetValue)
    if found is None:
        return 0
    removed = 0
    for member in dict.fromkeys(args[1:]):
        if member in found:
            del found[member]
            removed += 1
    if removed:
        store.touch(args[0])
    return removed


def command_smembers(store: Store, arguments: tuple[object, ...]) -> object:
    return list(existing(store, need(arguments, 1, "smembers")[0], SetValue) or ())


def command_sismember(store: Store, arguments: tuple[object, ...]) -> object:
    key, member = need(arguments, 2, "sismember")[:2]
    return int(member in (existing(store, key, SetValue) or ()))


def command_smismember(store: Store, arguments: tuple[object, ...]) -> object:
    args = need(arguments, 2, "smismember")
    found = existing(store, args[0], SetValue) or SetValue()
    return [int(member in found) for member in args[1:]]


def command_scard(store: Store, arguments: tuple[object, ...]) -> object:
    return len(existing(store, need(arguments, 1, "scard")[0], SetValue) or ())


def command_spop(store: Store, arguments: tuple[object, ...], remove: bool) -> object:
    args = need(arguments, 1, "spop")
    count = integer(args[1]) if len(args) > 1 else None
    if count is not None and count < 0 and remove:
        raise redis_error("ERR value is out of range, must be positive")
    found = existing(store, args[0], SetValue)
    if found is None:
        return None if count is None else []
    members = list(found)[: 1 if count is None else abs(count)]
    if remove and members:
        for member in members:
            del found[member]
        store.touch(args[0])
    if count is None:
        return members[0] if members else None
    return members


def set_operation(store: Store, keys: Sequence[bytes], kind: str) -> SetValue:
    sets = [existing(store, key, SetValue) or SetValue() for key in keys]
    result = SetValue(sets[0])
    for other in sets[1:]:
        if kind == "inter":
            result = SetValue(dict.fromkeys(member for member in result if member in other))
        elif kind == "union":
            result.update(other)
        else:
            result = SetValue(dict.fromkeys(m for m in result if m not in other))
    return SetValue(result)


def command_setop(store: Store, arguments: tuple[object, ...], kind: str) -> object:
    return list(set_operation(store, need(arguments, 1, "s" + kind), kind))


def command_setop_store(store: Store, arguments: tuple[object, ...], kind: str) -> object:
    args = need(arguments, 2, f"s{kind}store")
    result = set_operation(store, args[1:], kind)
    store.remove(args[0])
    if result:
        grow(store, args[0], SetValue(), list(result))
        store._store(args[0], result)
    return len(result)


def command_smove(store: Store, arguments: tuple[object, ...]) -> object:
    source, target, member = need(arguments, 3, "smove")[:3]
    found = existing(store, source, SetValue)
    destination = create(store, target, SetValue)
    if found is None or member not in found:
        return 0
    if member not in destination:
        grow(store, target, destination, [member])
    del found[member]
    store.touch(source)
    destination[member] = None
    save(store, target, destination)
    return 1


# -- sorted sets -------------------------------------------------------------------------------


def command_zadd(store: Store, arguments: tuple[object, ...]) -> object:
    """``ZADD key [NX|XX] [GT|LT] [CH] [INCR] score member ...``."""
    args = need(arguments, 3, "zadd")
    index, flags = 1, set()
    while index < len(args) and args[index].upper() in (b"NX", b"XX", b"GT", b"LT", b"CH",
                                                         b"INCR"):
        flags.add(args[index].upper())
        index += 1
    rest = args[index:]
    if not rest or len(rest) % 2:
        raise redis_error(SYNTAX)
    if {b"NX", b"XX"} <= flags or (b"NX" in flags and flags & {b"GT", b"LT"}) or \
            {b"GT", b"LT"} <= flags:
        raise redis_error("ERR GT, LT, and/or NX options at the same time are not compatible")
    if b"INCR" in flags and len(rest) != 2:
        raise redis_error("ERR INCR option supports a single increment-element pair")
    pairs = [(number(rest[i]), rest[i + 1]) for i in range(0, len(rest), 2)]
    found = create(store, args[0], ZSet)
    grow(store, args[0], found, [m for _, m in pairs if m not in found])
    added = changed = 0
    result: object = None
    for score, member in pairs:
        old = found.get(member)
        if (b"NX" in flags and old is not None) or (b"XX" in flags and old is None):
            continue
        new = score + (old or 0.0) if b"INCR" in flags else score
        if new != new:
            raise redis_error("ERR resulting score is not a number (NaN)")
        if old is not None and ((b"GT" in flags and new <= old) or (b"LT" in flags and new >= old)):
            continue
        added += old is None
        changed += old is None or old != new
        found[member] = new
        result = format_number(new)
    save(store, args[0], found)
    if b"INCR" in flags:
        return result
    return changed if b"CH" in flags else added


def command_zincrby(store: Store, arguments: tuple[object, ...]) -> object:
    key, word, member = need(arguments, 3, "zincrby")[:3]
    return command_zadd(store, (key, b"INCR", word, member))


def command_zrem(store: Store, arguments: tuple[object, ...]) -> object:
    args = need(arguments, 2, "zrem")
    found = existing(store, args[0], ZSet)
    if found is None:
        return 0
    removed = sum(1 for member in dict.fromkeys(args[1:]) if found.pop(member, None) is not None)
    if removed:
        store.touch(args[0])
    return removed


def command_zscore(store: Store, arguments: tuple[object, ...]) -> object:
    key, member = need(arguments, 2, "zscore")[:2]
    score = (existing(store, key, ZSet) or ZSet()).get(member)
    return None if score is None else format_number(score)


def command_zmscore(store: Store, arguments: tuple[object, ...]) -> object:
    args = need(arguments, 2, "zmscore")
    found = existing(store, args[0], ZSet) or ZSet()
    return [None if member not in found else format_number(found[member]) for member in args[1:]]


def command_zcard(store: Store, arguments: tuple[object, ...]) -> object:
    return len(existing(store, need(arguments, 1, "zcard")[0], ZSet) or ())


def score_bound(word: bytes) -> tuple[float, bool]:
    """A score range bound: (value, exclusive)."""
    if word.startswith(b"("):
        return number(word[1:], "ERR min or max is not a float"), True
    return number(word, "ERR min or max is not a float"), False


def in_range(score: float, low: tuple[float, bool], high: tuple[float, bool]) -> bool:
    above = score > low[0] if low[1] else score >= low[0]
    below = score < high[0] if high[1] else score <= high[0]
    return above and below


def command_zcount(store: Store, arguments: tuple[object, ...]) -> object:
    key, low, high = need(arguments, 3, "zcount")[:3]
    bounds = score_bound(low), score_bound(high)
    return sum(1 for score in (existing(store, key, ZSet) or ZSet()).values()
               if in_range(score, *bounds))


def ranged(items: list[tuple[bytes, float]], with_scores: bool) -> list[bytes]:
    if with_scores:
        return [part for member, score in items for part in (member, format_number(score))]
    return [member for member, _ in items]


def command_zrange(store: Store, arguments: tuple[object, ...], mode: str = "") -> object:
    """``ZRANGE key start stop [BYSCORE] [REV] [LIMIT offset count] [WITHSCORES]``; and
    ``ZREVRANGE``, ``ZRANGEBYSCORE``, ``ZREVRANGEBYSCORE`` (``mode``)."""
    args = need(arguments, 3, "zrange")
    by_score, reverse = "score" in mode, "rev" in mode
    with_scores, limit = False, None
    index = 3
    while index < len(args):
        option = args[index].upper()
        if option == b"WITHSCORES":
            with_scores = True
        elif option == b"BYSCORE" and not mode:
            by_score = True
        elif option == b"REV" and not mode:
            reverse = True
        elif option == b"LIMIT" and index + 2 < len(args):
            limit = (integer(args[index + 1]), integer(args[index + 2]))
            index += 2
        else:
            raise redis_error(SYNTAX)
        index += 1
    ordered = (existing(store, args[0], ZSet) or ZSet()).ordered()
    if reverse:
        ordered.reverse()
    if by_score:
        first, second = score_bound(args[1]), score_bound(args[2])
        low, high = (second, first) if reverse else (first, second)
        chosen = [item for item in ordered if in_range(item[1], low, high)]
        if limit is not None:
            offset, count = limit
            chosen = chosen[offset:] if count < 0 else chosen[offset : offset + count]
        return ranged(chosen, with_scores)
    if limit is not None:
        raise redis_error("ERR syntax error, LIMIT is only supported in combination with "
                          "either BYSCORE or BYLEX")
    start = max(0, list_index(len(ordered), args[1]))
    stop = list_index(len(ordered), args[2])
    return ranged(ordered[start : stop + 1] if start <= stop else [], with_scores)


def command_zrank(store: Store, arguments: tuple[object, ...], reverse: bool) -> object:
    key, member = need(arguments, 2, "zrank")[:2]
    found = existing(store, key, ZSet) or ZSet()
    if member not in found:
        return None
    ordered = [name for name, _ in found.ordered()]
    position = bisect.bisect_left(
        [(found[name], name) for name in ordered], (found[member], member)
    )
    return len(ordered) - 1 - position if reverse else position


def command_zpop(store: Store, arguments: tuple[object, ...], highest: bool) -> object:
    args = need(arguments, 1, "zpop")
    count = integer(args[1]) if len(args) > 1 else 1
    if count < 0:
        raise redis_error("ERR value is out of range, must be positive")
    found = existing(store, args[0], ZSet)
    if found is None:
        return []
    ordered = found.ordered()
    if highest:
        ordered.reverse()
    taken = ordered[:count]
    for member, _ in taken:
        del found[member]
    if taken:
        store.touch(args[0])
    return ranged(taken, True)


def command_zremrangebyscore(store: Store, arguments: tuple[object, ...]) -> object:
    key, low, high = need(arguments, 3, "zremrangebyscore")[:3]
    bounds = score_bound(low), score_bound(high)
    found = existing(store, key, ZSet)
    if found is None:
        return 0
    doomed = [member for member, score in found.items() if in_range(score, *bounds)]
    for member in doomed:
        del found[member]
    if doomed:
        store.touch(key)
    return len(doomed)
