"""The floor: the thinnest Python replicated KV with replicaio's shape, for ``bench_kv.py``.

Issue 13 asks for a one-client SET at or above etcd's throughput and a p50 of
0.8 ms, on a two-core machine whose three nodes, load generator and anchors
share the cores. This program answers what part of that is Python, the
operating system and the disk, and what part is replicaio: it does what a
replicaio Raft KV does per SET on the critical path and nothing else, so its
figures are a floor no framework in Python on this machine goes below with the
same durability.

What it does (three processes; node 0 leads, fixed: no terms, elections, or
recovery; this is a measurement, not a protocol):

* the leader takes RESP commands from its clients (``SET k v``, ``GET k``,
  ``PING``) with an ``asyncio.Protocol`` on uvloop (when installed), joins the
  commands of one turn of its loop into a batch, sends the batch to both
  followers first (as replicaio's leader does, Raft thesis 10.2.1), then hands
  it to its log thread;
* every node's **log thread** appends each batch to a preallocated file
  (``pwrite`` of a length-and-CRC-framed record) and flushes it
  (``fdatasync``). With ``--flushes 2`` (replicaio's default guarantee, ADR
  0045) a batch with no later batch queued behind it gets a mark of its own
  (a 16-byte slot in the file's first sector) and a second ``fdatasync``
  before it is told durable; a batch with one behind it has its mark carried
  by that one's flush. With ``--flushes 1`` (etcd's guarantee) a batch is
  durable when its own flush returns. The loop learns of it through
  ``call_soon_threadsafe``, as replicaio's host does;
* a follower acknowledges a batch (its number, cumulative) once it is durable
  and then applies its SETs to a dict;
* the leader commits a batch once it is durable on the leader and on one
  follower, applies it in order and replies. A GET joins a batch like a SET
  and is answered after that batch commits (a read ordered through the log,
  as PySyncObj's anchor does; replicaio's read index is cheaper, so the floor's
  mixed figure is no floor for GETs).

Left out on purpose, because a floor is what remains without them: terms,
elections, the log's index and term checks, sessions, snapshots and
compaction, the event log, metrics, flow control, authentication of peers.
Every queue is bounded only by the closed-loop clients (one request each).

Run by ``bench_kv.py --systems floor,floor-1flush,...``; alone:

    python bench/kv_floor_node.py --id 1 --listen PORT --dir D        # a follower
    python bench/kv_floor_node.py --id 0 --client-port P --peers P1,P2 --dir D
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import queue
import struct
import sys
import threading
import zlib
from collections.abc import Callable
from typing import Any, cast

LOOPBACK = "127.0.0.1"
FILE_BYTES = 64 << 20  # preallocated with zeros, written round (a floor keeps no history)
SECTOR = 4096  # the first sector holds the mark slots
RECORD = struct.Struct("!QII")  # batch, payload length, CRC-32 of the payload
MARK = struct.Struct("!QQ")  # slot sequence, batch
FRAME = struct.Struct("!IQ")  # payload length, batch (leader -> follower: a batch)
ACK = struct.Struct("!Q")  # the highest durable batch (follower -> leader)

# ``--ballast N``: N distinct small functions, each run once at each of a node's
# per-batch points on the critical path (the leader's batch and its commit, a
# follower's batch), to test whether distinct code per SET, cold after every wait,
# is what a SET's round trip pays for (ADR 0060, 0063). Each is a few lines of the
# kind a protocol step runs: a dict read and write, a branch, a small list.
BALLAST_SOURCE = """
def ballast_{i}(state):
    count = state.get({slot}, 0) + {i}
    if count & 1:
        state[{slot}] = count - 1
    else:
        state[{slot}] = count + 1
    items = [count, {i}, len(state)]
    return items[{pick}] + state.get("x{i}", 0)
"""


def make_ballast(count: int) -> list[Callable[[dict[object, int]], int]]:
    """``count`` functions, each its own code object (none shares bytecode)."""
    namespace: dict[str, Any] = {}
    source = "".join(BALLAST_SOURCE.format(i=i, slot=i % 7, pick=i % 3) for i in range(count))
    exec(compile(source, "<ballast>", "exec"), namespace)
    return [namespace[f"ballast_{i}"] for i in range(count)]


def run_ballast(functions: list[Callable[[dict[object, int]], int]],
                state: dict[object, int]) -> None:
    for function in functions:
        function(state)


class Log:
    """One node's log file and its log thread; see the module docstring."""

    def __init__(self, path: str, flushes: int, loop: asyncio.AbstractEventLoop,
                 on_durable: Callable[[int], None]) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        zeros = bytes(1 << 20)
        for offset in range(0, FILE_BYTES, len(zeros)):
            os.pwrite(self.fd, zeros, offset)
        os.fsync(self.fd)
        self.flushes = flushes
        self.loop = loop
        self.on_durable = on_durable
        self.offset = SECTOR
        self.slot = 0
        self.jobs: queue.SimpleQueue[tuple[int, bytes] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self.run, name="floor-log", daemon=True)
        self.thread.start()

    def submit(self, batch: int, payload: bytes) -> None:
        self.jobs.put((batch, payload))

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join(5.0)
        os.close(self.fd)

    def write_mark(self, batch: int) -> None:
        self.slot += 1
        os.pwrite(self.fd, MARK.pack(self.slot, batch), (self.slot % (SECTOR // MARK.size))
                  * MARK.size)

    def run(self) -> None:
        jobs = self.jobs
        fd = self.fd
        unmarked = 0  # flushed, its mark not yet written (rides the next flush)
        while True:
            job = jobs.get()
            if job is None:
                return
            batch, payload = job
            data = RECORD.pack(batch, len(payload), zlib.crc32(payload)) + payload
            if self.offset + len(data) > FILE_BYTES:
                self.offset = SECTOR
            os.pwrite(fd, data, self.offset)
            self.offset += len(data)
            carried = unmarked
            if carried:
                self.write_mark(carried)
            os.fdatasync(fd)
            told = carried
            if self.flushes == 1:
                told = batch
            elif jobs.empty():
                self.write_mark(batch)  # a lone batch: a flush of its own for its mark
                os.fdatasync(fd)
                told = batch
                unmarked = 0
            else:
                unmarked = batch
            if told:
                self.loop.call_soon_threadsafe(self.on_durable, told)


def parse_resp(buffer: bytearray) -> tuple[list[list[bytes]], int]:
    """The whole RESP arrays at the start of ``buffer`` and the bytes they take."""
    commands: list[list[bytes]] = []
    at = 0
    size = len(buffer)
    while at < size:
        if buffer[at] != 0x2A:  # '*'
            raise ValueError("expected a RESP array")
        end = buffer.find(b"\r\n", at)
        if end < 0:
            break
        count = int(buffer[at + 1:end])
        cursor = end + 2
        words: list[bytes] = []
        for _ in range(count):
            end = buffer.find(b"\r\n", cursor)
            if end < 0:
                break
            length = int(buffer[cursor + 1:end])
            start = end + 2
            if start + length + 2 > size:
                break
            words.append(bytes(buffer[start:start + length]))
            cursor = start + length + 2
        if len(words) < count:
            break
        commands.append(words)
        at = cursor
    return commands, at


class ClientConnection(asyncio.Protocol):
    """A client of the leader: its commands go into the leader's next batch."""

    def __init__(self, leader: Leader) -> None:
        self.leader = leader
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        commands, used = parse_resp(self.buffer)
        del self.buffer[:used]
        for words in commands:
            self.leader.command(self, words)


class Leader:
    """Node 0: batches, replicates, commits in order, replies."""

    def __init__(self, loop: asyncio.AbstractEventLoop, directory: str, flushes: int,
                 ballast: int = 0) -> None:
        self.loop = loop
        self.ballast = make_ballast(ballast)
        self.ballast_state: dict[object, int] = {}
        self.log = Log(os.path.join(directory, "log"), flushes, loop, self.on_own_durable)
        self.data: dict[bytes, bytes] = {}
        self.pending: list[tuple[ClientConnection, list[bytes]]] = []
        self.flush_scheduled = False
        self.batch = 0
        self.inflight: dict[int, list[tuple[ClientConnection, list[bytes]]]] = {}
        self.durable = 0
        self.acked = 0  # the highest batch durable on some follower
        self.committed = 0
        self.followers: list[asyncio.StreamWriter] = []
        self.readers: list[asyncio.Task[None]] = []  # one per follower: its acknowledgements

    def command(self, connection: ClientConnection, words: list[bytes]) -> None:
        name = words[0].upper() if words else b""
        if name == b"PING":
            assert connection.transport is not None
            connection.transport.write(b"+PONG\r\n")
            return
        if name not in (b"SET", b"GET"):
            assert connection.transport is not None
            connection.transport.write(b"-ERR the floor knows SET, GET and PING\r\n")
            return
        self.pending.append((connection, words))
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """The commands of this turn of the loop as one batch: to the followers, then
        to the leader's own log."""
        self.flush_scheduled = False
        commands = self.pending
        self.pending = []
        run_ballast(self.ballast, self.ballast_state)
        self.batch += 1
        payload = b"".join(encode_command(words) for _, words in commands)
        frame = FRAME.pack(len(payload), self.batch) + payload
        for writer in self.followers:
            writer.write(frame)
        self.inflight[self.batch] = commands
        self.log.submit(self.batch, payload)

    def on_own_durable(self, batch: int) -> None:
        self.durable = batch
        self.commit()

    def on_ack(self, batch: int) -> None:
        if batch > self.acked:
            self.acked = batch
            self.commit()

    def commit(self) -> None:
        target = min(self.durable, self.acked)
        if self.committed < target:
            run_ballast(self.ballast, self.ballast_state)
        replies: dict[ClientConnection, list[bytes]] = {}
        while self.committed < target:
            self.committed += 1
            for connection, words in self.inflight.pop(self.committed):
                if words[0].upper() == b"SET":
                    self.data[words[1]] = words[2]
                    reply = b"+OK\r\n"
                else:
                    value = self.data.get(words[1])
                    reply = (b"$-1\r\n" if value is None
                             else b"$%d\r\n%s\r\n" % (len(value), value))
                replies.setdefault(connection, []).append(reply)
        for connection, parts in replies.items():
            if connection.transport is not None and not connection.transport.is_closing():
                connection.transport.write(b"".join(parts))

    async def read_acks(self, reader: asyncio.StreamReader) -> None:
        while True:
            data = await reader.readexactly(ACK.size)
            self.on_ack(ACK.unpack(data)[0])


def encode_command(words: list[bytes]) -> bytes:
    return b"".join([b"%d:" % len(words)] + [b"%d:%s" % (len(word), word) for word in words])


def decode_sets(payload: bytes) -> list[tuple[bytes, bytes]]:
    """The SETs of a batch's payload (``encode_command``'s), for a follower to apply."""
    sets: list[tuple[bytes, bytes]] = []
    at = 0
    while at < len(payload):
        colon = payload.index(b":", at)
        count = int(payload[at:colon])
        at = colon + 1
        words = []
        for _ in range(count):
            colon = payload.index(b":", at)
            length = int(payload[at:colon])
            words.append(payload[colon + 1:colon + 1 + length])
            at = colon + 1 + length
        if words[0].upper() == b"SET":
            sets.append((words[1], words[2]))
    return sets


class Follower:
    """Nodes 1 and 2: log each batch, acknowledge it once durable, apply it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, directory: str, flushes: int,
                 ballast: int = 0) -> None:
        self.ballast = make_ballast(ballast)
        self.ballast_state: dict[object, int] = {}
        self.log = Log(os.path.join(directory, "log"), flushes, loop, self.on_durable)
        self.data: dict[bytes, bytes] = {}
        self.payloads: dict[int, bytes] = {}
        self.writer: asyncio.StreamWriter | None = None

    def on_durable(self, batch: int) -> None:
        if self.writer is not None:
            self.writer.write(ACK.pack(batch))
        for number in sorted(b for b in self.payloads if b <= batch):
            for key, value in decode_sets(self.payloads.pop(number)):
                self.data[key] = value

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        while True:
            header = await reader.readexactly(FRAME.size)
            length, batch = FRAME.unpack(header)
            payload = await reader.readexactly(length)
            self.payloads[batch] = payload
            run_ballast(self.ballast, self.ballast_state)
            self.log.submit(batch, payload)


def nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        import socket

        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def main_async(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    loop_name = type(loop).__module__.split(".")[0]
    if args.id == 0:
        leader = Leader(loop, args.dir, args.flushes, args.ballast)
        for port in (int(p) for p in args.peers.split(",")):
            reader, writer = await asyncio.open_connection(LOOPBACK, port)
            nodelay(writer)
            leader.followers.append(writer)
            leader.readers.append(loop.create_task(leader.read_acks(reader)))
        server = await loop.create_server(lambda: ClientConnection(leader), LOOPBACK,
                                          args.client_port)
    else:
        follower = Follower(loop, args.dir, args.flushes, args.ballast)

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nodelay(writer)
            try:
                await follower.serve(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                return

        server = await asyncio.start_server(serve, LOOPBACK, args.listen)
    print(json.dumps({"ready": True, "id": args.id, "loop": loop_name,
                      "flushes": args.flushes, "ballast": args.ballast}), flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--id", type=int, required=True, help="0 leads; 1 and 2 follow")
    parser.add_argument("--dir", required=True, help="where this node's log file goes")
    parser.add_argument("--flushes", type=int, choices=(1, 2), default=2,
                        help="2: a lone batch's mark gets a flush of its own (replicaio's "
                             "default); 1: one flush per batch (etcd's guarantee)")
    parser.add_argument("--listen", type=int, default=0, help="a follower's peer port")
    parser.add_argument("--client-port", type=int, default=0, help="the leader's RESP port")
    parser.add_argument("--peers", default="", help="the leader: the followers' ports")
    parser.add_argument("--ballast", type=int, default=0,
                        help="distinct small functions run at each per-batch point (a "
                             "measurement of cold code; see BALLAST_SOURCE)")
    args = parser.parse_args(argv)
    if args.id == 0 and (not args.client_port or len(args.peers.split(",")) != 2):
        parser.error("the leader needs --client-port and two --peers")
    if args.id != 0 and not args.listen:
        parser.error("a follower needs --listen")
    if args.ballast < 0:
        parser.error("--ballast must not be negative")
    run: Any
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
