"""Codec round trips per CPU second: a 3-field message and the node's Envelope.

    taskset -c 0 .venv/bin/python bench/bench_codec.py

Best of 9 runs of 100,000 calls each, CPU time (``time.process_time``), for:
a 3-field ``Echo(sender: int, seq: int, value: bytes)``, the node's
``Envelope(path, channel, body)`` with a bytes body, and ``Echo`` through a
``Codec(canonical=True)``, and ``Echo`` with 4 KiB and 16 KiB values (frames
above the fast path's 2,048 bytes: a batch of many commands). A round trip
is ``decode(encode(message))``; ``encode`` includes the codec's own check
that a peer would accept the frame.
Figures are recorded in docs/benchmarks.md and docs/codec.md.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Annotated

from replicaio.core.codec import Codec, Message, Meta
from replicaio.core.node import Envelope


class Echo(Message, tag="bench.Echo"):
    sender: int
    seq: int
    value: Annotated[bytes, Meta(max_length=1 << 16)]


def best_seconds_per_call(function: Callable[[int], None], calls: int, repeat: int) -> float:
    """The fastest of ``repeat`` runs of ``calls`` calls, in CPU seconds per call."""
    times = []
    for _ in range(repeat):
        start = time.process_time()
        function(calls)
        times.append(time.process_time() - start)
    return min(times) / calls


def measure(label: str, codec: Codec, message: object, calls: int, repeat: int) -> str:
    data = codec.encode(message)
    assert codec.decode(data) == message
    encode, decode = codec.encode, codec.decode

    def round_trips(count: int) -> None:
        for _ in range(count):
            decode(encode(message))

    def encodes(count: int) -> None:
        for _ in range(count):
            encode(message)

    def decodes(count: int) -> None:
        for _ in range(count):
            decode(data)

    round_trip = best_seconds_per_call(round_trips, calls, repeat)
    encode_s = best_seconds_per_call(encodes, calls, repeat)
    decode_s = best_seconds_per_call(decodes, calls, repeat)
    return (
        f"{label:<20} {1 / round_trip:>12,.0f} round trips/s   encode {encode_s * 1e6:.2f} us"
        f"   decode {decode_s * 1e6:.2f} us"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args(argv)
    cases = [
        ("Echo", Codec(), Echo(1, 2, b"x" * 16)),
        ("Envelope", Codec(), Envelope((3, "bracha", 7), "ECHO", b"x" * 16)),
        ("Echo canonical", Codec(canonical=True), Echo(1, 2, b"x" * 16)),
        ("Echo 4 KiB", Codec(), Echo(1, 2, b"x" * 4096)),
        ("Echo 16 KiB", Codec(), Echo(1, 2, b"x" * 16384)),
    ]
    for label, codec, message in cases:
        print(measure(label, codec, message, args.calls, args.repeat))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
