"""The read side of an authenticated peer connection, as an ``asyncio.Protocol``.

Who uses it: the peer transport (``replicaio.runtime.transport``) runs the
handshake on asyncio streams, then makes a :class:`PeerReader` the
connection's protocol (:meth:`PeerReader.take_over`, fed what the
handshake's ``StreamReader`` still buffered). From then on every chunk the
socket (or TLS) yields is cut into frames in ``data_received``: the same
rules as ``replicaio.runtime.framing`` (a 4-byte big-endian length checked
against ``frame_bytes_max`` before the body is waited for; a stream that ends
inside a frame is truncated), each frame's tag and sequence number checked
(``seq | payload | HMAC-SHA256(key, seq | payload)``, the sequence running on
by exactly one), and the payload offered to the host's inbox at once. No task
wakes per frame and no frame is copied but its payload.

Backpressure. :meth:`PeerInbox.offer` refuses a payload when the inbox is
full. The reader then holds that one payload, pauses the transport's reading
and asks the inbox to call :meth:`PeerReader.resume` when it has room; the
resume delivers the held payload, then the frames already buffered, and
resumes reading once all of them were taken. So what a peer sends while the
inbox is full stays in the kernel's socket buffers and then the peer's own
(bounded) queue: this reader holds at most one payload, one read's worth of
bytes (the loop's read size, or TLS's) and one partial frame.

Bad input (an oversized, short, truncated frame, a bad tag, a replayed or
skipped sequence number) is reported through ``reject`` and ends the
connection: :attr:`PeerReader.done` resolves with the reason, and nothing
more is delivered from it.

The write side stays on the handshake's ``StreamWriter``; since this
protocol now receives the transport's ``pause_writing`` and
``resume_writing``, the writer waits for the connection to drain with
:meth:`PeerReader.drain`, not ``StreamWriter.drain``.
"""

from __future__ import annotations

import asyncio
import hmac
import struct
from collections.abc import Callable
from typing import Any, Protocol

from replicaio.runtime import hoptrace
from replicaio.runtime.framing import LENGTH, LENGTH_BYTES, FrameError, FrameMac

SEQUENCE = struct.Struct(">Q")
SESSION_TAG_BYTES = 32  # HMAC-SHA256
FRAME_OVERHEAD = SEQUENCE.size + SESSION_TAG_BYTES


class PeerInbox(Protocol):
    """Where authenticated payloads go (the node host's inbox)."""

    def offer(self, peer: int, payload: bytes) -> bool:
        """Take ``payload`` from ``peer``; ``False`` (not taken) when full."""

    def when_room(self, resume: Callable[[], None]) -> None:
        """Call ``resume`` once (synchronously) when the inbox has room again."""


class Traffic(Protocol):
    """The per-peer figures the reader adds to (the transport's channel)."""

    frames_in: int
    bytes_in: int


class PeerReader(asyncio.Protocol):
    """One authenticated connection's frames, cut and delivered as they arrive."""

    def __init__(
        self,
        peer: int,
        key: bytes,
        inbox: PeerInbox,
        traffic: Traffic,
        frame_bytes_max: int,
        reject: Callable[[FrameError], None],
        hops: hoptrace.HopTrace | None = None,
    ) -> None:
        self.peer = peer
        self.key = key
        self.mac = FrameMac(key)  # hmac.digest(key, ..., sha256), set up once
        self.inbox = inbox
        self.traffic = traffic
        self.frame_bytes_max = frame_bytes_max
        self.reject = reject
        self.hops = hops
        self.receive_seq = 0
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()  # bytes read and not yet cut into frames
        self.held: bytes | None = None  # a payload the full inbox refused
        self.paused = False  # delivering nothing until the inbox has room
        self.reading = True  # the transport's reading is not paused by us
        self.ended = False  # the stream ended: what is buffered is the last of it
        self.lost = False  # the transport is gone
        self.write_paused = False
        self.drain_waiters: list[asyncio.Future[None]] = []
        # The reason the connection ended ("closed", a rejection's reason, an error's name).
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    # -- taking over from the handshake's streams ------------------------------------------

    def take_over(self, transport: asyncio.Transport, stream: asyncio.StreamReader) -> None:
        """Become ``transport``'s protocol; what ``stream`` (the handshake's reader)
        still buffers is read first."""
        self.transport = transport
        transport.set_protocol(self)
        error = stream.exception()
        if error is not None:
            self.finish(type(error).__name__)
            return
        # StreamReader has no public way to hand over its buffer without awaiting:
        # its private fields are read directly, so a Python whose StreamReader
        # keeps them elsewhere fails here loudly (and in
        # tests/test_runtime_transport.py) instead of dropping the bytes.
        private: Any = stream
        buffered: bytearray = private._buffer
        self.ended = bool(private._eof)
        if buffered:
            self.buffer += buffered
            buffered.clear()
            self.cut_buffer()
        if self.done.done() or self.paused:
            return
        if self.ended:
            self.end_of_stream()
        else:
            transport.resume_reading()  # the stream reader may have paused it

    # -- reading ---------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        buffer = self.buffer
        if buffer or self.paused:
            buffer += data
            if not self.paused:
                self.cut_buffer()
            return
        used = self.cut(data)  # the common case: frames cut from the chunk itself
        if used < len(data) and not self.done.done():
            buffer += memoryview(data)[used:]

    def cut_buffer(self) -> None:
        used = self.cut(self.buffer)
        if not self.done.done():
            del self.buffer[:used]

    def cut(self, source: bytes | bytearray) -> int:
        """Deliver every whole frame of ``source`` until the inbox is full; how
        many bytes were used."""
        view = memoryview(source)
        frames = 0
        read = 0
        offset = 0
        try:
            end = len(source)
            unpack = LENGTH.unpack_from
            tag = self.mac.tag
            peer, inbox, hops = self.peer, self.inbox, self.hops
            while end - offset >= LENGTH_BYTES:
                (length,) = unpack(source, offset)
                if length > self.frame_bytes_max:
                    self.fail(FrameError(
                        "oversized_frame",
                        f"{length} bytes > frame_bytes_max {self.frame_bytes_max}"))
                    return offset
                body = offset + LENGTH_BYTES
                stop = body + length
                if stop > end:
                    break
                if length < FRAME_OVERHEAD:
                    self.fail(FrameError("short_frame", f"{length} bytes"))
                    return offset
                signed_end = stop - SESSION_TAG_BYTES
                expected = tag(view[body:signed_end])
                if not hmac.compare_digest(expected, view[signed_end:stop]):
                    self.fail(FrameError("bad_mac", "frame tag does not verify"))
                    return offset
                (seq,) = SEQUENCE.unpack_from(source, body)
                if seq != self.receive_seq + 1:
                    self.fail(FrameError(
                        "replayed_frame", f"sequence {seq}, expected {self.receive_seq + 1}"))
                    return offset
                self.receive_seq = seq
                payload = bytes(view[body + SEQUENCE.size : signed_end])
                offset = stop
                frames += 1
                read += length
                if hops is not None:
                    hops.stamp(hoptrace.FRAME_IN, peer * hoptrace.PEER_UNIT + length)
                if not inbox.offer(peer, payload):
                    self.hold(payload)
                    break
            return offset
        finally:
            view.release()
            traffic = self.traffic
            traffic.frames_in += frames
            traffic.bytes_in += read

    # -- backpressure ----------------------------------------------------------------------

    def hold(self, payload: bytes) -> None:
        """The inbox is full: keep ``payload``, stop reading until it has room."""
        self.held = payload
        self.paused = True
        if self.reading and self.transport is not None and not self.lost:
            self.reading = False
            self.transport.pause_reading()
        self.inbox.when_room(self.resume)

    def resume(self) -> None:
        """The inbox has room (called by it): deliver what waits, then read on."""
        if self.done.done():
            return
        held = self.held
        if held is not None:
            if not self.inbox.offer(self.peer, held):
                self.inbox.when_room(self.resume)
                return
            self.held = None
        self.paused = False
        if self.buffer:
            self.cut_buffer()
        if self.paused or self.done.done():
            return
        if self.ended:
            self.end_of_stream()
        elif not self.reading and self.transport is not None and not self.lost:
            self.reading = True
            self.transport.resume_reading()

    # -- the end ---------------------------------------------------------------------------

    def eof_received(self) -> bool | None:
        self.ended = True
        if not self.paused:
            self.end_of_stream()
        return None  # the transport closes itself; buffered frames are still ours

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        for waiter in self.drain_waiters:
            if not waiter.done():
                waiter.set_exception(ConnectionResetError("Connection lost"))
        if exc is not None:
            self.finish(type(exc).__name__)  # what was buffered is dropped, as a stream's
        elif not self.ended:
            self.ended = True
            if not self.paused:
                self.end_of_stream()

    def end_of_stream(self) -> None:
        """The stream ended and every whole frame was delivered."""
        left = len(self.buffer)
        if not left:
            self.finish("closed")
        elif left < LENGTH_BYTES:
            self.fail(FrameError("truncated_frame", "stream ended inside a length prefix"))
        else:
            (length,) = LENGTH.unpack_from(self.buffer)
            self.fail(FrameError("truncated_frame", f"stream ended after "
                                 f"{left - LENGTH_BYTES} of {length} bytes"))

    def fail(self, error: FrameError) -> None:
        if not self.done.done():
            self.reject(error)
        self.finish(error.reason)

    def finish(self, reason: str) -> None:
        """Deliver nothing more from this connection; ``done`` says why."""
        if not self.done.done():
            self.done.set_result(reason)
        self.held = None
        self.buffer = bytearray()

    # -- the write side's flow control -----------------------------------------------------

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        for waiter in self.drain_waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark;
        :class:`ConnectionResetError` once the connection is gone."""
        transport = self.transport
        if self.lost or transport is None or transport.is_closing():
            raise ConnectionResetError("Connection lost")
        if not self.write_paused:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.drain_waiters.append(waiter)
        try:
            await waiter
        finally:
            self.drain_waiters.remove(waiter)
