"""Length-prefixed frames on a byte stream: a 4-byte big-endian length, then the body.

Shared by the peer transport and the client port. A reader never allocates
more than ``frame_bytes_max`` for one frame: the length is checked before the
body is read, and an oversized length ends the connection (the stream cannot
be resynchronised after it). A stream that ends inside a frame is truncated;
one that ends exactly between frames is a clean close.
"""

from __future__ import annotations

import asyncio
import struct

LENGTH = struct.Struct(">I")
LENGTH_BYTES = LENGTH.size


class FrameError(Exception):
    """The stream broke the framing; ``reason`` is a stable counter suffix."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def frame_header(body_length: int) -> bytes:
    return LENGTH.pack(body_length)


async def read_frame(reader: asyncio.StreamReader, frame_bytes_max: int) -> bytes | None:
    """The next frame's body; ``None`` at a clean end of stream; :class:`FrameError`
    (``oversized_frame``, ``truncated_frame``) otherwise."""
    try:
        header = await reader.readexactly(LENGTH_BYTES)
    except asyncio.IncompleteReadError as error:
        if not error.partial:
            return None
        raise FrameError("truncated_frame", "stream ended inside a length prefix") from None
    (length,) = LENGTH.unpack(header)
    if length > frame_bytes_max:
        raise FrameError("oversized_frame", f"{length} bytes > frame_bytes_max {frame_bytes_max}")
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError as error:
        raise FrameError(
            "truncated_frame", f"stream ended after {len(error.partial)} of {length} bytes"
        ) from None
