"""Transaction histories: what clients of a transactional store saw, one transaction a record.

The on-disk form is JSON lines, documented in ``docs/history-format.md``
(section *Transaction histories*). A record is one transaction attempt::

    {"client": 3, "ops": [["append", "x", 5], ["r", "y", [1, 2]]],
     "call": 1.0, "return": 2.5, "status": "ok"}

Micro-operations (``ops``), each ``[kind, key, value]``:

* ``["append", key, element]``: append the integer ``element`` to the list at
  ``key`` (the *list-append* workload; every element appended to a key is
  unique in the history, which is what makes versions recoverable);
* ``["r", key, value]``: read ``key``. In a list-append history ``value`` is
  the list read (``null`` or ``[]``: empty); in a bank history it is the
  balance read (an integer, ``null``: absent, read as 0). Unknown (``null``)
  unless the status is ``ok``;
* ``["add", key, delta]``: add the integer ``delta`` to the balance at ``key``
  (the *bank* workload: a transfer adds ``-x`` to one account and ``x`` to
  another).

``status``: ``ok`` (committed, reads as given), ``fail`` (certainly did not
commit: nothing it wrote may ever be seen) or ``info`` (unknown: it may have
committed; its reads are unknown). A client is sequential: its transactions
do not overlap, and after an ``info`` one it continues under a new id.

Who calls what: the simulator's transaction clients build records with
:class:`TransactionRecorder`; ``load_transactions``/``dump_transactions``
read and write files; the checkers (``replicaio.check.transactions``) take a
sequence of :class:`Transaction`. Nothing here reads a clock but the one a
recorder is given.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from replicaio.check.history import FAIL, INFO, OK, STATUSES, HistoryError

APPEND: Final = "append"
READ: Final = "r"
ADD: Final = "add"
MICRO_KINDS: Final = frozenset({APPEND, READ, ADD})
TRANSACTION_FIELDS: Final = ("client", "ops", "call", "return", "status")
MICRO_OPERATIONS_MAX: Final = 256  # micro-operations of one recorded transaction
READ_LENGTH_MAX: Final = 1 << 20  # elements of one list read

ReadValue = tuple[int, ...] | int | None
MicroOperation = tuple[str, str, Any]  # (kind, key, element | delta | read value)


@dataclass(frozen=True, slots=True)
class Transaction:
    """One transaction attempt; ``index`` is its position in the history (its name
    in every explanation: ``T7`` is the eighth record)."""

    index: int
    client: int
    ops: tuple[MicroOperation, ...]
    call: float
    return_: float | None
    status: str

    def describe(self) -> str:
        ops = " ".join(f"{kind}({key}{'' if value is None else ', ' + _show(value)})"
                       for kind, key, value in self.ops)
        return f"T{self.index} [client {self.client}, {self.status}] {ops}"


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        shown = ", ".join(str(item) for item in value[:12])
        return "[" + shown + (", ..." if len(value) > 12 else "") + "]"
    return str(value)


def _is_int(value: object) -> bool:
    return type(value) is int


def _micro(raw: object, status: str) -> MicroOperation:
    if not (isinstance(raw, list | tuple) and len(raw) == 3):
        raise ValueError(f"a micro-operation is [kind, key, value], got {raw!r}"[:200])
    kind, key, value = raw
    if kind not in MICRO_KINDS or not isinstance(key, str):
        raise ValueError(f"a micro-operation needs a kind in {sorted(MICRO_KINDS)} "
                         f"and a string key, got {raw!r}"[:200])
    if kind in (APPEND, ADD):
        if not _is_int(value):
            raise ValueError(f"{kind} takes an integer, got {value!r}"[:200])
        return (kind, key, value)
    if value is None:
        return (kind, key, None)
    if status != OK:
        raise ValueError(f"a read of a {status} transaction is unknown (null), got {value!r}"[:200])
    if _is_int(value):
        return (kind, key, value)
    if not (isinstance(value, list | tuple) and len(value) <= READ_LENGTH_MAX
            and all(_is_int(item) for item in value)):
        raise ValueError(f"a read is a list of integers, an integer or null, got {value!r}"[:200])
    return (kind, key, tuple(value))


def _time(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def transaction_from_record(record: object, index: int) -> Transaction:
    """Validate one decoded record; ``ValueError`` says what is wrong."""
    if not isinstance(record, dict):
        raise ValueError("a record is a JSON object")
    missing = [name for name in TRANSACTION_FIELDS if name not in record]
    if missing:
        raise ValueError(f"missing field {missing[0]!r}")
    extra = sorted(set(record) - set(TRANSACTION_FIELDS))
    if extra:
        raise ValueError(f"unknown field {extra[0]!r}")
    client, ops, status = record["client"], record["ops"], record["status"]
    if not _is_int(client):
        raise ValueError(f"client must be an integer, got {client!r}")
    if status not in STATUSES:
        raise ValueError(f"status must be ok, fail or info, got {status!r}")
    if not (isinstance(ops, list) and 1 <= len(ops) <= MICRO_OPERATIONS_MAX):
        raise ValueError(f"ops is a list of 1..{MICRO_OPERATIONS_MAX} micro-operations")
    call = _time(record["call"], "call")
    returned = record["return"]
    return_ = None if returned is None else _time(returned, "return")
    if return_ is None and status != INFO:
        raise ValueError(f"a {status} transaction needs a return time (null only for info)")
    if return_ is not None and return_ < call:
        raise ValueError(f"return {return_} is before call {call}")
    micro = tuple(_micro(raw, status) for raw in ops)
    return Transaction(index, client, micro, call, return_, status)


def validate_clients(transactions: Sequence[Transaction]) -> None:
    """Clients are sequential and retire after ``info``; ``HistoryError`` otherwise."""
    last: dict[int, Transaction] = {}
    for transaction in sorted(transactions, key=lambda t: (t.call, t.index)):
        previous = last.get(transaction.client)
        if previous is not None:
            if previous.status == INFO:
                raise HistoryError(
                    f"client {transaction.client} issued a transaction after its info one "
                    f"(T{previous.index}); a client continues under a new id",
                    index=transaction.index,
                )
            assert previous.return_ is not None
            if previous.return_ > transaction.call:
                raise HistoryError(
                    f"client {transaction.client} overlaps its own T{previous.index}",
                    index=transaction.index,
                )
        last[transaction.client] = transaction


def load_transactions(path: str | os.PathLike[str]) -> list[Transaction]:
    """Read and validate a JSON-lines transaction history (``HistoryError`` names the line)."""
    found: list[Transaction] = []
    with Path(path).open(encoding="utf-8") as source:
        for number, text in enumerate(source, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text, parse_constant=_refuse_constant)
                found.append(transaction_from_record(record, len(found)))
            except ValueError as error:
                raise HistoryError(str(error), line=number) from None
    validate_clients(found)
    return found


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")


def transaction_record(transaction: Transaction) -> dict[str, Any]:
    ops = [[kind, key, list(value) if isinstance(value, tuple) else value]
           for kind, key, value in transaction.ops]
    return {"client": transaction.client, "ops": ops, "call": transaction.call,
            "return": transaction.return_, "status": transaction.status}


def dump_transactions(transactions: Iterable[Transaction], path: str | os.PathLike[str]) -> None:
    with Path(path).open("w", encoding="utf-8") as sink:
        for transaction in transactions:
            sink.write(json.dumps(transaction_record(transaction)) + "\n")


@dataclass(slots=True)
class _Pending:
    client: int
    ops: tuple[MicroOperation, ...]
    call: float


class TransactionRecorder:
    """Records transaction attempts on a clock (virtual in the simulator).

    ``invoke`` before sending, then exactly one of ``ok`` (with the reads'
    values), ``fail`` or ``info``; ``transactions()`` lists the records, those
    still in flight as ``info``. Misuse raises ``HistoryError``.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.pending: dict[int, _Pending] = {}
        self.done: list[Transaction] = []
        self.next_handle = 0

    def invoke(self, client: int, ops: Sequence[MicroOperation]) -> int:
        for kind, _, value in ops:
            if kind == READ and value is not None:
                raise HistoryError("invoke a read with value None")
        handle = self.next_handle
        self.next_handle += 1
        self.pending[handle] = _Pending(client, tuple(ops), self.clock())
        return handle

    def _finish(self, handle: int, status: str, ops: Sequence[MicroOperation] | None) -> None:
        pending = self.pending.pop(handle, None)
        if pending is None:
            raise HistoryError(f"transaction handle {handle} is not in flight")
        record = {"client": pending.client, "ops": [list(op) for op in ops or pending.ops],
                  "call": pending.call,
                  "return": None if status == INFO else self.clock(), "status": status}
        try:
            self.done.append(transaction_from_record(record, len(self.done)))
        except ValueError as error:
            raise HistoryError(str(error)) from None

    def ok(self, handle: int, ops: Sequence[MicroOperation]) -> None:
        self._finish(handle, OK, ops)

    def fail(self, handle: int) -> None:
        self._finish(handle, FAIL, None)

    def info(self, handle: int) -> None:
        self._finish(handle, INFO, None)

    def transactions(self) -> list[Transaction]:
        found = list(self.done)
        for pending in sorted(self.pending.values(), key=lambda p: p.call):
            record = {"client": pending.client, "ops": [list(op) for op in pending.ops],
                      "call": pending.call, "return": None, "status": INFO}
            found.append(transaction_from_record(record, len(found)))
        return found
