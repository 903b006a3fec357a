"""Client histories of key-value operations: the record, its JSON-lines form, a recorder.

A *history* is what the clients of a replicated service saw: for every
operation, when it was invoked, when (and whether) it returned, and what it
returned. Checkers (``replicaio.check.linearizability``) judge histories; the
simulator's and the live tests' clients produce them with ``HistoryRecorder``.
The on-disk form is JSON lines, one operation per line, documented field by
field in ``docs/history-format.md``.

Contract of a valid history (enforced by ``validate_history``; ``load_history``
and ``HistoryRecorder`` never produce anything else):

* every field has the type and shape its operation kind calls for
  (``validate_operation`` states the rules);
* ``status`` is ``ok`` (it happened, with this output), ``fail`` (it certainly
  did not happen) or ``info`` (unknown: it may have taken effect at any time
  after ``call``, or never);
* ``ok`` and ``fail`` operations carry a ``return`` time ``>= call``; an
  ``info`` operation's ``return`` is ``null`` or the time the client gave up;
* a client is sequential: its operations do not overlap in time, and after an
  ``info`` operation it never issues another one (it continues under a new id).

Who calls what: clients call ``HistoryRecorder.invoke`` before sending a
request and exactly one of ``ok``/``fail``/``info`` on its handle afterwards;
the harness then takes ``operations()`` or ``dump``. The recorder reads time
only from the clock it is given (virtual in the simulator, monotonic live), so
recording is as deterministic as that clock.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

GET: Final = "get"
PUT: Final = "put"
APPEND: Final = "append"
CAS: Final = "cas"
DELETE: Final = "delete"
INCR: Final = "incr"
TXN: Final = "txn"  # a transaction: several of the above, applied at one point
PUTX: Final = "putx"  # put with an absolute deadline (expected: ms of the service's clock)
RPUSH: Final = "rpush"  # append one element to a list (output: the new length)
LRANGE: Final = "lrange"  # read a whole list (output: a JSON array of its elements)
TIMED_KINDS: Final = frozenset({PUTX})
LIST_KINDS: Final = frozenset({RPUSH, LRANGE})
SINGLE_KINDS: Final = frozenset({GET, PUT, APPEND, CAS, DELETE, INCR})
SIMPLE_KINDS: Final = SINGLE_KINDS | TIMED_KINDS | LIST_KINDS  # all but txn
OPERATION_KINDS: Final = SIMPLE_KINDS | {TXN}
TRANSACTION_OPERATIONS_MAX: Final = 64  # operations of one recorded transaction

OK: Final = "ok"
FAIL: Final = "fail"
INFO: Final = "info"
STATUSES: Final = frozenset({OK, FAIL, INFO})

CAS_SUCCEEDED: Final = "ok"
CAS_FAILED: Final = "fail"

FIELDS: Final = (
    "client",
    "op",
    "key",
    "value",
    "expected",
    "output",
    "call",
    "return",
    "status",
)

_INTEGER = re.compile(r"-?[0-9]+", re.ASCII)
_WRITES_STRING = frozenset({PUT, APPEND, CAS, PUTX, RPUSH})
_OUTPUT_NONE = frozenset({PUT, APPEND, DELETE, PUTX})


class HistoryError(ValueError):
    """A history (or a recorder call) breaks the format; names where and why.

    ``line`` is the 1-based line of a JSON-lines source, ``index`` the 0-based
    position in a sequence of ``Operation``; either may be ``None``.
    """

    def __init__(self, reason: str, *, line: int | None = None, index: int | None = None) -> None:
        self.reason = reason
        self.line = line
        self.index = index
        if line is not None:
            where = f"line {line}: "
        elif index is not None:
            where = f"operation {index}: "
        else:
            where = ""
        super().__init__(where + reason)


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation, exactly as the JSON-lines record (``return`` is ``return_``).

    ``value``: the written value (``put``), the suffix (``append``), the new
    value (``cas``) or the delta as a decimal integer string (``incr``);
    ``None`` for ``get``/``delete``. ``expected``: the value ``cas`` compares
    with (``None``: expects the key absent); ``None`` otherwise. ``output``:
    the value read by ``get`` (``None``: absent), ``"ok"``/``"fail"`` for
    ``cas``, the new value for ``incr`` (decimal string), ``None`` otherwise
    and always ``None`` unless ``status`` is ``ok``.

    A ``txn`` (a transaction: its operations take effect together, at one
    point) carries its operations in ``value``, as the JSON array
    :func:`encode_transaction` writes (``[[op, key, value, expected], ...]``,
    each as above), and their outputs in ``output`` (:func:`encode_outputs`:
    a JSON array, one per operation, as above; an ``incr`` inside a
    transaction may output ``null``: it found no integer and changed nothing,
    while the others took effect). ``key`` is :func:`transaction_key` of the
    operations (their keys, sorted, joined by ``,``); ``expected`` is ``None``.
    """

    client: int
    op: str
    key: str
    value: str | None
    expected: str | None
    output: str | None
    call: float
    return_: float | None
    status: str


def is_integer_string(text: str) -> bool:
    """Whether ``text`` is a decimal integer as ``incr`` reads and writes them."""
    return _INTEGER.fullmatch(text) is not None


MicroOperation = tuple[str, str, str | None, str | None]  # op, key, value, expected


def encode_transaction(operations: Sequence[MicroOperation]) -> str:
    """A ``txn``'s ``value``: its operations as a JSON array (validated by the history)."""
    return json.dumps([list(operation) for operation in operations], ensure_ascii=False)


def encode_outputs(outputs: Sequence[str | None]) -> str:
    """A ``txn``'s ``output``: one output per operation, as a JSON array."""
    return json.dumps(list(outputs), ensure_ascii=False)


def transaction_key(operations: Sequence[MicroOperation]) -> str:
    """A ``txn``'s ``key``: the keys it touches, sorted, joined by ``,``."""
    return ",".join(sorted({operation[1] for operation in operations}))


@functools.lru_cache(maxsize=4096)
def decode_transaction(value: str) -> tuple[MicroOperation, ...]:
    """The operations of a validated ``txn``'s ``value`` (cached: the checker asks often)."""
    return tuple(
        (str(kind), str(key), argument, expected)
        for kind, key, argument, expected in json.loads(value)
    )


@functools.lru_cache(maxsize=4096)
def decode_outputs(output: str) -> tuple[str | None, ...]:
    """The outputs of a validated ``ok`` ``txn``."""
    return tuple(json.loads(output))


def _validate_transaction(key: object, value: object, expected: object) -> str | None:
    if expected is not None:
        return f"only cas takes 'expected', txn got {expected!r}"
    try:
        operations = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        operations = None
    if not (isinstance(operations, list) and 1 <= len(operations) <= TRANSACTION_OPERATIONS_MAX):
        return (
            f"a txn value is a JSON array of 1..{TRANSACTION_OPERATIONS_MAX} operations, "
            f"got {value!r}"[:200]
        )
    for operation in operations:
        if not (isinstance(operation, list) and len(operation) == 4):
            return f"a txn operation is [op, key, value, expected], got {operation!r}"[:200]
        kind, inner_key, inner_value, inner_expected = operation
        if kind not in SINGLE_KINDS or not isinstance(inner_key, str):
            return f"a txn operation needs a known op and a string key, got {operation!r}"[:200]
        reason = _validate_value(kind, inner_value, inner_expected)
        if reason is not None:
            return f"in a txn: {reason}"
    if key != transaction_key([tuple(operation) for operation in operations]):
        return f"a txn's key names its keys, sorted, joined by ',', got {key!r}"[:200]
    return None


def _validate_transaction_output(value: str, output: object) -> str | None:
    try:
        outputs = json.loads(output) if isinstance(output, str) else None
    except ValueError:
        outputs = None
    operations = json.loads(value)
    if not (isinstance(outputs, list) and len(outputs) == len(operations)):
        return f"a txn output is a JSON array with one output per operation, got {output!r}"[:200]
    for operation, inner in zip(operations, outputs, strict=True):
        if operation[0] == INCR and inner is None:
            continue  # no integer found: this one changed nothing
        reason = _validate_output(operation[0], OK, inner)
        if reason is not None:
            return f"in a txn: {reason}"
    return None


def _is_time(value: object) -> bool:
    if type(value) is int:  # not bool
        return True
    return isinstance(value, float) and math.isfinite(value)


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _validate_value(kind: str, value: object, expected: object) -> str | None:
    if kind == PUTX:
        if not isinstance(value, str):
            return f"putx needs a string value, got {_type_name(value)}"
        if not (isinstance(expected, str) and is_integer_string(expected)):
            return f"putx needs its deadline (ms) as a decimal string, got {expected!r}"
        return None
    if kind in (GET, DELETE, LRANGE):
        if value is not None:
            return f"{kind} takes no value, got {value!r}"
    elif kind in _WRITES_STRING:
        if not isinstance(value, str):
            return f"{kind} needs a string value, got {_type_name(value)}"
    elif not (isinstance(value, str) and is_integer_string(value)):
        return f"incr needs a decimal integer delta, got {value!r}"
    if kind == CAS:
        if expected is not None and not isinstance(expected, str):
            return f"cas expected must be a string or null, got {_type_name(expected)}"
    elif expected is not None:
        return f"only cas takes 'expected', {kind} got {expected!r}"
    return None


def _validate_output(kind: str, status: str, output: object) -> str | None:
    if status != OK:
        if output is not None:
            return f"a {status} operation has no output, got {output!r}"
        return None
    if kind == GET:
        if output is not None and not isinstance(output, str):
            return f"get output must be a string or null, got {_type_name(output)}"
    elif kind in _OUTPUT_NONE:
        if output is not None:
            return f"{kind} has no output, got {output!r}"
    elif kind == CAS:
        if output not in (CAS_SUCCEEDED, CAS_FAILED):
            return f"cas output must be 'ok' or 'fail', got {output!r}"
    elif kind == LRANGE:
        if not isinstance(output, str) or _json_strings(output) is None:
            return f"lrange output must be a JSON array of strings, got {output!r}"
    elif not (isinstance(output, str) and is_integer_string(output)):
        return f"incr output must be the new value as a decimal integer, got {output!r}"
    return None


def _json_strings(text: str) -> list[str] | None:
    """``text`` as a JSON array of strings (an ``lrange`` output), or None."""
    try:
        found = json.loads(text)
    except ValueError:
        return None
    if isinstance(found, list) and all(isinstance(item, str) for item in found):
        return found
    return None


def _validate_times(status: str, call: object, returned: object) -> str | None:
    if not _is_time(call):
        return f"call must be a finite number, got {call!r}"
    if returned is None:
        if status != INFO:
            return f"a {status} operation needs a return time (null only for info)"
        return None
    if not _is_time(returned):
        return f"return must be a finite number or null, got {returned!r}"
    assert isinstance(call, int | float)
    assert isinstance(returned, int | float)
    if returned < call:
        return f"return {returned!r} is before call {call!r}"
    return None


def validate_operation(op: Operation) -> str | None:
    """Return why ``op`` is malformed, or ``None`` if it is well formed.

    Rules: ``client`` is an int; ``op`` one of ``OPERATION_KINDS``; ``key`` a
    string; ``status`` one of ``STATUSES``; times as in the module contract;
    ``value``/``expected``/``output`` as documented on ``Operation``. Fields
    are checked as untyped data: records come from JSON and callers.
    """
    client: object = op.client
    kind: object = op.op
    key: object = op.key
    status: object = op.status
    if type(client) is not int:  # bool is an int subclass: refuse it too
        return f"client must be an integer, got {_type_name(client)}"
    if not isinstance(kind, str) or kind not in OPERATION_KINDS:
        return f"unknown op {kind!r} (expected one of {sorted(OPERATION_KINDS)})"
    if not isinstance(key, str):
        return f"key must be a string, got {_type_name(key)}"
    if not isinstance(status, str) or status not in STATUSES:
        return f"unknown status {status!r} (expected one of {sorted(STATUSES)})"
    if kind == TXN:
        reason = _validate_times(status, op.call, op.return_) or _validate_transaction(
            key, op.value, op.expected
        )
        if reason is None and status == OK:
            assert isinstance(op.value, str)
            return _validate_transaction_output(op.value, op.output)
        if reason is None and op.output is not None:
            return f"a {status} operation has no output, got {op.output!r}"
        return reason
    return (
        _validate_times(status, op.call, op.return_)
        or _validate_value(kind, op.value, op.expected)
        or _validate_output(kind, status, op.output)
    )


def _validate_clients(ops: Sequence[Operation]) -> tuple[int, str] | None:
    """Find an operation that breaks client sequentiality: (its position, why)."""
    by_client: dict[int, list[int]] = {}
    for position, op in enumerate(ops):
        by_client.setdefault(op.client, []).append(position)
    for positions in by_client.values():
        positions.sort(key=lambda p: (ops[p].call, p))
        for before, after in itertools.pairwise(positions):
            previous = ops[before]
            if previous.status == INFO:
                return after, (
                    f"client {previous.client} issued an operation after its info operation "
                    f"(called at {previous.call!r}); a client continues under a new id"
                )
            assert previous.return_ is not None
            if ops[after].call < previous.return_:
                return after, (
                    f"client {previous.client} overlaps its own operation called at "
                    f"{previous.call!r} and returned at {previous.return_!r}"
                )
    return None


def validate_history(ops: Sequence[Operation], *, clients_sequential: bool = True) -> None:
    """Raise ``HistoryError`` (with the operation's index) unless ``ops`` is valid.

    With ``clients_sequential`` (the default) also require each client's
    operations not to overlap and none to follow its ``info`` operation.
    """
    for index, op in enumerate(ops):
        reason = validate_operation(op)
        if reason is not None:
            raise HistoryError(reason, index=index)
    if clients_sequential:
        found = _validate_clients(ops)
        if found is not None:
            raise HistoryError(found[1], index=found[0])


def _canonical_integer(value: object) -> object:
    """``incr`` deltas and outputs may be JSON integers; store them as decimal strings."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and is_integer_string(value):
        return str(int(value))
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid number in a history")


def parse_operation(text: str, *, line: int | None = None) -> Operation:
    """Parse and validate one JSON record; raise ``HistoryError`` naming ``line``."""
    try:
        record = json.loads(text, parse_constant=_reject_constant)
    except ValueError as error:
        raise HistoryError(f"not valid JSON ({error})", line=line) from None
    if not isinstance(record, dict):
        raise HistoryError(f"a record must be a JSON object, got {_type_name(record)}", line=line)
    missing = [name for name in FIELDS if name not in record]
    if missing:
        raise HistoryError(f"missing field {missing[0]!r}", line=line)
    unknown = sorted(set(record) - set(FIELDS))
    if unknown:
        raise HistoryError(f"unknown field {unknown[0]!r}", line=line)
    value, output = record["value"], record["output"]
    if record["op"] == INCR:
        value, output = _canonical_integer(value), _canonical_integer(output)
    op = Operation(
        client=record["client"],
        op=record["op"],
        key=record["key"],
        value=value,
        expected=record["expected"],
        output=output,
        call=record["call"],
        return_=record["return"],
        status=record["status"],
    )
    reason = validate_operation(op)
    if reason is not None:
        raise HistoryError(reason, line=line)
    return op


def _read_lines(source: str | os.PathLike[str] | Iterable[str]) -> Iterator[str]:
    if isinstance(source, str | os.PathLike):
        with Path(source).open(encoding="utf-8") as file:
            yield from file
    else:
        yield from source


def load_history(source: str | os.PathLike[str] | Iterable[str]) -> list[Operation]:
    """Read a JSON-lines history from a path (``str`` or path-like) or from lines.

    Blank lines are skipped. Every record is validated, then the whole
    history (client sequentiality); the first problem raises ``HistoryError``
    with its 1-based line number. Operations keep the file's order.
    """
    ops: list[Operation] = []
    lines: list[int] = []
    for number, text in enumerate(_read_lines(source), start=1):
        if not text.strip():
            continue
        ops.append(parse_operation(text, line=number))
        lines.append(number)
    found = _validate_clients(ops)
    if found is not None:
        raise HistoryError(found[1], line=lines[found[0]])
    return ops


def operation_to_json(op: Operation) -> str:
    """One JSON-lines record (no newline), fields in the documented order."""
    record = {
        "client": op.client,
        "op": op.op,
        "key": op.key,
        "value": op.value,
        "expected": op.expected,
        "output": op.output,
        "call": op.call,
        "return": op.return_,
        "status": op.status,
    }
    return json.dumps(record, ensure_ascii=False, allow_nan=False)


def dump_history(ops: Iterable[Operation], path: str | os.PathLike[str]) -> None:
    """Write ``ops`` as JSON lines to ``path`` (replacing it); ``load_history`` reads it back."""
    with Path(path).open("w", encoding="utf-8") as file:
        for op in ops:
            file.write(operation_to_json(op))
            file.write("\n")


def _render(value: str | None) -> str:
    return "null" if value is None else repr(value)


def describe_operation(op: Operation) -> str:
    """One human line, e.g. ``client 3 cas 'k' 'a'->'b' => 'ok' [1.0, 2.5] ok``.

    ``null`` stands for an absent value; ``?`` for an unknown return.
    """
    if op.op == TXN:
        return _describe_transaction(op)
    if op.op == CAS:
        argument = f" {_render(op.expected)}->{_render(op.value)}"
    elif op.value is not None:
        argument = f" {op.value!r}"
    else:
        argument = ""
    if op.status == OK and (op.op == GET or op.output is not None):
        result = f" => {_render(op.output)}"
    else:
        result = ""
    returned = "?" if op.return_ is None or op.status == INFO else repr(op.return_)
    return (
        f"client {op.client} {op.op} {op.key!r}{argument}{result} "
        f"[{op.call!r}, {returned}] {op.status}"
    )


def _describe_transaction(op: Operation) -> str:
    assert op.value is not None
    operations = decode_transaction(op.value)
    outputs = decode_outputs(op.output) if op.status == OK and op.output is not None else None
    parts = []
    for index, (kind, key, value, expected) in enumerate(operations):
        inner = Operation(
            op.client, kind, key, value, expected,
            None if outputs is None else outputs[index], op.call, op.return_,
            OK if outputs is not None else INFO,
        )
        text = describe_operation(inner)
        parts.append(text[len(f"client {op.client} ") : text.rindex(" [")])
    returned = "?" if op.return_ is None or op.status == INFO else repr(op.return_)
    return f"client {op.client} txn [{'; '.join(parts)}] [{op.call!r}, {returned}] {op.status}"


@dataclass(frozen=True, slots=True)
class PendingOperation:
    """Handle of an invoked operation; pass it to exactly one completion call."""

    index: int
    client: int


class HistoryRecorder:
    """Records the operations of concurrent clients into a valid history.

    ``clock`` gives the time of each invocation and completion; the simulator
    passes its virtual clock, live tests ``time.monotonic``; all clients of
    one history must share it. Not thread-safe: use from one thread (or one
    event loop). Misuse (a client invoking twice concurrently, completing a
    handle twice, an output of the wrong shape) raises ``HistoryError``.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._operations: list[Operation] = []
        self._pending: dict[int, PendingOperation] = {}
        self._busy_clients: set[int] = set()
        self._retired_clients: set[int] = set()
        self._client_next = 0

    def new_client(self) -> int:
        """A client id never used before in this history (for a new or timed-out client)."""
        client = self._client_next
        self._client_next += 1
        return client

    def invoke(
        self,
        client: int,
        op: str,
        key: str,
        value: str | int | None = None,
        expected: str | None = None,
    ) -> PendingOperation:
        """Record that ``client`` invokes ``op`` now; returns the handle to complete it."""
        if client in self._retired_clients:
            raise HistoryError(f"client {client} had an info operation; continue under a new id")
        if client in self._busy_clients:
            raise HistoryError(f"client {client} already has an operation in flight")
        if op == INCR:
            value = _canonical_integer(value)  # type: ignore[assignment]
        record = Operation(
            client=client,
            op=op,
            key=key,
            value=value,  # type: ignore[arg-type]
            expected=expected,
            output=None,
            call=self._clock(),
            return_=None,
            status=INFO,
        )
        reason = validate_operation(record)
        if reason is not None:
            raise HistoryError(reason)
        self._client_next = max(self._client_next, client + 1)
        handle = PendingOperation(index=len(self._operations), client=client)
        self._operations.append(record)
        self._pending[handle.index] = handle
        self._busy_clients.add(client)
        return handle

    def ok(self, handle: PendingOperation, output: str | int | None = None) -> Operation:
        """The operation happened and returned ``output`` (see ``Operation``)."""
        return self._complete(handle, OK, output)

    def fail(self, handle: PendingOperation) -> Operation:
        """The operation certainly did not take effect (e.g. rejected before execution)."""
        return self._complete(handle, FAIL, None)

    def info(self, handle: PendingOperation) -> Operation:
        """The outcome is unknown (timeout, lost connection); retires the client id."""
        return self._complete(handle, INFO, None)

    def _complete(self, handle: PendingOperation, status: str, output: object) -> Operation:
        pending = self._pending.get(handle.index)
        if pending is not handle and pending != handle:
            raise HistoryError(f"operation {handle.index} is not pending (completed twice?)")
        invoked = self._operations[handle.index]
        if invoked.op == INCR:
            output = _canonical_integer(output)
        # Built directly: dataclasses.replace walks the fields by reflection
        # (one completion per simulated client operation).
        completed = Operation(
            client=invoked.client,
            op=invoked.op,
            key=invoked.key,
            value=invoked.value,
            expected=invoked.expected,
            output=output,  # type: ignore[arg-type]  # validated just below
            call=invoked.call,
            return_=None if status == INFO else self._clock(),
            status=status,
        )
        reason = validate_operation(completed)
        if reason is not None:
            raise HistoryError(reason, index=handle.index)
        del self._pending[handle.index]
        self._busy_clients.discard(handle.client)
        if status == INFO:
            self._retired_clients.add(handle.client)
        self._operations[handle.index] = completed
        return completed

    def operations(self) -> list[Operation]:
        """Every operation in invocation order; those still in flight appear as ``info``."""
        return list(self._operations)

    def dump(self, path: str | os.PathLike[str]) -> None:
        """Write ``operations()`` to ``path`` as JSON lines."""
        dump_history(self._operations, path)
