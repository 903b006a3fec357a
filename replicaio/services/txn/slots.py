"""Keys to groups by hash slot, as Redis Cluster does: 16,384 slots, CRC16 of the key.

A cluster of G groups owns the 16,384 slots; the :class:`SlotMap` (part of
the cluster configuration) says which group owns which slot. The slot of a
key is CRC16 (the XMODEM variant Redis Cluster uses) of the key, modulo
16,384; a key with a non-empty ``{...}`` hash tag is hashed on the tag only,
so ``{user1}.cart`` and ``{user1}.profile`` live in one group (Redis
Cluster's rule). Pure and deterministic: no salted ``hash()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from replicaio.core.errors import ConfigError

SLOTS: Final = 16_384
GROUPS_MAX: Final = 64


def _crc16_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return tuple(table)


_TABLE: Final = _crc16_table()


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM): polynomial 0x1021, initial 0, as Redis Cluster."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _TABLE[((crc >> 8) ^ byte) & 0xFF]
    return crc


def hash_slot(key: bytes) -> int:
    """The slot of ``key`` (its ``{tag}`` only, when it has a non-empty one)."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return crc16(key) % SLOTS


@dataclass(frozen=True, slots=True)
class SlotMap:
    """Which group owns each slot: ``owners[i]`` owns slots from ``starts[i]``
    up to the next start (``starts[0] == 0``, increasing)."""

    groups: int
    starts: tuple[int, ...]
    owners: tuple[int, ...]

    @staticmethod
    def even(groups: int) -> SlotMap:
        """Slots split into ``groups`` contiguous ranges of (nearly) equal size."""
        if not 1 <= groups <= GROUPS_MAX:
            raise ConfigError(f"groups must be in 1..{GROUPS_MAX}, got {groups}")
        starts = tuple(group * SLOTS // groups for group in range(groups))
        return SlotMap(groups, starts, tuple(range(groups))).validate()

    def validate(self) -> SlotMap:
        if not (self.starts and self.starts[0] == 0 and len(self.starts) == len(self.owners)):
            raise ConfigError("a slot map starts at slot 0 with one owner per range")
        if any(b <= a for a, b in zip(self.starts, self.starts[1:], strict=False)):
            raise ConfigError("slot ranges must start in increasing order")
        if self.starts[-1] >= SLOTS:
            raise ConfigError(f"slots are 0..{SLOTS - 1}")
        if any(not 0 <= owner < self.groups for owner in self.owners):
            raise ConfigError(f"a slot owner is a group in 0..{self.groups - 1}")
        return self

    def group_of_slot(self, slot: int) -> int:
        low, high = 0, len(self.starts) - 1
        while low < high:  # the last range starting at or before ``slot``
            middle = (low + high + 1) // 2
            if self.starts[middle] <= slot:
                low = middle
            else:
                high = middle - 1
        return self.owners[low]

    def group_of(self, key: bytes) -> int:
        return self.group_of_slot(hash_slot(key))

    def split(self, keys: Sequence[bytes]) -> dict[int, list[bytes]]:
        found: dict[int, list[bytes]] = {}
        for key in keys:
            found.setdefault(self.group_of(key), []).append(key)
        return found
