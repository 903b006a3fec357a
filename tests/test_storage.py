"""Tests of replicaio.storage: both stores pass the conformance suite; FileStorage's
on-disk behaviour (torn tails, corruption, rotation, snapshots, lock, bounds) and a
Hypothesis state machine against a dict model with random syncs and crashes."""

from __future__ import annotations

import itertools
import os
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import replicaio.storage.file as file_module
from replicaio.storage.base import VALUE_BYTES_MAX, StorageCorruptError, StorageUsageError
from replicaio.storage.file import (
    FORMAT_VERSION,
    RECORD_BYTES_MAX,
    RECORD_HEADER,
    SEGMENT_HEADER,
    SEGMENT_MAGIC,
    SEGMENT_RECORDS_START,
    SNAPSHOT_TRAILER,
    FileStorage,
    Record,
    decode_record,
    segment_file_name,
)
from replicaio.storage.memory import MemoryStorage
from replicaio.testing.storage_conformance import (
    FileStorageCrashes,
    check_crash_during_carried_mark,
    check_crash_during_sync,
    check_put_visible_after_sync,
    check_synced_survive_crashes,
    memory_crash_and_reopen,
    memory_crash_during_sync,
    run_storage_conformance,
)

# -- conformance -----------------------------------------------------------------------------


def test_memory_storage_conformance() -> None:
    run_storage_conformance(MemoryStorage, memory_crash_and_reopen, memory_crash_during_sync)


def test_file_storage_conformance(tmp_path: Path) -> None:
    kit = FileStorageCrashes(tmp_path, sector_bytes=16)
    run_storage_conformance(kit.make, kit.crash_and_reopen, kit.crash_during_sync)


@pytest.mark.parametrize("segment_bytes_max", [64 * 1024, 700], ids=["one-segment", "rotating"])
def test_file_storage_crash_points_of_a_carried_mark(
    tmp_path: Path, segment_bytes_max: int
) -> None:
    """ADR 0045: the mark of batch k in the flush of batch k + 1 (docs/storage.md)."""
    superblock, carried = check_crash_during_carried_mark(
        FileStorageCrashes(tmp_path, segment_bytes_max=segment_bytes_max, sector_bytes=64))
    # In one segment only the slot names the carried batch (so the check above
    # shows the slot's worth); a flush that began a segment marks the superblock.
    assert (superblock < carried) == (segment_bytes_max > 700)


def test_file_storage_crash_points_across_segment_rotation(tmp_path: Path) -> None:
    # Segments of 100 bytes: most batches span a rotation, so crash points fall
    # before, at and after the creation of the next segment.
    kit = FileStorageCrashes(tmp_path, segment_bytes_max=592, sector_bytes=16)
    check_crash_during_sync(kit.make, kit.crash_and_reopen, kit.crash_during_sync)
    check_synced_survive_crashes(kit.make, kit.crash_and_reopen)


class _VisibleBeforeSync(MemoryStorage):
    def recover(self) -> dict[str, bytes]:
        state = super().recover()
        state.update((k, v) for k, v in self._pending if v is not None)
        return state


def _keep_a_suffix(store: MemoryStorage) -> Iterator[MemoryStorage]:
    """A broken harness: a crash may keep the LAST buffered write alone (a reordering)."""
    yield from itertools.islice(memory_crash_during_sync(store.clone()), 1)
    outcome = store.clone()
    outcome._pending = outcome._pending[-1:]
    outcome.crash(keep_unsynced=1)
    yield outcome
    store.sync()


def test_conformance_suite_catches_broken_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(AssertionError, match="buffered puts before sync"):
        check_put_visible_after_sync(_VisibleBeforeSync, memory_crash_and_reopen)
    with pytest.raises(AssertionError, match="not the previous state plus a prefix"):
        check_crash_during_sync(MemoryStorage, memory_crash_and_reopen, _keep_a_suffix)
    # A FileStorage that forgets to seal a torn batch writes a log its own recovery rejects.
    monkeypatch.setattr(FileStorage, "_seal", lambda self, batch: None)
    kit = FileStorageCrashes(tmp_path, sector_bytes=16)
    with pytest.raises(StorageCorruptError, match="records are missing or misplaced"):
        check_crash_during_sync(kit.make, kit.crash_and_reopen, kit.crash_during_sync)


# -- MemoryStorage ---------------------------------------------------------------------------


def test_memory_crash_keeps_exactly_the_requested_prefix() -> None:
    store = MemoryStorage()
    store.put("a", b"1")
    store.sync()
    store.put("b", b"2")
    store.delete("a")
    store.put("c", b"3")
    assert store.unsynced_count == 3
    store.crash(keep_unsynced=2)
    assert store.recover() == {"b": b"2"}
    assert store.unsynced_count == 0
    assert (store.writes, store.syncs, store.crashes) == (4, 1, 1)
    with pytest.raises(StorageUsageError, match="keep_unsynced"):
        store.crash(keep_unsynced=1)
    with pytest.raises(StorageUsageError, match="keep_unsynced"):
        store.crash(keep_unsynced=-1)


def test_memory_unsynced_writes_max_is_enforced() -> None:
    store = MemoryStorage(unsynced_writes_max=3)
    for index in range(3):
        store.put(f"k{index}", b"v")
    with pytest.raises(StorageUsageError, match="unsynced_writes_max=3"):
        store.delete("k0")
    store.sync()
    store.put("k3", b"v")  # a sync empties the buffer
    with pytest.raises(StorageUsageError):
        MemoryStorage(unsynced_writes_max=0)


def test_memory_write_and_sync_is_put_delete_then_sync() -> None:
    """The simulator's one-call batch ends in the same state, counts and undo
    history as the calls it stands for, and refuses what they refuse."""
    writes: list[tuple[str, bytes | None]] = [
        # A bytearray, outside the type on purpose: a caller's buffer is stored as a bytes copy.
        ("a", b"1"), ("b", cast(bytes, bytearray(b"2"))), ("a", None), ("c", b"3"), ("zz", None)]
    one, other = MemoryStorage(), MemoryStorage()
    one.put("a", b"0")
    other.put("a", b"0")
    one.sync()
    other.sync()
    one.write_and_sync(writes)
    for key, value in writes:
        if value is None:
            other.delete(key)
        else:
            other.put(key, value)
    other.sync()
    assert one.recover() == other.recover() == {"b": b"2", "c": b"3"}
    assert type(one.recover()["b"]) is bytes
    assert (one.writes, one.syncs, one.unsynced_count) == (other.writes, other.syncs, 0)
    one.crash(lose_synced=2)
    other.crash(lose_synced=2)
    assert one.recover() == other.recover()
    bounded = MemoryStorage(unsynced_writes_max=2)
    with pytest.raises(StorageUsageError, match="unsynced_writes_max=2"):
        bounded.write_and_sync([("k0", b"v"), ("k1", b"v"), ("k2", b"v")])
    with pytest.raises(StorageUsageError):
        MemoryStorage().write_and_sync([("", b"v")])


def test_memory_sync_cost_does_not_grow_with_the_map() -> None:
    store = MemoryStorage()
    for index in range(200_000):
        store.put(f"key-{index}", b"v")
    store.sync()
    started = time.perf_counter()
    for index in range(2_000):
        store.put("hot", index.to_bytes(4, "little"))
        store.sync()
    # O(map) per sync would copy 200k entries 2000 times (seconds); O(batch) takes ~ms.
    assert time.perf_counter() - started < 0.5


# -- FileStorage: helpers --------------------------------------------------------------------


def _records(path: Path) -> list[Record]:
    data = path.read_bytes()
    records = []
    offset = SEGMENT_RECORDS_START
    while offset < len(data):
        record = decode_record(data, offset)
        assert isinstance(record, Record), record
        records.append(record)
        offset = record.end
    return records


def _write_batches(directory: Path, batches: int, per_batch: int = 3) -> dict[str, bytes]:
    model: dict[str, bytes] = {}
    with FileStorage(directory, wal_bytes_compact_threshold=None) as store:
        for batch in range(batches):
            for index in range(per_batch):
                key, value = f"key-{batch}-{index}", f"value-{batch}-{index}".encode()
                store.put(key, value)
                model[key] = value
            store.sync()
    return model


def _segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("wal-*.log"))


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def _directory_bytes(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in directory.iterdir() if path.name != "LOCK"}


# -- FileStorage: torn tails -----------------------------------------------------------------


@pytest.mark.parametrize(
    "tail",
    [b"\x00" * 90 + b"\x01" * 10, b"RREC" + b"\xff" * 30, b"garbage that is no record"],
    ids=["zeros", "header-with-huge-length", "garbage"],
)
def test_torn_tail_is_truncated(tmp_path: Path, tail: bytes) -> None:
    model = _write_batches(tmp_path, batches=2)
    [segment] = _segments(tmp_path)
    length = segment.stat().st_size
    with segment.open("ab") as file:
        file.write(tail)
    with FileStorage(tmp_path) as store:
        assert store.recover() == model
        assert store.torn_bytes_discarded == len(tail)
        assert segment.stat().st_size == length  # the tail is gone, not skipped each time
        store.put("after", b"tail")
        store.sync()
    with FileStorage(tmp_path) as store:
        assert store.recover() == {**model, "after": b"tail"}
        assert store.torn_bytes_discarded == 0


def test_a_tail_of_zeros_is_preallocated_space_not_a_torn_tail(tmp_path: Path) -> None:
    """The zeros a store writes ahead of its log (``preallocate_bytes``) read as the
    end of the log: nothing discarded, nothing reported, the next batch overwrites them."""
    model = _write_batches(tmp_path, batches=2)
    [segment] = _segments(tmp_path)
    length = segment.stat().st_size
    with segment.open("ab") as file:
        file.write(bytes(4096))
    with FileStorage(tmp_path, mark_syncs=False) as store:
        assert store.recover() == model
        assert store.torn_bytes_discarded == 0
        assert store.damage is None
        assert segment.stat().st_size == length + 4096  # kept, to be overwritten
        store.put("after", b"zeros")
        store.sync()
        assert segment.stat().st_size > length  # the records went into the zeros
        assert store.wal_bytes < segment.stat().st_size
    assert segment.stat().st_size == store.wal_bytes  # a close trims the zeros away
    with FileStorage(tmp_path) as store:
        assert store.recover() == {**model, "after": b"zeros"}
        assert store.torn_bytes_discarded == 0
        assert store.damage is None


def test_the_log_is_written_into_preallocated_zeros(tmp_path: Path) -> None:
    """A sync writes into the zeros ahead of it; the file grows only by whole steps of
    ``preallocate_bytes``, never past ``segment_bytes_max``; a rotation trims them."""
    step = 8192
    store = FileStorage(tmp_path, preallocate_bytes=step, segment_bytes_max=64 * 1024)
    sizes = set()
    for index in range(600):
        store.put(f"k{index}", b"v" * 100)
        store.sync()
        [*_, last] = _segments(tmp_path)
        sizes.add(last.stat().st_size)
        assert last.stat().st_size <= 64 * 1024
    segments = _segments(tmp_path)
    assert len(segments) > 1
    for older in segments[:-1]:
        assert not _zeros_tail(older.read_bytes())  # trimmed at the rotation
    assert len(sizes) < 600 // 4  # grown in steps, not at every sync
    model = store.recover()
    store.close()
    assert not _zeros_tail(segments[-1].read_bytes())
    with FileStorage(tmp_path, preallocate_bytes=0) as reopened:  # the old way reads it too
        assert reopened.recover() == model
        reopened.put("more", b"m")
        reopened.sync()
        model["more"] = b"m"
    with FileStorage(tmp_path) as reopened:
        assert reopened.recover() == model
        assert reopened.damage is None


def _zeros_tail(data: bytes) -> bool:
    return data.endswith(bytes(16))


def test_zeroed_records_before_a_later_batch_are_damage_not_the_end(tmp_path: Path) -> None:
    """Only a tail of zeros reads as the end of the log: zeros over an acknowledged
    record with a later batch after them are damage, refused as before."""
    _write_batches(tmp_path, batches=3)
    [segment] = _segments(tmp_path)
    first = _records(segment)[0]
    data = bytearray(segment.read_bytes())
    data[first.offset : first.end] = bytes(first.end - first.offset)
    segment.write_bytes(bytes(data) + bytes(4096))
    with pytest.raises(StorageCorruptError, match="valid record of batch 2 follows"):
        FileStorage(tmp_path)


def test_the_checks_catch_a_broken_preallocation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Broken on purpose, each way is caught: a rotation that leaves its zeros in the
    closed segment (every segment but the last must end with its last record), and a
    reader that takes zeros anywhere for the end of the log."""
    with monkeypatch.context() as patched:
        patched.setattr(FileStorage, "_trim_segment", lambda self: None)
        kit = FileStorageCrashes(tmp_path / "untrimmed", segment_bytes_max=592, sector_bytes=16)
        with pytest.raises(StorageCorruptError, match="not the last"):
            check_crash_during_sync(kit.make, kit.crash_and_reopen, kit.crash_during_sync)
    with monkeypatch.context() as patched:
        patched.setattr(file_module, "_zeros_from", lambda data, offset: True)
        with pytest.raises(pytest.fail.Exception, match="DID NOT RAISE"):
            test_zeroed_records_before_a_later_batch_are_damage_not_the_end(tmp_path / "zeros")


def test_partial_last_record_is_a_torn_tail(tmp_path: Path) -> None:
    model = _write_batches(tmp_path, batches=2)
    [segment] = _segments(tmp_path)
    last = _records(segment)[-1]
    with segment.open("r+b") as file:
        file.truncate(last.end - 1)
    with FileStorage(tmp_path) as store:
        # The last batch keeps its first two records: a prefix of it.
        del model["key-1-2"]
        assert store.recover() == model


def test_lost_sector_inside_the_last_batch_keeps_its_prefix(tmp_path: Path) -> None:
    # Writeback may persist the end of the last write but not its middle.
    model = _write_batches(tmp_path, batches=2)
    [segment] = _segments(tmp_path)
    middle = _records(segment)[4]  # second record of the last batch
    data = bytearray(segment.read_bytes())
    data[middle.offset : middle.end] = bytes(middle.end - middle.offset)
    segment.write_bytes(bytes(data))
    with FileStorage(tmp_path) as store:
        assert store.recover() == {k: v for k, v in model.items() if k < "key-1-1"}
        store.put("next", b"batch")
        store.sync()
    with FileStorage(tmp_path) as store:  # the sealed prefix and the next batch replay
        assert store.recover()["next"] == b"batch"


# -- FileStorage: corruption -----------------------------------------------------------------


def test_corruption_followed_by_a_later_batch_refuses_to_open(tmp_path: Path) -> None:
    _write_batches(tmp_path, batches=3)
    [segment] = _segments(tmp_path)
    damaged = _records(segment)[4]  # inside batch 2; batch 3 follows
    _flip_byte(segment, damaged.end - 2)
    evidence = _directory_bytes(tmp_path)
    with pytest.raises(StorageCorruptError) as error:
        FileStorage(tmp_path)
    message = str(error.value)
    assert segment.name in message
    assert f"offset {damaged.offset}" in message
    assert "checksum mismatch" in message
    assert "not a torn write" in message
    assert _directory_bytes(tmp_path) == evidence  # refused without touching anything


def test_corruption_in_a_segment_that_is_not_the_last_refuses(tmp_path: Path) -> None:
    with FileStorage(tmp_path, segment_bytes_max=612) as store:
        for index in range(10):
            store.put(f"k{index}", b"v" * 20)
            store.sync()
    first = _segments(tmp_path)[0]
    assert len(_segments(tmp_path)) > 2
    _flip_byte(first, first.stat().st_size - 1)  # the last byte of a complete segment
    with pytest.raises(StorageCorruptError, match=f"{first.name}.*not the last"):
        FileStorage(tmp_path)


def test_oversized_length_is_rejected_as_corruption(tmp_path: Path) -> None:
    _write_batches(tmp_path, batches=2)
    [segment] = _segments(tmp_path)
    record = _records(segment)[1]
    data = bytearray(segment.read_bytes())
    struct.pack_into("<I", data, record.offset + 8, VALUE_BYTES_MAX + 1)  # value length
    segment.write_bytes(bytes(data))
    with pytest.raises(StorageCorruptError, match="exceeds VALUE_BYTES_MAX"):
        FileStorage(tmp_path)


def test_bad_segment_header_and_unknown_version_refuse(tmp_path: Path) -> None:
    _write_batches(tmp_path, batches=1)
    [segment] = _segments(tmp_path)
    original = segment.read_bytes()
    _flip_byte(segment, 9)
    with pytest.raises(StorageCorruptError, match="segment header checksum"):
        FileStorage(tmp_path)
    fields = struct.pack("<4sHHQ", SEGMENT_MAGIC, FORMAT_VERSION + 1, 0, 1)
    header = fields + zlib.crc32(fields).to_bytes(4, "little")
    segment.write_bytes(header + original[SEGMENT_HEADER.size :])
    with pytest.raises(StorageCorruptError, match=f"version {FORMAT_VERSION + 1}"):
        FileStorage(tmp_path)


@pytest.mark.parametrize("version", [1, 2])
def test_a_segment_of_an_older_version_is_refused_naming_its_version(
    tmp_path: Path, version: int
) -> None:
    """Files of the formats before the msgspec codec (1) and before the mark
    slots (2: records right after the 20-byte header) are refused, not misread,
    and left as they are."""
    assert FORMAT_VERSION == 3
    _write_batches(tmp_path, batches=1)
    [segment] = _segments(tmp_path)
    original = segment.read_bytes()
    fields = struct.pack("<4sHHQ", SEGMENT_MAGIC, version, 0, 1)
    old = fields + zlib.crc32(fields).to_bytes(4, "little") + original[SEGMENT_RECORDS_START:]
    segment.write_bytes(old)
    for repair in (False, True):
        with pytest.raises(StorageCorruptError,
                           match=rf"log format version {version}; .*only version 3"):
            FileStorage(tmp_path, repair=repair)
    assert segment.read_bytes() == old


def test_a_version_1_snapshot_is_refused_naming_its_version(tmp_path: Path) -> None:
    with FileStorage(tmp_path, segment_bytes_max=642, wal_bytes_compact_threshold=None) as store:
        for index in range(8):
            store.put(f"k{index}", b"v" * 40)
            store.sync()
        store.compact()
    [snapshot] = tmp_path.glob("snapshot-*.snap")
    data = bytearray(snapshot.read_bytes())
    data[4:6] = (1).to_bytes(2, "little")  # the version field, after the magic
    body_end = len(data) - SNAPSHOT_TRAILER.size
    data[body_end : body_end + 4] = zlib.crc32(data[:body_end]).to_bytes(4, "little")
    snapshot.write_bytes(bytes(data))
    with pytest.raises(StorageCorruptError, match=r"snapshot format version 1; .*only version 3"):
        FileStorage(tmp_path)


def test_missing_segment_refuses(tmp_path: Path) -> None:
    with FileStorage(tmp_path, segment_bytes_max=592) as store:
        for index in range(6):
            store.put(f"k{index}", b"v" * 30)
            store.sync()
    segments = _segments(tmp_path)
    segments[1].unlink()
    with pytest.raises(StorageCorruptError, match="a segment is missing"):
        FileStorage(tmp_path)


# -- FileStorage: rotation, snapshots, compaction --------------------------------------------


def test_segment_rotation_bounds_every_segment(tmp_path: Path) -> None:
    bound = 748
    model = {}
    with FileStorage(tmp_path, segment_bytes_max=bound, wal_bytes_compact_threshold=None) as store:
        for index in range(60):
            store.put(f"key-{index}", bytes([index]) * 17)
            model[f"key-{index}"] = bytes([index]) * 17
            if index % 4 == 3:
                store.sync()
        store.put("oversized", b"x" * 1000)  # larger than a segment: gets one of its own
        model["oversized"] = b"x" * 1000
        store.sync()
        assert store.rotations == store.segment_count - 1 > 5
    sizes = {path.name: path.stat().st_size for path in _segments(tmp_path)}
    oversized = [name for name, size in sizes.items() if size > bound]
    assert len(oversized) == 1
    assert sizes[oversized[0]] == SEGMENT_RECORDS_START + RECORD_HEADER.size + 9 + 1000
    with FileStorage(tmp_path) as store:
        assert store.recover() == model


def test_compaction_snapshots_and_deletes_covered_segments(tmp_path: Path) -> None:
    with FileStorage(tmp_path, segment_bytes_max=692, wal_bytes_compact_threshold=None) as store:
        for index in range(30):
            store.put(f"k{index % 7}", f"{index}".encode())
            store.sync()
        store.delete("k0")
        store.put("pending", b"synced by compact")
        assert store.segment_count > 3
        store.compact()
        model = store.recover()
        assert model["pending"] == b"synced by compact"
        assert store.compactions == 1
        assert store.segment_count == 1
    [snapshot] = tmp_path.glob("snapshot-*.snap")
    covered = int(snapshot.stem.removeprefix("snapshot-"))
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == ["LOCK", "SUPERBLOCK", snapshot.name, segment_file_name(covered + 1)]
    with FileStorage(tmp_path, segment_bytes_max=692) as store:
        assert store.recover() == model
        store.put("after-snapshot", b"1")
        store.sync()
        store.compact()
        model = store.recover()
    assert len(list(tmp_path.glob("snapshot-*"))) == 1  # the older snapshot is gone
    with FileStorage(tmp_path) as store:
        assert store.recover() == model


def test_automatic_compaction_bounds_the_log(tmp_path: Path) -> None:
    threshold = 512
    with FileStorage(tmp_path, segment_bytes_max=748, wal_bytes_compact_threshold=threshold) as s:
        for index in range(300):
            s.put(f"key-{index % 10}", index.to_bytes(8, "little"))
            s.sync()
            assert s.wal_bytes <= threshold + 256
        assert s.compactions > 10
        model = s.recover()
    with FileStorage(tmp_path) as store:
        assert store.recover() == model


def test_interrupted_compaction_is_finished_on_open(tmp_path: Path) -> None:
    with FileStorage(tmp_path, segment_bytes_max=642, wal_bytes_compact_threshold=None) as store:
        for index in range(8):
            store.put(f"k{index}", b"v" * 40)
            store.sync()
        leftovers = _directory_bytes(tmp_path)
        store.compact()
        model = store.recover()
    # A crash after the snapshot's rename but before the deletions, plus a half-made file.
    for name, data in leftovers.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "wal-0000000000000099.log.tmp").write_bytes(b"half")
    with FileStorage(tmp_path) as store:
        assert store.recover() == model
    assert len(_segments(tmp_path)) == 1
    assert not list(tmp_path.glob("*.tmp"))


def test_damaged_snapshot(tmp_path: Path) -> None:
    with FileStorage(tmp_path, segment_bytes_max=642, wal_bytes_compact_threshold=None) as store:
        for index in range(8):
            store.put(f"k{index}", b"v" * 40)
            store.sync()
        segments = _directory_bytes(tmp_path)
        store.compact()
        model = store.recover()
    [snapshot] = tmp_path.glob("snapshot-*.snap")
    _flip_byte(snapshot, 40)
    with pytest.raises(StorageCorruptError, match=f"{snapshot.name}.*checksum.*is gone"):
        FileStorage(tmp_path)
    # If the segments it covers are still there, nothing is lost: replay them instead.
    # (As the compaction's rotation left them: without the last one's preallocated zeros.)
    for name, data in segments.items():
        (tmp_path / name).write_bytes(data.rstrip(b"\0"))
    with FileStorage(tmp_path) as store:
        assert store.recover() == model


# -- FileStorage: lock, bounds, failures -----------------------------------------------------

_HOLD_LOCK = """
import sys
from replicaio.storage.file import FileStorage
store = FileStorage(sys.argv[1])
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_directory_open_elsewhere_is_refused(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StorageUsageError, match=f"already open.*pid {holder.pid}"):
            FileStorage(tmp_path)
    finally:
        holder.communicate("", timeout=10)  # the holder exits; the kernel drops its lock
    with FileStorage(tmp_path), pytest.raises(StorageUsageError, match="already open"):
        FileStorage(tmp_path)  # a second opener in this process is refused too
    FileStorage(tmp_path).close()  # and after close, the directory is free again


def test_unsynced_bytes_max_is_enforced(tmp_path: Path) -> None:
    big = bytes(VALUE_BYTES_MAX)  # the same object each time: no extra memory
    with FileStorage(tmp_path, unsynced_bytes_max=RECORD_BYTES_MAX * 2) as store:
        store.put("a", big)
        store.put("b", big)
        with pytest.raises(StorageUsageError, match="unsynced_bytes_max"):
            store.put("c", big)
    with pytest.raises(StorageUsageError, match="unsynced_bytes_max"):
        FileStorage(tmp_path, unsynced_bytes_max=RECORD_BYTES_MAX - 1)
    with pytest.raises(StorageUsageError, match="segment_bytes_max"):
        FileStorage(tmp_path, segment_bytes_max=10)


def test_a_value_of_maximal_size_round_trips(tmp_path: Path) -> None:
    value = bytes(range(256)) * (VALUE_BYTES_MAX // 256)
    with FileStorage(tmp_path) as store:
        store.put("largest", value)
        store.sync()
    with FileStorage(tmp_path) as store:
        assert store.recover()["largest"] == value


def test_an_io_error_in_sync_closes_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStorage(tmp_path)
    store.put("a", b"1")
    store.sync()
    store.put("b", b"2")

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    monkeypatch.setattr(os, "fdatasync", failing_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        store.sync()
    monkeypatch.undo()
    with pytest.raises(StorageUsageError, match="I/O error"):
        store.put("c", b"3")
    with FileStorage(tmp_path) as reopened:  # the lock was released; a prefix survives
        assert reopened.recover() in ({"a": b"1"}, {"a": b"1", "b": b"2"})


# -- FileStorage against a dict model --------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "c", "d", "e", "f"])
VALUES = st.binary(max_size=60)


class FileStorageMachine(RuleBasedStateMachine):
    """Random writes, syncs, compactions and crashes (clean, or torn inside a sync)."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = directory
        self.store = self._open()
        self.durable: dict[str, bytes] = {}
        self.pending: list[tuple[str, bytes | None]] = []

    def _open(self) -> FileStorage:
        return FileStorage(self.directory, segment_bytes_max=792, wal_bytes_compact_threshold=2_400)

    def _prefix_states(self) -> list[dict[str, bytes]]:
        states = [dict(self.durable)]
        for key, value in self.pending:
            state = dict(states[-1])
            if value is None:
                state.pop(key, None)
            else:
                state[key] = value
            states.append(state)
        return states

    @rule(key=KEYS, value=VALUES)
    def put(self, key: str, value: bytes) -> None:
        self.store.put(key, value)
        self.pending.append((key, value))

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        self.store.delete(key)
        self.pending.append((key, None))

    @rule()
    def sync(self) -> None:
        self.store.sync()
        self.durable = self._prefix_states()[-1]
        self.pending = []
        if self.store.compactions:
            event("compacted automatically")
        if self.store.rotations:
            event("rotated a segment")

    @rule()
    def compact(self) -> None:
        self.store.compact()
        self.durable = self._prefix_states()[-1]
        self.pending = []

    @rule()
    def crash(self) -> None:
        self.store.close()
        self.store = self._open()
        self.pending = []

    @precondition(lambda self: self.pending)
    @rule(data=st.data(), lose_a_sector=st.booleans())
    def crash_during_sync(self, data: st.DataObject, lose_a_sector: bool) -> None:
        states = self._prefix_states()
        snapshots = set(self.directory.glob("snapshot-*"))
        segments = sorted(self.directory.glob("wal-*.log"))
        segment = segments[-1]
        # Where the last segment's records end (the file runs on with preallocated zeros).
        start = self.store.wal_bytes - sum(path.stat().st_size for path in segments[:-1])
        self.store.sync()
        self.store.close()
        last = max(self.directory.glob("wal-*.log"))
        if last != segment:
            start = SEGMENT_RECORDS_START  # rotated: the earlier segments were fsynced first
        end = last.stat().st_size
        compacted = set(self.directory.glob("snapshot-*")) != snapshots
        assert end > start or compacted  # (a compaction leaves an empty segment last)
        if compacted:
            event("crash during sync: compacted inside it, plain restart")
        elif lose_a_sector:
            event("crash during sync: a sector lost")
            low = data.draw(st.integers(start, end - 1))
            high = min(end, low + 16)
            with last.open("r+b") as file:
                file.seek(low)
                file.write(bytes(high - low))
        else:
            event("crash during sync: log cut")
            os.truncate(last, data.draw(st.integers(start, end)))
        self.store = self._open()
        recovered = self.store.recover()
        assert recovered in states, "a crash during sync must keep a prefix of the batch"
        event(f"crash during sync kept {'all' if recovered == states[-1] else 'a prefix'}")
        if self.store.compactions or self.store.rotations:
            event("rotated or compacted")
        self.durable = recovered
        self.pending = []

    @invariant()
    def durable_state_is_recovered(self) -> None:
        assert self.store.recover() == self.durable

    def teardown(self) -> None:
        self.store.close()


def test_file_storage_matches_a_dict_model(tmp_path: Path) -> None:
    names = itertools.count()

    class Machine(FileStorageMachine):
        def __init__(self) -> None:
            super().__init__(tmp_path / f"run-{next(names)}")

    run_state_machine_as_test(
        Machine, settings=settings(max_examples=50, stateful_step_count=35, deadline=None)
    )
