"""The Redis front of a sharded store on its fast path (issue 13): a command
(or a pipeline's run of commands) whose keys live in one group is handed to the
node as that group's request by ``try_submit`` on the loop's callbacks, under
the connection's session in that group, without a task per command; what must
wait (a group's first write registers the session there; a command across
groups; a request refused for keys a transaction across groups holds, sent
again after a pause) keeps the task path. In-process: a host executing each
group's requests on its own store (``KvTxnStore``) with SMR's session rules."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from test_kv_service_resp import FAST, FakeNode, multibulk, read_replies, run

from replicaio.core.stream import GroupOutput
from replicaio.services.txn.kv_store import LOCKED_RESULT, KvTxnStore
from replicaio.services.txn.slots import SlotMap
from replicaio.smr.api import ClientRequest, Reply
from replicaio.smr.groups import GroupRequest

GROUPS = 3
SLOTS = SlotMap.even(GROUPS)


def key_in(group: int, prefix: str) -> bytes:
    number = 0
    while SLOTS.group_of(f"{prefix}{number}".encode()) != group:
        number += 1
    return f"{prefix}{number}".encode()


class FakeShardedNode(FakeNode):
    """Every group's replica on one host: a group's request runs on its store,
    at most once per (group, client, seq); ``locked[g]`` requests of group g are
    refused as if a transaction across groups held their keys."""

    def __init__(self, service_params: dict[str, Any] | None = None) -> None:
        super().__init__(service_params)
        self.slots = SLOTS
        self.stores = [KvTxnStore() for _ in range(GROUPS)]
        self.group_sessions: dict[tuple[int, int], tuple[int, bytes]] = {}
        self.locked = [0] * GROUPS
        self.grouped: list[tuple[int, ClientRequest]] = []

    def try_submit(self, payload: Any,
                   on_done: Callable[[str | None], None] | None = None) -> bool:
        if self.inbox_full:
            return False
        wrapped = self.codec.decode(payload)
        assert type(wrapped) is GroupRequest, "a sharded front names the group"
        request = self.codec.decode(wrapped.payload)
        assert type(request) is ClientRequest
        self.grouped.append((wrapped.group, request))
        asyncio.get_running_loop().call_soon(self.run_in, wrapped.group, request, on_done)
        return True

    async def submit(self, payload: Any,
                     on_done: Callable[[str | None], None] | None = None) -> None:
        inbox_full, self.inbox_full = self.inbox_full, False
        try:
            self.try_submit(payload, on_done)
        finally:
            self.inbox_full = inbox_full

    def run_in(self, group: int, request: ClientRequest,
               on_done: Callable[[str | None], None] | None) -> None:
        store = self.stores[group]
        if request.read_only:
            result = store.read(request.command)
        else:
            last = self.group_sessions.get((group, request.client))
            if last is not None and request.seq <= last[0]:
                result = last[1]
            else:
                assert last is not None or request.seq == 1, "a write without a session"
                if request.command and self.locked[group]:
                    self.locked[group] -= 1
                    result = LOCKED_RESULT
                else:
                    result = store.apply(request.command) if request.command else b""
                self.group_sessions[(group, request.client)] = (request.seq, result)
        if on_done is not None:
            on_done(None)
        body = self.codec.encode(Reply(request.client, request.seq, result, 0))
        self.service.on_outputs([GroupOutput(group, body)])


def test_single_group_commands_take_the_fast_path_group_by_group() -> None:
    """Commands of three groups, one at a time and pipelined: right answers in
    order, each run of one group's commands one request of that group, and no
    task of the front's beyond each group's session registration."""

    async def scenario() -> None:
        async with FakeShardedNode() as node:
            loop = asyncio.get_running_loop()
            created: list[str] = []

            def factory(loop: asyncio.AbstractEventLoop, coroutine: Any,
                        **options: Any) -> asyncio.Task[Any]:
                created.append(getattr(coroutine, "__qualname__", "?"))
                return asyncio.Task(coroutine, loop=loop, **options)

            keys = [key_in(group, "k") for group in range(GROUPS)]
            reader, writer = await asyncio.open_connection("127.0.0.1", node.service.port)
            loop.set_task_factory(factory)
            try:
                for key in keys:  # each group's first write: its session, in a task
                    writer.write(multibulk(b"SET", key, b"0"))
                    assert await read_replies(reader, 1) == b"+OK\r\n"
                registrations = [name for name in created if "RespService" in name]
                assert len(registrations) == GROUPS, created
                created.clear()
                for index in range(200):
                    key = keys[index % GROUPS]
                    writer.write(multibulk(b"SET", key, b"%d" % index) + multibulk(b"PING"))
                    assert await read_replies(reader, 2) == b"+OK\r\n+PONG\r\n"
                before = len(node.grouped)
                # One pipeline across groups: a request per run of one group's commands.
                writer.write(multibulk(b"INCR", keys[0] + b"n") + multibulk(b"INCR", keys[0] + b"n")
                             + multibulk(b"GET", keys[1]) + multibulk(b"INCR", keys[0] + b"n"))
                answer = await read_replies(reader, 5)
                assert answer == b":1\r\n:2\r\n$3\r\n199\r\n:3\r\n"
                groups = [group for group, _ in node.grouped[before:]]
                assert groups == [SLOTS.group_of(keys[0] + b"n"),
                                  SLOTS.group_of(keys[1]), SLOTS.group_of(keys[0] + b"n")]
                assert [name for name in created if "RespService" in name] == [], created
            finally:
                loop.set_task_factory(None)
            writer.close()

    run(scenario)


def test_a_command_on_locked_keys_is_sent_again_after_a_pause() -> None:
    """A group's request refused for keys a transaction across groups holds had
    no effect: the front sends the command again (a fresh number) and answers
    the client once it ran, once."""

    async def scenario() -> None:
        async with FakeShardedNode(FAST) as node:
            client = node.client()
            key = key_in(1, "locked")
            assert await client.set(key, "1") is True  # the session in group 1
            node.locked[1] = 2
            assert await client.incr(key) == 2
            assert node.locked[1] == 0
            assert node.counters.get("kv_locked_retries") == 2
            assert await client.get(key) == b"2"
            node.locked[1] = 1
            pipe = client.pipeline(transaction=False)
            pipe.incr(key)
            pipe.incr(key)
            assert await pipe.execute() == [3, 4]  # (one request, sent again whole)

    run(scenario)


def test_a_full_inbox_waits_in_a_task_and_answers_alike() -> None:
    async def scenario() -> None:
        async with FakeShardedNode(FAST) as node:
            client = node.client()
            keys = [key_in(group, "full") for group in range(GROUPS)]
            for key in keys:
                assert await client.set(key, "a") is True
            node.inbox_full = True
            for key in keys:
                assert await client.append(key, "b") == 2
                assert await client.get(key) == b"ab"

    run(scenario)
