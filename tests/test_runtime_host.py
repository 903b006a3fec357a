"""The node host in one process (several hosts on one asyncio loop, real sockets
and real FileStorage): group commit, the release-after-sync guarantee, the
client port's handling of bad input, and bounds."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from replicaio.core.effects import Input
from replicaio.core.node import Node
from replicaio.protocols.broadcast import Accepted, Delivered
from replicaio.runtime.client import (
    HistoryEnd,
    OnDone,
    RequestRejected,
    StreamClientConnection,
    StreamService,
)
from replicaio.runtime.config import (
    ClusterFile,
    ClusterFileError,
    HostParams,
    load_cluster_file,
    render_cluster_file,
)
from replicaio.runtime.counters import Counters
from replicaio.runtime.framing import frame_header
from replicaio.runtime.host import RECEIVE, REQUEST, Flight, NodeHost
from replicaio.runtime.local import free_ports
from replicaio.storage.file import FileStorage

TIMEOUT_S = 15.0


def cluster_file(
    tmp_path: Path, nodes: int, host: dict[str, Any] | None = None, protocol: str = "bracha",
    sections: dict[str, Any] | None = None,
) -> ClusterFile:
    ports = free_ports(2 * nodes)
    (tmp_path / "secret").write_text("42" * 32)
    tables = [
        {"id": node, "peer": f"127.0.0.1:{ports[node]}",
         "client": f"127.0.0.1:{ports[nodes + node]}", "data_dir": f"node{node}"}
        for node in range(nodes)
    ]
    tables_of: dict[str, Any] = {
        "node": {"tick_us": 10_000},
        "transport": {"reconnect_delay_ms_min": 5, "reconnect_delay_ms_max": 50}}
    if host:
        tables_of["host"] = host
    tables_of |= sections or {}
    path = tmp_path / "cluster.toml"
    path.write_text(render_cluster_file(protocol=protocol, nodes=tables, secret_file="secret",
                                        sections=tables_of))
    return load_cluster_file(path)


class RecordingHost(NodeHost):
    """Records steps, syncs and releases, and checks at every release that nothing
    released depends on a write that is not durable yet. Every send and output
    of a step may depend on the writes of that step and of every earlier one:
    on the storage batch that holds (or will hold) them; it may leave only once
    that batch is durable (marked in the superblock, or with marks off flushed).
    Only sends marked ``sends_before_sync`` are exempt. Pipelined or not."""

    def __init__(self, cluster: ClusterFile, node_id: int) -> None:
        super().__init__(cluster, node_id)
        self.trace: list[tuple[Any, ...]] = []
        self.needs: dict[int, tuple[Any, int]] = {}  # id(effect) -> (effect, batch)
        self.left_early = 0
        # (A release from a disk thread's callback cannot fail the run: checked after it.)
        self.violations: list[str] = []

    def step(self, core: Node, event: Input, sends: list[tuple[int, bytes]],
             outputs: list[Any], early: list[tuple[int, bytes]]) -> bool:
        held, shown = len(sends), len(outputs)
        wrote = super().step(core, event, sends, outputs, early)
        storage = self.storage
        assert storage is not None
        batch = storage._batch_sealed + (1 if storage._pending else 0)
        for item in sends[held:] + outputs[shown:]:
            self.needs[id(item)] = (item, batch)
        self.trace.append(("step", wrote))
        return wrote

    def durable_batch(self) -> int:
        storage = self.storage
        assert storage is not None and storage._superblock is not None
        if self.params.mark_syncs:
            return storage.batch_marked  # in the log's slots or the superblock
        return storage._batch_last

    async def sync(self, storage: FileStorage) -> None:
        await super().sync(storage)
        self.synced(storage.batch_last)

    def release_flight(self, flight: Flight) -> None:
        if flight.batch:
            self.synced(flight.batch)
        super().release_flight(flight)

    def synced(self, batch: int) -> None:
        self.trace.append(("sync",))

    def check_release(self, released: list[Any]) -> None:
        storage = self.storage
        assert storage is not None
        durable = self.durable_batch()
        if storage._pending or storage._batch_sealed > durable:
            self.left_early += len(released)
        for item in released:
            entry = self.needs.pop(id(item), None)
            if entry is not None and entry[0] is item and entry[1] > durable:
                self.violations.append(
                    f"an effect that needs batch {entry[1]} released with batch {durable} durable"
                )
        self.trace.append(("release", len(released)))

    def release_sends(self, sends: list[tuple[int, bytes]]) -> None:
        self.check_release(list(sends))
        super().release_sends(sends)

    def release_replies(self, outputs: list[Any],
                        completions: list[tuple[int, OnDone, str | None]]) -> None:
        self.check_release(list(outputs))
        super().release_replies(outputs, completions)


async def run_hosts(hosts: list[NodeHost], body: Callable[[], Awaitable[None]]) -> None:
    tasks = [asyncio.create_task(host.run()) for host in hosts]
    try:
        async with asyncio.timeout(TIMEOUT_S):
            for host in hosts:
                await host.ready.wait()
            await body()
    finally:
        for host in hosts:
            host.stop()
        await asyncio.gather(*tasks)
    for host in hosts:
        violations = getattr(host, "violations", None)
        assert not violations, violations


async def read_message(reader: asyncio.StreamReader, codec: Any) -> Any:
    length = int.from_bytes(await reader.readexactly(4), "big")
    return codec.decode(await reader.readexactly(length))


async def read_until(reader: asyncio.StreamReader, codec: Any, matches: Any) -> Any:
    while True:
        message = await read_message(reader, codec)
        if matches(message):
            return message


def test_one_sync_per_batch_and_nothing_leaves_before_its_writes_are_durable(
    tmp_path: Path,
) -> None:
    cluster = cluster_file(tmp_path, 4)
    hosts = [RecordingHost(cluster, node) for node in range(4)]
    requests = 40

    async def body() -> None:
        host = hosts[0]
        reader, writer = await asyncio.open_connection("127.0.0.1", cluster.nodes[0].client.port)
        await read_until(reader, host.codec, lambda m: type(m) is HistoryEnd)
        for index in range(requests):  # all at once: they share batches
            body = host.codec.encode_value(b"value %d" % index)
            writer.write(frame_header(len(body)) + body)
        await read_until(reader, host.codec,
                         lambda m: type(m) is Delivered and m.seq == requests - 1)
        writer.close()

    asyncio.run(run_hosts(list(hosts), body))
    for host in hosts:
        writing_steps = sum(1 for entry in host.trace if entry[0] == "step" and entry[1])
        syncs = sum(1 for entry in host.trace if entry[0] == "sync")
        assert syncs < writing_steps  # group commit: several steps share a sync
    assert hosts[0].metrics.batch_inputs.total > 0  # the histogram's sum


@pytest.mark.parametrize("host", [{}, {"replies_first": False}], ids=["default", "sends-first"])
def test_a_raft_leader_sends_append_entries_before_its_sync_and_nothing_else(
    tmp_path: Path, host: dict[str, Any],
) -> None:
    """Thesis 10.2.1 live: the leader's AppendEntries leave before its fsync;
    every other effect of a writing step waits for it (RecordingHost checks),
    whichever comes first after the sync, replies or sends."""
    cluster = cluster_file(tmp_path, 3, protocol="raft", host=host)
    hosts = [RecordingHost(cluster, node) for node in range(3)]

    async def body() -> None:
        await raft_writes(cluster, hosts[0].codec, 7, 20)

    asyncio.run(run_hosts(list(hosts), body))
    assert sum(node.left_early for node in hosts) > 0


async def raft_writes(cluster: ClusterFile, codec: Any, client: int, writes: int) -> None:
    """``writes`` puts of one client through node 0's client port, one at a time
    (each sent again until answered: refused or lost before the election)."""
    from replicaio.services.kv.state_machine import encode_command
    from replicaio.smr.api import ClientRequest, Reply

    reader, writer = await asyncio.open_connection("127.0.0.1", cluster.nodes[0].client.port)
    for seq in range(1, writes + 1):
        command = encode_command("put", b"k%d" % client, b"%d" % seq)
        request = codec.encode_value(codec.encode(ClientRequest(client, seq, command, False)))
        for _ in range(100):
            writer.write(frame_header(len(request)) + request)
            try:
                await asyncio.wait_for(read_until(reader, codec, lambda m, seq=seq: (
                    type(m) is Reply and (m.client, m.seq) == (client, seq))), 0.5)
                break
            except TimeoutError:
                continue
        else:
            raise AssertionError(f"no reply to seq {seq}")
    writer.close()


async def broadcast_ten(cluster: ClusterFile, host: NodeHost) -> None:
    """Ten broadcasts through node 0's client port, until the last is delivered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", cluster.nodes[0].client.port)
    for index in range(10):
        body = host.codec.encode_value(b"v%d" % index)
        writer.write(frame_header(len(body)) + body)
    await read_until(reader, host.codec, lambda m: type(m) is Delivered and m.seq == 9)
    writer.close()


def test_a_batch_of_one_input_syncs_every_writing_step(tmp_path: Path) -> None:
    cluster = cluster_file(tmp_path, 1, host={"batch_inputs_max": 1})
    host = RecordingHost(cluster, 0)

    asyncio.run(run_hosts([host], lambda: broadcast_ten(cluster, host)))
    writing_steps = sum(1 for entry in host.trace if entry[0] == "step" and entry[1])
    assert sum(1 for entry in host.trace if entry[0] == "sync") == writing_steps


def test_client_port_rejects_bad_input_counts_it_and_keeps_serving(tmp_path: Path) -> None:
    cluster = cluster_file(tmp_path, 1, host={"client_frame_bytes_max": 4096})
    host = NodeHost(cluster, 0)
    port = cluster.nodes[0].client.port

    async def bad(data: bytes, eof: bool = False) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        if eof:
            writer.write_eof()
        await read_until(reader, host.codec, lambda m: type(m) is HistoryEnd)
        assert await reader.read() == b""  # the node closed this client only

    async def body() -> None:
        await bad(b"GET / HTTP/1.1\r\n\r\n")
        await bad(frame_header(4097))
        await bad(frame_header(50) + b"abc", eof=True)
        await bad(frame_header(1) + b"\xc1")  # not msgpack
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for payload in (12345, b"good"):  # a valid frame the core refuses, then a good one
            data = host.codec.encode_value(payload)
            writer.write(frame_header(len(data)) + data)
        refused = await read_until(reader, host.codec, lambda m: type(m) is RequestRejected)
        assert refused.reason == "not_bytes"
        accepted = await read_until(reader, host.codec, lambda m: type(m) is Accepted)
        assert (accepted.seq, accepted.value) == (0, b"good")
        writer.close()

    asyncio.run(run_hosts([host], body))
    assert host.counters.get("rejected_client_oversized_frame") == 2
    assert host.counters.get("rejected_client_truncated_frame") == 1
    assert host.counters.get("rejected_client_decode_malformed") == 1
    assert host.core is not None
    assert host.core.counters["request_rejected_not_bytes"] == 1
    metrics = host.metrics.render().decode()
    assert 'replicaio_runtime_events_total{event="rejected_client_oversized_frame"} 2.0' in metrics
    assert 'replicaio_core_events_total{event="request_rejected_not_bytes"} 1.0' in metrics


def test_client_connections_are_bounded(tmp_path: Path) -> None:
    cluster = cluster_file(tmp_path, 1, host={"client_connections_max": 1})
    host = NodeHost(cluster, 0)
    port = cluster.nodes[0].client.port

    async def body() -> None:
        first_reader, first = await asyncio.open_connection("127.0.0.1", port)
        await read_until(first_reader, host.codec, lambda m: type(m) is HistoryEnd)
        second_reader, second = await asyncio.open_connection("127.0.0.1", port)
        assert await second_reader.read() == b""
        first.close()
        second.close()

    asyncio.run(run_hosts([host], body))
    assert host.counters.get("bound_client_connections_max") == 1


class FakeWriter:
    def __init__(self) -> None:
        self.closes = 0

    def close(self) -> None:
        self.closes += 1


class FakeHost:
    def __init__(self) -> None:
        from replicaio.core.codec import Codec

        self.codec = Codec()
        self.counters = Counters()

    async def submit(self, payload: Any, on_done: OnDone | None = None) -> None:
        raise AssertionError("not used")


def test_a_slow_client_is_disconnected_and_history_is_bounded() -> None:
    service = StreamService()
    host = FakeHost()
    service.host = host
    service.params = HostParams(client_queue_max=3, client_history_max=2)
    writer = FakeWriter()
    client = StreamClientConnection(writer)  # type: ignore[arg-type]
    service.clients.add(client)
    for seq in range(5):  # the client never drains its queue
        service.on_outputs([Delivered(0, seq, b"x")])
    assert writer.closes == 1 and client not in service.clients
    assert host.counters.get("bound_client_queue_max") == 1
    assert len(service.history) == 2
    assert host.counters.get("bound_client_history_max") == 3


def test_queue_and_history_are_bounded_in_bytes_too() -> None:
    service = StreamService()
    host = FakeHost()
    service.host = host
    frame = 1 << 20
    service.params = HostParams(client_frame_bytes_max=frame, client_queue_bytes_max=3 * frame,
                                client_history_bytes_max=frame).validate()
    writer = FakeWriter()
    client = StreamClientConnection(writer)  # type: ignore[arg-type]
    service.clients.add(client)
    value = b"x" * 700_000
    for seq in range(4):  # 2.8 MB fit in 3 MiB; the 5th does not
        service.on_outputs([Delivered(0, seq, value)])
    assert writer.closes == 0 and client.queued_bytes > 4 * len(value)
    service.on_outputs([Delivered(0, 4, value)])
    assert writer.closes == 1 and client not in service.clients
    assert host.counters.get("bound_client_queue_bytes_max") == 1
    assert len(service.history) == 1  # one 700 KB output fits in 1 MiB of history
    assert service.history_bytes <= frame
    assert host.counters.get("bound_client_history_max") == 4
    with pytest.raises(ClusterFileError, match="client_history_bytes_max"):
        HostParams(client_history_bytes_max=HostParams().client_queue_bytes_max).validate()


def test_random_choice_points_are_drawn_and_recorded_other_choices_take_the_first(
    tmp_path: Path,
) -> None:
    """Live nodes must not all draw the same election timeout or disk identity."""
    cluster = cluster_file(tmp_path, 1)
    host = NodeHost(cluster, 0)
    draws = {host.choose("random", 1 << 40) for _ in range(8)}
    assert len(draws) > 1
    assert host.choose("first", 3) == 0
    assert [label for label, _, _ in host.choices] == ["random"] * 8 + ["first"]
    assert {index for _, _, index in host.choices[:8]} == draws  # replay gets them back


def test_the_sync_thread_runs_jobs_in_turn_and_hands_back_their_errors() -> None:
    from replicaio.runtime.host import SyncWorker

    ran: list[int] = []

    def broken() -> None:
        raise OSError(5, "Input/output error")

    async def body() -> SyncWorker:
        worker = SyncWorker(asyncio.get_running_loop())
        await worker.submit(lambda: ran.append(1))
        with pytest.raises(OSError, match="Input/output"):
            await worker.submit(broken)  # a failed sync stops the node loudly
        await worker.submit(lambda: ran.append(2))
        worker.close()
        return worker

    worker = asyncio.run(body())
    assert ran == [1, 2]
    assert not worker.thread.is_alive()


def test_the_inbox_bound_is_exact_and_who_waits_for_room_is_served_in_turn(
    tmp_path: Path,
) -> None:
    """``inbox_max`` counts peers' and clients' inputs exactly: a full inbox
    refuses an offer and a ``try_submit``; ``submit`` waits; as the batch loop
    frees room the waiters are served in the order they came (a peer reader's
    resume delivers what it can, a client is granted one unit), and a submit
    cancelled while waiting takes nothing."""
    cluster = cluster_file(tmp_path, 1, host={"inbox_max": 3})

    async def body() -> None:
        host = NodeHost(cluster, 0)
        assert host.offer(1, b"a") and host.try_submit("r1") and host.offer(2, b"b")
        assert not host.offer(1, b"c") and not host.try_submit("r2")
        resumed: list[bool] = []
        host.when_room(lambda: resumed.append(host.offer(1, b"c")))
        first = asyncio.ensure_future(host.submit("r3"))
        cancelled = asyncio.ensure_future(host.submit("r4"))
        last = asyncio.ensure_future(host.submit("r5"))
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.sleep(0)
        host.timer_fired(7, 1)  # timers and the stop are not counted
        assert len(host.inbox) == 4 and host.inbox_room == 0
        for _ in range(3):  # what a batch of three takes: a, r1, b
            host.inbox.popleft()
        host.free_room(2)  # two of the three units, for the test
        assert resumed == [True]  # the peer first: it waited first
        await asyncio.sleep(0)
        assert first.done() and not last.done()
        assert host.inbox_room == 0
        host.free_room(1)
        await asyncio.sleep(0)
        assert last.done() and host.inbox_room == 0
        assert [item[1] for item in host.inbox] == [7, 1, "r3", "r5"]
        assert not host.room_waiters

    asyncio.run(body())


def test_a_cluster_runs_with_an_inbox_of_two(tmp_path: Path) -> None:
    """Every reader pauses and resumes all the time: nothing is lost or reordered."""
    cluster = cluster_file(tmp_path, 4, host={"inbox_max": 2})
    hosts = [NodeHost(cluster, node) for node in range(4)]
    requests = 40

    async def body() -> None:
        host = hosts[0]
        reader, writer = await asyncio.open_connection("127.0.0.1", cluster.nodes[0].client.port)
        await read_until(reader, host.codec, lambda m: type(m) is HistoryEnd)
        for index in range(requests):
            body = host.codec.encode_value(b"value %d" % index)
            writer.write(frame_header(len(body)) + body)
        await read_until(reader, host.codec,
                         lambda m: type(m) is Delivered and m.seq == requests - 1)
        writer.close()

    asyncio.run(run_hosts(list(hosts), body))
    # Room is exact: what a host had not taken when it stopped (frames that
    # arrived with or after its stop) still holds its unit of room.
    for host in hosts:
        held = sum(1 for item in host.inbox if item[0] in (RECEIVE, REQUEST))
        assert host.inbox_room + held == 2
    assert sum(host.counters.get("bound_inbox_max") for host in hosts) > 0


@pytest.mark.parametrize("marks", [True, False], ids=["marked", "unmarked"])
def test_every_sync_is_marked_on_disk_unless_the_host_turns_marks_off(
    tmp_path: Path, marks: bool,
) -> None:
    """``[host] mark_syncs``: with it (the default) a mark on disk (the log's
    mark slots, ADR 0045, or the superblock) names the batch of every sync
    before anything of that batch is released; without it the mark stays behind
    (written only at rotations, compactions, close)."""
    from replicaio.storage.file import decode_segment_marks
    from replicaio.storage.superblock import read_superblock

    cluster = cluster_file(tmp_path, 1, host={"batch_inputs_max": 1, "mark_syncs": marks})
    marked: list[bool] = []

    class MarkWatchingHost(RecordingHost):
        def synced(self, batch: int) -> None:
            super().synced(batch)
            storage = self.storage
            assert storage is not None
            state = read_superblock(storage.directory).state
            assert state is not None
            segment = max(storage.directory.glob("wal-*.log"))
            _, slot = decode_segment_marks(segment.read_bytes(), int(segment.name[4:20]))
            marked.append(max(state.synced_batch, slot) >= batch)

    host = MarkWatchingHost(cluster, 0)

    asyncio.run(run_hosts([host], lambda: broadcast_ten(cluster, host)))
    assert len(marked) >= 10
    assert all(marked) if marks else not any(marked[1:])


class Front:
    """A client service's one question the release asks: how many clients are connected."""

    def __init__(self, connected: int) -> None:
        self.connected = connected

    def connections(self) -> int:
        return self.connected


def test_replies_go_before_sends_only_where_a_client_can_take_them(tmp_path: Path) -> None:
    """``replies_first`` holds a batch's sends a turn of the loop behind its replies
    so that the clients they wake write first; on a node no client is connected to
    (a follower at one client: the replies of its applied entries, which its front
    drops) nothing is woken, and its sends (the acknowledgement the leader waits
    for) leave at once. A batch with completions (requests this node took) keeps
    the order whatever the count says."""
    calls: list[tuple[str, list[Any]]] = []

    class ReleaseRecorder(NodeHost):
        """Records the three releases (a subclass, not methods replaced on an
        instance: compiled, a ``NodeHost`` has no instance dict, ADR 0067; its
        compiled ``release_held`` calls a subclass's overrides)."""

        def release_sends(self, sends: list[tuple[int, bytes]]) -> None:
            calls.append(("sends", list(sends)))

        def defer_sends(self, sends: list[tuple[int, bytes]]) -> None:
            calls.append(("defer", list(sends)))

        def release_replies(self, outputs: list[Any],
                            completions: list[tuple[int, OnDone, str | None]]) -> None:
            calls.append(("replies", list(outputs)))

    host = ReleaseRecorder(cluster_file(tmp_path, 3, protocol="raft"), 1)
    done: list[tuple[int, Any, str | None]] = [(1, lambda reason: None, None)]
    for connected, completions, expected in (
        (1, [], [("replies", ["reply"]), ("defer", [(0, b"ack")])]),
        (0, [], [("sends", [(0, b"ack")]), ("replies", ["reply"])]),
        (0, done, [("replies", ["reply"]), ("defer", [(0, b"ack")])]),
    ):
        host.service = Front(connected)  # type: ignore[assignment]
        calls.clear()
        host.release_held([(0, b"ack")], ["reply"], completions, (0, 0, 0), True, {})
        assert calls == expected, (connected, completions)
