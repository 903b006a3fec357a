"""Well-typed messages made from the registered schemas, for the adversary.

A Byzantine node may send any message its peers can decode. To get past the
decoder and reach protocol code, a forged message must be *well typed*: every
field of the type its class declares, within its declared bounds. This module
builds such values from type hints alone (``typing.get_type_hints(cls,
include_extras=True)``), so it works for every class the codec registers
(``registered_messages()``), whatever the codec implementation: frozen
``@message`` dataclasses or msgspec ``Struct`` s, whose
``Annotated[int, msgspec.Meta(ge=0)]`` style bounds (``ge``, ``gt``, ``le``,
``lt``, ``min_length``, ``max_length``) are honoured.

Which values: a :class:`Pool` holds what the adversary knows of the run (the
numbers, byte strings, strings and plain values it saw, and the edges of every
window and watermark it could observe). A drawn field takes a known value, a
neighbour of one (``x - 1``, ``x + 1``), an extreme, or something fresh; byte
fields may be a digest of real or fake data. Every draw comes from the
caller's ``random.Random``: the same pool and seed give the same message.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from replicaio.core.codec import Value

INT_MIN = -(1 << 63)
INT_MAX = (1 << 63) - 1
DEPTH_MAX = 4  # nesting of generated messages and containers
ITEMS_MAX = 3  # items of a generated tuple or dict (bounds may ask for fewer)
POOL_ITEMS_MAX = 512  # per kind of value a pool remembers
FRESH_INT_MAX = 1 << 20
SPREAD_MAX = 1 << 10  # how far beyond a known number a draw may land


@dataclass(slots=True)
class Pool:
    """What an adversary knows of the run, as material for forged fields.

    ``numbers`` are the interesting integers (ids, sequence numbers, terms,
    indexes, window edges); ``values`` are plain hashable values seen in
    link bodies. Lists, not sets: draws must not depend on string hashing.
    """

    numbers: list[int] = field(default_factory=list)
    blobs: list[bytes] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)

    def add_number(self, number: int) -> None:
        if len(self.numbers) < POOL_ITEMS_MAX:
            self.numbers.append(number)

    def add_blob(self, blob: bytes) -> None:
        if len(self.blobs) < POOL_ITEMS_MAX:
            self.blobs.append(blob)

    def add_text(self, text: str) -> None:
        if len(self.texts) < POOL_ITEMS_MAX:
            self.texts.append(text)

    def add_value(self, value: Any) -> None:
        if len(self.values) < POOL_ITEMS_MAX:
            self.values.append(value)

    def harvest(self, data: Any, depth: int = 0) -> None:
        """Remember the scalars inside ``data`` (a message, a tuple, a value)."""
        if depth > DEPTH_MAX:
            return
        kind = type(data)
        if kind is int:
            self.add_number(data)
        elif kind is bytes:
            self.add_blob(data)
        elif kind is str:
            self.add_text(data)
        elif kind is tuple or kind is list:
            for item in data[:8]:
                self.harvest(item, depth + 1)
        elif kind is dict:
            for key, item in list(data.items())[:8]:
                self.harvest(key, depth + 1)
                self.harvest(item, depth + 1)
        else:
            for name in field_names(kind):
                self.harvest(getattr(data, name, None), depth + 1)


@dataclass(frozen=True, slots=True)
class Bounds:
    """The constraints of an ``Annotated`` field, from any ``Meta``-like object."""

    low: int | float | None = None
    high: int | float | None = None
    length_min: int = 0
    length_max: int | None = None

    @classmethod
    def of(cls, metadata: Sequence[Any]) -> Bounds:
        low: int | float | None = None
        high: int | float | None = None
        length_min = 0
        length_max: int | None = None
        for meta in metadata:
            ge, gt = getattr(meta, "ge", None), getattr(meta, "gt", None)
            le, lt = getattr(meta, "le", None), getattr(meta, "lt", None)
            if ge is not None:
                low = ge
            if gt is not None:
                low = gt + 1 if isinstance(gt, int) else gt
            if le is not None:
                high = le
            if lt is not None:
                high = lt - 1 if isinstance(lt, int) else lt
            length_min = getattr(meta, "min_length", None) or length_min
            found_max = getattr(meta, "max_length", None)
            if found_max is not None:
                length_max = found_max
        return cls(low, high, length_min, length_max)

    def clamp(self, number: int) -> int:
        """``number`` within the bounds and the 64-bit range the wire carries."""
        if self.low is not None and number < self.low:
            return int(self.low)
        if self.high is not None and number > self.high:
            return int(self.high)
        return min(max(number, INT_MIN), INT_MAX)


NO_BOUNDS = Bounds()
HINTS: dict[type, tuple[tuple[str, Any], ...]] = {}


def field_names(cls: type) -> tuple[str, ...]:
    """The fields of a message class in wire order (dataclass or msgspec Struct)."""
    struct_fields = getattr(cls, "__struct_fields__", None)
    if struct_fields is not None:
        return tuple(struct_fields)
    if dataclasses.is_dataclass(cls):
        return tuple(item.name for item in dataclasses.fields(cls))
    return ()


def field_hints(cls: type) -> tuple[tuple[str, Any], ...]:
    """``(name, hint)`` of every field of ``cls``, resolved once and cached."""
    found = HINTS.get(cls)
    if found is None:
        hints = typing.get_type_hints(cls, include_extras=True)
        found = HINTS[cls] = tuple((name, hints[name]) for name in field_names(cls))
    return found


def is_message_class(hint: Any) -> bool:
    """A message class, also one without fields (it still has a tag on the wire)."""
    return isinstance(hint, type) and (
        hasattr(hint, "__struct_fields__") or dataclasses.is_dataclass(hint)
    )


def admits_any_int(hint: Any) -> bool:
    """Whether ``hint`` takes any int (not only a Literal's values): ``int``,
    possibly ``Annotated`` or in a union."""
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) in (Union, types.UnionType):
        return any(admits_any_int(arg) for arg in typing.get_args(hint))
    return hint is int


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class Forger:
    """Draws well-typed values for type hints from a :class:`Pool`."""

    def __init__(self, rng: random.Random, pool: Pool) -> None:
        self.rng = rng
        self.pool = pool

    # -- messages ------------------------------------------------------------

    def message(self, cls: type, depth: int = 0) -> Any:
        """A fresh, well-typed instance of the message class ``cls``."""
        values = [self.value(hint, depth + 1) for _, hint in field_hints(cls)]
        return cls(*values)

    def mutate(self, original: Any, depth: int = 0) -> Any:
        """``original`` with some fields redrawn (most stay): a forged message
        close enough to real traffic to pass a receiver's first checks."""
        cls = type(original)
        hints = field_hints(cls)
        if not hints:
            return original
        values = [getattr(original, name) for name, _ in hints]
        for _ in range(self.rng.randint(1, 2)):
            index = self.rng.randrange(len(hints))
            values[index] = self.near(values[index], hints[index][1], depth + 1)
        return cls(*values)

    def near(self, value: Any, hint: Any, depth: int) -> Any:
        """A value of type ``hint`` close to ``value`` (or any, when not comparable)."""
        bounds = NO_BOUNDS
        annotated = hint
        if typing.get_origin(hint) in (Union, types.UnionType):
            # An optional bounded int (``Annotated[int, Meta(ge=0)] | None``):
            # its int's bounds hold for a neighbour too.
            annotated = next((arg for arg in typing.get_args(hint)
                              if typing.get_origin(arg) is typing.Annotated), hint)
        if typing.get_origin(annotated) is typing.Annotated:
            bounds = Bounds.of(typing.get_args(annotated)[1:])
        if type(value) is int and admits_any_int(hint) and self.rng.random() < 0.7:
            return bounds.clamp(value + self.rng.choice((-1, 1, -2, 2)))
        return self.value(hint, depth)

    # -- values --------------------------------------------------------------

    def value(self, hint: Any, depth: int = 0, bounds: Bounds = NO_BOUNDS) -> Any:
        """A value of type ``hint`` (see the module docstring)."""
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if origin is typing.Annotated:
            return self.value(args[0], depth, Bounds.of(args[1:]))
        if hint is None or hint is type(None):
            return None
        if hint is bool:
            return self.rng.random() < 0.5
        if hint is int:
            return self.number(bounds)
        if hint is float:
            return float(self.number(bounds))
        if hint is bytes:
            return self.blob(bounds)
        if hint is str:
            return self.text(bounds)
        if hint is Any or hint is Value or hint is object:
            return self.plain(depth)
        if origin is Union or origin is types.UnionType:
            members = [arg for arg in args if not self.too_deep(arg, depth)] or list(args)
            return self.value(self.rng.choice(members), depth, bounds)
        if origin is Literal:
            return self.rng.choice(args)
        if origin is tuple:
            return self.tuple_of(args, depth, bounds)
        if origin is dict:
            count = self.length(bounds, depth)
            return {self.value(args[0], depth + 1): self.value(args[1], depth + 1)
                    for _ in range(count)}
        if is_message_class(hint):
            return self.message(hint, depth)
        return self.plain(depth)

    def too_deep(self, hint: Any, depth: int) -> bool:
        return depth >= DEPTH_MAX and (is_message_class(hint) or typing.get_origin(hint) is tuple)

    def tuple_of(self, args: tuple[Any, ...], depth: int, bounds: Bounds) -> tuple[Any, ...]:
        if len(args) == 2 and args[1] is Ellipsis:
            count = self.length(bounds, depth)
            return tuple(self.value(args[0], depth + 1) for _ in range(count))
        if args == ((),):
            return ()
        return tuple(self.value(arg, depth + 1) for arg in args)

    def length(self, bounds: Bounds, depth: int) -> int:
        high = ITEMS_MAX if depth < DEPTH_MAX else 0
        if bounds.length_max is not None:
            high = min(high, bounds.length_max)
        low = min(bounds.length_min, high) if bounds.length_max is None else bounds.length_min
        return self.rng.randint(low, max(low, high))

    def number(self, bounds: Bounds = NO_BOUNDS) -> int:
        """A known number or a neighbour of one, a bound, an extreme, or fresh."""
        rng = self.rng
        roll = rng.random()
        numbers = self.pool.numbers
        if numbers and roll < 0.7:
            number = rng.choice(numbers) + rng.choice((0, 0, -1, 1))
        elif numbers and roll < 0.8:  # beyond an edge, by a stride
            number = rng.choice(numbers) + rng.randrange(2, SPREAD_MAX)
        elif roll < 0.85 and (bounds.low is not None or bounds.high is not None):
            edge = bounds.low if bounds.high is None or rng.random() < 0.5 else bounds.high
            number = int(edge if edge is not None else 0)
        elif roll < 0.9:
            number = rng.choice((0, -1, 1, INT_MAX, INT_MIN, 1 << 31, 1 << 32))
        else:
            number = rng.randrange(-FRESH_INT_MAX, FRESH_INT_MAX)
        return bounds.clamp(number)

    def beyond(self, number: Any) -> int:
        """A number some way above ``number`` (past a window that starts there)."""
        base = number if type(number) is int else 0
        return NO_BOUNDS.clamp(base + self.rng.randrange(2, SPREAD_MAX))

    def blob(self, bounds: Bounds = NO_BOUNDS) -> bytes:
        """Seen bytes, a variant of them, a digest of real or fake data, or fresh."""
        rng = self.rng
        blobs = self.pool.blobs
        roll = rng.random()
        if blobs and roll < 0.4:
            found = rng.choice(blobs)
        elif blobs and roll < 0.55:
            found = rng.choice(blobs) + b"~"
        elif roll < 0.75:
            real = rng.choice(blobs) if blobs and rng.random() < 0.5 else rng.randbytes(8)
            found = digest(real)
        else:
            found = rng.randbytes(rng.choice((0, 1, 8, 32)))
        fitted: bytes = self.fit(found, bounds)
        return fitted

    def text(self, bounds: Bounds = NO_BOUNDS) -> str:
        texts = self.pool.texts
        if texts and self.rng.random() < 0.7:
            found = self.rng.choice(texts)
        else:
            found = self.rng.choice(("", "x", "SEND", "ECHO", "READY", "bcast"))
        fitted: str = self.fit(found, bounds)
        return fitted

    def fit(self, found: Any, bounds: Bounds) -> Any:
        if bounds.length_max is not None and len(found) > bounds.length_max:
            found = found[: bounds.length_max]
        if len(found) < bounds.length_min:
            pad = b"x" if isinstance(found, bytes) else "x"
            found = found + pad * (bounds.length_min - len(found))
        return found

    def plain(self, depth: int) -> Any:
        """A plain (``Value``) datum: seen, or a fresh scalar or tuple."""
        rng = self.rng
        values = self.pool.values
        roll = rng.random()
        if values and roll < 0.5:
            return rng.choice(values)
        if roll < 0.7:
            return self.blob()
        if roll < 0.8:
            return self.number()
        if roll < 0.85:
            return self.text()
        if roll < 0.9 and depth < DEPTH_MAX:
            return (self.number(), self.blob())
        return rng.choice((None, True, False, 0.5))
