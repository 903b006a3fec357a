"""A Python client of a transactional cluster: ``async with client.transaction() as t:``.

A :class:`TxnClient` connects to the nodes' client ports (the ``stream``
client service: requests in as frames, every output out) and runs
transactions across groups (``docs/transactions.md``)::

    client = await TxnClient.connect([Address("127.0.0.1", 7004), ...])
    async with client.transaction() as t:
        t.add("a", -5)
        t.add("b", 5)
        balance = t.read("a")        # a handle: its value once committed
    print(t.value(balance))
    await client.close()

Leaving the block sends the transaction (one attempt, a fresh nonce) to a
node and waits for its outcome: committed (``t.value`` gives the reads),
:class:`TransactionAborted` (refused: a key was locked, a ``check`` failed,
an overdraft; nothing applied: retry), or :class:`TransactionUnknown` (no
answer within ``timeout_s``, or the node gave up: it may have committed).
Leaving by an exception sends nothing. ``client.run(body, attempts=...)``
retries aborted attempts with a fresh id after a random pause.

**Byzantine fault tolerant clusters** (``txn-pbft``). Every attempt is signed
with the client's own Ed25519 key (its client id is the key's,
``smr.auth.client_id_of``; ``signing="keyed"`` for clusters whose nodes sign
with keyed hashes): every participant group prepares only the operations the
client signed (``docs/transactions.md``). A node's answer alone proves
nothing, so ``TxnClient.connect(addresses, replies=f + 1)`` sends each
attempt to *every* node (each drives it; the groups' records make the
drivers converge on one decision) and accepts an outcome only once
``replies`` nodes gave the same one: ``committed`` with the same reads, or
``aborted`` (an abort for ``busy``, which a node may answer without any
decision, never counts). Once every node answered without a match, the nodes
that answered nothing definite (a driver that gave up, a connection lost) are
sent the *same* signed attempt again, at most ``REASKS_MAX`` times, as the
Redis gateway does (``services.txn.outcomes.OutcomeVotes``: the groups' nonce
windows let it run at most once; a node driving it again finds it decided at
``begin`` and answers the outcome, the reads included, from the
participants' commits). Short of a match by ``timeout_s``, or with no re-ask
left: :class:`TransactionUnknown` (it may have committed: never send the
operations again as a new attempt on that alone).

Bounds: ``ops_max`` micro-operations per transaction; outputs are read as
they come and only those for this client are kept (one per node per attempt).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final

from replicaio.assembly import raft_leader_of
from replicaio.core.codec import Codec, DecodeError
from replicaio.core.errors import UsageError
from replicaio.core.stream import GroupOutput
from replicaio.runtime.config import Address
from replicaio.runtime.framing import LENGTH, LENGTH_BYTES, frame_header
from replicaio.services.txn.outcomes import REASKS_MAX, OutcomeVotes, match_outcome
from replicaio.services.txn.protocol import (
    LockReport,
    SignedTxnRequest,
    TxnRequest,
    TxnResult,
)
from replicaio.services.txn.store import request_bytes
from replicaio.smr.auth import (
    ED25519,
    KEYED,
    ClientSigner,
    Ed25519ClientSigner,
    KeyedClientSigner,
)

OPS_MAX: Final = 64
# Before an attempt is asked again of the nodes without a definite answer.
REASK_PAUSE_S: Final = 0.05
FRAME_BYTES_MAX: Final = 1 << 24


def sign_attempt(codec: Codec, request: TxnRequest, signer: ClientSigner) -> SignedTxnRequest:
    """``request`` signed by its client ``signer`` (ADR 0029: Ed25519, its client
    id the key's, or the keyed-hash scheme of clusters whose nodes use one)."""
    if request.client != signer.client:
        raise UsageError("an attempt is signed by its own client")
    data = request_bytes(codec, request.client, request.nonce, request.ops)
    if isinstance(signer, Ed25519ClientSigner):
        return SignedTxnRequest(request, signer.public, signer.private.sign(data))
    if isinstance(signer, KeyedClientSigner):
        return SignedTxnRequest(request, b"", hmac.digest(signer.key, data, hashlib.sha256))
    raise UsageError(f"attempts are signed with {ED25519} or {KEYED} client keys")


@dataclass(slots=True)
class Attempt:
    """The answers heard for one attempt, one per node, until one outcome has enough
    (``votes``: with ``replies`` > 1, the nodes asked and the re-asks left)."""

    future: asyncio.Future[TxnResult]
    sent: int = 0  # nodes the attempt went to, once it went to all it could
    answers: dict[int, TxnResult] = field(default_factory=dict)
    votes: OutcomeVotes | None = None
    # Set once every node asked answered without a match: time to re-ask.
    round_over: asyncio.Event = field(default_factory=asyncio.Event)


class TransactionAborted(Exception):
    """The attempt was refused and applied nothing (``reason``); it may be retried."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"transaction aborted: {reason}")
        self.reason = reason


class TransactionUnknown(Exception):
    """No outcome known: the attempt may or may not have committed."""


class Transaction:
    """The micro-operations of one attempt, then its outcome."""

    def __init__(self, client: TxnClient) -> None:
        self.client = client
        self.ops: list[list[Any]] = []
        self.reads: list[Any] | None = None

    def _add(self, kind: str, key: str | bytes, argument: Any) -> int:
        if len(self.ops) >= OPS_MAX:
            raise UsageError(f"at most {OPS_MAX} operations in one transaction")
        name = key.encode() if isinstance(key, str) else key
        self.ops.append([kind, name, argument])
        return len(self.ops) - 1

    def read(self, key: str | bytes) -> int:
        """Read ``key`` (under its lock); the value comes with :meth:`value`."""
        return self._add("r", key, None)

    def append(self, key: str | bytes, element: int) -> None:
        self._add("append", key, element)

    def add(self, key: str | bytes, delta: int) -> None:
        self._add("add", key, delta)

    def check(self, key: str | bytes, version: int) -> None:
        """Commit only if ``key`` still has ``version`` (an optimistic read)."""
        self._add("check", key, version)

    def value(self, handle: int) -> Any:
        if self.reads is None:
            raise UsageError("the transaction has not committed")
        return self.reads[handle]

    async def __aenter__(self) -> Transaction:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        if kind is None and self.ops:
            self.reads = await self.client.commit(self.ops)


class TxnClient:
    """Connections to a cluster's nodes and the transactions sent over them."""

    def __init__(self, addresses: list[Address], *, timeout_s: float = 10.0,
                 replies: int = 1, signing: str = ED25519, reasks: int = REASKS_MAX) -> None:
        if not addresses:
            raise UsageError("give at least one node address")
        if not 1 <= replies <= len(addresses):
            raise UsageError(f"replies must be in 1..{len(addresses)} (the nodes given)")
        if signing not in (ED25519, KEYED):
            raise UsageError(f"signing is {ED25519} or {KEYED}, not {signing!r}")
        self.addresses = addresses
        self.timeout_s = timeout_s
        self.replies = replies
        # With ``replies`` > 1: times an attempt without a match is asked again of
        # the nodes without a definite answer (0: the rule before 2026-12-06).
        self.reasks = reasks
        self.reasked = 0  # re-asks made, over every attempt
        self.codec = Codec()
        # Every attempt is signed (groups of a BFT cluster check it; others ignore it).
        self.signing = signing
        self.signer: ClientSigner = (
            Ed25519ClientSigner(self.codec, os.urandom(32)) if signing == ED25519
            else KeyedClientSigner(self.codec, secrets.randbelow(1 << 48)))
        self.client_id = self.signer.client
        self.nonce = 0
        self.waiting: dict[int, Attempt] = {}
        # Per node, the answers heard that differed from the outcome accepted
        # (``replies`` > 1): a lying node, or an honest one that saw less.
        self.outvoted: Counter[int] = Counter()
        self.streams: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        self.readers: dict[int, asyncio.Task[None]] = {}
        self.next_node = secrets.randbelow(len(addresses))
        # What the nodes stream besides results: each group's leader as last
        # announced ((term, node)), and each node's lock report per group.
        self.leaders: dict[int, tuple[int, int]] = {}
        self.reports: dict[tuple[int, int], LockReport] = {}

    @classmethod
    async def connect(cls, addresses: list[Address], *, timeout_s: float = 10.0,
                      replies: int = 1, signing: str = ED25519,
                      reasks: int = REASKS_MAX) -> TxnClient:
        """A client of the nodes at ``addresses``; ``replies`` > 1 (f + 1 for a BFT
        cluster): every attempt goes to every node, an outcome needs that many
        matching answers, and the undecided are asked again up to ``reasks``
        times (see the module docstring)."""
        return cls(addresses, timeout_s=timeout_s, replies=replies, signing=signing,
                   reasks=reasks)

    def transaction(self) -> Transaction:
        return Transaction(self)

    async def run(self, body: Callable[[Transaction], Awaitable[None] | None], *,
                  attempts: int = 20) -> Transaction:
        """Run ``body(t)`` in a transaction until it commits (aborts are retried)."""
        reason = ""
        for attempt in range(attempts):
            transaction = self.transaction()
            outcome = body(transaction)
            if outcome is not None:
                await outcome
            try:
                async with transaction:
                    pass
                return transaction
            except TransactionAborted as error:
                reason = error.reason
                await asyncio.sleep(0.005 * (1 + secrets.randbelow(4 << min(attempt, 5))))
        raise TransactionAborted(f"{reason} (still, after {attempts} attempts)")

    async def stream(self, node: int) -> asyncio.StreamWriter:
        if node not in self.streams:
            address = self.addresses[node]
            reader, writer = await asyncio.open_connection(address.host, address.port)
            self.streams[node] = (reader, writer)
            self.readers[node] = asyncio.get_running_loop().create_task(self.read_loop(node))
        return self.streams[node][1]

    async def read_loop(self, node: int) -> None:
        reader, _ = self.streams[node]
        try:
            while True:
                header = await reader.readexactly(LENGTH_BYTES)
                (length,) = LENGTH.unpack(header)
                if length > FRAME_BYTES_MAX:
                    break
                body = await reader.readexactly(length)
                try:
                    message = self.codec.decode(body)
                except DecodeError:
                    continue
                self.on_message(node, message)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.streams.pop(node, None)
            for attempt in list(self.waiting.values()):  # nothing more comes from it
                if attempt.votes is not None and not attempt.future.done():
                    self.hear(attempt, node, None)

    def on_message(self, node: int, message: Any) -> None:
        if type(message) is TxnResult and message.client == self.client_id:
            attempt = self.waiting.get(message.nonce)
            if attempt is not None and not attempt.future.done():
                if attempt.votes is not None:
                    self.hear(attempt, node, message)
                    return
                attempt.answers.setdefault(node, message)  # a node's first word stands
                outcome = self.matched(attempt)
                if outcome is not None:
                    attempt.future.set_result(outcome)
        elif type(message) is LockReport:
            self.reports[(node, message.group)] = message
        elif type(message) is GroupOutput:
            try:
                leader = raft_leader_of(self.codec.decode(message.body))
            except DecodeError:
                return
            if leader is not None and leader > self.leaders.get(message.group, (-1, -1)):
                self.leaders[message.group] = leader

    async def watch(self) -> None:
        """Connect to every node now (to hear leaders and lock reports from all)."""
        for node in range(len(self.addresses)):
            with contextlib.suppress(OSError):
                await self.stream(node)

    def held(self) -> list[LockReport]:
        """The lock reports that still show something held."""
        return [report for report in self.reports.values()
                if report.locks or report.prepared or report.open_records]

    def hear(self, attempt: Attempt, node: int, answer: TxnResult | None) -> None:
        """``node``'s answer (``None``: none will come) to an attempt asked of
        several nodes: its outcome once ``replies`` match; the round's end once
        every node asked answered without a match (:meth:`commit` re-asks)."""
        votes = attempt.votes
        assert votes is not None
        votes.heard(node, answer)
        if answer is not None:
            attempt.answers[node] = votes.answers[node]
        outcome = votes.matched()
        if outcome is not None:
            attempt.future.set_result(outcome)
        elif votes.complete():
            attempt.round_over.set()

    def matched(self, attempt: Attempt) -> TxnResult | None:
        """The outcome ``replies`` nodes agree on (committed: with the same reads;
        aborted: any reason but an undecided one), or, once every node asked
        answered without such a match, ``unknown``; else ``None`` (wait)."""
        answers = list(attempt.answers.values())
        if not answers:
            return None
        complete = bool(attempt.sent) and len(answers) >= attempt.sent
        return match_outcome(answers, self.replies, complete, self.client_id,
                             answers[0].nonce)

    def signed(self, request: TxnRequest) -> SignedTxnRequest:
        """``request`` with this client's signature (``smr.auth``'s schemes)."""
        return sign_attempt(self.codec, request, self.signer)

    async def commit(self, ops: list[list[Any]]) -> list[Any]:
        """One attempt: its reads if committed; raises otherwise (see the module docstring)."""
        self.nonce += 1
        nonce = self.nonce
        request = TxnRequest(self.client_id, nonce, self.codec.encode_value(ops))
        body = self.codec.encode_value(self.codec.encode(self.signed(request)))
        attempt = Attempt(asyncio.get_running_loop().create_future())
        self.waiting[nonce] = attempt
        if self.replies == 1:
            nodes = [self.next_node]
            self.next_node = (self.next_node + 1) % len(self.addresses)
        else:
            nodes = list(range(len(self.addresses)))
            attempt.votes = OutcomeVotes(self.client_id, nonce, self.replies, nodes,
                                         self.reasks)
        try:
            if attempt.votes is not None:
                result = await self.collect(attempt, body)
            else:
                result = await self.ask_one(attempt, nodes, body)
        finally:
            del self.waiting[nonce]
        if self.replies > 1 and result.outcome != "unknown":
            for node, answer in attempt.answers.items():
                if (answer.outcome, answer.reads) != (result.outcome, result.reads) and (
                        answer.outcome != "aborted" or result.outcome != "aborted"):
                    self.outvoted[node] += 1
        if result.outcome == "committed":
            reads: Any = self.codec.decode_value(result.reads)
            return list(reads)
        if result.outcome == "aborted":
            raise TransactionAborted(result.reason)
        raise TransactionUnknown(result.reason)

    async def send(self, node: int, body: bytes) -> str | None:
        """Send ``body`` to ``node``; why it could not be (``None``: sent)."""
        try:
            writer = await self.stream(node)
            writer.write(frame_header(len(body)) + body)
            await writer.drain()
        except OSError as error:
            return f"node {node}: {error!r}"
        return None

    async def ask_one(self, attempt: Attempt, nodes: list[int], body: bytes) -> TxnResult:
        """``replies`` = 1: the attempt to one node, its answer."""
        failed = [why for why in [await self.send(node, body) for node in nodes] if why]
        attempt.sent = len(nodes) - len(failed)
        if not attempt.sent:
            raise TransactionUnknown("; ".join(failed))
        # (An answer heard before all were sent may complete the match now.)
        settled = self.matched(attempt)
        if settled is not None and not attempt.future.done():
            attempt.future.set_result(settled)
        try:
            return await asyncio.wait_for(attempt.future, self.timeout_s)
        except TimeoutError as error:
            heard = sorted(attempt.answers)
            raise TransactionUnknown(
                f"nodes {nodes} (answers from {heard}): {error!r}") from None

    async def collect(self, attempt: Attempt, body: bytes) -> TxnResult:
        """``replies`` > 1: the attempt to every node until ``replies`` give the
        same definite outcome. A round ends once every node asked answered, or
        after its share of ``timeout_s`` (the silent ones then count as
        undecided); without a match, the same signed attempt goes again to the
        nodes without a definite answer (at most ``reasks`` times); once none is
        left, a match is awaited until ``timeout_s``, then ``unknown``."""
        votes = attempt.votes
        assert votes is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        round_s = self.timeout_s / (votes.reasks_left + 1)
        asked = list(votes.asked)
        while True:
            attempt.round_over.clear()
            for node in asked:
                if await self.send(node, body) is not None and not attempt.future.done():
                    self.hear(attempt, node, None)  # (the round may end here)
            await self.until(attempt, min(loop.time() + round_s, deadline))
            if attempt.future.done():
                return attempt.future.result()
            if not votes.reasks_left or loop.time() >= deadline:
                break
            for node in votes.silent():  # no answer this round: undecided
                votes.heard(node, None)
            asked = votes.reask()
            if not asked:  # every answer definite, and no match: nobody to ask again
                break
            self.reasked += 1
            await asyncio.sleep(min(REASK_PAUSE_S, max(0.0, deadline - loop.time())))
        if not votes.complete():  # the silent ones may still answer: until the deadline
            await self.until(attempt, deadline)
            if attempt.future.done():
                return attempt.future.result()
        if votes.complete():
            return votes.unknown()
        heard = sorted(node for node in votes.asked if node not in votes.silent())
        raise TransactionUnknown(f"no {self.replies} matching answers in {self.timeout_s} s "
                                 f"(answers from {heard})")

    @staticmethod
    async def until(attempt: Attempt, when: float) -> None:
        """Wait for ``attempt``'s outcome or its round's end, until the loop time
        ``when``."""
        waits: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(asyncio.shield(attempt.future)),
            asyncio.ensure_future(attempt.round_over.wait())]
        timeout = max(0.0, when - asyncio.get_running_loop().time())
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()

    async def close(self) -> None:
        for _, writer in list(self.streams.values()):
            writer.close()
        for task in self.readers.values():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
