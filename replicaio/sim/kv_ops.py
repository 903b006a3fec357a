"""The simulated clients' operations on keys with a deadline and on lists.

``putx`` is ``SET key value PXAT deadline`` with a deadline up to
:data:`TTL_MS_MAX` after its call, in the log's clock (the simulator's virtual
time, in ms, is what SMR stamps batches with); ``rpush`` appends one unique
element; ``lrange`` reads a whole list (through the read barrier, at the
client's clock, or through the log). See ``check.linearizability.timed`` for
how the checker judges them.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Final

from replicaio.check.history import LRANGE, PUTX, RPUSH
from replicaio.services.kv.state_machine import encode_redis

TTL_MS_MAX: Final = 300  # a putx's deadline: its call plus up to this much


@dataclass(frozen=True, slots=True)
class PlannedOp:
    """One operation as the history and the KV store each see it."""

    kind: str
    key: str
    value: str | None
    expected: str | None
    read_only: bool
    command: bytes



def plan_typed(kind: str, key: str, unique: str, now_us: int, rng: random.Random,
               read_via_log: float) -> PlannedOp:
    """A ``putx``, ``rpush`` or ``lrange`` on ``key``, invoked now."""
    if kind == PUTX:
        deadline = str(now_us // 1000 + rng.randrange(1, TTL_MS_MAX))
        command = encode_redis("set", key.encode(), unique.encode(), b"PXAT", deadline.encode())
        return PlannedOp(PUTX, key, unique, deadline, False, command)
    if kind == RPUSH:
        return PlannedOp(RPUSH, key, unique, None, False,
                         encode_redis("rpush", key.encode(), unique.encode()))
    assert kind == LRANGE
    return PlannedOp(LRANGE, key, None, None, rng.random() >= read_via_log,
                     encode_redis("lrange", key.encode(), b"0", b"-1"))


def lrange_output(value: object) -> str:
    """The history's output of an ``lrange``: its elements as a JSON array."""
    assert isinstance(value, tuple)
    return json.dumps([item.decode("utf-8", "replace") for item in value
                       if isinstance(item, bytes)])
