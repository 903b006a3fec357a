"""Run ``replicaio node`` under ``tracemalloc``, dumping a snapshot on SIGUSR1.

A development aid for ``bench/bench_kv_rss.py --tracemalloc DIR``: the node
process starts ``tracemalloc`` (``--frames`` deep) before anything else and,
on each SIGUSR1, writes ``DIR/node-<pid>-<k>.snapshot`` (``Snapshot.dump``) and,
in ``DIR/node-<pid>-<k>.snapshot.done``, the traced bytes then and at their peak
since the previous snapshot.
Comparing two snapshots of one process names the lines whose allocations grew
between them (``python bench/tracemalloc_node.py --diff A B``).

    python bench/tracemalloc_node.py --dir /tmp/snaps -- node --config c.toml --id 0
    python bench/tracemalloc_node.py --diff /tmp/snaps/node-1-0.snapshot \
        /tmp/snaps/node-1-1.snapshot
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType


def diff(before: Path, after: Path, top: int, group: str = "lineno") -> list[str]:
    """The ``top`` allocation sites that grew most from ``before`` to ``after``,
    without tracemalloc's own and the import machinery's allocations."""
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__),
              tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
              tracemalloc.Filter(False, "<unknown>")]
    old = tracemalloc.Snapshot.load(str(before)).filter_traces(ignore)
    new = tracemalloc.Snapshot.load(str(after)).filter_traces(ignore)
    lines = []
    for stat in new.compare_to(old, group)[:top]:
        where = stat.traceback.format(limit=4) if group == "traceback" else [str(stat.traceback)]
        lines.append(f"{stat.size_diff / 1024:+10.1f} KiB {stat.count_diff:+8d} blocks  "
                     + " <- ".join(item.strip() for item in where))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, help="where SIGUSR1 writes snapshots")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--diff", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--group", default="lineno", choices=("lineno", "traceback"))
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="-- then replicaio's arguments")
    args = parser.parse_args()
    if args.diff:
        print("\n".join(diff(args.diff[0], args.diff[1], args.top, args.group)))
        return 0
    assert args.dir is not None, "--dir is needed to run a node"
    tracemalloc.start(args.frames)
    taken = [0]

    def dump(signum: int, frame: FrameType | None) -> None:
        path = args.dir / f"node-{os.getpid()}-{taken[0]}.snapshot"
        taken[0] += 1
        # The traced heap now and at its peak since the previous dump (read
        # before the snapshot, which allocates): a peak far above the live heap
        # is a transient burst (an allocator high-water mark in RSS), not a leak.
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.take_snapshot().dump(str(path))
        tracemalloc.reset_peak()
        (args.dir / f"{path.name}.done").write_text(f"{current} {peak}\n")

    signal.signal(signal.SIGUSR1, dump)
    from replicaio.cli import main as replicaio_main

    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    return replicaio_main(argv)


if __name__ == "__main__":
    sys.exit(main())
