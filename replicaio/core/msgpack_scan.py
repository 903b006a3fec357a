"""A structural walk of msgpack bytes that builds nothing (used by the codec).

msgspec decodes untyped data (``Value``) into dicts before anything can be
checked, so a map whose keys are arrays would become a dict of colliding
tuple keys (tuple hashes are not keyed: quadratic insertion). The codec runs
:func:`scan` over a large frame that may carry such data first: it refuses
array and map keys, truncation, trailing bytes, excess depth and length, in
time linear in the frame and without allocating per item. :func:`peek_tag`
reads a message frame's tag from its first bytes, to tell which frames need it.
"""

from __future__ import annotations

__all__ = ["ScanRefused", "peek_tag", "scan"]


class ScanRefused(Exception):
    """The frame is not acceptable; ``reason`` is a codec decode reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


def peek_tag(data: bytes) -> str | None:
    """The tag of a message frame, read from its first bytes (None if not plain)."""
    head = data[0]
    if 0x90 <= head <= 0x9F:
        start = 1
    elif head == 0xDC:
        start = 3
    elif head == 0xDD:
        start = 5
    else:
        return None
    if start >= len(data):
        return None
    header = data[start]
    if 0xA0 <= header <= 0xBF:
        length, start = header & 0x1F, start + 1
    elif header == 0xD9 and start + 1 < len(data):
        length, start = data[start + 1], start + 2
    else:
        return None
    try:
        return data[start : start + length].decode("utf-8")
    except UnicodeDecodeError:
        return None


# One entry per leading byte: (kind, argument). Kinds: 0 skip `argument` bytes;
# 1 payload of a length held in the next `argument` bytes; 2 ext payload (length
# in the next `argument` bytes, plus its type byte); 3 array of `argument` items;
# 4 map of `argument` pairs; 5 array, count in next `argument` bytes; 6 map,
# likewise; 7 invalid.


def _build_scan_table() -> tuple[tuple[int, int], ...]:
    table: list[tuple[int, int]] = []
    fixed = {0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4}
    fixed |= {0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}
    fixed |= {0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17}  # fixext: type byte + data
    sized = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}
    for head in range(256):
        if head <= 0x7F or head >= 0xE0:
            table.append((0, 0))
        elif head <= 0x8F:
            table.append((4, head & 0x0F))
        elif head <= 0x9F:
            table.append((3, head & 0x0F))
        elif head <= 0xBF:
            table.append((0, head & 0x1F))
        elif head in fixed:
            table.append((0, fixed[head]))
        elif head in sized:
            table.append((1, sized[head]))
        elif head in (0xC7, 0xC8, 0xC9):
            table.append((2, {0xC7: 1, 0xC8: 2, 0xC9: 4}[head]))
        elif head in (0xDC, 0xDD):
            table.append((5, 2 if head == 0xDC else 4))
        elif head in (0xDE, 0xDF):
            table.append((6, 2 if head == 0xDE else 4))
        else:
            table.append((7, 0))  # 0xC1, never used
    return tuple(table)


_SCAN_TABLE = _build_scan_table()


def scan(data: bytes, depth_max: int, items_max: int) -> None:
    """Walk a frame's structure without building it; raise ``ScanRefused`` if invalid.

    Guarantees to the decoder afterwards: exactly one complete object, no
    container deeper than ``depth_max`` or longer than ``items_max``, and no
    map key that is an array or a map (so no dict of colliding tuple keys).
    """
    size, index, remaining = len(data), 0, 1
    in_map = False  # the current container is a map: odd positions from its end are keys
    pending: list[tuple[int, bool]] = []
    table = _SCAN_TABLE
    while True:
        while remaining == 0:
            if not pending:
                if index > size:
                    raise ScanRefused("malformed", "frame truncated")
                if index < size:
                    raise ScanRefused("malformed", f"{size - index} trailing bytes after the frame")
                return
            remaining, in_map = pending.pop()
        if index >= size:
            raise ScanRefused("malformed", "frame truncated")
        kind, argument = table[data[index]]
        is_key = in_map and remaining % 2 == 0
        index += 1
        remaining -= 1
        if kind == 0:
            index += argument
            continue
        if kind == 7:
            raise ScanRefused("malformed", f"invalid msgpack byte 0x{data[index - 1]:02x}")
        if kind <= 2:  # a length-prefixed payload
            length = int.from_bytes(data[index : index + argument], "big")
            index += argument + length + (1 if kind == 2 else 0)
            continue
        if is_key:
            raise ScanRefused(
                "malformed", "map keys must be scalars (nil, bool, int, float, str, bytes)"
            )
        if kind >= 5:
            count = int.from_bytes(data[index : index + argument], "big")
            index += argument
        else:
            count = argument
        if count > items_max:
            raise ScanRefused("too_long", f"{count} items exceeds items_max={items_max}")
        is_map = kind in (4, 6)
        if is_map:
            count *= 2
        if count > size - index:
            raise ScanRefused("malformed", f"container declares {count} items past the frame end")
        if len(pending) >= depth_max:
            raise ScanRefused("too_deep", f"nesting deeper than depth_max={depth_max}")
        pending.append((remaining, in_map))
        remaining, in_map = count, is_map
