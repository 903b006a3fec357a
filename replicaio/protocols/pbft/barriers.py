"""Read barriers shared by reads, for the primary-backup BFT protocols (PBFT, MinBFT).

A read barrier is a batch of a replica's own, ordered like any other batch and
handed to SMR as an empty one. A read that waits for a barrier submitted after
it arrived sees every write that completed before it (the barrier's number is
above them). Reads share barriers: one barrier is in flight (submitted to the
order), and the next one is *open*: every read that comes meanwhile gets its
line, and it is submitted when the one in flight executes, or at the next
status period if the one in flight was lost (a primary failed). So under load
a read costs no sequence number of its own.

Guarantees: every line handed out is set to the number at which its barrier
executed, or never (the barrier was lost, or dropped by the bound; SMR's read
times out and the client retries). Bounded: at most ``limit`` barriers wait
for execution; the oldest is dropped first (counted ``bound_<name>_barriers_max``).
Pure: no I/O, clock or randomness; the same calls give the same batches.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from replicaio.core.context import Context
from replicaio.core.lines import Line

BARRIER_FIELDS = struct.Struct(">IQQ")  # replica, incarnation, number


class ReadBarriers:
    """One replica's read barriers. ``name`` prefixes its counters and line names
    (``pbft``, ``minbft``); ``magic`` starts every barrier batch (the protocol
    recognises its barriers by it); ``submit`` hands a batch to the order."""

    __slots__ = (
        "bound_counter",
        "context",
        "in_flight",
        "limit",
        "line_name",
        "magic",
        "next_number",
        "open",
        "sharing_counter",
        "submit",
        "waiting",
    )

    def __init__(self, context: Context, name: str, magic: bytes, limit: int,
                 submit: Callable[[bytes], None]) -> None:
        self.context = context
        self.magic = magic
        self.limit = limit
        self.submit = submit
        self.line_name = f"{name}.barrier"
        self.sharing_counter = f"{name}_reads_sharing_barrier"
        self.bound_counter = f"bound_{name}_barriers_max"
        self.waiting: dict[bytes, Line[int]] = {}  # barriers not yet executed
        self.next_number = 0
        self.in_flight: bytes | None = None
        self.open: tuple[bytes, Line[int]] | None = None

    def __len__(self) -> int:
        return len(self.waiting)

    def barrier(self) -> Line[int]:
        """A line set to the number at which a barrier submitted after this call
        executed: every write that completed before the call is below it."""
        found = self.open
        if found is not None:
            self.context.count(self.sharing_counter)
            return found[1]
        waiting = self.waiting
        if len(waiting) >= self.limit:
            del waiting[next(iter(waiting))]  # the oldest has long timed out in SMR
            self.context.count(self.bound_counter)
        number = self.next_number
        self.next_number += 1
        data = self.magic + BARRIER_FIELDS.pack(
            self.context.id, self.context.node.incarnation, number)
        line: Line[int] = Line(self.context.node.scheduler, (self.line_name, number))
        waiting[data] = line
        if self.in_flight is None:
            self.send(data)
        else:
            self.open = (data, line)
        return line

    def executed(self, batch: bytes, seq: int) -> None:
        """The barrier batch ``batch`` (of any replica) executed at ``seq``."""
        line = self.waiting.pop(batch, None)
        if line is not None:
            line.set(seq)
        if batch == self.in_flight:
            self.send_open()

    def on_status_tick(self) -> None:
        """A status period went by: the barrier in flight may have been lost with
        a primary, so the open one leaves."""
        if self.open is not None:
            self.send_open()

    def send(self, data: bytes) -> None:
        self.in_flight = data
        self.submit(data)

    def send_open(self) -> None:
        found = self.open
        self.in_flight = None
        if found is not None:
            self.open = None
            if found[0] in self.waiting:
                self.send(found[0])
