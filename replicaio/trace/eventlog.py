"""The event log: every input of every node, every choice outcome, every effect.

Format (version 2), documented in ``docs/eventlog.md``: a stream of msgpack
objects. The first is a header map::

    {"format": "replicaio-eventlog", "version": 2, "protocol": str,
     "n": int, "f": int, "byzantine": [int], "seed": int, "params": {...},
     "options": {...}}

Every later object is an array whose first element is the record kind:

* ``[STEP, time_us, node, incarnation, input, choices, effects]``: one call
  of ``Node.step``. ``input`` is ``["start", {key: bytes}]`` (with a third
  element ``{"damaged": bool, "incarnation_floor": int}`` when either is set),
  ``["receive", source, bytes]``, ``["timer", timer_id]`` or
  ``["request", value]``; ``choices`` is ``[[label, count, index], ...]`` in
  the order they were made; ``effects`` is ``[persists, sends,
  timers_cancelled, timers_set, outputs]`` with messages and outputs as
  codec bytes.
* ``[NOTE, time_us, node, kind, detail]``: what the world did that is not a
  node input (crash, restart, partition, heal, byzantine rewrite); kept for
  people and diagrams, ignored by replay.

The SHA-256 of the whole byte stream is the run's fingerprint: the same seed
gives the same log, byte for byte, in any process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import IO, Any

import msgpack
import msgspec

from replicaio.core.codec import Codec
from replicaio.core.effects import Effects, Input, Receive, Request, Start, TimerFired
from replicaio.core.errors import UsageError

FORMAT = "replicaio-eventlog"
# 2: messages are frames of the msgspec codec (docs/codec.md). A log of
# another version is refused, naming its version (docs/eventlog.md).
VERSION = 2
STEP = 0
NOTE = 1

Choice = tuple[str, int, int]


class EventLogError(UsageError):
    """The log is not a readable replicaio event log of a supported version."""


def encode_input(codec: Codec, event: Input) -> list[Any]:
    """``event`` as a plain record (messages as wire bytes)."""
    if isinstance(event, Receive):
        message = event.message
        data = message if isinstance(message, bytes) else codec.encode(message)
        return ["receive", event.source, data]
    if isinstance(event, TimerFired):
        return ["timer", event.timer_id]
    if isinstance(event, Request):
        return ["request", event.payload]
    assert isinstance(event, Start)
    record: list[Any] = ["start", dict(sorted(event.storage.items()))]
    if event.damaged or event.incarnation_floor:
        record.append({"damaged": event.damaged, "incarnation_floor": event.incarnation_floor})
    return record


def decode_input(record: Any) -> Input:
    """The input a record describes; raises :class:`EventLogError` if malformed."""
    try:
        kind = record[0]
        if kind == "receive":
            return Receive(int(record[1]), bytes(record[2]))
        if kind == "timer":
            return TimerFired(int(record[1]))
        if kind == "request":
            return Request(record[1])
        if kind == "start":
            storage = {str(key): bytes(value) for key, value in record[1].items()}
            extra = record[2] if len(record) > 2 else {}
            return Start(
                storage, bool(extra.get("damaged", False)), int(extra.get("incarnation_floor", 0))
            )
    except (IndexError, TypeError, ValueError, AttributeError) as error:
        raise EventLogError(f"malformed input record {record!r}: {error}") from error
    raise EventLogError(f"unknown input kind {record!r}")


def encode_effects(codec: Codec, effects: Effects, sent: list[bytes] | None = None) -> list[Any]:
    """``effects`` as a plain record; ``sent`` reuses already-encoded messages."""
    if sent is None:
        sent = [
            message if isinstance(message, bytes) else codec.encode(message)
            for _, message in effects.sends
        ]
    return [
        [[key, value] for key, value in effects.persists],
        [[destination, data] for (destination, _), data in zip(effects.sends, sent, strict=True)],
        list(effects.timers_cancelled),
        [[timer_id, delay] for timer_id, delay in effects.timers_set],
        [codec.encode(output) for output in effects.outputs],
    ]


EMPTY_EFFECTS: tuple[tuple[()], ...] = ((), (), (), (), ())  # packs as [[], [], [], [], []]


def pack_effects(codec: Codec, effects: Effects, sent: list[bytes] | None = None) -> Any:
    """``effects`` in the shape :func:`encode_effects` gives, for packing only.

    It packs to the very same bytes (msgpack writes tuples and lists alike as
    arrays) but reuses the batch's own lists of tuples instead of copying
    them; :func:`encode_effects` stays the form replay compares with decoded
    records. ``sent`` reuses already-encoded messages.
    """
    sends = effects.sends
    outputs = effects.outputs
    if not (sends or outputs or effects.persists or effects.timers_set
            or effects.timers_cancelled):
        return EMPTY_EFFECTS
    if sends:
        if sent is None:
            sent = [
                message if isinstance(message, bytes) else codec.encode(message)
                for _, message in sends
            ]
        sends_record: Any = [
            (destination, data) for (destination, _), data in zip(sends, sent, strict=True)
        ]
    else:
        sends_record = ()
    return (
        effects.persists,
        sends_record,
        effects.timers_cancelled,
        effects.timers_set,
        [codec.encode(output) for output in outputs] if outputs else (),
    )


class EventLogWriter:
    """Appends records to an optional file and to a running SHA-256.

    Records are packed into one buffer and handed to the hash and the sink
    every ``records_per_flush_max`` records (and on :meth:`flush`,
    :meth:`hexdigest`), which gives the same bytes and digest as writing
    them one by one, at a fraction of the calls. A host that stops on an
    error calls :meth:`flush` so that the sink holds every record made.
    """

    __slots__ = (
        "buffer", "buffered", "digest", "encode_into", "pack",
        "records_per_flush_max", "sink",
    )

    def __init__(
        self,
        header: dict[str, Any],
        sink: IO[bytes] | None = None,
        *,
        records_per_flush_max: int = 256,
    ) -> None:
        assert records_per_flush_max >= 1
        self.sink = sink
        self.digest = hashlib.sha256()
        # msgpack (the format's definition) and msgspec write the same bytes for
        # every record both accept (tests/test_eventlog_writer.py); msgspec's
        # appending into one buffer is the faster, msgpack takes what it refuses
        # (a map with tuple keys).
        self.buffer = bytearray()
        self.encode_into = msgspec.msgpack.Encoder().encode_into
        self.pack = msgpack.Packer(use_bin_type=True).pack
        self.buffered = 0
        self.records_per_flush_max = records_per_flush_max
        self.write({"format": FORMAT, "version": VERSION, **header})

    def write(self, record: Any) -> None:
        buffer = self.buffer
        size = len(buffer)
        try:
            self.encode_into(record, buffer, -1)
        except Exception:  # a type msgspec refuses: msgpack packs it, or raises
            del buffer[size:]
            buffer += self.pack(record)
        buffered = self.buffered + 1
        self.buffered = buffered
        if buffered >= self.records_per_flush_max:
            self.flush()

    def flush(self) -> None:
        """Hash and write out every buffered record."""
        if not self.buffered:
            return
        data = bytes(self.buffer)
        self.buffer.clear()
        self.buffered = 0
        self.digest.update(data)
        if self.sink is not None:
            self.sink.write(data)

    def step(
        self,
        time_us: int,
        node: int,
        incarnation: int,
        event: Any,
        choices: list[Choice],
        effects: Any,
    ) -> None:
        """Record one node step (``event`` and ``effects`` as :func:`encode_input`
        and :func:`encode_effects` or :func:`pack_effects` give them)."""
        self.write((STEP, time_us, node, incarnation, event, choices, effects))

    def note(self, time_us: int, node: int, kind: str, detail: Any = None) -> None:
        """Record something the world did (not replayed)."""
        self.write((NOTE, time_us, node, kind, detail))

    def hexdigest(self) -> str:
        """SHA-256 of everything written so far."""
        self.flush()
        return self.digest.hexdigest()


def read_log(stream: IO[bytes]) -> tuple[dict[str, Any], Iterator[list[Any]]]:
    """The header and an iterator over the records of an event log."""
    unpacker = msgpack.Unpacker(stream, raw=False, strict_map_key=False, use_list=True)
    header = _read_header(unpacker)

    def records() -> Iterator[list[Any]]:
        try:
            for record in unpacker:
                if not isinstance(record, list) or not record:
                    raise EventLogError(f"malformed record {record!r}")
                yield record
        except (ValueError, msgpack.UnpackException) as error:
            raise EventLogError(f"truncated or corrupt event log: {error}") from error

    return header, records()


def read_log_prefix(data: bytes) -> tuple[dict[str, Any], list[list[Any]], str]:
    """The header and every whole record of the event log ``data``, and why it
    ends early (``""``: it ends after a whole record). A live node killed in the
    middle of a write, or a log copied while it grew, ends in part of a record;
    what comes before is still good. A bad header still raises ``EventLogError``."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, use_list=True)
    unpacker.feed(data)
    header = _read_header(unpacker)
    records: list[list[Any]] = []
    consumed = unpacker.tell()
    try:
        for record in unpacker:
            if not isinstance(record, list) or not record:
                return header, records, (
                    f"cut or corrupt after byte {consumed} of {len(data)} "
                    f"(a malformed record follows)"
                )
            records.append(record)
            consumed = unpacker.tell()
    except (ValueError, msgpack.UnpackException) as error:
        return header, records, f"corrupt after byte {consumed} of {len(data)} ({error})"
    if consumed < len(data):
        return header, records, (
            f"cut mid-record: {len(data) - consumed} bytes after its last whole record "
            f"(byte {consumed} of {len(data)})"
        )
    return header, records, ""


def _read_header(unpacker: msgpack.Unpacker) -> dict[str, Any]:
    try:
        header = next(unpacker)
    except (StopIteration, ValueError, msgpack.ExtraData) as error:
        raise EventLogError("empty or unreadable event log") from error
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise EventLogError("not a replicaio event log (bad header)")
    if header.get("version") != VERSION:
        raise EventLogError(
            f"event log version {header.get('version')!r}: this replicaio reads only version "
            f"{VERSION} (see docs/eventlog.md, 'Versions'); replay it with the replicaio "
            "that wrote it"
        )
    return header
