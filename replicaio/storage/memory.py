"""In-memory storage with power-loss semantics, for the simulator.

``MemoryStorage`` keeps two things: the *durable* map (what a disk would hold
after the last completed ``sync``) and the list of *buffered* writes since
then, in issue order. ``crash(keep_unsynced=k)`` models a power loss: the
durable map survives, the first ``k`` buffered writes reach the "disk", the
rest are lost. The simulator draws ``k`` from its seed (``0 <= k <=
unsynced_count``) so that every prefix the contract allows is reachable, and
nothing the contract forbids (reordering, losing synced writes) ever is.

Cost model (this runs for every protocol step in the simulator): ``put`` and
``delete`` are O(1) plus key validation, ``sync`` is O(number of buffered
writes), ``recover`` is O(size of the map) because it returns a copy.
"""

from __future__ import annotations

from replicaio.storage.base import StorageUsageError, check_key_value

UNSYNCED_WRITES_MAX_DEFAULT = 1_000_000


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
        "_durable",
        "_pending",
        "_unsynced_writes_max",
        "crashes",
        "syncs",
        "writes",
    )

    def __init__(self, *, unsynced_writes_max: int = UNSYNCED_WRITES_MAX_DEFAULT) -> None:
        if unsynced_writes_max < 1:
            raise StorageUsageError(
                f"unsynced_writes_max must be at least 1, got {unsynced_writes_max}"
            )
        self._durable: dict[str, bytes] = {}
        # Buffered writes in issue order; a value of None is a delete.
        self._pending: list[tuple[str, bytes | None]] = []
        self._unsynced_writes_max = unsynced_writes_max
        self._closed = False
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

    def sync(self) -> None:
        """Make every buffered write durable, in order. O(buffered writes)."""
        self._check_open()
        self._apply(len(self._pending))
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
    def unsynced_count(self) -> int:
        """How many buffered writes a ``crash`` could keep (the bound of ``keep_unsynced``)."""
        return len(self._pending)

    def crash(self, keep_unsynced: int = 0) -> None:
        """Simulate a power loss and restart; the store is usable again afterwards.

        The durable state survives. Of the buffered writes, exactly the first
        ``keep_unsynced`` survive (they had reached the disk), the rest are lost.
        Works on a closed store too (a restart after a clean shutdown).
        """
        if not 0 <= keep_unsynced <= len(self._pending):
            raise StorageUsageError(
                f"keep_unsynced must be in [0, {len(self._pending)}], got {keep_unsynced}"
            )
        self._apply(keep_unsynced)
        self._pending.clear()
        self._closed = False
        self.crashes += 1

    def clone(self) -> MemoryStorage:
        """Return an independent copy (durable state and buffered writes).

        Lets a test or a model checker explore several crash outcomes from one
        point without replaying the history that led there.
        """
        twin = MemoryStorage(unsynced_writes_max=self._unsynced_writes_max)
        twin._durable = dict(self._durable)
        twin._pending = list(self._pending)
        twin._closed = self._closed
        return twin

    # -- internals -----------------------------------------------------------------------------

    def _apply(self, count: int) -> None:
        """Move the first ``count`` buffered writes into the durable state."""
        durable = self._durable
        pending = self._pending
        for key, value in pending[:count] if count < len(pending) else pending:
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
