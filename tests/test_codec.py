"""The typed message codec: round trips, strictness on both sides, hostile bytes.

The network layer relies on one claim above all: ``Codec.decode`` raises
``DecodeError`` and nothing else, whatever the bytes. Most tests here attack it:
generated garbage, every truncation of valid frames, mutations of valid frames,
a small outcome-guided fuzz loop, and hand-made bombs (deep, long, truncated
containers that a decoder could preallocate, colliding map keys).
"""

from __future__ import annotations

import ast
import itertools
import math
import pickle
import random
import tracemalloc
import typing
from typing import Annotated, Any, Literal, Optional

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replicaio.compiled import source_path
from replicaio.core import codec as codec_module
from replicaio.core import msgpack_scan
from replicaio.core.codec import (
    DECODE_REASONS,
    ENCODE_REASONS,
    Codec,
    CodecDefinitionError,
    DecodeError,
    EncodeError,
    Message,
    Meta,
    Value,
    ValueBounds,
    registered_messages,
)
from replicaio.core.codec import _MessageMeta as MessageMeta

# --------------------------------------------------------------------------- messages


Text = Annotated[str, Meta(max_length=64)]
Blob = Annotated[bytes, Meta(max_length=64)]
Floats = Annotated[tuple[float, ...], Meta(max_length=8)]


class Echo(Message, tag="test_codec.Echo"):
    sender: int
    seq: int
    value: Blob


class Tree(Message, tag="test_codec.Tree"):
    label: Text
    children: Annotated[tuple[Tree, ...], Meta(max_length=8)]  # a forward reference to itself
    parent_label: Optional[Text] = None  # noqa: UP045 - Optional is part of the contract


class Everything(Message, tag="test_codec.Everything"):
    maybe: int | None
    ratio: float
    numbers: Annotated[tuple[int, ...], Meta(max_length=4)]
    triple: tuple[int, Text, Blob]
    table: Annotated[dict[Text, Floats], Meta(max_length=8)]
    keyed: Annotated[dict[int, Echo], Meta(max_length=8)]
    blob: Value
    anything: Annotated[Value, ValueBounds(depth_max=4, items_max=16)]
    mode: Literal["fast", "safe", 3]
    nested: Echo | Tree | None
    flag: bool
    mixed: Annotated[tuple[int | Text, ...], Meta(max_length=8)]
    empty: tuple[()]


class Empty(Message, tag="test_codec.Empty"):
    pass


class Later(Message, tag="test_codec.Later"):
    """Refers to a class defined below it."""

    inner: Inner


class Inner(Message, tag="test_codec.Inner"):
    number: int


def nested_tuple(depth: int) -> tuple[Any, ...]:
    value: tuple[Any, ...] = ()
    for _ in range(depth - 1):
        value = (value,)
    return value


def everything(**changes: Any) -> Everything:
    fields: dict[str, Any] = {
        "maybe": None,
        "ratio": 1.5,
        "numbers": (1, -2, 3),
        "triple": (1, "two", b"3"),
        "table": {"a": (1.0, 2.5)},
        "keyed": {7: Echo(1, 2, b"x")},
        "blob": (1, "a", {"k": (None, True)}),
        "anything": {b"k": 2.0},
        "mode": "safe",
        "nested": Tree("root", (Tree("leaf", ()),)),
        "flag": False,
        "mixed": (1, "a"),
        "empty": (),
    }
    fields.update(changes)
    return Everything(**fields)


SAMPLES: list[object] = [
    Echo(1, 2, b"x"),
    Echo(-(1 << 63), (1 << 64) - 1, b""),
    Tree("root", (Tree("a", ()), Tree("b", (Tree("c", (), "b"),))), None),
    everything(),
    everything(maybe=5, nested=Echo(0, 0, b"\x00" * 40), anything=None, blob="x"),
    Empty(),
    Later(Inner(3)),
]


@pytest.fixture
def codec() -> Codec:
    return Codec()


# --------------------------------------------------------------------------- basics


def test_message_is_a_frozen_slotted_hashable_struct() -> None:
    echo = Echo(1, 2, b"x")
    assert echo == Echo(1, 2, b"x")
    assert hash(echo) == hash(Echo(1, 2, b"x"))
    assert not hasattr(echo, "__dict__")
    with pytest.raises(AttributeError):
        echo.seq = 3
    assert registered_messages()["test_codec.Echo"] is Echo


def test_registry_view_is_read_only() -> None:
    view = registered_messages()
    with pytest.raises(TypeError):
        view["x"] = Echo  # type: ignore[index]


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda sample: type(sample).__name__)
def test_samples_round_trip_and_re_encode_identically(codec: Codec, sample: object) -> None:
    data = codec.encode(sample)
    decoded = codec.decode(data)
    assert decoded == sample
    assert type(decoded) is type(sample)
    assert codec.encode(decoded) == data


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda sample: type(sample).__name__)
def test_encode_checked_gives_the_frame_and_what_a_peer_decodes(
    codec: Codec, sample: object
) -> None:
    data, decoded = codec.encode_checked(sample)
    assert data == codec.encode(sample)
    peer = codec.decode(data)
    assert type(decoded) is type(peer)
    assert decoded == peer
    assert repr(decoded) == repr(peer)  # lists as tuples, floats as floats, NaN as NaN
    assert decoded is not sample


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda sample: type(sample).__name__)
def test_encode_unchecked_gives_the_same_frame(codec: Codec, sample: object) -> None:
    assert codec.encode_unchecked(sample) == codec.encode(sample)


def test_encode_unchecked_leaves_the_check_to_the_receiver(codec: Codec) -> None:
    """ADR 0066: what :meth:`Codec.encode` refuses for its fields leaves, and the
    receiver's decode refuses it; msgspec's own refusals and the frame bound
    still stop at the sender. What msgspec writes as something plain (a set in a
    ``Value`` field, as an array) reaches the peer as that: only the checked
    encode, which the simulator runs on every message, refuses it."""
    for refused in (Echo(1, 2, b"x" * 65), Echo(True, 2, b"x")):
        with pytest.raises(EncodeError):
            codec.encode(refused)
        with pytest.raises(DecodeError):
            codec.decode(codec.encode_unchecked(refused))
    with pytest.raises(EncodeError):
        codec.encode(everything(blob={1, 2}))
    arrived = codec.decode(codec.encode_unchecked(everything(blob={1, 2})))
    assert isinstance(arrived, Everything) and arrived.blob == (1, 2)
    with pytest.raises(EncodeError) as caught:
        codec.encode_unchecked(everything(ratio=1 << 1100))  # msgspec: no such int
    assert caught.value.reason == "field_type"
    with pytest.raises(EncodeError) as caught:
        Codec(frame_bytes_max=64).encode_unchecked(Echo(1, 2, b"x" * 60))
    assert caught.value.reason == "oversized"


def test_encode_checked_gives_value_lists_as_tuples(codec: Codec) -> None:
    sample = everything(ratio=2, table={"a": (1, 2.5)}, blob=[1, [2]])
    data, decoded = codec.encode_checked(sample)
    assert isinstance(decoded, Everything)
    assert decoded.blob == (1, (2,))
    assert type(decoded.ratio) is float
    assert repr(decoded) == repr(codec.decode(data))


def test_wire_form_is_tag_then_fields(codec: Codec) -> None:
    assert msgpack.unpackb(codec.encode(Echo(1, 2, b"x"))) == ["test_codec.Echo", 1, 2, b"x"]
    nested = msgpack.unpackb(codec.encode(Later(Inner(3))))
    assert nested == ["test_codec.Later", ["test_codec.Inner", 3]]
    assert msgpack.unpackb(codec.encode(Empty())) == ["test_codec.Empty"]


def test_default_tag_is_the_class_name() -> None:
    cls: type = MessageMeta(
        "CodecTestDefaultTag", (Message,), {"__annotations__": {"x": int}, "__module__": __name__}
    )
    assert registered_messages()["CodecTestDefaultTag"] is cls


def test_decoding_yields_declared_types(codec: Codec) -> None:
    decoded = codec.decode(codec.encode(everything(ratio=2, table={"a": (1, 2.5)})))
    assert isinstance(decoded, Everything)
    assert type(decoded.ratio) is float  # an int given for a float field is encoded as float
    assert [type(item) for item in decoded.table["a"]] == [float, float]
    assert type(decoded.numbers) is tuple
    assert type(decoded.blob) is tuple  # Value arrays decode to tuples


def test_value_lists_decode_to_hashable_tuples(codec: Codec) -> None:
    value = [1, [2, [3]], {"k": [4]}]
    assert codec.decode_value(codec.encode_value(value)) == (1, (2, (3,)), {"k": (4,)})
    assert hash(codec.decode_value(codec.encode_value([1, [2, "x"]]))) is not None


def test_nan_survives_the_round_trip(codec: Codec) -> None:
    decoded = codec.decode(codec.encode(everything(ratio=math.nan)))
    assert isinstance(decoded, Everything)
    assert math.isnan(decoded.ratio)


def test_decode_as_checks_the_class(codec: Codec) -> None:
    data = codec.encode(Echo(1, 2, b"x"))
    assert codec.decode_as(data, Echo) == Echo(1, 2, b"x")
    with pytest.raises(DecodeError) as caught:
        codec.decode_as(data, Inner)
    assert caught.value.reason == "unknown_type"


def test_decode_accepts_bytearray_and_memoryview(codec: Codec) -> None:
    data = codec.encode(Echo(1, 2, b"x"))
    assert codec.decode(bytearray(data)) == codec.decode(memoryview(data)) == Echo(1, 2, b"x")


def test_restricted_codec_accepts_only_its_messages() -> None:
    restricted = Codec(messages=[Later])
    data = restricted.encode(Later(Inner(1)))
    assert restricted.decode(data) == Later(Inner(1))
    with pytest.raises(EncodeError) as encode_caught:
        restricted.encode(Inner(1))
    assert encode_caught.value.reason == "unregistered"
    with pytest.raises(DecodeError) as decode_caught:
        restricted.decode(Codec().encode(Inner(1)))
    assert decode_caught.value.reason == "unknown_type"


def test_errors_carry_reason_and_detail_and_pickle() -> None:
    error = DecodeError("arity", "Echo has 3 fields")
    assert (error.reason, error.detail, str(error)) == (
        "arity",
        "Echo has 3 fields",
        "arity: Echo has 3 fields",
    )
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.reason, copy.detail) == ("arity", "Echo has 3 fields")
    assert pickle.loads(pickle.dumps(EncodeError("oversized", "x"))).reason == "oversized"


def test_codec_module_stays_deterministic() -> None:
    tree = ast.parse(source_path(codec_module.__name__).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    }
    assert not imported & {"asyncio", "socket", "time", "random", "os", "threading"}


# --------------------------------------------------------------------------- definitions

_names = itertools.count()


def define(annotations: dict[str, Any], base: type = Message, **namespace: Any) -> Any:
    """A fresh message class with a unique tag (the registry is append-only)."""
    name = f"Generated{next(_names)}"
    body = {"__annotations__": annotations, "__module__": __name__, **namespace}
    return MessageMeta(name, (base,), body, tag=f"test_codec.generated.{name}")


def test_duplicate_tags_raise() -> None:
    with pytest.raises(CodecDefinitionError, match="duplicate"):
        MessageMeta("Other", (Message,), {"__annotations__": {"x": int}}, tag="test_codec.Echo")


@pytest.mark.parametrize(
    "hint",
    [
        list[int],
        set[int],
        tuple,
        dict,
        Annotated[dict[float, int], Meta(max_length=4)],
        Annotated[dict[tuple[int], int], Meta(max_length=4)],
        object,
        complex,
        Any,
        Literal[True],
        Literal[1.5],
        Annotated[tuple[int, ...], Meta(max_length=4)]
        | Annotated[tuple[int | bool, ...], Meta(max_length=4)],
        Echo | Annotated[tuple[int, ...], Meta(max_length=4)],
        Annotated[dict[Text, int], Meta(max_length=4)]
        | Annotated[dict[int, int], Meta(max_length=4)],
        str,  # unbounded
        bytes,
        tuple[int, ...],
        dict[int, int],
        tuple[str, int],
        Value | None,  # Value only as a whole field
        Annotated[tuple[Value, ...], Meta(max_length=4)],
        Text | Blob,  # msgspec cannot tell str from bytes in a union
    ],
    ids=repr,
)
def test_unsupported_field_types_raise_at_definition(hint: Any) -> None:
    with pytest.raises(CodecDefinitionError):
        define({"field": hint})


def test_behaviour_and_loose_configuration_are_refused() -> None:
    with pytest.raises(CodecDefinitionError, match="behaviour"):
        define({"x": int}, __post_init__=lambda self: None)
    with pytest.raises(CodecDefinitionError):
        MessageMeta("NoTag", (Message,), {}, tag="")
    with pytest.raises(CodecDefinitionError, match="frozen"):
        MessageMeta("Loose", (Message,), {}, tag="test_codec.Loose", forbid_unknown_fields=False)


def test_a_message_with_value_fields_is_not_nested() -> None:
    holder = define({"blob": Value})
    with pytest.raises(CodecDefinitionError, match="nested"):
        define({"inner": holder})


def test_bounds_are_visible_in_the_type_hints() -> None:
    """The adversary builds hostile messages from these hints: every bound is there."""
    hints = typing.get_type_hints(Everything, include_extras=True)
    assert list(hints) == list(Everything.__struct_fields__)  # declaration order
    assert typing.get_args(hints["numbers"])[1] == Meta(max_length=4)
    assert ValueBounds(depth_max=4, items_max=16) in typing.get_args(hints["anything"])


def test_annotated_extras_are_ignored(codec: Codec) -> None:
    cls = define({"a": Value, "b": Annotated[int, "units: ms"]})
    instance = cls((1, (2,)), 5)
    assert codec.decode(codec.encode(instance)) == instance


# --------------------------------------------------------------------------- encode errors


def encode_reason(codec: Codec, value: object) -> str:
    with pytest.raises(EncodeError) as caught:
        codec.encode(value)
    assert caught.value.reason in ENCODE_REASONS
    return caught.value.reason


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (object(), "unregistered"),
        (Echo(True, 2, b"x"), "field_type"),  # bool is not an int
        (Echo(1.0, 2, b"x"), "field_type"),  # type: ignore[arg-type]
        (Echo(1 << 64, 2, b"x"), "field_type"),
        (Echo(-(1 << 63) - 1, 2, b"x"), "field_type"),
        (Echo(1, 2, b"x" * 65), "too_long"),
        (everything(numbers=[1, 2]), "field_type"),  # a list is not a tuple
        (everything(numbers=(1, True)), "field_type"),
        (everything(numbers=(1, 1 << 70)), "field_type"),
        (everything(triple=(1, "two")), "field_type"),
        (everything(table={"a": (1.0, "x")}), "field_type"),
        (everything(table={1: (1.0,)}), "field_type"),
        (everything(keyed={1: Inner(1)}), "field_type"),
        (everything(blob={1, 2}), "field_type"),  # sets are not plain data
        (everything(blob=Echo(1, 2, b"x")), "field_type"),  # nor are messages
        (everything(anything=1 << 65), "field_type"),
        (everything(anything=nested_tuple(5)), "too_deep"),
        (everything(anything=tuple(range(17))), "too_long"),
        (everything(numbers=(1, 2, 3, 4, 5)), "too_long"),
        (everything(mode="slow"), "field_type"),
        (everything(mode=True), "field_type"),
        (everything(nested=Inner(1)), "field_type"),
        (everything(mixed=(1, b"x")), "field_type"),
        (everything(ratio=1 << 1100), "field_type"),
        (Tree("\ud800", ()), "field_type"),  # a lone surrogate is not UTF-8
        (Tree("x", (Tree("y", ()), "z")), "field_type"),  # type: ignore[arg-type]
    ],
)
def test_encode_refuses_what_decode_would_refuse(codec: Codec, value: object, reason: str) -> None:
    assert encode_reason(codec, value) == reason


def test_encode_error_names_the_field(codec: Codec) -> None:
    where = r"- at `\$\[5\]\[\.\.\.\]\[1\]`"
    with pytest.raises(EncodeError, match=r"Everything: Expected `float`, got `str` " + where):
        codec.encode(everything(table={"a": (1.0, "x")}))
    where = r"- at `\$\[2\]\[0\]\[1\]`"
    with pytest.raises(EncodeError, match=r"Tree: Expected `str`, got `int` " + where):
        codec.encode(Tree("x", (Tree(3, ()),)))  # type: ignore[arg-type]
    with pytest.raises(EncodeError, match=r"Everything\.anything: .*depth_max"):
        codec.encode(everything(anything=nested_tuple(5)))


def test_a_large_frame_is_checked_as_a_peer_checks_it() -> None:
    """A frame above the fast path's size (``_SCAN_BYTES_MIN``) is checked on
    the very bytes that were encoded (size, scan, decode, value bounds): it
    round-trips, and every refusal names the same reason as for a small frame."""
    codec = Codec(frame_bytes_max=8192)
    cls = define(
        {
            "pad": Annotated[bytes, Meta(max_length=8192)],
            "items": Annotated[tuple[int, ...], Meta(max_length=4)],
            "blob": Annotated[Value, ValueBounds(depth_max=2, items_max=4)],
        }
    )
    pad = b"p" * 4000
    good = cls(pad, (1, 2, 3), ([1, 2], {"k": 3}))
    data, decoded = codec.encode_checked(good)
    assert len(data) > 2048
    assert decoded == cls(pad, (1, 2, 3), ((1, 2), {"k": 3}))  # lists come back as tuples
    assert codec.decode(data) == decoded
    assert encode_reason(codec, cls(pad, (1, 2, 3, 4, 5), None)) == "too_long"
    assert encode_reason(codec, cls(pad, (), (((),),))) == "too_deep"
    assert encode_reason(codec, cls(pad, (), (1, 2, 3, 4, 5))) == "too_long"
    assert encode_reason(codec, cls(pad * 3, (), None)) == "oversized"
    assert encode_reason(codec, cls(pad, ["a"], None)) == "field_type"
    assert codec.encode(good) == data  # a failure leaves the codec as it was


def test_packer_recovers_after_a_failed_encode(codec: Codec) -> None:
    good = codec.encode(Echo(1, 2, b"x"))
    encode_reason(codec, Tree("\ud800", ()))
    assert codec.encode(Echo(1, 2, b"x")) == good


def test_limits_are_enforced_on_both_sides_at_their_boundary() -> None:
    small = Codec(frame_bytes_max=64)
    cls = define(
        {
            "items": Annotated[tuple[int, ...], Meta(max_length=4)],
            "name": Annotated[str, Meta(max_length=3)],
            "blob": Annotated[Value, ValueBounds(depth_max=2, items_max=4)],
        }
    )
    tag = f"test_codec.generated.{cls.__name__}"
    # a field's max_length: 4 items pass, 5 do not (either side)
    assert small.decode(small.encode(cls((1, 2, 3, 4), "abc", ((),)))) == cls(
        (1, 2, 3, 4), "abc", ((),)
    )
    assert encode_reason(small, cls((1, 2, 3, 4, 5), "", None)) == "too_long"
    assert decode_reason(small, pack([tag, [1, 2, 3, 4, 5], "", None])) == "too_long"
    assert encode_reason(small, cls((), "abcd", None)) == "too_long"
    assert decode_reason(small, pack([tag, [], "abcd", None])) == "too_long"
    # ValueBounds: depth 2 passes, 3 does not; 4 items pass, 5 do not
    assert encode_reason(small, cls((), "", (((),),))) == "too_deep"
    assert decode_reason(small, pack([tag, [], "", [[[]]]])) == "too_deep"
    assert encode_reason(small, cls((), "", (1, 2, 3, 4, 5))) == "too_long"
    assert decode_reason(small, pack([tag, [], "", [1, 2, 3, 4, 5]])) == "too_long"
    # frame_bytes_max
    assert encode_reason(small, cls((), "", b"x" * 64)) == "oversized"
    assert decode_reason(small, pack([tag, [], "", b"x" * 64])) == "oversized"
    # the codec's own items_max / depth_max bound plain values
    values = Codec(items_max=4, depth_max=2)
    assert values.decode_value(values.encode_value(((1, 2, 3, 4),))) == ((1, 2, 3, 4),)
    with pytest.raises(EncodeError):
        values.encode_value((1, 2, 3, 4, 5))
    with pytest.raises(DecodeError) as caught:
        values.decode_value(pack([[[1]]]))
    assert caught.value.reason == "too_deep"


def test_recursive_messages_are_bounded_by_depth() -> None:
    """msgspec recurses up to the interpreter's limit; beyond it: too_deep, no crash."""
    tree = Tree("leaf", ())
    for _ in range(40):
        tree = Tree("node", (tree,))
    assert Codec().decode(Codec().encode(tree)) == tree
    for _ in range(5000):
        tree = Tree("node", (tree,))
    assert encode_reason(Codec(), tree) == "too_deep"
    deep = b"\x93\xaftest_codec.Tree\xa1x\x91" * 5000 + pack(["test_codec.Tree", "y", []])
    assert decode_reason(Codec(frame_bytes_max=1 << 24), deep) == "too_deep"


def test_codec_limits_are_validated() -> None:
    for bad in ({"depth_max": 0}, {"depth_max": 10_000}, {"items_max": 0}, {"frame_bytes_max": -1}):
        with pytest.raises(ValueError):
            Codec(**bad)  # type: ignore[arg-type]
    with pytest.raises(CodecDefinitionError):
        Codec(messages=[int])


# --------------------------------------------------------------------------- decode errors


def decode_reason(codec: Codec, data: bytes) -> str:
    with pytest.raises(DecodeError) as caught:
        codec.decode(data)
    assert caught.value.reason in DECODE_REASONS
    return caught.value.reason


def pack(value: object) -> bytes:
    return bytes(msgpack.packb(value, use_bin_type=True))


ECHO = "test_codec.Echo"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "malformed"),
        (b"\xc1", "malformed"),  # never-used byte
        (pack(7), "malformed"),  # not an array
        (pack([]), "malformed"),
        (pack([ECHO, 1, 2, b"x"]) + b"\x00", "malformed"),  # trailing bytes
        (b"\x94\xaftest_codec.Tree\xa2\xff\xfe\x90\xc0", "malformed"),  # invalid UTF-8
        (pack(["nope", 1]), "unknown_type"),
        (pack([7, 1]), "unknown_type"),
        (pack([[ECHO], 1]), "unknown_type"),
        (pack([ECHO, 1, 2]), "arity"),
        (pack([ECHO, 1, 2, b"x", 4]), "arity"),
        (pack([ECHO, True, 2, b"x"]), "field_type"),
        (pack([ECHO, 1.0, 2, b"x"]), "field_type"),
        (pack([ECHO, 1, 2, "x"]), "field_type"),
        (pack([ECHO, 1, 2, [1]]), "field_type"),
        (pack([ECHO, 1, 2, None]), "field_type"),
        (pack(["test_codec.Later", ["test_codec.Echo", 1, 2, b"x"]]), "field_type"),
        (pack(["test_codec.Later", ["test_codec.Inner"]]), "arity"),
        (pack(["test_codec.Later", ["test_codec.Inner", "3"]]), "field_type"),
        (pack(["test_codec.Tree", "x", [["test_codec.Tree", "y", [], None, 1]], None]), "arity"),
        (pack(["test_codec.Tree", "x", {}, None]), "field_type"),
        (pack(["test_codec.Tree", "x", [], b"bytes"]), "field_type"),
        (pack(["TEST_codec.Echo", 1, 2, b"x"]), "unknown_type"),  # tags are case-sensitive
        (b"\x94\xaftest_codec.Echo\x01\x02\xc7\x00\x05", "malformed"),  # ext type
        (b"\x94\xaftest_codec.Echo\x01\x02\xd6\xff\x00\x00\x00\x01", "malformed"),  # timestamp
        (b"\x94\xaftest_codec.Echo\x01\x02\x81\x80\x01", "field_type"),  # a map for bytes
        (b"\xdd\xff\xff\xff\xff", "malformed"),  # 4 G items declared, none there
        (b"\xdf\xff\xff\xff\xff", "malformed"),
        (b"\x94\xaftest_codec.Tree\xdb\xff\xff\xff\xff", "malformed"),  # 4 GiB str declared
        (b"\x94\xaftest_codec.Echo\x01\x02\xc6\xff\xff\xff\xff", "too_long"),  # > max_length
        (pack([ECHO, 1, 2, b"x" * 65]), "too_long"),  # beyond the field's max_length
        (pack(["test_codec.Everything", *([None] * 13)]), "field_type"),
        (b"\x91" * 5000 + b"\x01", "too_deep"),  # larger than the direct-unpack size
        (b"\x91" * 100 + b"\x01", "unknown_type"),  # the tag is an array
    ],
)
def test_malformed_frames_raise_decode_error_with_reason(
    codec: Codec, data: bytes, reason: str
) -> None:
    assert decode_reason(codec, data) == reason


def test_wrong_field_types_everywhere(codec: Codec) -> None:
    """Replace each field of each sample with values of every other wire type."""
    wrong_values: list[object] = [None, True, 1, -1, 1.5, "s", b"b", [], [1], {}, {"a": 1}, ["x"]]
    for sample in SAMPLES:
        frame = list(msgpack.unpackb(codec.encode(sample), strict_map_key=False))
        for index in range(1, len(frame)):
            for wrong in wrong_values:
                mutated = [*frame[:index], wrong, *frame[index + 1 :]]
                try:
                    decoded = codec.decode(pack(mutated))
                except DecodeError as error:
                    assert error.reason in DECODE_REASONS
                else:  # the wrong value happened to be valid there (a Value field, or
                    # an int where a float is declared, which msgspec converts)
                    assert codec.decode(codec.encode(decoded)) == decoded


def test_every_truncation_of_a_valid_frame_is_malformed(codec: Codec) -> None:
    for sample in SAMPLES:
        data = codec.encode(sample)
        for cut in range(len(data)):
            assert decode_reason(codec, data[:cut]) == "malformed"
            with pytest.raises(DecodeError):
                codec.decode_value(data[:cut])


def test_value_depth_bomb_inside_a_small_frame(codec: Codec) -> None:
    cls = define({"blob": Value})
    frame = pack([f"test_codec.generated.{cls.__name__}"])
    bomb = b"\x92" + frame[1:] + b"\x91" * 100 + b"\x01"  # [tag, [[[...1]]]]
    assert decode_reason(codec, bomb) == "too_deep"
    with pytest.raises(DecodeError) as caught:
        codec.decode_value(b"\x91" * 100 + b"\x01")
    assert caught.value.reason == "too_deep"


def test_truncated_container_bomb_does_not_allocate(codec: Codec) -> None:
    """Nested array16 headers declaring 65535 items each, then nothing: msgpack would
    preallocate every level. The frame is scanned first, so memory stays flat."""
    for size in (600, 4000, 100_000):
        bomb = b"\xdc\xff\xff" * (size // 3)
        tracemalloc.start()
        try:
            reason = decode_reason(codec, bomb)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert reason in {"malformed", "too_deep", "unknown_type"}
        assert peak < 4 * 1024 * 1024, (size, peak)
        tracemalloc.start()
        try:
            with pytest.raises(DecodeError):
                codec.decode_value(bomb)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 4 * 1024 * 1024, (size, peak)


def test_small_frame_bomb_is_bounded() -> None:
    bomb = b"\xdc\xff\xff" * 170  # 510 bytes: unpacked directly, lengths capped
    tracemalloc.start()
    try:
        assert decode_reason(Codec(), bomb) in {"malformed", "too_long", "unknown_type"}
        with pytest.raises(DecodeError):
            Codec().decode_value(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024


def test_large_valid_frames_pass_the_scanner(codec: Codec) -> None:
    cls = define(
        {
            "rows": Annotated[
                tuple[Annotated[tuple[int, ...], Meta(max_length=20)], ...], Meta(max_length=2000)
            ],
            "blob": Value,
        }
    )
    rows = tuple(tuple(range(20)) for _ in range(2000))
    blob = tuple({"k": (index, b"\xdc\xdd\xde\xdf" * 4)} for index in range(500))
    instance = cls(rows, blob)
    assert codec.decode(codec.encode(instance)) == instance
    assert codec.decode_value(codec.encode_value(blob)) == blob


def test_scanner_agrees_with_msgpack() -> None:
    """``scan`` accepts exactly the complete single objects msgpack accepts."""
    rng = random.Random(7)
    codec = Codec()
    frames = [codec.encode(sample) for sample in SAMPLES]
    frames += [pack(x) for x in (1.5, 2**40, -(2**40), "s" * 300, b"b" * 70000, [None] * 20)]
    frames += [
        pack({"a": [1, {"b": 2}]}),
        b"\xd4\x01\x02",
        b"\xc7\x03\x01abc",
        b"\xca\x00\x00\x00\x00",
    ]
    for frame in frames:
        for candidate in [frame, *(mutate(frame, rng) for _ in range(200))]:
            scan_ok = msgpack_ok = True
            try:
                msgpack_scan.scan(candidate, 1000, 1 << 30)
            except msgpack_scan.ScanRefused:
                scan_ok = False
            try:
                msgpack.unpackb(candidate, raw=True, strict_map_key=False, use_list=True)
            except Exception:
                msgpack_ok = False
            if msgpack_ok or not scan_ok:
                assert scan_ok == msgpack_ok, candidate


# --------------------------------------------------------------------------- generated round trips
# A shape is a field type and a strategy for its values; shapes nest, and
# nested message shapes define fresh message classes.

Shape = tuple[Any, st.SearchStrategy[Any]]

INT64 = st.integers(-(1 << 63), (1 << 64) - 1)
FLOATS = st.floats(allow_nan=False)
KEYS: list[Shape] = [(Text, st.text(max_size=5)), (int, INT64), (Blob, st.binary(max_size=5))]
SCALARS = st.none() | st.booleans() | INT64 | FLOATS | st.text(max_size=8) | st.binary(max_size=8)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(st.text(max_size=4) | INT64 | st.binary(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)
PRIMITIVE_SHAPES: list[Shape] = [
    (int, INT64),
    (bool, st.booleans()),
    (float, FLOATS),  # an int given for a float goes out as an int (see test_decoding_...)
    (Text, st.text(max_size=10)),
    (Blob, st.binary(max_size=10)),
    (type(None), st.none()),
    (int | Text, INT64 | st.text(max_size=4)),
    (Literal["a", "b", 7], st.sampled_from(["a", "b", 7])),
]


@st.composite
def shapes(draw: st.DrawFn, depth: int = 3, field: bool = False) -> Shape:
    """A field type and its values; ``field``: a whole field (``Value`` allowed)."""
    kinds = ["primitive"] + (["optional", "tuple", "fixed", "dict", "message"] if depth else [])
    kinds += ["value"] if field else []
    kind = draw(st.sampled_from(kinds))
    if kind == "primitive":
        return draw(st.sampled_from(PRIMITIVE_SHAPES))
    if kind == "value":
        return Value, VALUES
    if kind == "message":
        return draw(message_shapes(depth - 1, values=False))
    hint, values = draw(shapes(depth - 1))
    if kind == "optional":
        return Optional[hint], st.none() | values  # noqa: UP045
    if kind == "tuple":
        bounded = Annotated[tuple[hint, ...], Meta(max_length=4)]  # type: ignore[valid-type]
        return bounded, st.lists(values, max_size=4).map(tuple)
    if kind == "fixed":
        other_hint, other_values = draw(shapes(depth - 1))
        return tuple[hint, other_hint], st.tuples(values, other_values)  # type: ignore[valid-type]
    key_hint, key_values = draw(st.sampled_from(KEYS))
    mapping = Annotated[dict[key_hint, hint], Meta(max_length=3)]  # type: ignore[valid-type]
    return mapping, st.dictionaries(key_values, values, max_size=3)


@st.composite
def message_shapes(draw: st.DrawFn, depth: int = 3, values: bool = True) -> Shape:
    fields = draw(st.lists(shapes(depth, field=values), max_size=4))
    cls = define({f"field{index}": hint for index, (hint, _) in enumerate(fields)})
    return cls, st.builds(cls, *(values for _, values in fields))


HYPOTHESIS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@HYPOTHESIS
@given(st.data())
def test_generated_messages_round_trip(data: st.DataObject) -> None:
    cls, instances = data.draw(message_shapes())
    instance = data.draw(instances)
    codec = Codec(depth_max=64)
    encoded = codec.encode(instance)
    decoded = codec.decode(encoded)
    assert type(decoded) is cls
    assert decoded == instance
    assert codec.encode(decoded) == encoded
    for cut in range(0, len(encoded), max(1, len(encoded) // 8)):
        with pytest.raises(DecodeError):
            codec.decode(encoded[:cut])


@HYPOTHESIS
@given(VALUES)
def test_values_round_trip(value: Any) -> None:
    codec = Codec()
    encoded = codec.encode_value(value)
    assert codec.decode_value(encoded) == value
    assert codec.encode_value(codec.decode_value(encoded)) == encoded


# --------------------------------------------------------------------------- fuzzing

INTERESTING = [
    b"\xc1",
    b"\xdc\xff\xff",
    b"\xdd\xff\xff\xff\xff",
    b"\xdb\xff\xff\xff\xff",
    b"\xc7\x00\x05",
    b"\xd6\xff",
    b"\x91",
    b"\x81",
    b"\xc3",
    b"\xcb",
    b"\xff",
    b"\x00",
]


def mutate_structure(data: bytes, rng: random.Random) -> bytes | None:
    """Edit the msgpack tree: drop, duplicate or replace one array item (reaches arity)."""
    try:
        tree = msgpack.unpackb(data, strict_map_key=False, raw=True)
    except Exception:
        return None
    arrays: list[list[Any]] = []
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            arrays.append(node)
            stack.extend(node)
        elif isinstance(node, dict):
            stack.extend(node.values())
    if not arrays:
        return None
    target = rng.choice(arrays)
    position = rng.randint(0, len(target))
    choice = rng.randrange(3)
    if choice == 0 and target:
        del target[min(position, len(target) - 1)]
    elif choice == 1 and target:
        target.insert(position, target[rng.randrange(len(target))])
    else:
        target.insert(position, rng.choice([None, 0, -1, 1.5, b"", "", [], {}, True, 1 << 63]))
    return bytes(msgpack.packb(tree, use_bin_type=False))


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to three random edits: flip, insert, delete, duplicate, splice a hostile header."""
    if rng.randrange(4) == 0:
        edited = mutate_structure(data, rng)
        if edited is not None:
            return edited
    result = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        position = rng.randint(0, len(result))
        choice = rng.randrange(6)
        if choice == 0 and result:
            result[min(position, len(result) - 1)] ^= 1 << rng.randrange(8)
        elif choice == 1:
            result[position:position] = bytes([rng.randrange(256)])
        elif choice == 2 and result:
            del result[position : position + rng.randint(1, 4)]
        elif choice == 3:
            result[position:position] = rng.choice(INTERESTING)
        elif choice == 4 and result:
            result[min(position, len(result) - 1)] = rng.choice([0x00, 0x7F, 0x80, 0xC0, 0xFF])
        else:
            start = rng.randint(0, len(result))
            result[position:position] = result[start : start + rng.randint(1, 8)]
    return bytes(result)


def decode_outcome(codec: Codec, data: bytes) -> tuple[str, str]:
    """Decode, allowing only DecodeError; summarise the outcome for the fuzz corpus."""
    try:
        decoded = codec.decode(data)
    except DecodeError as error:
        assert error.reason in DECODE_REASONS
        return "error", error.reason + ":" + "".join(c for c in error.detail if not c.isdigit())[
            :40
        ]
    again = codec.decode(codec.encode(decoded))
    assert again == decoded or repr(again) == repr(decoded)  # repr: a NaN inside
    return "ok", type(decoded).__name__


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_ever_raise_decode_error(data: bytes) -> None:
    codec = Codec()
    decode_outcome(codec, data)
    try:
        codec.decode_value(data)
    except DecodeError as error:
        assert error.reason in DECODE_REASONS


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(range(len(SAMPLES))), st.randoms(use_true_random=False))
def test_mutated_frames_only_ever_raise_decode_error(index: int, rng: random.Random) -> None:
    codec = Codec()
    data = codec.encode(SAMPLES[index])
    for _ in range(20):
        data = mutate(data, rng)
        decode_outcome(codec, data)


def test_outcome_guided_fuzz_loop() -> None:
    """A small greybox loop: mutants that reach a new outcome join the corpus."""
    rng = random.Random(20240611)
    codec = Codec(items_max=64, depth_max=8)
    corpus = [Codec().encode(sample) for sample in SAMPLES]
    corpus.append(b"\x92\xaftest_codec.Echo" + b"\xdc\x00\x10" + b"\x01" * 600)
    seen: set[tuple[str, str]] = set()
    for _ in range(20_000):
        candidate = mutate(rng.choice(corpus), rng)
        outcome = decode_outcome(codec, candidate)
        if outcome not in seen:
            seen.add(outcome)
            corpus.append(candidate)
    reasons = {detail.split(":")[0] for kind, detail in seen if kind == "error"}
    assert {"malformed", "unknown_type", "arity", "field_type", "too_long"} <= reasons, reasons
    assert len(corpus) > 50


# --------------------------------------------------------------------------- maps, canonical form


def colliding_pairs(count: int) -> list[tuple[int, int]]:
    """Int pairs whose tuple hashes are all equal (tuple hashing is not keyed)."""
    mask = (1 << 64) - 1
    prime1, prime2, prime5 = 11400714785074694791, 14029467366897019727, 2870177450012600261

    def rotate(value: int, right: int) -> int:
        return ((value >> right) | (value << (64 - right))) & mask

    target = rotate(
        (0x1234567890ABCDEF - (2 ^ prime5 ^ 3527539)) * pow(prime1, -1, 1 << 64) & mask, 31
    )
    pairs: list[tuple[int, int]] = []
    first = 0
    while len(pairs) < count:
        first += 1
        accumulator = rotate((prime5 + (hash(first) & mask) * prime2) & mask, 64 - 31) * prime1
        lane = (target - (accumulator & mask)) * pow(prime2, -1, 1 << 64) & mask
        second = lane if lane < (1 << 61) - 2 else lane - (1 << 64)
        if hash(second) & mask == lane:
            pairs.append((first, second))
    return pairs


def test_array_map_keys_are_refused_before_any_dict_is_built(codec: Codec) -> None:
    """Thousands of colliding array keys would make dict construction quadratic."""
    pairs = colliding_pairs(3000)
    assert len({hash(pair) for pair in pairs}) == 1
    body = b"".join(pack(list(pair)) + b"\x00" for pair in pairs)
    frame = b"\xde" + len(pairs).to_bytes(2, "big") + body
    with pytest.raises(DecodeError) as caught:
        codec.decode_value(frame)
    assert caught.value.reason == "malformed"
    assert "scalars (nil, bool" in caught.value.detail  # the scanner refused it, no dict built


def test_array_map_keys_inside_a_message_value_field_are_refused_before_decoding(
    codec: Codec,
) -> None:
    """The same attack through a message's Value field (the node's link bodies)."""
    from replicaio.core.node import Envelope

    pairs = colliding_pairs(3000)
    body = b"".join(pack(list(pair)) + b"\x00" for pair in pairs)
    value = b"\xde" + len(pairs).to_bytes(2, "big") + body
    frame = b"\x94" + pack("Envelope") + pack([1]) + pack("ECHO") + value
    assert codec.decode(codec.encode(Envelope((1,), "ECHO", b"x"))) == Envelope((1,), "ECHO", b"x")
    with pytest.raises(DecodeError) as caught:
        codec.decode(frame)
    assert caught.value.reason == "malformed"
    assert "scalars (nil, bool" in caught.value.detail  # the scanner refused it, no dict built


def test_duplicate_map_keys_are_refused_by_a_canonical_codec() -> None:
    """msgspec keeps the last of equal keys; a canonical codec refuses such a frame."""
    canonical = Codec(canonical=True)
    for frame in (
        b"\x82\xa1a\x01\xa1a\x02",
        b"\x82\x01\x01\xc3\x02",
        b"\x82\x01\x01\xcb" + pack(1.0)[1:] + b"\x02",
    ):
        with pytest.raises(DecodeError) as caught:
            canonical.decode_value(frame)
        assert caught.value.reason == "malformed"


def test_map_and_array_keys_inside_small_values_are_refused(codec: Codec) -> None:
    for frame in (b"\x81\x80\x01", b"\x81\x91\x01\x02"):
        with pytest.raises(DecodeError) as caught:
            codec.decode_value(frame)
        assert caught.value.reason == "malformed"


def test_value_map_keys_must_be_scalars_on_encode(codec: Codec) -> None:
    with pytest.raises(EncodeError):
        codec.encode_value({(1, 2): "x"})
    assert codec.decode_value(codec.encode_value({None: 1, 1.5: 2, b"k": 3})) == {
        None: 1,
        1.5: 2,
        b"k": 3,
    }


@pytest.mark.parametrize(
    "frame",
    [
        b"\x94\xaftest_codec.Echo\xcc\x01\x02\xc4\x01x",  # 1 as uint8
        b"\x94\xaftest_codec.Echo\xd3" + (1).to_bytes(8, "big") + b"\x02\xc4\x01x",  # as int64
        b"\x94\xd9\x0ftest_codec.Echo\x01\x02\xc4\x01x",  # short str as str8
        b"\xdc\x00\x04\xaftest_codec.Echo\x01\x02\xc4\x01x",  # array16 for 4 items
    ],
)
def test_canonical_codec_refuses_other_encodings_of_a_value(frame: bytes) -> None:
    assert Codec().decode(frame) == Echo(1, 2, b"x")  # lenient by default
    with pytest.raises(DecodeError) as caught:
        Codec(canonical=True).decode(frame)
    assert caught.value.reason == "malformed"


def test_canonical_codec_accepts_its_own_frames() -> None:
    codec = Codec(canonical=True)
    for sample in SAMPLES:
        assert codec.decode(codec.encode(sample)) == sample
    assert codec.decode_value(codec.encode_value((1.5, {"a": b"x"}))) == (1.5, {"a": b"x"})
    with pytest.raises(DecodeError):
        codec.decode_value(b"\xca\x3f\xc0\x00\x00")  # 1.5 as float32


def test_inheritance_and_defaults(codec: Codec) -> None:
    base = define({"a": int})
    child: Any = MessageMeta(
        "Child", (base,), {"__annotations__": {"b": Text, "c": int}, "c": 7}, tag="test_codec.Child"
    )
    instance = child(1, "x")
    assert instance.c == 7
    assert codec.decode(codec.encode(instance)) == instance
    assert msgpack.unpackb(codec.encode(instance))[1:] == [1, "x", 7]  # every field on the wire


def test_a_bad_frame_leaves_no_state_behind(codec: Codec) -> None:
    """The codec reuses one unpacker for small frames; every error must reset it."""
    good = codec.encode(Echo(1, 2, b"x"))
    bad_frames = [
        good[:5],
        good + b"\x01",
        b"\xc1",
        b"\xdc\xff\xff",
        b"",
    ]
    for bad in bad_frames * 3:
        with pytest.raises(DecodeError):
            codec.decode(bad)
        assert codec.decode(good) == Echo(1, 2, b"x")
        with pytest.raises(DecodeError):
            codec.decode_value(bad)
        assert codec.decode_value(good) == ("test_codec.Echo", 1, 2, b"x")


def test_unresolvable_annotation_fails_loudly_on_encode_but_never_on_decode(codec: Codec) -> None:
    broken: Any = define({"field": "MissingName"})  # a forward reference never defined
    with pytest.raises(CodecDefinitionError, match="MissingName"):
        codec.encode(broken(1))
    with pytest.raises(DecodeError) as caught:
        codec.decode(pack([f"test_codec.generated.{broken.__name__}", 1]))
    assert caught.value.reason == "unknown_type"


def test_tags_are_printable_text() -> None:
    for tag in ("bad\ud800tag", "new\nline", "x" * 300):
        with pytest.raises(CodecDefinitionError):
            MessageMeta("BadTag", (Message,), {}, tag=tag)


def test_plain_values_check_every_int_inline_or_nested() -> None:
    """The encode-side check inlines scalars of arrays (snapshots hold thousands):
    an int out of the 64-bit range is refused wherever it sits."""
    codec = Codec()
    values: list[Any] = [[1, 1 << 64], [[b"k", -(1 << 63) - 1]], {b"k": [1 << 64]},
                         [True, 1.5, None]]
    for value in values:
        try:
            codec.encode_value(value)
        except EncodeError as error:
            assert error.reason == "field_type"
            assert value != [True, 1.5, None]
        else:
            assert value == [True, 1.5, None]
    assert codec.decode_value(codec.encode_value([(1 << 64) - 1, -(1 << 63)])) == (
        (1 << 64) - 1, -(1 << 63))
