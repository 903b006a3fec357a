"""Nanoseconds per call of the live path's small pieces, the old way beside the new.

cpu32's changes to the leader's and the followers' main thread are each worth
a percent or less of a SET's CPU, too little to show through a loaded 2-core
machine's drift in a cluster run; here each old way and its replacement run
in one process, alternated round by round, on the loop the node runs (uvloop
where installed), and the fastest round of each is printed in ns per call:

* **length**: a RESP length header through the regular expression (old)
  against ``resp.parse_length`` (new, the digits' fast path);
* **command**, **waiter**: a ``Command`` and a ``Waiter`` made by a dataclass's
  generated ``__init__`` (old) against the plain classes (new);
* **transport**: ``StreamWriter.transport`` (old, a Python property) against the
  connection's own slot (new).

Run it with the tree's interpreter, from a directory without a ``replicaio``
package (``cd /tmp; /work/wt/cpu32/.venv/bin/python /work/wt/cpu32/bench/bench_live_micro.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from replicaio.compiled import status
from replicaio.runtime.host import run_event_loop
from replicaio.runtime.kv.connection import Command
from replicaio.runtime.kv.requests import Waiter
from replicaio.services.kv.resp import parse_length

LENGTH = re.compile(rb"-?[0-9]{1,19}")


def old_parse_length(line: bytes) -> int | None:
    if LENGTH.fullmatch(line) is None:
        return None
    return int(line)


@dataclasses.dataclass(slots=True)
class OldCommand:
    argv: list[bytes]
    received: float
    size: int


@dataclasses.dataclass(slots=True)
class OldWaiter:
    seq: int
    future: Any = None
    on_outcome: Any = None


def timed(body: Callable[[int], None], calls: int) -> float:
    began = time.perf_counter_ns()
    body(calls)
    return (time.perf_counter_ns() - began) / calls


async def pairs(calls: int) -> dict[str, tuple[Callable[[int], None], Callable[[int], None]]]:
    def nothing(*_: object) -> None:
        pass

    lines = [b"3", b"17", b"100", b"1024"]

    def length_old(count: int) -> None:
        for index in range(count):
            old_parse_length(lines[index & 3])

    def length_new(count: int) -> None:
        for index in range(count):
            parse_length(lines[index & 3])

    argv = [b"SET", b"key:000001", b"x" * 100]

    def command_old(count: int) -> None:
        for _ in range(count):
            OldCommand(argv, 1.0, 200)

    def command_new(count: int) -> None:
        for _ in range(count):
            Command(argv, 1.0, 200)

    def waiter_old(count: int) -> None:
        for seq in range(count):
            OldWaiter(seq, None, nothing)

    def waiter_new(count: int) -> None:
        for seq in range(count):
            Waiter(seq, None, nothing)

    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)

    class Slot:
        __slots__ = ("transport",)

        def __init__(self, transport: asyncio.WriteTransport) -> None:
            self.transport = transport

    slot = Slot(writer.transport)

    def transport_old(count: int) -> None:
        for _ in range(count):
            writer.transport.get_write_buffer_size()

    def transport_new(count: int) -> None:
        for _ in range(count):
            slot.transport.get_write_buffer_size()

    pairs.closing = (writer, server)  # type: ignore[attr-defined]
    return {"length": (length_old, length_new),
            "command": (command_old, command_new), "waiter": (waiter_old, waiter_new),
            "transport": (transport_old, transport_new)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200_000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures: dict[str, dict[str, list[float]]] = {}

    async def run() -> None:
        table = await pairs(args.calls)
        for round_number in range(args.rounds):
            for name, (old, new) in table.items():
                entry = figures.setdefault(name, {"old": [], "new": []})
                # Which goes first alternates (a round's second run finds warm caches).
                for label in (("old", "new") if round_number % 2 else ("new", "old")):
                    entry[label].append(timed(old if label == "old" else new, args.calls))
        writer, server = pairs.closing  # type: ignore[attr-defined]
        writer.close()
        server.close()

    run_event_loop(run())
    load = os.getloadavg()[0]
    loaded = status()["loaded"]
    assert isinstance(loaded, list)
    # The fastest round of each: on a shared machine every slower one was
    # interrupted by others' work.
    result = {name: {"old_ns": min(entry["old"]), "new_ns": min(entry["new"])}
              for name, entry in figures.items()}
    if args.json:
        print(json.dumps({"load": load, "compiled": len(loaded), "calls": result}))
        return 0
    print(f"load {load:.2f}, {len(loaded)} modules compiled, "
          f"fastest of {args.rounds} rounds of {args.calls:,} calls, ns per call:")
    for name, entry in result.items():
        print(f"  {name:10s} old {entry['old_ns']:7.1f}  new {entry['new_ns']:7.1f}  "
              f"saved {entry['old_ns'] - entry['new_ns']:7.1f}  new/old "
              f"{entry['new_ns'] / entry['old_ns']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
