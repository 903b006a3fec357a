"""A log damaged in its middle, opened with ``FileStorage(repair=True)``
(docs/storage.md, "Damage in the middle of the log"): the store keeps the intact
prefix (an earlier state the node really was in), moves the rest to
``damaged-<n>/`` untouched, reports the loss until cleared, and keeps working;
what it cannot repair (no superblock, every superblock copy damaged, another
format version) it still refuses, changing nothing."""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from replicaio.storage.base import StorageCorruptError
from replicaio.storage.file import (
    FORMAT_VERSION,
    SEGMENT_BYTES_MAX_DEFAULT,
    SEGMENT_HEADER,
    SEGMENT_MAGIC,
    SEGMENT_RECORDS_START,
    FileStorage,
    Record,
    decode_record,
)
from replicaio.storage.memory import DAMAGED_MID_LOG, MemoryStorage
from replicaio.storage.superblock import SLOT_BYTES, SUPERBLOCK_FILE_NAME

MID_LOG = "damaged log cut back to its intact prefix"
Batches = list[dict[str, bytes]]


def _write(directory: Path, batches: int,
           segment_bytes_max: int = SEGMENT_BYTES_MAX_DEFAULT) -> Batches:
    """``batches`` syncs of three puts each (and a delete from the fourth on);
    returns the whole state after each batch."""
    states: Batches = [{}]
    with FileStorage(directory, wal_bytes_compact_threshold=None,
                     segment_bytes_max=segment_bytes_max) as store:
        model: dict[str, bytes] = {}
        for batch in range(batches):
            for index in range(3):
                key, value = f"key-{batch}-{index}", f"value-{batch}-{index}".encode() * 4
                store.put(key, value)
                model[key] = value
            if batch >= 3:
                store.delete(f"key-{batch - 3}-0")
                model.pop(f"key-{batch - 3}-0")
            store.sync()
            states.append(dict(model))
    return states


def _segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("wal-*.log"))


def _records(path: Path) -> list[Record]:
    data = path.read_bytes()
    records, offset = [], SEGMENT_RECORDS_START
    while offset < len(data):
        record = decode_record(data, offset)
        assert isinstance(record, Record)
        records.append(record)
        offset = record.end
    return records


def _replayed(paths: list[Path]) -> dict[str, bytes]:
    """The state the whole records of ``paths`` make, in order."""
    state: dict[str, bytes] = {}
    for path in paths:
        for record in _records(path):
            if record.key and record.kind == 1:
                state[record.key] = record.value
            elif record.key:
                state.pop(record.key, None)
    return state


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x08
    path.write_bytes(bytes(data))


def _files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())
            if path.is_file() and path.name != "LOCK"}


def _check_repaired(directory: Path, expected: dict[str, bytes], evidence: dict[str, bytes],
                    quarantine: str = "damaged-1") -> None:
    """Opens to ``expected``, reports it until cleared, quarantined ``evidence``
    byte for byte, and takes new writes that survive a reopen."""
    with FileStorage(directory, repair=True) as store:
        assert store.recover() == expected
        assert store.damage is not None
        assert store.damage.kind == MID_LOG
        assert store.damage.quarantine == quarantine
        assert f"moved to {quarantine}/" in store.damage.detail
        epoch = store.epoch
    assert _files(directory / quarantine) == evidence
    with FileStorage(directory, repair=True) as store:  # reported again until cleared
        assert store.recover() == expected
        assert store.damage is not None and store.damage.kind == "reported earlier"
        assert store.epoch == epoch
        store.set_epoch(epoch + 1)
        store.clear_damage()
        store.put("after", b"repair")
        store.sync()
    with FileStorage(directory) as store:  # and the repaired log is an ordinary one
        assert store.recover() == {**expected, "after": b"repair"}
        assert store.damage is None
        assert store.epoch == epoch + 1


def test_a_flipped_byte_mid_log_keeps_the_prefix_before_it(tmp_path: Path) -> None:
    states = _write(tmp_path, batches=6)
    [segment] = _segments(tmp_path)
    records = _records(segment)
    damaged = records[7]  # the second record of batch 3 (batches 1-3 have three records)
    assert damaged.batch == 3
    _flip(segment, damaged.end - 2)
    evidence = _files(tmp_path)
    with pytest.raises(StorageCorruptError, match="not a torn write"):
        FileStorage(tmp_path)  # without repair: refused, nothing changed
    assert _files(tmp_path) == evidence
    # Batches 1 and 2 whole, and the first record of batch 3 (a prefix of it, sealed).
    expected = dict(states[2])
    expected[records[6].key] = records[6].value
    _check_repaired(tmp_path, expected, {segment.name: evidence[segment.name]})
    assert segment.stat().st_size > damaged.offset  # the seal and the later write


def test_a_misdirected_write_mid_log_is_caught_by_its_batch_number(tmp_path: Path) -> None:
    """A later batch's records land over an earlier batch (a misdirected write):
    each record is valid, but it stands where another batch must be."""
    states = _write(tmp_path, batches=6)
    [segment] = _segments(tmp_path)
    records = _records(segment)
    data = bytearray(segment.read_bytes())
    batch_2 = [record for record in records if record.batch == 2]
    batch_5 = [record for record in records if record.batch == 5]
    source = bytes(data[batch_5[0].offset : batch_5[0].end])
    data[batch_2[0].offset : batch_2[0].offset + len(source)] = source
    segment.write_bytes(bytes(data))
    evidence = _files(tmp_path)
    with pytest.raises(StorageCorruptError, match="misplaced"):
        FileStorage(tmp_path)
    _check_repaired(tmp_path, states[1], {segment.name: evidence[segment.name]})


def test_damage_in_an_earlier_segment_moves_every_later_segment(tmp_path: Path) -> None:
    states = _write(tmp_path, batches=8, segment_bytes_max=692)
    segments = _segments(tmp_path)
    assert len(segments) > 3
    second = segments[1]
    first_record = _records(second)[0]
    _flip(second, SEGMENT_RECORDS_START + 6)  # the checksum field of its first record
    evidence = _files(tmp_path)
    with pytest.raises(StorageCorruptError, match="not the last"):
        FileStorage(tmp_path)
    # Everything before the record: the batches of the first segment, and the
    # records of a batch that spans into the second.
    expected = _replayed(segments[:1])
    assert all(expected.get(key) == value for key, value in
               states[first_record.batch - 1].items())
    moved = {path.name: evidence[path.name] for path in segments[1:]}
    _check_repaired(tmp_path, expected, moved)
    assert [path.name for path in _segments(tmp_path)] == [segments[0].name, second.name]


def test_a_damaged_segment_header_and_a_missing_segment(tmp_path: Path) -> None:
    _write(tmp_path, batches=8, segment_bytes_max=692)
    segments = _segments(tmp_path)
    _flip(segments[2], 9)  # its header
    evidence = _files(tmp_path)
    with pytest.raises(StorageCorruptError, match="segment header checksum"):
        FileStorage(tmp_path)
    _check_repaired(tmp_path, _replayed(segments[:2]),
                    {path.name: evidence[path.name] for path in segments[2:]})
    # A missing segment: the log is cut where it goes missing.
    directory = tmp_path / "missing"
    _write(directory, batches=8, segment_bytes_max=692)
    segments = _segments(directory)
    evidence = _files(directory)
    segments[1].unlink()
    with pytest.raises(StorageCorruptError, match="a segment is missing"):
        FileStorage(directory)
    _check_repaired(directory, _replayed(segments[:1]),
                    {path.name: evidence[path.name] for path in segments[2:]})


def test_a_damaged_snapshot_whose_segments_are_gone_starts_empty(tmp_path: Path) -> None:
    with FileStorage(tmp_path, segment_bytes_max=642, wal_bytes_compact_threshold=None) as store:
        for index in range(8):
            store.put(f"k{index}", b"v" * 40)
            store.sync()
        store.compact()
        store.put("later", b"x")
        store.sync()
        store.set_epoch(7)
    [snapshot] = tmp_path.glob("snapshot-*.snap")
    _flip(snapshot, 40)
    evidence = _files(tmp_path)
    with pytest.raises(StorageCorruptError, match="is gone"):
        FileStorage(tmp_path)
    quarantined = {name: data for name, data in evidence.items()
                   if name.startswith(("wal-", "snapshot-"))}
    _check_repaired(tmp_path, {}, quarantined)
    with FileStorage(tmp_path) as store:
        assert store.epoch == 8  # the epoch outlives the whole log


def test_what_repair_cannot_fix_is_still_refused_untouched(tmp_path: Path) -> None:
    _write(tmp_path, batches=4)
    [segment] = _segments(tmp_path)
    _flip(segment, _records(segment)[4].end - 1)
    superblock = tmp_path / SUPERBLOCK_FILE_NAME
    kept = superblock.read_bytes()
    # Without a superblock the epoch is unknown: an incarnation could repeat.
    superblock.unlink()
    evidence = _files(tmp_path)
    with pytest.raises(StorageCorruptError, match="not a torn write"):
        FileStorage(tmp_path, repair=True)
    assert _files(tmp_path) == evidence
    # Every copy damaged: the same.
    broken = bytearray(kept)
    for slot in range(len(kept) // SLOT_BYTES):
        broken[slot * SLOT_BYTES + 20] ^= 0xFF
    superblock.write_bytes(bytes(broken))
    evidence = _files(tmp_path)
    with pytest.raises(StorageCorruptError, match="every superblock copy is damaged"):
        FileStorage(tmp_path, repair=True)
    assert _files(tmp_path) == evidence
    # Another format version is not damage: another program wrote it.
    superblock.write_bytes(kept)
    original = segment.read_bytes()
    fields = struct.pack("<4sHHQ", SEGMENT_MAGIC, FORMAT_VERSION + 1, 0, 1)
    segment.write_bytes(fields + zlib.crc32(fields).to_bytes(4, "little")
                        + original[SEGMENT_HEADER.size :])
    evidence = _files(tmp_path)
    with pytest.raises(StorageCorruptError, match=f"version {FORMAT_VERSION + 1}"):
        FileStorage(tmp_path, repair=True)
    assert _files(tmp_path) == evidence


class _Crash(Exception):
    """The process dies here (raised instead of the next rename)."""


def test_a_crash_at_any_step_of_a_repair_is_repaired_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash before each rename of the cut (every intermediate state: the
    report recorded, some of the suffix moved) opens to the same prefix, still
    reported, with nothing of the evidence lost."""
    rename = os.rename  # what repair.py calls (os.rename, looked up at each call)
    for crash_at in range(40):
        directory = tmp_path / str(crash_at)
        states = _write(directory, batches=8, segment_bytes_max=692)
        segments = _segments(directory)
        _flip(segments[1], SEGMENT_RECORDS_START + 6)
        evidence = {path.name: path.read_bytes() for path in segments[1:]}
        expected = _replayed(segments[:1])
        del states
        calls = iter(range(crash_at + 1))

        def crashing(source: Path, target: Path, calls: Iterator[int] = calls,
                     crash_at: int = crash_at) -> None:
            if next(calls, None) == crash_at:
                raise _Crash
            rename(source, target)

        monkeypatch.setattr(os, "rename", crashing)
        try:
            FileStorage(directory, repair=True).close()
            crashed = False
        except _Crash:
            crashed = True
        monkeypatch.setattr(os, "rename", rename)
        with FileStorage(directory, repair=True) as store:
            assert store.recover() == expected, crash_at
            assert store.damage is not None
            assert store.damage.kind in (MID_LOG, "reported earlier")
        found: dict[str, bytes] = {}
        for taken in sorted(directory.glob("damaged-*")):
            found.update(_files(taken))
        assert found == evidence, crash_at
        if not crashed:
            return
    raise AssertionError("the repair never finished")


def test_memory_storage_reports_a_mid_log_cut_as_file_storage_does() -> None:
    store = MemoryStorage()
    for number in range(5):
        store.put(f"k{number}", b"v")
        store.sync()
    store.crash(lose_synced=3, kind=DAMAGED_MID_LOG)
    assert store.recover() == {"k0": b"v", "k1": b"v"}
    assert store.damage is not None and store.damage.kind == MID_LOG == DAMAGED_MID_LOG
    store.crash(lose_synced=1)  # a second loss before the first is cleared keeps its kind
    assert store.damage is not None and store.damage.kind == MID_LOG
    store.clear_damage()
    store.wipe_log()
    assert store.recover() == {}
    assert store.damage is not None and store.damage.kind == MID_LOG
