"""What one acknowledged batch costs the disk under three layouts of the sync mark.

Each of ``--writers`` processes (one per node of a cluster sharing this disk) appends
4 KiB batches to its own log file and makes each durable, ``--batches`` times, in one
of three ways:

* ``two-files``: today's pipelined host (ADR 0032, 0037): batch k's log flush on one
  thread while the mark of batch k-1 (a 64-byte slot of a separate superblock file)
  is flushed on another, both awaited;
* ``one-file``: the mark of batch k-1 written in place in a slot at the head of the
  log file itself, then one ``fdatasync`` for both (what "the mark of k rides with the
  data of k+1" would cost: the ordering ADR 0032 needs is kept, since k's own flush
  had returned before its mark is written);
* ``data-only``: the log flush alone (``mark_syncs = false``: the floor).

It prints, per layout and round, the p50, p99 and mean time per batch (averaged
over the writers) and the batches per second each writer made. Rounds alternate
the layouts, so a drift of the shared disk hits all three.

    .venv/bin/python bench/bench_flush_layouts.py --writers 3 --batches 600 --rounds 3
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import threading
import time
from pathlib import Path

LAYOUTS = ("two-files", "one-file", "data-only")
BATCH = b"d" * 4096
SLOT_BYTES = 64


def write_batches(layout: str, directory: str, batches: int,
                  results: multiprocessing.Queue[tuple[float, float, float]]) -> None:
    log = os.open(os.path.join(directory, "log"), os.O_RDWR | os.O_CREAT, 0o644)
    marks = os.open(os.path.join(directory, "superblock"), os.O_RDWR | os.O_CREAT, 0o644)
    os.pwrite(log, bytes(4096 * (batches + 2)), 0)  # preallocated, as FileStorage does
    os.pwrite(marks, bytes(4096), 0)
    os.fsync(log)
    os.fsync(marks)

    def mark(batch: int) -> None:
        os.pwrite(marks, batch.to_bytes(8, "little") * 8, SLOT_BYTES * (batch % 2))
        os.fdatasync(marks)

    offset = 4096
    took: list[float] = []
    for batch in range(batches):
        started = time.perf_counter()
        os.pwrite(log, BATCH, offset)
        offset += len(BATCH)
        if layout == "two-files":
            marker = threading.Thread(target=mark, args=(batch,))
            marker.start()
            os.fdatasync(log)
            marker.join()
        elif layout == "one-file":
            os.pwrite(log, batch.to_bytes(8, "little") * 8, SLOT_BYTES * (batch % 2))
            os.fdatasync(log)
        else:
            os.fdatasync(log)
        took.append(time.perf_counter() - started)
    os.close(log)
    os.close(marks)
    took.sort()
    results.put((took[len(took) // 2], took[int(len(took) * 0.99)], sum(took) / len(took)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writers", type=int, default=3)
    parser.add_argument("--batches", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--directory", default=None, help="where (default: a temporary "
                        "directory beside this checkout, on the disk the tests use)")
    args = parser.parse_args()
    base = Path(args.directory or tempfile.mkdtemp(prefix="flush-layouts-",
                                                   dir=Path(__file__).resolve().parent.parent))
    print(f"writers {args.writers}, batches {args.batches} of 4 KiB, in {base}; "
          f"load {os.getloadavg()[0]:.1f}")
    for round_number in range(args.rounds):
        for layout in LAYOUTS:
            results: multiprocessing.Queue[tuple[float, float, float]] = multiprocessing.Queue()
            workers = []
            for writer in range(args.writers):
                directory = base / f"{layout}-{round_number}-{writer}"
                directory.mkdir(parents=True)
                workers.append(multiprocessing.Process(
                    target=write_batches, args=(layout, str(directory), args.batches, results)))
            started = time.perf_counter()
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            wall = time.perf_counter() - started
            figures = [results.get() for _ in workers]
            p50, p99, mean = (1000 * sum(f[i] for f in figures) / len(figures) for i in range(3))
            print(f"round {round_number} {layout:9}  p50 {p50:.3f} ms  p99 {p99:.3f} ms  "
                  f"mean {mean:.3f} ms  {args.batches / wall:,.0f} batches/s per writer")
    for path in sorted(base.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    base.rmdir()
    print(f"load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
