"""The key-value store's snapshot format (versioned; equal states give equal bytes).

Format 3 (written): ``["replicaio.kv", 3, items, revision, floor, tombstones,
now_ms]`` where ``items`` is ``[[key, type, value, version, deadline], ...]``
in key order: ``type`` is ``values.TYPE_CODES`` (0 string, 1 hash, 2 list,
3 set, 4 sorted set); ``value`` is the bytes of a string, ``[field, value,
...]`` of a hash, the elements of a list or set, ``[member, score, ...]`` of a
sorted set (collections in their insertion order, which commands answer in);
``deadline`` is the key's expiry in the log's milliseconds, 0 for none.
``tombstones`` is ``[[key, version], ...]`` in version order; ``now_ms`` is
the log's clock.

Format 2 (read, never written): strings only, no expiry: ``["replicaio.kv", 2,
[[key, value, version], ...], revision, floor, tombstones]``. Format 1 and any
other version are refused, naming the version.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from replicaio.core.codec import Codec
from replicaio.services.kv.values import (
    TYPE_CODES,
    Hash,
    ListValue,
    SetValue,
    Value,
    ZSet,
)

if TYPE_CHECKING:
    from replicaio.services.kv.state_machine import KeyValueStateMachine, KvParams

SNAPSHOT_FORMAT: Final = "replicaio.kv"
SNAPSHOT_VERSION: Final = 3
READABLE_VERSIONS: Final = (2, 3)


@dataclass(slots=True)
class SnapshotState:
    data: dict[bytes, Value] = field(default_factory=dict)
    versions: dict[bytes, int] = field(default_factory=dict)
    tombstones: dict[bytes, int] = field(default_factory=dict)
    expires: dict[bytes, int] = field(default_factory=dict)
    revision: int = 0
    floor: int = 0
    now_ms: int = 0


def _encode_value(value: Value) -> object:
    if isinstance(value, bytes):
        return value
    if isinstance(value, Hash):
        return [word for pair in value.items() for word in pair]
    if isinstance(value, ZSet):
        return [part for member, score in value.items() for part in (member, score)]
    return list(value)


def encode_snapshot(store: KeyValueStateMachine, codec: Codec) -> bytes:
    items = [
        [key, TYPE_CODES[type(value)], _encode_value(value), store.versions[key],
         store.expires.get(key, 0)]
        for key, value in sorted(store.data.items())
    ]
    tombstones = sorted(store.tombstones.items(), key=lambda item: (item[1], item[0]))
    return codec.encode_value([
        SNAPSHOT_FORMAT, SNAPSHOT_VERSION, items, store.revision, store.floor,
        [[key, version] for key, version in tombstones], store.now_ms,
    ])


def decode_snapshot(
    value: object, params: KvParams, error: Callable[[str], Exception]
) -> SnapshotState:
    """The state a decoded snapshot holds; raises ``error(text)`` if it is not one."""
    if not (isinstance(value, tuple) and len(value) >= 2 and value[0] == SNAPSHOT_FORMAT):
        raise error("not a key-value snapshot")
    version = value[1]
    if version not in READABLE_VERSIONS:
        raise error(
            f"key-value snapshot version {version!r} is not supported (this store reads "
            f"versions {', '.join(map(str, READABLE_VERSIONS))}; a version-1 snapshot has no "
            "key versions: start such a data directory afresh)"
        )
    if len(value) != (6 if version == 2 else 7):
        raise error("key-value snapshot malformed")
    revision, floor = value[3], value[4]
    if not (type(revision) is int and type(floor) is int and 0 <= floor <= revision):
        raise error("key-value snapshot revision or floor malformed")
    state = SnapshotState(revision=revision, floor=floor)
    if version == 3:
        now_ms = value[6]
        if type(now_ms) is not int or now_ms < 0:
            raise error("key-value snapshot clock malformed")
        state.now_ms = now_ms
    items = value[2]
    if not isinstance(items, tuple) or len(items) > params.keys_max:
        raise error("key-value snapshot items malformed or over keys_max")
    for item in items:
        if version == 2 and isinstance(item, tuple) and len(item) == 3:
            item = (item[0], 0, item[1], item[2], 0)
        _restore_item(state, item, params, error)
    state.tombstones = _restore_tombstones(value[5], params.tombstones_max, revision, error)
    if any(key in state.data for key in state.tombstones):
        raise error("key-value snapshot holds a key both present and deleted")
    return state


def _restore_item(
    state: SnapshotState, item: object, params: KvParams, error: Callable[[str], Exception]
) -> None:
    if not (
        isinstance(item, tuple)
        and len(item) == 5
        and isinstance(item[0], bytes)
        and type(item[1]) is int
        and type(item[3]) is int
        and 0 < item[3] <= state.revision
        and type(item[4]) is int
        and item[4] >= 0
    ):
        raise error(f"key-value snapshot item malformed: {item!r}"[:200])
    key, code, payload, version, deadline = item
    if key in state.data:
        raise error("key-value snapshot holds a key twice")
    decoded = _decode_value(code, payload, params.items_max)
    if decoded is None:
        raise error(f"key-value snapshot value malformed for key {key!r}"[:200])
    state.data[key] = decoded
    state.versions[key] = version
    if deadline:
        state.expires[key] = deadline


def _decode_value(code: int, payload: object, items_max: int) -> Value | None:
    if code == TYPE_CODES[bytes]:
        return payload if isinstance(payload, bytes) else None
    if not isinstance(payload, tuple) or len(payload) > 2 * items_max or not payload:
        return None
    if code == TYPE_CODES[ListValue] or code == TYPE_CODES[SetValue]:
        if not all(isinstance(item, bytes) for item in payload):
            return None
        elements = [item for item in payload if isinstance(item, bytes)]
        if code == TYPE_CODES[ListValue]:
            return ListValue(elements)
        members = SetValue.fromkeys(elements)
        return SetValue(members) if len(members) == len(elements) else None
    if len(payload) % 2:
        return None
    firsts, seconds = payload[0::2], payload[1::2]
    if not all(isinstance(item, bytes) for item in firsts) or len(set(firsts)) != len(firsts):
        return None
    if code == TYPE_CODES[Hash] and all(isinstance(item, bytes) for item in seconds):
        return Hash(zip(firsts, seconds, strict=True))
    if code == TYPE_CODES[ZSet] and all(type(item) is float for item in seconds):
        return ZSet(zip(firsts, seconds, strict=True))
    return None


def _restore_tombstones(
    items: object, tombstones_max: int, revision: int, error: Callable[[str], Exception]
) -> dict[bytes, int]:
    if not isinstance(items, tuple) or len(items) > tombstones_max:
        raise error("key-value snapshot tombstones malformed or over tombstones_max")
    tombstones: dict[bytes, int] = {}
    last = 0
    for item in items:
        if not (
            isinstance(item, tuple)
            and len(item) == 2
            and isinstance(item[0], bytes)
            and type(item[1]) is int
            and last < item[1] <= revision
            and item[0] not in tombstones
        ):
            raise error(f"key-value snapshot tombstone malformed: {item!r}"[:200])
        tombstones[item[0]] = last = item[1]
    return tombstones
