"""The pipelined host's disk threads (ADR 0037): batches made durable in order.

The host seals a batch on its loop (``FileStorage.seal``: numbered, encoded)
and hands it to :meth:`DurabilityPipeline.submit`.

**Marks in the log** (the default, ADR 0045: ``FileStorage.carries_marks``):
one thread, the log thread, takes sealed batches first in, first out and
writes each (``FileStorage.write_sealed``: append, then one ``fdatasync``). If
the batch before it was flushed and not yet marked, the same flush carries that
batch's mark (a slot in the segment's first sector), and that batch is told
durable when the flush returns. When no later batch waits to be written, the
log thread marks its batch at once with a flush of its own (a lone batch, one
client: the same two flushes as before, no hand-off). So under load there is
one flush per batch; batch k is released only once k + 1's flush has returned,
which needs ``[host] pipeline`` >= 3 to have k + 2 sealed meanwhile (with 2 the
loop waits for k's release before it seals k + 2, and every other batch gets a
mark-only flush).

**Marks in the superblock** (``[host] marks_in_log = false``, ADR 0032's
layout), two threads:

* the **log thread** takes sealed batches first in, first out and writes and
  flushes each (``FileStorage.write_sealed``: append + ``fdatasync``; then a
  compaction if one is due), so batch k+1 is written only once batch k's flush
  has returned: at most one batch is ever partly on disk, the last, which is
  what recovery's torn-write rule assumes;
* the **mark thread** (``mark_syncs`` on) marks in the superblock the latest
  batch whose log flush has returned (``FileStorage.mark_flushed``, one
  ``fdatasync``). Marks coalesce: if batches k and k+1 are both flushed when
  the thread comes round, one mark covers both. When no later batch waits to
  be written and the mark thread is idle, the log thread marks its batch
  itself (*marks inline*, ADR 0042; ``[host] mark_inline``): its flush then
  overlaps nothing anyway, and the batch is spared the hand-off to the mark
  thread (a wake-up, and the GIL, on its critical path). Either way one
  thread marks at a time (``marking``), and each tells what it marked in turn,
  so the durable batch told never decreases.

A batch is *durable* once its mark has returned (with ``mark_syncs`` off:
once its log flush has). ``on_durable(batch)`` is then called on the loop
with the highest durable batch, never decreasing, so the host can release
every batch up to it in order. The first ``OSError`` (or bug) of either
thread stops both and is handed to ``on_error`` on the loop; the store has
closed itself by then (``FileStorage._fail``), and nothing after the failed
batch is called durable.

Superblock writes of the two threads (a mark; a rotation's or compaction's
mark) are serialised by the store's superblock lock. Bounded: the host holds
at most ``[host] pipeline`` batches sealed and not yet released, so the log
queue holds at most that many.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any

from replicaio.storage.base import StorageUsageError
from replicaio.storage.file import FileStorage, SealedBatch


class DurabilityPipeline:
    """The log thread and the mark thread of one pipelined host; see the module
    docstring. Every method is called on the loop's thread."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        storage: FileStorage,
        *,
        mark: bool,
        on_durable: Callable[[int], None],
        on_error: Callable[[BaseException], None],
        mark_inline: bool = True,
    ) -> None:
        self.loop = loop
        self.mark_inline = mark_inline
        self.storage = storage
        self.mark = mark
        self.on_durable = on_durable
        self.on_error = on_error
        self.jobs: queue.SimpleQueue[SealedBatch | None] = queue.SimpleQueue()
        self.condition = threading.Condition()
        self.flushed = 0  # the last batch whose log flush returned (log thread sets it)
        self.marked = 0  # the last batch marked (and told durable)
        self.marking = False  # a thread is marking (the mark thread or, inline, the log's)
        self.stopping = False  # no more batches will be flushed (mark thread's cue)
        self.failed = False
        self.log_thread = threading.Thread(target=self.run_log, name="replicaio-log",
                                           daemon=True)
        self.mark_thread = threading.Thread(target=self.run_mark, name="replicaio-mark",
                                            daemon=True)
        # Marks carried by the log's own flushes (ADR 0045): no mark thread.
        self.carry = mark and storage.carries_marks
        self.log_thread.start()
        if mark and not self.carry:
            self.mark_thread.start()

    def submit(self, sealed: SealedBatch) -> None:
        """Queue ``sealed`` behind the batches sealed before it."""
        self.jobs.put(sealed)

    def close(self) -> None:
        """Let the threads finish what was submitted (or stop at a failure) and end."""
        self.jobs.put(None)
        self.log_thread.join(10.0)
        if self.mark and not self.carry:
            self.mark_thread.join(10.0)

    # -- the threads -------------------------------------------------------------------------

    def run_log(self) -> None:
        if self.carry:
            self.run_log_carrying()
            return
        storage = self.storage
        try:
            while True:
                sealed = self.jobs.get()
                if sealed is None:
                    return
                try:
                    storage.write_sealed(sealed)
                    storage.compact_if_due()
                except BaseException as error:
                    self.fail(error)
                    return
                if self.mark:
                    with self.condition:
                        self.flushed = sealed.batch
                        inline = self.mark_inline and not self.marking and self.jobs.empty()
                        if inline:
                            self.marking = True
                        else:
                            self.condition.notify()
                    if inline and not self.mark_and_tell():
                        return
                else:
                    self.tell(self.on_durable, sealed.batch)
        finally:
            with self.condition:
                self.stopping = True
                self.condition.notify()

    def run_log_carrying(self) -> None:
        """The log thread with marks in the log (ADR 0045): each flush carries the
        mark of the batch before; a batch with none waiting behind it is marked
        by a flush of its own."""
        storage = self.storage
        jobs = self.jobs
        while True:
            sealed = jobs.get()
            if sealed is None:
                return
            try:
                storage.write_sealed(sealed)  # carries the previous batch's mark
                storage.compact_if_due()
                marked = storage.batch_marked
                if jobs.empty():
                    marked = storage.mark_flushed()  # nothing to carry it: its own flush
            except BaseException as error:
                self.fail(error)
                return
            if marked > self.marked:
                self.marked = marked
                self.tell(self.on_durable, marked)

    def run_mark(self) -> None:
        condition = self.condition
        while True:
            with condition:
                while ((self.flushed <= self.marked or self.marking)
                       and not self.stopping):
                    condition.wait()
                if self.flushed <= self.marked or self.failed or self.marking:
                    return  # stopping with every flushed batch marked (or failed)
                self.marking = True
            if not self.mark_and_tell():
                return

    def mark_and_tell(self) -> bool:
        """Mark every flushed batch, tell the loop, and end this thread's turn
        (``marking`` was claimed); ``False`` if the mark failed (told as well)."""
        try:
            marked = self.storage.mark_flushed()
        except StorageUsageError as error:
            # The store was closed under the mark: by the log thread's failure,
            # which is the error to tell (it is on its way; this one is its echo).
            if threading.current_thread() is not self.log_thread:
                self.log_thread.join(5.0)
            self.fail(error)
            return False
        except BaseException as error:
            self.fail(error)
            return False
        with self.condition:
            # Told before the turn ends: the other thread's next mark is told after.
            self.marked = max(self.marked, marked)
            self.tell(self.on_durable, self.marked)
            self.marking = False
            self.condition.notify()
        return True

    def fail(self, error: BaseException) -> None:
        with self.condition:
            if self.failed:
                return
            self.failed = True
            self.stopping = True
            self.condition.notify()
        self.tell(self.on_error, error)

    def tell(self, callback: Callable[[Any], None], argument: object) -> None:
        """Call ``callback(argument)`` on the loop (unless it is closed: the host
        failed and stopped meanwhile)."""
        # (No ``contextlib.suppress``: its exit is interpreted code that would hold
        # the GIL after the loop's wake-up, which the woken loop then waits for.)
        try:  # noqa: SIM105 (see above)
            self.loop.call_soon_threadsafe(callback, argument)
        except RuntimeError:
            pass
