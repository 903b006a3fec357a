"""The cost of marking every sync in the superblock (``FileStorage(mark_syncs=...)``).

Each sync writes one small batch (``--writes`` puts of ``--value-bytes``) and
fsyncs it; with marks, one more ``fdatasync`` of a 64-byte superblock slot
follows. Prints syncs per second for both settings, best of ``--runs``.

    .venv/bin/python bench/bench_storage_marks.py --dir /var/tmp --syncs 500
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from replicaio.storage.file import FileStorage


def syncs_per_second(directory: Path, *, marks: bool, syncs: int, writes: int, size: int) -> float:
    value = bytes(size)
    with FileStorage(directory, mark_syncs=marks, wal_bytes_compact_threshold=None) as store:
        started = time.perf_counter()
        for number in range(syncs):
            for index in range(writes):
                store.put(f"k{number}-{index}", value)
            store.sync()
        return syncs / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="where to make the stores (default: $TMPDIR)")
    parser.add_argument("--syncs", type=int, default=500)
    parser.add_argument("--writes", type=int, default=4, help="puts per sync")
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for marks in (False, True):
        best = 0.0
        for _ in range(args.runs):
            root = Path(tempfile.mkdtemp(dir=args.dir))
            try:
                best = max(best, syncs_per_second(
                    root / "store", marks=marks, syncs=args.syncs, writes=args.writes,
                    size=args.value_bytes,
                ))
            finally:
                shutil.rmtree(root)
        print(f"mark_syncs={marks}: {best:,.0f} syncs/s (best of {args.runs})")


if __name__ == "__main__":
    main()
