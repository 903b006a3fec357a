"""The space-time diagram of a run: event logs turned into lanes, steps and arrows.

Input: one simulated run's event log, or the logs of several live nodes
(``replicaio node --event-log FILE``), merged by time. Output: a plain,
JSON-ready model that ``replicaio.trace.html`` embeds in a self-contained
page (docs/visualisation.md). Nothing here runs a protocol: the model is
read off the recorded steps, so a diagram can be drawn of any log, a
diverging or violating one included.

What the log does not say, the model infers, and says that it inferred:

* **Which send a delivery belongs to.** A step records the bytes it sent to
  each destination; a ``receive`` input records the bytes and the source. A
  delivery is matched to the earliest unmatched send of the same bytes on the
  same link that is not older than the latest send delivered on that link
  (links are FIFO unless the run reorders, so an older copy was lost and a
  retransmission got through). A delivery with no unmatched send left is a
  *duplicate* of the last matched one; a delivery with no send at all is
  *forged* (a Byzantine source's adversary wrote it; its send time is that of
  the source's latest step) or *unmatched* (the sender's log is missing).
* **Why a message was not delivered.** The simulator decides loss at send
  time and partitions and down receivers at delivery time, but logs neither;
  a send never matched is marked lost with the likeliest reason: the
  receiver was down, a partition cut the link, the run ended with it in
  flight (sent shortly before the end, and no later send on its link was
  delivered), or plain loss.
* **Reordering.** A delivery whose send came before that of a delivery
  already made on the same link.
* **Downtime.** From a ``crash``/``raised`` note (or, for live logs, a node's
  last step) to its next ``start``; a live node whose log ends before the
  end of the diagram is down from its last step on.

The checker's violations come from ``violation`` notes (the simulator writes
one per violation at the end of a failing run); each is tied to the step it
happened at and to the chain of inputs that led there (a received message's
send, a timer's setting, back to a request or a start).

Bounds: a rendered value is cut at ``VALUE_ITEMS_MAX`` items, ``BYTES_SHOWN_MAX``
bytes and ``VALUE_DEPTH_MAX`` levels; a violation's chain at ``CHAIN_MAX`` steps.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import msgpack

from replicaio.core.codec import registered_messages
from replicaio.trace.eventlog import NOTE, STEP, read_log_prefix

VALUE_ITEMS_MAX = 16
BYTES_SHOWN_MAX = 48
VALUE_DEPTH_MAX = 6
CHAIN_MAX = 400
# A message still in flight this long before the end of the log counts as
# "in flight at the end" rather than lost (virtual or wall microseconds).
IN_FLIGHT_AT_END_US = 50_000

KIND_START, KIND_RECEIVE, KIND_TIMER, KIND_REQUEST = range(4)
KINDS = {"start": KIND_START, "receive": KIND_RECEIVE, "timer": KIND_TIMER,
         "request": KIND_REQUEST}

# Message flags (a bit set per delivery arrow).
LOST = 1
DUPLICATE = 2
REORDERED = 4
FORGED = 8
UNMATCHED = 16
# Why a lost message was lost (likeliest; see the module docstring).
LOST_REASONS = ("lost", "receiver down", "partitioned", "in flight at end", "no receiver log")
# Event flags.
HAS_CHOICES = 1
HAS_OUTPUTS = 2
HAS_PERSISTS = 4
VIOLATION = 8


@dataclass(slots=True)
class LoadedLog:
    """One event log read whole: its header, steps and notes, and its clock offset."""

    name: str
    header: dict[str, Any]
    steps: list[list[Any]]
    notes: list[list[Any]]
    offset_us: int = 0
    cut: str = ""  # why the log ends before its end (killed mid-write), or ""


def load_log(stream: IO[bytes], name: str) -> LoadedLog:
    """Read a whole event log (raises ``EventLogError`` on a bad header). A log cut
    mid-record, or with a damaged tail, gives its whole records and says so in ``cut``."""
    header, records, cut = read_log_prefix(stream.read())
    steps: list[list[Any]] = []
    notes: list[list[Any]] = []
    for record in records:
        if record[0] == STEP and len(record) == 7:
            steps.append(record)
        elif record[0] == NOTE and len(record) == 5:
            notes.append(record)
    return LoadedLog(name, header, steps, notes, cut=cut)


def align_clocks(logs: list[LoadedLog]) -> None:
    """Put live logs on one clock: each live header carries the wall time at which
    its step times start (``started_unix_us``); the earliest becomes zero."""
    starts = [log.header.get("options", {}).get("started_unix_us") for log in logs]
    known = [start for start in starts if isinstance(start, int)]
    if not known:
        return
    zero = min(known)
    for log, start in zip(logs, starts, strict=True):
        log.offset_us = start - zero if isinstance(start, int) else 0


# --------------------------------------------------------------------------- values


def plain(value: Any, depth: int = 0) -> Any:
    """``value`` (decoded msgpack) as bounded JSON-ready data, messages with named fields."""
    if depth >= VALUE_DEPTH_MAX:
        return "…"
    if isinstance(value, bytes):
        return show_bytes(value)
    if isinstance(value, list | tuple):
        if value and isinstance(value[0], str):
            cls = registered_messages().get(value[0])
            names = getattr(cls, "__struct_fields__", None)
            if names is not None and len(names) == len(value) - 1:
                found: dict[str, Any] = {"type": value[0]}
                for name, item in zip(names, value[1:], strict=True):
                    found[name] = plain(item, depth + 1)
                return found
        items = [plain(item, depth + 1) for item in value[:VALUE_ITEMS_MAX]]
        if len(value) > VALUE_ITEMS_MAX:
            items.append(f"… {len(value) - VALUE_ITEMS_MAX} more")
        return items
    if isinstance(value, dict):
        shown: dict[str, Any] = {}
        for index, (key, item) in enumerate(value.items()):
            if index >= VALUE_ITEMS_MAX:
                shown["…"] = f"{len(value) - VALUE_ITEMS_MAX} more"
                break
            shown[str(plain(key, depth + 1))] = plain(item, depth + 1)
        return shown
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def show_bytes(data: bytes) -> str:
    """Bytes as text when they are printable UTF-8, else hex; cut at ``BYTES_SHOWN_MAX``."""
    cut = data[:BYTES_SHOWN_MAX]
    more = f"… ({len(data)} bytes)" if len(data) > BYTES_SHOWN_MAX else ""
    try:
        text = cut.decode("utf-8")
    except UnicodeDecodeError:
        return "0x" + cut.hex() + more
    if text.isprintable():
        return repr(text)[1:-1] + more
    return "0x" + cut.hex() + more


def decode_frame(data: Any) -> Any:
    """A codec frame (or any logged value) as :func:`plain` data."""
    if not isinstance(data, bytes):
        return plain(data)
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
    except (ValueError, msgpack.UnpackException, TypeError):
        return {"type": "(undecodable)", "bytes": show_bytes(data)}
    shown = plain(value)
    if isinstance(shown, dict) and "type" in shown:
        return shown
    return {"type": "(value)", "value": shown}


def classify(shown: Any) -> tuple[str, str, int | None]:
    """A message's type, instance and term/view, for the page's filters.

    A link ``Envelope`` is typed by its channel and belongs to the instance its
    component path names; any message with an integer ``term`` or ``view``
    field is placed in that term/view.
    """
    if not isinstance(shown, dict):
        return "(value)", "", None
    kind = str(shown.get("type", "(value)"))
    instance = ""
    if kind == "Envelope":
        kind = str(shown.get("channel", kind))
        path = shown.get("path")
        if isinstance(path, list):
            instance = "/".join(str(part) for part in path)
    term = None
    for name in ("term", "view"):
        number = shown.get(name)
        if type(number) is int:
            term = number
            break
    return kind, instance, term


# --------------------------------------------------------------------------- the model


@dataclass(slots=True)
class Columns:
    """Column arrays: one list per field, one position per row."""

    names: tuple[str, ...]
    data: dict[str, list[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data = {name: [] for name in self.names}

    def add(self, *values: Any) -> int:
        for name, value in zip(self.names, values, strict=True):
            self.data[name].append(value)
        return len(self.data[self.names[0]]) - 1

    def __len__(self) -> int:
        return len(self.data[self.names[0]])


EVENT_COLUMNS = ("t", "node", "inc", "kind", "ref", "sendFirst", "sendCount", "flags")
MESSAGE_COLUMNS = ("src", "dst", "send", "recv", "t0", "t1", "type", "inst", "term",
                   "payload", "flags", "reason")


class DiagramBuilder:
    """Builds the model from logs; see the module docstring. Use :func:`build_diagram`."""

    def __init__(self, logs: list[LoadedLog]) -> None:
        assert logs
        self.logs = logs
        self.header = logs[0].header
        self.events = Columns(EVENT_COLUMNS)
        self.messages = Columns(MESSAGE_COLUMNS)
        self.details: dict[int, dict[str, Any]] = {}
        self.payload_ids: dict[Any, int] = {}
        self.payloads: list[Any] = []
        self.payload_class: list[tuple[int, int, int | None]] = []
        self.types: dict[str, int] = {}
        self.instances: dict[str, int] = {"": 0}
        # (src, dst, payload) -> unmatched sends (latest last); -> last matched send
        self.pending: dict[tuple[int, int, int], list[int]] = {}
        self.matched: dict[tuple[int, int, int], int] = {}
        self.link_mark: dict[tuple[int, int], int] = {}  # link -> latest delivered send time
        self.timers_set: dict[tuple[int, int], int] = {}  # (node, timer) -> event
        self.timers: list[list[int]] = []  # [node, set event, fire event]
        self.last_event: dict[int, int] = {}  # node -> its latest event
        self.previous: list[int] = []  # event -> the node's previous event (-1)
        self.cause: list[int] = []  # event -> the event its input came from (-1)
        self.nodes_logged: set[int] = set()
        self.live = any(log.header.get("options", {}).get("host") == "live" for log in logs)

    # -- payloads ------------------------------------------------------------

    def payload(self, data: Any) -> int:
        """The id of ``data``'s decoded form (identical frames share one)."""
        key = data if isinstance(data, bytes | str | int) else repr(data)
        found = self.payload_ids.get(key)
        if found is not None:
            return found
        shown = decode_frame(data)
        kind, instance, term = classify(shown)
        type_id = self.types.setdefault(kind, len(self.types))
        instance_id = self.instances.setdefault(instance, len(self.instances))
        found = len(self.payloads)
        self.payloads.append(shown)
        self.payload_class.append((type_id, instance_id, term))
        self.payload_ids[key] = found
        return found

    # -- steps ---------------------------------------------------------------

    def steps_in_time_order(self) -> Iterator[tuple[int, list[Any]]]:
        merged: list[tuple[int, int, int, list[Any]]] = []
        for order, log in enumerate(self.logs):
            for position, record in enumerate(log.steps):
                merged.append((int(record[1]) + log.offset_us, order, position, record))
        if len(self.logs) > 1:
            merged.sort(key=lambda item: (item[0], item[1], item[2]))
        for time_us, _, _, record in merged:
            yield time_us, record

    def add_step(self, time_us: int, record: list[Any]) -> None:
        _, _, node, incarnation, event, choices, effects = record
        node = int(node)
        self.nodes_logged.add(node)
        kind = KINDS.get(str(event[0]) if event else "", KIND_REQUEST)
        index = len(self.events)
        self.previous.append(self.last_event.get(node, -1))
        self.last_event[node] = index
        self.cause.append(-1)
        reference = -1
        detail: dict[str, Any] = {}
        if kind == KIND_RECEIVE:
            reference = self.on_receive(index, time_us, int(event[1]), node, event[2])
        elif kind == KIND_TIMER:
            reference = int(event[1])
            setter = self.timers_set.pop((node, reference), -1)
            if setter >= 0:
                self.timers.append([node, setter, index])
                self.cause[index] = setter
        elif kind == KIND_REQUEST:
            detail["request"] = self.payload(event[1] if len(event) > 1 else None)
        else:
            detail["recovered_keys"] = len(event[1]) if len(event) > 1 else 0
            if len(event) > 2:
                detail["start"] = plain(event[2])
        persists, sends, cancelled, timers, outputs = effects
        flags = self.effect_details(index, node, choices, persists, cancelled, timers, outputs,
                                    detail)
        first = len(self.messages)
        for destination, data in sends:
            self.add_send(index, time_us, node, int(destination), data)
        self.events.add(time_us, node, int(incarnation), kind, reference, first,
                        len(self.messages) - first, flags)
        if detail:
            self.details[index] = detail

    def effect_details(
        self, index: int, node: int, choices: list[Any], persists: list[Any],
        cancelled: list[Any], timers: list[Any], outputs: list[Any], detail: dict[str, Any],
    ) -> int:
        flags = 0
        if choices:
            flags |= HAS_CHOICES
            detail["choices"] = [plain(choice) for choice in choices]
        if outputs:
            flags |= HAS_OUTPUTS
            detail["outputs"] = [self.payload(output) for output in outputs]
        if persists:
            flags |= HAS_PERSISTS
            keys = [str(item[0]) for item in persists[:VALUE_ITEMS_MAX]]
            detail["persists"] = {"writes": len(persists), "keys": keys}
        if cancelled:
            detail["timers_cancelled"] = list(cancelled[:VALUE_ITEMS_MAX])
            for timer in cancelled:
                self.timers_set.pop((node, int(timer)), None)
        if timers:
            detail["timers_set"] = [list(item) for item in timers[:VALUE_ITEMS_MAX]]
            for timer, _ in timers:
                self.timers_set[(node, int(timer))] = index
        return flags

    # -- messages ------------------------------------------------------------

    def add_send(self, index: int, time_us: int, source: int, destination: int,
                 data: Any) -> None:
        payload = self.payload(data)
        type_id, instance_id, term = self.payload_class[payload]
        message = self.messages.add(source, destination, index, -1, time_us, -1, type_id,
                                    instance_id, term, payload, 0, -1)
        self.pending.setdefault((source, destination, payload), []).append(message)

    def pick(self, waiting: list[int], link: tuple[int, int]) -> int:
        """Which of ``waiting`` (sends in send order) a delivery on ``link`` is: the
        earliest not older than the link's latest delivered send (links are FIFO
        unless the run reorders: older copies were lost, a retransmission got
        through); if every one is older, the latest (a reordering)."""
        mark = self.link_mark.get(link, -1)
        sent = self.messages.data["t0"]
        for position, message in enumerate(waiting):
            if sent[message] >= mark:
                return position
        return len(waiting) - 1

    def on_receive(self, index: int, time_us: int, source: int, node: int, data: Any) -> int:
        """Match a delivery to its send; returns the delivery's message index."""
        payload = self.payload(data)
        key = (source, node, payload)
        waiting = self.pending.get(key)
        columns = self.messages.data
        if waiting:
            message = waiting.pop(self.pick(waiting, (source, node)))
            self.matched[key] = message
            self.link_mark[(source, node)] = max(
                columns["t0"][message], self.link_mark.get((source, node), -1))
            columns["recv"][message] = index
            columns["t1"][message] = time_us
            self.cause[index] = columns["send"][message]
            return message
        type_id, instance_id, term = self.payload_class[payload]
        original = self.matched.get(key)
        if original is not None:
            sender, sent_at, flags = columns["send"][original], columns["t0"][original], DUPLICATE
        else:
            byzantine = source in self.header.get("byzantine", ())
            sender = self.last_event.get(source, -1) if source != node else -1
            sent_at = self.events.data["t"][sender] if sender >= 0 else time_us
            flags = FORGED if byzantine else UNMATCHED
        self.cause[index] = sender
        return self.messages.add(source, node, sender, index, sent_at, time_us, type_id,
                                 instance_id, term, payload, flags, -1)

    # -- notes, downtime, partitions, violations ------------------------------

    def notes(self) -> list[list[Any]]:
        found = []
        for log in self.logs:
            for record in log.notes:
                found.append([int(record[1]) + log.offset_us, int(record[2]), str(record[3]),
                              plain(record[4])])
        found.sort(key=lambda note: note[0])
        return found

    def downtime(self, notes: list[list[Any]], end_us: int) -> list[list[Any]]:
        """``[node, from, to, why]`` for every span a node was down."""
        data = self.events.data
        starts: dict[int, list[int]] = {}
        last_before: dict[int, list[int]] = {}
        for index, kind in enumerate(data["kind"]):
            node = data["node"][index]
            if kind == KIND_START:
                starts.setdefault(node, []).append(data["t"][index])
                last_before.setdefault(node, []).append(
                    data["t"][self.previous[index]] if self.previous[index] >= 0 else -1)
        crashes = {(note[1], note[0]): note[2] for note in notes
                   if note[2] in ("crash", "raised")}
        spans: list[list[Any]] = []
        for node, times in starts.items():
            for position, started in enumerate(times[1:], start=1):
                crash = [at for (who, at) in crashes if who == node
                         and times[position - 1] <= at <= started]
                if crash:
                    spans.append([node, max(crash), started, crashes[(node, max(crash))]])
                else:
                    spans.append([node, last_before[node][position], started, "down (inferred)"])
        for (node, at), why in crashes.items():
            restarted = [started for started in starts.get(node, []) if started >= at]
            if not restarted:
                spans.append([node, at, end_us, why])
        if self.live:  # a live node whose log ends before the others' stopped then
            for node, last in self.last_event.items():
                stopped = data["t"][last]
                if stopped < end_us and not any(span[0] == node and span[2] >= end_us
                                                for span in spans):
                    spans.append([node, stopped, end_us, "log ends"])
        return sorted(spans, key=lambda span: (span[1], span[0]))

    def partitions(self, notes: list[list[Any]]) -> list[list[Any]]:
        """``[from, to, side, symmetric]`` from the options and ``partition`` notes."""
        found: list[list[Any]] = []
        sources: list[Any] = list(self.header.get("options", {}).get("partitions", []) or [])
        sources += [note[3] for note in notes if note[2] == "partition"]
        for cut in sources:
            if isinstance(cut, dict) and "start_us" in cut:
                found.append([int(cut["start_us"]), int(cut["end_us"]),
                              [int(node) for node in cut.get("side", [])],
                              bool(cut.get("symmetric", True))])
        heal = [note[0] for note in notes if note[2] == "liveness"]
        if heal:
            found = [[start, min(end, heal[0]), side, symmetric]
                     for start, end, side, symmetric in found if start < heal[0]]
        return sorted(found)

    def finish_messages(self, downs: list[list[Any]], cuts: list[list[Any]],
                        end_us: int) -> None:
        """Mark never-delivered sends lost (with a reason) and reordered deliveries."""
        columns = self.messages.data
        latest_on_link: dict[tuple[int, int], int] = {}
        order = sorted((time_us, message) for message, time_us in enumerate(columns["t1"])
                       if time_us >= 0)
        for _, message in order:
            link = (columns["src"][message], columns["dst"][message])
            sent = columns["t0"][message]
            if sent < latest_on_link.get(link, -1) and not columns["flags"][message]:
                columns["flags"][message] |= REORDERED
            latest_on_link[link] = max(sent, latest_on_link.get(link, -1))
        for waiting in self.pending.values():
            for message in waiting:
                columns["flags"][message] |= LOST
                columns["reason"][message] = self.lost_reason(message, downs, cuts, end_us)

    def lost_reason(self, message: int, downs: list[list[Any]], cuts: list[list[Any]],
                    end_us: int) -> int:
        columns = self.messages.data
        source, destination = columns["src"][message], columns["dst"][message]
        sent = columns["t0"][message]
        if destination not in self.nodes_logged:
            return LOST_REASONS.index("no receiver log")
        for node, start, end, _ in downs:
            if node == destination and start <= sent <= end:
                return LOST_REASONS.index("receiver down")
        for start, end, side, symmetric in cuts:
            if start <= sent < end and (source in side) != (destination in side) and (
                    symmetric or source in side):
                return LOST_REASONS.index("partitioned")
        overtaken = self.link_mark.get((source, destination), -1) > sent
        if sent >= end_us - IN_FLIGHT_AT_END_US and not overtaken:
            return LOST_REASONS.index("in flight at end")
        return LOST_REASONS.index("lost")

    def violations(self, notes: list[list[Any]], end_us: int) -> list[dict[str, Any]]:
        found = []
        for note in notes:
            if note[2] != "violation" or not isinstance(note[3], dict):
                continue
            violation = dict(note[3])
            node = violation.get("node")
            time_us = violation.get("time_us")
            at = self.step_at(node if isinstance(node, int) else -1,
                              time_us if isinstance(time_us, int) else end_us)
            violation["event"] = at
            violation["chain"] = self.chain(at)
            if at >= 0:
                self.events.data["flags"][at] |= VIOLATION
            found.append(violation)
        return found

    def step_at(self, node: int, time_us: int) -> int:
        """The step of ``node`` a violation at ``time_us`` points at: its last step
        by then, one with outputs if there is one at that very time; -1 if none."""
        data = self.events.data
        best = -1
        event = self.last_event.get(node, -1)
        while event >= 0 and data["t"][event] > time_us:
            event = self.previous[event]
        best = event
        while event >= 0 and data["t"][event] == time_us:
            if data["flags"][event] & HAS_OUTPUTS:
                return event
            event = self.previous[event]
        return best

    def chain(self, event: int) -> list[int]:
        """The inputs that led to ``event``: a received message's send step, a
        fired timer's setting step, ... back to a request or a start."""
        found: list[int] = []
        while event >= 0 and len(found) < CHAIN_MAX:
            found.append(event)
            event = self.cause[event]
        return found

    # -- the whole -------------------------------------------------------------

    def build(self, violations: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
        for time_us, record in self.steps_in_time_order():
            self.add_step(time_us, record)
        notes = self.notes()
        for violation in violations:
            notes.append([violation.get("time_us") or 0, violation.get("node"), "violation",
                          plain(violation)])
        times = self.events.data["t"]
        end_us = max([times[-1] if times else 0, *(note[0] for note in notes)])
        downs = self.downtime(notes, end_us)
        cuts = self.partitions(notes)
        self.finish_messages(downs, cuts, end_us)
        return self.model(notes, downs, cuts, end_us)

    def model(self, notes: list[list[Any]], downs: list[list[Any]], cuts: list[list[Any]],
              end_us: int) -> dict[str, Any]:
        header = self.header
        n = max([int(header.get("n", 0)), *(node + 1 for node in self.nodes_logged)])
        byzantine = [int(node) for node in header.get("byzantine", [])]
        live = self.live
        return {
            "meta": {
                "protocol": header.get("protocol"),
                "n": n,
                "f": header.get("f"),
                "seed": header.get("seed"),
                "byzantine": byzantine,
                "live": live,
                "sources": [log.name for log in self.logs],
                "cut": {log.name: log.cut for log in self.logs if log.cut},
                "end_us": end_us,
                "options": json.loads(json.dumps(header.get("options", {}), default=repr)),
            },
            "nodes": [{"id": node, "byzantine": node in byzantine,
                       "logged": node in self.nodes_logged} for node in range(n)],
            "types": list(self.types),
            "instances": list(self.instances),
            "lostReasons": list(LOST_REASONS),
            "payloads": self.payloads,
            "events": self.events.data,
            "details": {str(index): detail for index, detail in self.details.items()},
            "messages": self.messages.data,
            "timers": self.timers,
            "downs": downs,
            "partitions": cuts,
            "notes": [note for note in notes if note[2] != "violation"],
            "violations": self.violations(notes, end_us),
        }


def build_diagram(logs: list[LoadedLog],
                  violations: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    """The diagram model of ``logs`` (one simulated run, or live nodes' logs merged by
    time); ``violations`` adds checker verdicts the logs do not carry as notes."""
    align_clocks(logs)
    return DiagramBuilder(logs).build(violations)
