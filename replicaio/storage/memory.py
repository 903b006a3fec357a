"""In-memory storage with power-loss semantics, for the simulator.

``MemoryStorage`` keeps two things: the *durable* map (what a disk would hold
after the last completed ``sync``) and the list of *buffered* writes since
then, in issue order. ``crash(keep_unsynced=k)`` models a power loss: the
durable map survives, the first ``k`` buffered writes reach the "disk", the
rest are lost. The simulator draws ``k`` from its seed (``0 <= k <=
unsynced_count``) so that every prefix the contract allows is reachable, and
nothing the contract forbids (reordering, losing synced writes) ever is.

Storage faults (``docs/storage.md``, "Damage"): ``crash(lose_synced=j)`` also
reverts the last ``j`` synced writes: a torn or lost write of synced data, a
flipped bit in the last records (what ``FileStorage`` recovers as a shorter
log), or, with ``kind=DAMAGED_MID_LOG``, damage in the middle of the log that
``FileStorage(repair=True)`` cuts back to the intact prefix before it (a
flipped bit, a misdirected write). ``wipe_log()`` loses the whole map (a
damaged snapshot whose segments are gone, or an operator who removed the log
files). All are reported in ``damage``, exactly as ``FileStorage`` reports
them, until ``clear_damage``; the ``epoch`` survives them (it lives in the
superblock, which these faults spare).

Cost model (this runs for every protocol step in the simulator): ``put`` and
``delete`` are O(1) plus key validation, ``sync`` is O(number of buffered
writes), ``recover`` is O(size of the map) because it returns a copy.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from replicaio.storage.base import (
    KEY_BYTES_MAX,
    VALUE_BYTES_MAX,
    StorageDamage,
    StorageUsageError,
    check_key_value,
)

UNSYNCED_WRITES_MAX_DEFAULT = 1_000_000
SYNCED_HISTORY_MAX_DEFAULT = 256  # durable writes ``crash(lose_synced=...)`` may revert
LOST_SYNCED_WRITES = "lost synced writes"
DAMAGED_MID_LOG = "damaged log cut back to its intact prefix"


class MemoryStorage:
    """A ``Storage`` held in memory; ``crash`` simulates losing unsynced writes.

    Guarantees (the ``Storage`` contract, exactly): after ``sync`` returns, every
    write issued before it survives any later ``crash``; a ``crash`` keeps the
    durable state plus a prefix (never a reordering) of the unsynced writes.

    Bounds: at most ``unsynced_writes_max`` writes may be buffered between two
    syncs; one more raises ``StorageUsageError`` (the host must sync its
    batches, and an unbounded buffer would hide that bug).

    Counters: ``writes`` (puts and deletes accepted), ``syncs`` (calls to
    ``sync``), ``crashes``.
    """

    __slots__ = (
        "_closed",
        "_damage_pending",
        "_durable",
        "_epoch",
        "_history",
        "_pending",
        "_unsynced_writes_max",
        "crashes",
        "damage",
        "syncs",
        "writes",
    )

    def __init__(
        self,
        *,
        unsynced_writes_max: int = UNSYNCED_WRITES_MAX_DEFAULT,
        synced_history_max: int = SYNCED_HISTORY_MAX_DEFAULT,
    ) -> None:
        if unsynced_writes_max < 1:
            raise StorageUsageError(
                f"unsynced_writes_max must be at least 1, got {unsynced_writes_max}"
            )
        self._durable: dict[str, bytes] = {}
        # Buffered writes in issue order; a value of None is a delete.
        self._pending: list[tuple[str, bytes | None]] = []
        self._unsynced_writes_max = unsynced_writes_max
        # Undo records of the latest synced writes: (key, value before it), oldest first.
        self._history: deque[tuple[str, bytes | None]] = deque(maxlen=synced_history_max)
        self._closed = False
        self._epoch = 0
        self._damage_pending = ""  # the kind of a loss not yet cleared, survives crashes
        self.damage: StorageDamage | None = None
        self.writes = 0
        self.syncs = 0
        self.crashes = 0

    # -- the Storage interface ---------------------------------------------------------------

    def put(self, key: str, value: bytes) -> None:
        """Buffer ``key := value``; durable only once a later ``sync`` returns."""
        self._check_writable()
        if value is None:
            raise StorageUsageError("put needs a bytes value (use delete to remove a key)")
        check_key_value(key, value)
        if type(value) is not bytes:
            value = bytes(value)  # a bytearray/memoryview the caller may still mutate
        self._pending.append((key, value))
        self.writes += 1

    def delete(self, key: str) -> None:
        """Buffer the removal of ``key`` (absent keys are fine)."""
        self._check_writable()
        check_key_value(key, None)
        self._pending.append((key, None))
        self.writes += 1

    def write_and_sync(self, writes: Iterable[tuple[str, bytes | None]]) -> None:
        """``put`` (or ``delete``, for a value of None) each of ``writes`` in
        order, then ``sync``: the same checks, counts and outcome as those calls,
        in one call (a simulated step's batch of writes)."""
        self._check_open()
        pending = self._pending
        limit = self._unsynced_writes_max
        for key, value in writes:
            if len(pending) >= limit:
                self._check_writable()  # raises
            # check_key_value's common case (an ASCII key, a bytes value) inline
            if not (
                type(key) is str
                and key
                and len(key) <= KEY_BYTES_MAX
                and key.isascii()
                and (value is None or (type(value) is bytes and len(value) <= VALUE_BYTES_MAX))
            ):
                check_key_value(key, value)
                if value is not None and type(value) is not bytes:
                    value = bytes(value)  # a bytearray/memoryview the caller may still mutate
            pending.append((key, value))
            self.writes += 1
        self._apply(len(pending), remember=True)
        self.syncs += 1

    def sync(self) -> None:
        """Make every buffered write durable, in order. O(buffered writes)."""
        self._check_open()
        self._apply(len(self._pending), remember=True)
        self.syncs += 1
        assert not self._pending

    def recover(self) -> dict[str, bytes]:
        """Return a fresh copy of the durable state (buffered writes excluded)."""
        self._check_open()
        return dict(self._durable)

    def close(self) -> None:
        """Drop buffered writes and refuse further use until ``crash`` (a restart)."""
        self._pending.clear()
        self._closed = True

    # -- simulation controls -------------------------------------------------------------------

    @property
    def durable(self) -> dict[str, bytes]:
        """The durable map itself, not a copy (``recover`` copies): for a host's
        read-only checks across nodes (``replicaio.interfaces.durable``); never
        to be changed through."""
        return self._durable

    @property
    def unsynced_count(self) -> int:
        """How many buffered writes a ``crash`` could keep (the bound of ``keep_unsynced``)."""
        return len(self._pending)

    @property
    def synced_history_count(self) -> int:
        """How many synced writes ``crash(lose_synced=...)`` can revert."""
        return len(self._history)

    def crash(
        self, keep_unsynced: int = 0, *, lose_synced: int = 0, reported: bool = True,
        kind: str = LOST_SYNCED_WRITES,
    ) -> None:
        """Simulate a power loss and restart; the store is usable again afterwards.

        The durable state survives. Of the buffered writes, exactly the first
        ``keep_unsynced`` survive (they had reached the disk), the rest are lost.
        Works on a closed store too (a restart after a clean shutdown).

        ``lose_synced=j`` is a storage fault on top: the last ``j`` synced writes
        are lost too (and any unsynced ones after them), and ``damage`` says so
        (``reported=False``: a loss the store cannot detect, for tests of what a
        node does without the report), as ``kind``.
        """
        if not 0 <= keep_unsynced <= len(self._pending):
            raise StorageUsageError(
                f"keep_unsynced must be in [0, {len(self._pending)}], got {keep_unsynced}"
            )
        if not 0 <= lose_synced <= len(self._history):
            raise StorageUsageError(
                f"lose_synced must be in [0, {len(self._history)}], got {lose_synced}"
            )
        if lose_synced:
            self._pending.clear()
            for _ in range(lose_synced):
                key, previous = self._history.pop()
                if previous is None:
                    self._durable.pop(key, None)
                else:
                    self._durable[key] = previous
            if reported and not self._damage_pending:
                self._damage_pending = kind
        # The kept writes reached the disk: a later fault may lose them again.
        self._apply(keep_unsynced, remember=True)
        self._restart(f"{lose_synced} synced writes lost")

    def wipe_log(self) -> None:
        """A storage fault: the whole map is lost (the epoch survives); a restart."""
        self._pending.clear()
        self._durable.clear()
        self._history.clear()
        self._damage_pending = self._damage_pending or DAMAGED_MID_LOG
        self._restart("the whole log lost")

    def _restart(self, detail: str) -> None:
        self._pending.clear()
        self._closed = False
        self.crashes += 1
        self.damage = (
            StorageDamage(self._damage_pending, detail) if self._damage_pending else None
        )

    @property
    def epoch(self) -> int:
        """The highest number passed to ``set_epoch``; survives every fault."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Raise the epoch (durable at once)."""
        self._check_open()
        if epoch < self._epoch:
            raise StorageUsageError(f"the epoch never goes back: {epoch} < {self._epoch}")
        self._epoch = epoch

    def clear_damage(self) -> None:
        """The node has durably reacted to ``damage``: later restarts no longer report it."""
        self._check_open()
        self._damage_pending = ""

    def clone(self) -> MemoryStorage:
        """Return an independent copy (durable state and buffered writes).

        Lets a test or a model checker explore several crash outcomes from one
        point without replaying the history that led there.
        """
        twin = MemoryStorage(
            unsynced_writes_max=self._unsynced_writes_max,
            synced_history_max=self._history.maxlen or 0,
        )
        twin._durable = dict(self._durable)
        twin._pending = list(self._pending)
        twin._history = deque(self._history, maxlen=self._history.maxlen)
        twin._closed = self._closed
        twin._epoch = self._epoch
        twin._damage_pending = self._damage_pending
        twin.damage = self.damage
        return twin

    # -- internals -----------------------------------------------------------------------------

    def _apply(self, count: int, *, remember: bool = False) -> None:
        """Move the first ``count`` buffered writes into the durable state
        (``remember``: keep undo records, for ``crash(lose_synced=...)``)."""
        durable = self._durable
        pending = self._pending
        history = self._history
        remembered = remember and history.maxlen
        for key, value in pending[:count] if count < len(pending) else pending:
            if remembered:
                history.append((key, durable.get(key)))
            if value is None:
                durable.pop(key, None)
            else:
                durable[key] = value
        del pending[:count]

    def _check_open(self) -> None:
        if self._closed:
            raise StorageUsageError("MemoryStorage used after close (call crash() to restart it)")

    def _check_writable(self) -> None:
        self._check_open()
        if len(self._pending) >= self._unsynced_writes_max:
            raise StorageUsageError(
                f"more than unsynced_writes_max={self._unsynced_writes_max} writes buffered; "
                "the host must sync() each batch"
            )
