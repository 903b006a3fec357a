"""Per-client nonce windows: a group refuses a signed attempt it has already run.

Theory of operation
-------------------
A client of a Byzantine fault tolerant cluster signs every attempt ``(client,
nonce, ops)`` (ADR 0029); a Byzantine node that saw one may send it again at
any time. While a group remembers the attempt (a coordinator record, a
participant's outcome) the copy is recognised; once those bounded tables
forgot it, only this table stands between the copy and a second execution
(ADR 0030).

Per client, the highest nonce accepted (``high``) and a bitmap of the
``window`` nonces below it, as IPsec's anti-replay window (RFC 4303, 3.4.3):
a nonce above ``high`` is fresh (the window slides); one within the window is
fresh once; one below the window is refused (too old to tell). A client that
runs up to ``window`` attempts at once, in any order, is never refused.

Bounded: at most ``clients_max`` windows, the least recently used evicted
first (in applied order: every replica evicts alike), as SMR's sessions. An
evicted client's ``high`` is not lost: it raises the *floor* of its bucket
(the client id modulo ``buckets``), and a client without a window may only
use nonces above its bucket's floor. So a copy of an evicted client's attempt
is still refused; what eviction costs is liveness, never safety: a new
client whose bucket's floor is above its nonces is refused until it moves on
(a new identity, as after SMR's ``session_expired``).

Pure and deterministic; part of the store's snapshots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class WindowParams:
    """Bounds of one table of nonce windows (every replica must agree)."""

    clients_max: int = 4096  # windows kept (least recently used evicted first)
    window: int = 64  # nonces below the highest one still accepted once
    buckets: int = 1024  # floors kept for evicted clients, by client id modulo this

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            assert getattr(self, name) >= 1, name


class NonceWindows:
    """Which ``(client, nonce)`` were accepted, per client (see the module docstring)."""

    __slots__ = ("evictions", "floors", "params", "windows")

    def __init__(self, params: WindowParams | None = None) -> None:
        self.params = params or WindowParams()
        # client -> [high, bits, floor]: bit i set: nonce high - 1 - i was accepted;
        # nonces at or below ``floor`` (its bucket's when the window opened) are refused.
        # Insertion order is recency order: the first entry is evicted first.
        self.windows: dict[int, list[int]] = {}
        self.floors: dict[int, int] = {}  # bucket -> highest nonce of an evicted client
        self.evictions = 0

    def fresh(self, client: int, nonce: int) -> bool:
        """Whether ``(client, nonce)`` was never accepted (and may be now)."""
        found = self.windows.get(client)
        if found is None:
            return nonce > self.floor(client)
        high, bits, floor = found
        if nonce > high:
            return True
        if nonce == high or nonce <= floor:
            return False
        below = high - 1 - nonce
        return below < self.params.window and not bits >> below & 1

    def floor(self, client: int) -> int:
        """The highest nonce an evicted client of ``client``'s bucket had (-1: none)."""
        return self.floors.get(client % self.params.buckets, -1)

    def accept(self, client: int, nonce: int) -> None:
        """Record ``(client, nonce)`` as accepted (it must be :meth:`fresh`)."""
        assert self.fresh(client, nonce), (client, nonce)
        found = self.windows.pop(client, None)
        if found is None:
            while len(self.windows) >= self.params.clients_max:
                self.evict()
            # (Nothing accepted yet, nonces start at 0; below the floor, all refused.)
            found = [-1, 0, self.floor(client)]
        high, bits, floor = found
        mask = (1 << self.params.window) - 1
        if nonce > high:
            shift = nonce - high
            bits = ((bits << shift) | (1 << (shift - 1) if high >= 0 else 0)) & mask
            high = nonce
        else:
            bits |= 1 << (high - 1 - nonce)
        self.windows[client] = [high, bits, floor]

    def evict(self) -> None:
        client, (high, _, _) = next(iter(self.windows.items()))
        del self.windows[client]
        bucket = client % self.params.buckets
        self.floors[bucket] = max(self.floors.get(bucket, 0), high)
        self.evictions += 1

    def __len__(self) -> int:
        return len(self.windows)

    def footprint(self) -> tuple[int, int]:
        """Windows and floors held now (at most ``clients_max`` and ``buckets``)."""
        return len(self.windows), len(self.floors)

    def snapshot(self) -> list[Any]:
        return [[[client, *window] for client, window in self.windows.items()],
                sorted(self.floors.items()), self.evictions]

    def restore(self, value: Any) -> None:
        windows, floors, evictions = value
        self.windows = {client: [high, bits, floor] for client, high, bits, floor in windows}
        self.floors = {bucket: floor for bucket, floor in floors}
        self.evictions = evictions
