"""Byzantine behaviours: what a faulty node does to its own outgoing traffic.

A Byzantine node in the simulator runs the honest protocol core (so it keeps
a plausible state), but an adversary resolves its choice points and rewrites
every message it sends. Authenticated links mean it cannot forge messages
from correct nodes; it can lie, equivocate, stay silent, send garbage, and
replay its own old messages. Behaviours:

* ``silent``: sends nothing at all;
* ``equivocate``: splits the other nodes into two sides (drawn from the seed)
  and tells one side the truth and the other a different value, in every
  message it sends, so that two correct nodes see conflicting claims;
* ``garbage``: replaces some messages by random bytes (exercising decoders);
* ``replay``: also re-sends its own earlier messages to random peers.

A custom :class:`Strategy` may do anything else, within the same powers.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import replace
from typing import Any

from replicaio.core.node import Envelope

REPLAY_BUFFER_MAX = 256


class Strategy:
    """Base behaviour: honest choices, messages passed through. Override either."""

    def __init__(self, node: int, n: int, rng: random.Random) -> None:
        self.node = node
        self.n = n
        self.rng = rng

    def choose(self, label: str, count: int) -> int:
        """Resolve a choice point of the faulty node (may force any alternative)."""
        return self.rng.randrange(count)

    def rewrite(self, destination: int, message: Any) -> list[tuple[int, Any]]:
        """What actually leaves for ``destination`` (messages or raw bytes)."""
        return [(destination, message)]


class Silent(Strategy):
    """Crash-like from the start, but counted against f."""

    def rewrite(self, destination: int, message: Any) -> list[tuple[int, Any]]:
        return []


def twist(body: Any) -> Any:
    """A different but well-formed value of the same type."""
    if isinstance(body, bytes):
        return body + b"~"
    if isinstance(body, str):
        return body + "~"
    if isinstance(body, bool):
        return not body
    if isinstance(body, int):
        return body + 1
    return body


class Equivocate(Strategy):
    """Tell half of the other nodes something else than the other half."""

    def __init__(self, node: int, n: int, rng: random.Random) -> None:
        super().__init__(node, n, rng)
        others = [peer for peer in range(n) if peer != node]
        rng.shuffle(others)
        self.lied_to = frozenset(others[: max(1, len(others) // 2)])

    def rewrite(self, destination: int, message: Any) -> list[tuple[int, Any]]:
        if destination in self.lied_to and type(message) is Envelope:
            return [(destination, replace(message, body=twist(message.body)))]
        return [(destination, message)]


class Garbage(Strategy):
    """Sometimes random bytes instead of a message; sometimes both."""

    def rewrite(self, destination: int, message: Any) -> list[tuple[int, Any]]:
        roll = self.rng.random()
        junk = self.rng.randbytes(self.rng.randint(0, 64))
        if roll < 0.3:
            return [(destination, junk)]
        if roll < 0.6:
            return [(destination, junk), (destination, message)]
        return [(destination, message)]


class Replay(Strategy):
    """Also re-send its own old messages to random peers."""

    def __init__(self, node: int, n: int, rng: random.Random) -> None:
        super().__init__(node, n, rng)
        self.past: deque[Any] = deque(maxlen=REPLAY_BUFFER_MAX)

    def rewrite(self, destination: int, message: Any) -> list[tuple[int, Any]]:
        out = [(destination, message)]
        if self.past and self.rng.random() < 0.5:
            old = self.past[self.rng.randrange(len(self.past))]
            out.append((self.rng.randrange(self.n), old))
        self.past.append(message)
        return [(target, sent) for target, sent in out if target != self.node]


BEHAVIOURS: dict[str, type[Strategy]] = {
    "equivocate": Equivocate,
    "silent": Silent,
    "garbage": Garbage,
    "replay": Replay,
}
