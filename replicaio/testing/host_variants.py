"""Deliberately broken disk threads for the pipelined host (ADR 0037), for the
tests that must catch them (``tests/test_host_pipeline.py``): each releases a
batch before it is durable in its own way."""

from __future__ import annotations

import threading

from replicaio.runtime.durability import DurabilityPipeline
from replicaio.storage.file import SealedBatch


class ReleaseAtSubmit(DurabilityPipeline):
    """Calls a batch durable as it is handed over, before its write: a host that
    does not wait for its disk at all."""

    def submit(self, sealed: SealedBatch) -> None:
        super().submit(sealed)
        self.loop.call_soon(self.on_durable, sealed.batch)


class ReleaseAtLogFlush(DurabilityPipeline):
    """Calls a batch durable once its log flush returns, without waiting for the
    mark (``mark_syncs`` on): a crash then may lose the mark of a released
    batch, and a later loss of that batch reads as a torn write (ADR 0032)."""

    def run_log(self) -> None:
        storage, write = self.storage, self.storage.write_sealed

        def write_and_tell(sealed: SealedBatch) -> None:
            write(sealed)
            self.tell(self.on_durable, sealed.batch)

        storage.write_sealed = write_and_tell  # type: ignore[method-assign]
        super().run_log()


class ReleaseBeforeCarryingFlush(DurabilityPipeline):
    """With marks in the log (ADR 0045): calls batch k durable as the write of
    batch k + 1 begins, before the flush that carries k's mark has returned. A
    crash inside that flush may keep k's records and lose its mark, and a later
    loss of k then reads as a torn write: a released batch lost unnoticed."""

    def run_log_carrying(self) -> None:
        storage, write = self.storage, self.storage.write_sealed

        def tell_and_write(sealed: SealedBatch) -> None:
            if sealed.batch > 1:
                self.tell(self.on_durable, sealed.batch - 1)
            write(sealed)

        storage.write_sealed = tell_and_write  # type: ignore[method-assign]
        super().run_log_carrying()


class ReleaseBeforeInlineMark(DurabilityPipeline):
    """The log thread, marking its own batch (``[host] mark_inline``), calls it
    durable before the mark has returned: the inline path's own way to release
    a batch whose mark a crash may still lose."""

    def mark_and_tell(self) -> bool:
        if threading.current_thread() is self.log_thread:
            self.tell(self.on_durable, self.flushed)
        return super().mark_and_tell()
