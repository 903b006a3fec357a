"""Opt-in hop tracing of a live node: where one request's time goes, hop by hop.

Off by default, and then it costs one ``is not None`` test at each stamp site.
With ``REPLICAIO_HOP_TRACE=DIRECTORY`` in a node's environment, the node stamps
the moments a request passes through it on ``time.monotonic_ns()`` (one clock
for every process of the machine, so the stamps of several nodes and of the
load generator merge): a RESP command parsed, an input into the inbox, a batch
taken, its steps done, its early sends released, its sync handed to the worker
thread, the thread started, the log's flush, the mark's flush, the loop back,
the batch released, a peer frame read and written, a reply written; and the
start and end of every garbage collection in the process (``gc.callbacks``),
whichever thread it ran on, so that a slow request can be matched with the
collections that paused its nodes. At a clean
stop (``NodeHost.shutdown``) it writes them to ``DIRECTORY/node<ID>.hops``,
one ``nanoseconds kind argument`` line per stamp; ``bench/trace_kv_hops.py``
merges them with its client's own stamps into a table of hops.

Bounded: at most ``EVENTS_MAX`` stamps are kept (the rest are counted, not
kept). The stamps may come from the sync thread as well as the loop's: each is
one ``list.append`` of one tuple, atomic under the GIL.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from pathlib import Path
from typing import Any

ENV = "REPLICAIO_HOP_TRACE"
EVENTS_MAX = 400_000

# The kinds of stamp (their numbers are the file format; bench/trace_kv_hops.py).
COMMAND = 0  # the RESP front parsed a command
SUBMIT = 1  # a client request put into the inbox
BATCH = 2  # the batch loop took a batch (arg: receives + 1000 requests + 10^6 timers)
STEPPED = 3  # every step of the batch done (arg: 1 if it wrote)
EARLY = 4  # the sends and replies that leave before the sync released
SYNC_CALL = 5  # the sync handed to the worker thread
SYNC_IN = 6  # the worker (pipelined: log) thread started the batch's write
LOG_FLUSHED = 7  # the log's write and flush returned
MARKED = 8  # the mark's flush returned (in the log or in the superblock; none if carried)
SYNC_BACK = 9  # the batch loop resumed after the sync
RELEASED = 10  # the batch's sends, timers, outputs and completions released
FRAME_IN = 11  # a peer frame read (arg: peer * 10^9 + bytes)
FRAME_OUT = 12  # peer frames written (arg: peer * 10^9 + bytes)
REPLY = 13  # the RESP front wrote a reply
GC_START = 14  # a garbage collection started (arg: its generation)
GC_END = 15  # it ended (arg: generation + 10 * objects collected)

NAMES = ("command", "submit", "batch", "stepped", "early", "sync_call", "sync_in",
         "log_flushed", "marked", "sync_back", "released", "frame_in", "frame_out", "reply",
         "gc_start", "gc_end")
PEER_UNIT = 1_000_000_000


class HopTrace:
    """One node's stamps (see the module docstring)."""

    __slots__ = ("dropped", "events", "path")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[tuple[int, int, int]] = []
        self.dropped = 0

    def stamp(self, kind: int, arg: int = 0) -> None:
        events = self.events
        if len(events) < EVENTS_MAX:
            events.append((time.monotonic_ns(), kind, arg))
        else:
            self.dropped += 1

    def trace_storage(self, storage: Any) -> None:
        """Stamp the two flushes of a sync (the log's write and flush, then the
        mark's) by wrapping the store's own methods on this instance only: the
        same stamps whether the host syncs in one call (``storage.sync()``) or
        pipelined (``write_sealed`` on its log thread; the mark on the log
        thread or the mark thread, ADR 0037). The mark is stamped where every
        path marks, ``_mark_flushed``: with marks in the log (ADR 0045, the
        default) that is a mark slot and a flush of the segment of its own (a
        lone batch) or nothing (the mark rode the next batch's flush), with
        marks in the superblock the superblock's write and flush. (Until
        one33 the superblock's ``_mark`` was wrapped, which a mark in the log
        never calls: its flush showed up in "thread done -> the loop resumes".)"""
        write_sealed, mark_flushed = storage.write_sealed, storage._mark_flushed

        def traced_write_sealed(sealed: Any) -> None:
            self.stamp(SYNC_IN)
            write_sealed(sealed)
            self.stamp(LOG_FLUSHED)

        def traced_mark_flushed() -> int:
            marked: int = mark_flushed()
            self.stamp(MARKED)
            return marked

        storage.write_sealed = traced_write_sealed
        storage._mark_flushed = traced_mark_flushed

    def trace_gc(self) -> None:
        """Stamp every garbage collection's start and end (until :meth:`untrace_gc`)."""
        if self.on_gc not in gc.callbacks:
            gc.callbacks.append(self.on_gc)

    def untrace_gc(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self.on_gc)

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.stamp(GC_START, info["generation"])
        else:
            self.stamp(GC_END, info["generation"] + 10 * info["collected"])

    def write(self) -> None:
        """Write the stamps to the file (at a clean stop)."""
        from replicaio import compiled

        loaded = compiled.status()["loaded"]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", encoding="ascii") as out:
            out.write(f"# dropped {self.dropped}\n")
            out.write(f"# compiled {len(loaded) if isinstance(loaded, list) else 0}\n")
            out.writelines(f"{at} {kind} {arg}\n" for at, kind, arg in self.events)


def from_environment(node_id: int) -> HopTrace | None:
    """A tracer for node ``node_id`` if ``REPLICAIO_HOP_TRACE`` names a directory."""
    directory = os.environ.get(ENV)
    if not directory:
        return None
    return HopTrace(Path(directory) / f"node{node_id}.hops")
