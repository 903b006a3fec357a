"""RESP, the Redis serialization protocol: a bounded request parser and a reply encoder.

Theory of operation
-------------------
Requests (client to server) come in the two forms Redis accepts:

* **multibulk**: ``*<n>\\r\\n`` then ``n`` bulk strings ``$<len>\\r\\n<bytes>\\r\\n``
  (what every client library and ``redis-cli`` send);
* **inline**: one line of words separated by spaces, ending in ``\\n`` (an
  optional ``\\r`` before it), with ``"double"`` (escapes ``\\n \\r \\t \\\\ \\"
  \\xHH``) and ``'single'`` quotes (what a person types into ``telnet``).

:class:`RespParser` is incremental: :meth:`RespParser.feed` appends bytes and
:meth:`RespParser.next_command` returns the next complete command (a list of
``bytes`` arguments) or ``None`` when more bytes are needed. A partially read
multibulk keeps its state, so a command arriving in many small pieces costs
linear time. Empty commands (``*0``, ``*-1``, blank lines) are skipped, as
Redis does.

Everything is bounded (:class:`RespLimits`): the length of one bulk string
(``bulk_bytes_max``), the items of one multibulk (``array_items_max``), an
inline line (``inline_bytes_max``), the payload of one whole command
(``command_bytes_max``) and a length line (:data:`LENGTH_LINE_BYTES_MAX`). The
parser buffers at most one command plus what was fed after it. Input that
breaks the protocol raises :class:`RespProtocolError`, whose ``reason`` is a
stable counter suffix; the stream cannot be resynchronised after it, so the
caller answers ``-ERR Protocol error: ...`` and closes the connection.

Replies (server to client) are encoded by :func:`encode_reply` from plain
Python values, in RESP2 or RESP3 (the connection's protocol, switched by
``HELLO``):

============================  ======================  ===========================
value                         RESP2                   RESP3
============================  ======================  ===========================
``RespSimple("OK")``          ``+OK``                 ``+OK``
``RespError("ERR ...")``      ``-ERR ...``            ``-ERR ...``
``int``                       ``:<n>``                ``:<n>``
``bool``                      ``:1`` / ``:0``         ``#t`` / ``#f``
``bytes`` / ``str``           ``$<len>`` bulk         ``$<len>`` bulk
``None``                      ``$-1`` (null bulk)     ``_`` (null)
``NULL_ARRAY``                ``*-1`` (null array)    ``_`` (null)
``list`` / ``tuple``          ``*<n>`` array          ``*<n>`` array
``dict``                      ``*<2n>`` flat array    ``%<n>`` map
``RespDouble(b"1.5")``        ``$3`` bulk             ``,1.5`` double
``RespSet([...])``            ``*<n>`` array          ``~<n>`` set
============================  ======================  ===========================

The parser never copies code from another implementation: it follows the
protocol description (redis.io "Redis serialization protocol specification").
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

CRLF: Final = b"\r\n"
LENGTH_LINE_BYTES_MAX: Final = 32  # "*" or "$", a sign, 19 digits, and slack
COMPACT_BYTES_MIN: Final = 64 * 1024  # consumed bytes kept before the buffer is shifted
_LENGTH = re.compile(rb"-?[0-9]{1,19}")


class RespProtocolError(Exception):
    """The client broke the protocol; ``reason`` is a stable counter suffix and
    ``message`` what the client is told (after ``-ERR Protocol error: ``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class RespLimits:
    """Bounds of one connection's parser (validated by the service's params)."""

    bulk_bytes_max: int = 8 * 1024 * 1024 + 64 * 1024  # one bulk string (above a store's value)
    array_items_max: int = 4096  # arguments of one multibulk command
    inline_bytes_max: int = 64 * 1024  # one inline command line
    command_bytes_max: int = 8 * 1024 * 1024 + 128 * 1024  # all bulk strings of one command


class RespParser:
    """Incremental, bounded parser of client requests; see the module docstring."""

    __slots__ = (
        "arguments",
        "buffer",
        "bulk_length",
        "command_bytes",
        "items_left",
        "limits",
        "position",
    )

    def __init__(self, limits: RespLimits | None = None) -> None:
        self.limits = limits or RespLimits()
        self.buffer = bytearray()
        self.position = 0  # first unconsumed byte of ``buffer``
        self.arguments: list[bytes] | None = None  # inside a multibulk: what was read
        self.items_left = 0
        self.bulk_length = -1  # the announced length of the next bulk, -1 before its header
        self.command_bytes = 0

    def feed(self, data: bytes) -> None:
        """Append bytes read from the connection."""
        self.buffer += data

    def buffered(self) -> int:
        """Bytes held and not yet consumed (for bounds and tests)."""
        return len(self.buffer) - self.position

    def in_command(self) -> bool:
        """Whether a command has started but is not complete (a truncated frame at EOF)."""
        return self.arguments is not None or len(self.buffer) > self.position

    def next_command(self) -> list[bytes] | None:
        """The next complete command, or ``None`` if more bytes are needed.

        Raises :class:`RespProtocolError` on input that breaks the protocol."""
        while True:
            if self.arguments is None:
                if self.position >= len(self.buffer):
                    self.compact()
                    return None
                if self.buffer[self.position] == 0x2A:  # "*"
                    command = self.whole_multibulk()
                    if command is not None:
                        return command
                    if not self.start_multibulk():
                        self.compact()
                        return None
                    continue
                words = self.inline()
                if words is None:
                    self.compact()
                    return None
                if words:
                    return words
                continue
            command = self.continue_multibulk()
            if command is None:
                self.compact()
                return None
            return command

    # -- multibulk ---------------------------------------------------------------------

    def whole_multibulk(self) -> list[bytes] | None:
        """The multibulk command at ``position`` if the buffer holds all of it and
        its headers are plain decimals within every bound: read in one go, without
        the state a partial command keeps (ADR 0064: a client's command mostly
        arrives whole); the buffer is emptied if nothing follows it. ``None``, with
        nothing consumed, otherwise: :meth:`start_multibulk` and
        :meth:`continue_multibulk` then read it step by step, and name what is
        wrong with it."""
        buffer = self.buffer
        limits = self.limits
        size = len(buffer)
        position = self.position
        end = buffer.find(CRLF, position, position + LENGTH_LINE_BYTES_MAX + 2)
        if end < 0:
            return None
        line = buffer[position + 1 : end]
        if not (0 < len(line) <= 19 and line.isdigit()):  # (parse_length's common case)
            return None
        count = int(line)
        if count == 0 or count > limits.array_items_max:
            return None
        bulk_bytes_max = limits.bulk_bytes_max
        command_bytes_max = limits.command_bytes_max
        command_bytes = 0
        arguments: list[bytes] = []
        position = end + 2
        while count > 0:
            if position >= size or buffer[position] != 0x24:  # "$"
                return None
            end = buffer.find(CRLF, position, position + LENGTH_LINE_BYTES_MAX + 2)
            if end < 0:
                return None
            line = buffer[position + 1 : end]
            if not (0 < len(line) <= 19 and line.isdigit()):
                return None
            length = int(line)
            command_bytes += length
            if length > bulk_bytes_max or command_bytes > command_bytes_max:
                return None
            position = end + 2
            end = position + length
            if size < end + 2 or buffer[end] != 0x0D or buffer[end + 1] != 0x0A:
                return None
            arguments.append(bytes(buffer[position:end]))
            position = end + 2
            count -= 1
        if position == size:
            buffer.clear()
            position = 0
        self.position = position
        return arguments

    def start_multibulk(self) -> bool:
        """Read ``*<n>``; False if the line is incomplete."""
        line = self.length_line()
        if line is None:
            return False
        count = parse_length(line)
        if count is None:
            raise RespProtocolError(
                "invalid_multibulk_length",
                f"invalid multibulk length {shown(line)}: not a decimal integer",
            )
        if count > self.limits.array_items_max:
            raise RespProtocolError(
                "invalid_multibulk_length",
                f"invalid multibulk length {count}: more than array_items_max "
                f"({self.limits.array_items_max} items)",
            )
        if count > 0:  # *0 and *-1 are empty requests: skipped
            self.arguments = []
            self.items_left = count
            self.bulk_length = -1
            self.command_bytes = 0
        return True

    def continue_multibulk(self) -> list[bytes] | None:
        arguments = self.arguments
        assert arguments is not None
        buffer = self.buffer
        limits = self.limits
        size = len(buffer)
        while self.items_left > 0:
            if self.bulk_length < 0:
                if self.position >= size:
                    return None
                if buffer[self.position] != 0x24:  # "$"
                    found = chr(buffer[self.position])
                    raise RespProtocolError(
                        "expected_bulk", f"expected '$', got {found!r}"
                    )
                line = self.length_line()
                if line is None:
                    return None
                length = self.bulk_length_of(line)
                self.command_bytes += length
                if self.command_bytes > limits.command_bytes_max:
                    raise RespProtocolError(
                        "command_too_large",
                        f"command larger than {limits.command_bytes_max} bytes",
                    )
                self.bulk_length = length
            start = self.position
            end = start + self.bulk_length
            if size < end + 2:
                return None
            # (the two bytes compared one by one: a slice would be an object per argument)
            if buffer[end] != 0x0D or buffer[end + 1] != 0x0A:  # CRLF
                raise RespProtocolError("bulk_not_terminated", "bulk string not terminated by CRLF")
            arguments.append(bytes(buffer[start:end]))
            self.position = end + 2
            self.bulk_length = -1
            self.items_left -= 1
        self.arguments = None
        return arguments

    def bulk_length_of(self, line: bytes | bytearray) -> int:
        """The length a ``$`` header announces, or the protocol error that says
        what is wrong with it."""
        length = parse_length(line)
        if length is None:
            problem = f"{shown(line)}: not a decimal integer"
        elif length < 0:
            problem = f"{length}: negative (a request's bulk strings are never null)"
        elif length > self.limits.bulk_bytes_max:
            problem = f"{length}: more than bulk_bytes_max ({self.limits.bulk_bytes_max} bytes)"
        else:
            return length
        raise RespProtocolError("invalid_bulk_length", f"invalid bulk length {problem}")

    def length_line(self) -> bytearray | None:
        """The body of a ``*``/``$`` header line (without its type byte and CRLF; a
        copy out of the buffer, read by :func:`parse_length` and not kept)."""
        buffer = self.buffer
        start = self.position
        end = buffer.find(CRLF, start, start + LENGTH_LINE_BYTES_MAX + 2)
        if end < 0:
            if len(buffer) - start >= LENGTH_LINE_BYTES_MAX + 2:
                raise RespProtocolError("length_line_too_long", "length line too long")
            return None
        self.position = end + 2
        return buffer[start + 1 : end]

    # -- inline --------------------------------------------------------------------------

    def inline(self) -> list[bytes] | None:
        """The words of the next inline line; ``None`` if the line is incomplete."""
        buffer = self.buffer
        start = self.position
        limit = self.limits.inline_bytes_max
        end = buffer.find(b"\n", start, start + limit + 1)
        if end < 0:
            if len(buffer) - start > limit:
                raise RespProtocolError(
                    "inline_too_long", f"too big inline request (at most {limit} bytes)"
                )
            return None
        self.position = end + 1
        line = bytes(buffer[start:end])
        if line.endswith(b"\r"):
            line = line[:-1]
        return split_inline(line)

    def compact(self) -> None:
        """Drop consumed bytes once they are worth a copy."""
        if self.position == len(self.buffer):
            self.buffer.clear()
            self.position = 0
        elif self.position >= COMPACT_BYTES_MIN:
            del self.buffer[: self.position]
            self.position = 0


def shown(line: bytes | bytearray) -> str:
    """A length line as the client is told it (printable, quoted)."""
    return repr(line.decode("ascii", "replace"))


def parse_length(line: bytes | bytearray) -> int | None:
    """A length header's number (strict decimal, optional minus), or ``None``."""
    # The common case without the regular expression (one per command and one per
    # argument on the front's hot path): ``bytes.isdigit`` is ASCII digits only.
    if 0 < len(line) <= 19 and line.isdigit():
        return int(line)
    if _LENGTH.fullmatch(line) is None:
        return None
    return int(line)


_ESCAPES: Final = {
    ord("n"): b"\n",
    ord("r"): b"\r",
    ord("t"): b"\t",
    ord("b"): b"\b",
    ord("a"): b"\a",
    ord("\\"): b"\\",
    ord('"'): b'"',
}
_HEX = b"0123456789abcdefABCDEF"
_SPACE = b" \t\r\n\v\f"


def split_inline(line: bytes) -> list[bytes]:
    """Split an inline command into words (quotes as in the module docstring);
    :class:`RespProtocolError` for unbalanced quotes."""
    words: list[bytes] = []
    index = 0
    size = len(line)
    while True:
        while index < size and line[index] in _SPACE:
            index += 1
        if index >= size:
            return words
        word = bytearray()
        while index < size and line[index] not in _SPACE:
            quote = line[index]
            if quote == 0x22:  # "
                index = _double_quoted(line, index + 1, word)
            elif quote == 0x27:  # '
                index = _single_quoted(line, index + 1, word)
            else:
                word.append(quote)
                index += 1
        words.append(bytes(word))


def _closing(line: bytes, index: int) -> int:
    """After a closing quote: a space or the end must follow."""
    if index < len(line) and line[index] not in _SPACE:
        raise RespProtocolError("unbalanced_quotes", "unbalanced quotes in request")
    return index


def _double_quoted(line: bytes, index: int, word: bytearray) -> int:
    size = len(line)
    while index < size:
        byte = line[index]
        if byte == 0x22:
            return _closing(line, index + 1)
        if byte == 0x5C and index + 1 < size:  # backslash
            following = line[index + 1]
            if (
                following == ord("x")
                and index + 3 < size
                and line[index + 2] in _HEX
                and line[index + 3] in _HEX
            ):
                word.append(int(line[index + 2 : index + 4], 16))
                index += 4
                continue
            word += _ESCAPES.get(following, bytes((following,)))
            index += 2
            continue
        word.append(byte)
        index += 1
    raise RespProtocolError("unbalanced_quotes", "unbalanced quotes in request")


def _single_quoted(line: bytes, index: int, word: bytearray) -> int:
    size = len(line)
    while index < size:
        byte = line[index]
        if byte == 0x27:
            return _closing(line, index + 1)
        if byte == 0x5C and index + 1 < size and line[index + 1] == 0x27:
            word.append(0x27)
            index += 2
            continue
        word.append(byte)
        index += 1
    raise RespProtocolError("unbalanced_quotes", "unbalanced quotes in request")


# -- replies ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RespSimple:
    """A simple string reply (``+OK``); no CR or LF inside."""

    text: str


@dataclass(frozen=True, slots=True)
class RespError:
    """An error reply; ``text`` starts with its code (``ERR``, ``TRYAGAIN``, ...)."""

    text: str


@dataclass(frozen=True, slots=True)
class RespNullArray:
    """The null array (``*-1``): what an aborted ``EXEC`` answers."""


@dataclass(frozen=True, slots=True)
class RespDouble:
    """A floating point reply (``ZSCORE``), as Redis prints it: a bulk string in
    RESP2, a double (``,1.5``) in RESP3."""

    text: bytes


@dataclass(frozen=True, slots=True)
class RespSet:
    """A set reply (``SMEMBERS``): an array in RESP2, a set (``~<n>``) in RESP3."""

    items: Sequence[Reply]


Reply: TypeAlias = (
    "RespSimple | RespError | RespNullArray | RespDouble | RespSet | int | bool | bytes | "
    "str | Sequence[Reply] | Mapping[str | bytes, Reply] | None"
)

OK: Final = RespSimple("OK")
OK_BYTES: Final = b"+OK\r\n"
PONG: Final = RespSimple("PONG")
QUEUED: Final = RespSimple("QUEUED")
NULL_ARRAY: Final = RespNullArray()
RESP2: Final = 2
RESP3: Final = 3


def one_line(text: str) -> bytes:
    """``text`` as one protocol line: CR and LF would end it early, so they become spaces."""
    return text.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace")


def encode_reply(value: Reply, protocol: int = RESP2) -> bytes:
    """The bytes of ``value`` in RESP2 or RESP3 (see the module table)."""
    if value is OK:  # the commonest reply (every SET), the same in both
        return OK_BYTES
    parts: list[bytes] = []
    _encode(value, protocol, parts)
    return b"".join(parts)


def _encode(value: Reply, protocol: int, parts: list[bytes]) -> None:
    if isinstance(value, bytes):
        parts.append(b"$%d\r\n%b\r\n" % (len(value), value))
    elif value is None:
        parts.append(b"$-1\r\n" if protocol == RESP2 else b"_\r\n")
    elif isinstance(value, bool):
        if protocol == RESP2:
            parts.append(b":1\r\n" if value else b":0\r\n")
        else:
            parts.append(b"#t\r\n" if value else b"#f\r\n")
    elif isinstance(value, int):
        parts.append(b":%d\r\n" % value)
    elif isinstance(value, str):
        data = value.encode("utf-8")
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    elif isinstance(value, RespSimple):
        parts.append(b"+" + one_line(value.text) + CRLF)
    elif isinstance(value, RespError):
        parts.append(b"-" + one_line(value.text) + CRLF)
    elif isinstance(value, RespNullArray):
        parts.append(b"*-1\r\n" if protocol == RESP2 else b"_\r\n")
    elif isinstance(value, RespDouble):
        if protocol == RESP2:
            parts.append(b"$%d\r\n%b\r\n" % (len(value.text), value.text))
        else:
            parts.append(b"," + value.text + CRLF)
    elif isinstance(value, RespSet):
        parts.append((b"*%d\r\n" if protocol == RESP2 else b"~%d\r\n") % len(value.items))
        for item in value.items:
            _encode(item, protocol, parts)
    elif isinstance(value, Mapping):
        if protocol == RESP2:
            parts.append(b"*%d\r\n" % (2 * len(value)))
        else:
            parts.append(b"%%%d\r\n" % len(value))
        for key, item in value.items():
            _encode(key, protocol, parts)
            _encode(item, protocol, parts)
    else:
        parts.append(b"*%d\r\n" % len(value))
        for item in value:
            _encode(item, protocol, parts)
