"""``FileStorage`` in steps (ADR 0037): ``seal`` on the buffering thread,
``write_sealed`` (append + flush) on a log thread, ``mark_flushed`` on a mark
thread. The steps write exactly what ``sync`` writes, a crash with batches in
flight loses only batches that were never marked (never released), and the
two threads may run at once (rotations and compactions included)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from replicaio.storage.file import FileStorage
from replicaio.storage.superblock import read_superblock


def crash(store: FileStorage) -> None:
    """Drop the store as a kill -9 would: no close, no final mark."""
    store._release_descriptors()


def directory_bytes(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())
            if path.name != "LOCK"}


@pytest.mark.parametrize("segment_bytes_max", [1 << 20, 692], ids=["one-segment", "rotating"])
def test_the_steps_write_exactly_what_sync_writes(tmp_path: Path, segment_bytes_max: int) -> None:
    stores = [FileStorage(tmp_path / name, segment_bytes_max=segment_bytes_max,
                          wal_bytes_compact_threshold=None) for name in ("synced", "stepped")]
    synced, stepped = stores
    for batch in range(1, 30):
        for store in stores:
            for index in range(batch % 4 + 1):
                store.put(f"k{batch}-{index}", b"v" * (batch * 3))
            if batch % 5 == 0:
                store.delete(f"k{batch - 1}-0")
        synced.sync()
        sealed = stepped.seal()
        assert sealed is not None and sealed.batch == batch
        stepped.write_sealed(sealed)
        assert stepped.mark_flushed() == batch
        assert stepped.recover() == synced.recover()
    assert stepped.seal() is None  # nothing buffered: no batch
    assert synced.rotations == stepped.rotations
    if segment_bytes_max == 692:
        assert stepped.rotations > 5
    for store in stores:
        store.close()
    assert directory_bytes(tmp_path / "synced") == directory_bytes(tmp_path / "stepped")


@pytest.mark.parametrize("in_log", [True, False], ids=["in-log", "superblock"])
def test_writes_after_a_seal_go_to_the_next_batch_and_marks_coalesce(
    tmp_path: Path, in_log: bool
) -> None:
    store = FileStorage(tmp_path, marks_in_log=in_log)
    store.put("a", b"1")
    first = store.seal()
    store.put("a", b"2")  # while batch 1 is in flight
    store.put("b", b"3")
    second = store.seal()
    assert first is not None and second is not None
    assert (first.batch, second.batch) == (1, 2)
    assert store.recover() == {}  # sealed is not written
    store.write_sealed(first)
    assert store.recover() == {"a": b"1"}
    marks = store.mark_writes
    store.write_sealed(second)
    assert store.recover() == {"a": b"2", "b": b"3"}
    if in_log:  # batch 1's mark rode on batch 2's flush; batch 2 gets one of its own
        assert store.mark_writes == marks + 1 and store.batch_marked == 1
        assert store.mark_flushed() == 2 and store.batch_marked == 2
        assert store.mark_writes == marks + 2
        assert store.mark_flushed() == 2
        assert store.mark_writes == marks + 2  # nothing new: nothing written
        store.close()
        return
    assert store.batch_marked == 0
    assert store._superblock is not None
    writes = store._superblock.writes
    assert store.mark_flushed() == 2  # one mark for both batches
    assert store._superblock.writes == writes + 1
    assert store.mark_flushed() == 2
    assert store._superblock.writes == writes + 1  # nothing new: nothing written
    store.close()


def test_sealed_batches_are_written_in_order(tmp_path: Path) -> None:
    store = FileStorage(tmp_path)
    store.put("a", b"1")
    first = store.seal()
    store.put("b", b"2")
    second = store.seal()
    assert first is not None and second is not None
    with pytest.raises(AssertionError):
        store.write_sealed(second)
    store.close()


def test_a_crash_with_batches_in_flight_loses_only_unmarked_batches_and_reports_nothing(
    tmp_path: Path,
) -> None:
    """Batches 1-2 flushed and marked (released), 3 flushed and not marked, 4
    sealed and not written when the mark ran: a crash keeps 1-3 (flushed is
    durable) and loses 4; nothing released was lost, so nothing is reported
    (a mark that named batch 4 would make its loss a reported one)."""
    store = FileStorage(tmp_path)
    for key in ("one", "two", "three", "four"):
        store.put(key, key.encode())
        sealed = store.seal()
        assert sealed is not None
        if key != "four":
            store.write_sealed(sealed)
        if key == "two":
            assert store.mark_flushed() == 2
    assert store.mark_flushed() == 3
    crash(store)
    reopened = FileStorage(tmp_path)
    assert reopened.damage is None
    assert reopened.recover() == {"one": b"one", "two": b"two", "three": b"three"}
    assert reopened.batch_last == 3
    reopened.close()


def test_a_torn_unmarked_batch_is_an_honest_torn_write_and_a_lost_marked_one_is_reported(
    tmp_path: Path,
) -> None:
    """The mark names only batches whose flush returned, so a torn batch after it
    was never released (nothing to report), while losing a marked batch is."""
    store = FileStorage(tmp_path, preallocate_bytes=0)
    for key in ("one", "two"):
        store.put(key, b"x" * 100)
        sealed = store.seal()
        assert sealed is not None
        store.write_sealed(sealed)
        if key == "one":
            store.mark_flushed()
    crash(store)
    segment = next(tmp_path.glob("wal-*.log"))
    data = segment.read_bytes()
    segment.write_bytes(data[:-20])  # batch 2 torn: it was never marked, never released
    reopened = FileStorage(tmp_path, preallocate_bytes=0)
    assert reopened.damage is None and reopened.torn_bytes_discarded > 0
    assert reopened.recover() == {"one": b"x" * 100}
    reopened.put("three", b"3")
    reopened.sync()  # batch 2 again (the torn one sealed away), marked
    state = read_superblock(tmp_path).state
    assert state is not None
    crash(reopened)
    segment = max(tmp_path.glob("wal-*.log"))
    data = segment.read_bytes()
    segment.write_bytes(data[:-20])  # the marked batch lost: acknowledged data
    again = FileStorage(tmp_path)
    assert again.damage is not None and again.damage.kind == "lost synced writes"
    again.close()


@pytest.mark.parametrize("marks", ["in-log", "superblock", "unmarked"])
def test_a_log_thread_and_a_mark_thread_at_once(tmp_path: Path, marks: str) -> None:
    """Rotations and compactions (which mark too) on the log thread while the
    mark thread marks: no superblock write interleaves, every batch is applied
    in order, and what reopens is what was written. With marks in the log (ADR
    0045) the log thread marks (they go into the segment it writes): every
    third batch by a flush of its own, the others carried by the next flush."""
    in_log = marks == "in-log"
    store = FileStorage(tmp_path, segment_bytes_max=1092, wal_bytes_compact_threshold=3_000,
                        mark_syncs=marks != "unmarked", marks_in_log=in_log)
    batches = 300
    sealed = []
    expected: dict[str, bytes] = {}
    for batch in range(1, batches + 1):
        key, value = f"k{batch % 17}", b"%d" % batch * 5
        store.put(key, value)
        expected[key] = value
        item = store.seal()
        assert item is not None
        sealed.append(item)
    flushed = threading.Event()
    errors: list[BaseException] = []

    def log_thread() -> None:
        try:
            for item in sealed:
                store.write_sealed(item)
                store.compact_if_due()
                if in_log and item.batch % 3 == 0:
                    store.mark_flushed()
            if in_log:
                store.mark_flushed()
        except BaseException as error:  # handed to the test
            errors.append(error)
        finally:
            flushed.set()

    def mark_thread() -> None:
        if in_log:
            return
        try:
            while not flushed.is_set():
                store.mark_flushed()
            store.mark_flushed()
        except BaseException as error:  # handed to the test
            errors.append(error)

    threads = [threading.Thread(target=log_thread), threading.Thread(target=mark_thread)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60.0)
    assert not errors
    assert store.rotations > 10 and store.compactions > 1
    state = read_superblock(tmp_path).state
    assert state is not None and (in_log or state.synced_batch == batches)
    assert store.batch_marked == batches
    assert store.recover() == expected
    crash(store)
    reopened = FileStorage(tmp_path)
    assert reopened.damage is None and reopened.recover() == expected
    reopened.close()


def test_a_compaction_on_the_log_thread_while_the_loop_buffers_the_next_batch(
    tmp_path: Path,
) -> None:
    """The pipelined host's log thread compacts (``compact_if_due``) while the
    loop already buffers, and seals, the batches after the one just written:
    the snapshot covers what was written, the later batches land after it, and
    what reopens is every batch. (The first version asserted that nothing was
    buffered, which a live pipelined node hits at its first compaction.)"""
    store = FileStorage(tmp_path, segment_bytes_max=1092, wal_bytes_compact_threshold=2_000)
    expected: dict[str, bytes] = {}
    store.put("k0", b"v" * 50)
    expected["k0"] = b"v" * 50
    in_flight = [store.seal()]
    for batch in range(1, 200):
        key, value = f"k{batch % 7}", b"%d" % batch * 10
        store.put(key, value)  # the next batch, buffered before the last one is written
        expected[key] = value
        sealed = in_flight.pop(0)
        assert sealed is not None
        store.write_sealed(sealed)
        store.compact_if_due()
        store.mark_flushed()
        in_flight.append(store.seal())
    last = in_flight.pop()
    assert last is not None
    store.write_sealed(last)
    store.mark_flushed()
    assert store.compactions > 3
    assert store.recover() == expected
    crash(store)
    reopened = FileStorage(tmp_path)
    assert reopened.damage is None and reopened.recover() == expected
    reopened.close()
