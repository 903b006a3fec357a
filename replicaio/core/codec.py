"""The typed message codec: frozen ``msgspec`` structs to msgpack bytes and back.

Who uses it: the simulator encodes and decodes every simulated message (so the
protocol is tested against exactly what the wire carries), the live runtime
decodes bytes from untrusted peers, storage and the event log encode plain
``Value`` records. One codec, strict in both directions:

* ``Codec.encode`` refuses anything the peer's ``decode`` would refuse (wrong
  field types, unregistered classes, too deep, too long, oversized) with a
  typed ``EncodeError``: a local bug is caught at the sender, not by peers.
* ``Codec.decode`` raises ``DecodeError`` and nothing else for any input bytes;
  ``DecodeError.reason`` is a short stable code usable as a metrics label.
  A Byzantine peer's garbage is dropped and counted, never a crash.

A message is a subclass of :class:`Message`: a ``msgspec.Struct`` that is
frozen, ``array_like`` and tagged, so its wire form is the msgpack array
``[tag, field1, field2, ...]`` in field declaration order (nested messages the
same way). Every ``str``, ``bytes``, variable-length ``tuple`` and ``dict`` in
a message's fields carries its bound in its type hint
(``Annotated[bytes, Meta(max_length=...)]``); the class is refused at
definition otherwise. msgspec checks types and bounds while decoding, in C.

What msgspec does not bound, this module does (see docs/codec.md, "Limits"):
the frame (``frame_bytes_max``), untyped ``Value`` data (depth, items, scalar
map keys, checked on the decoded value; arrays become tuples), nesting through
recursive messages (msgspec stops at the interpreter's recursion limit:
``too_deep``), and hash flooding: a msgpack map whose keys are arrays would be
decoded into a dict of colliding tuple keys before any check could run, so a
frame above ``_SCAN_BYTES_MIN`` that may carry ``Value`` data is first walked
by a structural scanner that allocates nothing and refuses such keys.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias, TypeVar, Union

import msgspec

from replicaio.core.msgpack_scan import ScanRefused, peek_tag, scan

__all__ = [
    "DECODE_REASONS",
    "ENCODE_REASONS",
    "NAME_LENGTH_MAX",
    "VALUE_BOUNDS",
    "Codec",
    "CodecDefinitionError",
    "DecodeError",
    "EncodeError",
    "Message",
    "Meta",
    "Name",
    "ReasonedError",
    "Value",
    "ValueBounds",
    "registered_messages",
]

Meta = msgspec.Meta

_T = TypeVar("_T")

_DEPTH_MAX_LIMIT = 256
_TAG_BYTES_MAX = 255
# Frames up to this size that carry Value data are decoded directly: at most
# a few hundred map entries fit, so colliding keys cost microseconds. Larger
# ones are scanned first (see the module docstring).
_SCAN_BYTES_MIN = 2048
# A frame's default bound: one message carrying a batch of SMR's largest (a
# key-value store's 8 MiB value with room to spare; docs/codec.md).
FRAME_BYTES_MAX_DEFAULT = 16 << 20

DECODE_REASONS = frozenset(
    {"oversized", "malformed", "unknown_type", "arity", "field_type", "too_deep", "too_long"}
)
ENCODE_REASONS = frozenset({"unregistered", "field_type", "too_deep", "too_long", "oversized"})


# --------------------------------------------------------------------------- errors


class ReasonedError(Exception):
    """An error with a stable ``reason`` (for metrics labels) and a human-readable
    ``detail`` that may change between versions; shown as ``reason: detail``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class DecodeError(ReasonedError):
    """Bytes that are not a valid frame for this codec (a peer's fault, never ours).

    ``reason`` is one of ``DECODE_REASONS``.
    """


class EncodeError(ReasonedError):
    """A value the codec refuses to encode (a caller bug); ``reason`` in ``ENCODE_REASONS``."""


class CodecDefinitionError(TypeError):
    """A message class the codec cannot support (raised when the class is defined)."""


# --------------------------------------------------------------------------- Value


@dataclasses.dataclass(frozen=True, slots=True)
class ValueBounds:
    """The bounds of untyped ``Value`` data, carried in its type hint.

    ``depth_max`` counts containers (a top-level tuple is depth 1);
    ``items_max`` bounds every array and map inside. str and bytes inside a
    ``Value`` are bounded by the frame.
    """

    depth_max: int
    items_max: int

    def __post_init__(self) -> None:
        if type(self.depth_max) is not int or not 1 <= self.depth_max <= _DEPTH_MAX_LIMIT:
            raise ValueError(
                f"depth_max must be an int in 1..{_DEPTH_MAX_LIMIT}, got {self.depth_max!r}"
            )
        if type(self.items_max) is not int or self.items_max < 1:
            raise ValueError(f"items_max must be a positive int, got {self.items_max!r}")


VALUE_BOUNDS = ValueBounds(depth_max=32, items_max=1 << 16)

if TYPE_CHECKING:
    Value: TypeAlias = Union[  # noqa: UP007 - a recursive alias needs the string forms
        bool, int, float, str, bytes, tuple["Value", ...], Mapping[Any, "Value"], None
    ]
else:
    # At runtime a Value field is untyped msgpack data whose bounds travel in
    # the hint: ``Annotated[Value, ValueBounds(...)]`` narrows them per field.
    Value = Annotated[Any, VALUE_BOUNDS]

_SCALARS = (bool, int, float, str, bytes, type(None))

NAME_LENGTH_MAX = 255
# A short identifier (channel, component, reason): the common bounded str field.
Name: TypeAlias = Annotated[str, Meta(max_length=NAME_LENGTH_MAX)]


# --------------------------------------------------------------------------- messages

_CLASS_BY_TAG: dict[str, type[Message]] = {}
_VALUE_FIELDS: dict[type, tuple[tuple[str, ValueBounds], ...]] = {}
# Defined, but naming a class not defined yet (a forward reference): checked and
# moved to _CLASS_BY_TAG at first use; until then its tag is reserved.
_PENDING: dict[str, type[Message]] = {}
_REGISTRY_VERSION = [0]  # bumped on every registration: codecs rebuild their decoders


def registered_messages() -> Mapping[str, type[Message]]:
    """A read-only view of the registry (tag -> class); registration is append-only.

    It holds every checked message class; a class whose hints name a class not
    defined yet joins once they resolve (a class whose hints never resolve,
    a definition bug, never does: encoding it raises ``CodecDefinitionError``).
    """
    _resolve_pending()
    return types.MappingProxyType(_CLASS_BY_TAG)


def _resolve_pending() -> None:
    for tag, cls in list(_PENDING.items()):
        # a class still unresolvable stays out: its tag is unknown_type on decode
        with contextlib.suppress(NameError, CodecDefinitionError):
            _check_class(cls)
            del _PENDING[tag]
            _CLASS_BY_TAG[tag] = cls
            _REGISTRY_VERSION[0] += 1


@typing.dataclass_transform(frozen_default=True, field_specifiers=(msgspec.field,))
class _MessageMeta(msgspec.StructMeta):
    """Registers every ``Message`` subclass under its tag as the class is made."""

    def __new__(
        mcls, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **kwargs: Any
    ) -> _MessageMeta:
        if "__post_init__" in namespace:
            raise CodecDefinitionError(
                f"{name}: messages have no behaviour; a __post_init__ would run on decode"
            )
        tag = kwargs.get("tag")
        if isinstance(tag, str):
            _check_tag(tag, name)
        cls = super().__new__(mcls, name, bases, namespace, **kwargs)
        if bases != (msgspec.Struct,):  # Message itself is no message
            _register(cls)
        return cls


class Message(
    msgspec.Struct,
    metaclass=_MessageMeta,
    frozen=True,
    array_like=True,
    forbid_unknown_fields=True,
    tag=True,
):
    """Base of every wire message: a frozen, array-like, tagged ``msgspec.Struct``.

    ``class Echo(Message, tag="bracha.Echo")`` registers ``Echo`` under its
    tag (the class name if none is given; library code should namespace it).
    A duplicate tag, a field without a bound, or an unsupported field type
    raises :class:`CodecDefinitionError` when the class is defined (for a
    hint naming a class defined later in the module: at first use).
    """


def _register(cls: type) -> None:
    config = cls.__struct_config__  # type: ignore[attr-defined]
    tag = config.tag
    owner = f"{cls.__module__}.{cls.__qualname__}"
    _check_tag(tag, owner)
    if not (config.frozen and config.array_like and config.forbid_unknown_fields):
        raise CodecDefinitionError(
            f"{owner}: messages stay frozen, array_like and forbid_unknown_fields"
        )
    other = _CLASS_BY_TAG.get(tag) or _PENDING.get(tag)
    if other is not None:
        raise CodecDefinitionError(
            f"duplicate message tag {tag!r}: {owner} and "
            f"{other.__module__}.{other.__qualname__}; pass tag=... to namespace it"
        )
    try:
        _check_class(cls)
    except NameError:
        _PENDING[tag] = cls  # a forward reference: checked at first use
        return
    _CLASS_BY_TAG[tag] = cls
    _REGISTRY_VERSION[0] += 1


def _check_tag(tag: object, owner: str) -> None:
    if not isinstance(tag, str) or not tag:
        raise CodecDefinitionError(f"{owner}: tag must be a non-empty str")
    if not tag.isprintable() or len(tag.encode("utf-8", "replace")) > _TAG_BYTES_MAX:
        raise CodecDefinitionError(
            f"{owner}: a tag is printable text of at most {_TAG_BYTES_MAX} bytes"
        )


def _check_class(cls: type) -> None:
    """Check every field's type; record the ``Value`` fields. NameError: not yet."""
    owner = cls.__qualname__
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except NameError:
        raise
    except Exception as error:
        raise CodecDefinitionError(
            f"{owner}: cannot resolve field annotations ({error!r})"
        ) from error
    values: list[tuple[str, ValueBounds]] = []
    for name in cls.__struct_fields__:  # type: ignore[attr-defined]
        bounds = _value_bounds(hints[name])
        if bounds is not None:
            values.append((name, bounds))
        else:
            _check_hint(hints[name], f"{owner}.{name}", None)
    try:
        msgspec.msgpack.Decoder(cls)
    except TypeError as error:  # a type msgspec cannot decode unambiguously
        raise CodecDefinitionError(f"{owner}: {error}") from error
    _VALUE_FIELDS[cls] = tuple(values)


def _resolve(cls: type) -> tuple[tuple[str, ValueBounds], ...]:
    """Check a class whose hints named a class not yet defined; its Value fields."""
    _resolve_pending()
    values = _VALUE_FIELDS.get(cls)
    if values is None:
        try:
            _check_class(cls)
        except NameError as error:
            raise CodecDefinitionError(
                f"{cls.__qualname__}: cannot resolve field annotations ({error!r}); message "
                "annotations must name types visible from the module's globals"
            ) from error
        raise AssertionError("a pending class that checks is registered by _resolve_pending")
    return values


def _value_bounds(hint: Any) -> ValueBounds | None:
    """The bounds if ``hint`` is a ``Value`` (``Annotated[Any, ValueBounds]``), else None."""
    if typing.get_origin(hint) is not Annotated:
        return None
    inner, *extras = typing.get_args(hint)
    found = [extra for extra in extras if isinstance(extra, ValueBounds)]
    if inner is not Any or not found:
        return None
    return found[-1]


_BOUNDED = (str, bytes)


def _check_hint(hint: Any, where: str, length_max: int | None) -> None:
    """Refuse a field type the codec cannot bound or decode unambiguously."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Annotated:
        if _value_bounds(hint) is not None:
            raise CodecDefinitionError(f"{where}: Value is only allowed as a whole field")
        metas = [extra for extra in args[1:] if isinstance(extra, msgspec.Meta)]
        lengths = [meta.max_length for meta in metas if meta.max_length is not None]
        _check_hint(args[0], where, lengths[-1] if lengths else length_max)
        return
    if hint in _BOUNDED:
        if length_max is None:
            raise CodecDefinitionError(
                f"{where}: {hint.__name__} needs a bound: Annotated[{hint.__name__}, "
                "Meta(max_length=...)]"
            )
        return
    if hint in (int, bool, float, type(None), None):
        return
    if isinstance(hint, type) and issubclass(hint, Message):
        if _VALUE_FIELDS.get(hint):
            raise CodecDefinitionError(f"{where}: a message with Value fields cannot be nested")
        return
    if origin is Union or origin is types.UnionType:
        for arg in args:
            _check_hint(arg, where, None)
        return
    if origin is Literal:
        if not args or not all(type(arg) in (int, str) for arg in args):
            raise CodecDefinitionError(f"{where}: Literal values must be int or str")
        return
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            if length_max is None:
                raise CodecDefinitionError(
                    f"{where}: tuple[X, ...] needs a bound: Annotated[tuple[X, ...], "
                    "Meta(max_length=...)]"
                )
            _check_hint(args[0], f"{where}[]", None)
            return
        for index, arg in enumerate(args if args != ((),) else ()):
            _check_hint(arg, f"{where}[{index}]", None)
        return
    if origin is dict and len(args) == 2:
        if length_max is None:
            raise CodecDefinitionError(
                f"{where}: dict needs a bound: Annotated[dict[K, V], Meta(max_length=...)]"
            )
        key = args[0]
        if typing.get_origin(key) is Annotated:
            key = typing.get_args(key)[0]
        if key not in (int, str, bytes):
            raise CodecDefinitionError(f"{where}: dict keys must be str, int or bytes")
        _check_hint(args[0], f"{where}.key", None if key is int else 1 << 16)
        _check_hint(args[1], f"{where}[]", None)
        return
    shown = getattr(hint, "__name__", repr(hint))
    raise CodecDefinitionError(
        f"{where}: unsupported field type {shown} (use int, bool, float, bounded str/bytes, "
        "None, unions, bounded tuple[X, ...], tuple[X, Y], bounded dict[K, V], Literal, "
        "Value or a Message class)"
    )


# --------------------------------------------------------------------------- Value checks


def _check_value(value: Any, budget: int, items_max: int) -> Any:
    """Plain data as decoded by msgspec, checked against the bounds; arrays become tuples."""
    kind = type(value)
    if kind is list:
        if budget < 1:
            raise DecodeError("too_deep", "Value nesting deeper than depth_max")
        if len(value) > items_max:
            raise DecodeError("too_long", f"{len(value)} items exceeds items_max={items_max}")
        return tuple([  # (a list, not a generator: cpdef, and no closure per array)
            item if type(item) in _SCALARS else _check_value(item, budget - 1, items_max)
            for item in value
        ])
    if kind is dict:
        if budget < 1:
            raise DecodeError("too_deep", "Value nesting deeper than depth_max")
        if len(value) > items_max:
            raise DecodeError("too_long", f"{len(value)} items exceeds items_max={items_max}")
        result = {}
        for key, item in value.items():
            if type(key) not in _SCALARS:
                raise DecodeError("malformed", "map keys must be scalars")
            result[key] = (
                item if type(item) in _SCALARS else _check_value(item, budget - 1, items_max)
            )
        return result
    if kind in _SCALARS:
        return value
    raise DecodeError("malformed", f"{kind.__name__} is not plain msgpack data")


# Scalars that need no check of their own (an int needs its range checked).
_LEAVES = frozenset((bool, float, str, bytes, type(None)))
_INT_MIN = -(1 << 63)
_INT_END = 1 << 64


def _check_plain(value: Any, budget: int, items_max: int) -> None:
    """Encode side: refuse what is not plain data within the bounds (``EncodeError``)."""
    kind = type(value)
    if kind in _LEAVES:
        return
    if kind is int:
        if not _INT_MIN <= value < _INT_END:
            raise EncodeError("field_type", f"int {value} outside the 64-bit range")
        return
    if kind is tuple or kind is list or kind is dict:
        if budget < 1:
            raise EncodeError("too_deep", "Value nesting deeper than depth_max")
        if len(value) > items_max:
            raise EncodeError("too_long", f"{len(value)} items exceeds items_max={items_max}")
        if kind is dict:
            for key, item in value.items():
                if type(key) not in _SCALARS:
                    raise EncodeError("field_type", f"map keys must be scalars, got {_got(key)}")
                _check_plain(key, budget, items_max)
                _check_plain(item, budget - 1, items_max)
        else:
            leaves = _LEAVES
            for item in value:
                # Scalars inline: a snapshot's thousands of them cost no call each.
                item_kind = type(item)
                if item_kind in leaves or (item_kind is int and _INT_MIN <= item < _INT_END):
                    continue
                _check_plain(item, budget - 1, items_max)
        return
    raise EncodeError("field_type", f"expected plain msgpack data (Value), got {_got(value)}")


def _got(value: object) -> str:
    return "None" if value is None else type(value).__name__


# --------------------------------------------------------------------------- errors from msgspec


def _validation_error(error: msgspec.ValidationError) -> DecodeError:
    """Our reason for msgspec's message ("Expected `int`, got `str` - at `$[1]`")."""
    text = str(error)
    message, _, where = text.partition(" - at `")
    if where.rstrip("`") == "$[0]":
        return DecodeError("unknown_type", text)  # the tag: unknown, or not a str
    if "got `ext`" in message:
        return DecodeError("malformed", f"msgpack extension types are not allowed ({text})")
    if " of length <= " in message:
        return DecodeError("too_long", text)
    if "of at least length" in message or "of at most length" in message:
        if not where and message.endswith("got 0"):
            return DecodeError("malformed", "a message frame is a non-empty array")
        return DecodeError("arity", text)
    if not where:
        return DecodeError("malformed", f"a message frame is a non-empty array ({text})")
    return DecodeError("field_type", text)


def _decode_error(error: Exception) -> DecodeError:
    """The ``DecodeError`` for whatever decoding raised."""
    if isinstance(error, DecodeError):
        return error
    if isinstance(error, msgspec.ValidationError):
        return _validation_error(error)
    if isinstance(error, msgspec.DecodeError):
        return DecodeError("malformed", str(error))
    if isinstance(error, RecursionError):
        return DecodeError("too_deep", "nesting deeper than the decoder allows")
    return DecodeError("malformed", f"{type(error).__name__}: {error}")  # e.g. unhashable key


_ENCODE_REASON = {
    "oversized": "oversized",
    "too_deep": "too_deep",
    "too_long": "too_long",
    "unknown_type": "field_type",
}


def _as_bytes(data: object) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError("malformed", f"expected bytes, got {_got(data)}")
    try:
        return bytes(data)
    except (TypeError, ValueError) as error:  # e.g. a released memoryview
        raise DecodeError("malformed", f"unreadable buffer: {error}") from None


# --------------------------------------------------------------------------- codec


class Codec:
    """Encodes registered messages and plain values to msgpack bytes, and back.

    Limits of this codec (each message field carries its own in its hint):

    * ``frame_bytes_max``: the largest frame accepted;
    * ``items_max``, ``depth_max``: the bounds of plain data given to
      ``encode_value``/``decode_value`` (a top-level tuple is depth 1).

    ``canonical=True`` makes ``decode`` also refuse (``malformed``) any frame
    that is not exactly what ``encode`` would produce for the decoded value, so
    equal messages always arrive as equal bytes (use it where frames are hashed,
    signed or compared; it costs one re-encode per decode).

    ``messages``, if given, is the exact set of classes this codec accepts
    (others are ``unknown_type`` / ``unregistered``). Not thread-safe: give
    each thread its own; instances are cheap.
    """

    __slots__ = (
        "_accepted",
        "_canonical",
        "_decode_typed",
        "_decoder_version",
        "_encode",
        "_fast_bytes_max",
        "_frame_bytes_max",
        "_value_bounds",
        "_value_tags",
        "_values",
    )

    def __init__(
        self,
        *,
        frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
        items_max: int = VALUE_BOUNDS.items_max,
        depth_max: int = VALUE_BOUNDS.depth_max,
        messages: Iterable[type] | None = None,
        canonical: bool = False,
    ) -> None:
        if type(frame_bytes_max) is not int or frame_bytes_max < 1:
            raise ValueError(f"frame_bytes_max must be a positive int, got {frame_bytes_max!r}")
        self._value_bounds = ValueBounds(depth_max=depth_max, items_max=items_max)
        self._frame_bytes_max = frame_bytes_max
        # frames up to this size take the fast paths (no size check, no scan)
        self._fast_bytes_max = min(frame_bytes_max, _SCAN_BYTES_MIN)
        self._canonical = canonical
        self._encode: Callable[[Any], bytes] = msgspec.msgpack.Encoder().encode
        self._values: Callable[[bytes], Any] = msgspec.msgpack.Decoder().decode
        self._accepted: frozenset[type] | None = None
        if messages is not None:
            accepted = frozenset(messages)
            for cls in accepted:
                if not (isinstance(cls, type) and issubclass(cls, Message)) or cls is Message:
                    raise CodecDefinitionError(f"{cls!r} is not a Message class")
            self._accepted = accepted
        self._decoder_version = -1
        self._decode_typed: Callable[[bytes], Any] = self._values
        self._value_tags: frozenset[str] = frozenset()
        self._rebuild()

    @property
    def canonical(self) -> bool:
        """Whether ``decode`` refuses a frame that is not its value's canonical encoding."""
        return bool(self._canonical)

    @property
    def frame_bytes_max(self) -> int:
        return self._frame_bytes_max

    @property
    def items_max(self) -> int:
        return self._value_bounds.items_max

    @property
    def depth_max(self) -> int:
        return self._value_bounds.depth_max

    # ----------------------------------------------------------------- messages

    def encode(self, message: object) -> bytes:
        """The frame of ``message``; ``EncodeError`` if any peer would refuse it.

        The frame is decoded again here, exactly as a peer would decode it, so
        a local bug (a wrong type, a bound exceeded) stops at the sender.
        """
        data: bytes = self.encode_checked(message)[0]
        return data

    def encode_unchecked(self, message: object) -> bytes:
        """:meth:`encode`'s bytes without its check (ADR 0066): not decoded again
        here. For a sender whose every receiver decodes and checks the frame
        anyway: a live host, whose peers refuse (and count) what they would not
        accept. msgspec's refusal and a frame over ``frame_bytes_max`` still raise
        ``EncodeError``. The simulator encodes every message of every run with
        :meth:`encode_checked`, so a protocol bug that makes a frame a peer would
        refuse stops at the sender there, in the swarms and the tests."""
        return self._frame(message)

    def encode_checked(self, message: object) -> tuple[bytes, object]:
        """:meth:`encode`, with the message its frame decodes to: what
        :meth:`decode` gives a peer for that frame (a fresh object, equal to
        ``message`` but for ``Value`` data: lists come back as tuples). The
        simulator hands it to the receivers instead of decoding the frame once
        more per receiver. A ``canonical`` codec's :meth:`decode` also checks
        the frame is canonical, which this does not: use :meth:`decode` there.
        """
        cls = type(message)
        values = _VALUE_FIELDS.get(cls)
        if values is None or self._decoder_version != _REGISTRY_VERSION[0]:
            values = self._encodable(cls)
        elif self._accepted is not None and cls not in self._accepted:
            raise EncodeError("unregistered", f"{cls.__qualname__} is not a message of this codec")
        for name, bounds in values:
            value = getattr(message, name)
            if type(value) not in _SCALARS:
                try:
                    _check_plain(value, bounds.depth_max, bounds.items_max)
                except EncodeError as error:
                    detail = f"{cls.__qualname__}.{name}: {error.detail}"
                    raise EncodeError(error.reason, detail) from None
        try:
            data = self._encode(message)
            if len(data) > self._fast_bytes_max:
                # A large frame: the peer's whole check (size, scan, decode) on
                # these very bytes; only a failure re-encodes, to name the error.
                decoded = self._decode_frame(data)
            else:
                decoded = self._decode_typed(data)  # the peer's check, run here
                if values:
                    _check_value_fields(decoded, values)
        except Exception as error:
            decoded = self._encode_failed(message, error)
            data = self._encode(message)
        if decoded != message:
            _check_round_trip(message, decoded, values)
        return data, decoded

    def decode(self, data: bytes | bytearray | memoryview) -> object:
        """The message in ``data``; ``DecodeError`` (and nothing else) if it is not one."""
        if type(data) is not bytes:
            data = _as_bytes(data)
        if len(data) > self._fast_bytes_max or self._decoder_version != _REGISTRY_VERSION[0]:
            result = self._decode_frame(data)
        else:
            try:
                result = self._decode_typed(data)
            except Exception as error:
                raise _decode_error(error) from None
            values = _VALUE_FIELDS[type(result)]
            if values:
                _check_value_fields(result, values)
        if self._canonical and self._frame(result) != data:
            raise DecodeError("malformed", "not the canonical encoding of its value")
        return result

    def decode_as(self, data: bytes | bytearray | memoryview, expected: type[_T]) -> _T:
        """Like ``decode``, but any message other than an ``expected`` is ``unknown_type``."""
        result = self.decode(data)
        if type(result) is not expected:
            raise DecodeError(
                "unknown_type", f"expected {expected.__name__}, got {type(result).__name__}"
            )
        return result

    # ----------------------------------------------------------------- values

    def encode_value(self, value: Value | list[Any]) -> bytes:
        """The frame of plain data; lists are accepted and come back as tuples."""
        if type(value) is bytes:  # the common case (a link's body): nothing to check, cannot fail
            data = self._encode(value)
            if len(data) <= self._frame_bytes_max:
                return data
            return self._frame(value)  # raises, with the reason
        bounds = self._value_bounds
        _check_plain(value, bounds.depth_max, bounds.items_max)
        return self._frame(value)

    def decode_value(self, data: bytes | bytearray | memoryview) -> Value:
        """Plain data from ``data``; ``DecodeError`` (and nothing else) if invalid."""
        if type(data) is not bytes:
            data = _as_bytes(data)
        size = len(data)
        if size > self._frame_bytes_max:
            raise DecodeError(
                "oversized", f"{size} bytes exceeds frame_bytes_max={self._frame_bytes_max}"
            )
        bounds = self._value_bounds
        if size > _SCAN_BYTES_MIN:
            _scanned(data, bounds.depth_max, bounds.items_max)
        try:
            raw = self._values(data)
        except msgspec.DecodeError as error:
            raise DecodeError("malformed", str(error)) from None
        except RecursionError:
            raise DecodeError("too_deep", "nesting deeper than the decoder allows") from None
        except Exception as error:  # e.g. an unhashable map key
            raise DecodeError("malformed", f"{type(error).__name__}: {error}") from None
        result = _check_value(raw, bounds.depth_max, bounds.items_max)
        if self._canonical and self._frame(result) != data:
            raise DecodeError("malformed", "not the canonical encoding of its value")
        return result  # type: ignore[no-any-return]

    # ----------------------------------------------------------------- internals

    def _frame(self, wire: Any) -> bytes:
        try:
            data = self._encode(wire)
        except RecursionError:
            raise EncodeError("too_deep", "nesting deeper than the encoder allows") from None
        except (TypeError, ValueError, OverflowError) as error:  # e.g. lone surrogates in str
            raise EncodeError("field_type", f"msgpack refused the value: {error}") from None
        if len(data) > self._frame_bytes_max:
            raise EncodeError(
                "oversized", f"{len(data)} bytes exceeds frame_bytes_max={self._frame_bytes_max}"
            )
        return data

    def _rebuild(self) -> None:
        """(Re)build the typed decoder over the accepted registered classes."""
        if _PENDING:
            _resolve_pending()
        classes = [
            cls
            for cls in _CLASS_BY_TAG.values()
            if self._accepted is None or cls in self._accepted
        ]
        self._decoder_version = _REGISTRY_VERSION[0]
        if not classes:
            self._decode_typed = _no_messages
            return
        try:
            decoder = msgspec.msgpack.Decoder(Union[tuple(classes)])  # noqa: UP007
        except TypeError as error:  # msgspec refused a type: our definition bug
            raise CodecDefinitionError(str(error)) from error
        self._decode_typed = decoder.decode
        self._value_tags = frozenset(
            str(cls.__struct_config__.tag) for cls in classes if _VALUE_FIELDS[cls]
        )

    def _encodable(self, cls: type) -> tuple[tuple[str, ValueBounds], ...]:
        """The Value fields of ``cls`` if this codec encodes it, else ``EncodeError``."""
        values = _VALUE_FIELDS.get(cls)
        if values is None:
            if cls not in _PENDING.values():
                raise EncodeError("unregistered", f"{cls.__qualname__} is not a message")
            values = _resolve(cls)  # CodecDefinitionError: our bug, loud here
        if self._accepted is not None and cls not in self._accepted:
            raise EncodeError("unregistered", f"{cls.__qualname__} is not a message of this codec")
        if self._decoder_version != _REGISTRY_VERSION[0]:
            self._rebuild()
        return values

    def _encode_failed(self, message: object, error: Exception) -> Any:
        """The slow path of ``encode``: the whole check, or the ``EncodeError`` it gives."""
        if isinstance(error, EncodeError):
            raise error
        data = self._frame(message)  # EncodeError if msgspec cannot encode it
        try:
            return self._decode_frame(data)
        except DecodeError as refused:
            reason = _ENCODE_REASON.get(refused.reason, "field_type")
            detail = f"{type(message).__qualname__}: {refused.detail}"
            raise EncodeError(reason, detail) from None

    def _decode_frame(self, data: bytes) -> Any:
        size = len(data)
        if size > self._frame_bytes_max:
            raise DecodeError(
                "oversized", f"{size} bytes exceeds frame_bytes_max={self._frame_bytes_max}"
            )
        if _REGISTRY_VERSION[0] != self._decoder_version:
            self._rebuild()
        if size > _SCAN_BYTES_MIN and self._value_tags:
            tag = peek_tag(data)
            if tag is None or tag in self._value_tags:
                _scanned(data, _DEPTH_MAX_LIMIT, 1 << 32)
        try:
            result = self._decode_typed(data)
        except Exception as error:
            raise _decode_error(error) from None
        values = _VALUE_FIELDS[type(result)]
        if values:
            _check_value_fields(result, values)
        return result


def _check_round_trip(
    message: Any, decoded: Any, values: tuple[tuple[str, ValueBounds], ...]
) -> None:
    """Refuse a message a peer would decode as something else (a list for a tuple,
    an enum for an int...); a ``Value`` field may hold lists, a float NaN."""
    skip = {name for name, _ in values}
    for name in type(message).__struct_fields__:
        sent, received = getattr(message, name), getattr(decoded, name)
        if name not in skip and sent != received and repr(sent) != repr(received):
            raise EncodeError(
                "field_type",
                f"{type(message).__qualname__}.{name}: {sent!r} is not of the declared type "
                f"(a peer decodes {received!r})",
            )


def _no_messages(data: bytes) -> Any:
    raise DecodeError("unknown_type", "this codec accepts no message")


def _check_value_fields(message: Any, values: tuple[tuple[str, ValueBounds], ...]) -> None:
    for name, bounds in values:
        value = getattr(message, name)
        if type(value) in _SCALARS:
            continue
        try:
            checked = _check_value(value, bounds.depth_max, bounds.items_max)
        except DecodeError as error:
            detail = f"{type(message).__name__}.{name}: {error.detail}"
            raise DecodeError(error.reason, detail) from None
        msgspec.structs.force_setattr(message, name, checked)


def _scanned(data: bytes, depth_max: int, items_max: int) -> None:
    """``scan`` with its refusal as a ``DecodeError``."""
    try:
        scan(data, depth_max, items_max)
    except ScanRefused as refused:
        raise DecodeError(refused.reason, refused.detail) from None
