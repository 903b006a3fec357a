"""The storage interface every node's durable state goes through.

A node's durable state is a map from ``str`` keys to ``bytes`` values. The
deterministic core never touches storage itself: it emits ``Persist`` effects
(see ``replicaio.core.effects``) and the host applies them here, then calls
``sync`` once per batch (group commit) before releasing any message that
depends on them. On (re)start the host calls ``recover`` and hands the map to
the core.

Contract (checked by ``replicaio.testing.storage_conformance``):

* ``put``/``delete`` are buffered: they take effect for ``recover`` only once a
  later ``sync`` has returned. A crash before ``sync`` may lose any suffix of
  the unsynced writes, but never reorders them and never loses synced ones.
* ``recover`` returns exactly the state after the last completed ``sync``
  (plus, possibly, a prefix of the writes after it).
* Keys are non-empty ``str`` of at most ``KEY_BYTES_MAX`` UTF-8 bytes; values
  are ``bytes`` of at most ``VALUE_BYTES_MAX``. Violations raise
  ``StorageUsageError`` (a caller bug), never corrupt the store.
* Corruption that cannot be a torn tail raises ``StorageCorruptError``.
* ``damage`` reports what the last (re)start found missing that *may have been
  acknowledged* (a synced write lost, or a damaged tail that cannot be told
  from one). It stays reported at every start until the host calls
  ``clear_damage`` (after the node has durably reacted to it), so a crash in
  between never makes a loss forgotten.
* ``epoch`` is a number the host raises with ``set_epoch`` (the node's
  incarnation) that never goes back, whatever damage the store survives.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from replicaio.core.effects import Start

KEY_BYTES_MAX = 1024
VALUE_BYTES_MAX = 64 * 1024 * 1024


class StorageError(Exception):
    """Base class of storage errors."""


class StorageUsageError(StorageError):
    """The caller misused the store (bad key or value, use after close)."""


class StorageCorruptError(StorageError):
    """Durable state is corrupt in a way that is not a torn tail; refuse to start."""


@dataclass(frozen=True, slots=True)
class StorageDamage:
    """What a (re)start found missing that may have been acknowledged.

    ``kind``: ``"lost synced writes"`` (proof: a write that a completed
    ``sync`` covered is gone), ``"damaged tail, possibly acknowledged"`` (a
    torn tail the store cannot tell from lost acknowledged data), ``"damaged
    log cut back to its intact prefix"`` (damage in the middle of the log: every
    batch after it is dropped, ``FileStorage(repair=True)``), or
    ``"reported earlier"`` (found at an earlier start and not yet cleared).
    ``bytes_discarded``: bytes of the log dropped at this start.
    ``quarantine``: where the dropped part of a log damaged in its middle was
    moved (a directory name inside the store's directory), or ``""``.
    """

    kind: str
    detail: str
    bytes_discarded: int = 0
    quarantine: str = ""


class Storage(Protocol):
    """A durable ``str -> bytes`` map with explicit sync (group commit)."""

    @property
    def damage(self) -> StorageDamage | None:
        """What the last (re)start found lost (see the module docstring), or None."""
        ...

    @property
    def epoch(self) -> int:
        """The highest number ever passed to ``set_epoch`` (0 at first)."""
        ...

    def set_epoch(self, epoch: int) -> None:
        """Durably raise the epoch to ``epoch`` (at least the current one)."""
        ...

    def clear_damage(self) -> None:
        """The node has durably reacted to ``damage``: stop reporting it at restarts."""
        ...

    def put(self, key: str, value: bytes) -> None:
        """Buffer a write of ``value`` under ``key``."""
        ...

    def delete(self, key: str) -> None:
        """Buffer the removal of ``key`` (no error if absent)."""
        ...

    def sync(self) -> None:
        """Make every buffered write durable, in order."""
        ...

    def recover(self) -> Mapping[str, bytes]:
        """Return the durable state (after a restart, or at any time)."""
        ...

    def close(self) -> None:
        """Release resources; unsynced writes may be lost."""
        ...


def check_key_value(key: str, value: bytes | None) -> None:
    """Raise ``StorageUsageError`` unless ``key``/``value`` are within the contract."""
    if not isinstance(key, str) or not key:
        raise StorageUsageError(f"storage key must be a non-empty str, got {key!r}")
    if key.isascii():  # the common case: one byte per character, no encoding to do
        key_length = len(key)
    else:
        try:
            key_length = len(key.encode())
        except UnicodeEncodeError as error:  # lone surrogates: not representable on disk
            raise StorageUsageError(f"storage key is not valid UTF-8 text: {key!r}") from error
    if key_length > KEY_BYTES_MAX:
        raise StorageUsageError(f"storage key longer than {KEY_BYTES_MAX} bytes")
    if value is None:
        return
    if not isinstance(value, bytes | bytearray | memoryview):
        raise StorageUsageError(f"storage value must be bytes, got {type(value).__name__}")
    if len(value) > VALUE_BYTES_MAX:
        raise StorageUsageError(f"storage value longer than {VALUE_BYTES_MAX} bytes")


def start_input(storage: Storage) -> Start:
    """The ``Start`` input of a node over ``storage``: its state, whether it may
    have lost acknowledged writes, and the floor of its next incarnation."""
    return Start(storage.recover(), storage.damage is not None, storage.epoch)


def after_start(storage: Storage, incarnation: int) -> None:
    """Once the start step's writes are synced (and before any of its messages
    leave): the new incarnation becomes the epoch, and the damage, now handled
    by the node durably, stops being reported."""
    storage.set_epoch(incarnation)
    storage.clear_damage()
