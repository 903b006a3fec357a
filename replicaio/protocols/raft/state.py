"""Raft's state (Figure 2): durable term, vote and log on top of a snapshot.

Everything durable lives in the Raft component's slice of node storage and
is written through ``persist``/``erase`` effects, which the host syncs once
per step before releasing any send or output of that step. A crash may keep
only a *prefix* of a step's writes, so every write sequence here is ordered
so that each prefix is a consistent state:

* ``hard`` holds ``(current_term, voted_for)`` in one record: a vote can never
  survive without the term it was cast in;
* the log is one record per entry (``e:<index>``); appending writes entries in
  ascending order, truncating a suffix erases from the *end* backwards, so
  the entries on disk are always a contiguous run after the snapshot;
* a snapshot record (``snapshot``) is written *before* the entries it covers
  are erased (entries at or below the log's base are ignored, then erased,
  at load), and *after* any entry above it that must go (installing a
  snapshot whose last entry conflicts with the log first erases the entries
  after that index, from the end backwards: none of them can be committed);
* the log's *base* (where its entries start) may trail the snapshot: a
  compaction keeps a window of entries the snapshot already covers (etcd's
  ``SnapshotCatchUpEntries``), so a follower a little behind gets entries
  instead of the whole snapshot. The snapshot record then names the base
  too (index, term, digest, configuration), in the same write;
* a snapshot larger than ``SNAPSHOT_PIECE_BYTES`` (``RaftParams.snapshot_piece_bytes``)
  keeps its state in pieces
  (``sp:<index>:<i>``, each within one codec frame and one WAL record),
  written *before* the ``snapshot`` record that names their count; the
  previous snapshot's pieces are erased after it (pieces of another index
  than the recorded snapshot's are leftovers of a cut step, erased at load);
* the disk identity (``identity``) is written once, at the first start.

Volatile state (commit index, applied index, role) is rebuilt after a
restart: commit and applied restart at the snapshot index.
"""

from __future__ import annotations

import enum
import hashlib
from bisect import bisect_right
from collections.abc import Iterable
from typing import Any

from replicaio.core.context import Context
from replicaio.protocols.raft.messages import NO_NODE, Config, Entry

ENTRY_PREFIX = "e:"
PIECE_PREFIX = "sp:"
# A snapshot's state beyond this is persisted in pieces of this size (one record
# each, well within a codec frame): a key-value store far larger than one frame.
SNAPSHOT_PIECE_BYTES = 4 << 20
DIGEST_BYTES = 8
ZERO_DIGEST = bytes(DIGEST_BYTES)


class Role(enum.Enum):
    """Figure 4's states, with the thesis' pre-candidate (section 9.6)."""

    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


def piece_name(index: int, piece: int) -> str:
    """The storage name of piece ``piece`` of the snapshot at ``index``."""
    return f"{PIECE_PREFIX}{index:015d}:{piece:06d}"


def entry_name(index: int) -> str:
    """The storage name of log entry ``index`` (fixed width: names sort by index)."""
    # ``f"{index:015d}"``, without the format-spec parser (a few thousand
    # instructions per call compiled; ``zfill`` pads after the sign alike)
    return ENTRY_PREFIX + str(index).zfill(15)


def chain_digest(previous: bytes, entry: Entry) -> bytes:
    """The log digest after ``entry``: equal digests at an index mean equal
    prefixes. Observability only (checkers compare logs through it); no
    protocol decision depends on it."""
    hasher = hashlib.blake2b(previous, digest_size=DIGEST_BYTES)
    hasher.update(entry.term.to_bytes(8, "big"))
    hasher.update(len(entry.data).to_bytes(8, "big"))
    hasher.update(entry.data)
    if entry.config is not None:
        hasher.update(repr(config_to_plain(entry.config)).encode())
    return hasher.digest()


def config_to_plain(config: Config) -> tuple[Any, ...]:
    return (config.voters, config.learners, config.promoting)


def config_from_plain(value: Any) -> Config:
    voters, learners, promoting = value
    return Config(
        tuple((int(node), int(identity)) for node, identity in voters),
        tuple((int(node), int(identity)) for node, identity in learners),
        tuple(int(node) for node in promoting),
    )


def entry_to_plain(entry: Entry) -> tuple[Any, ...]:
    config = None if entry.config is None else config_to_plain(entry.config)
    return (entry.term, entry.data, config)


def entry_from_plain(value: Any) -> Entry:
    term, data, config = value
    return Entry(int(term), bytes(data), None if config is None else config_from_plain(config))


class HardState:
    """``currentTerm`` and ``votedFor``, persisted together in one record."""

    __slots__ = ("context", "term", "voted_for")

    def __init__(self, context: Context) -> None:
        self.context = context
        self.term = 0
        self.voted_for = NO_NODE

    def load(self) -> None:
        stored = self.context.load("hard")
        if stored is not None:
            self.term, self.voted_for = int(stored[0]), int(stored[1])
        assert self.term >= 0

    def save(self, term: int, voted_for: int) -> None:
        """Adopt ``(term, voted_for)``; durable before this step's sends."""
        assert term >= self.term, "currentTerm never decreases"
        assert term > self.term or self.voted_for in (NO_NODE, voted_for), (
            "at most one vote per term"
        )
        self.term, self.voted_for = term, voted_for
        self.persist(term, voted_for)

    def persist(self, term: int, voted_for: int) -> None:
        """Write the record (Figure 2: both are persistent state)."""
        self.context.persist("hard", (term, voted_for))


class RaftLog:
    """The log after its base, with the configuration history and digests.

    Entries ``base_index + 1 .. last_index`` are in memory (``entries``); the
    base (its index, term, digest and configuration) stands for everything
    before. The snapshot (its index, term, digest, configuration and the
    state machine's bytes) covers everything up to ``snapshot_index``, with
    ``base_index <= snapshot_index <= last_index``: the entries between the
    two are a trailing window kept for followers a little behind. Terms
    never decrease along a log, which makes "last index of a term" a binary
    search.
    """

    __slots__ = (
        "base_config",
        "base_digest",
        "base_index",
        "base_term",
        "config",
        "config_index",
        "config_indexes",
        "context",
        "digests",
        "entries",
        "last_index",
        "piece_bytes",
        "snapshot_config",
        "snapshot_data",
        "snapshot_digest",
        "snapshot_index",
        "snapshot_pieces",
        "snapshot_term",
    )

    def __init__(self, context: Context, initial: Config) -> None:
        self.context = context
        self.base_index = 0
        self.base_term = 0
        self.base_digest = ZERO_DIGEST
        self.base_config = initial
        self.snapshot_index = 0
        self.snapshot_term = 0
        self.snapshot_digest = ZERO_DIGEST
        self.snapshot_config = initial
        self.snapshot_data = b""
        self.snapshot_pieces = 0  # the snapshot's state is in this many pieces (0: inline)
        # A snapshot's state beyond this is written in pieces of this size
        # (``RaftParams.snapshot_piece_bytes``; loading needs only their count).
        self.piece_bytes = SNAPSHOT_PIECE_BYTES
        self.entries: list[Entry] = []
        self.digests: list[bytes] = []
        self.config_indexes: list[int] = []  # indexes of configuration entries, ascending
        # The latest configuration in the log (it takes effect when appended) and its
        # index (the base's if no configuration entry is in memory): derived from
        # ``config_indexes`` and ``base_config`` by ``refresh_config``, which every
        # method that changes either calls. Fields, not properties: the leader reads
        # them a few dozen times per client operation (ADR 0065).
        self.config = initial
        self.config_index = 0
        # ``base_index + len(entries)``, kept by every method that changes either
        # (a field, not a property: the hot path reads it a few dozen times per
        # client operation, and a compiled field read is a load, ADR 0047)
        self.last_index = 0

    # -- reading -----------------------------------------------------------------

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.base_term

    @property
    def last_digest(self) -> bytes:
        return self.digests[-1] if self.digests else self.base_digest

    def term_at(self, index: int) -> int | None:
        """The term of entry ``index``; ``None`` if compacted away or beyond the end
        (index 0 has term 0: the empty prefix)."""
        if index == self.base_index:
            return self.base_term
        if self.base_index < index <= self.last_index:
            return self.entries[index - self.base_index - 1].term
        return None

    def entry(self, index: int) -> Entry:
        assert self.base_index < index <= self.last_index, f"no entry {index} in memory"
        return self.entries[index - self.base_index - 1]

    def digest_at(self, index: int) -> bytes:
        if index == self.base_index:
            return self.base_digest
        assert self.base_index < index <= self.last_index
        return self.digests[index - self.base_index - 1]

    def slice(self, start: int, count_max: int, bytes_max: int) -> tuple[Entry, ...]:
        """Entries from ``start`` on, at most ``count_max`` of them and (but for
        the first) at most ``bytes_max`` payload bytes."""
        assert start > self.base_index
        begin = start - self.base_index - 1
        found: list[Entry] = []
        size = 0
        for entry in self.entries[begin : begin + count_max]:
            size += len(entry.data)
            if found and size > bytes_max:
                break
            found.append(entry)
        return tuple(found)

    def is_up_to_date(self, last_log_index: int, last_log_term: int) -> bool:
        """Section 5.4.1: is a log ending at ``(index, term)`` at least as
        up-to-date as this one?"""
        if last_log_term != self.last_term:
            return last_log_term > self.last_term
        return last_log_index >= self.last_index

    def last_index_of_term(self, term: int) -> int | None:
        """The last index whose entry has ``term`` (``None``: no such entry here)."""
        position = bisect_right(self.entries, term, key=lambda entry: entry.term)
        if position > 0 and self.entries[position - 1].term == term:
            return self.base_index + position
        if position == 0 and self.base_term == term and self.base_index > 0:
            return self.base_index
        return None

    def first_index_of_term_at(self, index: int) -> int:
        """The first index of the run of ``term_at(index)`` that contains ``index``
        (not below ``base_index + 1``)."""
        term = self.term_at(index)
        assert term is not None
        position = bisect_right(self.entries, term - 1, key=lambda entry: entry.term)
        return max(self.base_index + 1 + position, self.base_index + 1)

    def runs(self) -> tuple[tuple[int, int], ...]:
        """``(first index, term)`` of each run of equal terms after the base."""
        found: list[tuple[int, int]] = []
        previous = None
        for offset, entry in enumerate(self.entries):
            if entry.term != previous:
                found.append((self.base_index + 1 + offset, entry.term))
                previous = entry.term
        return tuple(found)

    # -- configuration -------------------------------------------------------------

    def refresh_config(self) -> None:
        """Recompute ``config`` and ``config_index`` from ``config_indexes`` and
        the base (the configuration history changed: a truncation, a new base)."""
        if self.config_indexes:
            index = self.config_indexes[-1]
            config = self.entry(index).config
            assert config is not None
            self.config, self.config_index = config, index
        else:
            self.config, self.config_index = self.base_config, self.base_index

    def config_at(self, index: int) -> Config:
        """The configuration in force at ``index`` (``index >= base_index``)."""
        assert index >= self.base_index
        position = bisect_right(self.config_indexes, index)
        if position == 0:
            return self.base_config
        config = self.entry(self.config_indexes[position - 1]).config
        assert config is not None
        return config

    # -- writing (each sequence ordered so that every prefix is consistent) -------

    def append(self, entries: Iterable[Entry]) -> None:
        """Append after the last entry; entries reach the disk in index order."""
        for entry in entries:
            assert entry.term >= self.last_term, "terms never decrease along a log"
            index = self.last_index + 1
            self.context.persist(entry_name(index), entry_to_plain(entry))
            self.digests.append(chain_digest(self.last_digest, entry))
            self.entries.append(entry)
            self.last_index = index
            config = entry.config
            if config is not None:
                self.config_indexes.append(index)
                self.config, self.config_index = config, index

    def truncate_after(self, index: int) -> None:
        """Drop entries after ``index``, erasing from the end backwards (never
        below the snapshot: what it covers is committed)."""
        assert index >= self.snapshot_index
        config_removed = False
        while self.last_index > index:
            last = self.last_index
            self.context.erase(entry_name(last))
            self.entries.pop()
            self.digests.pop()
            self.last_index = last - 1
            if self.config_indexes and self.config_indexes[-1] == last:
                self.config_indexes.pop()
                config_removed = True
        if config_removed:
            self.refresh_config()

    def install_snapshot(
        self, index: int, term: int, digest: bytes, config: Config, data: bytes
    ) -> None:
        """Make a snapshot at ``(index, term)`` the log's base. When the log holds
        that very entry, the entries after it stay (a leader's snapshot of a
        prefix this log already has); otherwise the whole log goes (Figure 13,
        steps 6-7).

        Order: entries *after* a conflicting snapshot index first, from the end
        backwards (they follow an entry that is not the committed one, so Log
        Matching says none of them is committed); then the snapshot record;
        then the entries it covers. Entries at or below the snapshot index may
        be committed and acknowledged: they go only once the snapshot that
        replaces them is written."""
        assert index > self.snapshot_index
        keep_suffix = self.term_at(index) == term
        if not keep_suffix and self.last_index > index:
            self.truncate_after(index)
        self.replace_base(index, term, digest, config, data, index)
        assert keep_suffix or not self.entries, "a foreign snapshot replaces the whole log"
        assert self.term_at(index) == term

    def compact(self, index: int, data: bytes, base: int) -> None:
        """This log's own entry ``index`` (applied) is covered by the state
        machine's snapshot ``data``; the entries up to ``base`` go, those from
        ``base + 1`` on stay (``base_index <= base <= index``)."""
        assert self.snapshot_index < index <= self.last_index
        assert self.base_index <= base <= index
        term = self.term_at(index)
        assert term is not None
        self.replace_base(
            index, term, self.digest_at(index), self.config_at(index), data, base
        )

    def replace_base(
        self, index: int, term: int, digest: bytes, config: Config, data: bytes, base: int
    ) -> None:
        """Write the snapshot record (the snapshot at ``index`` and the log's new
        base ``base``), then erase the entries up to the base. The base's own
        term, digest and configuration are read before anything changes (for
        ``base == index``: the snapshot's)."""
        if base == index:
            base_term, base_digest, base_config = term, digest, config
        else:
            found = self.term_at(base)
            assert found is not None and self.snapshot_index < index <= self.last_index
            base_term, base_digest, base_config = found, self.digest_at(base), self.config_at(base)
        covered = range(self.base_index + 1, min(base, self.last_index) + 1)
        self.persist_snapshot(
            index, term, digest, config, data, (base, base_term, base_digest, base_config)
        )
        for covered_index in covered:
            self.context.erase(entry_name(covered_index))
        del self.entries[: len(covered)]
        del self.digests[: len(covered)]
        self.base_index, self.base_term = base, base_term
        self.last_index = base + len(self.entries)
        self.base_digest, self.base_config = base_digest, base_config
        self.snapshot_index, self.snapshot_term = index, term
        self.snapshot_digest, self.snapshot_config, self.snapshot_data = digest, config, data
        self.config_indexes = [i for i in self.config_indexes if i > base]
        self.refresh_config()

    def persist_snapshot(
        self, index: int, term: int, digest: bytes, config: Config, data: bytes,
        base: tuple[int, int, bytes, Config],
    ) -> None:
        """Write the ``snapshot`` record (its state inline, or in pieces written
        first; the log's base with it when the base trails the snapshot), then
        erase the previous snapshot's pieces."""
        plain = config_to_plain(config)
        size = self.piece_bytes
        pieces = 0 if len(data) <= size else len(range(0, len(data), size))
        inline = data if pieces == 0 else b""
        for piece in range(pieces):
            start = piece * size
            self.context.persist(piece_name(index, piece), data[start : start + size])
        record: tuple[Any, ...] = (index, term, digest, plain, inline)
        base_index, base_term, base_digest, base_config = base
        if base_index != index:
            record += (pieces, base_index, base_term, base_digest, config_to_plain(base_config))
        elif pieces:
            record += (pieces,)
        self.context.persist("snapshot", record)
        for piece in range(self.snapshot_pieces):
            self.context.erase(piece_name(self.snapshot_index, piece))
        self.snapshot_pieces = pieces

    def load_snapshot(self) -> None:
        """The ``snapshot`` record and its pieces; leftover pieces are erased."""
        context = self.context
        stored = context.load("snapshot")
        if stored is not None:
            index, term, digest, config, data, *more = stored
            self.snapshot_index, self.snapshot_term = int(index), int(term)
            self.snapshot_digest = bytes(digest)
            self.snapshot_config = config_from_plain(config)
            self.snapshot_pieces = int(more[0]) if more else 0
            parts = [bytes(data)]
            for piece in range(self.snapshot_pieces):
                chunk = context.load(piece_name(self.snapshot_index, piece))
                assert chunk is not None, f"snapshot {index}: piece {piece} missing"
                parts.append(bytes(chunk))
            self.snapshot_data = b"".join(parts)
            if len(more) > 1:
                base_index, base_term, base_digest, base_config = more[1:5]
                self.base_index, self.base_term = int(base_index), int(base_term)
                self.base_digest = bytes(base_digest)
                self.base_config = config_from_plain(base_config)
            else:
                self.base_index, self.base_term = self.snapshot_index, self.snapshot_term
                self.base_digest, self.base_config = self.snapshot_digest, self.snapshot_config
            self.last_index = self.base_index + len(self.entries)
        mine = {piece_name(self.snapshot_index, piece) for piece in range(self.snapshot_pieces)}
        for name in list(context.stored_names(PIECE_PREFIX)):
            if name not in mine:
                context.erase(name)

    # -- recovery --------------------------------------------------------------------

    def load(self) -> None:
        """Rebuild from durable state (see the module docstring for why every
        crash leaves a contiguous run of entries after the base, through the
        snapshot's index at least)."""
        context = self.context
        self.load_snapshot()
        expected = self.base_index + 1
        for name in context.stored_names(ENTRY_PREFIX):
            index = int(name[len(ENTRY_PREFIX) :])
            if index <= self.base_index:
                context.erase(name)  # covered by the base; a crash cut compaction short
                continue
            assert index == expected, f"log gap at {expected} (found {index})"
            entry = entry_from_plain(context.load(name))
            self.digests.append(chain_digest(self.last_digest, entry))
            self.entries.append(entry)
            self.last_index = index
            if entry.config is not None:
                self.config_indexes.append(index)
            expected += 1
        self.refresh_config()  # (the base and entries loaded: load_snapshot's base too)
        assert self.last_index >= self.snapshot_index, (
            f"entries {self.base_index + 1}..{self.snapshot_index} of the window missing"
        )
        if self.snapshot_index > self.base_index:
            assert self.digest_at(self.snapshot_index) == self.snapshot_digest
