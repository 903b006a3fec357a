"""Cutting a damaged log back to its intact prefix (``FileStorage(repair=True)``).

Protocol-aware recovery (Alagappan et al., "Protocol-Aware Recovery for
Consensus-Based Storage", FAST 2018) says that a node which can tell which of
its records are damaged should not refuse to start: it should recover them
from its peers. A log is a sequence of batches; damage in its middle (a
flipped bit, a misdirected write, a missing segment, a damaged snapshot whose
segments are gone) leaves the batches before it intact. The store keeps that
prefix, an earlier state the node really was in, and reports everything after
it as lost acknowledged state (``DAMAGE_MID_LOG``); a protocol that honours
``Start.damaged`` (Raft: it rejoins like a replaced disk) recovers the rest
from its peers before it votes or counts for anything.

Nothing is deleted: the damaged bytes go to ``damaged-<n>/`` in the data
directory (the evidence, for the operator to inspect and remove).

Crash safety, in the order ``FileStorage`` does it: (1) the superblock records
the damage and lowers its synced batch before the log changes, so a crash
from here on keeps the report; (2) the later segments and damaged snapshots
move to the quarantine directory, the newest first, so that every
intermediate state is the same log with a shorter suffix (which the next open
cuts again at the same place, or sooner); (3) the damaged segment's intact
prefix is written to a temporary file and fsynced, the original is linked into
the quarantine, and the prefix is renamed over it (atomic: the segment is
never missing); (4) both directories are fsynced.

What stays a refusal (``StorageCorruptError``): a superblock with no valid copy
or no superblock at all (the epoch, hence the next incarnation, is unknown, and
so is what had been acknowledged: an incarnation number could repeat), and a
log of another format version (not damage: a different program wrote it).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from replicaio.storage.base import StorageCorruptError

QUARANTINE_NAME = re.compile(r"damaged-(\d+)")
TEMPORARY_SUFFIX = ".tmp"


class LogDamageError(StorageCorruptError):
    """Damage at a known place in the log: segment ``seq``, byte ``offset``
    (0: the whole segment, from its header on). A store that repairs cuts the
    log there; one that does not refuses to open with this error."""

    def __init__(self, message: str, seq: int, offset: int) -> None:
        super().__init__(message)
        self.seq = seq
        self.offset = offset


@dataclass(slots=True)
class Cut:
    """Where the log is cut: the first damaged segment and the offset in it,
    why, and the other files past the cut (later segments, damaged snapshots)."""

    seq: int
    offset: int
    reason: str
    later: list[Path] = field(default_factory=list)


def quarantine_path(directory: Path) -> Path:
    """Where the next cut of ``directory``'s log puts what it takes out."""
    numbers = [int(match.group(1)) for name in os.listdir(directory)
               if (match := QUARANTINE_NAME.fullmatch(name))]
    return directory / f"damaged-{max(numbers, default=0) + 1}"


def bytes_past(cut: Cut, segment: Path) -> int:
    """The bytes of log segments that ``cut`` takes out of use."""
    later = sum(path.stat().st_size for path in cut.later if path.name.startswith("wal-"))
    here = segment.stat().st_size - cut.offset if segment.exists() else 0
    return later + max(here, 0)


def quarantine(directory: Path, directory_fd: int, segment: Path, cut: Cut, taken: Path, *,
               fsync: bool) -> None:
    """Move what lies past ``cut`` into the new directory ``taken``; keep
    ``segment``'s first ``cut.offset`` bytes in place (none: it moves too)."""
    taken.mkdir()
    if fsync:
        os.fsync(directory_fd)
    for path in sorted(cut.later, reverse=True):  # the newest first: see the module docstring
        os.rename(path, taken / path.name)
    if segment.exists():
        if cut.offset:
            _keep_prefix(directory, segment, taken, cut.offset, fsync=fsync)
        else:
            os.rename(segment, taken / segment.name)
    if fsync:
        _fsync_path(taken)
        os.fsync(directory_fd)


def _keep_prefix(directory: Path, segment: Path, taken: Path, offset: int, *,
                 fsync: bool) -> None:
    with segment.open("rb") as original:
        prefix = original.read(offset)
    assert len(prefix) == offset
    temporary = directory / (segment.name + TEMPORARY_SUFFIX)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(prefix)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.link(segment, taken / segment.name)  # the evidence keeps the damaged inode
    os.rename(temporary, segment)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
