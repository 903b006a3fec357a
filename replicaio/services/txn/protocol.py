"""Atomic transactions across replicated groups: the protocol, as a component of each node.

Theory of operation
-------------------
IPC's atomic execution (Filecoin's Interplanetary Consensus; ipc-actors
``atomic-exec``), done completely, over groups replicated by any ``Ordering``
(``replicaio.smr.groups``): every node hosts one replica of each of the G
groups, keys live in groups by hash slot (``slots.py``), and every group runs
the :class:`~replicaio.services.txn.store.TxnStore` state machine, which
holds each group's part of the protocol as replicated state. This module is
what moves between groups: a node's components call a group through the
node's own replica of it (``GroupCaller``: a command, replicated, answered
once). ``docs/transactions.md`` states the protocol and its guarantees.

* :meth:`TxnNode.transaction` is one *attempt* (a fresh id: client id and
  nonce), written as the protocol reads: the coordinator group records it
  with a lease; every participant group prepares its part through its own
  replication (locks exactly the keys read and written, checks read
  versions, records the local effect; prepared or refused); the coordinator
  decides commit if every participant prepared, else abort; every
  participant applies the outcome; the coordinator is told it may forget.
  The client gets the outcome (and the reads) once it is decided.
* :meth:`TxnNode.resolver` is what makes it total: on the node that leads a
  group (and on any node once the clock stood still: ``clock_stalled``), it
  ticks the group's lease clock while the group holds locks or open
  records, asks the coordinator about every prepared transaction whose lease
  ran out (the coordinator decides abort once *its* lease runs out),
  applies the answer, and delivers every decision the coordinator group
  holds to the participants that did not acknowledge it. So a crashed
  driver, a lost message or a crashed leader never leaves a key locked
  beyond its lease.

Fault model: crash-recovery nodes, the network may lose, duplicate, delay and
reorder messages; each group tolerates what its ``Ordering`` tolerates. No
wall clock anywhere: leases are counted in ticks of the groups' logs.
Deterministic: everything runs on the node's scheduler.
"""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Annotated, Any, Final

from replicaio.core.codec import Codec, DecodeError, Message, Meta, Name
from replicaio.core.config import ClusterConfig, Resilience
from replicaio.core.context import Context
from replicaio.core.errors import ConfigError
from replicaio.core.signing import SIGNATURE_BYTES_MAX
from replicaio.services.txn.kv_store import KV
from replicaio.services.txn.slots import SlotMap
from replicaio.services.txn.store import (
    ABORT,
    ABORTED,
    CLAIM,
    COMMIT,
    COMMITTED,
    DISCARD,
    PENDING,
    PREPARED,
    READ,
    REFUSED,
    REPLAYED,
    UNSIGNED,
    TxnId,
    TxnStore,
    coordinator_of,
    request_bytes,
    unclaimed,
)
from replicaio.smr.auth import ED25519, ED25519_PUBLIC_BYTES, KEYED, SignedClients
from replicaio.smr.certified import Certifier
from replicaio.smr.groups import CallerParams, GroupCaller, GroupRequest, Groups
from replicaio.smr.protocol import BYZANTINE, SmrFactory

UNKNOWN: Final = "unknown"
# Why a driver answers ``unknown`` for an attempt decided committed by another
# driver: a variant's rule (it holds none of the reads and fetches none); the
# decision's certificate did not come (the commits cannot be asked); a
# participant's commit answered no reads (its table forgot them, or no answer).
ALREADY_DECIDED: Final = "already_decided"
DECISION_UNCERTIFIED: Final = "decision_uncertified"
READS_UNHEARD: Final = "reads_unheard"
# What a node's core holds for all its groups together: their bounds add up.
NODE_WIDE: Final = ("contexts", "tasks", "timers", "unacked", "storage_keys", "stream_inbox")
TXN_OPS_BYTES_MAX: Final = 1 << 20
# Times a driver asks again for what it needs to answer a committed attempt's
# results: the decision's certificate, a participant's commit.
FINISH_RETRIES: Final = 2
Plan = dict[int, list[tuple[int, list[Any]]]]  # group -> (position, micro-operation)


# What a participant applies for the coordinator's certified answer to ``resolve``.
RESOLVED_BY: Final = {COMMITTED: "commit", ABORTED: "abort", DISCARD: "discard"}

class TxnRequest(Message, tag="txn.TxnRequest"):
    """A client's transaction attempt: ``ops`` is the codec value
    ``[[kind, key, argument], ...]`` (kinds ``append``, ``r``, ``add``, ``check``)."""

    client: Annotated[int, Meta(ge=0, le=(1 << 63) - 1)]
    nonce: Annotated[int, Meta(ge=0, lt=1 << 62)]
    ops: Annotated[bytes, Meta(max_length=TXN_OPS_BYTES_MAX)]


class SignedTxnRequest(Message, tag="txn.SignedTxnRequest"):
    """A transaction attempt signed by its client, as a client of a Byzantine fault
    tolerant cluster sends it: ``signature`` covers ``request_bytes(client, nonce,
    ops)``; ``key`` as in ``smr.AuthenticatedRequest`` (``ed25519``: the public
    key, the client id derived from it; ``keyed``: empty). Every participant group
    checks it before it locks anything (``TxnStore.unsigned``)."""

    request: TxnRequest
    key: Annotated[bytes, Meta(max_length=64)]
    signature: Annotated[bytes, Meta(max_length=SIGNATURE_BYTES_MAX)]


class TxnResult(Message, tag="txn.TxnResult"):
    """The outcome of attempt ``(client, nonce)``: ``committed`` (``reads``: the
    codec value of one entry per op, the value read or ``None``), ``aborted``
    (``reason``), or ``unknown`` (the driver gave up; the attempt may commit)."""

    client: int
    nonce: int
    outcome: Name
    reason: Name
    reads: Annotated[bytes, Meta(max_length=TXN_OPS_BYTES_MAX)]


class LockReport(Message, tag="txn.LockReport"):
    """Output by every node when what its replica of ``group`` holds changes."""

    group: int
    locks: int
    prepared: int
    open_records: int


@dataclass(frozen=True, slots=True)
class TxnParams:
    resolve_every_us: int = 50_000
    drivers_max: int = 256  # attempts driven by one node at once
    resolve_max: int = 32  # resolutions in flight per group
    ops_max: int = 64
    # A prepare refused because a key is locked is asked again every
    # ``lock_retry_us`` within the same attempt, for at most ``lock_wait_us``,
    # the participants prepared in ascending group order (bounded waiting in
    # lock order, the default; 0: no-wait; ADR 0009 and docs/benchmarks.md).
    lock_wait_us: int = 100_000
    lock_retry_us: int = 20_000
    # A node not hosting a busy group's leader ticks its lease clock too once
    # the clock stood still for this many resolver rounds (``TxnNode.resolver``).
    clock_stalled_rounds: int = 32
    caller: CallerParams = field(default_factory=CallerParams)

    def validate(self) -> TxnParams:
        for name in ("resolve_every_us", "drivers_max", "resolve_max", "ops_max",
                     "lock_retry_us", "clock_stalled_rounds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TxnParams.{name} must be >= 1")
        if self.lock_wait_us < 0:
            raise ConfigError("TxnParams.lock_wait_us must be >= 0")
        self.caller.validate()
        return self


class TxnNode:
    """The node protocol of a transactional cluster (see the module docstring)."""

    def __init__(self, context: Context, factory: TxnFactory) -> None:
        self.context = context
        self.params = factory.params
        self.slots = factory.slots
        self.codec = Codec()
        self.groups = Groups(context, factory.slots.groups, factory.group_factory)
        self.stores: list[TxnStore] = []
        # Byzantine fault tolerant groups take only certified votes, decisions and
        # acknowledgements (f+1 replicas of the group that made them).
        self.certify = self.certifies(factory)
        certifier = Certifier(context.signer.verify, lambda group: range(context.n),
                              context.f + 1)
        # ... and prepare only the operations their client signed (``smr.auth``'s
        # schemes: ``ed25519``, a client id being its key's, on any cluster; the
        # keyed-hash stand-in where the nodes sign so, as SMR's clients).
        scheme = ED25519 if context.signer.name == "ed25519" else KEYED
        self.signatures = SignedClients(self.codec, scheme, nodes=context.signer)
        self.ed25519 = SignedClients(self.codec, ED25519)
        requests = self.verify_request if self.certify and self.checks_requests() else None
        guards = requests is not None and self.guards_replays()
        for group, replica in enumerate(self.groups.replicas):
            store = replica.state_machine
            assert isinstance(store, TxnStore)
            store.group = group
            store.certifier = certifier if self.certify else None
            store.requests = requests
            store.guards_replays = guards
            store.slots = factory.slots
            self.stores.append(store)
        self.caller: GroupCaller | None = None
        self.drivers = 0
        self.in_flight: dict[tuple[Any, ...], None] = {}
        self.reported: list[tuple[int, int, int] | None] = [None] * len(self.stores)
        # Per group: the lease clock (ticks) last seen busy, and the resolver rounds
        # it has stood still since (``clock_stalled``).
        self.clock_seen: list[tuple[int, int]] = [(-1, 0)] * len(self.stores)

    def certifies(self, factory: TxnFactory) -> bool:
        """Whether the groups take only certified votes, decisions and acks: in
        Byzantine fault tolerant groups (no single node's word moves a group)."""
        return factory.resilience in BYZANTINE

    def checks_requests(self) -> bool:
        """Whether groups that take certificates also check that a prepare's
        operations are exactly what its client signed (always: a variant says no)."""
        return True

    def guards_replays(self) -> bool:
        """Whether groups that check signed requests also refuse a signed attempt
        they began or prepared before, once they forgot it (per-client nonce
        windows, ADR 0030; always: a variant says no)."""
        return True

    def verify_request(self, client: int, key: bytes, data: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is ``client``'s of ``data``: Ed25519 with ``key`` (32
        bytes), else the cluster's own scheme. Pure: every replica agrees."""
        if len(key) == ED25519_PUBLIC_BYTES:
            return self.ed25519.verify(client, key, data, signature)
        return self.signatures.verify(client, key, data, signature)

    def authentic(self, signed: SignedTxnRequest) -> bool:
        """Whether ``signed`` carries its client's signature of its request."""
        request = signed.request
        return self.verify_request(
            request.client, signed.key,
            request_bytes(self.codec, request.client, request.nonce, request.ops),
            signed.signature)

    def audit(self) -> list[str]:
        """Every group's self-audit (``SmrProtocol.audit``), each problem named by
        its group."""
        return [
            f"group {group}: {problem}"
            for group, replica in enumerate(self.groups.replicas)
            for problem in replica.audit()
        ]

    def footprint(self) -> dict[str, int]:
        """What this node holds now, by the names of :meth:`TxnFactory.footprint_max`
        (per-group figures: the largest over the groups)."""
        measured: dict[str, int] = {}

        def most(name: str, value: int) -> None:
            measured[name] = max(measured.get(name, 0), value)

        for replica, store in zip(self.groups.replicas, self.stores, strict=True):
            for name, value in replica.footprint().items():
                most(name, value)
            for name, value in store.footprint().items():
                most(name, value)
        measured["txn_drivers"] = self.drivers
        measured["txn_in_flight"] = len(self.in_flight)
        measured["txn_callers"] = max(self.caller.live) if self.caller is not None else 0
        return measured

    def start(self) -> None:
        self.groups.start()
        self.caller = GroupCaller(self.context, self.groups, self.params.caller,
                                  attest=self.claim_of if self.certify else None)
        self.context.spawn(self.resolver(), "txn.resolver")

    def on_request(self, payload: Any) -> str | None:
        if type(payload) is bytes:
            try:
                payload = self.context.node.codec.decode(payload)
            except DecodeError as error:
                self.context.count(f"request_undecodable_{error.reason}")
                return "bad_request"
        if type(payload) is GroupRequest:
            return self.groups.on_request(payload)
        signed: SignedTxnRequest | None = None
        if type(payload) is SignedTxnRequest:
            signed, payload = payload, payload.request
        if type(payload) is not TxnRequest:
            return "bad_request"
        if self.certify and (signed is None or not self.authentic(signed)):
            # Groups of a BFT cluster prepare only what a client signed: an
            # attempt without its client's signature can never commit.
            self.context.count("txn_request_unsigned")
            self.answer(payload, ABORTED, UNSIGNED)
            return UNSIGNED
        if self.drivers >= self.params.drivers_max:
            self.answer(payload, ABORTED, "busy")
            return "busy"
        self.drivers += 1
        self.context.spawn(self.drive(payload, signed), "txn.driver")
        return None

    # -- one attempt ------------------------------------------------------------

    async def call(self, group: int, *command: Any) -> tuple[Any, ...] | None:
        assert self.caller is not None
        result = await self.caller.call(group, self.codec.encode_value(list(command)))
        if result is None:
            return None
        decoded = self.codec.decode_value(result)
        assert isinstance(decoded, tuple) and decoded, "the store answers a non-empty list"
        return decoded

    async def call_certified(self, group: int, *command: Any
                             ) -> tuple[tuple[Any, ...], Any] | None:
        """:meth:`call`, with the certificate of what the answer claims (``None``
        when it claims nothing, it could not be collected, or groups take none)."""
        assert self.caller is not None
        answer = await self.caller.call_certified(group, self.codec.encode_value(list(command)))
        if answer is None:
            return None
        result, certificate = answer
        decoded = self.codec.decode_value(result)
        assert isinstance(decoded, tuple) and decoded, "the store answers a non-empty list"
        return decoded, certificate

    def claim_of(self, result: bytes) -> bytes | None:
        """What a store's result claims (its last item, ``store.CLAIM``), encoded."""
        try:
            value: Any = self.codec.decode_value(result)
        except DecodeError:
            return None
        if not (isinstance(value, tuple) and len(value) >= 2):
            return None
        claim = value[-1]
        if not (isinstance(claim, tuple) and claim and claim[0] == CLAIM):
            return None
        return self.codec.encode_value(list(claim))

    async def together(self, *calls: Coroutine[Any, Any, Any]) -> list[Any]:
        """Run ``calls`` concurrently; their results, in order."""
        async with self.context.scope("txn.together") as scope:
            tasks = [scope.spawn(call) for call in calls]
            return [await task.result for task in tasks]

    async def drive(self, request: TxnRequest, signed: SignedTxnRequest | None) -> None:
        try:
            await self.transaction(request, signed)
        finally:
            self.drivers -= 1

    async def transaction(self, request: TxnRequest,
                          signed: SignedTxnRequest | None = None) -> None:
        """Two-phase commit of one attempt across the groups its keys live in
        (``signed``: the client's signature of it, which every participant of a
        BFT cluster checks)."""
        opened = await self.begin(request, signed)
        if opened is None:
            return
        plan, participants, coordinator = opened
        client, nonce = request.client, request.nonce
        # Every participant prepares its part through its own replication.
        certified_votes = await self.prepare(request, plan, participants, coordinator, signed)
        votes = [None if vote is None else vote[0] for vote in certified_votes]
        proofs = [None if vote is None else vote[1] for vote in certified_votes]
        prepared = all(vote is not None and vote[0] == PREPARED for vote in votes) and (
            not self.certify or all(proof is not None for proof in proofs))
        # The coordinator decides: commit only if all prepared (and its lease runs),
        # on the participants' certified votes.
        certified = await self.call_certified(
            coordinator, "decide", client, nonce, *((COMMIT, proofs) if prepared else (ABORT,)))
        decided = None if certified is None else certified[0]
        if decided is None or decided[0] not in (COMMITTED, ABORTED):
            self.answer(request, UNKNOWN, "no_decision")  # (busy: no record to decide)
            return
        assert certified is not None
        decision_proof = certified[1]
        # The client learns the outcome now: the participants hold their locks
        # until they applied it, so nobody can see the state before it. (Key-value
        # commands' replies come from the commit itself: the client waits for it.)
        outcome = str(decided[0])
        deferred = self.deferred(plan)
        late = False
        if outcome == COMMITTED and not deferred and not all(
                vote is not None and vote[0] == PREPARED for vote in votes):
            # Another driver of the same attempt (a client asking several nodes)
            # had it committed on votes this one did not see: its reads come
            # from the commits (the participants keep them), once applied.
            late = self.reads_late(plan)
            if not late:
                self.answer_decided(request, plan)
        elif outcome == COMMITTED and not deferred:
            self.answer(request, COMMITTED, "", self.reads(plan, participants, votes))
        elif outcome != COMMITTED:
            refusals = [str(v[1]) for v in votes if v is not None and v[0] != PREPARED]
            self.answer(request, ABORTED, refusals[0] if refusals else "lease")
        await self.finish(request, plan, participants, coordinator, outcome, decision_proof,
                          late)

    async def finish(self, request: TxnRequest, plan: Plan, participants: list[int],
                     coordinator: int, outcome: str, decision_proof: Any,
                     late: bool = False) -> None:
        """Every participant applies the decided ``outcome`` (on the coordinator's
        certified decision); a committed key-value attempt's client is answered
        now, with the commits' results (a participant that applied it before
        answers the same results again, from its table), and so is, with
        ``late``, the client of a committed attempt that reads, which this
        driver did not see prepared (its reads from the commits: each
        participant keeps the reads of its latest commits); then the
        coordinator may forget it (on their certified acks)."""
        client, nonce = request.client, request.nonce
        answers = outcome == COMMITTED and (late or self.deferred(plan))
        if answers and self.certify and decision_proof is None:
            # The decision's attestations came too late (a loaded machine): the
            # commits would be refused uncertified and the client would not get
            # its results. Ask the coordinator for the decision again.
            decision_proof = await self.decision_again(request, participants, coordinator)
        finish = "commit" if outcome == COMMITTED else "abort"
        finished = await self.together(*(
            self.call_certified(group, finish, client, nonce, decision_proof)
            for group in participants))
        for _ in range(FINISH_RETRIES if answers else 0):
            # A commit call that gave up (or was refused: no certificate) is sent
            # again: a participant that applied it answers the same results.
            missing = [index for index, answer in enumerate(finished)
                       if answer is None or answer[0][0] != COMMITTED]
            if not missing:
                break
            self.context.count("txn_commits_asked_again")
            again = await self.together(*(
                self.call_certified(participants[index], finish, client, nonce, decision_proof)
                for index in missing))
            for index, answer in zip(missing, again, strict=True):
                finished[index] = answer
        applied = [None if answer is None else answer[0] for answer in finished]
        if outcome == COMMITTED and self.deferred(plan):
            replies = self.replies(plan, participants, applied)
            self.answer(request, COMMITTED, "" if replies else "replies_lost", replies)
        elif outcome == COMMITTED and late:
            reads = self.kept_reads(plan, participants, applied)
            if reads is None:  # a participant's table forgot them, or no answer
                self.answer(request, UNKNOWN, READS_UNHEARD)
            else:
                self.context.count("txn_late_reads")
                self.answer(request, COMMITTED, "", reads)
        acks = [answer[1] for answer in finished if answer is not None]
        if len(acks) == len(participants) and (
                not self.certify or all(ack is not None for ack in acks)):
            await self.call(coordinator, "ack", client, nonce, participants, acks)

    async def decision_again(self, request: TxnRequest, participants: list[int],
                             coordinator: int) -> Any:
        """The coordinator's certified decision of a decided attempt, asked again
        (``begin`` answers it for a decided attempt, whatever else it carries);
        ``None`` if its certificate still does not come."""
        for _ in range(FINISH_RETRIES):
            self.context.count("txn_decision_asked_again")
            certified = await self.call_certified(coordinator, "begin", request.client,
                                                  request.nonce, participants)
            if certified is not None and certified[0][0] == COMMITTED and (
                    certified[1] is not None):
                return certified[1]
        return None

    @staticmethod
    def deferred(plan: Plan) -> bool:
        """Whether the attempt's results come from its commits (key-value commands)."""
        return any(op[0] == KV for ops in plan.values() for _, op in ops)

    async def begin(self, request: TxnRequest, signed: SignedTxnRequest | None = None
                    ) -> tuple[Plan, list[int], int] | None:
        """Plan the attempt, choose its coordinator group (fixed by the attempt id:
        ``store.coordinator_of``) and have it record the attempt with its lease
        (groups that check signed requests get the client's); ``None`` once the
        client was answered (it cannot)."""
        plan = self.plan(request)
        if isinstance(plan, str):
            self.answer(request, ABORTED, plan)
            return None
        participants = sorted(plan)
        coordinator = coordinator_of(request.client, request.nonce, tuple(participants))
        certified = await self.call_certified(coordinator, "begin", request.client,
                                              request.nonce, participants,
                                              *self.signed_proof(signed))
        begun = None if certified is None else certified[0]
        if begun is not None and begun[0] == COMMITTED:
            assert certified is not None
            # Another driver of it was first (a client asking several nodes: the f+1
            # client, the gateway). A key-value attempt's replies come from the
            # commits: finish it as that driver does, on the certified decision
            # ``begin`` answered, and answer what it answered. (Until 2026-12-05
            # this answered ``unknown``, and with fewer than f+1 drivers in time
            # the gateway told a Redis client TRYAGAIN for a committed attempt.)
            await self.finish_decided(request, plan, participants, coordinator, certified[1])
            return None
        if begun is None or begun[0] != PENDING:
            self.answer(request, *self.not_begun(begun))
            return None
        return plan, participants, coordinator

    async def finish_decided(self, request: TxnRequest, plan: Plan, participants: list[int],
                             coordinator: int, decision_proof: Any) -> None:
        """An attempt ``begin`` found decided committed by another driver: a
        key-value attempt is finished as that driver finishes it, on the certified
        decision, and answered with the commits' results (the participants keep
        the latest commits' results: the same ones); otherwise
        :meth:`answer_decided`."""
        deferred = self.deferred(plan)
        if (deferred or self.reads_late(plan)) and (
                not self.certify or decision_proof is not None):
            self.context.count("txn_finished_decided")
            await self.finish(request, plan, participants, coordinator, COMMITTED,
                              decision_proof, late=not deferred)
        elif deferred or self.reads_late(plan):
            self.answer_decided(request, plan, DECISION_UNCERTIFIED)
        else:
            self.answer_decided(request, plan)

    def reads_late(self, plan: Plan) -> bool:
        """Whether this driver, which did not see the votes of an attempt decided
        committed, answers its reads from the participants' commits (their kept
        reads, ``TxnStore.keep_reads``): when it reads. (Until 2026-12-06 it
        answered ``unknown``, and the f+1 client ``TransactionUnknown`` with
        fewer than f+1 drivers in time; a variant still does.)"""
        return any(op[0] == READ for ops in plan.values() for _, op in ops)

    def answer_decided(self, request: TxnRequest, plan: Plan,
                       why: str = ALREADY_DECIDED) -> None:
        """Answer an attempt the coordinator decided committed while this driver
        holds none of its reads: ``committed`` if it reads nothing, else ``unknown``
        ``why`` (``decision_uncertified``: the decision's certificate did not come,
        so the commits cannot be asked; ``already_decided``: a variant's rule)."""
        if self.deferred(plan) or any(op[0] == READ for ops in plan.values() for _, op in ops):
            self.answer(request, UNKNOWN, why)
        else:
            self.answer(request, COMMITTED, "",
                        [None] * sum(len(ops) for ops in plan.values()))

    async def prepare(self, request: TxnRequest, plan: Plan, participants: list[int],
                      coordinator: int, signed: SignedTxnRequest | None = None
                      ) -> list[tuple[tuple[Any, ...], Any] | None]:
        """Every participant's vote, with its certificate (``call_certified``).
        Without waiting for locks (no-wait), every group at once. With bounded
        waiting, group by group in ascending order (``participants`` is sorted),
        stopping at the first refusal: an attempt waits only while holding
        locks of lower groups than the one it waits in, so no cycle of waiters
        forms and the attempt holding the highest locks always proceeds
        (ordered locking). Waiting in every group at once let 64 clients on 3
        keys hold some locks each while waiting for the others' until their
        waits ran out, again and again: 8 clients committed nothing in the 30 s
        after the heal (docs/benchmarks.md, *Contention*). Groups that take
        certificates get the client's signed request with every prepare."""
        if not self.params.lock_wait_us:
            return await self.together(*(
                self.prepare_in(group, request, [op for _, op in plan[group]], coordinator,
                                participants, signed=signed)
                for group in participants))
        votes: list[tuple[tuple[Any, ...], Any] | None] = []
        budget = [self.params.lock_wait_us]  # one budget for the attempt: within its lease
        for group in participants:
            vote = await self.prepare_in(group, request, [op for _, op in plan[group]],
                                         coordinator, participants, budget, signed)
            votes.append(vote)
            if vote is None or vote[0][0] != PREPARED:
                votes += [None] * (len(participants) - len(votes))  # not asked: abort
                break
        return votes

    async def prepare_in(self, group: int, request: TxnRequest, ops: list[Any],
                         coordinator: int, participants: list[int],
                         budget: list[int] | None = None,
                         signed: SignedTxnRequest | None = None,
                         ) -> tuple[tuple[Any, ...], Any] | None:
        """One participant's vote; a refusal for a locked key is asked again while
        the attempt's waiting ``budget`` lasts (``[lock_wait_us]``, spent in
        place, shared by the groups of one attempt; bounded waiting, well within
        the attempt's lease)."""
        if budget is None:
            budget = [self.params.lock_wait_us]
        proof = self.signed_proof(signed)
        while True:
            vote = await self.call_certified(group, "prepare", request.client, request.nonce,
                                             coordinator, ops, participants, *proof)
            if vote is None or vote[0][:2] != (REFUSED, "locked") or budget[0] <= 0:
                return vote
            await self.context.sleep(self.params.lock_retry_us)
            budget[0] -= self.params.lock_retry_us
            self.context.count("txn_lock_waits")

    def signed_proof(self, signed: SignedTxnRequest | None) -> tuple[Any, ...]:
        """What a begin or prepare carries for groups that check signed requests:
        ``([ops, key, signature],)``, else nothing."""
        if self.certify and signed is not None:
            return ([signed.request.ops, signed.key, signed.signature],)
        return ()

    @staticmethod
    def not_begun(begun: tuple[Any, ...] | None) -> tuple[str, str]:
        if begun is None:
            return UNKNOWN, "no_answer"
        if begun[0] == COMMITTED:
            return UNKNOWN, ALREADY_DECIDED  # a duplicate of a decided attempt
        if begun[:2] == (REFUSED, REPLAYED):
            # Begun here before and forgotten since: decided long ago, but which
            # way is no longer known here (another driver of it may have answered).
            return UNKNOWN, REPLAYED
        return ABORTED, str(unclaimed(begun)[-1])

    @staticmethod
    def reads(plan: Plan, participants: list[int],
              votes: list[Any]) -> list[Any]:
        """The values read, one entry per micro-operation (``None``: not a read)."""
        reads: list[Any] = [None] * sum(len(ops) for ops in plan.values())
        for group, vote in zip(participants, votes, strict=True):
            values = iter(vote[1])
            for index, op in plan[group]:
                if op[0] == READ:
                    reads[index] = next(values)
        return reads

    @staticmethod
    def kept_reads(plan: Plan, participants: list[int],
                   applied: list[Any]) -> list[Any] | None:
        """The values read, one entry per micro-operation, from the participants'
        commits (``[committed, reads, claim]`` where the attempt read; ``None``
        when a participant that read answered no reads)."""
        reads: list[Any] = [None] * sum(len(ops) for ops in plan.values())
        for group, answer in zip(participants, applied, strict=True):
            if not any(op[0] == READ for _, op in plan[group]):
                continue
            if not (answer is not None and len(answer) >= 3 and answer[0] == COMMITTED
                    and isinstance(answer[1], tuple)):
                return None
            values = iter(answer[1])
            for index, op in plan[group]:
                if op[0] == READ:
                    reads[index] = next(values, None)
        return reads

    @staticmethod
    def replies(plan: Plan, participants: list[int],
                applied: list[Any]) -> list[Any] | None:
        """The results of the key-value commands, one entry per micro-operation, from
        the participants' commits (``None``: a commit's results were not heard, as
        when the resolver applied it first)."""
        replies: list[Any] = [None] * sum(len(ops) for ops in plan.values())
        for group, answer in zip(participants, applied, strict=True):
            # ``[committed, results, claim]``; a commit applied before (by the
            # resolver, or another driver) past the store's table of results is
            # ``[committed, claim]``: not its results (until 2026-12-05 its claim's
            # items were taken for them).
            if not (answer is not None and len(answer) >= 3 and isinstance(answer[1], tuple)):
                return None
            results = iter(answer[1])
            for index, op in plan[group]:
                if op[0] == KV:
                    replies[index] = next(results, None)
        return replies

    def plan(self, request: TxnRequest) -> Plan | str:
        """The request's micro-operations by group (with their positions), or why not."""
        try:
            ops: Any = self.codec.decode_value(request.ops)
        except DecodeError:
            return "bad_ops"
        if not (isinstance(ops, tuple) and 1 <= len(ops) <= self.params.ops_max):
            return "bad_ops"
        plan: Plan = {}
        for index, op in enumerate(ops):
            if not (isinstance(op, tuple) and len(op) == 3 and isinstance(op[1], bytes)):
                return "bad_ops"
            plan.setdefault(self.slots.group_of(op[1]), []).append((index, list(op)))
        return plan

    def answer(self, request: TxnRequest, outcome: str, reason: str,
               reads: list[Any] | None = None) -> None:
        self.context.output(TxnResult(request.client, request.nonce, outcome, reason[:64],
                                      self.codec.encode_value(reads or [])))

    # -- leases: nothing stays locked -------------------------------------------

    async def resolver(self) -> None:
        """Tick, resolve and deliver, for every group this node leads."""
        while True:
            await self.context.sleep(self.params.resolve_every_us)
            for group, store in enumerate(self.stores):
                self.report(group, store)
                if not store.busy():
                    self.clock_seen[group] = (-1, 0)
                    continue
                # The leader's node acts at once and paces the clock; every other
                # node once a lease more has passed (its leader's node may have a
                # replica of another group stuck behind: the work still gets done),
                # and ticks too once the clock stood still (``clock_stalled``).
                slack = 0
                stalled = self.clock_stalled(group, store)
                if self.groups.replicas[group].ordering.leader_hint == self.context.id:
                    self.once(("tick", group), self.call(group, "tick"))
                else:
                    slack = store.params.lease_ticks
                    if stalled:
                        self.once(("tick", group), self.call(group, "tick"))
                for txn, coordinator in list(store.expired(slack))[: self.params.resolve_max]:
                    self.once(("resolve", group, txn), self.resolve(group, txn, coordinator))
                for txn, decision, missing in list(store.undelivered(slack))[
                        : self.params.resolve_max]:
                    self.once(("deliver", group, txn),
                              self.deliver(group, txn, decision, missing))

    def clock_stalled(self, group: int, store: TxnStore) -> bool:
        """Whether ``group``'s lease clock, busy, stood still here for
        ``clock_stalled_rounds`` resolver rounds: then this node ticks it too.

        Ticks come from the node that hosts the group's leader (as its replica
        sees it). If that node is down and the group is idle (nothing else to
        order), a BFT group's backups wait for nothing and never replace their
        primary; no lease runs out and a prepared transaction's locks stay
        (``txn-pbft:fronts=1`` seed 181: the primary of group 2 kept down, its
        only work a transaction whose driver died). A tick from any other node
        is a request its replica relays and times, so it also brings the view
        change (Raft: an election) that gives the group a leader again. In the
        normal case the leader's node ticks every round and nobody else does; a
        stalled clock costs at most one tick in flight per node and group
        (``once``), and a few extra ticks only shorten leases (attempts abort,
        nothing breaks). A node whose own replica lags sees a still clock while
        the group runs: its ticks are such extra ticks."""
        ticks, rounds = self.clock_seen[group]
        if store.ticks != ticks:
            self.clock_seen[group] = (store.ticks, 0)
            return False
        rounds += 1
        self.clock_seen[group] = (ticks, rounds)
        return rounds >= self.params.clock_stalled_rounds

    def once(self, key: tuple[Any, ...], call: Coroutine[Any, Any, Any]) -> None:
        """Run ``call`` unless the same one is still in flight (bounded)."""
        if key in self.in_flight or len(self.in_flight) >= (
                self.params.resolve_max * 2 + 1) * len(self.stores):
            call.close()
            return
        self.in_flight[key] = None

        async def run() -> None:
            try:
                await call
            finally:
                self.in_flight.pop(key, None)

        self.context.spawn(run(), "txn.resolve")

    async def resolve(self, group: int, txn: TxnId, coordinator: int) -> bool:
        """A prepared transaction's lease ran out in ``group`` (or ``group`` has not
        acknowledged a decision): ask the coordinator, and apply its certified
        answer there; tell the coordinator once applied. Whether it was applied."""
        certified = await self.call_certified(coordinator, "resolve", txn[0], txn[1], group)
        if certified is None or certified[0][0] == PENDING:
            return False
        answer, proof = certified
        finish = RESOLVED_BY.get(str(answer[0]))
        if finish is None:
            # The coordinator group refused the question (``[refused, why]``: a
            # lying driver's attempt it never began, a replayed or uncertified
            # call): nothing to apply; asked again at the next lease expiry.
            self.context.count("txn_resolve_refused")
            return False
        applied = await self.call_certified(group, finish, txn[0], txn[1], proof)
        if applied is None or finish == "discard" or applied[0][0] not in (
                COMMITTED, ABORTED, UNKNOWN):
            return False
        if self.certify and applied[1] is None:
            return False
        await self.call(coordinator, "ack", txn[0], txn[1], [group], [applied[1]])
        return True

    async def deliver(self, coordinator: int, txn: TxnId, decision: str,
                      missing: tuple[int, ...]) -> None:
        """Push a decision to the participants that did not acknowledge it (or,
        for a pending attempt past its lease, have it decided: abort). The
        decision travels certified: it is asked of the coordinator group."""
        if decision == PENDING:
            await self.call(coordinator, "resolve", txn[0], txn[1], -1)
            return
        for group in missing:
            await self.resolve(group, txn, coordinator)

    def report(self, group: int, store: TxnStore) -> None:
        now = (len(store.locks), len(store.prepared),
               sum(record.decision is None or len(record.acked) < len(record.participants)
                   for record in store.coordinated.values()))
        if now != self.reported[group]:
            self.reported[group] = now
            self.context.output(LockReport(group, *now))

    def status(self) -> dict[str, int]:
        """Read-only figures for ``INFO``, metrics and ``replicaio status``: per group,
        its leader as this node sees it, its term or view, its commit index (PBFT:
        executed), its locks, and whether its replica here is recovering (after a
        damaged disk: a Raft replica not yet re-admitted as a voter, a PBFT or
        MinBFT one withholding its votes); ``recovering``: how many are
        (``/healthz`` is unhealthy while any is)."""
        found = {"groups": len(self.stores), "txn_drivers": self.drivers,
                 "groups_led": 0, "recovering": 0}
        for group, replica in enumerate(self.groups.replicas):
            ordering = replica.ordering
            leader = ordering.leader_hint
            found[f"group_{group}_leader"] = leader
            found["groups_led"] += int(leader == self.context.id)
            observe = getattr(ordering, "observe", None)
            view = observe() if callable(observe) else None
            own_status = getattr(ordering, "status", None)
            figures = own_status() if view is None and callable(own_status) else {}
            for name in ("term", "commit_index", "applied_index"):
                number = getattr(view, name, figures.get(name))
                if type(number) is int:
                    found[f"group_{group}_{name}"] = number
            found[f"group_{group}_locks"] = len(self.stores[group].locks)
            recovering = getattr(view, "recovering", None)
            if recovering is None:
                recovering = figures.get("recovering", 0)
            found[f"group_{group}_recovering"] = int(bool(recovering))
            found["recovering"] += int(bool(recovering))
        return found


class TxnFactory:
    """Builds :class:`TxnNode` at every start: G groups of ``group_factory``'s SMR."""

    def __init__(self, name: str, slots: SlotMap, group_factory: SmrFactory,
                 params: TxnParams | None = None, *,
                 node_type: type[TxnNode] = TxnNode) -> None:
        self.name = name
        self.node_type = node_type
        self.resilience: Resilience = group_factory.resilience
        self.slots = slots.validate()
        self.group_factory = group_factory
        self.params = (params or TxnParams()).validate()

    def __call__(self, context: Context) -> TxnNode:
        return self.node_type(context, self)

    def with_node_type(self, node_type: type[TxnNode]) -> TxnFactory:
        """The same cluster, its nodes built as ``node_type`` (the simulator's
        adversary gives a Byzantine node a lying driver this way)."""
        return TxnFactory(self.name, self.slots, self.group_factory, self.params,
                          node_type=node_type)

    def footprint_max(self, config: ClusterConfig) -> dict[str, int]:
        """What a node may hold whatever clients and peers send (the simulator's
        bounded-memory check; :meth:`TxnNode.footprint` measures it).

        Per group (the largest over the node's groups): the group's SMR and
        ordering bounds, and its store's tables (``TxnStore.footprint_max``:
        ``prepared_max``, its locks at ``prepare_keys_max`` keys each,
        ``finished_max``, ``coordinated_max``; a key-value group's recorded
        commands, one entry per prepared transaction). Per node,
        summed over the G groups: what the node's core holds for them (contexts,
        tasks, timers, durable records, retransmissions), plus the transaction
        layer's own tasks and timers: ``drivers_max`` attempts, each waiting on
        at most one call per group and its attempt timer, the resolutions in
        flight, and the in-node sessions' calls."""
        groups = self.slots.groups
        per_group = self.group_factory.footprint_max(config)
        store = self.group_factory.state_machine()
        assert isinstance(store, TxnStore)
        params = self.params
        resolving = (params.resolve_max * 2 + 1) * groups
        calls = params.caller.callers_max * groups
        own_tasks = params.drivers_max * (groups + 2) + resolving + calls + 8
        bounds = {name: value for name, value in per_group.items()
                  if name not in NODE_WIDE}
        for name in NODE_WIDE:
            if name in per_group:
                bounds[name] = per_group[name] * groups
        bounds["tasks"] = bounds.get("tasks", 0) + own_tasks
        bounds["timers"] = bounds.get("timers", 0) + own_tasks
        bounds.update(store.footprint_max())
        bounds.update({
            "txn_drivers": params.drivers_max,
            "txn_in_flight": resolving,
            "txn_callers": params.caller.callers_max,
        })
        return bounds
