"""The Redis front's own Python per SET, in one process, without sockets.

``probe_resp_front_cpu.py`` measures the front with real sockets and
``redis-benchmark``: its figure (about 20 us per command) is mostly the read and
write system calls, and it drifts with the machine's load. This one drives
``RespService`` through its asyncio callbacks with transports that only count
bytes: 16 connections (made with ``ClientProtocol`` as the loop would, their
sessions registered first), each SET fed to ``ClientProtocol.data_received``,
the SMR request it submits decoded and applied to a real key-value state machine,
its completion and reply handed back (``on_done``, ``on_outputs``) and the reply
written. So the figure is the front's parse, plan, grouping, submission, reply
decoding and encoding per SET, plus the codec's decode and the store's apply (the
same in every tree), hot: the best of ``--rounds`` rounds of ``--sets`` SETs,
process CPU time per SET.

Run it with each tree's interpreter, from a directory without a ``replicaio``
package, to compare two fronts (alternate the trees):

    cd /tmp; for tree in /tmp/base /work/wt/new /tmp/base /work/wt/new; do
        $tree/.venv/bin/python -P /work/wt/new/bench/bench_front_micro.py; done
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from probe_resp_front_cpu import InstantHost  # noqa: E402

import replicaio  # noqa: E402
from replicaio.runtime.config import Address, HostParams  # noqa: E402
from replicaio.runtime.kv.connection import ClientProtocol  # noqa: E402
from replicaio.smr.api import Reply  # noqa: E402

CONNECTIONS = 16


class CountingTransport:
    """What the front asks of a transport, writing nowhere."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class HeldHost(InstantHost):
    """Holds the one request submitted (the caller executes it)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: tuple[Any, Callable[[str | None], None] | None] | None = None

    def try_submit(self, payload: Any, on_done: Callable[[str | None], None] | None = None
                   ) -> bool:
        self.held = (self.codec.decode(payload), on_done)
        return True

    def answer(self) -> None:
        assert self.held is not None
        request, on_done = self.held
        self.held = None
        result = self.kv.apply(request.command) if request.command else b""
        if on_done is not None:
            on_done(None)
        self.service.on_outputs([Reply(request.client, request.seq, result, 0)])


def command(index: int, value: bytes) -> bytes:
    key = b"key:%d" % index
    return b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(value), value)


async def measure(rounds: int, sets: int, value_bytes: int) -> list[float]:
    host = HeldHost()
    service = host.service
    await service.start(host, Address("127.0.0.1", 0), HostParams())
    try:
        protocols = []
        for _ in range(CONNECTIONS):
            protocol = ClientProtocol(service)
            protocol.connection_made(CountingTransport())  # type: ignore[arg-type]
            protocols.append(protocol)
        for protocol in protocols:  # a connection's first write registers its session (a task)
            protocol.data_received(command(0, b"v"))
            connection = protocol.connection
            assert connection is not None
            for _ in range(100):
                await asyncio.sleep(0)
                if host.held is not None:
                    host.answer()
                if connection.busy is None and connection.write_seq > 0:
                    break
            assert connection.write_seq > 0, "the session was not registered"
        commands = [command(index, b"v" * value_bytes) for index in range(1000)]
        per_set = []
        for _ in range(rounds):
            began = time.process_time()
            for index in range(sets):
                protocols[index % CONNECTIONS].data_received(commands[index % 1000])
                host.answer()
            per_set.append((time.process_time() - began) / sets)
        return per_set
    finally:
        await service.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--sets", type=int, default=20_000)
    parser.add_argument("--value-bytes", type=int, default=100)
    args = parser.parse_args()
    import uvloop

    uvloop.install()
    per_set = asyncio.run(measure(args.rounds, args.sets, args.value_bytes))
    tree = os.path.dirname(os.path.dirname(replicaio.__file__ or ""))
    ordered = sorted(per_set)
    print(f"{tree}: best {1e9 * ordered[0]:.0f} ns per SET, median "
          f"{1e9 * ordered[len(ordered) // 2]:.0f} (load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
