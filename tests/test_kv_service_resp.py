"""The Redis front of the KV service, in one process: the RESP parser and encoder
(exact bytes, every bound, Hypothesis fuzzing), and the service itself behind a
fake node (fault injection: lost replies, silence, redirections) and behind a
real single-node Raft host, driven by redis-py (retries off).

The multi-process tests (a 3-node cluster, kill -9, linearizability) are in
``test_kv_service_cluster.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Self

import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from replicaio.core.codec import Codec
from replicaio.runtime.client import check_service_params, service_factory
from replicaio.runtime.config import Address, ClusterFileError, HostParams
from replicaio.runtime.counters import Counters
from replicaio.runtime.kv.service import RespService, smr_client_id
from replicaio.services.kv.redis_commands import plan
from replicaio.services.kv.redis_plan import KV_PARAMS, Local
from replicaio.services.kv.resp import (
    OK,
    RESP2,
    RESP3,
    RespError,
    RespLimits,
    RespParser,
    RespProtocolError,
    RespSimple,
    encode_reply,
    split_inline,
)
from replicaio.services.kv.resp import Reply as RespReply
from replicaio.services.kv.state_machine import KeyValueStateMachine
from replicaio.smr.api import ClientRequest, Redirect, Rejected, Reply

LOCAL = "127.0.0.1"
DEADLINE_S = 10.0


def multibulk(*words: bytes) -> bytes:
    return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%b\r\n" % (len(w), w) for w in words)


def parse_all(parser: RespParser) -> list[list[bytes]]:
    found = []
    while (command := parser.next_command()) is not None:
        found.append(command)
    return found


# -- the parser ---------------------------------------------------------------------------------


def test_multibulk_and_inline_commands_parse_whole_and_byte_by_byte() -> None:
    stream = (
        multibulk(b"SET", b"k", b"a\r\nb")
        + b"*0\r\n*-1\r\n\r\n"  # empty requests are skipped
        + b'PING  "hello world" \'it\\\'s\' x"\\x41\\n"\r\n'
        + b"GET k\n"
        + multibulk(b"", b"\x00\xff")
    )
    expected = [
        [b"SET", b"k", b"a\r\nb"],
        [b"PING", b"hello world", b"it's", b"xA\n"],
        [b"GET", b"k"],
        [b"", b"\x00\xff"],
    ]
    whole = RespParser()
    whole.feed(stream)
    assert parse_all(whole) == expected
    assert whole.buffered() == 0
    piecewise = RespParser()
    found = []
    for index in range(len(stream)):
        piecewise.feed(stream[index : index + 1])
        found += parse_all(piecewise)
    assert found == expected
    assert not piecewise.in_command()


LIMITS = RespLimits(bulk_bytes_max=16, array_items_max=4, inline_bytes_max=32,
                    command_bytes_max=40)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"*5\r\n", "invalid_multibulk_length"),  # array_items_max
        (b"*x\r\n", "invalid_multibulk_length"),
        (b"*1\r\n$17\r\n", "invalid_bulk_length"),  # bulk_bytes_max
        (b"*1\r\n$-1\r\n", "invalid_bulk_length"),
        (b"*1\r\n$1x\r\n", "invalid_bulk_length"),
        (b"*2\r\n:1\r\n", "expected_bulk"),
        (b"*1\r\n$1\r\nab\r\n", "bulk_not_terminated"),
        (b"*1\r\n$1\r\na\rb", "bulk_not_terminated"),  # (each byte of the CRLF checked)
        (b"*1\r\n$1\r\na\n\r", "bulk_not_terminated"),
        (b"*" + b"1" * 40, "length_line_too_long"),
        (b"P" * 33, "inline_too_long"),  # inline_bytes_max, no newline yet
        (b"*3\r\n$16\r\n" + b"a" * 16 + b"\r\n$16\r\n" + b"b" * 16 + b"\r\n$16\r\n",
         "command_too_large"),  # command_bytes_max
        (b'GET "k\r\n', "unbalanced_quotes"),
        (b"GET 'k'x\r\n", "unbalanced_quotes"),
    ],
)
def test_every_bound_and_violation_has_its_reason(data: bytes, reason: str) -> None:
    parser = RespParser(LIMITS)
    parser.feed(data)
    with pytest.raises(RespProtocolError) as raised:
        parse_all(parser)
    assert raised.value.reason == reason


def test_bounds_are_inclusive_at_the_limit() -> None:
    parser = RespParser(LIMITS)
    parser.feed(multibulk(b"a" * 16, b"b" * 16, b"c" * 8) + b"P" * 31 + b"\n")
    assert parse_all(parser) == [[b"a" * 16, b"b" * 16, b"c" * 8], [b"P" * 31]]


def test_inline_splitting() -> None:
    assert split_inline(b"") == []
    assert split_inline(b"  a\tb  ") == [b"a", b"b"]
    assert split_inline(b'"" \'\'') == [b"", b""]
    assert split_inline(b'"a\\"b" "\\q"') == [b'a"b', b"q"]


# Hypothesis: whatever the bytes, the parser answers commands, asks for more, or
# raises RespProtocolError -- nothing else -- and holds at most one command plus
# what it was fed since.

HOLD_MAX = LIMITS.command_bytes_max + 64 * LIMITS.array_items_max + LIMITS.inline_bytes_max


def feed_in_chunks(
    data: bytes, cuts: list[int], limits: RespLimits = LIMITS
) -> list[list[bytes]]:
    parser = RespParser(limits)
    found: list[list[bytes]] = []
    positions = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    for start, end in itertools.pairwise(positions):
        parser.feed(data[start:end])
        found += parse_all(parser)
        assert parser.buffered() <= HOLD_MAX + (end - start)
    return found


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(min_value=0), max_size=8))
def test_random_bytes_only_ever_raise_a_protocol_error(data: bytes, cuts: list[int]) -> None:
    with contextlib.suppress(RespProtocolError):
        feed_in_chunks(data, cuts)


ARGUMENTS = st.lists(st.binary(max_size=12), min_size=1, max_size=4)


@settings(max_examples=300, deadline=None)
@given(st.lists(ARGUMENTS, min_size=1, max_size=5), st.lists(st.integers(min_value=0), max_size=6))
def test_valid_commands_parse_identically_however_they_are_cut(
    commands: list[list[bytes]], cuts: list[int]
) -> None:
    data = b"".join(multibulk(*words) for words in commands)
    assert feed_in_chunks(data, cuts, RespLimits()) == commands


@settings(max_examples=400, deadline=None)
@given(
    st.lists(ARGUMENTS, min_size=1, max_size=4),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=6),
    st.lists(st.integers(min_value=0), max_size=4),
)
def test_mutated_commands_parse_or_raise_a_protocol_error(
    commands: list[list[bytes]], mutations: list[tuple[int, int]], cuts: list[int]
) -> None:
    data = bytearray(b"".join(multibulk(*words) for words in commands))
    for position, byte in mutations:
        kind = byte % 3
        index = position % (len(data) + 1)
        if kind == 0 and index < len(data):
            data[index] = byte  # flip
        elif kind == 1:
            data.insert(index, byte)  # insert
        elif index < len(data):
            del data[index]  # delete
    with contextlib.suppress(RespProtocolError):
        for command in feed_in_chunks(bytes(data), cuts):
            assert command and all(isinstance(word, bytes) for word in command)


# -- the encoder ----------------------------------------------------------------------------------


def test_replies_in_resp2_and_resp3() -> None:
    cases: list[tuple[Any, bytes, bytes]] = [
        (RespSimple("OK"), b"+OK\r\n", b"+OK\r\n"),
        (OK, b"+OK\r\n", b"+OK\r\n"),  # the constant's own bytes (encode_reply's short cut)
        (RespError("ERR bad\r\nthing"), b"-ERR bad  thing\r\n", b"-ERR bad  thing\r\n"),
        (42, b":42\r\n", b":42\r\n"),
        (True, b":1\r\n", b"#t\r\n"),
        (b"a\r\nb", b"$4\r\na\r\nb\r\n", b"$4\r\na\r\nb\r\n"),
        ("é", b"$2\r\n\xc3\xa9\r\n", b"$2\r\n\xc3\xa9\r\n"),
        (None, b"$-1\r\n", b"_\r\n"),
        ([b"x", None, 1], b"*3\r\n$1\r\nx\r\n$-1\r\n:1\r\n", b"*3\r\n$1\r\nx\r\n_\r\n:1\r\n"),
        ({"proto": 3, "modules": []}, b"*4\r\n$5\r\nproto\r\n:3\r\n$7\r\nmodules\r\n*0\r\n",
         b"%2\r\n$5\r\nproto\r\n:3\r\n$7\r\nmodules\r\n*0\r\n"),
        ({}, b"*0\r\n", b"%0\r\n"),
    ]
    for value, resp2, resp3 in cases:
        assert encode_reply(value, RESP2) == resp2, value
        assert encode_reply(value, RESP3) == resp3, value


class FakeSession:
    def __init__(self) -> None:
        self.protocol = RESP2
        self.name: bytes | None = None
        self.connection_id = 7
        self.closing = False
        self.scripts: dict[str, str] = {}  # SCRIPT LOAD's table (Session.scripts)

    def server_info(self) -> dict[str, dict[str, str | int]]:
        return {"Server": {"server_name": "replicaio"}}

    # The rest of redis_commands.Session, so that no generated command (TIME,
    # ROLE, CLIENT LIST or KILL) meets a missing method instead of the planner.
    def clients(self) -> list[dict[str, str | int]]:
        return [{"id": self.connection_id, "addr": "127.0.0.1:1"}]

    def kill_clients(self, client_id: int | None, address: str | None, skip_me: bool) -> int:
        return 0

    def server_time_us(self) -> int:
        return 1_700_000_000_000_000

    def role(self) -> RespReply:
        return [b"master", 0, []]


def test_the_fake_session_is_a_whole_session() -> None:
    for name in ("time", "role", "client list", "client kill id 3"):
        planned = plan(FakeSession(), name.encode().split())
        assert isinstance(planned, Local), (name, planned)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=20), min_size=1, max_size=6))
def test_planning_any_command_never_raises(argv: list[bytes]) -> None:
    for words in (argv, [random.Random(len(argv)).choice(
            [b"SET", b"hello", b"CLIENT", b"INCRBY", b"MSET", b"config", b"cas"]), *argv]):
        plan(FakeSession(), words)


# -- the service behind a fake node ---------------------------------------------------------------


class FakeNode:
    """A ServiceHost that executes requests on a real state machine with SMR's
    session rules (at most once; a client past seq 1 without a session is refused
    ``session_expired``; an empty command registers), and can lose replies, stay
    silent, redirect or evict sessions."""

    def __init__(self, service_params: dict[str, Any] | None = None, **host: Any) -> None:
        self.codec = Codec()
        self.counters = Counters()
        self.node_id = 0
        self.core = SimpleNamespace(incarnation=1, protocol=None)
        self.cluster = SimpleNamespace(service_params=service_params or {}, protocol="fake", n=1)
        self.host_params = HostParams(**host)
        self.kv = KeyValueStateMachine()
        self.sessions: dict[int, tuple[int, bytes]] = {}
        self.requests: list[ClientRequest] = []
        self.mode = "ok"  # or "silent", "redirect", "busy"
        self.replies_to_lose = 0  # replies to writes executed and then lost
        self.evictions_after_write = 0  # evict every session after a write executes
        self.inbox_full = False  # try_submit refuses: every request goes through submit
        self.service = RespService()

    async def submit(
        self, payload: Any, on_done: Callable[[str | None], None] | None = None
    ) -> None:
        request = self.codec.decode(payload)
        assert type(request) is ClientRequest
        self.requests.append(request)
        asyncio.get_running_loop().call_soon(self.execute, request, on_done)

    def try_submit(
        self, payload: Any, on_done: Callable[[str | None], None] | None = None
    ) -> bool:
        """The host's synchronous submit (the front's common path); False while
        ``inbox_full`` (the front then awaits ``submit``)."""
        if self.inbox_full:
            return False
        request = self.codec.decode(payload)
        assert type(request) is ClientRequest
        self.requests.append(request)
        asyncio.get_running_loop().call_soon(self.execute, request, on_done)
        return True

    def execute(self, request: ClientRequest, on_done: Callable[[str | None], None] | None) -> None:
        output: Any
        if self.mode == "redirect":
            output = Redirect(request.client, request.seq, -1)
        elif self.mode == "busy":
            output = Rejected(request.client, request.seq, "busy")
        elif request.read_only:
            output = Reply(request.client, request.seq, self.kv.read(request.command), 0)
        else:
            last = self.sessions.get(request.client)
            if last is not None and request.seq <= last[0]:
                assert request.seq == last[0], "one request at a time per client"
                output = Reply(request.client, request.seq, last[1], 0)
            elif last is None and request.seq > 1:
                output = Rejected(request.client, request.seq, "session_expired")
            else:
                result = self.kv.apply(request.command) if request.command else b""
                self.sessions[request.client] = (request.seq, result)
                output = Reply(request.client, request.seq, result, 0)
                if request.command and self.evictions_after_write:
                    self.evictions_after_write -= 1
                    self.sessions.clear()
                    output = None  # and the reply is lost
        if on_done is not None:
            on_done(None)
        if self.mode == "silent" or output is None:
            return
        if self.replies_to_lose and type(output) is Reply and not request.read_only and (
            request.command
        ):
            self.replies_to_lose -= 1
            return
        self.service.on_outputs([output])

    async def __aenter__(self) -> Self:
        await self.service.start(self, Address(LOCAL, 0), self.host_params)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.service.close()

    def client(self, **options: Any) -> aioredis.Redis:
        return aioredis.Redis(host=LOCAL, port=self.service.port, retry=Retry(NoBackoff(), 0),
                              socket_timeout=DEADLINE_S, **options)


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a scenario; any exception a connection handler raised fails the test."""
    errors: list[Any] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(
            context))
        await asyncio.wait_for(scenario(), 60)

    asyncio.run(main())
    assert not errors, errors


FAST = {"retry_after_ms": 100, "retry_backoff_ms": 10, "request_timeout_ms": 600}


@pytest.mark.parametrize("protocol", [2, 3])
def test_every_command_through_redis_py(protocol: int) -> None:
    async def scenario() -> None:
        async with FakeNode() as node:
            client = node.client(protocol=protocol)
            assert await client.ping() is True
            assert await client.echo("hi") == b"hi"
            assert await client.set("k", "v") is True
            assert await client.get("k") == b"v"
            assert await client.get("missing") is None
            assert await client.set("k", "w", nx=True) is None
            assert await client.set("fresh", "1", nx=True) is True
            assert await client.setnx("fresh", "2") is False
            assert await client.incr("n") == 1
            assert await client.incrby("n", 41) == 42
            assert await client.decr("n") == 41
            assert await client.decrby("n", 1) == 40
            assert await client.append("k", "xyz") == 4
            assert await client.strlen("k") == 4
            assert await client.mset({"a": "1", "b": "2"}) is True
            assert await client.mget("a", "b", "nope") == [b"1", b"2", None]
            assert await client.exists("a", "b", "nope", "a") == 3
            assert await client.delete("a", "b", "nope") == 2
            assert await client.execute_command("CAS", "k", "vxyz", "new") == 1
            assert await client.execute_command("CAS", "k", "vxyz", "newer") == 0
            assert await client.execute_command("CAS", "absent", "x", "y") == 0
            assert await client.get("k") == b"new"
            assert await client.execute_command("SELECT", 0) in (True, b"OK", "OK")
            assert await client.client_setname("me") is True
            assert await client.client_getname() in ("me", b"me")
            assert await client.config_get("*") == {}
            info = await client.info()
            assert info["server_name"] == "replicaio"
            for call, message in [
                (client.incr("k"), "not an integer"),
                (client.incrby("n", "x"), "not an integer"),  # type: ignore[arg-type]
                (client.set("k", "v", ex=0), "invalid expire time in 'set' command .EX 0."),
                (client.execute_command("SET", "k", "v", "NOPE"), "unknown SET option 'NOPE'"),
                (client.execute_command("BLPOP", "k", 0), "BLPOP is not supported"),
                (client.execute_command("FLUSHEVERYTHING"), "unknown command 'FLUSHEVERYTHING'"),
                (client.execute_command("GET"), "wrong number of arguments for 'get'"),
                (client.execute_command("SELECT", 1), "DB index is out of range"),
                (client.set("k" * 2000, "v"), "key too large"),
                (client.set("big", "v" * (KV_PARAMS.value_bytes_max + 1)), "value too large"),
            ]:
                with pytest.raises(redis.ResponseError, match=message):
                    await call
            await client.aclose()
            counters = node.counters.snapshot()
            assert counters["rejected_resp_command_not_integer"] == 1
            assert counters["rejected_resp_command_unknown_command"] == 1
            assert counters["rejected_resp_command_blocking_unsupported"] == 1
            assert counters["rejected_resp_command_key_too_large"] == 1

    run(scenario)


def test_incr_takes_and_reads_only_the_integers_redis_accepts() -> None:
    """Redis's integers: no leading zero, no "-0", no "+", no spaces (string2ll)."""

    async def scenario() -> None:
        async with FakeNode() as node:
            client = node.client()
            for bad in ("05", "-0", "+1", " 1", "1 ", "00", "-", "9223372036854775808"):
                with pytest.raises(redis.ResponseError, match="not an integer"):
                    await client.incrby("n", bad)  # type: ignore[arg-type]
                await client.set("stored", bad)
                with pytest.raises(redis.ResponseError, match="not an integer"):
                    await client.incr("stored")
            for good, after in (("0", 1), ("-7", -6), ("9223372036854775806", 2**63 - 1)):
                await client.set("stored", good)
                assert await client.incr("stored") == after
            assert await client.incrby("n", "-3") == -3  # type: ignore[arg-type]
            await client.aclose()

    run(scenario)


def test_hello_switches_protocol_and_answers_a_map() -> None:
    async def scenario() -> None:
        async with FakeNode() as node:
            reader, writer = await asyncio.open_connection(LOCAL, node.service.port)
            writer.write(multibulk(b"GET", b"x") + multibulk(b"HELLO", b"3")
                         + multibulk(b"GET", b"x") + multibulk(b"HELLO", b"4"))
            await writer.drain()
            await asyncio.sleep(0.2)
            data = await read_available(reader)
            assert data.startswith(b"$-1\r\n%7\r\n$6\r\nserver\r\n$9\r\nreplicaio\r\n")
            assert b"$5\r\nproto\r\n:3\r\n" in data
            assert data.endswith(b"_\r\n-NOPROTO unsupported protocol version\r\n")
            writer.close()

    run(scenario)


async def read_available(reader: asyncio.StreamReader, timeout_s: float = 0.5) -> bytes:
    data = b""
    with contextlib.suppress(TimeoutError):
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), timeout_s)
            if not chunk:
                break
            data += chunk
    return data


def test_a_pipeline_is_answered_in_order_and_travels_as_few_smr_requests() -> None:
    async def scenario() -> None:
        async with FakeNode() as node:
            client = node.client()
            async with client.pipeline(transaction=False) as pipe:
                for index in range(200):
                    pipe.set(f"k{index}", f"v{index}")
                    pipe.get(f"k{index}")
                    pipe.incr("counter")
                    if index % 50 == 0:
                        pipe.ping()
                results = await pipe.execute()
            expected: list[Any] = []
            for index in range(200):
                expected += [True, f"v{index}".encode(), index + 1]
                if index % 50 == 0:
                    expected.append(True)
            assert results == expected
            # 604 commands, at most 256 per request, and a GET among writes counts
            # its largest reply (64 KiB) against the 768 KiB of one result: a GET
            # every 12 at most. Still far fewer requests than commands.
            assert 3 <= len(node.requests) <= 30, len(node.requests)
            await client.aclose()

    run(scenario)


def test_the_replies_of_a_pipelined_group_leave_in_one_write() -> None:
    """The replies to the commands of one SMR request are joined into one write to
    the socket, not one system call per reply."""

    async def scenario() -> None:
        async with FakeNode() as node:
            client = node.client()
            await client.ping()
            (connection,) = node.service.connections_open
            writes: list[int] = []
            write = connection.transport.write

            def counted(data: bytes | bytearray | memoryview) -> None:
                writes.append(len(data))
                write(data)

            connection.transport.write = counted  # type: ignore[method-assign]
            sent = len(node.requests)
            async with client.pipeline(transaction=False) as pipe:
                for index in range(200):
                    pipe.set(f"k{index}", f"v{index}")
                results = await pipe.execute()
            assert results == [True] * 200
            groups = len(node.requests) - sent  # (the session's registration among them)
            assert 1 <= len(writes) <= groups < 20, (writes, groups)
            await client.aclose()

    run(scenario)


async def read_replies(reader: asyncio.StreamReader, count: int) -> bytes:
    """Read until ``count`` simple replies (one line each) have come."""
    answer = b""
    while answer.count(b"\r\n") < count:
        chunk = await asyncio.wait_for(reader.read(65536), DEADLINE_S)
        assert chunk, answer[-200:]
        answer += chunk
    return answer


@pytest.mark.parametrize("inbox_full", [False, True])
def test_a_pipeline_cut_anywhere_across_reads_is_answered_in_order(inbox_full: bool) -> None:
    """Commands cut at random places across many reads (a command's bytes in two
    reads, several commands in one) are answered once each, in order, mixing local
    and replicated ones; with the node's inbox full (``try_submit`` refuses) the
    front waits for room and the order holds."""

    async def scenario() -> None:
        async with FakeNode() as node:
            node.inbox_full = inbox_full
            commands: list[bytes] = []
            expected: list[bytes] = []
            for index in range(300):
                commands.append(multibulk(b"INCR", b"n"))
                expected.append(b":%d\r\n" % (index + 1))
                if index % 7 == 0:
                    commands.append(multibulk(b"PING"))
                    expected.append(b"+PONG\r\n")
                if index % 11 == 0:
                    commands.append(multibulk(b"GET", b"n"))
                    expected.append(b"$%d\r\n%d\r\n" % (len(str(index + 1)), index + 1))
            data = b"".join(commands)
            reader, writer = await asyncio.open_connection(LOCAL, node.service.port)
            rng = random.Random(7)
            position = 0
            while position < len(data):
                step = rng.choice([1, 2, 5, 17, 64, 300])
                writer.write(data[position : position + step])
                position += step
                await writer.drain()
                if rng.random() < 0.2:
                    await asyncio.sleep(0.002)  # a separate read on the node's side
            answer = await read_replies(reader, sum(reply.count(b"\r\n") for reply in expected))
            assert answer == b"".join(expected)
            assert node.kv.data[b"n"] == b"300"
            writer.close()
            await still_serving(node)

    run(scenario)


def test_the_common_path_runs_no_task_per_command() -> None:
    """Plain commands (key-value and local ones) are answered on the loop's
    callbacks: a thousand commands, one at a time and pipelined, start no task
    beyond the connection's first write (its session's registration)."""

    async def scenario() -> None:
        async with FakeNode() as node:
            loop = asyncio.get_running_loop()
            created: list[str] = []

            def factory(loop: asyncio.AbstractEventLoop, coroutine: Any,
                        **options: Any) -> asyncio.Task[Any]:
                created.append(getattr(coroutine, "__qualname__", "?"))
                return asyncio.Task(coroutine, loop=loop, **options)

            reader, writer = await asyncio.open_connection(LOCAL, node.service.port)
            writer.write(multibulk(b"SET", b"k", b"0"))
            assert await read_replies(reader, 1) == b"+OK\r\n"
            loop.set_task_factory(factory)
            try:
                for index in range(500):
                    writer.write(multibulk(b"SET", b"k", b"%d" % index) + multibulk(b"PING"))
                    assert await read_replies(reader, 2) == b"+OK\r\n+PONG\r\n"
                writer.write((multibulk(b"INCR", b"n") + multibulk(b"GET", b"k")) * 250)
                answer = await read_replies(reader, 750)
                assert answer.endswith(b":250\r\n$3\r\n499\r\n")
                assert [name for name in created if "RespService" in name] == [], created
                writer.write(multibulk(b"MULTI") + multibulk(b"INCR", b"n") + multibulk(b"EXEC"))
                assert await read_replies(reader, 4) == b"+OK\r\n+QUEUED\r\n*1\r\n:251\r\n"
                assert "RespService.run_busy" in created  # (the factory sees the front's)
            finally:
                loop.set_task_factory(None)
            writer.close()

    run(scenario)


@pytest.mark.parametrize("how", ["reset", "half_close"])
def test_a_client_closing_mid_pipeline(how: str) -> None:
    """A client that sends a long pipeline and closes before its replies: on a
    half close (FIN) every command is still executed and answered, in order; on a
    reset the request in flight runs to its end and the commands not yet sent are
    dropped. Either way the connection is released and the node keeps serving."""

    async def scenario() -> None:
        async with FakeNode() as node:
            client = node.client()
            assert await client.set("warm", "up") is True
            reader, writer = await asyncio.open_connection(LOCAL, node.service.port)
            writer.write(multibulk(b"SET", b"k", b"v"))  # its session, registered
            assert await read_replies(reader, 1) == b"+OK\r\n"
            pipeline = b"".join(multibulk(b"INCR", b"n") + multibulk(b"PING")
                                for _ in range(2000))
            writer.write(pipeline)
            await writer.drain()
            if how == "half_close":
                writer.write_eof()
                answer = await read_replies(reader, 4000)
                assert answer == b"".join(b":%d\r\n+PONG\r\n" % (index + 1)
                                          for index in range(2000))
                assert await reader.read() == b""  # and the node closed its side
            else:
                sock = writer.get_extra_info("socket")
                import socket
                import struct

                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()  # RST
            deadline = time.monotonic() + DEADLINE_S
            while len(node.service.connections_open) > 1:
                assert time.monotonic() < deadline, node.service.connections_open
                await asyncio.sleep(0.01)
            counter = node.kv.data.get(b"n", b"0")
            assert isinstance(counter, bytes), counter
            executed = int(counter)
            assert executed == 2000 if how == "half_close" else 0 <= executed <= 2000
            assert not node.service.waiters or all(
                client_id in (c.read_client, c.write_client)
                for c in node.service.connections_open for client_id in node.service.waiters)
            await still_serving(node)
            await client.aclose()
            writer.close()

    run(scenario)


def test_pipelined_reads_of_large_values_are_split_so_every_reply_fits() -> None:
    """Reads alone travel in groups of up to ``group_commands_max``; when their values
    do not fit in one result (``result_bytes_max``), the node answers what fit and
    sends the rest again, so every GET gets its value and no reply is too large."""

    async def scenario() -> None:
        async with FakeNode() as node:
            client = node.client()
            large = b"x" * 60_000
            await client.set("large", large)
            await client.set("small", b"s")
            async with client.pipeline(transaction=False) as pipe:
                for _ in range(300):
                    pipe.get("small")
                small_results = await pipe.execute()
            assert small_results == [b"s"] * 300
            requests_before = len(node.requests)
            async with client.pipeline(transaction=False) as pipe:
                for _ in range(64):
                    pipe.get("large")
                large_results = await pipe.execute()
            assert large_results == [large] * 64
            assert node.counters.get("kv_read_groups_split") >= 1
            # 3.8 MB of values, at most 768 KiB per result: at least 5 requests.
            assert 5 <= len(node.requests) - requests_before <= 64
            with pytest.raises(redis.ResponseError, match="reply too large"):
                await client.mget(["large"] * 20)  # 1.2 MB of values in one command
            assert await client.get("large") == large
            await client.aclose()

    run(scenario)


def test_a_lost_reply_is_retried_with_the_same_seq_and_executes_once() -> None:
    async def scenario() -> None:
        async with FakeNode(FAST) as node:
            client = node.client()
            assert await client.get("n") is None  # reads: their own client id
            node.replies_to_lose = 2
            assert await client.incr("n") == 1
            assert await client.incr("n") == 2
            assert node.kv.data[b"n"] == b"2"
            sent = [(request.client, request.seq, request.command) for request in node.requests]
            read, registration, *writes = sent
            assert registration[1:] == (1, b"") and registration[0] != read[0]
            assert len(writes) == 3 + 1  # three sends of the first INCR, one of the second
            assert writes[0] == writes[1] == writes[2] and writes[0][:2] == (registration[0], 2)
            assert writes[3][:2] == (registration[0], 3)
            assert node.counters.get("kv_retries") == 2
            await client.aclose()

    run(scenario)


@pytest.mark.parametrize("mode", ["silent", "redirect", "busy"])
def test_without_quorum_the_client_gets_tryagain_after_a_bounded_wait(mode: str) -> None:
    """A read gets TRYAGAIN (it had no effect); a write UNKNOWN, never TRYAGAIN:
    a Redis client sends a TRYAGAIN again as a new command (an INCR twice)."""
    async def scenario() -> None:
        async with FakeNode(FAST) as node:
            client = node.client()
            assert await client.set("k", "v") is True
            node.mode = mode
            started = time.monotonic()
            with pytest.raises(redis.exceptions.TryAgainError, match="no quorum"):
                await client.get("k")
            with pytest.raises(redis.exceptions.ResponseError, match=r"^UNKNOWN no quorum") as lost:
                await client.set("k", "w")
            assert not isinstance(lost.value, redis.exceptions.TryAgainError)
            elapsed = time.monotonic() - started
            assert 1.1 <= elapsed < 3.0
            assert node.counters.get("kv_no_quorum") == 2
            node.mode = "ok"
            # Silent: the write took effect, unconfirmed; refused: it did not.
            assert await client.get("k") == (b"w" if mode == "silent" else b"v")
            await client.aclose()

    run(scenario)


def test_an_evicted_session_is_replaced_and_never_runs_a_write_twice() -> None:
    async def scenario() -> None:
        async with FakeNode(FAST) as node:
            client = node.client()
            assert await client.set("k", "a") is True
            first = node.requests[-1].client
            node.sessions.clear()  # evicted: sent once, the next write surely did not run
            assert await client.set("k", "b") is True
            second = node.requests[-1].client
            assert second != first and node.kv.data[b"k"] == b"b"
            # The first send runs, its reply is lost and the session evicted: the
            # retry is refused, the client told the outcome is unknown...
            node.evictions_after_write = 1
            with pytest.raises(redis.exceptions.ResponseError,
                               match=r"^UNKNOWN session expired") as lost:
                await client.append("k", "c")
            assert not isinstance(lost.value, redis.exceptions.TryAgainError)
            assert await client.get("k") == b"bc"  # ... and it ran once, not twice
            assert await client.set("k", "d") is True  # then a third registered id
            assert len({request.client for request in node.requests
                        if not request.read_only}) == 3
            assert node.counters.get("kv_sessions_expired") == 2
            await client.aclose()

    run(scenario)


def test_connections_get_distinct_smr_client_ids_across_restarts() -> None:
    ids = {smr_client_id(incarnation, node, connection)
           for incarnation in (1, 2, 1 << 20) for node in (0, 1, 1023)
           for connection in (0, 1, (1 << 30) - 1)}
    assert len(ids) == 27
    assert max(ids) < 1 << 63

    async def scenario() -> None:
        async with FakeNode() as node:
            first, second = node.client(), node.client()
            await first.set("a", "1")
            await second.set("b", "1")
            assert len({request.client for request in node.requests}) == 2
            await first.aclose()
            await second.aclose()

    run(scenario)


# -- bad input to the service ----------------------------------------------------------------------


async def exchange(port: int, data: bytes, *, eof: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection(LOCAL, port)
    if data:
        writer.write(data)
        await writer.drain()
    if eof:
        writer.write_eof()
    answer = await read_available(reader)
    writer.close()
    return answer


async def still_serving(node: FakeNode) -> None:
    client = node.client()
    assert await client.set("alive", "yes") is True
    assert await client.get("alive") == b"yes"
    await client.aclose()


NO_NEWLINE = bytes(byte for byte in range(256) if byte != 0x0A)
BAD_INPUT: list[tuple[bytes, bool, bytes, str]] = [
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + NO_NEWLINE * 300, False,
     b"-ERR Protocol error: too big inline request", "rejected_resp_inline_too_long"),
    (multibulk(b"PING") + b"*1\r\n$999999999\r\n", False,
     b"+PONG\r\n-ERR Protocol error: invalid bulk length 999999999: more than bulk_bytes_max "
     b"(8454144 bytes)", "rejected_resp_invalid_bulk_length"),
    (b"*1\r\n$-5\r\n", False, b"-ERR Protocol error: invalid bulk length -5: negative",
     "rejected_resp_invalid_bulk_length"),
    (b"*1\r\n$1e3\r\n", False,
     b"-ERR Protocol error: invalid bulk length '1e3': not a decimal integer",
     "rejected_resp_invalid_bulk_length"),
    (b"*99999999\r\n", False, b"-ERR Protocol error: invalid multibulk length 99999999: more "
     b"than array_items_max (4096 items)", "rejected_resp_invalid_multibulk_length"),
    (b"*1e3\r\n", False,
     b"-ERR Protocol error: invalid multibulk length '1e3': not a decimal integer",
     "rejected_resp_invalid_multibulk_length"),
    (b"*2\r\n$3\r\nGET\r\n$5\r\nab", True, b"", "rejected_resp_truncated_frame"),
    (b"*1\r\n:1\r\n", False, b"-ERR Protocol error: expected '$'", "rejected_resp_expected_bulk"),
    (multibulk(b"NOPE", b"x") + multibulk(b"PING"), False,
     b"-ERR unknown command 'NOPE', with args beginning with: 'x'\r\n+PONG\r\n",
     "rejected_resp_command_unknown_command"),
]


@pytest.mark.parametrize(("data", "eof", "answer", "counter"), BAD_INPUT)
def test_bad_input_is_answered_counted_and_the_service_keeps_serving(
    data: bytes, eof: bool, answer: bytes, counter: str
) -> None:
    async def scenario() -> None:
        async with FakeNode() as node:
            got = await exchange(node.service.port, data, eof=eof)
            assert got.startswith(answer), got[:200]
            assert node.counters.get(counter) == 1
            await still_serving(node)

    run(scenario)


def test_pipeline_depth_and_client_connections_are_bounded() -> None:
    async def scenario() -> None:
        async with FakeNode({"pipeline_depth_max": 8, "group_commands_max": 4,
                             "evict_idle_after_ms": 0}, client_connections_max=2) as node:
            reader, writer = await asyncio.open_connection(LOCAL, node.service.port)
            writer.write(multibulk(b"INCR", b"n") * 100)
            await writer.drain()
            answer = b""
            while answer.count(b"\r\n") < 100:
                answer += await asyncio.wait_for(reader.read(65536), DEADLINE_S)
            assert answer.endswith(b":100\r\n")
            assert node.counters.get("bound_resp_pipeline_depth_max") >= 1
            assert max(len(request.command) for request in node.requests) < 200
            other = node.client()
            assert await other.ping() is True
            refused = await exchange(node.service.port, b"")
            assert refused == b"-ERR max number of clients reached\r\n"
            assert node.counters.get("bound_client_connections_max") == 1
            await other.aclose()
            writer.close()

    run(scenario)


def test_pipeline_bytes_are_bounded() -> None:
    async def scenario() -> None:
        async with FakeNode({"pipeline_bytes_max": 4096}) as node:
            reader, writer = await asyncio.open_connection(LOCAL, node.service.port)
            value = b"v" * 1000
            writer.write(b"".join(multibulk(b"SET", b"k%d" % i, value) for i in range(50)))
            await writer.drain()
            answer = b""
            while answer.count(b"\r\n") < 50:
                answer += await asyncio.wait_for(reader.read(65536), DEADLINE_S)
            assert answer == b"+OK\r\n" * 50
            assert node.counters.get("bound_resp_pipeline_bytes_max") >= 1
            writer.close()
            await still_serving(node)

    run(scenario)


async def unread_connection(port: int, request: bytes) -> tuple[Any, asyncio.StreamWriter]:
    """A raw socket with a tiny receive buffer that sends ``request`` and reads nothing."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (LOCAL, port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(request)
    return reader, writer


def test_replies_a_client_does_not_read_are_bounded_in_bytes() -> None:
    """A client that pipelines GETs of a 50 KB value and reads nothing: the node
    stops answering (and reading) once ``reply_bytes_max`` replies are unsent,
    serves other clients meanwhile, and answers everything, in order, once read."""

    async def scenario() -> None:
        reply_max = 64 * 1024
        async with FakeNode({"reply_bytes_max": reply_max}) as node:
            client = node.client()
            value = b"x" * 50_000
            await client.set("big", value)
            request = (multibulk(b"GET", b"big") + multibulk(b"PING")) * 300
            reader, writer = await unread_connection(node.service.port, request)
            deadline = time.monotonic() + DEADLINE_S
            while node.counters.get("bound_resp_reply_bytes_max") < 1:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)
            executed = len(node.requests)
            assert executed < 300  # it stopped: the rest waits for the client
            (connection,) = [c for c in node.service.connections_open if c.unanswered]
            assert connection.reply_backlog() <= reply_max + len(value) + 64
            assert await client.get("big") == value  # another client is served meanwhile
            assert len(node.requests) == executed + 1
            answer = bytearray()
            expected = (b"$50000\r\n" + value + b"\r\n+PONG\r\n") * 300
            while len(answer) < len(expected):
                answer += await asyncio.wait_for(reader.read(1 << 20), DEADLINE_S)
            assert answer == expected
            writer.close()
            await client.aclose()

    run(scenario)


TIMEOUTS = {"idle_timeout_ms": 300, "request_read_timeout_ms": 400}


async def closed_within(reader: asyncio.StreamReader, timeout_s: float) -> bool:
    """Whether the node closes the connection within ``timeout_s``."""
    try:
        while await asyncio.wait_for(reader.read(65536), timeout_s):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


def test_idle_and_half_sent_connections_time_out_and_are_counted() -> None:
    async def scenario() -> None:
        async with FakeNode(TIMEOUTS) as node:
            port = node.service.port
            idle_reader, idle = await asyncio.open_connection(LOCAL, port)
            half_reader, half = await asyncio.open_connection(LOCAL, port)
            half.write(b"*2\r\n$3\r\nGET\r\n")
            slow_reader, slow = await asyncio.open_connection(LOCAL, port)
            busy = node.client()
            started = time.monotonic()
            for byte in b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n":  # one byte per 50 ms
                if slow.is_closing():
                    break
                slow.write(bytes([byte]))
                assert await busy.ping() is True  # a client that talks stays
                await asyncio.sleep(0.05)
            assert await closed_within(idle_reader, 2.0)
            assert await closed_within(half_reader, 2.0)
            assert await closed_within(slow_reader, 2.0)
            assert time.monotonic() - started < 3.0
            assert node.counters.get("timeout_resp_idle") == 1
            assert node.counters.get("timeout_resp_request_read") == 2
            assert node.counters.get("rejected_resp_truncated_frame") == 0
            for stream in (idle, half, slow):
                stream.close()
            await busy.aclose()

    run(scenario)


def test_a_client_that_reads_no_replies_is_closed_after_the_idle_timeout() -> None:
    async def scenario() -> None:
        async with FakeNode({**TIMEOUTS, "reply_bytes_max": 4096}) as node:
            client = node.client()
            await client.set("big", b"x" * 50_000)
            request = multibulk(b"GET", b"big") * 200
            reader, writer = await unread_connection(node.service.port, request)
            deadline = time.monotonic() + DEADLINE_S
            while node.counters.get("timeout_resp_stalled") < 1:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert await closed_within(reader, 2.0)
            await client.aclose()  # idle meanwhile: closed by the node too
            assert node.counters.get("timeout_resp_idle") == 1
            await still_serving(node)
            writer.close()

    run(scenario)


def test_timeouts_of_zero_mean_never() -> None:
    async def scenario() -> None:
        async with FakeNode({"idle_timeout_ms": 0, "request_read_timeout_ms": 0}) as node:
            assert node.service.sweeper is None
            reader, writer = await asyncio.open_connection(LOCAL, node.service.port)
            writer.write(b"*1\r\n")
            assert not await closed_within(reader, 0.5)
            writer.write(b"$4\r\nPING\r\n")
            assert await asyncio.wait_for(reader.read(100), DEADLINE_S) == b"+PONG\r\n"
            writer.close()

    run(scenario)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=200),
            st.lists(st.sampled_from([b"SET", b"GET", b"MSET", b"HELLO", b"CLIENT", b"INCRBY",
                                      b"k", b"3", b"-1", b"\r\n", b"\x00", b"*", b"$"]),
                     min_size=1, max_size=6).map(lambda words: multibulk(*words)),
        ),
        min_size=1, max_size=6,
    ),
)
def test_random_and_mutated_input_never_crashes_the_service(chunks: list[bytes]) -> None:
    async def scenario() -> None:
        async with FakeNode() as node:
            reader, writer = await asyncio.open_connection(LOCAL, node.service.port)
            for chunk in chunks:
                writer.write(chunk)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            await read_available(reader, 0.05)
            writer.close()
            await still_serving(node)

    run(scenario)


# -- configuration --------------------------------------------------------------------------------


def test_service_params_are_validated_when_the_cluster_file_is_loaded() -> None:
    assert service_factory("resp") is RespService
    check_service_params("resp", {"request_timeout_ms": 100, "retry_after_ms": 50})
    cases: list[tuple[dict[str, object], str]] = [
        ({"bogus": 1}, "service.bogus"),
        ({"pipeline_depth_max": "8"}, "service.pipeline_depth_max"),
        ({"retry_after_ms": 0}, "service.retry_after_ms"),
        ({"retry_after_ms": 900, "request_timeout_ms": 800}, "service.retry_after_ms"),
        ({"group_bytes_max": 1 << 24}, "service.group_bytes_max"),
        ({"idle_timeout_ms": -1}, "service.idle_timeout_ms"),
        ({"reply_bytes_max": 0}, "service.reply_bytes_max"),
    ]
    for table, field in cases:
        with pytest.raises(ClusterFileError) as raised:
            check_service_params("resp", table)
        assert raised.value.field == field
    with pytest.raises(ClusterFileError):
        check_service_params("stream", {"x": 1})


# -- the service on a real node host (single-node Raft, in this process) ---------------------------


def test_a_real_single_node_raft_host_serves_redis_py(tmp_path: Path) -> None:
    from replicaio.runtime.config import load_cluster_file, render_cluster_file
    from replicaio.runtime.host import NodeHost
    from replicaio.runtime.local import free_ports

    peer, client_port, metrics = free_ports(3)
    (tmp_path / "cluster.key").write_text("5e" * 32 + "\n")
    path = tmp_path / "cluster.toml"
    path.write_text(render_cluster_file(
        protocol="raft", secret_file="cluster.key",
        nodes=[{"id": 0, "peer": f"{LOCAL}:{peer}", "client": f"{LOCAL}:{client_port}",
                "data_dir": "node-0", "metrics": f"{LOCAL}:{metrics}"}],
        sections={"host": {"client_service": "resp", "fsync": False},
                  "service": {"request_timeout_ms": 3000}},
    ))
    cluster = load_cluster_file(path)

    async def scenario() -> None:
        host = NodeHost(cluster, 0)
        running = asyncio.get_running_loop().create_task(host.run())
        try:
            await asyncio.wait_for(host.ready.wait(), DEADLINE_S)
            client = aioredis.Redis(host=LOCAL, port=client_port, retry=Retry(NoBackoff(), 0))
            await until(lambda: client.set("k", "v"), True)
            async with client.pipeline(transaction=False) as pipe:
                pipe.append("k", "w")
                pipe.get("k")
                pipe.incr("n")
                pipe.mget("k", "n")
                pipe.exists("k", "z")
                assert await pipe.execute() == [2, b"vw", 1, [b"vw", b"1"], 1]
            assert (await client.info("replication"))["role"] == "leader"
            await client.aclose()
            metrics_text = await http_get(metrics)
            assert 'replicaio_kv_request_seconds_count{command="get"}' in metrics_text
            assert "replicaio_protocol_term 1.0" in metrics_text
            assert "replicaio_protocol_is_leader 1.0" in metrics_text
            assert "replicaio_protocol_commit_index" in metrics_text
            assert "replicaio_protocol_snapshot_bytes" in metrics_text
        finally:
            host.stop()
            await asyncio.wait_for(running, DEADLINE_S)

    run(scenario)


async def until(call: Callable[[], Awaitable[Any]], expected: Any) -> None:
    """Retry ``call`` until it answers ``expected`` (before a leader, -TRYAGAIN)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            if await call() == expected:
                return
        except redis.ResponseError:
            pass
        assert time.monotonic() < deadline, "no answer before the deadline"
        await asyncio.sleep(0.05)


async def http_get(port: int) -> str:
    reader, writer = await asyncio.open_connection(LOCAL, port)
    writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data.decode()
