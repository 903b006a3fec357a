"""What one log sync's flush costs, appended against written into preallocated zeros.

Small records (``--record-bytes``, a one-client SET's batch) are made durable
one at a time, four ways, in interleaved rounds so that every way sees the
same disk load:

* ``append+fsync``: ``write`` at the end of the file, ``fsync`` (the log before
  preallocation);
* ``append+fdatasync``: the same with ``fdatasync`` (still a new file size to
  commit at every flush);
* ``fallocate+fdatasync``: ``pwrite`` into space reserved by
  ``posix_fallocate`` (unwritten extents: the first write into each block
  converts it, a metadata change);
* ``zeros+fdatasync``: ``pwrite`` over zeros written and synced beforehand
  (``FileStorage``'s ``preallocate_bytes``): a data flush only.

Then ``FileStorage.sync`` itself (two records per batch, marks on), with and
without ``preallocate_bytes``, interleaved. Prints p10/p50/p90/mean in
microseconds and the load average.

    .venv/bin/python bench/probe_log_flush.py --dir /var/tmp --flushes 300 --rounds 6
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from replicaio.storage.file import FileStorage

WAYS = ("append+fsync", "append+fdatasync", "fallocate+fdatasync", "zeros+fdatasync")
FILE_BYTES = 8 << 20


def open_way(path: Path, way: str) -> int:
    flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | (os.O_APPEND if way.startswith("append") else 0)
    fd = os.open(path, flags, 0o644)
    if way.startswith("fallocate"):
        os.posix_fallocate(fd, 0, FILE_BYTES)
    elif way.startswith("zeros"):
        chunk = bytes(1 << 20)
        for _ in range(FILE_BYTES >> 20):
            os.write(fd, chunk)
    os.fsync(fd)
    return fd


def flush_ways(root: Path, flushes: int, rounds: int, record: bytes) -> dict[str, list[float]]:
    took: dict[str, list[float]] = {way: [] for way in WAYS}
    for _ in range(rounds):
        for way in WAYS:
            fd = open_way(root / way, way)
            flush: Callable[[int], None] = os.fsync if way.endswith("+fsync") else os.fdatasync
            offset = 0
            try:
                for _ in range(flushes):
                    started = time.perf_counter()
                    if way.startswith("append"):
                        os.write(fd, record)
                    else:
                        os.pwrite(fd, record, offset)
                        offset += len(record)
                    flush(fd)
                    took[way].append(time.perf_counter() - started)
            finally:
                os.close(fd)
                os.unlink(root / way)
    return took


def store_syncs(root: Path, syncs: int, record: bytes) -> dict[str, list[float]]:
    stores = {
        "FileStorage, preallocated": FileStorage(root / "a", wal_bytes_compact_threshold=None),
        "FileStorage, appended": FileStorage(
            root / "b", wal_bytes_compact_threshold=None, preallocate_bytes=0
        ),
    }
    took: dict[str, list[float]] = {name: [] for name in stores}
    try:
        for number in range(syncs):
            order = list(stores.items())
            for name, store in order if number % 2 else reversed(order):
                store.put(f"k{number}", record)
                store.put("raft-state", record[:40])
                started = time.perf_counter()
                store.sync()
                took[name].append(time.perf_counter() - started)
    finally:
        for store in stores.values():
            store.close()
    return took


def show(took: dict[str, list[float]]) -> None:
    for name, samples in took.items():
        ordered = sorted(samples)
        count = len(ordered)
        p10, p50 = ordered[count // 10] * 1e6, ordered[count // 2] * 1e6
        p90, mean = ordered[int(count * 0.9)] * 1e6, statistics.mean(ordered) * 1e6
        print(f"  {name:28} p10 {p10:7.0f}  p50 {p50:7.0f}  p90 {p90:7.0f}  mean {mean:7.0f}"
              f"  us  ({count} flushes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="where to write (default: $TMPDIR)")
    parser.add_argument("--flushes", type=int, default=300, help="per way per round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--record-bytes", type=int, default=180)
    args = parser.parse_args()
    record = b"x" * args.record_bytes
    root = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        print(f"load average {os.getloadavg()}; {root}")
        show(flush_ways(root, args.flushes, args.rounds, record))
        show(store_syncs(root, args.flushes * args.rounds // 2, record))
        print(f"load average {os.getloadavg()}")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
