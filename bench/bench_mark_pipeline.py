"""The pipelined host's disk path alone: ``FileStorage`` + ``DurabilityPipeline``
with the sync mark in the log (ADR 0045) or in the superblock (ADR 0032), at
pipeline depths 2 and 3, and without marks.

Each of ``--writers`` processes (one per node of a cluster sharing this disk)
runs an asyncio loop that keeps up to ``depth`` batches sealed and not yet
released, as ``NodeHost.process_pipelined`` does: it seals a batch of
``--writes`` puts of ``--value-bytes``, submits it, and waits while ``depth``
batches are unreleased; a batch is released when the pipeline calls it durable.
No protocol, no network: what the layouts cost the disk and the disk threads.
Prints, per variant and round, the batches per second (summed over the
writers), the mean seal-to-release time, and the flushes per batch (log and
superblock ``fdatasync``s counted by the store). Rounds alternate the variants,
so a drift of the shared disk hits all of them.

    .venv/bin/python bench/bench_mark_pipeline.py --writers 3 --batches 400 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import tempfile
import time
from collections import deque
from pathlib import Path

from replicaio.runtime.durability import DurabilityPipeline
from replicaio.storage.file import FileStorage

# name -> (mark_syncs, marks_in_log, depth)
VARIANTS: dict[str, tuple[bool, bool, int]] = {
    "in-log-2": (True, True, 2),
    "in-log-3": (True, True, 3),
    "superblock-2": (True, False, 2),
    "superblock-3": (True, False, 3),
    "marks-off-2": (False, True, 2),
}


async def drive(store: FileStorage, *, mark: bool, depth: int, batches: int, writes: int,
                size: int) -> tuple[float, float]:
    """(seconds, mean seal-to-release seconds) for ``batches`` batches."""
    loop = asyncio.get_running_loop()
    unreleased: deque[tuple[int, float]] = deque()
    latencies: list[float] = []
    room = asyncio.Event()
    failure: list[BaseException] = []

    def durable(batch: int) -> None:
        now = time.perf_counter()
        while unreleased and unreleased[0][0] <= batch:
            latencies.append(now - unreleased.popleft()[1])
        room.set()

    def failed(error: BaseException) -> None:
        failure.append(error)
        room.set()

    pipeline = DurabilityPipeline(loop, store, mark=mark, on_durable=durable, on_error=failed)
    value = bytes(size)
    started = time.perf_counter()
    try:
        for number in range(batches):
            for index in range(writes):
                store.put(f"k{number % 512}-{index}", value)
            sealed = store.seal()
            assert sealed is not None
            unreleased.append((sealed.batch, time.perf_counter()))
            pipeline.submit(sealed)
            while len(unreleased) >= depth and not failure:
                room.clear()
                await room.wait()
            if failure:
                raise failure[0]
        while unreleased and not failure:
            room.clear()
            await room.wait()
    finally:
        pipeline.close()
    return time.perf_counter() - started, sum(latencies) / max(1, len(latencies))


def writer(variant: str, directory: str, batches: int, writes: int, size: int,
           results: multiprocessing.Queue[tuple[float, float, float]]) -> None:
    mark, in_log, depth = VARIANTS[variant]
    store = FileStorage(Path(directory), mark_syncs=mark, marks_in_log=in_log,
                        wal_bytes_compact_threshold=None)
    superblock = store._superblock
    assert superblock is not None
    fsyncs, superblock_writes = store.fsyncs, superblock.writes
    seconds, latency = asyncio.run(drive(store, mark=mark, depth=depth, batches=batches,
                                         writes=writes, size=size))
    flushes = store.fsyncs - fsyncs + superblock.writes - superblock_writes
    store.close()
    results.put((batches / seconds, latency, flushes / batches))


def round_of(variant: str, args: argparse.Namespace) -> tuple[float, float, float]:
    root = Path(tempfile.mkdtemp(prefix="bench-mark-pipeline-", dir=args.dir))
    try:
        results: multiprocessing.Queue[tuple[float, float, float]] = multiprocessing.Queue()
        processes = [multiprocessing.Process(target=writer, args=(
            variant, str(root / f"node-{index}"), args.batches, args.writes, args.value_bytes,
            results)) for index in range(args.writers)]
        for process in processes:
            process.start()
        found = [results.get(timeout=600) for _ in processes]
        for process in processes:
            process.join()
        rate = sum(rate for rate, _, _ in found)
        latency = sum(latency for _, latency, _ in found) / len(found)
        flushes = sum(flushes for _, _, flushes in found) / len(found)
        return rate, latency, flushes
    finally:
        shutil.rmtree(root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=3)
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--writes", type=int, default=8, help="puts per batch")
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--dir", default=None, help="where to make the stores (default: $TMPDIR)")
    args = parser.parse_args()
    variants = args.variants.split(",")
    table: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants}
    print(f"load average at start: {os.getloadavg()}")
    for number in range(args.rounds):
        for name in variants:
            table[name].append(round_of(name, args))
            rate, latency, flushes = table[name][-1]
            print(f"round {number + 1} {name}: {rate:,.0f} batches/s, "
                  f"{latency * 1000:.2f} ms seal-to-release, {flushes:.2f} flushes/batch",
                  flush=True)
    print(f"load average at end: {os.getloadavg()}")
    print("| variant | batches/s (rounds) | seal-to-release ms (rounds) | flushes per batch |")
    print("| --- | --- | --- | --- |")
    for name, rounds in table.items():
        rates = ", ".join(f"{rate:,.0f}" for rate, _, _ in rounds)
        latencies = ", ".join(f"{latency * 1000:.2f}" for _, latency, _ in rounds)
        flushes = sum(flushes for _, _, flushes in rounds) / len(rounds)
        print(f"| {name} | {rates} | {latencies} | {flushes:.2f} |")


if __name__ == "__main__":
    main()
