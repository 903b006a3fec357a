"""The superblock: what a ``FileStorage`` must remember even if its log is damaged.

The log alone cannot tell a torn write of data that was never acknowledged
from the loss of data that was: both leave a log that ends early, maybe in
the middle of a record. The superblock is a small file, kept apart from the
log, holding three facts (after TigerBeetle's superblock and Alagappan et
al., "Protocol-Aware Recovery for Consensus-Based Storage", FAST 2018):

* ``synced_batch``: every batch up to this number had been fsynced, and so
  possibly acknowledged. A log that recovers to an earlier batch lost
  acknowledged data. With ``exact`` set, the writer marked *every* sync right
  after its fsync and before ``sync`` returned, so a torn batch *after*
  ``synced_batch`` was never acknowledged: an honest torn write.
* ``damage``: a loss was detected at an earlier open and the node has not yet
  acknowledged it (``FileStorage.clear_damage``). It survives crashes between
  the detection and the node's reaction, so a loss is never forgotten.
* ``epoch``: a number the host raises (``FileStorage.set_epoch``) and that
  never goes back, whatever happens to the log: the node's incarnation.

Layout: ``SLOT_COUNT`` copies (slots) of ``SLOT_BYTES`` bytes each, written in
place with ``pwrite`` and made durable with ``fdatasync``. A write goes to
the slot after the newest one and carries the next sequence number; readers
take the valid slot with the highest sequence. A write of one slot lies in
one sector, so a torn write damages at most that slot, and the other still
holds the previous state. ``set_epoch`` writes every slot (one after the
other), so a later damaged slot never hides a raised epoch. The file itself
is created atomically (temporary name, fsync, rename, directory fsync).

This module is the one place the superblock's format lives: FORMAT_VERSION
here is independent of the log's.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

from replicaio.storage.base import StorageCorruptError

SUPERBLOCK_FILE_NAME = "SUPERBLOCK"
SUPERBLOCK_FORMAT_VERSION = 1
SUPERBLOCK_MAGIC = b"RSUP"
# magic, version, flags, sequence, epoch, synced batch, damage code; then CRC32 of those.
SLOT = struct.Struct("<4sHHQQQI")
SLOT_CHECKSUM = struct.Struct("<I")
SLOT_BYTES = 64
SLOT_COUNT = 2
FLAG_EXACT = 1  # every sync was marked before it returned

DAMAGE_NONE = 0
DAMAGE_LOST_SYNCED = 1  # the log recovered to before a batch known to be synced
DAMAGE_TAIL_UNCERTAIN = 2  # a torn tail that may have been acknowledged (marks not exact)
DAMAGE_MID_LOG = 3  # damage inside the log: cut back to its intact prefix (repair.py)
DAMAGE_NAMES = {
    DAMAGE_LOST_SYNCED: "lost synced writes",
    DAMAGE_TAIL_UNCERTAIN: "damaged tail, possibly acknowledged",
    DAMAGE_MID_LOG: "damaged log cut back to its intact prefix",
}

assert SLOT.size + SLOT_CHECKSUM.size <= SLOT_BYTES


@dataclass(frozen=True, slots=True)
class SuperblockState:
    """One slot's content."""

    sequence: int = 0
    epoch: int = 0
    synced_batch: int = 0
    damage: int = DAMAGE_NONE
    exact: bool = False


def encode_slot(state: SuperblockState) -> bytes:
    """One slot, padded to ``SLOT_BYTES``."""
    fields = SLOT.pack(
        SUPERBLOCK_MAGIC, SUPERBLOCK_FORMAT_VERSION, FLAG_EXACT if state.exact else 0,
        state.sequence, state.epoch, state.synced_batch, state.damage,
    )
    data = fields + SLOT_CHECKSUM.pack(zlib.crc32(fields))
    return data + bytes(SLOT_BYTES - len(data))


def decode_slot(data: bytes) -> SuperblockState | None:
    """The slot's content, or ``None`` if it is damaged or empty."""
    if len(data) < SLOT.size + SLOT_CHECKSUM.size:
        return None
    fields = data[: SLOT.size]
    (checksum,) = SLOT_CHECKSUM.unpack_from(data, SLOT.size)
    if zlib.crc32(fields) != checksum:
        return None
    magic, version, flags, sequence, epoch, synced_batch, damage = SLOT.unpack(fields)
    if magic != SUPERBLOCK_MAGIC or version != SUPERBLOCK_FORMAT_VERSION or flags & ~FLAG_EXACT:
        return None
    return SuperblockState(sequence, epoch, synced_batch, damage, bool(flags & FLAG_EXACT))


@dataclass(frozen=True, slots=True)
class SuperblockRead:
    """What an open found: the newest valid slot (``None``: no superblock file)
    and whether every slot was valid (only then is ``exact`` trusted)."""

    state: SuperblockState | None
    all_slots_valid: bool


def read_superblock(directory: Path) -> SuperblockRead:
    """Read the superblock of ``directory``; refuse if the file exists but no slot is valid."""
    path = directory / SUPERBLOCK_FILE_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return SuperblockRead(None, all_slots_valid=False)
    slots = [decode_slot(data[i * SLOT_BYTES : (i + 1) * SLOT_BYTES]) for i in range(SLOT_COUNT)]
    valid = [slot for slot in slots if slot is not None]
    if not valid:
        raise StorageCorruptError(
            f"{path}: every superblock copy is damaged: the node's epoch (incarnation) and "
            "what it had synced are unknown; refusing to open"
        )
    newest = max(valid, key=lambda slot: slot.sequence)
    return SuperblockRead(newest, all_slots_valid=len(valid) == SLOT_COUNT)


class Superblock:
    """The open superblock file of one ``FileStorage`` (the caller owns ``directory_fd``)."""

    def __init__(self, directory: Path, state: SuperblockState, *, fsync: bool) -> None:
        self.directory = directory
        self.state = state
        self.fsync_enabled = fsync
        self.writes = 0
        self.fd = -1

    def open_or_create(self, existed: bool, directory_fd: int) -> None:
        """Open the file; create it atomically (every slot written) if it did not exist."""
        path = self.directory / SUPERBLOCK_FILE_NAME
        if existed:
            self.fd = os.open(path, os.O_RDWR)
            return
        temporary = path.with_name(path.name + ".tmp")
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            data = b"".join(
                encode_slot(replace(self.state, sequence=self.state.sequence + 1 + i))
                for i in range(SLOT_COUNT)
            )
            os.pwrite(fd, data, 0)
            if self.fsync_enabled:
                os.fsync(fd)
            os.rename(temporary, path)
            if self.fsync_enabled:
                os.fsync(directory_fd)
        except BaseException:
            os.close(fd)
            raise
        self.state = replace(self.state, sequence=self.state.sequence + SLOT_COUNT)
        self.fd = fd

    def write(self, changed: SuperblockState, *, every_slot: bool = False) -> None:
        """Make ``changed`` (its sequence is ignored) durable: in the next slot, or
        in every slot in turn."""
        assert self.fd >= 0
        for _ in range(SLOT_COUNT if every_slot else 1):
            state = replace(changed, sequence=self.state.sequence + 1)
            os.pwrite(self.fd, encode_slot(state), (state.sequence % SLOT_COUNT) * SLOT_BYTES)
            if self.fsync_enabled:
                os.fdatasync(self.fd)
            self.state = state
            self.writes += 1

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


def classify(
    read: SuperblockRead, committed: int, torn: int, directory: Path, log_marked: int = 0
) -> tuple[int, str]:
    """``(damage code, detail)`` of a recovery that kept batches up to ``committed``
    and discarded ``torn`` bytes of a damaged tail, judged by the superblock's marks
    and ``log_marked``, the highest batch the log segments' mark slots name (ADR 0045)."""
    state = read.state
    marked = max(state.synced_batch if state is not None else 0, log_marked)
    if committed < marked:
        where = "the superblock" if state is not None and state.synced_batch == marked else (
            "the log's mark slots")
        return DAMAGE_LOST_SYNCED, (
            f"{directory}: the log recovers to batch {committed} ({torn} bytes of a "
            f"damaged tail discarded) but batches up to {marked} had been "
            f"synced ({where}): acknowledged writes are lost"
        )
    if not torn:
        return DAMAGE_NONE, ""
    if state is not None and state.exact and read.all_slots_valid:
        return DAMAGE_NONE, ""  # a batch after the last mark was never acknowledged
    why = (
        "there is no superblock" if state is None
        else "a superblock copy is damaged" if not read.all_slots_valid
        else "syncs were not marked (mark_syncs off)"
    )
    return DAMAGE_TAIL_UNCERTAIN, (
        f"{directory}: {torn} bytes of a damaged tail discarded after batch "
        f"{committed}, and {why}: they may have been acknowledged"
    )
