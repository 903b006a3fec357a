"""The read-only optimisation in the asyncio client library (Castro and Liskov,
TOCS 2002, section 5.1.3): ``SmrSession.read`` with ``SmrClient(fast_reads=True)``
sends a read unordered to every replica of a live PBFT cluster (real processes
on 127.0.0.1, Ed25519 keys, fsync), accepts 2f+1 matching answers from the
replicas' current states, and otherwise orders it; writes then need 2f+1.

Sessions write and read concurrently (a hot counter and two registers, so that
replicas answer from different states and reads split), with a backup killed
with SIGKILL and restarted, and again with a Byzantine replica answering every
client with results it gave earlier (``pbft_stale_reads``); each history is
checked linearizable. The simulator's side, and the broken client accepting
f+1 that the checkers catch: ``tests/test_pbft_read_only.py``."""

from __future__ import annotations

import asyncio
import random
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from test_kv_service_cluster import DEADLINE_S, SECTIONS, runtime_counters

from replicaio.check.history import HistoryRecorder, PendingOperation
from replicaio.check.linearizability import check_linearizable
from replicaio.core.errors import UsageError
from replicaio.runtime.local import LocalCluster
from replicaio.runtime.smr_client import SmrClient, SmrSession, SmrTimeout
from replicaio.services.kv.state_machine import KvOk, decode_result, encode_command

REGISTERS = ("r0", "r1")
COUNTER = "c0"
WRITERS = 3
READERS = 3


class Sessions:
    """Concurrent ``SmrSession``s on one event loop, recording one history."""

    def __init__(self, client: SmrClient) -> None:
        self.client = client
        self.recorder = HistoryRecorder(time.monotonic)
        self.reads_ok = 0
        self.writes_ok = 0
        self.stop = False

    async def run(self, index: int, reader: bool) -> None:
        rng = random.Random(index)
        session = self.client.session()
        actor = self.recorder.new_client()
        count = 0
        while not self.stop:
            count += 1
            if reader:
                kind, key, value = "get", rng.choice((*REGISTERS, COUNTER)), None
            elif rng.random() < 0.5:
                kind, key, value = "incr", COUNTER, "1"
            else:
                kind, key, value = "put", rng.choice(REGISTERS), f"p{index}.{count}"
            handle = self.recorder.invoke(actor, kind, key, value)
            try:
                output = await self.operation(session, kind, key, value)
            except SmrTimeout:
                # A read had no effect; a write's outcome is unknown.
                if kind == "get":
                    self.recorder.fail(handle)
                else:
                    self.recorder.info(handle)
                    actor = self.recorder.new_client()
                continue
            self.complete(handle, kind, output)

    async def operation(
        self, session: SmrSession, kind: str, key: str, value: str | None
    ) -> str | int | None:
        if kind == "get":
            result = decode_result(await session.read(encode_command("get", key.encode())))
            assert isinstance(result, KvOk), result
            found = result.value
            if isinstance(found, bytes):
                return found.decode()
            assert found is None or isinstance(found, int), found
            return None if found is None else str(found)
        if kind == "incr":
            result = decode_result(await session.execute(encode_command("incr", key.encode(), 1)))
            assert isinstance(result, KvOk) and isinstance(result.value, int), result
            return result.value
        assert value is not None
        result = decode_result(await session.execute(encode_command("put", key.encode(),
                                                                    value.encode())))
        assert result == KvOk(None), result
        return None

    def complete(self, handle: PendingOperation, kind: str, output: str | int | None) -> None:
        self.recorder.ok(handle, output)
        if kind == "get":
            self.reads_ok += 1
        else:
            self.writes_ok += 1

    async def until(self, reads: int, writes: int) -> None:
        """Wait (bounded) until this many more reads and writes completed."""
        reads += self.reads_ok
        writes += self.writes_ok
        deadline = time.monotonic() + DEADLINE_S * 2
        while self.reads_ok < reads or self.writes_ok < writes:
            assert time.monotonic() < deadline, (self.reads_ok, reads, self.writes_ok, writes)
            await asyncio.sleep(0.05)


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    byzantine: dict[int, str] = getattr(request, "param", {})
    local = LocalCluster(tmp_path / "cluster", protocol="pbft", nodes=4, sections=SECTIONS,
                         auth="ed25519", metrics=True)
    try:
        for node in range(4):
            local.start(node, byzantine=byzantine.get(node))
        local.wait_ready(range(4))
        yield local
    finally:
        local.close()


async def with_sessions(
    client: SmrClient, scenario: Callable[[Sessions], Awaitable[None]]
) -> Sessions:
    """Run ``WRITERS`` writing and ``READERS`` reading sessions while
    ``scenario(sessions)`` runs, then stop them."""
    sessions = Sessions(client)
    tasks = [asyncio.ensure_future(sessions.run(index, index >= WRITERS))
             for index in range(WRITERS + READERS)]
    try:
        await scenario(sessions)
    finally:
        sessions.stop = True
        done, pending = await asyncio.wait(tasks, timeout=DEADLINE_S)
        for task in pending:
            task.cancel()
        client.close()
    assert not pending
    for task in done:
        task.result()  # an assertion inside a session fails the test here
    return sessions


def assert_linearizable(sessions: Sessions) -> None:
    result = check_linearizable(sessions.recorder.operations(), time_budget_s=120)
    assert result.linearizable is True, result.describe()[:2000]


def test_reads_unordered_on_2f_plus_1_ordered_otherwise_through_kill_9_of_a_backup(
    cluster: LocalCluster,
) -> None:
    client = SmrClient(cluster.cluster, fast_reads=True)
    assert client.fast_reads and client.quorum == client.read_quorum == 3

    async def scenario(sessions: Sessions) -> None:
        await sessions.until(reads=40, writes=20)
        await asyncio.to_thread(cluster.kill, 3)  # a backup; the other three answer
        await sessions.until(reads=20, writes=10)
        await asyncio.to_thread(cluster.start, 3)
        await asyncio.to_thread(cluster.wait_ready, [3])
        await sessions.until(reads=40, writes=20)

    sessions = asyncio.run(with_sessions(client, scenario))
    assert_linearizable(sessions)
    counters = client.counters.snapshot()
    print(f"reads {sessions.reads_ok}, writes {sessions.writes_ok}, client {counters}")
    unordered = counters.get("smr_client_reads_unordered", 0)
    fallbacks = counters.get("smr_client_reads_unordered_fallbacks", 0)
    assert unordered >= sessions.reads_ok >= 100
    assert unordered - fallbacks > 0  # reads decided without ordering them
    assert fallbacks > 0  # and reads that split (a write between replicas) were ordered
    served = [runtime_counters(cluster, node, "core").get("smr_reads_unordered", 0)
              for node in range(3)]
    assert min(served) > 0, served


@pytest.mark.parametrize("cluster", [{2: "pbft_stale_reads"}], indirect=True)
def test_reads_outvote_a_byzantine_replica_answering_stale_results(
    cluster: LocalCluster,
) -> None:
    client = SmrClient(cluster.cluster, fast_reads=True)

    async def scenario(sessions: Sessions) -> None:
        await sessions.until(reads=80, writes=40)

    sessions = asyncio.run(with_sessions(client, scenario))
    assert_linearizable(sessions)
    counters = client.counters.snapshot()
    print(f"reads {sessions.reads_ok}, writes {sessions.writes_ok}, client {counters}")
    assert counters.get("smr_client_reads_unordered", 0) - counters.get(
        "smr_client_reads_unordered_fallbacks", 0) > 0
    assert runtime_counters(cluster, 2).get("byzantine_outputs", 0) > 0


def test_without_fast_reads_a_read_is_ordered(cluster: LocalCluster) -> None:
    client = SmrClient(cluster.cluster)
    assert client.quorum == 2 and not client.fast_reads

    async def scenario() -> list[object]:
        try:
            session = client.session()
            await session.execute(encode_command("put", b"k", b"v"))
            found: list[object] = [decode_result(await session.read(encode_command("get", b"k")))]
            with pytest.raises(UsageError):
                await client.read_unordered(session.signer, 99, encode_command("get", b"k"))
            return found
        finally:
            client.close()

    assert asyncio.run(scenario()) == [KvOk(b"v")]
    assert "smr_client_reads_unordered" not in client.counters.snapshot()
    for node in range(4):  # no replica answered a read unordered
        address = cluster.cluster.nodes[node].metrics
        assert address is not None
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as page:
            text = page.read().decode()
        assert "replicaio_core_events_total" in text
        assert 'event="smr_reads_unordered"' not in text
