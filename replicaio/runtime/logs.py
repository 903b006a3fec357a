"""Structured logs: one JSON object per line on stderr, with a level.

Every line has ``time`` (Unix seconds), ``at`` (the same instant in ISO 8601,
UTC, to the microsecond, for people), ``level``, ``logger``, ``message`` and
the node's ``node`` id, plus the fields of the event (``peer``, ``reason``,
``address``, ...): machine-readable first, still legible. Repeated warnings of
one kind (a flood of garbage connections) are rate-limited per key so a
hostile peer cannot fill the disk with our logs: the first ``burst_max`` of a
kind are logged, then one in every ``every``, each carrying the running count.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
import time
from typing import Any

FIELDS = "replicaio_fields"


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line."""

    def __init__(self, node_id: int | None) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": round(record.created, 6),
            "at": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="microseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.node_id is not None:
            line["node"] = self.node_id
        fields = getattr(record, FIELDS, None)
        if fields:
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, sort_keys=False)


def configure_logging(level: str = "info", node_id: int | None = None) -> None:
    """Send every ``replicaio`` logger to stderr as JSON lines at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(node_id))
    root = logging.getLogger("replicaio")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def log(logger: logging.Logger, level: int, message: str, **fields: Any) -> None:
    """Log ``message`` with structured ``fields``."""
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={FIELDS: fields})


class RateLimitedLog:
    """Logs the first ``burst_max`` events of each key, then one in ``every``."""

    def __init__(self, logger: logging.Logger, *, burst_max: int = 20, every: int = 1000) -> None:
        self.logger = logger
        self.burst_max = burst_max
        self.every = every
        self.seen: dict[str, int] = {}
        self.keys_max = 1024

    def __call__(self, level: int, key: str, message: str, **fields: Any) -> None:
        count = self.seen.get(key, 0) + 1
        if count == 1 and len(self.seen) >= self.keys_max:
            self.seen.clear()  # bounded: forget old kinds rather than grow
        self.seen[key] = count
        if count <= self.burst_max or count % self.every == 0:
            log(self.logger, level, message, occurrences=count, **fields)


def monotonic_us() -> int:
    return time.monotonic_ns() // 1000


WALL_PAIR_TRIES = 8  # readings of the clock pair; the tightest bracket is kept


def wall_minus_monotonic_us() -> tuple[int, int]:
    """The wall clock minus the monotonic clock, in microseconds, and the bound on
    its error: ``(offset, error)``.

    Each try reads the monotonic clock, the wall clock, the monotonic clock again,
    and keeps the try whose two monotonic readings are closest: a process
    preempted between two readings (a loaded machine: milliseconds) would
    otherwise put every time it converts off by that long. The wall reading is
    taken to be at the bracket's middle, so ``error`` is half the bracket.
    """
    best: tuple[int, int] | None = None
    for _ in range(WALL_PAIR_TRIES):
        before = time.monotonic_ns()
        wall = time.time_ns()
        after = time.monotonic_ns()
        width = after - before
        if best is None or width < best[1]:
            best = (wall - (before + after) // 2, width)
    assert best is not None
    return best[0] // 1000, (best[1] + 1999) // 2000
