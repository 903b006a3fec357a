"""The state machine of one group: its keys, the participant's locks, the coordinator's records.

Theory of operation
-------------------
Every group of a transactional cluster runs this one deterministic state
machine under SMR (``replicaio.smr``), over any ``Ordering`` (Raft today; a
BFT protocol later: nothing here trusts a single replica). A group plays two
roles for a transaction ``(client, nonce)`` (``docs/transactions.md``):

**Participant** (its keys are touched):

* ``prepare``: refused if the transaction already finished here (a late
  duplicate), if a key it names is locked by another transaction (*no-wait*:
  never wait for a lock, so no deadlock; ``docs/adr/0008-...``), if a
  ``check`` finds another version (an optimistic read, Redis's ``WATCH``), or
  if an ``add`` would make a balance negative. Otherwise it locks exactly the
  keys the transaction reads and writes, computes the reads and the *local
  effect* (the new values of the keys it writes) on the locked state, and
  records them with a lease deadline, counted in this group's ticks.
* ``commit``: applies the recorded effect, but only on keys locked for this
  transaction (any other is refused and counted ``effect_outside_locks``:
  the collusion hole of IPC's first design), releases the locks.
* ``abort``: releases the locks and drops the effect. Both remember the
  outcome (a bounded FIFO, ``finished_max``), so a late ``prepare`` is refused.

**Coordinator** (chosen by the client at the start of the attempt):

* ``begin`` records the attempt as pending with a lease deadline;
* ``decide`` records the decision (commit only while the lease runs; the
  first decision stands forever after);
* ``resolve`` (a participant whose lease ran out asks) answers the decision;
  a pending attempt whose lease ran out is decided *abort* then; an unknown
  one is *presumed aborted* (and recorded so); a participant that already
  acknowledged the outcome is told ``discard`` (its prepared state is a late
  duplicate whose effect was applied or dropped already);
* ``ack`` records that a participant applied the outcome; records whose
  every participant acknowledged may be forgotten (oldest first) when the
  table (``coordinated_max``) is full, and ``begin`` is refused ``busy`` if
  nothing can be (a presumed abort is then not recorded: ``resolve``
  answers ``pending``, to be asked again, and ``decide`` ``busy``).

**Time** is ``ticks``: the count of ``tick`` commands in this group's log,
which the group's leader submits while it holds locks or pending records
(``replicaio.services.txn.protocol``). Leases are never a wall clock, and
every replica sees the same deadlines.

Every command and result is a codec value (``encode``/``decode``); a
malformed command is answered ``["error", why]`` and changes nothing, never
raises. Every table is bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from replicaio.core.codec import Codec, DecodeError, EncodeError
from replicaio.services.txn.nonces import NonceWindows, WindowParams
from replicaio.services.txn.slots import SlotMap
from replicaio.smr.certified import Certifier

APPEND: Final = "append"
READ: Final = "r"
ADD: Final = "add"
CHECK: Final = "check"
OP_KINDS: Final = frozenset({APPEND, READ, ADD, CHECK})

COMMIT: Final = "commit"
ABORT: Final = "abort"
COMMITTED: Final = "committed"
ABORTED: Final = "aborted"
PENDING: Final = "pending"
DISCARD: Final = "discard"
PREPARED: Final = "prepared"
REFUSED: Final = "refused"

SNAPSHOT_FORMAT: Final = "replicaio.txn-store"
SNAPSHOT_VERSION: Final = 3  # 2: prepared records keep their participants; 3: nonce windows
# (a version 3 snapshot may end with the reads of the latest commits: ``reads_kept``)
# The reads of the latest committed attempts that read (answered again to a
# repeated commit: a late driver's, ``TxnNode.finish_decided``): attempts, bytes.
READS_KEPT_MAX: Final = 1024
READS_KEPT_BYTES_MAX: Final = 1 << 20

# What a certifiable result claims (its last item), for certificates
# (``replicaio.smr.certified``): ("claim", kind, client, nonce, ...).
CLAIM: Final = "claim"
VOTE: Final = "vote"  # ..., coordinator, participants: this group prepared it so
DECISION: Final = "decision"  # ..., committed|aborted: this coordinator decided it
DISCARDED: Final = "discard"  # ..., group: that participant's prepared state is stale
APPLIED: Final = "applied"  # ..., committed|aborted: this participant finished it so
UNCERTIFIED: Final = "uncertified"
UNKNOWN_HERE: Final = "unknown"  # a participant holds nothing for the transaction

# What a client of a Byzantine fault tolerant cluster signs: this label and the
# codec value [client, nonce, ops] (``request_bytes``); a prepare carries it
# as [ops, key, signature] and the group checks it (``TxnStore.unsigned``).
TXN_REQUEST_LABEL: Final = b"replicaio txn request v1"
UNSIGNED: Final = "unsigned"  # refused: no valid client signature of the request
ALTERED: Final = "altered"  # refused: not exactly the signed operations for this group
REPLAYED: Final = "replayed"  # refused: this group began or prepared that signed attempt before

TxnId = tuple[int, int]  # (client, nonce)
Value = int | tuple[int, ...]
# (client, key, signed bytes, signature) -> authentic: ``smr.auth.SignedClients.verify``
RequestCheck = Callable[[int, bytes, bytes, bytes], bool]


def request_bytes(codec: Codec, client: int, nonce: int, ops: bytes) -> bytes:
    """What the client of attempt ``(client, nonce)`` signs: a label, then its
    identity and its operations (the ``TxnRequest.ops`` bytes) as one codec value."""
    return TXN_REQUEST_LABEL + codec.encode_value([client, nonce, ops])


@dataclass(frozen=True, slots=True)
class StoreParams:
    """Bounds and leases of one group's store (every replica must agree)."""

    lease_ticks: int = 16  # a lock's (and a pending record's) lease, in this group's ticks
    prepared_max: int = 1024  # transactions holding locks at once
    finished_max: int = 8192  # outcomes remembered against late duplicates
    coordinated_max: int = 4096  # coordinator records
    ops_max: int = 64  # micro-operations of one transaction in one group
    prepare_keys_max: int = 256  # keys one prepare locks (a command may name several)
    list_length_max: int = 4096  # elements of one list value
    keys_max: int = 1 << 16  # keys of the store
    # Groups that check signed requests refuse an attempt they began (coordinator)
    # or prepared (participant) before, even once they forgot it: per-client nonce
    # windows (``nonces.py``, ADR 0030), this many clients, LRU beyond.
    nonce_clients_max: int = 4096
    nonce_window: int = 64  # nonces below a client's highest still accepted once
    nonce_buckets: int = 1024  # floors of evicted clients' highest nonces

    def windows(self) -> WindowParams:
        return WindowParams(self.nonce_clients_max, self.nonce_window, self.nonce_buckets)

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            assert getattr(self, name) >= 1, name


@dataclass(slots=True)
class Prepared:
    coordinator: int
    keys: tuple[bytes, ...]
    effects: dict[bytes, Value]
    reads: list[Any]
    deadline: int
    participants: tuple[int, ...] = ()


@dataclass(slots=True)
class Coordinated:
    participants: tuple[int, ...]
    deadline: int
    decision: str | None = None
    acked: set[int] = field(default_factory=set)


class TxnStore:
    """One group's state machine (``replicaio.smr.api.StateMachine``); see the module docstring."""

    def __init__(self, params: StoreParams | None = None) -> None:
        self.params = params or StoreParams()
        self.codec = Codec()
        self.data: dict[bytes, Value] = {}
        self.versions: dict[bytes, int] = {}
        self.revision = 0
        self.ticks = 0
        self.locks: dict[bytes, TxnId] = {}
        self.prepared: dict[TxnId, Prepared] = {}
        self.finished: dict[TxnId, str] = {}
        self.coordinated: dict[TxnId, Coordinated] = {}
        self.counters: dict[str, int] = {}
        # Committed attempts that read: their reads, the latest dropped last.
        self.reads_kept: dict[TxnId, tuple[Any, ...]] = {}
        self.reads_kept_bytes = 0
        # Attempts begun here as coordinator, prepared here as participant, by client:
        # what a copy of a signed attempt is refused on once the records forgot it.
        self.begun = NonceWindows(self.params.windows())
        self.prepares = NonceWindows(self.params.windows())
        # Set by the node for Byzantine fault tolerant groups (kept across
        # restores): votes, decisions and acknowledgements must then carry
        # certificates of the groups that made them (docs/transactions.md).
        self.certifier: Certifier | None = getattr(self, "certifier", None)
        self.group: int = getattr(self, "group", -1)
        # Set by the node for the same groups: a prepare must carry its client's
        # signed request, and its operations must be exactly the signed ones for
        # this group's slots (a Byzantine driver may not change them).
        self.requests: RequestCheck | None = getattr(self, "requests", None)
        self.slots: SlotMap | None = getattr(self, "slots", None)
        # Set by the node for the same groups: refuse a signed attempt begun or
        # prepared here before (the nonce windows; a variant says no).
        self.guards_replays: bool = getattr(self, "guards_replays", False)

    # -- the StateMachine interface -------------------------------------------

    def apply(self, command: bytes) -> bytes:
        try:
            value: Any = self.codec.decode_value(command)
        except DecodeError as error:
            return self.result("error", f"undecodable command: {error.reason}")
        if not (isinstance(value, tuple) and value and isinstance(value[0], str)):
            return self.result("error", "a command is [name, ...]")
        if value[0] not in COMMANDS:
            return self.result("error", f"unknown command {value[0][:40]!r}")
        handler = getattr(self, "on_" + value[0])  # a subclass's override counts
        try:
            return self.encode(handler(*value[1:]))
        except (TypeError, ValueError) as error:
            self.count("malformed_command")
            return self.result("error", f"malformed {value[0]}: {error}"[:200])

    def read(self, command: bytes) -> bytes:
        """Read-only: ``["get", key]`` -> ``[value, version]``."""
        try:
            value: Any = self.codec.decode_value(command)
        except DecodeError as error:
            return self.result("error", f"undecodable command: {error.reason}")
        if not (isinstance(value, tuple) and len(value) == 2 and value[0] == "get"
                and isinstance(value[1], bytes)):
            return self.result("error", "a read is [get, key]")
        return self.encode(["ok", self.data.get(value[1]), self.versions.get(value[1], 0)])

    def snapshot(self) -> bytes:
        state = [
            SNAPSHOT_FORMAT, SNAPSHOT_VERSION, self.revision, self.ticks,
            [[key, value, self.versions.get(key, 0)] for key, value in self.data.items()],
            [[key, version] for key, version in self.versions.items() if key not in self.data],
            [[list(txn), p.coordinator, list(p.keys), [[k, v] for k, v in p.effects.items()],
              p.reads, p.deadline, list(p.participants)] for txn, p in self.prepared.items()],
            [[list(txn), outcome] for txn, outcome in self.finished.items()],
            [[list(txn), list(c.participants), c.deadline, c.decision, sorted(c.acked)]
             for txn, c in self.coordinated.items()],
            sorted(self.counters.items()),
            self.begun.snapshot(), self.prepares.snapshot(),
        ]
        if self.reads_kept:  # (only then: a store whose attempts read nothing is unchanged)
            state.append([[list(txn), list(reads)] for txn, reads in self.reads_kept.items()])
        return self.codec.encode_value(state)

    def restore(self, snapshot: bytes) -> None:
        value: Any = self.codec.decode_value(snapshot)
        assert isinstance(value, tuple) and value[0] == SNAPSHOT_FORMAT
        assert value[1] in (1, 2, SNAPSHOT_VERSION), value[1]
        (_, _, revision, ticks, data, tombstones, prepared, finished, coordinated, counters,
         *windows) = value
        self.__init__(self.params)  # type: ignore[misc]
        self.revision, self.ticks = revision, ticks
        for key, stored, version in data:
            self.data[key] = stored
            self.versions[key] = version
        for key, version in tombstones:
            self.versions[key] = version
        for txn, coordinator, keys, effects, reads, deadline, *rest in prepared:
            participants = tuple(rest[0]) if rest else ()  # (version 1: none kept)
            record = Prepared(coordinator, tuple(keys), dict(effects), list(reads), deadline,
                              participants)
            self.prepared[(txn[0], txn[1])] = record
            for key in keys:
                self.locks[key] = (txn[0], txn[1])
        self.finished = {(txn[0], txn[1]): outcome for txn, outcome in finished}
        for txn, participants, deadline, decision, acked in coordinated:
            self.coordinated[(txn[0], txn[1])] = Coordinated(
                tuple(participants), deadline, decision, set(acked))
        self.counters = dict(counters)
        if windows:  # (before version 3: none kept)
            self.begun.restore(windows[0])
            self.prepares.restore(windows[1])
        for txn, reads in windows[2] if len(windows) > 2 else ():
            self.keep_reads((txn[0], txn[1]), tuple(reads))

    # -- helpers --------------------------------------------------------------

    def encode(self, value: list[Any]) -> bytes:
        try:
            return self.codec.encode_value(value)
        except EncodeError as error:
            return self.result("error", f"result too large: {error.reason}")

    def result(self, *value: Any) -> bytes:
        return self.codec.encode_value(list(value))

    def count(self, counter: str) -> None:
        self.counters[counter] = self.counters.get(counter, 0) + 1

    def expired(self, slack: int = 0) -> Iterator[tuple[TxnId, int]]:
        """Prepared transactions whose lease ran out ``slack`` ticks ago or more:
        ``(txn, coordinator)``."""
        for txn, record in self.prepared.items():
            if record.deadline + slack < self.ticks:
                yield txn, record.coordinator

    def undelivered(self, slack: int = 0) -> Iterator[tuple[TxnId, str, tuple[int, ...]]]:
        """Coordinator records: decided ones some participant has not acknowledged,
        ``(txn, decision, those participants)``, and pending ones past their lease
        (decision ``pending``); with ``slack``, only those whose lease ran out
        ``slack`` ticks ago or more."""
        for txn, record in self.coordinated.items():
            if record.deadline + slack >= self.ticks:
                continue
            if record.decision is None:
                yield txn, PENDING, record.participants
                continue
            missing = tuple(g for g in record.participants if g not in record.acked)
            if missing:
                yield txn, record.decision, missing

    def busy(self) -> bool:
        """Whether time must advance here: locks held or coordinator records open."""
        return bool(self.prepared) or any(
            record.decision is None or len(record.acked) < len(record.participants)
            for record in self.coordinated.values()
        )

    def footprint(self) -> dict[str, int]:
        """What this replica's tables hold now (bounded by :meth:`footprint_max`)."""
        return {"txn_locks": len(self.locks), "txn_prepared": len(self.prepared),
                "txn_finished": len(self.finished), "txn_coordinated": len(self.coordinated),
                "txn_nonce_windows": len(self.begun) + len(self.prepares),
                "txn_nonce_floors": len(self.begun.floors) + len(self.prepares.floors),
                "txn_reads_kept": len(self.reads_kept)}

    def footprint_max(self) -> dict[str, int]:
        """The bound of every table, whatever drivers and clients send: a prepare
        locks at most ``prepare_keys_max`` keys; the others are their ``*_max``."""
        params = self.params
        return {"txn_locks": params.prepared_max * params.prepare_keys_max,
                "txn_prepared": params.prepared_max, "txn_finished": params.finished_max,
                "txn_coordinated": params.coordinated_max,
                "txn_nonce_windows": 2 * params.nonce_clients_max,
                "txn_nonce_floors": 2 * params.nonce_buckets,
                "txn_reads_kept": READS_KEPT_MAX}

    def certified(self, certificate: Any, group: int, *claim: Any) -> bool:
        """Whether ``certificate`` proves ``group`` claimed ``claim`` (always, in a
        group that takes no certificates: crash faults only); else counted."""
        if self.certifier is None:
            return True
        expected = self.codec.encode_value([CLAIM, *claim])
        if self.certifier.claim(certificate, group) == expected:
            return True
        self.count(f"uncertified_{claim[0]}")
        return False

    def applied(self, certificate: Any, group: int, txn: TxnId, decision: str) -> bool:
        """Whether ``certificate`` proves participant ``group`` finished ``txn`` as
        decided, or holds nothing for it (forgotten: nothing left to apply there)."""
        assert self.certifier is not None
        claim = self.certifier.claim(certificate, group)
        if claim is not None and claim in [self.codec.encode_value([CLAIM, APPLIED, *txn, outcome])
                                           for outcome in (decision, UNKNOWN_HERE)]:
            return True
        self.count("uncertified_applied")
        return False

    def remember(self, txn: TxnId, outcome: str) -> None:
        self.finished[txn] = outcome
        while len(self.finished) > self.params.finished_max:
            del self.finished[next(iter(self.finished))]

    # -- participant ------------------------------------------------------------

    def on_prepare(self, client: int, nonce: int, coordinator: int, ops: Any,
                   participants: Any = (), signed: Any = None) -> list[Any]:
        txn = (_int(client), _int(nonce))
        if txn in self.prepared:  # a retry of the same attempt
            record = self.prepared[txn]
            return [PREPARED, record.reads, self.vote(txn, record)]
        if txn in self.finished:
            return [REFUSED, "finished"]
        parsed = self.parse_ops(ops)
        why = self.unsigned(txn, ops, participants, signed, _int(coordinator))
        if why is not None:
            self.count(f"refused_{why}")  # a correct driver never sends it
            return [REFUSED, why]
        if self.guards_replays and not self.prepares.fresh(*txn):
            self.count("refused_replayed")  # prepared here before, forgotten since
            return [REFUSED, REPLAYED]
        keys = self.op_keys(parsed)
        if len(keys) > self.params.prepare_keys_max:
            raise ValueError(f"a prepare locks at most {self.params.prepare_keys_max} keys")
        if any(self.locks.get(key, txn) != txn for key in keys):
            self.count("refused_locked")
            return [REFUSED, "locked"]
        if len(self.prepared) >= self.params.prepared_max:
            self.count("refused_prepared_max")
            return [REFUSED, "busy"]
        outcome = self.local_effect(parsed)
        if isinstance(outcome, str):
            self.count(f"refused_{outcome}")
            return [REFUSED, outcome]
        effects, reads = outcome
        record = self.prepared[txn] = Prepared(
            _int(coordinator), keys, effects, reads, self.ticks + self.params.lease_ticks,
            _groups(participants))
        for key in keys:
            self.locks[key] = txn
        if self.guards_replays:
            self.prepares.accept(*txn)
        return [PREPARED, reads, self.vote(txn, record)]

    def unsigned(self, txn: TxnId, ops: Any, participants: Any, signed: Any,
                 coordinator: int) -> str | None:
        """Why a prepare (or, with ``ops`` ``None``, a begin) may not proceed: its
        client's signature of the request is missing or wrong (``unsigned``), or
        ``ops`` are not exactly the signed operations whose keys live in this
        group, in their order, ``participants`` not exactly the groups of all of
        them, or ``coordinator`` not the one those groups and the attempt id
        choose (``altered``: a copy begun in another coordinator group would
        escape the first one's nonce window); ``None`` when it may, or when this
        group checks no signatures (crash faults only: drivers are trusted)."""
        if self.requests is None:
            return None
        assert self.slots is not None, "a group checking signatures knows the slot map"
        if not (isinstance(signed, tuple) and len(signed) == 3
                and all(type(part) is bytes for part in signed)):
            return UNSIGNED
        request_ops, key, signature = signed
        if not self.requests(txn[0], key, request_bytes(self.codec, *txn, request_ops),
                             signature):
            return UNSIGNED
        try:
            value: Any = self.codec.decode_value(request_ops)
        except DecodeError:
            return ALTERED  # signed, but no correct driver would prepare it
        if not (isinstance(value, tuple) and all(
                isinstance(op, tuple) and len(op) == 3 and isinstance(op[1], bytes)
                for op in value)):
            return ALTERED
        slots = self.slots
        mine = tuple(op for op in value if slots.group_of(op[1]) == self.group)
        groups = tuple(sorted({slots.group_of(op[1]) for op in value}))
        if not groups or (ops is not None and mine != ops) or (
                groups != _groups(participants)) or coordinator != coordinator_of(*txn, groups):
            return ALTERED
        return None

    @staticmethod
    def vote(txn: TxnId, record: Prepared) -> tuple[Any, ...]:
        return (CLAIM, VOTE, *txn, record.coordinator, record.participants)

    def parse_ops(self, ops: Any) -> list[tuple[str, bytes, Any]]:
        """A prepare's micro-operations, checked (``ValueError``/``TypeError`` if bad)."""
        return _ops(ops, self.params.ops_max)

    def op_keys(self, ops: list[tuple[str, bytes, Any]]) -> tuple[bytes, ...]:
        """The keys a prepare locks: exactly those its micro-operations touch."""
        return tuple(dict.fromkeys(key for _, key, _ in ops))

    def local_effect(self, ops: list[tuple[str, bytes, Any]]
                     ) -> tuple[dict[bytes, Value], list[Any]] | str:
        """The new values and the reads of ``ops`` on the current state, or why not."""
        effects: dict[bytes, Value] = {}
        reads: list[Any] = []
        for kind, key, argument in ops:
            current = effects.get(key, self.data.get(key))
            if kind == READ:
                reads.append(current)
            elif kind == CHECK:
                if self.versions.get(key, 0) != argument:
                    return "version"
            elif kind == APPEND:
                items = () if current is None else current
                if not isinstance(items, tuple) or len(items) >= self.params.list_length_max:
                    return "wrong_type"
                effects[key] = (*items, argument)
            else:
                balance = 0 if current is None else current
                if not isinstance(balance, int):
                    return "wrong_type"
                if balance + argument < 0:
                    return "insufficient"
                effects[key] = balance + argument
        fresh = sum(key not in self.data for key in effects)
        if len(self.data) + fresh > self.params.keys_max:
            return "keys_max"
        return effects, reads

    def on_commit(self, client: int, nonce: int, certificate: Any = None) -> list[Any]:
        txn = (_int(client), _int(nonce))
        record = self.prepared.get(txn)
        if record is None:
            known = self.finished.get(txn)
            if known is None:
                self.count("commit_unprepared")  # a correct coordinator never sends it
                return [UNKNOWN_HERE, (CLAIM, APPLIED, *txn, UNKNOWN_HERE)]
            kept = self.reads_kept.get(txn) if known == COMMITTED else None
            if kept is not None:  # committed before: its reads again (a late driver)
                return [known, kept, (CLAIM, APPLIED, *txn, known)]
            return [known, (CLAIM, APPLIED, *txn, known)]
        if not self.certified(certificate, record.coordinator, DECISION, *txn, COMMITTED):
            return [REFUSED, UNCERTIFIED]
        del self.prepared[txn]
        results = self.apply_effect(txn, record)
        self.release(txn, record)
        self.remember(txn, COMMITTED)
        return [COMMITTED, *results, (CLAIM, APPLIED, *txn, COMMITTED)]

    def apply_effect(self, txn: TxnId, record: Prepared) -> list[Any]:
        """Write ``record``'s effect, only on keys locked for ``txn``; extra result
        items of ``commit``: the reads of an attempt that read here (those its
        vote carried), kept for a repeated commit (:meth:`keep_reads`), so that
        a driver that did not see the votes answers the same reads."""
        for key, value in record.effects.items():
            if self.locks.get(key) != txn or key not in record.keys:
                self.count("effect_outside_locks")  # refused: only locked keys change
                continue
            self.data[key] = value
            self.revision += 1
            self.versions[key] = self.revision
        if not record.reads:
            return []
        reads = tuple(record.reads)
        self.keep_reads(txn, reads)
        return [reads]

    def keep_reads(self, txn: TxnId, reads: tuple[Any, ...]) -> None:
        """Remember a committed attempt's ``reads`` (the oldest forgotten past
        :data:`READS_KEPT_MAX` attempts or :data:`READS_KEPT_BYTES_MAX` bytes)."""
        size = len(self.codec.encode_value(list(reads)))
        if size > READS_KEPT_BYTES_MAX:
            return
        self.reads_kept[txn] = reads
        self.reads_kept_bytes += size
        while (len(self.reads_kept) > READS_KEPT_MAX
               or self.reads_kept_bytes > READS_KEPT_BYTES_MAX):
            dropped = self.reads_kept.pop(next(iter(self.reads_kept)))
            self.reads_kept_bytes -= len(self.codec.encode_value(list(dropped)))

    def on_abort(self, client: int, nonce: int, certificate: Any = None) -> list[Any]:
        """Drop a prepared transaction's effect and locks (on its coordinator's
        decision); for one not prepared here, refuse its later prepare. (Only the
        former needs a certificate: refusing a prepare is always safe.)"""
        txn = (_int(client), _int(nonce))
        record = self.prepared.get(txn)
        if record is not None:
            if not self.certified(certificate, record.coordinator, DECISION, *txn, ABORTED):
                return [REFUSED, UNCERTIFIED]
            del self.prepared[txn]
            self.release(txn, record)
        known = self.finished.get(txn)
        if known == COMMITTED:
            self.count("abort_after_commit")  # a correct coordinator never sends it
            return [COMMITTED, (CLAIM, APPLIED, *txn, COMMITTED)]
        self.remember(txn, ABORTED)
        return [ABORTED, (CLAIM, APPLIED, *txn, ABORTED)]

    def on_discard(self, client: int, nonce: int, certificate: Any = None) -> list[Any]:
        """Drop a late duplicate's prepared state; the outcome stays as it was."""
        txn = (_int(client), _int(nonce))
        record = self.prepared.get(txn)
        if record is not None and not self.certified(
                certificate, record.coordinator, DISCARDED, *txn, self.group):
            return [REFUSED, UNCERTIFIED]
        self.prepared.pop(txn, None)
        if record is not None:
            self.release(txn, record)
            self.count("discarded_duplicates")
        if txn not in self.finished:
            self.remember(txn, ABORTED)
        return [DISCARD]

    def release(self, txn: TxnId, record: Prepared) -> None:
        for key in record.keys:
            if self.locks.get(key) == txn:
                del self.locks[key]

    def on_tick(self) -> list[Any]:
        self.ticks += 1
        return ["ok", self.ticks]

    # -- coordinator ------------------------------------------------------------

    def on_begin(self, client: int, nonce: int, participants: Any,
                 signed: Any = None) -> list[Any]:
        """Record the attempt as pending (with its client's signed request, in a
        group that checks them; one begun here before and forgotten since is
        refused ``replayed``); one decided already answers its certified decision."""
        txn = (_int(client), _int(nonce))
        record = self.coordinated.get(txn)
        if record is not None and record.decision is not None:
            # Another driver of the attempt was first and it is decided: the same
            # certified decision ``decide`` answers, so this driver can finish it
            # (a key-value attempt's replies come from the participants' commits).
            return [record.decision, (CLAIM, DECISION, *txn, record.decision)]
        if record is not None:
            return [PENDING]
        groups = tuple(sorted({_int(group) for group in participants}))
        if not groups:
            raise ValueError("a transaction has at least one participant")
        why = self.unsigned(txn, None, participants, signed, self.group)
        if why is not None:
            self.count(f"refused_begin_{why}")  # a correct driver never sends it
            return [REFUSED, why]
        if self.guards_replays and not self.begun.fresh(*txn):
            self.count("refused_begin_replayed")  # begun here before, forgotten since
            return [REFUSED, REPLAYED]
        if len(self.coordinated) >= self.params.coordinated_max and not self.forget_one():
            self.count("refused_coordinated_max")
            return [REFUSED, "busy"]
        self.coordinated[txn] = Coordinated(groups, self.ticks + self.params.lease_ticks)
        if self.guards_replays:
            self.begun.accept(*txn)
        return [PENDING]

    def forget_one(self) -> bool:
        for txn, record in self.coordinated.items():
            if record.decision is not None and len(record.acked) == len(record.participants):
                del self.coordinated[txn]
                return True
        return False

    def decided(self, txn: TxnId, decision: str, certificates: Any = ()) -> Coordinated | None:
        """``txn``'s record, decided ``decision`` unless it was decided before (or its
        lease ran out: abort); ``None`` if it is unknown and the table is full of
        records nobody may forget yet (the caller answers: try again later)."""
        record = self.coordinated.get(txn)
        if record is None:  # presumed abort, recorded so that it stands
            if len(self.coordinated) >= self.params.coordinated_max and not self.forget_one():
                self.count("refused_coordinated_max")
                return None
            record = self.coordinated[txn] = Coordinated((), self.ticks, ABORTED)
            self.count("presumed_aborts")
        if record.decision is None:
            lease_ran_out = record.deadline < self.ticks
            if decision == COMMIT and not lease_ran_out and not self.votes_certified(
                    txn, record, certificates):
                return record  # a commit without every vote's certificate: stays pending
            record.decision = COMMITTED if decision == COMMIT and not lease_ran_out else ABORTED
            if decision == COMMIT and lease_ran_out:
                self.count("aborted_lease_ran_out")
        return record

    def votes_certified(self, txn: TxnId, record: Coordinated, certificates: Any) -> bool:
        """Whether ``certificates`` hold, in order, every participant's certified
        vote: prepared, with this coordinator and these participants."""
        if self.certifier is None:
            return True
        if not (isinstance(certificates, tuple)
                and len(certificates) == len(record.participants)):
            self.count("uncertified_vote")
            return False
        return all(self.certified(certificate, group, VOTE, *txn, self.group,
                                  record.participants)
                   for group, certificate in zip(record.participants, certificates, strict=True))

    def on_decide(self, client: int, nonce: int, decision: Any,
                  certificates: Any = ()) -> list[Any]:
        if decision not in (COMMIT, ABORT):
            raise ValueError(f"a decision is commit or abort, got {decision!r}")
        txn = (_int(client), _int(nonce))
        record = self.decided(txn, decision, certificates)
        if record is None:
            return [REFUSED, "busy"]  # no record to decide (a correct driver began one)
        if record.decision is None:
            return [REFUSED, UNCERTIFIED]
        return [record.decision, (CLAIM, DECISION, *txn, record.decision)]

    def on_resolve(self, client: int, nonce: int, group: int) -> list[Any]:
        txn = (_int(client), _int(nonce))
        record = self.coordinated.get(txn)
        if record is not None and _int(group) in record.acked:
            return [DISCARD, (CLAIM, DISCARDED, *txn, group)]
        if record is not None and record.decision is None and record.deadline >= self.ticks:
            return [PENDING]
        record = self.decided(txn, ABORT)
        if record is None:
            return [PENDING]  # asked again once a record may be forgotten
        assert record.decision is not None
        return [record.decision, (CLAIM, DECISION, *txn, record.decision)]

    def on_ack(self, client: int, nonce: int, groups: Any, certificates: Any = ()) -> list[Any]:
        """Participants ``groups`` applied the decision (each with its certificate,
        in order, in a group that takes them): the record may be forgotten once all did."""
        txn = (_int(client), _int(nonce))
        record = self.coordinated.get(txn)
        acked = [_int(group) for group in groups]
        if self.certifier is not None:
            if not isinstance(certificates, tuple) or len(certificates) != len(acked):
                self.count("uncertified_applied")
                return [REFUSED, UNCERTIFIED]
            acked = [group for group, certificate in zip(acked, certificates, strict=True)
                     if record is not None and record.decision is not None
                     and self.applied(certificate, group, txn, record.decision)]
        if record is not None and record.decision is not None:
            record.acked.update(g for g in acked if g in record.participants)
        return ["ok"]


def coordinator_of(client: int, nonce: int, participants: tuple[int, ...]) -> int:
    """The coordinator group of attempt ``(client, nonce)`` over ``participants``
    (sorted): one of them, fixed by the attempt id, so a copy of a signed attempt
    cannot be begun in another group than the first."""
    return participants[(client + nonce) % len(participants)]


def unclaimed(answer: Any) -> Any:
    """A decoded answer without the claim it ends with, if any (``CLAIM``)."""
    if isinstance(answer, tuple) and answer and isinstance(answer[-1], tuple) and (
            answer[-1][:1] == (CLAIM,)):
        return answer[:-1]
    return answer


def _int(value: Any) -> int:
    if type(value) is not int:
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _groups(participants: Any) -> tuple[int, ...]:
    if not isinstance(participants, tuple):
        raise TypeError("participants is a list of groups")
    return tuple(sorted({_int(group) for group in participants}))


def _ops(ops: Any, ops_max: int) -> list[tuple[str, bytes, Any]]:
    if not isinstance(ops, tuple) or not 1 <= len(ops) <= ops_max:
        raise ValueError(f"ops is a list of 1..{ops_max} micro-operations")
    parsed = []
    for op in ops:
        if not (isinstance(op, tuple) and len(op) == 3 and op[0] in OP_KINDS
                and isinstance(op[1], bytes)):
            raise ValueError("a micro-operation is [kind, key, argument]")
        kind, key, argument = op
        if kind == READ:
            if argument is not None:
                raise ValueError("a read takes no argument")
        else:
            _int(argument)
        parsed.append((kind, key, argument))
    return parsed


COMMANDS: Final = frozenset(
    {"prepare", "commit", "abort", "discard", "tick", "begin", "decide", "resolve", "ack"}
)


def encode_command(codec: Codec, *value: Any) -> bytes:
    return codec.encode_value(list(value))
