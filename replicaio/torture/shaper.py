"""Delay, jitter and reordering of real packets, for kernels without ``sch_netem``.

The torture's testbed sends a node's outgoing packets to an NFQUEUE (an
``iptables ... -j NFQUEUE --queue-bypass`` rule inside the node's namespace);
this process, run in the same namespace, receives each packet's id over
netlink, holds it for a drawn delay (``delay_ms`` plus a uniform draw in
``[-jitter_ms, +jitter_ms]``, never below zero; ``reorder_percent`` of the
packets go at once, as netem's ``reorder`` does) and then lets the kernel send
it (``NF_ACCEPT``). The packets themselves never leave the kernel, so TCP
sees real delay and reordering on the real path, which a proxy terminating
TCP would not give.

Why our own netlink client rather than the ``NetfilterQueue`` package: that
package builds from source against ``libnetfilter_queue`` (a C compiler and a
system ``-dev`` package on every machine that runs the suite), for the five
messages this needs (bind, parameters, packet, verdict, unbind), which are a
stable kernel ABI (``linux/netfilter/nfnetlink_queue.h``) and fit here.

Bounds: at most ``held_max`` packets are held; beyond, a packet goes at once
(counted as ``overflowed``). The kernel's queue is ``queue_max`` long and set
to fail open (a full queue passes packets rather than dropping them), and the
rule's ``--queue-bypass`` passes them while no shaper listens. On SIGTERM or
SIGINT every held packet is released before exit; a line of counters goes to
stderr. The draws come from ``--seed`` (tooling, not protocol code: the
kernel's timing is not reproducible anyway).

Run: ``python -m replicaio.torture.shaper --queue 1 --delay-ms 50 --jitter-ms 20
--reorder-percent 10 --seed 7``; it prints ``ready`` once bound.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import random
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQA_CFG_F_FAIL_OPEN = 1
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_COPY_META = 1
NF_ACCEPT = 1
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2
NLMSG_HEADER = struct.Struct("=IHHII")
NLA_HEADER = struct.Struct("=HH")
NFGEN_HEADER = struct.Struct("!BBH")  # family, version, queue number (big-endian)
RECEIVE_BYTES = 1 << 16
SOCKET_BUFFER_BYTES = 4 << 20
HELD_MAX = 20_000
QUEUE_MAX = 8192
READY_TIMEOUT_S = 5.0


class ShaperError(Exception):
    """The queue cannot be bound (no permission, no nfnetlink_queue, taken)."""


def _attribute(kind: int, payload: bytes) -> bytes:
    data = NLA_HEADER.pack(NLA_HEADER.size + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def _message(kind: int, flags: int, sequence: int, queue: int, attributes: bytes) -> bytes:
    body = NFGEN_HEADER.pack(socket.AF_UNSPEC, 0, queue) + attributes
    header = NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body),
                               (NFNL_SUBSYS_QUEUE << 8) | kind, flags, sequence, 0)
    return header + body


def config_message(queue: int, sequence: int, command: int | None = None,
                   queue_max: int = QUEUE_MAX) -> bytes:
    """A CONFIG request: ``command`` (bind/unbind), else copy-meta, the queue's
    length and fail-open."""
    if command is not None:
        attributes = _attribute(NFQA_CFG_CMD, struct.pack("!BxH", command, socket.AF_INET))
    else:
        attributes = (
            _attribute(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
            + _attribute(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", queue_max))
            + _attribute(NFQA_CFG_FLAGS, struct.pack("!I", NFQA_CFG_F_FAIL_OPEN))
            + _attribute(NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_FAIL_OPEN))
        )
    return _message(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, sequence, queue, attributes)


def verdict_message(queue: int, packet_id: int) -> bytes:
    return _message(NFQNL_MSG_VERDICT, NLM_F_REQUEST, 0, queue,
                    _attribute(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id)))


def messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    """``(type, payload)`` of each netlink message in ``data`` (malformed tails dropped)."""
    offset = 0
    while offset + NLMSG_HEADER.size <= len(data):
        length, kind, _flags, _sequence, _pid = NLMSG_HEADER.unpack_from(data, offset)
        if length < NLMSG_HEADER.size or offset + length > len(data):
            return
        yield kind, data[offset + NLMSG_HEADER.size:offset + length]
        offset += (length + 3) & ~3


def packet_id(payload: bytes) -> int | None:
    """The id in a PACKET message's ``NFQA_PACKET_HDR``, if present."""
    offset = NFGEN_HEADER.size
    while offset + NLA_HEADER.size <= len(payload):
        length, kind = NLA_HEADER.unpack_from(payload, offset)
        if length < NLA_HEADER.size:
            return None
        if kind & 0x3FFF == NFQA_PACKET_HDR and length >= NLA_HEADER.size + 4:
            return int(struct.unpack_from("!I", payload, offset + NLA_HEADER.size)[0])
        offset += (length + 3) & ~3
    return None


@dataclass
class DelayLine:
    """Packets held until their time (a heap by due time, then arrival)."""

    delay_ms: int
    jitter_ms: int
    reorder_percent: int
    rng: random.Random
    held_max: int = HELD_MAX
    held: list[tuple[float, int, int]] = field(default_factory=list)
    arrivals: int = 0
    overflowed: int = 0

    def due_after(self) -> float:
        """How long to hold the next packet, in seconds."""
        if self.reorder_percent and self.rng.randrange(100) < self.reorder_percent:
            return 0.0
        jitter = self.rng.uniform(-self.jitter_ms, self.jitter_ms) if self.jitter_ms else 0.0
        return max(0.0, self.delay_ms + jitter) / 1000.0

    def add(self, now: float, identifier: int) -> bool:
        """Hold ``identifier``; False if it must go at once (full, or drawn 0)."""
        self.arrivals += 1
        wait = self.due_after()
        if wait <= 0.0:
            return False
        if len(self.held) >= self.held_max:
            self.overflowed += 1
            return False
        heapq.heappush(self.held, (now + wait, self.arrivals, identifier))
        return True

    def due(self, now: float) -> list[int]:
        ready = []
        while self.held and self.held[0][0] <= now:
            ready.append(heapq.heappop(self.held)[2])
        return ready

    def timeout(self, now: float) -> float | None:
        return max(0.0, self.held[0][0] - now) if self.held else None


class Shaper:
    """One bound queue and its delay line; see the module docstring."""

    def __init__(self, queue: int, line: DelayLine) -> None:
        self.queue = queue
        self.line = line
        self.released = 0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
        self.sock.bind((0, 0))
        self.configure(NFQNL_CFG_CMD_BIND, 1)
        self.configure(None, 2)

    def configure(self, command: int | None, sequence: int) -> None:
        self.sock.send(config_message(self.queue, sequence, command))
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.sock], [], [], 0.5)
            if not ready:
                continue
            for kind, payload in messages(self.sock.recv(RECEIVE_BYTES)):
                if kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", payload)
                    if code:
                        raise ShaperError(f"queue {self.queue}: netlink error {-code}")
                    return
        raise ShaperError(f"queue {self.queue}: no answer to the configuration")

    def release(self, identifiers: list[int]) -> None:
        if identifiers:
            self.sock.send(b"".join(verdict_message(self.queue, i) for i in identifiers))
            self.released += len(identifiers)

    def receive(self) -> None:
        try:
            data = self.sock.recv(RECEIVE_BYTES)
        except OSError:  # ENOBUFS: the kernel dropped messages; its queue fails open
            return
        now = time.monotonic()
        at_once = []
        for kind, payload in messages(data):
            if kind & 0xFF != NFQNL_MSG_PACKET or kind >> 8 != NFNL_SUBSYS_QUEUE:
                continue
            identifier = packet_id(payload)
            if identifier is not None and not self.line.add(now, identifier):
                at_once.append(identifier)
        self.release(at_once)

    def run(self, stop: list[bool]) -> None:
        while not stop[0]:
            now = time.monotonic()
            self.release(self.line.due(now))
            wait = self.line.timeout(now)
            try:
                ready, _, _ = select.select([self.sock], [], [], 0.2 if wait is None else
                                            min(wait, 0.2))
            except InterruptedError:
                continue
            if ready:
                self.receive()

    def close(self) -> None:
        """Release everything held, unbind, close."""
        self.release([identifier for _, _, identifier in sorted(self.line.held)])
        self.line.held.clear()
        with contextlib.suppress(OSError):
            self.sock.send(config_message(self.queue, 3, NFQNL_CFG_CMD_UNBIND))
        self.sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m replicaio.torture.shaper",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--delay-ms", type=int, default=0)
    parser.add_argument("--jitter-ms", type=int, default=0)
    parser.add_argument("--reorder-percent", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--held-max", type=int, default=HELD_MAX)
    options = parser.parse_args(argv)
    for name in ("queue", "delay_ms", "jitter_ms", "reorder_percent", "held_max"):
        if getattr(options, name) < 0 or (name == "reorder_percent" and options.reorder_percent
                                          > 100) or not 0 <= options.queue <= 65535:
            parser.error(f"--{name.replace('_', '-')} out of range")
    line = DelayLine(options.delay_ms, options.jitter_ms, options.reorder_percent,
                     random.Random(options.seed), held_max=options.held_max)
    try:
        shaper = Shaper(options.queue, line)
    except (OSError, ShaperError) as error:
        print(f"shaper: cannot bind queue {options.queue}: {error}", file=sys.stderr)
        return 2
    stop = [False]

    def stopping(_signal: int, _frame: object) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, stopping)
    signal.signal(signal.SIGINT, stopping)
    print("ready", flush=True)
    try:
        shaper.run(stop)
    finally:
        shaper.close()
        print(f"shaper: queue {options.queue}: packets {line.arrivals}, released "
              f"{shaper.released}, overflowed {line.overflowed}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
