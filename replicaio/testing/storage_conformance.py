"""Conformance suite for ``Storage`` implementations (see ``replicaio.storage.base``).

In the style of Trio's ``check_*_stream``: plain functions that take factories,
raise ``AssertionError`` on the first violation, and know nothing of pytest.
An implementation plugs in three callables:

* ``make_storage()``: a fresh, empty store.
* ``crash_and_reopen(store)``: a power loss *now*, before any unsynced write
  reached the disk, then a restart: returns the store as recovered (the old
  object must not be used again). Everything unsynced is gone.
* ``crash_during_sync(store)`` (optional): runs ``store.sync()`` while
  injecting every crash point the harness knows between the moment the batch
  starts reaching the disk and the moment ``sync`` returns. It yields, per
  crash point, a freshly recovered store holding what that crash left (the
  suite closes it); once exhausted, ``store.sync()`` has completed and
  ``store`` is usable. Each outcome must equal the state before the sync plus
  a prefix of the batch.

``run_storage_conformance`` runs every check. Ready-made harnesses for the
built-in stores: ``memory_crash_and_reopen``/``memory_crash_during_sync`` and
``FileStorageCrashes`` (the crash-point method of docs/storage.md: cut the log
at every byte of the region the sync wrote, and lose single sectors of it).
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

from replicaio.storage.base import (
    KEY_BYTES_MAX,
    VALUE_BYTES_MAX,
    Storage,
    StorageUsageError,
)
from replicaio.storage.file import (
    SEGMENT_MARK_OFFSET,
    SEGMENT_NAME,
    SEGMENT_RECORDS_START,
    SNAPSHOT_NAME,
    FileStorage,
    Record,
    decode_record,
)
from replicaio.storage.memory import MemoryStorage
from replicaio.storage.superblock import SUPERBLOCK_FILE_NAME, read_superblock

S = TypeVar("S", bound=Storage)
Operation = tuple[str, bytes | None]  # (key, value); a value of None is a delete
MEBIBYTE = 1024 * 1024


def run_storage_conformance(
    make_storage: Callable[[], S],
    crash_and_reopen: Callable[[S], S],
    crash_during_sync: Callable[[S], Iterator[S]] | None = None,
    *,
    value_bytes_large: int = MEBIBYTE,
    every_prefix_reachable: bool = True,
) -> None:
    """Run every check below against one implementation.

    ``every_prefix_reachable``: the harness can leave any prefix of a batch
    (true for both built-in harnesses); if false, only "nothing" and "all" are
    required among the crash outcomes.
    """
    check_empty_store(make_storage, crash_and_reopen)
    check_put_visible_after_sync(make_storage, crash_and_reopen)
    check_delete(make_storage, crash_and_reopen)
    check_overwrite(make_storage, crash_and_reopen)
    check_unsynced_lost_on_crash(make_storage, crash_and_reopen)
    check_synced_survive_crashes(make_storage, crash_and_reopen)
    check_validation_errors(make_storage, crash_and_reopen)
    check_binary_values(make_storage, crash_and_reopen)
    check_large_values(make_storage, crash_and_reopen, value_bytes_large)
    check_many_keys(make_storage, crash_and_reopen)
    check_recover_idempotent(make_storage, crash_and_reopen)
    check_use_after_close(make_storage)
    if crash_during_sync is not None:
        check_crash_during_sync(
            make_storage, crash_and_reopen, crash_during_sync, every_prefix_reachable
        )


# -- the checks ------------------------------------------------------------------------------


def check_empty_store(make_storage: Callable[[], S], crash_and_reopen: Callable[[S], S]) -> None:
    """A new store recovers empty, before and after a crash, and an empty sync is fine."""
    store = make_storage()
    _expect(store, {}, "a new store")
    store.sync()
    store = crash_and_reopen(store)
    _expect(store, {}, "a new store after a crash")
    store.close()


def check_put_visible_after_sync(
    make_storage: Callable[[], S], crash_and_reopen: Callable[[S], S]
) -> None:
    """``put`` is invisible to ``recover`` until ``sync``, then durable across a crash."""
    store = make_storage()
    store.put("alpha", b"1")
    store.put("beta", b"2")
    _expect(store, {}, "buffered puts before sync")
    store.sync()
    _expect(store, {"alpha": b"1", "beta": b"2"}, "puts after sync")
    store = crash_and_reopen(store)
    _expect(store, {"alpha": b"1", "beta": b"2"}, "synced puts after a crash")
    store.close()


def check_delete(make_storage: Callable[[], S], crash_and_reopen: Callable[[S], S]) -> None:
    """``delete`` removes a key durably; deleting an absent key is not an error."""
    store = make_storage()
    store.put("keep", b"k")
    store.put("drop", b"d")
    store.sync()
    store.delete("drop")
    store.delete("never-existed")
    _expect(store, {"keep": b"k", "drop": b"d"}, "a buffered delete before sync")
    store.sync()
    _expect(store, {"keep": b"k"}, "a delete after sync")
    store = crash_and_reopen(store)
    _expect(store, {"keep": b"k"}, "a synced delete after a crash")
    store.put("drop", b"again")
    store.delete("drop")
    store.sync()
    store = crash_and_reopen(store)
    _expect(store, {"keep": b"k"}, "put then delete in one batch")
    store.close()


def check_overwrite(make_storage: Callable[[], S], crash_and_reopen: Callable[[S], S]) -> None:
    """The last write to a key wins, within a batch and across batches and crashes."""
    store = make_storage()
    store.put("key", b"first")
    store.put("key", b"second")
    store.sync()
    _expect(store, {"key": b"second"}, "two puts in one batch")
    store.put("key", b"third")
    store.sync()
    store = crash_and_reopen(store)
    _expect(store, {"key": b"third"}, "an overwrite in a later batch after a crash")
    store.delete("key")
    store.put("key", b"fourth")
    store.sync()
    store = crash_and_reopen(store)
    _expect(store, {"key": b"fourth"}, "delete then put in one batch")
    store.close()


def check_unsynced_lost_on_crash(
    make_storage: Callable[[], S], crash_and_reopen: Callable[[S], S]
) -> None:
    """Writes never synced are gone after a crash, and the synced state is intact."""
    store = make_storage()
    store.put("synced", b"s")
    store.sync()
    store.put("unsynced", b"u")
    store.put("synced", b"overwritten but not synced")
    store.delete("synced")
    store = crash_and_reopen(store)
    _expect(store, {"synced": b"s"}, "unsynced writes after a crash")
    store.close()


def check_synced_survive_crashes(
    make_storage: Callable[[], S], crash_and_reopen: Callable[[S], S]
) -> None:
    """Synced writes survive any number of crashes, interleaved with more writes."""
    store = make_storage()
    model: dict[str, bytes] = {}
    for round_number in range(6):
        for index in range(round_number + 1):
            key = f"round-{round_number}-{index}"
            store.put(key, key.encode())
            model[key] = key.encode()
        store.sync()
        store.put(f"lost-{round_number}", b"lost")
        store = crash_and_reopen(store)
        _expect(store, model, f"crash number {round_number + 1}")
    store.close()


def check_validation_errors(
    make_storage: Callable[[], S], crash_and_reopen: Callable[[S], S]
) -> None:
    """Out-of-contract keys and values raise ``StorageUsageError`` and change nothing."""
    store = make_storage()
    misuse = cast(Any, store)  # the calls below break the type contract on purpose
    too_long_in_bytes = "é" * (KEY_BYTES_MAX // 2 + 1)  # few characters, too many bytes
    attempts: list[tuple[str, Callable[[], None]]] = [
        ("empty key", lambda: store.put("", b"x")),
        ("non-str key", lambda: misuse.put(7, b"x")),
        ("bytes key", lambda: misuse.put(b"key", b"x")),
        ("key over KEY_BYTES_MAX", lambda: store.put("k" * (KEY_BYTES_MAX + 1), b"x")),
        ("key over KEY_BYTES_MAX in UTF-8", lambda: store.put(too_long_in_bytes, b"x")),
        ("key with a lone surrogate", lambda: store.put("bad\ud800", b"x")),
        ("str value", lambda: misuse.put("key", "text")),
        ("None value", lambda: misuse.put("key", None)),
        ("int value", lambda: misuse.put("key", 5)),
        ("value over VALUE_BYTES_MAX", lambda: store.put("key", bytes(VALUE_BYTES_MAX + 1))),
        ("delete of an empty key", lambda: store.delete("")),
        ("delete of a non-str key", lambda: misuse.delete(3)),
    ]
    for description, attempt in attempts:
        try:
            attempt()
        except StorageUsageError:
            continue
        raise AssertionError(f"{description}: expected StorageUsageError, nothing raised")
    store.put("k" * KEY_BYTES_MAX, b"")  # exactly at the bound, and an empty value: fine
    store.sync()
    store = crash_and_reopen(store)
    _expect(store, {"k" * KEY_BYTES_MAX: b""}, "after rejected writes")
    store.close()


def check_binary_values(make_storage: Callable[[], S], crash_and_reopen: Callable[[S], S]) -> None:
    """Values are opaque bytes (every byte value); keys any UTF-8; buffers are copied."""
    store = make_storage()
    every_byte = bytes(range(256)) * 3
    buffer = bytearray(b"mutable")
    model = {"every-byte": every_byte, "ключ-🔑": b"\x00", "buffer": b"mutable", "view": b"vi"}
    store.put("every-byte", every_byte)
    store.put("ключ-🔑", b"\x00")
    store.put("buffer", cast(bytes, buffer))
    store.put("view", cast(bytes, memoryview(b"view")[:2]))
    buffer[:] = b"changed after put"
    store.sync()
    _expect(store, model, "binary values")
    store = crash_and_reopen(store)
    _expect(store, model, "binary values after a crash")
    store.close()


def check_large_values(
    make_storage: Callable[[], S], crash_and_reopen: Callable[[S], S], value_bytes: int
) -> None:
    """A large value round-trips exactly, alone and next to small ones."""
    assert 0 < value_bytes <= VALUE_BYTES_MAX
    large = bytes(index * 7 % 251 for index in range(min(value_bytes, 4096))) * (
        value_bytes // 4096 + 1
    )
    large = large[:value_bytes]
    store = make_storage()
    store.put("small-before", b"b")
    store.put("large", large)
    store.put("small-after", b"a")
    store.sync()
    store = crash_and_reopen(store)
    _expect(store, {"small-before": b"b", "large": large, "small-after": b"a"}, "a large value")
    store.close()


def check_many_keys(make_storage: Callable[[], S], crash_and_reopen: Callable[[S], S]) -> None:
    """Thousands of keys over several batches, with deletes, survive a crash."""
    store = make_storage()
    model: dict[str, bytes] = {}
    for batch in range(4):
        for index in range(750):
            key = f"key-{index:05d}"
            if (index + batch) % 5 == 0:
                store.delete(key)
                model.pop(key, None)
            else:
                store.put(key, f"{batch}:{index}".encode())
                model[key] = f"{batch}:{index}".encode()
        store.sync()
    store = crash_and_reopen(store)
    _expect(store, model, "many keys")
    store.close()


def check_recover_idempotent(
    make_storage: Callable[[], S], crash_and_reopen: Callable[[S], S]
) -> None:
    """``recover`` twice gives the same state, as a copy; so do two crashes in a row."""
    store = make_storage()
    store.put("a", b"1")
    store.sync()
    first = store.recover()
    second = store.recover()
    assert dict(first) == dict(second) == {"a": b"1"}, "recover twice differs"
    if isinstance(first, dict):
        first["intruder"] = b"x"  # mutating the result must not reach the store
    _expect(store, {"a": b"1"}, "recover after mutating a previous result")
    store = crash_and_reopen(crash_and_reopen(store))
    _expect(store, {"a": b"1"}, "two crashes in a row")
    store.close()


def check_use_after_close(make_storage: Callable[[], S]) -> None:
    """After ``close`` every operation raises ``StorageUsageError``; ``close`` is idempotent."""
    store = make_storage()
    store.close()
    store.close()
    uses: list[tuple[str, Callable[[], object]]] = [
        ("put", lambda: store.put("key", b"value")),
        ("delete", lambda: store.delete("key")),
        ("sync", store.sync),
        ("recover", store.recover),
    ]
    for name, use in uses:
        try:
            use()
        except StorageUsageError:
            continue
        raise AssertionError(f"{name} after close: expected StorageUsageError")


def check_crash_during_sync(
    make_storage: Callable[[], S],
    crash_and_reopen: Callable[[S], S],
    crash_during_sync: Callable[[S], Iterator[S]],
    every_prefix_reachable: bool = True,
) -> None:
    """Every crash point inside ``sync`` leaves the previous state plus a batch prefix.

    Each recovered outcome must also accept and keep new writes (the recovery
    left the store in a state that later recoveries understand).
    """
    store = make_storage()
    for key, value in {"base-0": b"0", "base-1": b"1", "base-2": b"2"}.items():
        store.put(key, value)
    store.sync()
    batches: list[list[Operation]] = [
        [("a", b"a1")],
        [("b", b"b1"), ("a", b"a2"), ("base-0", None), ("c", bytes(range(200)))],
        [("a", b"a3"), ("a", b"a4"), ("a", None), ("d", b"d1"), ("base-1", None)],
    ]
    for number, batch in enumerate(batches):
        durable = dict(store.recover())
        states = _prefix_states(durable, batch)
        assert len({tuple(sorted(s.items())) for s in states}) == len(states), "test data"
        for operation_key, operation_value in batch:
            if operation_value is None:
                store.delete(operation_key)
            else:
                store.put(operation_key, operation_value)
        reached: set[int] = set()
        for outcome in crash_during_sync(store):
            reached.add(_check_outcome(outcome, states, number, crash_and_reopen))
        expected = set(range(len(batch) + 1)) if every_prefix_reachable else {0, len(batch)}
        assert expected <= reached, (
            f"batch {number}: crash outcomes reached prefixes {sorted(reached)}, "
            f"expected at least {sorted(expected)}"
        )
        _expect(store, states[-1], f"batch {number} after the sync completed")
    store.close()


def _check_outcome(
    outcome: S, states: list[dict[str, bytes]], number: int, crash_and_reopen: Callable[[S], S]
) -> int:
    """Return which prefix ``outcome`` holds; check that it takes further writes."""
    state = dict(outcome.recover())
    if state not in states:
        raise AssertionError(
            f"batch {number}: a crash during sync recovered {state!r}, "
            f"which is not the previous state plus a prefix of the batch: {states!r}"
        )
    prefix = states.index(state)
    if outcome.damage is not None:
        raise AssertionError(
            f"batch {number}: a crash during sync lost no synced write, but the store "
            f"reports damage: {outcome.damage}"
        )
    outcome.put("written-after-recovery", b"x")
    outcome.sync()
    reopened = crash_and_reopen(outcome)
    _expect(reopened, {**state, "written-after-recovery": b"x"}, "a write after recovery")
    reopened.close()
    return prefix


def check_crash_during_carried_mark(crashes: FileStorageCrashes) -> tuple[int, int]:
    """A batch's mark carried by the next batch's flush (ADR 0045; ``FileStorage``
    only). Batch *k* is flushed, not marked (not released); batch *k* + 1's flush
    writes *k*'s mark slot too. Every crash point of that flush (records of *k* + 1
    cut at every byte or missing a sector; *k*'s slot old, torn or new) recovers
    *k* plus a prefix of *k* + 1 and reports nothing. Once the flush has returned
    (*k* released), *k*'s loss is reported, which only the slot can tell (the
    superblock does not name *k* unless the flush began a segment), while losing
    *k* + 1 (never marked) is not. Returns the superblock's batch and *k*."""
    store = crashes.make()
    base: dict[str, bytes] = {"base-0": b"0", "base-1": b"1", "base-2": b"2"}
    _buffer(store, list(base.items()))
    store.sync()
    carried: list[Operation] = [("k", b"k1"), ("base-0", None), ("c", bytes(range(100)))]
    batch: list[Operation] = [("n", b"n1"), ("k", b"k2"), ("base-1", None), ("d", b"d" * 90)]
    after_carried = _prefix_states(base, carried)[-1]
    states = _prefix_states(after_carried, batch)
    reached: set[tuple[int, bool]] = set()
    for outcome, durable in crashes.crash_during_carried_mark(store, carried, batch):
        reached.add((_check_outcome(outcome, states, 1, crashes.crash_and_reopen), durable))
    expected = {(prefix, durable) for prefix in range(len(batch) + 1)
                for durable in (False, True)}
    assert expected <= reached, f"carried mark: reached {sorted(reached)}"
    _expect(store, states[-1], "after the carrying flush")
    carried_batch = store.batch_marked
    superblock = read_superblock(store.directory).state
    assert superblock is not None
    for lost, kind in ((carried_batch, "lost synced writes"), (carried_batch + 1, None)):
        reopened = crashes.kill_and_lose(store, lost)
        damage = reopened.damage
        if (damage.kind if damage is not None else None) != kind:
            raise AssertionError(
                f"carried mark: batch {lost} lost after the flush that carried batch "
                f"{carried_batch}'s mark returned: expected {kind!r}, the store reports {damage}")
        reopened.close()
    store._release_descriptors()
    return superblock.synced_batch, carried_batch


# -- harnesses for the built-in stores -------------------------------------------------------


def memory_crash_and_reopen(store: MemoryStorage) -> MemoryStorage:
    """Lose every unsynced write and restart (the same object, as the simulator does)."""
    store.crash(keep_unsynced=0)
    return store


def memory_crash_during_sync(store: MemoryStorage) -> Iterator[MemoryStorage]:
    """Yield a crash keeping each prefix of the buffered writes, then sync ``store``."""
    for keep in range(store.unsynced_count + 1):
        outcome = store.clone()
        outcome.crash(keep_unsynced=keep)
        yield outcome
    store.sync()


class FileStorageCrashes:
    """Crash injection for ``FileStorage``: every store lives under ``root``.

    ``crash_during_sync`` runs the real ``sync`` (write, fsync), then treats
    the bytes it appended as volatile. It yields one recovered store per crash
    point: the log cut at every byte offset of that region (in write order,
    across a rotation), and the whole region written except one sector of
    ``sector_bytes`` lost (zeroed; out-of-order writeback of the last write).
    Each outcome is a copy of the directory, deleted after use, and opened
    without fsync: what is under test is how it recovers, not how durable the
    throwaway copy is (and hundreds of fsyncs per batch would dominate).
    """

    def __init__(
        self,
        root: Path,
        *,
        segment_bytes_max: int = 64 * MEBIBYTE,
        sector_bytes: int = 512,
        fsync: bool = True,
    ) -> None:
        assert sector_bytes > 0
        self._root = root
        self._segment_bytes_max = segment_bytes_max
        self._sector_bytes = sector_bytes
        self._fsync = fsync
        self._names = itertools.count()

    def open(self, directory: Path, *, fsync: bool | None = None) -> FileStorage:
        """Open ``directory`` with this harness's options (no automatic compaction)."""
        return FileStorage(
            directory,
            segment_bytes_max=self._segment_bytes_max,
            fsync=self._fsync if fsync is None else fsync,
            wal_bytes_compact_threshold=None,
        )

    def make(self) -> FileStorage:
        """A fresh store in a new directory under ``root``."""
        return self.open(self._root / f"store-{next(self._names)}")

    def crash_and_reopen(self, store: FileStorage) -> FileStorage:
        """Drop ``store`` without syncing (its buffer is lost) and recover the directory."""
        fsync = store.fsync_enabled
        store.close()
        return self.open(store.directory, fsync=fsync)

    def crash_during_sync(self, store: FileStorage) -> Iterator[FileStorage]:
        """Sync ``store``; yield the store recovered after each crash point within it.

        The sync flushes its records, then its mark (a slot in the segment's
        first sector, ADR 0045, or the superblock): while the records are
        volatile, the marks are as before the sync; once they are durable, the
        mark slot is old, torn at any byte, or new."""
        before = _log_files(store.directory)
        superblock = store.directory / SUPERBLOCK_FILE_NAME
        marks = superblock.read_bytes()  # the sync marks itself only after its fsync
        store.sync()
        after = _log_files(store.directory)
        marks_after = superblock.read_bytes()
        if any(name not in after for name in before) or any(
            SNAPSHOT_NAME.fullmatch(name) for name in after.keys() - before.keys()
        ):
            raise AssertionError("crash_during_sync does not model compaction inside sync")
        unmarked = {name: _with_marks(data, _marks_sector(before, name, data))
                    for name, data in after.items()}
        yield from self._record_outcomes(before, unmarked, {superblock.name: marks})
        # The records durable; the mark's flush interrupted at every byte of its slot.
        for name, data in after.items():
            old = _marks_sector(before, name, data)
            new = data[SEGMENT_MARK_OFFSET:SEGMENT_RECORDS_START]
            changed = [i for i in range(len(new)) if new[i] != old[i]]
            if not changed:
                continue
            for cut in range(changed[0], changed[-1] + 2):
                torn = new[:cut] + old[cut:]
                for superblock_bytes in {marks, marks_after}:
                    yield from self._outcome({**unmarked, name: _with_marks(data, torn),
                                              superblock.name: superblock_bytes})

    def crash_during_carried_mark(
        self, store: FileStorage, carried: list[Operation], batch: list[Operation]
    ) -> Iterator[tuple[FileStorage, bool]]:
        """Write ``carried`` as a batch (flushed, not marked), then ``batch``,
        whose flush carries ``carried``'s mark (ADR 0045), and yield the store
        recovered after each crash point of that flush, with whether its mark
        slot had become durable: the records of ``batch`` cut at every byte (and
        one sector lost), crossed with the slot old, torn, or new."""
        _buffer(store, carried)
        sealed = store.seal()
        assert sealed is not None
        store.write_sealed(sealed)
        assert store.batch_marked < sealed.batch, "the batch must wait for its mark"
        before = _log_files(store.directory)
        superblock = store.directory / SUPERBLOCK_FILE_NAME
        marks = superblock.read_bytes()
        _buffer(store, batch)
        second = store.seal()
        assert second is not None
        store.write_sealed(second)
        assert store.batch_marked == sealed.batch, "the flush carries the mark"
        after = _log_files(store.directory)
        extra = {superblock.name: superblock.read_bytes()}
        unmarked = {name: _with_marks(data, _marks_sector(before, name, data))
                    for name, data in after.items()}
        [(name, data)] = [(n, d) for n, d in after.items() if unmarked[n] != d]
        old = _marks_sector(before, name, data)
        new = data[SEGMENT_MARK_OFFSET:SEGMENT_RECORDS_START]
        changed = [i for i in range(len(new)) if new[i] != old[i]]
        torn = new[: (changed[0] + changed[-1]) // 2] + old[(changed[0] + changed[-1]) // 2 :]
        for slot, durable in ((old, False), (torn, False), (new, True)):
            marked = {**unmarked, name: _with_marks(data, slot)}
            for outcome in self._record_outcomes(before, marked, extra if durable else {
                    superblock.name: marks}):
                yield outcome, durable

    def kill_and_lose(self, store: FileStorage, batch: int) -> FileStorage:
        """A copy of ``store``'s directory as a kill -9 now leaves it (no close,
        no last mark), with the log cut inside ``batch`` (its last record torn),
        recovered."""
        directory = self._root / f"lost-{next(self._names)}"
        shutil.copytree(store.directory, directory, ignore=shutil.ignore_patterns("LOCK"))
        segments = sorted(path for path in directory.iterdir() if SEGMENT_NAME.fullmatch(path.name))
        for index, segment in enumerate(segments):
            data = segment.read_bytes()
            offset, ends = SEGMENT_RECORDS_START, []
            while isinstance(record := decode_record(data, offset), Record):
                if record.batch == batch:
                    ends.append(record.end)
                offset = record.end
            if ends and record_ends_batch(data, ends[-1]):
                segment.write_bytes(data[: ends[-1] - 3])
                for later in segments[index + 1 :]:
                    later.unlink()  # lost with the tail
                break
        else:
            raise AssertionError(f"batch {batch} is not in the log")
        return self.open(directory, fsync=False)

    def _record_outcomes(
        self, before: Mapping[str, bytes], after: Mapping[str, bytes], extra: Mapping[str, bytes]
    ) -> Iterator[FileStorage]:
        """The log's records of one flush cut at every byte, then with one sector
        lost (what it held before: zeros over preallocated space)."""
        regions = self._volatile_regions(before, after)
        for index, (name, start, end) in enumerate(regions):
            for cut in range(start, end + 1):
                files = dict(after)
                for later, _, _ in regions[index + 1 :]:
                    del files[later]  # created after this crash point
                # Past the cut, what the file held before: preallocated zeros, or its end.
                files[name] = after[name][:cut] + before.get(name, b"")[cut:]
                yield from self._outcome({**files, **extra})
        if regions:
            name, start, end = regions[-1]
            first_sector = start - start % self._sector_bytes
            old = before.get(name, b"")
            for sector in range(first_sector, end, self._sector_bytes):
                low, high = max(sector, start), min(sector + self._sector_bytes, end)
                damaged = bytearray(after[name])
                damaged[low:high] = old[low:high].ljust(high - low, b"\0")
                yield from self._outcome({**after, name: bytes(damaged), **extra})

    @staticmethod
    def _volatile_regions(
        before: Mapping[str, bytes], after: Mapping[str, bytes]
    ) -> list[tuple[str, int, int]]:
        """(segment, start, end) of the records the sync appended, in write order.

        A segment created during the sync has its first sector (header, empty
        mark slots) made durable before any record goes in (atomic creation),
        so its region starts after it; mark slots are not records (the callers
        give ``after`` the slots they model). The region runs from the first to
        the last byte that the sync changed (a segment's zeros written ahead of
        its end, ``preallocate_bytes``, read as nothing written; the sync
        overwrites them).
        """
        regions = []
        for name in sorted(after):
            if SEGMENT_NAME.fullmatch(name):
                new = after[name]
                old = before.get(name, new[:SEGMENT_RECORDS_START])
                old = old[: len(new)] + bytes(max(0, len(new) - len(old)))
                changed = [i for i in range(SEGMENT_RECORDS_START, len(new))
                           if new[i] != old[i]] if new != old else []
                if changed:
                    regions.append((name, changed[0], changed[-1] + 1))
        assert all(name not in before for name, _, _ in regions[1:]), "only the last grows"
        return regions

    def _outcome(self, files: Mapping[str, bytes]) -> Iterator[FileStorage]:
        directory = self._root / f"crash-{next(self._names)}"
        directory.mkdir()
        for name, data in files.items():
            (directory / name).write_bytes(data)
        outcome = self.open(directory, fsync=False)
        try:
            yield outcome
        finally:
            outcome.close()
            shutil.rmtree(directory)


def record_ends_batch(data: bytes, end: int) -> bool:
    """Whether the record ending at ``end`` of segment bytes ``data`` carries COMMIT."""
    offset = SEGMENT_RECORDS_START
    while isinstance(record := decode_record(data, offset), Record):
        if record.end == end:
            return bool(record.flags & 1)
        offset = record.end
    return False


def _marks_sector(before: Mapping[str, bytes], name: str, data: bytes) -> bytes:
    """The mark slots of segment ``name`` before (empty if it is new)."""
    if name not in before:
        return bytes(SEGMENT_RECORDS_START - SEGMENT_MARK_OFFSET)
    return before[name][SEGMENT_MARK_OFFSET:SEGMENT_RECORDS_START]


def _with_marks(data: bytes, marks: bytes) -> bytes:
    """``data`` (a segment's bytes, or a snapshot's: unchanged) with ``marks`` as its slots."""
    if not data.startswith(b"RWAL"):
        return data
    return data[:SEGMENT_MARK_OFFSET] + marks + data[SEGMENT_RECORDS_START:]


def _buffer(store: Storage, batch: list[Operation]) -> None:
    for key, value in batch:
        if value is None:
            store.delete(key)
        else:
            store.put(key, value)


def _log_files(directory: Path) -> dict[str, bytes]:
    """The content of every segment and snapshot in ``directory``."""
    return {
        path.name: path.read_bytes()
        for path in directory.iterdir()
        if SEGMENT_NAME.fullmatch(path.name) or SNAPSHOT_NAME.fullmatch(path.name)
    }


# -- helpers ---------------------------------------------------------------------------------


def _prefix_states(durable: dict[str, bytes], batch: list[Operation]) -> list[dict[str, bytes]]:
    """The state after each prefix of ``batch`` (``len(batch) + 1`` states)."""
    states = [dict(durable)]
    for key, value in batch:
        state = dict(states[-1])
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value
        states.append(state)
    return states


def _expect(store: Storage, expected: Mapping[str, bytes], situation: str) -> None:
    recovered = dict(store.recover())
    if recovered != dict(expected):
        missing = sorted(expected.keys() - recovered.keys())
        extra = sorted(recovered.keys() - expected.keys())
        differing = sorted(
            k for k in expected.keys() & recovered.keys() if expected[k] != recovered[k]
        )
        raise AssertionError(
            f"{situation}: recovered state differs from the expected one "
            f"(missing {missing[:10]}, unexpected {extra[:10]}, different values {differing[:10]})"
        )
