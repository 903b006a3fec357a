"""The pipelined host (``[host] pipeline``, ADR 0037): batches are stepped while
earlier ones are written and marked, and still nothing leaves before the writes
it may depend on are durable (``RecordingHost`` checks every release against
the store's durable batch). The disk threads are slowed down so that batches
really are in flight together; deliberately broken disk threads
(``replicaio.testing.host_variants``) are caught by the same check."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_runtime_host import (
    RecordingHost,
    cluster_file,
    raft_writes,
    read_until,
    run_hosts,
)

from replicaio.protocols.broadcast import Delivered
from replicaio.runtime.durability import DurabilityPipeline
from replicaio.runtime.framing import frame_header
from replicaio.storage.file import FileStorage, SealedBatch
from replicaio.testing.host_variants import (
    ReleaseAtLogFlush,
    ReleaseAtSubmit,
    ReleaseBeforeCarryingFlush,
    ReleaseBeforeInlineMark,
)

DISK_DELAY_S = 0.004


class PipelineHost(RecordingHost):
    """A ``RecordingHost`` that also counts how many batches were unreleased
    together at most."""

    in_flight_max = 0

    async def process_pipelined(self, batch: Any) -> None:
        await super().process_pipelined(batch)
        self.in_flight_max = max(self.in_flight_max, len(self.flights))


MARKED_BY: list[str] = []  # the threads that marked, in order (slow_disk)


@pytest.fixture
def slow_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every log write and every mark of a pipelined host takes a few ms more."""
    write, mark = FileStorage.write_sealed, FileStorage.mark_flushed
    MARKED_BY.clear()

    def slow_write(self: FileStorage, sealed: SealedBatch) -> None:
        time.sleep(DISK_DELAY_S)
        write(self, sealed)

    def slow_mark(self: FileStorage) -> int:
        MARKED_BY.append(threading.current_thread().name)
        time.sleep(DISK_DELAY_S)
        return mark(self)

    monkeypatch.setattr(FileStorage, "write_sealed", slow_write)
    monkeypatch.setattr(FileStorage, "mark_flushed", slow_mark)


def broadcast_many(cluster: Any, hosts: list[PipelineHost], count: int) -> Any:
    async def body() -> None:
        codec = hosts[0].codec
        reader, writer = await asyncio.open_connection("127.0.0.1",
                                                       cluster.nodes[0].client.port)
        for index in range(count):  # all at once: many small batches (batch_inputs_max)
            value = codec.encode_value(b"value %d" % index)
            writer.write(frame_header(len(value)) + value)
        await read_until(reader, codec, lambda m: type(m) is Delivered and m.seq == count - 1)
        writer.close()

    return body


def run_broadcasts(tmp_path: Path, host: dict[str, Any],
                   pipeline: type[DurabilityPipeline] = DurabilityPipeline) -> list[PipelineHost]:
    cluster = cluster_file(tmp_path, 4, host={"batch_inputs_max": 4, **host})
    hosts = [PipelineHost(cluster, node) for node in range(4)]
    for node in hosts:
        node.durability_pipeline = pipeline
    asyncio.run(run_hosts(list(hosts), broadcast_many(cluster, hosts, 40)))
    return hosts


@pytest.mark.usefixtures("slow_disk")
@pytest.mark.parametrize(("depth", "marks", "inline", "in_log"),
                         [(2, True, True, True), (3, True, True, True), (2, False, True, True),
                          (2, True, True, False), (3, True, True, False),
                          (2, True, False, False)],
                         ids=["depth2", "depth3", "depth2-unmarked", "depth2-superblock",
                              "depth3-superblock", "depth2-superblock-mark-thread-only"])
def test_batches_overlap_and_nothing_leaves_before_it_is_durable(
    tmp_path: Path, depth: int, marks: bool, inline: bool, in_log: bool,
) -> None:
    hosts = run_broadcasts(tmp_path, {"pipeline": depth, "mark_syncs": marks,
                                      "mark_inline": inline, "marks_in_log": in_log})
    # run_hosts checked every release (RecordingHost.violations); batches overlapped:
    assert max(node.in_flight_max for node in hosts) == depth - 1
    for node in hosts:
        assert node.pipeline is not None and not node.flights
        storage = node.storage
        assert storage is not None
        # Every batch stepped was written (a stop drains the pipeline) ...
        assert storage._batch_sealed == storage.batch_last
        writing = sum(1 for entry in node.trace if entry[0] == "step" and entry[1])
        assert 0 < node.stats["syncs"] <= writing


@pytest.mark.usefixtures("slow_disk")
@pytest.mark.parametrize("inline", [True, False], ids=["inline", "mark-thread-only"])
def test_the_log_thread_marks_only_when_inline_marks_are_on(tmp_path: Path,
                                                             inline: bool) -> None:
    """``[host] mark_inline``: the log thread marks a batch itself when nothing
    waits behind it (and the mark thread is idle): a broadcast's last batches at
    least; the mark thread still marks while later batches wait to be written."""
    run_broadcasts(tmp_path, {"pipeline": 2, "mark_inline": inline, "marks_in_log": False})
    by_log = MARKED_BY.count("replicaio-log")
    if inline:
        assert by_log > 0, MARKED_BY
    else:
        assert by_log == 0 and MARKED_BY.count("replicaio-mark") > 0, MARKED_BY


@pytest.mark.usefixtures("slow_disk")
@pytest.mark.parametrize("depth", [2, 3])
def test_with_marks_in_the_log_the_next_flush_carries_a_batch_s_mark(
    tmp_path: Path, depth: int,
) -> None:
    """ADR 0045: one thread; a batch's mark rides on the next batch's flush when
    that one is already waiting, else it gets a flush of its own (the last
    batches at least)."""
    hosts = run_broadcasts(tmp_path, {"pipeline": depth})
    assert set(MARKED_BY) == {"replicaio-log"}, MARKED_BY  # no mark thread
    for node in hosts:
        assert node.pipeline is not None and not node.pipeline.mark_thread.is_alive()
    storages = [node.storage for node in hosts]
    assert all(storage is not None for storage in storages)
    carried = sum(storage.marks_carried for storage in storages if storage is not None)
    alone = sum(storage.mark_writes - storage.marks_carried
                for storage in storages if storage is not None)
    assert carried > 0 and alone > 0, (carried, alone)


@pytest.mark.usefixtures("slow_disk")
@pytest.mark.parametrize(("broken", "host"), [
    (ReleaseAtSubmit, {}), (ReleaseAtLogFlush, {}), (ReleaseBeforeCarryingFlush, {}),
    (ReleaseBeforeCarryingFlush, {"pipeline": 3}),
    (ReleaseAtLogFlush, {"marks_in_log": False}),
    (ReleaseBeforeInlineMark, {"marks_in_log": False}),
], ids=["at-submit", "at-log-flush", "before-carrying-flush", "before-carrying-flush-depth3",
        "superblock-at-log-flush", "superblock-before-inline-mark"])
def test_disk_threads_that_release_before_durability_are_caught(
    tmp_path: Path, broken: type[DurabilityPipeline], host: dict[str, Any],
) -> None:
    with pytest.raises(AssertionError, match="released with batch"):
        run_broadcasts(tmp_path, {"pipeline": 2, **host}, broken)


def test_a_raft_cluster_serves_writes_pipelined(tmp_path: Path) -> None:
    """Raft's leader marks its AppendEntries ``sends_before_sync``: with a batch in
    flight they still leave at once, and every other effect waits for the
    batches before it (RecordingHost checks); the writes are answered."""
    cluster = cluster_file(tmp_path, 3, protocol="raft", host={"pipeline": 2})
    hosts = [PipelineHost(cluster, node) for node in range(3)]

    async def body() -> None:
        # Three clients at once: their requests share batches, batches overlap.
        await asyncio.gather(*(raft_writes(cluster, hosts[0].codec, client, 10)
                               for client in (7, 8, 9)))

    asyncio.run(run_hosts(list(hosts), body))
    assert sum(node.left_early for node in hosts) > 0


@pytest.mark.usefixtures("slow_disk")
def test_a_raft_cluster_compacts_its_logs_while_batches_are_in_flight(tmp_path: Path) -> None:
    """A live pipelined Raft cluster whose logs outgrow a small
    ``wal_compact_bytes``: the log thread compacts between two batches while
    the loop steps and seals the next ones (the first pipelined store asserted
    that nothing was buffered, which a node stepping at that moment fails;
    ``test_storage_pipeline`` pins that case; the 256 MiB default kept every
    live test away from compaction). Every write is answered, nothing left
    before it was durable, and every node compacted."""
    cluster = cluster_file(tmp_path, 3, protocol="raft",
                           host={"pipeline": 2, "wal_compact_bytes": 8192})
    hosts = [PipelineHost(cluster, node) for node in range(3)]

    async def body() -> None:
        await asyncio.gather(*(raft_writes(cluster, hosts[0].codec, client, 30)
                               for client in range(7, 13)))

    asyncio.run(run_hosts(list(hosts), body))
    for node in hosts:
        assert node.storage is not None and node.storage.compactions > 0, node.node_id
    assert max(node.in_flight_max for node in hosts) == 1


def test_a_failed_disk_thread_stops_the_host_and_releases_nothing_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An I/O error on the log thread: the host's run ends with it, loudly, and
    the batch that failed is never released."""
    write = FileStorage.write_sealed
    calls = 0

    def failing_write(self: FileStorage, sealed: SealedBatch) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            self._fail(OSError(5, "injected EIO"))
            raise OSError(5, "injected EIO")
        write(self, sealed)

    monkeypatch.setattr(FileStorage, "write_sealed", failing_write)
    cluster = cluster_file(tmp_path, 1, host={"pipeline": 2, "batch_inputs_max": 1})
    host = PipelineHost(cluster, 0)

    async def main() -> None:
        task = asyncio.create_task(host.run())
        await host.ready.wait()
        _, writer = await asyncio.open_connection("127.0.0.1", cluster.nodes[0].client.port)
        for index in range(10):
            value = host.codec.encode_value(b"v%d" % index)
            writer.write(frame_header(len(value)) + value)
        with pytest.raises(OSError, match="injected EIO"):
            await asyncio.wait_for(task, 15.0)
        writer.close()

    asyncio.run(main())
    storage = host.storage
    assert storage is not None
    # Batches 1-2 were written (the start's and one more), 3 failed: nothing that
    # needed it left (every release checked against the durable batch).
    assert storage.batch_last == 2
    assert not host.violations
