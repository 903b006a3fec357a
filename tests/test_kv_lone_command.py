"""The one-client SET's short cuts (ADR 0064) answer exactly as the general paths.

Each short cut is checked against the path it bypasses, on the same input: the
parser's whole-command read against its step-by-step read (valid, mutated and
bounded input), the store's ``put`` in ``apply`` against ``_apply_value``
(results and whole state, up to every bound), and the front's encoders against
``encode_command``.
"""

from __future__ import annotations

import itertools

from hypothesis import example, given, settings
from hypothesis import strategies as st

from replicaio.services.kv.redis_commands import finish_set, plan
from replicaio.services.kv.redis_plan import KV_PARAMS
from replicaio.services.kv.resp import OK, RespLimits, RespParser, RespProtocolError
from replicaio.services.kv.state_machine import (
    PUT_RESULT,
    KeyValueStateMachine,
    KvParams,
    decode_result,
    encode_command,
    encode_get,
    encode_put,
)


class StepByStepParser(RespParser):
    """The parser without its whole-command read (what it did before ADR 0064)."""

    def whole_multibulk(self) -> list[bytes] | None:
        return None


def multibulk(*words: bytes) -> bytes:
    return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%b\r\n" % (len(w), w) for w in words)


def outcomes(parser: RespParser, chunks: list[bytes]) -> list[object]:
    """Every command parsed, then the protocol error (its reason) if any."""
    found: list[object] = []
    try:
        for chunk in chunks:
            parser.feed(chunk)
            while (command := parser.next_command()) is not None:
                found.append(command)
    except RespProtocolError as error:
        found.append(error.reason)
    found.append(parser.in_command())
    return found


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({point % (len(data) + 1) for point in cuts})
    return [data[start:end] for start, end in itertools.pairwise([0, *points, len(data)])]


LIMITS = RespLimits(bulk_bytes_max=8, array_items_max=4, command_bytes_max=12)
ARGUMENTS = st.lists(st.binary(max_size=20), min_size=0, max_size=7)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(ARGUMENTS, min_size=1, max_size=4),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=5),
    st.lists(st.integers(min_value=0), max_size=4),
)
def test_the_whole_command_read_parses_as_the_step_by_step_read(
    commands: list[list[bytes]], mutations: list[tuple[int, int]], cuts: list[int]
) -> None:
    """Valid or mutated input, whole or cut anywhere, within the bounds or beyond
    them: the same commands, the same protocol error, the same state after."""
    data = bytearray(b"".join(multibulk(*words) for words in commands))
    for position, byte in mutations:
        index = position % (len(data) + 1)
        if byte % 3 == 0 and index < len(data):
            data[index] = byte
        elif byte % 3 == 1:
            data.insert(index, byte)
        elif index < len(data):
            del data[index]
    for limits in (LIMITS, RespLimits()):
        for chunks in ([bytes(data)], cut(bytes(data), cuts)):
            assert outcomes(RespParser(limits), chunks) == outcomes(
                StepByStepParser(limits), chunks
            )


def test_a_whole_command_read_empties_the_buffer_after_the_last_command() -> None:
    parser = RespParser()
    parser.feed(multibulk(b"SET", b"k", b"v") + multibulk(b"GET", b"k"))
    assert parser.next_command() == [b"SET", b"k", b"v"]
    assert parser.buffer  # the GET still waits
    assert parser.next_command() == [b"GET", b"k"]
    assert not parser.buffer and parser.position == 0
    assert not parser.in_command()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=70_000))
def test_the_fronts_encoders_are_encode_command_byte_for_byte(key: bytes, value: bytes) -> None:
    assert encode_put(key, value) == encode_command("put", key, value)
    assert encode_get(key) == encode_command("get", key)


def test_a_plain_set_uses_the_shared_finish_and_put_result_reads_ok() -> None:
    planned = plan(None, [b"SET", b"k", b"v"])  # type: ignore[arg-type]
    assert getattr(planned, "finish", None) is finish_set
    assert finish_set([decode_result(PUT_RESULT)]) == OK
    assert len(b"k") <= KV_PARAMS.key_bytes_max


SMALL = KvParams(key_bytes_max=4, value_bytes_max=8, keys_max=3, command_bytes_max=64,
                 bytes_max=3 * (64 + 4 + 8) - 10, tombstones_max=2)
KEYS = st.sampled_from([b"a", b"b", b"c", b"d", b"toolong"])  # (3 keys fit, "toolong" never)
VALUES = st.binary(max_size=10)
COMMANDS = st.one_of(
    st.builds(lambda key, value: ["put", key, value], KEYS, VALUES),
    st.builds(lambda key: ["delete", key], KEYS),
    st.builds(lambda key: ["append", key, b"xy"], KEYS),
    st.builds(lambda key: ["incr", key, 1], KEYS),
    st.builds(lambda key: ["put", key, "text"], KEYS),
    st.builds(lambda key: ["put", key], KEYS),
    st.builds(lambda key, value: ["redis", "hset", [key, b"f", value]], KEYS, VALUES),
    st.builds(lambda key: ["redis", "expire", [key, b"1"]], KEYS),
    st.just(b"\xc1"),
)


class GeneralPathStore(KeyValueStateMachine):
    """The store without the short cut of ``apply``."""

    def apply(self, command: bytes) -> bytes:
        return self._apply(command, nested=False)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(COMMANDS, st.integers(0, 3)), max_size=25))
@example([(["put", b"a", b"x"], 0), (["redis", "expire", [b"a", b"1"]], 0),
          (["put", b"a", b"y"], 0), (["put", b"b", b"y" * 8], 0), (["put", b"c", b"z"], 0),
          (["put", b"d", b""], 0), (["delete", b"a"], 0), (["put", b"d", b"12345678"], 1)])
def test_the_stores_put_in_apply_is_the_general_put(
    steps: list[tuple[list[object] | bytes, int]]
) -> None:
    """Up to every bound (keys, bytes, key and value sizes), over collections and
    keys with deadlines: the same results, errors counted alike, the same state."""
    quick, general = KeyValueStateMachine(SMALL), GeneralPathStore(SMALL)
    codec = quick._codec
    now = 0
    for command, tick in steps:
        now += tick * 500
        data = command if isinstance(command, bytes) else codec.encode_value(command)
        for store in (quick, general):
            store.advance_clock(now)
        assert quick.apply(data) == general.apply(data)
        assert quick.errors == general.errors
        assert quick.snapshot() == general.snapshot()
        assert (quick.used_bytes, quick.sizes) == (general.used_bytes, general.sizes)
