"""One group of a sharded Redis store: the key-value state machine, plus its part of
cross-group transactions.

Theory of operation
-------------------
A sharded key-value cluster (``replicaio kv up --groups G``) is G replicated
groups; each key lives in one group by hash slot (``slots.py``). Every group
runs :class:`KvTxnStore`: the Redis state machine of a single-group store
(:class:`~replicaio.services.kv.state_machine.KeyValueStateMachine`, every
command of the Redis front) *and* the transaction protocol's participant and
coordinator roles (:class:`~replicaio.services.txn.store.TxnStore`).

* **Commands of one group** (``GET``, ``SET``, a pipeline, a ``MULTI``/``EXEC``
  whose keys all live in this group) are the key-value store's own commands,
  executed at once, except that a command touching a key *locked* by a
  prepared cross-group transaction is refused :data:`LOCKED_RESULT` and changes
  nothing (the front sends it again a little later). A keyless command
  (``DBSIZE``, ``FLUSHALL``, ``KEYS``, ``SCAN``) is refused the same way while
  any key of the group is locked. Reads too: a transaction answered
  ``committed`` may not have been applied here yet, and its keys stay locked
  until it is, so nothing observes the state before it (strict
  serializability).
* **A cross-group transaction's part here** is a ``prepare`` of micro-operations
  ``kv`` (an encoded key-value command; the key named is one of its keys) and
  ``check`` (a watched key's version, ``WATCH``): refused if a key is locked or
  a version changed; else every key the commands touch and every checked key
  is locked, and the commands are recorded. Its *local effect* is those
  commands, run at ``commit`` on the keys still locked for it (never on any
  other key: ``effect_outside_locks``), their results returned to the driver;
  nothing can have touched those keys in between, so they run on exactly the
  state the prepare locked (a key's expiry is the one exception: it may pass
  in between, and the command sees the key gone, as it would an instant later).
  ``abort`` drops the commands. A ``commit`` of an attempt committed here before
  (another driver of it: an f+1 client, or the gateway, has every node drive
  it; or the resolver applied it first) answers the same results again, from
  a table of the latest commits' results (:data:`REPLIES_MAX` attempts,
  :data:`REPLIES_BYTES_MAX` bytes, the oldest dropped first, part of the
  snapshot), so every driver answers its client alike; past the table it
  answers none (its driver says ``replies_lost``). Everything else (coordinator records, leases
  in ticks, presumed abort, bounds) is :class:`TxnStore`'s.

Deterministic, bounded (the key-value store's and the transaction store's
bounds; recorded commands are at most ``ops_max`` per prepared transaction),
never raises on a bad command.
"""

from __future__ import annotations

from typing import Any, Final

from replicaio.core.codec import Codec, DecodeError
from replicaio.services.kv.state_machine import (
    AT,
    BATCH,
    EXEC,
    REDIS,
    KeyValueStateMachine,
    KvParams,
)
from replicaio.services.txn.store import (
    APPLIED,
    CHECK,
    CLAIM,
    COMMANDS,
    COMMITTED,
    Prepared,
    StoreParams,
    TxnId,
    TxnStore,
    Value,
)

KV: Final = "kv"  # a micro-operation: one key-value command (bytes)
SNAPSHOT_FORMAT: Final = "replicaio.kv-txn"
SNAPSHOT_VERSION: Final = 2  # 2: the latest commits' results (``replies``)
# The latest commits' results, answered again to a repeated commit: attempts, bytes.
REPLIES_MAX: Final = 1024
REPLIES_BYTES_MAX: Final = 8 << 20
LOCKED_CODE: Final = "locked"
_CODEC: Final = Codec(frame_bytes_max=1 << 26)
LOCKED_RESULT: Final = _CODEC.encode_value(
    ["error", LOCKED_CODE, "a key is locked by a transaction across groups; try again"])

# Redis commands whose keys are not just their first argument.
_ALL_ARGUMENTS: Final = frozenset({"exists", "sinter", "sunion", "sdiff", "sinterstore",
                                   "sunionstore", "sdiffstore"})
_TWO_KEYS: Final = frozenset({"rename", "renamenx", "copy", "lmove", "rpoplpush", "smove"})
_KEYLESS: Final = frozenset({"dbsize", "keys", "scan", "flushdb", "flushall"})


def command_keys(value: Any) -> tuple[bytes, ...] | None:
    """The keys a decoded key-value command touches; ``None`` for a keyless one
    (it touches the whole key space) or one this cannot read (the state machine
    refuses it anyway)."""
    if not (isinstance(value, tuple) and value and isinstance(value[0], str)):
        return None
    op = value[0]
    if op == REDIS:
        if len(value) != 3 or not isinstance(value[2], tuple):
            return None
        name, arguments = value[1], value[2]
        if name in _KEYLESS or not arguments:
            return None
        if name in _ALL_ARGUMENTS:
            words = arguments
        elif name in _TWO_KEYS:
            words = arguments[:2]
        elif name == "msetnx":
            words = arguments[0::2]
        else:
            words = arguments[:1]
        return tuple(word for word in words if isinstance(word, bytes))
    if op in (BATCH, EXEC):
        inner = value[1] if op == BATCH else value[2]
        if not isinstance(inner, tuple):
            return None
        found: list[bytes] = []
        if op == EXEC and isinstance(value[1], tuple):
            found.extend(w[0] for w in value[1] if isinstance(w, tuple) and w
                         and isinstance(w[0], bytes))
        for command in inner:
            keys = encoded_command_keys(command)
            if keys is None:
                return None
            found.extend(keys)
        return tuple(found)
    if op == AT:
        return encoded_command_keys(value[2]) if len(value) == 3 else None
    if len(value) >= 2 and isinstance(value[1], bytes):
        return (value[1],)
    return None


def encoded_command_keys(command: object) -> tuple[bytes, ...] | None:
    """:func:`command_keys` of an encoded command."""
    if not isinstance(command, bytes):
        return None
    try:
        return command_keys(_CODEC.decode_value(command))
    except DecodeError:
        return None


class KvTxnStore(TxnStore):
    """A group's state machine in a sharded key-value cluster (see the module docstring)."""

    def __init__(self, params: StoreParams | None = None,
                 kv_params: KvParams | None = None) -> None:
        super().__init__(params)
        self.kv = KeyValueStateMachine(kv_params)
        self.commands: dict[TxnId, tuple[bytes, ...]] = {}  # prepared: their commands
        # committed: their commands' results, the latest first dropped last
        self.replies: dict[TxnId, tuple[bytes, ...]] = {}
        self.replies_bytes = 0
        self.locked_reads_refused = 0  # this replica's alone: reads change no state

    # -- the StateMachine interface ----------------------------------------------

    def apply(self, command: bytes) -> bytes:
        head = self.head(command)
        if head in COMMANDS:
            return super().apply(command)
        if self.refused(command):
            self.count("refused_locked_command")
            return LOCKED_RESULT
        return self.kv.apply(command)

    def read(self, command: bytes) -> bytes:
        if self.refused(command):
            # Not in ``counters`` (replicated, part of snapshots): a read runs on one
            # replica only, so counting it there made the replicas' snapshots
            # differ, and PBFT groups, which compare checkpoint digests, stalled
            # (txn-kv-pbft, live, under WATCH transfers).
            self.locked_reads_refused += 1
            return LOCKED_RESULT
        return self.kv.read(command)

    def advance_clock(self, time_ms: int) -> None:
        self.kv.advance_clock(time_ms)

    def snapshot(self) -> bytes:
        return self.codec.encode_value([
            SNAPSHOT_FORMAT, SNAPSHOT_VERSION, super().snapshot(), self.kv.snapshot(),
            [[list(txn), list(commands)] for txn, commands in self.commands.items()],
            [[list(txn), list(results)] for txn, results in self.replies.items()],
        ])

    def restore(self, snapshot: bytes) -> None:
        value: Any = self.codec.decode_value(snapshot)
        assert isinstance(value, tuple) and value[0] == SNAPSHOT_FORMAT
        assert value[1] in (1, SNAPSHOT_VERSION)
        transactions, kv, commands = value[2:5]
        kv_params = self.kv.params
        super().restore(transactions)  # (re-initialises: a fresh key-value store)
        self.kv = KeyValueStateMachine(kv_params)
        self.kv.restore(kv)
        self.commands = {(txn[0], txn[1]): tuple(items) for txn, items in commands}
        self.replies, self.replies_bytes = {}, 0
        for txn, results in value[5] if value[1] >= 2 else ():
            self.keep_replies((txn[0], txn[1]), tuple(results))

    def footprint(self) -> dict[str, int]:
        return {**super().footprint(), "txn_kv_commands": len(self.commands),
                "txn_kv_replies": len(self.replies)}

    def footprint_max(self) -> dict[str, int]:
        # Commands are recorded only for a prepared transaction and dropped with it.
        return {**super().footprint_max(), "txn_kv_commands": self.params.prepared_max,
                "txn_kv_replies": REPLIES_MAX}

    # -- single-group commands meet the locks ------------------------------------

    @staticmethod
    def head(command: bytes) -> object:
        try:
            value = _CODEC.decode_value(command)
        except DecodeError:
            return None
        return value[0] if isinstance(value, tuple) and value else None

    def refused(self, command: bytes) -> bool:
        """Whether ``command`` touches a locked key (or is keyless while any is)."""
        if not self.locks:
            return False
        keys = encoded_command_keys(command)
        if keys is None:
            return True
        return any(key in self.locks for key in keys)

    # -- a cross-group transaction's part ------------------------------------------

    def parse_ops(self, ops: Any) -> list[tuple[str, bytes, Any]]:
        if not isinstance(ops, tuple) or not 1 <= len(ops) <= self.params.ops_max:
            raise ValueError(f"ops is a list of 1..{self.params.ops_max} micro-operations")
        parsed: list[tuple[str, bytes, Any]] = []
        for op in ops:
            if not (isinstance(op, tuple) and len(op) == 3 and isinstance(op[1], bytes)):
                raise ValueError("a micro-operation is [kind, key, argument]")
            kind, key, argument = op
            if kind == CHECK:
                if type(argument) is not int:
                    raise TypeError("a check's argument is a version")
            elif kind == KV:
                keys = encoded_command_keys(argument)
                if keys is None or key not in keys:
                    raise ValueError("a kv micro-operation names one of its command's keys")
            else:
                raise ValueError(f"no micro-operation {str(kind)[:20]!r} in a key-value group")
            parsed.append((kind, key, argument))
        return parsed

    def op_keys(self, ops: list[tuple[str, bytes, Any]]) -> tuple[bytes, ...]:
        keys: list[bytes] = []
        for kind, key, argument in ops:
            found = encoded_command_keys(argument) if kind == KV else (key,)
            assert found is not None  # checked by parse_ops
            keys.extend(found)
        return tuple(dict.fromkeys(keys))

    def local_effect(self, ops: list[tuple[str, bytes, Any]]
                     ) -> tuple[dict[bytes, Value], list[Any]] | str:
        for kind, key, argument in ops:
            if kind == CHECK:
                self.kv.lookup(key)  # a key due to expire goes now: its version changes
                if self.kv.version(key) != argument:
                    return "version"
        return {}, []

    def on_prepare(self, client: int, nonce: int, coordinator: int, ops: Any,
                   participants: Any = (), signed: Any = None) -> list[Any]:
        answer = super().on_prepare(client, nonce, coordinator, ops, participants, signed)
        txn = (client, nonce)
        if txn in self.prepared and txn not in self.commands:
            self.commands[txn] = tuple(
                argument for kind, _, argument in self.parse_ops(ops) if kind == KV)
        return answer

    def on_commit(self, client: int, nonce: int, certificate: Any = None) -> list[Any]:
        txn = (client, nonce)
        if (type(client) is int and type(nonce) is int and txn not in self.prepared
                and self.finished.get(txn) == COMMITTED):
            results = self.replies.get(txn)
            if results is not None:  # committed before: the same results again
                return [COMMITTED, results, (CLAIM, APPLIED, *txn, COMMITTED)]
        return super().on_commit(client, nonce, certificate)

    def keep_replies(self, txn: TxnId, results: tuple[bytes, ...]) -> None:
        """Remember ``txn``'s results (the oldest forgotten past the bounds)."""
        size = sum(len(result) for result in results)
        if size > REPLIES_BYTES_MAX:
            return
        self.replies[txn] = results
        self.replies_bytes += size
        while len(self.replies) > REPLIES_MAX or self.replies_bytes > REPLIES_BYTES_MAX:
            oldest = next(iter(self.replies))
            self.replies_bytes -= sum(len(result) for result in self.replies.pop(oldest))

    def apply_effect(self, txn: TxnId, record: Prepared) -> list[Any]:
        """Run the recorded commands, each only if every key it touches is locked for
        ``txn``; their results, in order."""
        results: list[bytes] = []
        for command in self.commands.pop(txn, ()):
            keys = encoded_command_keys(command) or ()
            if not keys or any(self.locks.get(key) != txn or key not in record.keys
                               for key in keys):
                self.count("effect_outside_locks")  # refused: only locked keys change
                results.append(self.codec.encode_value(
                    ["error", "outside_locks", "a key of the command was not locked"]))
                continue
            results.append(self.kv.apply(command))
        self.keep_replies(txn, tuple(results))
        return [results]

    def release(self, txn: TxnId, record: Prepared) -> None:
        self.commands.pop(txn, None)
        super().release(txn, record)
