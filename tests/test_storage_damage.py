"""Damage reports (docs/storage.md, "What the store tells the node it lost"): a log
that lost synced writes, from a cut tail, a flipped bit in the last record or a
whole lost batch, is reported as such, and keeps being reported until cleared; an
honest torn write of a sync that never returned is not; the epoch survives any
damage the store survives."""

from __future__ import annotations

from pathlib import Path

import pytest

from replicaio.storage.base import StorageCorruptError, StorageDamage, StorageUsageError
from replicaio.storage.file import (
    SEGMENT_MARK_OFFSET,
    SEGMENT_RECORDS_START,
    FileStorage,
    Record,
    decode_record,
    decode_segment_marks,
    segment_mark_offset,
)
from replicaio.storage.memory import MemoryStorage
from replicaio.storage.superblock import SLOT_BYTES, SUPERBLOCK_FILE_NAME, read_superblock

LOST = "lost synced writes"
UNCERTAIN = "damaged tail, possibly acknowledged"


def _write_batches(directory: Path, batches: int, **options: bool) -> dict[str, bytes]:
    model: dict[str, bytes] = {}
    with FileStorage(directory, wal_bytes_compact_threshold=None, **options) as store:
        assert store.damage is None
        for batch in range(batches):
            for index in range(3):
                key, value = f"key-{batch}-{index}", f"value-{batch}-{index}".encode()
                store.put(key, value)
                model[key] = value
            store.sync()
    return model


def _segment(directory: Path) -> Path:
    [segment] = sorted(directory.glob("wal-*.log"))
    return segment


def _records(path: Path) -> list[Record]:
    data = path.read_bytes()
    records, offset = [], SEGMENT_RECORDS_START
    while offset < len(data):
        record = decode_record(data, offset)
        if not any(data[offset:]):
            break  # preallocated zeros (a store killed before its close trimmed them)
        assert isinstance(record, Record)
        records.append(record)
        offset = record.end
    return records


def _cut_records(path: Path, fraction: float) -> None:
    """Cut the segment's records (not its first sector) to ``fraction`` of them."""
    size = path.stat().st_size
    _cut(path, SEGMENT_RECORDS_START + int((size - SEGMENT_RECORDS_START) * fraction))


def _cut(path: Path, length: int) -> None:
    with path.open("r+b") as file:
        file.truncate(length)


def test_an_intact_log_reports_nothing(tmp_path: Path) -> None:
    model = _write_batches(tmp_path, batches=3)
    with FileStorage(tmp_path) as store:
        assert store.recover() == model
        assert store.damage is None


@pytest.mark.parametrize("damage", ["cut-10-bytes", "cut-to-half", "flip-last-record",
                                    "lose-last-batch"])
def test_lost_synced_writes_are_reported_until_cleared(tmp_path: Path, damage: str) -> None:
    model = _write_batches(tmp_path, batches=4)
    segment = _segment(tmp_path)
    size = segment.stat().st_size
    records = _records(segment)
    if damage == "cut-10-bytes":
        _cut(segment, size - 10)
    elif damage == "cut-to-half":
        _cut_records(segment, 0.45)  # inside a batch
    elif damage == "flip-last-record":
        data = bytearray(segment.read_bytes())
        data[records[-1].end - 3] ^= 0x01
        segment.write_bytes(bytes(data))
    else:
        _cut(segment, records[-3].offset)  # exactly at a batch boundary: no torn bytes
    with FileStorage(tmp_path) as store:
        recovered = store.recover()
        assert recovered != model
        assert all(model[key] == value for key, value in recovered.items())
        assert store.damage is not None
        assert store.damage.kind == LOST
        assert "acknowledged writes are lost" in store.damage.detail
        assert (store.damage.bytes_discarded > 0) == (damage != "lose-last-batch")
        store.put("after", b"damage")
        store.sync()
    # Not cleared (the node crashed before it reacted): reported again.
    with FileStorage(tmp_path) as store:
        assert store.damage is not None
        assert store.damage.kind == "reported earlier"
        assert store.recover()["after"] == b"damage"
        store.clear_damage()
    with FileStorage(tmp_path) as store:
        assert store.damage is None
        assert store.recover() == {**recovered, "after": b"damage"}


def test_a_torn_write_of_a_sync_that_never_returned_is_no_damage(tmp_path: Path) -> None:
    _write_batches(tmp_path, batches=2)
    segment = _segment(tmp_path)
    synced = segment.read_bytes()
    marks = (tmp_path / SUPERBLOCK_FILE_NAME).read_bytes()
    with FileStorage(tmp_path) as store:
        store.put("torn", b"x" * 100)
        store.put("torn-2", b"y")
        store.sync()
    written = segment.read_bytes()  # after the close trimmed its preallocated zeros
    # The crash came during that sync: half its bytes reached the disk, and the
    # mark slots and the superblock still hold the marks from before it (they
    # follow the fsync).
    torn = written[: len(synced) + (len(written) - len(synced)) // 2]
    segment.write_bytes(synced[:SEGMENT_RECORDS_START] + torn[SEGMENT_RECORDS_START:])
    (tmp_path / SUPERBLOCK_FILE_NAME).write_bytes(marks)
    with FileStorage(tmp_path) as store:
        assert store.torn_bytes_discarded > 0
        assert store.damage is None
        assert "torn" not in store.recover()


def test_without_marks_a_torn_tail_is_possibly_acknowledged(tmp_path: Path) -> None:
    _write_batches(tmp_path, batches=2, mark_syncs=False)
    segment = _segment(tmp_path)
    with segment.open("ab") as file:
        file.write(b"RREC" + bytes(20))  # a torn record after the last (marked) batch
    with FileStorage(tmp_path, mark_syncs=False) as store:
        assert store.damage is not None
        assert store.damage.kind == UNCERTAIN
        assert "mark_syncs off" in store.damage.detail


def test_without_a_superblock_a_torn_tail_is_possibly_acknowledged(tmp_path: Path) -> None:
    _write_batches(tmp_path, batches=2)
    (tmp_path / SUPERBLOCK_FILE_NAME).unlink()  # no marks at all: no superblock ...
    segment = _segment(tmp_path)
    data = segment.read_bytes()  # ... and empty mark slots in the log
    segment.write_bytes(data[:SEGMENT_MARK_OFFSET].ljust(SEGMENT_RECORDS_START, b"\0")
                        + data[SEGMENT_RECORDS_START:])
    _cut(segment, segment.stat().st_size - 1)
    with FileStorage(tmp_path) as store:
        assert store.damage is not None
        assert store.damage.kind == UNCERTAIN
        assert "no superblock" in store.damage.detail
    with FileStorage(tmp_path) as store:  # now there is one, and the report stays
        assert store.damage is not None
        assert (tmp_path / SUPERBLOCK_FILE_NAME).exists()


def test_removed_log_files_with_the_superblock_kept_report_the_loss(tmp_path: Path) -> None:
    # The operator's way out of damage in the middle of the log (which refuses
    # to open): move the log away, keep SUPERBLOCK; the node then recovers from peers.
    _write_batches(tmp_path, batches=2)
    with FileStorage(tmp_path) as store:
        store.set_epoch(7)
    _segment(tmp_path).unlink()
    with FileStorage(tmp_path) as store:
        assert store.recover() == {}
        assert store.damage is not None
        assert store.damage.kind == LOST
        assert store.epoch == 7


def test_the_epoch_survives_damage_to_the_log_and_to_one_superblock_copy(tmp_path: Path) -> None:
    _write_batches(tmp_path, batches=3)
    with FileStorage(tmp_path) as store:
        assert store.epoch == 0
        store.set_epoch(4)
        store.set_epoch(5)
        with pytest.raises(StorageUsageError):
            store.set_epoch(3)
        store.put("k", b"v")
        store.sync()  # a mark: one copy now differs from the other
    segment = _segment(tmp_path)
    _cut_records(segment, 0.5)
    superblock = tmp_path / SUPERBLOCK_FILE_NAME
    for slot in range(2):
        data = bytearray(superblock.read_bytes())
        saved = bytes(data)
        data[slot * SLOT_BYTES + 20] ^= 0xFF
        superblock.write_bytes(bytes(data))
        with FileStorage(tmp_path) as store:
            assert store.epoch == 5
            assert store.damage is not None
        superblock.write_bytes(saved)


def test_a_superblock_with_every_copy_damaged_refuses_to_open(tmp_path: Path) -> None:
    _write_batches(tmp_path, batches=1)
    superblock = tmp_path / SUPERBLOCK_FILE_NAME
    superblock.write_bytes(bytes(len(superblock.read_bytes())))
    with pytest.raises(StorageCorruptError, match="every superblock copy is damaged"):
        FileStorage(tmp_path)


def damage_of(store: MemoryStorage) -> StorageDamage | None:
    """``store.damage`` read by a call: mypy keeps an attribute narrowed by an
    assert across the calls that change it (``clear_damage``, ``crash``)."""
    return store.damage


def test_memory_storage_reports_lost_synced_writes_and_keeps_the_epoch() -> None:
    store = MemoryStorage()
    store.set_epoch(3)
    for number in range(4):
        store.put(f"k{number}", b"v")
        store.sync()
    store.put("unsynced", b"u")
    assert store.synced_history_count == 4
    store.crash(keep_unsynced=1, lose_synced=2)
    assert store.recover() == {"k0": b"v", "k1": b"v"}
    assert store.damage is not None and store.damage.kind == LOST
    store.crash()
    assert store.damage is not None  # until cleared
    store.clear_damage()
    store.crash()
    assert damage_of(store) is None
    store.wipe_log()
    assert store.recover() == {}
    assert store.damage is not None
    assert store.epoch == 3
    with pytest.raises(StorageUsageError):
        store.crash(lose_synced=1)


# -- the mark slots in the log (ADR 0045) ----------------------------------------------------


def _kill(store: FileStorage) -> None:
    """Drop the store as a kill -9 would: no close, so no last superblock mark."""
    store._release_descriptors()


def _write_killed(directory: Path, batches: int,
                  segment_bytes_max: int = 64 << 20) -> dict[str, bytes]:
    """``batches`` synced batches (each marked in the log's slots), then a kill -9."""
    model: dict[str, bytes] = {}
    store = FileStorage(directory, wal_bytes_compact_threshold=None,
                        segment_bytes_max=segment_bytes_max)
    for batch in range(batches):
        for index in range(3):
            key, value = f"key-{batch}-{index}", f"value-{batch}-{index}".encode() * 3
            store.put(key, value)
            model[key] = value
        store.sync()
    _kill(store)
    return model


def _newest_slot_offset(segment: Path) -> int:
    data = segment.read_bytes()
    sequence, _ = decode_segment_marks(data, int(segment.name[4:20]))
    return segment_mark_offset(sequence)


def test_a_lost_batch_named_only_by_the_slots_is_reported(tmp_path: Path) -> None:
    _write_killed(tmp_path, batches=4)
    state = read_superblock(tmp_path).state
    assert state is not None and state.synced_batch < 4  # the slots alone name batch 4
    segment = _segment(tmp_path)
    _cut(segment, _records(segment)[-1].end - 5)
    with FileStorage(tmp_path) as store:
        assert store.damage is not None and store.damage.kind == LOST
        assert "mark slots" in store.damage.detail


def test_a_damaged_slot_counts_as_absent_and_the_other_one_holds(tmp_path: Path) -> None:
    """A slot whose checksum fails (here: its batch raised past the log) is not
    believed: the other slot's older mark holds, and nothing is reported."""
    model = _write_killed(tmp_path, batches=3)
    segment = _segment(tmp_path)
    data = bytearray(segment.read_bytes())
    data[_newest_slot_offset(segment) + 4 + 8 + 8 + 7] ^= 0x40  # the batch field's top byte
    segment.write_bytes(bytes(data))
    with FileStorage(tmp_path) as store:
        assert store.damage is None
        assert store.recover() == model


def test_a_lost_last_segment_is_reported(tmp_path: Path) -> None:
    """Its slots go with it: the superblock, marked with a segment's first marks,
    still knows that batches past the segment before it were acknowledged."""
    _write_killed(tmp_path, batches=12, segment_bytes_max=SEGMENT_RECORDS_START + 300)
    segments = sorted(tmp_path.glob("wal-*.log"))
    assert len(segments) > 2
    segments[-1].unlink()
    with FileStorage(tmp_path) as store:
        assert store.damage is not None and store.damage.kind == LOST


def test_a_loss_found_and_cleared_is_not_found_again(tmp_path: Path) -> None:
    """The open that finds a loss rewrites the last segment's slots: once the
    node has reacted (``clear_damage``), the next open finds nothing, even
    with no batch written since."""
    _write_killed(tmp_path, batches=4)
    segment = _segment(tmp_path)
    _cut(segment, _records(segment)[-3].offset)  # batch 4 lost whole: no seal follows
    store = FileStorage(tmp_path)
    assert store.damage is not None and store.damage.kind == LOST
    store.clear_damage()
    _kill(store)
    with FileStorage(tmp_path) as store:
        assert store.damage is None
