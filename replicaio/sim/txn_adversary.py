"""A Byzantine node of a transactional cluster: it drives transactions as a liar would.

The transaction protocol moves groups with other groups' answers
(``replicaio.services.txn``): the coordinator decides on the participants'
votes, the participants apply the coordinator's decision. A node that drives
an attempt carries those answers from group to group, so a Byzantine node's
most damaging move is not on the wire but *inside* the node: its in-node
client is vouched for by its node key and its groups order whatever it asks.
The behaviour ``txn_lying_driver`` (for ``txn-pbft`` and its variants) builds
the faulty node's core with :class:`LyingDriver` (``Strategy.core_factory``);
its replicas, its resolver and everything it sends stay honest, and every
other node drives correctly. For every attempt a client sends it, it:

* **goes on whatever ``begin`` answered** (a refusal included);
* **decides commit whatever the votes**: ``decide commit`` in the
  coordinator group with the certificates it collected, and, for a
  participant that refused, a forged one (its own signature of a prepared
  vote, twice: one node's word, never f+1);
* **commits undecided**: ``commit`` in every participant that prepared, with
  whatever decision certificate it got (an abort's, or none);
* **aborts decided-commit**: when the coordinator did decide commit, ``abort``
  in the first participant (with the commit's certificate);
* answers the client ``committed`` with the reads it saw (the harness takes a
  Byzantine node's answers as unknown: a client cannot trust one node).

Against groups that check no certificates (``txn-pbft-uncertified``, the code
before issue 12's fix) this breaks atomicity: a bank run loses its total.
Against certified groups every lie is refused and counted (``uncertified_*``)
and the leases resolve what it left prepared.

The behaviour ``txn_altering_driver`` (:class:`AlteringDriver`) changes what
its client asked instead, and drives the altered attempt by the protocol,
certificates and all, with the client's signature of the original request.
Against groups that prepare without checking that signature against the
operations (``txn-pbft-unsigned-requests``) the bank total breaks and appends
no client wrote are read; groups that check refuse every altered prepare
(``refused_altered``). The simulator draws each behaviour into a Byzantine
node's mix (the lying one always, the altering one one time in two); both
together drive an altered attempt as a liar.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any, Final

# The ordering protocols' behaviours register first, whoever imports this module
# first: the seed draws a node's extras in the registry's order, so a swarm and a
# test that imported in another order would draw other mixes for one seed.
import replicaio.sim.minbft_adversary
import replicaio.sim.pbft_adversary  # noqa: F401
from replicaio.core.context import Context
from replicaio.services.txn.protocol import SignedTxnRequest, TxnFactory, TxnNode, TxnRequest
from replicaio.services.txn.store import (
    ADD,
    APPEND,
    CLAIM,
    COMMIT,
    COMMITTED,
    PREPARED,
    VOTE,
    coordinator_of,
)
from replicaio.sim.adversary import Strategy, register_behaviour
from replicaio.smr.certified import attestation_bytes

TXN_BFT_FAMILY = ("txn-pbft", "txn-kv-pbft", "txn-pbft-uncertified", "txn-pbft-unsigned-requests",
                  "txn-pbft-replayable", "txn-minbft", "txn-kv-minbft",
                  "txn-minbft-group-unbound", "txn-kv-pbft-gateway-tryagain",
                  "txn-pbft-late-unknown")
REPLAY_AGE: Final = 4  # a replaying driver sends an attempt again this many attempts later
REPLAY_TIMES: Final = 4  # ... and again, as many times, each as many attempts later
REPLAY_KEPT: Final = 64  # signed attempts it keeps (bounded)


class LyingDriver(TxnNode):
    """A transaction driver that lies (see the module docstring); a mixin base
    for the cluster's own node type (:func:`lying`)."""

    async def transaction(self, request: TxnRequest,
                          signed: SignedTxnRequest | None = None) -> None:
        plan = self.plan(request)
        if isinstance(plan, str):
            self.answer(request, COMMITTED, "")
            return
        client, nonce = request.client, request.nonce
        participants = sorted(plan)
        coordinator = coordinator_of(client, nonce, tuple(participants))
        # Begins whatever the coordinator answers (a refusal: the liar goes on).
        await self.call(coordinator, "begin", client, nonce, participants,
                        *self.signed_proof(signed))
        votes = await self.prepare(request, plan, participants, coordinator, signed)
        prepared = [vote is not None and vote[0][0] == PREPARED for vote in votes]
        proofs = [vote[1] if vote is not None and vote[1] is not None
                  else self.forged_vote(group, client, nonce, coordinator, participants)
                  for group, vote in zip(participants, votes, strict=True)]
        decided = await self.call_certified(coordinator, "decide", client, nonce, COMMIT,
                                            proofs)  # whatever the votes
        committed = decided is not None and decided[0][0] == COMMITTED
        proof = None if decided is None else decided[1]
        for index, group in enumerate(participants):
            if prepared[index]:  # commit undecided; abort one part of a decided commit
                finish = "abort" if committed and index == 0 else "commit"
                await self.call(group, finish, client, nonce, proof)
        if all(prepared):
            try:
                reads = self.reads(plan, participants,
                                   [vote[0] for vote in votes if vote is not None])
            except StopIteration:
                # A vote with fewer values than the plan reads: an attempt the
                # group prepared before under this id (the liar went on after a
                # refused begin; txn-minbft seed 51). It answers without reads.
                reads = []
            self.answer(request, COMMITTED, "", reads)
        else:
            self.answer(request, COMMITTED, "")

    def forged_vote(self, group: int, client: int, nonce: int, coordinator: int,
                    participants: list[int]) -> Any:
        """A certificate of a prepared vote that ``group`` never gave: this node's
        own signature, twice (all it can sign)."""
        claim = self.codec.encode_value([CLAIM, VOTE, client, nonce, coordinator, participants])
        signature = self.context.sign(attestation_bytes(group, claim))
        return [group, claim, [[self.context.id, signature], [self.context.id, signature]]]


class AlteringDriver(TxnNode):
    """A transaction driver that changes what its client asked, and otherwise drives
    by the protocol (certificates and all): every participant is asked to prepare
    the altered operations, with the client's signature of the *original* request
    (the only one it has). On an attempt of several groups with an odd nonce it
    drops the last group's operations (and the group: a transfer half done);
    otherwise every ``add`` of a positive amount adds one more (money from
    nowhere), and every ``append`` appends another element (one no client wrote)."""

    async def transaction(self, request: TxnRequest,
                          signed: SignedTxnRequest | None = None) -> None:
        await super().transaction(self.altered(request), signed)

    def altered(self, request: TxnRequest) -> TxnRequest:
        plan = self.plan(request)
        if isinstance(plan, str):
            return request
        ordered = sorted((entry for entries in plan.values() for entry in entries),
                         key=lambda entry: entry[0])
        ops: list[list[Any]] = [op for _, op in ordered]
        if len(plan) > 1 and request.nonce % 2:
            dropped = max(plan)
            ops = [op for op in ops if self.slots.group_of(op[1]) != dropped]
        else:
            for op in ops:
                if op[0] == ADD and isinstance(op[2], int) and op[2] > 0:
                    op[2] += 1
                elif op[0] == APPEND and isinstance(op[2], int):
                    op[2] += 1 << 40
        self.context.count("txn_requests_altered")
        return TxnRequest(request.client, request.nonce, self.codec.encode_value(ops))


class ReplayingDriver(TxnNode):
    """A transaction driver that drives every attempt honestly, keeps the signed
    ones that committed (at most ``REPLAY_KEPT``), and drives each again ``REPLAY_AGE`` attempts
    later, and again, up to ``REPLAY_TIMES`` times: by then the groups' bounded
    tables (``finished_max``, ``coordinated_max``) may have forgotten it, and
    only their nonce windows (ADR 0030) tell the copy from a new attempt. Its
    answers to a copy carry an old nonce: clients ignore them."""

    def __init__(self, context: Context, factory: TxnFactory) -> None:
        super().__init__(context, factory)
        self.kept: deque[tuple[TxnRequest, SignedTxnRequest, int]] = deque()
        self.committed: dict[tuple[int, int], None] = {}  # the last few it saw commit

    def answer(self, request: TxnRequest, outcome: str, reason: str,
               reads: list[Any] | None = None) -> None:
        if outcome == COMMITTED:
            self.committed[(request.client, request.nonce)] = None
            while len(self.committed) > REPLAY_KEPT:
                del self.committed[next(iter(self.committed))]
        super().answer(request, outcome, reason, reads)

    async def transaction(self, request: TxnRequest,
                          signed: SignedTxnRequest | None = None) -> None:
        await super().transaction(request, signed)
        if signed is None or (request.client, request.nonce) not in self.committed:
            return
        kept = self.kept
        kept.append((request, signed, 1))
        if len(kept) > REPLAY_AGE:  # one copy per attempt it is sent
            old, old_signed, times = kept.popleft()
            self.context.count("txn_requests_replayed")
            await super().transaction(old, old_signed)
            if times < REPLAY_TIMES and len(kept) < REPLAY_KEPT:
                kept.append((old, old_signed, times + 1))


_LYING: dict[tuple[type[TxnNode], type[TxnNode]], type[TxnNode]] = {}


def lying(node_type: type[TxnNode], driver: type[TxnNode] = LyingDriver) -> type[TxnNode]:
    """``node_type`` (the cluster's own: certified or not) with ``driver``'s
    transactions (a lying or an altering driver)."""
    if issubclass(node_type, driver):
        return node_type
    found = _LYING.get((node_type, driver))
    if found is None:
        found = _LYING[(node_type, driver)] = type(
            f"{driver.__name__.removesuffix('Driver')}{node_type.__name__}",
            (driver, node_type), {})
    return found


class LyingDriverStrategy(Strategy):
    """Builds the faulty node's core with a lying driver; its messages pass as they are."""

    def __init__(self, node: int, n: int, rng: random.Random) -> None:
        super().__init__(node, n, rng)

    def core_factory(self, factory: Any) -> Any:
        if isinstance(factory, TxnFactory):
            return factory.with_node_type(lying(factory.node_type))
        return factory


class AlteringDriverStrategy(Strategy):
    """Builds the faulty node's core with an altering driver; its messages pass as
    they are."""

    def core_factory(self, factory: Any) -> Any:
        if isinstance(factory, TxnFactory):
            return factory.with_node_type(lying(factory.node_type, AlteringDriver))
        return factory


class ReplayingDriverStrategy(Strategy):
    """Builds the faulty node's core with a replaying driver; its messages pass as
    they are."""

    def core_factory(self, factory: Any) -> Any:
        if isinstance(factory, TxnFactory):
            return factory.with_node_type(lying(factory.node_type, ReplayingDriver))
        return factory


register_behaviour(
    "txn_altering_driver", AlteringDriverStrategy,
    "drives transactions with operations its client never asked for (a transfer's credit "
    "raised, an append's element changed, one group's operations dropped), proving them "
    "with the client's signature of the original (transactional clusters over BFT groups)",
    protocols=TXN_BFT_FAMILY, weight=0.5)

register_behaviour(
    "txn_lying_driver", LyingDriverStrategy,
    "drives transactions as a liar: decides commit whatever the votes, commits undecided, "
    "aborts decided-commit (transactional clusters over BFT groups)",
    protocols=TXN_BFT_FAMILY, weight=1.0)

register_behaviour(
    "txn_replaying_driver", ReplayingDriverStrategy,
    "drives every signed attempt it is sent again, long after (once the groups may have "
    "forgotten it): only per-client nonce windows refuse the copy (transactional clusters "
    "over BFT groups)",
    protocols=TXN_BFT_FAMILY)  # forced only: the drawn mixes stay as pinned
