"""Durable storage on local disk: a checksummed write-ahead log plus snapshots.

Theory of operation (the full format and the argument are in docs/storage.md):

* **Log.** ``put``/``delete`` only buffer. ``sync`` encodes the buffered writes
  as one *batch* of records, appends them to the current segment file
  ``wal-<seq>.log`` with one ``write`` and makes them durable with one
  ``fsync`` (group commit). Every record carries its batch number; the last
  record of a batch carries the COMMIT flag. The segment file is zero-filled
  ahead of the write position (``preallocate_bytes``), so that the flush after
  an append is a data flush (``fdatasync``) with no file size to commit; a tail
  of zeros reads as the end of the log. A segment that would exceed
  ``segment_bytes_max`` is fsynced and closed, and a new one is created
  atomically (temporary name, header, fsync, rename, directory fsync), so every
  segment but the last is complete and durable.
* **In steps.** ``sync`` is also ``seal`` (on the buffering thread: number
  and encode the batch) + ``write_sealed`` (one log thread, in batch order:
  append, flush, apply) + ``mark_flushed`` (mark the latest flushed batch),
  for a host that steps while it flushes (ADR 0037).
* **Marks in the log** (ADR 0045): each segment's first sector holds two mark
  slots. A batch's mark is written after its own flush returned: carried by
  the next batch's flush (``write_sealed``) or by a flush of its own
  (``sync``, ``mark_flushed``); ``batch_marked`` says what may be released.
* **Snapshot.** ``compact`` (also triggered when the log outgrows
  ``wal_bytes_compact_threshold`` and the live data) syncs, starts a new
  segment, writes the whole map to ``snapshot-<seq>.snap`` atomically, then
  deletes the segments it covers (``seq`` and below) and older snapshots.
* **Recovery** (in the constructor): take the lock, load the newest valid
  snapshot, replay the later segments, checking that batch numbers run on
  without gaps. A bad record can only be a torn write when it lies in the
  batch that was being written at the crash: in the last segment, and with
  no valid record of any *other* batch after it. Then it and everything after
  it are truncated away, and the batch prefix before it is kept and sealed
  with a COMMIT-flagged SEAL record. Any other bad record means data that was
  acknowledged as durable is damaged: ``StorageCorruptError``, naming the file
  and the offset, and nothing is modified.
* **What was lost** (``damage``): the mark slots and the superblock
  (``superblock.py``) remember the last batch known to be synced. A log that
  recovers to an earlier batch
  (a cut, a lost write, a flipped bit in the last batch) lost acknowledged
  data; the store says so in ``damage`` and keeps saying so at every open
  until ``clear_damage``. With ``mark_syncs`` (the default) every sync is
  marked before it returns, so a torn batch after the mark is an honest torn
  write and reported as nothing.

Only this process writes the directory: a second opener (another process, or
another ``FileStorage`` in this one) gets ``StorageUsageError``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from replicaio.storage.base import (
    KEY_BYTES_MAX,
    VALUE_BYTES_MAX,
    StorageCorruptError,
    StorageDamage,
    StorageUsageError,
    check_key_value,
)
from replicaio.storage.repair import (
    Cut,
    LogDamageError,
    bytes_past,
    quarantine,
    quarantine_path,
)
from replicaio.storage.superblock import (
    DAMAGE_MID_LOG,
    DAMAGE_NAMES,
    DAMAGE_NONE,
    Superblock,
    SuperblockRead,
    SuperblockState,
    classify,
    read_superblock,
)

# 3: each segment's first sector holds two sync mark slots, records start after
# it (ADR 0045); 2: values are frames of the msgspec codec (docs/codec.md). A file
# of another version is refused, naming its version (docs/storage.md, "Format versions").
FORMAT_VERSION = 3
MEBIBYTE = 1024 * 1024

SEGMENT_MAGIC = b"RWAL"
# magic, format version, reserved (0), segment sequence number, CRC32 of the preceding fields
SEGMENT_HEADER = struct.Struct("<4sHHQI")
# The segment's first sector: the header, then SEGMENT_MARK_SLOTS mark slots of
# SEGMENT_MARK_BYTES at SEGMENT_MARK_OFFSET; records start at SEGMENT_RECORDS_START.
SEGMENT_MARK_MAGIC = b"RMRK"
# magic, sequence (the newest valid slot wins), segment number, batch; then CRC32 of those.
SEGMENT_MARK = struct.Struct("<4sQQQ")
SEGMENT_MARK_CHECKSUM = struct.Struct("<I")
SEGMENT_MARK_BYTES = 64
SEGMENT_MARK_SLOTS = 2
SEGMENT_MARK_OFFSET = 64
SEGMENT_RECORDS_START = 512
assert SEGMENT_HEADER.size <= SEGMENT_MARK_OFFSET
assert SEGMENT_MARK.size + SEGMENT_MARK_CHECKSUM.size <= SEGMENT_MARK_BYTES
assert SEGMENT_MARK_OFFSET + SEGMENT_MARK_SLOTS * SEGMENT_MARK_BYTES <= SEGMENT_RECORDS_START
RECORD_MAGIC = b"RREC"
# magic, CRC32 of everything after this field up to the record's end,
# value length, batch number, flags, kind, key length; then key and value bytes.
RECORD_HEADER = struct.Struct("<4sIIQBBH")
RECORD_CHECKSUMMED_FROM = 8
RECORD_BYTES_MAX = RECORD_HEADER.size + KEY_BYTES_MAX + VALUE_BYTES_MAX
SNAPSHOT_MAGIC = b"RSNP"
# magic, format version, reserved (0), last covered segment, its size in bytes,
# last batch included, number of entries; then the entries, then the trailer.
SNAPSHOT_HEADER = struct.Struct("<4sHHQQQQ")
SNAPSHOT_ENTRY = struct.Struct("<HI")  # key length, value length; then key and value bytes
SNAPSHOT_END_MAGIC = b"RSNE"
SNAPSHOT_TRAILER = struct.Struct("<I4s")  # CRC32 of every preceding byte, end magic

KIND_PUT = 1
KIND_DELETE = 2
KIND_SEAL = 3  # ends a batch whose tail was torn away; carries no data
FLAG_COMMIT = 1  # the record is the last of its batch

SEGMENT_BYTES_MAX_DEFAULT = 64 * MEBIBYTE
SEGMENT_BYTES_MIN = SEGMENT_RECORDS_START + RECORD_HEADER.size
WAL_BYTES_COMPACT_THRESHOLD_DEFAULT = 256 * MEBIBYTE
UNSYNCED_BYTES_MAX_DEFAULT = 256 * MEBIBYTE
SNAPSHOT_WRITE_CHUNK_BYTES = MEBIBYTE
# Zeros written ahead of the segment's write position (docs/storage.md, "Writing").
PREALLOCATE_BYTES_DEFAULT = MEBIBYTE

LOCK_FILE_NAME = "LOCK"
TEMPORARY_SUFFIX = ".tmp"
SEGMENT_NAME = re.compile(r"wal-(\d{16})\.log")
SNAPSHOT_NAME = re.compile(r"snapshot-(\d{16})\.snap")


def segment_file_name(seq: int) -> str:
    """The file name of log segment number ``seq``."""
    return f"wal-{seq:016d}.log"


def snapshot_file_name(covered_segment: int) -> str:
    """The file name of the snapshot covering segments up to ``covered_segment``."""
    return f"snapshot-{covered_segment:016d}.snap"


@dataclass(frozen=True, slots=True)
class Record:
    """One decoded log record (``key`` is empty and ``value`` ``b""`` for a SEAL)."""

    offset: int
    end: int
    batch: int
    flags: int
    kind: int
    key: str
    value: bytes


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A decoded snapshot file."""

    path: Path
    covered_segment: int
    covered_offset: int
    batch_last: int
    state: dict[str, bytes]


@dataclass(frozen=True, slots=True)
class SealedBatch:
    """A batch sealed by ``FileStorage.seal``: its number, its records encoded
    (``ends``: where each record ends in ``data``, the points a segment rotation
    may split at) and the writes to apply to the map once it is written."""

    batch: int
    data: bytes
    ends: list[int]
    writes: list[tuple[str, bytes, bytes | None]]


@dataclass(slots=True)
class _Cursor:
    """Where replay stands: the last batch seen, and whether it was committed."""

    batch: int
    committed: bool

    def batch_next(self) -> int:
        """The batch the next record must belong to."""
        return self.batch + 1 if self.committed else self.batch


class _InvalidRecord(Exception):
    """A record whose checksum holds but whose content is impossible: never a torn write."""


def encode_record(
    out: bytearray, batch: int, flags: int, kind: int, key: bytes, value: bytes
) -> None:
    """Append one record to ``out``."""
    assert len(key) <= KEY_BYTES_MAX
    assert len(value) <= VALUE_BYTES_MAX
    header = RECORD_HEADER.pack(RECORD_MAGIC, 0, len(value), batch, flags, kind, len(key))
    checksum = zlib.crc32(header[RECORD_CHECKSUMMED_FROM:])
    checksum = zlib.crc32(value, zlib.crc32(key, checksum))
    out += header[:4]
    out += checksum.to_bytes(4, "little")
    out += header[RECORD_CHECKSUMMED_FROM:]
    out += key
    out += value


def decode_record(data: bytes, offset: int) -> Record | str:
    """Decode the record at ``offset``, or return why the bytes there are no record.

    A returned reason describes damage a torn write could cause. A record whose
    checksum holds but whose fields are impossible raises ``_InvalidRecord``.
    Lengths beyond ``KEY_BYTES_MAX``/``VALUE_BYTES_MAX`` are rejected before
    anything is read, so a damaged length never makes us allocate or scan more.
    """
    available = len(data) - offset
    if available < RECORD_HEADER.size:
        return f"incomplete record header ({available} of {RECORD_HEADER.size} bytes)"
    magic, checksum, value_length, batch, flags, kind, key_length = RECORD_HEADER.unpack_from(
        data, offset
    )
    if magic != RECORD_MAGIC:
        return f"bad record magic {bytes(magic)!r}"
    if key_length > KEY_BYTES_MAX:
        return f"key length {key_length} exceeds KEY_BYTES_MAX={KEY_BYTES_MAX}"
    if value_length > VALUE_BYTES_MAX:
        return f"value length {value_length} exceeds VALUE_BYTES_MAX={VALUE_BYTES_MAX}"
    key_start = offset + RECORD_HEADER.size
    value_start = key_start + key_length
    end = value_start + value_length
    if end > len(data):
        return f"incomplete record ({end - offset} bytes long, {available} present)"
    view = memoryview(data)
    if zlib.crc32(view[offset + RECORD_CHECKSUMMED_FROM : end]) != checksum:
        return "checksum mismatch"
    _check_record_shape(flags, kind, key_length, value_length)
    try:
        key = bytes(view[key_start:value_start]).decode()
    except UnicodeDecodeError as error:
        raise _InvalidRecord("key is not UTF-8") from error
    return Record(offset, end, batch, flags, kind, key, bytes(view[value_start:end]))


def _check_record_shape(flags: int, kind: int, key_length: int, value_length: int) -> None:
    if flags & ~FLAG_COMMIT:
        raise _InvalidRecord(f"unknown flags {flags:#x}")
    if kind == KIND_SEAL:
        if key_length or value_length or flags != FLAG_COMMIT:
            raise _InvalidRecord("SEAL record with data or without COMMIT")
    elif kind in (KIND_PUT, KIND_DELETE):
        if key_length == 0:
            raise _InvalidRecord("empty key")
        if kind == KIND_DELETE and value_length:
            raise _InvalidRecord("DELETE record with a value")
    else:
        raise _InvalidRecord(f"unknown record kind {kind}")


def encode_segment_header(seq: int) -> bytes:
    """The header every segment file starts with."""
    fields = SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, 0, seq, 0)[:-4]
    return fields + zlib.crc32(fields).to_bytes(4, "little")


def encode_segment_mark(sequence: int, seq: int, batch: int) -> bytes:
    """One mark slot of segment ``seq``: every batch up to ``batch`` is durable."""
    fields = SEGMENT_MARK.pack(SEGMENT_MARK_MAGIC, sequence, seq, batch)
    data = fields + SEGMENT_MARK_CHECKSUM.pack(zlib.crc32(fields))
    return data + bytes(SEGMENT_MARK_BYTES - len(data))


def segment_mark_offset(sequence: int) -> int:
    """Where the slot that a mark of ``sequence`` goes to lies (slots alternate)."""
    return SEGMENT_MARK_OFFSET + (sequence % SEGMENT_MARK_SLOTS) * SEGMENT_MARK_BYTES


def decode_segment_marks(data: bytes, seq: int) -> tuple[int, int]:
    """``(sequence, batch)`` of the newest valid mark slot of segment ``seq`` whose
    first bytes are ``data`` (``(0, 0)``: none). A slot that is empty, torn
    (checksum mismatch) or names another segment does not count: a torn slot is
    the one a crash interrupted, and its flush never returned."""
    newest = (0, 0)
    for slot in range(SEGMENT_MARK_SLOTS):
        start = SEGMENT_MARK_OFFSET + slot * SEGMENT_MARK_BYTES
        fields = data[start : start + SEGMENT_MARK.size]
        if len(fields) < SEGMENT_MARK.size:
            continue
        (checksum,) = SEGMENT_MARK_CHECKSUM.unpack_from(data, start + SEGMENT_MARK.size)
        if zlib.crc32(fields) != checksum:
            continue
        magic, sequence, mark_seq, batch = SEGMENT_MARK.unpack(fields)
        if magic == SEGMENT_MARK_MAGIC and mark_seq == seq and sequence > newest[0]:
            newest = (sequence, batch)
    return newest


def _check_segment_header(path: Path, data: bytes, seq: int) -> None:
    if len(data) < SEGMENT_HEADER.size:
        raise LogDamageError(f"{path}: segment header truncated ({len(data)} bytes)", seq, 0)
    magic, version, _, header_seq, checksum = SEGMENT_HEADER.unpack_from(data)
    if magic != SEGMENT_MAGIC:
        raise LogDamageError(f"{path}: not a replicaio log segment (magic {magic!r})", seq, 0)
    if zlib.crc32(data[: SEGMENT_HEADER.size - 4]) != checksum:
        raise LogDamageError(f"{path}: segment header checksum mismatch", seq, 0)
    if version != FORMAT_VERSION:
        raise StorageCorruptError(
            f"{path}: log format version {version}; this replicaio reads only version "
            f"{FORMAT_VERSION} (see docs/storage.md, 'Format versions')"
        )
    if header_seq != seq:
        raise LogDamageError(f"{path}: header says segment {header_seq}, name says {seq}", seq, 0)
    if len(data) < SEGMENT_RECORDS_START:
        raise LogDamageError(
            f"{path}: segment's first sector truncated ({len(data)} of "
            f"{SEGMENT_RECORDS_START} bytes)", seq, 0,
        )


def decode_snapshot(path: Path, data: bytes) -> Snapshot:
    """Decode a snapshot file, raising ``StorageCorruptError`` if it is not intact."""
    if len(data) < SNAPSHOT_HEADER.size + SNAPSHOT_TRAILER.size:
        raise StorageCorruptError(f"{path}: snapshot truncated ({len(data)} bytes)")
    magic, version, _, covered, covered_offset, batch_last, count = SNAPSHOT_HEADER.unpack_from(
        data
    )
    if magic != SNAPSHOT_MAGIC:
        raise StorageCorruptError(f"{path}: not a replicaio snapshot (magic {magic!r})")
    body_end = len(data) - SNAPSHOT_TRAILER.size
    checksum, end_magic = SNAPSHOT_TRAILER.unpack_from(data, body_end)
    if end_magic != SNAPSHOT_END_MAGIC or zlib.crc32(memoryview(data)[:body_end]) != checksum:
        raise StorageCorruptError(f"{path}: snapshot checksum mismatch")
    if version != FORMAT_VERSION:
        raise StorageCorruptError(
            f"{path}: snapshot format version {version}; this replicaio reads only version "
            f"{FORMAT_VERSION} (see docs/storage.md, 'Format versions')"
        )
    state: dict[str, bytes] = {}
    offset = SNAPSHOT_HEADER.size
    for _ in range(count):
        if offset + SNAPSHOT_ENTRY.size > body_end:
            raise StorageCorruptError(f"{path}: snapshot entry at offset {offset} truncated")
        key_length, value_length = SNAPSHOT_ENTRY.unpack_from(data, offset)
        key_start = offset + SNAPSHOT_ENTRY.size
        end = key_start + key_length + value_length
        if not 0 < key_length <= KEY_BYTES_MAX or value_length > VALUE_BYTES_MAX or end > body_end:
            raise StorageCorruptError(f"{path}: snapshot entry at offset {offset} is malformed")
        try:
            key = data[key_start : key_start + key_length].decode()
        except UnicodeDecodeError as error:
            raise StorageCorruptError(f"{path}: snapshot key at {offset} is not UTF-8") from error
        state[key] = data[key_start + key_length : end]
        offset = end
    if offset != body_end or len(state) != count:
        raise StorageCorruptError(f"{path}: snapshot has trailing bytes or duplicate keys")
    return Snapshot(path, covered, covered_offset, batch_last, state)


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        assert written > 0
        view = view[written:]


def _pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        assert written > 0
        view = view[written:]
        offset += written


def _zeros_from(data: bytes, offset: int) -> bool:
    """Whether every byte of ``data`` from ``offset`` on is zero (preallocated space)."""
    return data.count(0, offset) == len(data) - offset


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileStorage:
    """A ``Storage`` in a directory: write-ahead log segments plus snapshots.

    Guarantees, given an honest ``fsync`` (see docs/storage.md for the
    assumptions): once ``sync`` returns, its writes survive power loss and
    process crashes; a crash during ``sync`` keeps a prefix of that batch;
    corruption of acknowledged data is detected by CRC32 and reported as
    ``StorageCorruptError`` rather than silently dropped (except inside the
    newest batch, where it is indistinguishable from a torn write).

    With ``fsync=False`` data survives process crashes only: for tests and
    throwaway nodes.

    Damage that may have cost acknowledged writes (see ``damage``) is reported
    rather than refused when the log still makes sense: a lost or damaged
    tail. With ``repair``, damage in the middle of the log (a bad or misplaced
    record followed by later batches, a damaged segment header, a missing
    segment, a damaged snapshot whose segments are gone) is reported too: the
    log is cut back to its intact prefix and the rest moved to ``damaged-<n>/``
    (``repair.py``), for a node that recovers what it lost from its peers
    (``Start.damaged``). Without ``repair`` it is refused. ``mark_syncs``
    (default) marks every sync in the superblock before ``sync`` returns (one
    more ``fdatasync`` of a 64-byte slot), which makes that report exact;
    without it only closes, rotations and compactions are marked, and any torn
    tail is reported as possibly acknowledged.

    ``preallocate_bytes`` (1 MiB by default; 0 turns it off) keeps that many
    zero bytes written ahead of the current segment's write position, so
    that a sync overwrites space the file already has and its flush commits
    no new file size; a close or a rotation trims the zeros away again.

    Bounds: a segment holds at most ``segment_bytes_max`` bytes (a single
    record larger than that gets a segment of its own); at most
    ``unsynced_bytes_max`` bytes of encoded records may wait for ``sync``, more
    raises ``StorageUsageError``; the log is compacted into a snapshot once it
    exceeds ``wal_bytes_compact_threshold`` and the size of the live data
    (``None`` disables this; ``compact`` may always be called).

    The map is also held in memory (for ``recover`` and snapshots). One thread
    at a time, except for the steps of ``sync`` (``seal`` on the buffering
    thread, ``write_sealed`` and ``compact_if_due`` on one log thread,
    ``mark_flushed`` on one mark thread; ``recover`` only with no sealed batch
    unwritten); ``close`` discards unsynced writes (``sync`` first to keep them).
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        segment_bytes_max: int = SEGMENT_BYTES_MAX_DEFAULT,
        fsync: bool = True,
        wal_bytes_compact_threshold: int | None = WAL_BYTES_COMPACT_THRESHOLD_DEFAULT,
        unsynced_bytes_max: int = UNSYNCED_BYTES_MAX_DEFAULT,
        mark_syncs: bool = True,
        repair: bool = False,
        preallocate_bytes: int = PREALLOCATE_BYTES_DEFAULT,
        marks_in_log: bool = True,
    ) -> None:
        if segment_bytes_max < SEGMENT_BYTES_MIN:
            raise StorageUsageError(f"segment_bytes_max must be >= {SEGMENT_BYTES_MIN}")
        if unsynced_bytes_max < RECORD_BYTES_MAX:
            raise StorageUsageError(
                f"unsynced_bytes_max must be >= {RECORD_BYTES_MAX} (one record of maximal size)"
            )
        if wal_bytes_compact_threshold is not None and wal_bytes_compact_threshold < 0:
            raise StorageUsageError("wal_bytes_compact_threshold must be >= 0 or None")
        if preallocate_bytes < 0:
            raise StorageUsageError("preallocate_bytes must be >= 0")
        self.directory = Path(directory)
        self._segment_bytes_max = segment_bytes_max
        self._fsync_enabled = fsync
        self._wal_bytes_compact_threshold = wal_bytes_compact_threshold
        self._unsynced_bytes_max = unsynced_bytes_max
        self._mark_syncs = mark_syncs
        # Marks in the segment's slots, carried by the next batch's flush (ADR 0045);
        # False: in the superblock, a flush of their own (ADR 0032).
        self._carry_marks = mark_syncs and marks_in_log
        self._repair = repair
        self._preallocate_bytes = preallocate_bytes
        self._superblock: Superblock | None = None
        self.damage: StorageDamage | None = None  # what the recovery below found lost
        # Buffered writes: (key, encoded key, value or None for a delete).
        self._pending: list[tuple[str, bytes, bytes | None]] = []
        self._pending_bytes = 0
        self._state: dict[str, bytes] = {}
        self._state_bytes = 0  # sum of key and value lengths, to decide when compaction pays
        self._segments: dict[int, int] = {}  # live segment seq -> size in bytes
        self._segment_seq = 0  # the segment appended to
        self._segment_fd = -1
        self._segment_file_bytes = 0  # the current segment file's size (zeros past the used)
        self._zero_tail = False  # the recovered last segment ended in preallocated zeros
        self._batch_last = 0  # last batch written and committed
        self._batch_sealed = 0  # last batch sealed (>= _batch_last; seal() numbers them)
        self._batch_marked = 0  # last batch a durable slot mark names (see batch_marked)
        self._slot_sequence = 0  # sequence of the current segment's newest mark slot
        self._segment_first_batch: int | None = None  # first batch with records in it
        # Replay: the newest valid mark slot (sequence, batch) and first batch of each segment.
        self._replayed_marks: dict[int, tuple[int, int]] = {}
        self._replayed_first: dict[int, int] = {}
        # One superblock writer at a time: marks, rotations, compactions, epochs.
        self._superblock_lock = threading.Lock()
        self._closed_reason: str | None = None
        self._lock_fd = -1
        self._directory_fd = -1
        self.writes = 0
        self.syncs = 0
        self.fsyncs = 0
        self.bytes_written = 0
        self.rotations = 0
        self.compactions = 0
        self.mark_writes = 0  # mark slots written (each made durable by a segment flush)
        self.marks_carried = 0  # of them, those a batch's flush carried (no flush of their own)
        self.torn_bytes_discarded = 0  # by the recovery in the constructor
        try:
            if not self.directory.is_dir():
                self.directory.mkdir(parents=True)
                _fsync_directory(self.directory.parent)
            self._directory_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            self._lock_fd = self._lock()
            self._recover_from_disk()
        except BaseException:
            self._release_descriptors()
            raise

    # -- the Storage interface ---------------------------------------------------------------

    def put(self, key: str, value: bytes) -> None:
        """Buffer ``key := value``; durable once a later ``sync`` returns."""
        if value is None:
            raise StorageUsageError("put needs a bytes value (use delete to remove a key)")
        check_key_value(key, value)
        data = bytes(value)  # a copy unless already bytes: the caller may mutate a buffer
        self._buffer(key, data, len(data))

    def delete(self, key: str) -> None:
        """Buffer the removal of ``key`` (absent keys are fine)."""
        check_key_value(key, None)
        self._buffer(key, None, 0)

    def sync(self) -> None:
        """Write every buffered write as one batch and fsync it (group commit).

        On an ``OSError`` the store closes itself (the on-disk tail is unknown;
        reopening recovers a valid prefix) and the error propagates.
        """
        self._check_open()
        self._sync_batch()
        if self._mark_syncs:
            self._mark_flushed()
        self.compact_if_due()

    # -- the same in steps, on two threads (the pipelined host, ADR 0037) ---------------------

    def seal(self) -> SealedBatch | None:
        """Take every buffered write as the next batch, numbered and encoded
        (``None`` if nothing is buffered). On the thread that buffers (the
        host's loop): later writes go to the batch after it.

        Sealed batches are handed to :meth:`write_sealed` in the order they
        were sealed; until that returns, a sealed batch is not durable (nor in
        the map ``recover`` returns)."""
        self._check_open()
        if not self._pending:
            return None
        pending = self._pending
        self._pending = []
        self._pending_bytes = 0
        self._batch_sealed += 1
        batch = self._batch_sealed
        chunk = bytearray()
        ends: list[int] = []
        last = len(pending) - 1
        for index, (_, key_bytes, value) in enumerate(pending):
            flags = FLAG_COMMIT if index == last else 0
            kind = KIND_DELETE if value is None else KIND_PUT
            encode_record(chunk, batch, flags, kind, key_bytes, value or b"")
            ends.append(len(chunk))
        return SealedBatch(batch, bytes(chunk), ends, pending)

    def write_sealed(self, sealed: SealedBatch) -> None:
        """Append ``sealed`` to the log and flush it (``fdatasync``): durable on
        return, and applied to the map. One thread at a time (the host's log
        thread), in batch order. Does not mark ``sealed`` (see
        :meth:`mark_flushed`); with marks in the log (ADR 0045) the same flush
        carries the mark of the batch before it if that one was flushed and not
        yet marked: :attr:`batch_marked` says what is marked on return.

        On an ``OSError`` the store closes itself and the error propagates."""
        self._check_open()
        assert sealed.batch == self._batch_last + 1, (sealed.batch, self._batch_last)
        self.syncs += 1
        try:
            self._write_sealed(sealed)
        except OSError as error:
            self._fail(error)
            raise
        for key, key_bytes, value in sealed.writes:
            self._apply(key, len(key_bytes), value)

    def mark_flushed(self) -> int:
        """Mark every batch whose log flush has returned; return the last one. A
        mark that finds them marked writes nothing. With marks in the log (ADR
        0045): a mark slot written and flushed with the segment, on the log
        thread (it writes the segment). Else in the superblock (ADR 0032),
        thread-safe against the log thread, which only moves that number on
        after a flush."""
        self._check_open()
        return self._mark_flushed()

    @property
    def batch_marked(self) -> int:
        """The last batch whose mark is durable (in the log or in the superblock):
        what may be released (``mark_syncs``); read by any thread."""
        superblock = self._superblock
        synced = superblock.state.synced_batch if superblock is not None else 0
        return max(self._batch_marked, synced)

    def compact_if_due(self) -> None:
        """Compact if the log has outgrown the threshold and the live data (on the
        thread that writes the log: it reads the map the writes are applied to)."""
        threshold = self._wal_bytes_compact_threshold
        wal_bytes = self.wal_bytes
        # Compacting only once the log outgrows the live data bounds write amplification.
        if threshold is not None and wal_bytes > threshold and wal_bytes > self._state_bytes:
            try:
                self._compact()
            except OSError as error:
                self._fail(error)
                raise

    def recover(self) -> dict[str, bytes]:
        """Return a fresh copy of the durable state (as of the last ``sync``)."""
        self._check_open()
        return dict(self._state)

    def close(self) -> None:
        """Release the files and the lock; unsynced writes are discarded. Idempotent.

        Marks the last sync in the superblock if it was not yet (``mark_syncs``
        off), so that a clean shutdown is always exact about what it synced.
        """
        self._pending.clear()
        self._pending_bytes = 0
        if self._closed_reason is None:
            self._closed_reason = "closed"
            with contextlib.suppress(OSError):
                self._trim_segment()
                self._mark()
        self._release_descriptors()

    def __enter__(self) -> FileStorage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Dropping the object without close() is a crash: unsynced writes are lost,
        # and the lock must not outlive the object.
        with contextlib.suppress(Exception):
            self._release_descriptors()

    # -- beyond the interface ------------------------------------------------------------------

    @property
    def carries_marks(self) -> bool:
        """Whether syncs are marked in the log's slots, a batch's mark carried by
        the next batch's flush (ADR 0045), rather than in the superblock."""
        return self._carry_marks

    @property
    def fsync_enabled(self) -> bool:
        """Whether this store calls ``fsync`` (see the class docstring)."""
        return self._fsync_enabled

    @property
    def wal_bytes(self) -> int:
        """Bytes in the live log segments (those not yet covered by a snapshot)."""
        return sum(self._segments.copy().values())  # (a copy: the log thread may rotate)

    @property
    def segment_count(self) -> int:
        """Number of live log segments."""
        return len(self._segments)

    @property
    def batch_last(self) -> int:
        """The number of the last batch written to the log and committed."""
        return self._batch_last

    @property
    def epoch(self) -> int:
        """The highest number ever passed to ``set_epoch``; survives any damage to the log."""
        return self._superblock.state.epoch if self._superblock is not None else 0

    def set_epoch(self, epoch: int) -> None:
        """Durably raise the epoch (written to every superblock copy before returning)."""
        self._check_open()
        if epoch < self.epoch:
            raise StorageUsageError(f"the epoch never goes back: {epoch} < {self.epoch}")
        assert self._superblock is not None
        try:
            with self._superblock_lock:
                self._superblock.write(
                    replace(self._superblock.state, epoch=epoch), every_slot=True
                )
        except OSError as error:
            self._fail(error)
            raise

    def clear_damage(self) -> None:
        """The node has durably reacted to ``damage``: later opens no longer report it."""
        self._check_open()
        assert self._superblock is not None
        if self._superblock.state.damage == DAMAGE_NONE:
            return
        try:
            with self._superblock_lock:
                self._superblock.write(replace(self._superblock.state, damage=DAMAGE_NONE))
        except OSError as error:
            self._fail(error)
            raise

    def _mark(self) -> int:
        """Record in the superblock that every batch so far is synced; return the
        last. Under the superblock lock: the pipelined host marks on a thread of
        its own while the log thread may rotate or compact (which mark too)."""
        return self._mark_superblock(self._batch_last)  # read once: the log thread moves it

    def _mark_flushed(self) -> int:
        """Mark every flushed batch: a mark slot and a segment flush of its own
        (ADR 0045; a lone batch), or the superblock (ADR 0032)."""
        if not self._carry_marks:
            return self._mark()
        batch = self._batch_last
        if batch > self.batch_marked:
            try:
                self._write_mark_slot(batch)
                self._flush_segment()
            except OSError as error:
                self._fail(error)
                raise
            self._batch_marked = batch
        return batch

    def _write_mark_slot(self, batch: int) -> None:
        """Write the mark of ``batch`` into the current segment's next slot (not
        durable until the segment's next flush). The segment's first mark, and
        the first that names a batch with records in it, go to the superblock
        first (a flush of their own, at most twice per segment): otherwise a loss
        of the whole last segment, slots and all, would go unseen, whether the
        batches it lost lay in it or in the tail of the segment before."""
        first = self._segment_first_batch
        superblock = self._superblock
        if superblock is not None and superblock.state.synced_batch < batch and (
                self._slot_sequence == 0
                or (first is not None and batch >= first
                    and superblock.state.synced_batch < first)):
            self._mark_superblock(batch)
        self._slot_sequence += 1
        os.pwrite(self._segment_fd, encode_segment_mark(self._slot_sequence, self._segment_seq,
                                                        batch),
                  segment_mark_offset(self._slot_sequence))
        self.mark_writes += 1

    def _mark_superblock(self, batch: int) -> int:
        """Record in the superblock that every batch up to ``batch`` is synced."""
        superblock = self._superblock
        if superblock is None:
            return batch
        with self._superblock_lock:
            if superblock.state.synced_batch < batch:
                try:
                    superblock.write(replace(superblock.state, synced_batch=batch))
                except OSError as error:
                    self._fail(error)
                    raise
        return batch

    def compact(self) -> None:
        """Sync, then fold the whole log into a snapshot and delete the covered segments.

        Crash-safe at every step: the snapshot becomes visible atomically (by
        rename, after fsync of the file, followed by fsync of the directory),
        and segments are deleted only after that.
        """
        self._check_open()
        self._sync_batch()
        try:
            self._compact()
            self._mark()
        except OSError as error:
            self._fail(error)
            raise

    def _compact(self) -> None:
        # The snapshot covers the map as written (every batch up to _batch_last).
        # Writes buffered or sealed meanwhile belong to later batches: the loop
        # buffers the next batch while the pipelined host's log thread compacts
        # (ADR 0037), and those batches go to the segment started below.
        assert self._batch_sealed >= self._batch_last
        if self._segments[self._segment_seq] > SEGMENT_RECORDS_START:
            self._rotate()
        covered = self._segment_seq - 1
        if covered not in self._segments:
            return  # nothing but an empty segment since the last snapshot
        covered_offset = self._segments[covered]
        fd = self._create_atomically(
            snapshot_file_name(covered),
            lambda fd: self._write_snapshot(fd, covered, covered_offset),
        )
        os.close(fd)
        self._delete_covered(covered)
        self.compactions += 1

    # -- writing -------------------------------------------------------------------------------

    def _buffer(self, key: str, value: bytes | None, value_length: int) -> None:
        self._check_open()
        key_bytes = key.encode()
        record_bytes = RECORD_HEADER.size + len(key_bytes) + value_length
        if self._pending_bytes + record_bytes > self._unsynced_bytes_max:
            raise StorageUsageError(
                f"more than unsynced_bytes_max={self._unsynced_bytes_max} bytes buffered; "
                "the host must sync() each batch"
            )
        self._pending.append((key, key_bytes, value))
        self._pending_bytes += record_bytes
        self.writes += 1

    def _sync_batch(self) -> None:
        sealed = self.seal()
        if sealed is None:
            self.syncs += 1
            return  # nothing buffered: everything acknowledged is already durable
        self.write_sealed(sealed)

    def _write_sealed(self, sealed: SealedBatch) -> None:
        """Append ``sealed`` as the next batch; rotate segments on the way if needed
        (between two of its records, never inside one)."""
        data = memoryview(sealed.data)
        start = 0  # the first byte of data not yet appended
        previous = 0  # where the record being looked at starts
        for end in sealed.ends:
            used = self._segments[self._segment_seq] + previous - start
            if used + end - previous > self._segment_bytes_max and used > SEGMENT_RECORDS_START:
                self._append(data[start:previous])
                start = previous
                self._rotate()
            previous = end
        self._append(data[start:])
        if self._segment_first_batch is None:
            self._segment_first_batch = sealed.batch
        # The batch before, flushed and not marked: its mark rides on this flush
        # (ADR 0045). Written after the data, into the segment the flush covers.
        carried = self._batch_last if self._carry_marks else 0
        if carried and carried > self.batch_marked:
            self._write_mark_slot(carried)
        else:
            carried = 0
        self._flush_segment()
        self._batch_last = sealed.batch
        if carried:
            self._batch_marked = carried
            self.marks_carried += 1

    def _append(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at the segment's end (not durable until ``_flush_segment``).

        Zeros are written past it when it reaches the preallocated end: a crash
        before the flush leaves a prefix of ``data`` followed by zeros or by the
        end of the file, which recovery reads alike.
        """
        offset = self._segments[self._segment_seq]
        end = offset + len(data)
        _pwrite_all(self._segment_fd, data, offset)
        if self._preallocate_bytes and end > self._segment_file_bytes:
            target = max(end, min(end + self._preallocate_bytes, self._segment_bytes_max))
            if target > end:
                _pwrite_all(self._segment_fd, bytes(target - end), end)
            self._segment_file_bytes = target
        self._segment_file_bytes = max(self._segment_file_bytes, end)
        self._segments[self._segment_seq] = end
        self.bytes_written += len(data)

    def _flush_segment(self) -> None:
        """Make the segment's writes durable: data and size, not its times."""
        if self._fsync_enabled:
            os.fdatasync(self._segment_fd)
            self.fsyncs += 1

    def _trim_segment(self) -> None:
        """Cut the current segment's preallocated zeros and make the cut durable."""
        used = self._segments.get(self._segment_seq, 0)
        if self._segment_fd >= 0 and self._segment_file_bytes > used:
            os.ftruncate(self._segment_fd, used)
            self._segment_file_bytes = used
            self._fsync(self._segment_fd)

    def _apply(self, key: str, key_length: int, value: bytes | None) -> None:
        previous = self._state.pop(key, None)
        if previous is not None:
            self._state_bytes -= key_length + len(previous)
        if value is not None:
            self._state[key] = value
            self._state_bytes += key_length + len(value)
        assert self._state_bytes >= 0

    def _rotate(self) -> None:
        """Make the current segment durable (no zeros after its records: every
        segment but the last ends with its last record), then start the next one."""
        self._trim_segment()
        self._fsync(self._segment_fd)
        os.close(self._segment_fd)
        self._segment_fd = -1
        self._open_new_segment(self._segment_seq + 1)
        self.rotations += 1
        if not self._mark_syncs:
            self._mark()  # the closed segment is durable: mark what it held

    def _open_new_segment(self, seq: int) -> None:
        assert seq not in self._segments
        # The header and empty mark slots: the first sector, before any record.
        header = encode_segment_header(seq).ljust(SEGMENT_RECORDS_START, b"\0")
        self._segment_fd = self._create_atomically(
            segment_file_name(seq), lambda fd: _write_all(fd, header)
        )
        self._segment_seq = seq
        self._segments[seq] = len(header)
        self._segment_file_bytes = len(header)
        self._slot_sequence = 0
        self._segment_first_batch = None

    def _create_atomically(self, name: str, write: Callable[[int], None]) -> int:
        """Create ``name`` with the content ``write`` produces, all or nothing.

        Returns a descriptor of the new file, open for writing after the content
        (no ``O_APPEND``: segments are written with ``pwrite`` at their end).
        """
        temporary = self.directory / (name + TEMPORARY_SUFFIX)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write(fd)
            self._fsync(fd)
            os.rename(temporary, self.directory / name)
            self._fsync(self._directory_fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _write_snapshot(self, fd: int, covered: int, covered_offset: int) -> None:
        header = SNAPSHOT_HEADER.pack(
            SNAPSHOT_MAGIC,
            FORMAT_VERSION,
            0,
            covered,
            covered_offset,
            self._batch_last,
            len(self._state),
        )
        checksum = zlib.crc32(header)
        chunk = bytearray(header)
        for key, value in self._state.items():
            key_bytes = key.encode()
            entry = SNAPSHOT_ENTRY.pack(len(key_bytes), len(value))
            checksum = zlib.crc32(value, zlib.crc32(key_bytes, zlib.crc32(entry, checksum)))
            chunk += entry
            chunk += key_bytes
            chunk += value
            if len(chunk) >= SNAPSHOT_WRITE_CHUNK_BYTES:
                _write_all(fd, chunk)
                chunk.clear()
        chunk += SNAPSHOT_TRAILER.pack(checksum, SNAPSHOT_END_MAGIC)
        _write_all(fd, chunk)

    def _delete_covered(self, covered: int) -> None:
        """Delete the segments up to ``covered`` and snapshots older than its snapshot."""
        for seq in sorted(self._segments):
            if seq <= covered:
                os.unlink(self.directory / segment_file_name(seq))
                del self._segments[seq]
        for name in os.listdir(self.directory):
            match = SNAPSHOT_NAME.fullmatch(name)
            if match and int(match.group(1)) < covered:
                os.unlink(self.directory / name)
        self._fsync(self._directory_fd)

    def _fsync(self, fd: int) -> None:
        if self._fsync_enabled:
            os.fsync(fd)
            self.fsyncs += 1

    # -- opening and recovery ------------------------------------------------------------------

    def _lock(self) -> int:
        path = self.directory / LOCK_FILE_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StorageUsageError(
                f"{self.directory} is already open by another FileStorage (lock {path} is "
                f"held; pid {holder}); two writers would interleave the log"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # Fixed width, no truncation: a truncate-and-rewrite makes ext4 flush on close.
        os.pwrite(fd, f"{os.getpid():<20}\n".encode(), 0)
        return fd

    def _recover_from_disk(self) -> None:
        read = read_superblock(self.directory)
        # Cutting needs the superblock: without it the epoch and what was synced are unknown.
        repair = self._repair and read.state is not None
        segments, snapshots, temporaries = self._list_files()
        snapshot, cut = self._choose_snapshot(segments, snapshots, repair)
        covered = snapshot.covered_segment if snapshot else 0
        cursor = _Cursor(batch=snapshot.batch_last if snapshot else 0, committed=True)
        if snapshot:
            self._state = snapshot.state
            self._state_bytes = sum(len(k.encode()) + len(v) for k, v in snapshot.state.items())
        if cut is None:
            origin = f"snapshot {snapshot.path}" if snapshot else "the first segment"
            cut = self._replay_log(segments, covered, origin, cursor, repair)
        # Nothing was modified before this point: a refusal leaves the evidence intact.
        obsolete = [path for seq, path in segments.items() if seq <= covered]
        obsolete += [path for seq, path in snapshots.items() if seq < covered]
        self._unlink_all(obsolete + temporaries)
        # Record what was lost before the log changes: a crash from here on keeps the report.
        committed = cursor.batch if cursor.committed else cursor.batch - 1
        self._open_superblock(read, committed, cut)
        if cut is not None:
            self._cut(cut)
        if self._segments:
            self._segment_seq = max(self._segments)
            path = self.directory / segment_file_name(self._segment_seq)
            self._segment_fd = os.open(path, os.O_WRONLY)
            self._truncate_torn_tail(path)
            self._open_marks(committed)
        else:
            self._open_new_segment(covered + 1)
        self._batch_last = self._batch_sealed = cursor.batch
        if not cursor.committed:
            self._seal(cursor.batch)
        self._mark()

    def _open_marks(self, committed: int) -> None:
        """Take up the last segment's mark slots. If they name a batch past
        ``committed`` (a loss, now recorded in the superblock), both are
        rewritten to ``committed``: the same loss is not found again at the next
        open, once the node has reacted to it (``clear_damage``)."""
        seq = self._segment_seq
        sequence, marked = self._replayed_marks.get(seq, (0, 0))
        self._slot_sequence = sequence
        self._segment_first_batch = self._replayed_first.get(seq)
        if marked > committed:
            for _ in range(SEGMENT_MARK_SLOTS):
                self._write_mark_slot(committed)
            self._flush_segment()

    def _replay_log(self, segments: dict[int, Path], covered: int, origin: str,
                    cursor: _Cursor, repair: bool) -> Cut | None:
        """Replay the segments after ``covered``; where the log is damaged, the cut
        (``repair``) or a refusal."""
        live = sorted(seq for seq in segments if seq > covered)
        try:
            for expected, seq in enumerate(live, start=covered + 1):
                if seq != expected:
                    raise LogDamageError(
                        f"{self.directory}: log segments {live} do not continue from {origin}: "
                        f"a segment is missing", expected, 0,
                    )
                self._segments[seq] = self._replay_segment(
                    segments[seq], seq, seq == live[-1], cursor
                )
        except LogDamageError as error:
            if not repair:
                raise StorageCorruptError(f"{error}; refusing to open") from error
            if error.offset:
                self._segments[error.seq] = error.offset
            later = [path for seq, path in segments.items() if seq > error.seq]
            return Cut(error.seq, error.offset, str(error), later)
        return None

    def _cut(self, cut: Cut) -> None:
        """Take the log past ``cut`` out of use (into the quarantine the report names)."""
        assert self.damage is not None
        segment = self.directory / segment_file_name(cut.seq)
        quarantine(self.directory, self._directory_fd, segment, cut,
                   self.directory / self.damage.quarantine, fsync=self._fsync_enabled)

    def _open_superblock(self, read: SuperblockRead, committed: int, cut: Cut | None) -> None:
        """Classify what the replay lost (``self.damage``) and make it durable."""
        previous = read.state
        quarantined = ""
        if cut is not None:
            segment = self.directory / segment_file_name(cut.seq)
            self.torn_bytes_discarded = bytes_past(cut, segment)
            quarantined = quarantine_path(self.directory).name
            code, detail = DAMAGE_MID_LOG, (
                f"{cut.reason}: the log is cut back to batch {committed}, its intact prefix; "
                f"{self.torn_bytes_discarded} bytes of log after it moved to {quarantined}/"
            )
        else:
            marked = max((batch for _, batch in self._replayed_marks.values()), default=0)
            code, detail = classify(read, committed, self.torn_bytes_discarded, self.directory,
                                    marked)
        state = previous or SuperblockState()
        target = replace(
            state,
            synced_batch=min(state.synced_batch, committed) if previous else committed,
            damage=state.damage or code,
            exact=self._mark_syncs,
        )
        if state.damage:
            earlier = DAMAGE_NAMES.get(state.damage, f"damage code {state.damage}")
            detail = f"{self.directory}: {earlier} found at an earlier start and not yet " + (
                f"recovered from; {detail}" if detail else "recovered from"
            )
            self.damage = StorageDamage(
                "reported earlier", detail, self.torn_bytes_discarded, quarantined
            )
        elif code:
            self.damage = StorageDamage(
                DAMAGE_NAMES[code], detail, self.torn_bytes_discarded, quarantined
            )
        superblock = Superblock(self.directory, target, fsync=self._fsync_enabled)
        superblock.open_or_create(previous is not None, self._directory_fd)
        self._superblock = superblock
        if previous is not None and target != state:
            superblock.write(target)

    def _list_files(self) -> tuple[dict[int, Path], dict[int, Path], list[Path]]:
        """Segments and snapshots by number, and leftovers of unfinished atomic creations."""
        segments: dict[int, Path] = {}
        snapshots: dict[int, Path] = {}
        temporaries: list[Path] = []
        for name in os.listdir(self.directory):
            path = self.directory / name
            if name.endswith(TEMPORARY_SUFFIX):
                temporaries.append(path)
            elif match := SEGMENT_NAME.fullmatch(name):
                segments[int(match.group(1))] = path
            elif match := SNAPSHOT_NAME.fullmatch(name):
                snapshots[int(match.group(1))] = path
        return segments, snapshots, temporaries

    def _choose_snapshot(
        self, segments: dict[int, Path], snapshots: dict[int, Path], repair: bool
    ) -> tuple[Snapshot | None, Cut | None]:
        """The newest intact snapshot; a damaged one is skipped only if nothing is
        lost by it, else the store refuses or (``repair``) cuts the log after the
        older snapshot chosen (or all of it)."""
        damaged: list[str] = []
        damaged_paths: list[Path] = []
        chosen: Snapshot | None = None
        for covered in sorted(snapshots, reverse=True):
            try:
                chosen = decode_snapshot(snapshots[covered], snapshots[covered].read_bytes())
                break
            except StorageCorruptError as error:
                damaged.append(str(error))
                damaged_paths.append(snapshots[covered])
        if damaged:
            covered = chosen.covered_segment if chosen else 0
            if covered + 1 not in segments:
                reason = "; ".join(damaged) + (
                    f"; segment {covered + 1} is gone, so nothing else holds the data it covered"
                )
                if not repair:
                    raise StorageCorruptError(f"{reason}: refusing to open")
                later = [path for seq, path in segments.items() if seq > covered]
                return chosen, Cut(covered + 1, 0, reason, later + damaged_paths)
        return chosen, None

    def _replay_segment(self, path: Path, seq: int, is_last: bool, cursor: _Cursor) -> int:
        """Apply the records of one segment; return its valid length.

        Bytes past the returned length form a torn tail (possible only in the
        last segment); they are truncated by ``_truncate_torn_tail``. A tail of
        zeros in the last segment is preallocated space, read as the end of the
        log (as a file cut there), and kept.
        """
        data = path.read_bytes()
        _check_segment_header(path, data, seq)
        self._replayed_marks[seq] = decode_segment_marks(data, seq)
        offset = SEGMENT_RECORDS_START
        while offset < len(data):
            try:
                result = decode_record(data, offset)
            except _InvalidRecord as error:
                raise LogDamageError(
                    f"{path}: invalid record at offset {offset}: {error}", seq, offset
                ) from error
            if isinstance(result, str):
                if is_last and _zeros_from(data, offset):
                    self._zero_tail = True
                    return offset
                self._check_torn(path, seq, data, offset, result, is_last, cursor)
                self.torn_bytes_discarded = len(data) - offset
                return offset
            if result.batch != cursor.batch_next():
                raise LogDamageError(
                    f"{path}: record at offset {offset} belongs to batch {result.batch}, "
                    f"expected {cursor.batch_next()}: records are missing or misplaced",
                    seq, offset,
                )
            if offset == SEGMENT_RECORDS_START:
                self._replayed_first[seq] = result.batch
            if result.kind != KIND_SEAL:
                value = result.value if result.kind == KIND_PUT else None
                self._apply(result.key, len(result.key.encode()), value)
            cursor.batch = result.batch
            cursor.committed = bool(result.flags & FLAG_COMMIT)
            offset = result.end
        assert offset == len(data)
        return offset

    def _check_torn(
        self, path: Path, seq: int, data: bytes, offset: int, reason: str, is_last: bool,
        cursor: _Cursor,
    ) -> None:
        """Return if the bad record at ``offset`` may be a torn write; raise otherwise."""
        if not is_last:
            raise LogDamageError(
                f"{path}: bad record at offset {offset} ({reason}) in a segment that is not "
                "the last: acknowledged data is damaged", seq, offset,
            )
        # A crash tears only the batch being written: the one after the last record.
        torn_batch = cursor.batch_next()
        follower = self._find_record(data, offset + 1)
        while follower is not None:
            if follower.batch != torn_batch:
                raise LogDamageError(
                    f"{path}: bad record at offset {offset} ({reason}) but a valid record of "
                    f"batch {follower.batch} follows at offset {follower.offset}: acknowledged "
                    "data is damaged (not a torn write)", seq, offset,
                )
            follower = self._find_record(data, follower.end)

    @staticmethod
    def _find_record(data: bytes, start: int) -> Record | None:
        """The first valid record at or after ``start``, found by scanning for its magic."""
        position = data.find(RECORD_MAGIC, start)
        while position >= 0:
            try:
                result = decode_record(data, position)
            except _InvalidRecord:
                result = "invalid"
            if isinstance(result, Record):
                return result
            position = data.find(RECORD_MAGIC, position + 1)
        return None

    def _truncate_torn_tail(self, path: Path) -> None:
        length = self._segments[self._segment_seq]
        size = os.fstat(self._segment_fd).st_size
        self._segment_file_bytes = size  # zeros past ``length`` (preallocated) are kept
        if size != length and not self._zero_tail:
            assert self.torn_bytes_discarded > 0
            os.ftruncate(self._segment_fd, length)
            self._segment_file_bytes = length
            self._fsync(self._segment_fd)

    def _seal(self, batch: int) -> None:
        """End ``batch``, whose tail was torn away, so that the next batch may follow it."""
        record = bytearray()
        encode_record(record, batch, FLAG_COMMIT, KIND_SEAL, b"", b"")
        used = self._segments[self._segment_seq]
        if used + len(record) > self._segment_bytes_max and used > SEGMENT_RECORDS_START:
            self._rotate()
        if self._segment_first_batch is None:
            self._segment_first_batch = batch
        self._append(record)
        self._flush_segment()

    def _unlink_all(self, paths: list[Path]) -> None:
        """Delete leftovers: segments a snapshot covers, older snapshots, temporaries."""
        for path in paths:
            os.unlink(path)
        if paths:
            self._fsync(self._directory_fd)

    # -- lifecycle -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed_reason is not None:
            reason = self._closed_reason
            raise StorageUsageError(f"FileStorage({self.directory}) used after {reason}")

    def _fail(self, error: OSError) -> None:
        self._closed_reason = f"an I/O error ({error}); reopen it to recover"
        self._pending.clear()
        self._release_descriptors()

    def _release_descriptors(self) -> None:
        superblock = getattr(self, "_superblock", None)
        if superblock is not None:
            superblock.close()
        for name in ("_segment_fd", "_lock_fd", "_directory_fd"):
            fd = getattr(self, name, -1)
            if fd >= 0:
                setattr(self, name, -1)
                os.close(fd)
