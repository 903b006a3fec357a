"""CPU per peer message through the runtime's plumbing alone: transport and inbox.

Two node hosts in one process talk over the real peer transport (TCP on
127.0.0.1, the handshake, session MACs): each host's real batch loop and
inbox take the frames, but its ``process`` is replaced by an echo (node 1
sends every payload back; node 0 counts the echo and sends the next), so no
core, disk or client is involved. ``--window`` messages are kept in flight.
The figure is the process's CPU time (user + system, every thread) per 1,000
round trips (each round trip: two frames sealed, written, read, checked and
two inputs through an inbox and a batch), and round trips per wall second.

It runs whatever ``replicaio`` the interpreter imports, so the old and the new
code can be measured in turn on one machine (run it from a directory that
holds no ``replicaio`` package, with each tree's own ``.venv``)::

    cd /tmp
    /work/main/.venv/bin/python /work/main/bench/bench_peer_plumbing.py --window 1
    OLD/.venv/bin/python /work/main/bench/bench_peer_plumbing.py --window 1

``--rounds`` alternates nothing by itself: call it with each interpreter in
turn (``--json`` for one line per run) and compare medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from replicaio.core.effects import Receive
from replicaio.runtime.host import NodeHost, run_event_loop
from replicaio.runtime.local import LocalCluster
from replicaio.runtime.transport import Transport

NEW_INBOX = hasattr(NodeHost, "offer")  # else: asyncio.Queue + Semaphore, deliver coroutine


class EchoHost(NodeHost):
    """The real inbox and batch loop; ``process`` echoes (node 1) or counts and
    sends the next message (node 0)."""

    def __init__(self, cluster: Any, node_id: int) -> None:
        super().__init__(cluster, node_id)
        self.round_trips = 0
        self.payload = b"x" * 100

    async def process(self, batch: Any, *, before_release: Any = None) -> None:
        transport = self.transport
        assert transport is not None
        for _, event in batch:
            if isinstance(event, Receive):
                if self.node_id == 1:
                    transport.send(0, event.message)
                else:
                    self.round_trips += 1
                    transport.send(1, self.payload)


async def measure(cluster: Any, window: int, seconds: float) -> dict[str, float]:
    hosts = [EchoHost(cluster, node) for node in (0, 1)]
    for host in hosts:
        if not NEW_INBOX:  # what NodeHost.start sets up in the old code
            host.inbox = asyncio.Queue()  # type: ignore[assignment]
            host.slots = asyncio.Semaphore(host.params.inbox_max)  # type: ignore[attr-defined]
        peers = {entry.id: entry.peer for entry in cluster.nodes if entry.id != host.node_id}
        inbox: Any = host if NEW_INBOX else host.deliver  # type: ignore[attr-defined]
        host.transport = Transport(host.node_id, host.entry.peer, peers,
                                   cluster.authenticator(host.node_id), cluster.transport,
                                   inbox, host.counters)
    for host in hosts:
        assert host.transport is not None
        await host.transport.start()
    loops = [asyncio.create_task(host.batch_loop()) for host in hosts]
    try:
        first = hosts[0]
        assert first.transport is not None
        for _ in range(window):
            first.transport.send(1, first.payload)
        while first.round_trips < 100:  # connected and warm
            await asyncio.sleep(0.01)
        began_cpu, began = time.process_time(), time.perf_counter()
        counted = first.round_trips
        await asyncio.sleep(seconds)
        cpu, wall = time.process_time() - began_cpu, time.perf_counter() - began
        trips = first.round_trips - counted
    finally:
        for host in hosts:
            host.stop()
        await asyncio.gather(*loops, return_exceptions=True)
        for host in hosts:
            assert host.transport is not None
            await host.transport.close()
    return {"round_trips": trips, "cpu_ms_per_1000": 1e6 * cpu / max(trips, 1),
            "per_wall_s": trips / wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--window", type=int, default=1, help="messages in flight")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import replicaio

    directory = Path(tempfile.mkdtemp(prefix="peer-plumbing-"))
    cluster = LocalCluster(directory, protocol="raft", nodes=2).cluster
    results: list[dict[str, float]] = []

    async def rounds() -> None:
        for _ in range(args.rounds):
            results.append(await measure(cluster, args.window, args.seconds))

    run_event_loop(rounds(), args.loop)
    figures = {
        "code": str(Path(replicaio.__file__).parent.parent),
        "inbox": ("deque + waiter, PeerReader" if NEW_INBOX
                  else "asyncio.Queue + Semaphore, streams"),
        "loop": args.loop, "window": args.window, "load": os.getloadavg()[0],
        "cpu_ms_per_1000_median": statistics.median(r["cpu_ms_per_1000"] for r in results),
        "per_wall_s_median": statistics.median(r["per_wall_s"] for r in results),
        "rounds": results,
    }
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"{figures['code']} ({figures['inbox']}), loop {args.loop}, window "
              f"{args.window}, load {figures['load']:.1f}: "
              f"CPU {figures['cpu_ms_per_1000_median']:.1f} ms per 1,000 round trips, "
              f"{figures['per_wall_s_median']:.0f} round trips/s "
              f"(rounds: {', '.join(format(r['cpu_ms_per_1000'], '.1f') for r in results)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
