"""Deliberately broken variants of the transaction protocol, to prove the checkers bite.

``txn-unlock-early``: a participant releases its locks as soon as it has
prepared ("unlock before commit"), instead of at commit or abort; the effect
recorded at prepare is still applied at commit. Two transactions on one key
then prepare against the same state and the second commit overwrites the
first: lost appends and write skew, which the list-append checker names
(``incompatible-order``, ``G-single``, ``G2``) and the bank total exposes.

``txn-pbft-byzantine-driver``: PBFT groups whose nodes all drive attempts as a
Byzantine node may today (the hole ``docs/transactions.md`` "Not yet"
describes): whatever the participants vote, the driver orders ``decide
commit`` in the coordinator group, ``commit`` in every participant that
prepared and ``abort`` in those that refused, and tells the client
``aborted`` when one refused. Every group orders and executes exactly what it
is sent (its PBFT ordering is intact; the groups check no certificate), so
half of a refused transaction commits: the bank total changes and an
aborted attempt's appends are read (``G1a``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from replicaio.services.txn.protocol import TxnNode, TxnRequest
from replicaio.services.txn.store import ABORTED, COMMIT, PENDING, PREPARED, TxnStore


class UnlockEarlyStore(TxnStore):
    """Releases a transaction's locks right after preparing it."""

    def on_prepare(self, client: int, nonce: int, coordinator: int, ops: Any) -> list[Any]:
        answer = super().on_prepare(client, nonce, coordinator, ops)
        txn = (client, nonce)
        record = self.prepared.get(txn)
        if answer[0] == PREPARED and record is not None:
            self.release(txn, record)
        return answer

    def on_commit(self, client: int, nonce: int) -> list[Any]:
        record = self.prepared.get((client, nonce))
        if record is not None:  # take the locks back just to pass the effect check
            for key in record.keys:
                self.locks[key] = (client, nonce)
        return super().on_commit(client, nonce)


class ByzantineDriverNode(TxnNode):
    """Drives every attempt as a Byzantine node may: decides commit whatever the votes."""

    async def transaction(self, request: TxnRequest) -> None:
        plan = self.plan(request)
        if isinstance(plan, str):
            self.answer(request, ABORTED, plan)
            return
        client, nonce = request.client, request.nonce
        participants = sorted(plan)
        coordinator = participants[(client + nonce) % len(participants)]
        begun = await self.call(coordinator, "begin", client, nonce, participants)
        if begun is None or begun[0] != PENDING:
            self.answer(request, *self.not_begun(begun))
            return
        votes = await self.together(*(
            self.call(group, "prepare", client, nonce, coordinator,
                      [op for _, op in plan[group]])
            for group in participants))
        prepared = [vote is not None and vote[0] == PREPARED for vote in votes]
        await self.call(coordinator, "decide", client, nonce, COMMIT)  # the lie
        await self.together(*(self.call(group, "commit" if ok else "abort", client, nonce)
                              for group, ok in zip(participants, prepared, strict=True)))
        if all(prepared):
            self.answer(request, "committed", "", self.reads(plan, participants, votes))
        else:
            self.answer(request, ABORTED, "refused")
        await self.call(coordinator, "ack", client, nonce, participants)


@dataclass(frozen=True, slots=True)
class TxnVariant:
    summary: str
    node_type: type[TxnNode] = TxnNode
    store_type: type[TxnStore] = TxnStore
    ordering: str = "raft"


TXN_VARIANTS: dict[str, TxnVariant] = {
    "txn-unlock-early": TxnVariant(
        "a participant unlocks at prepare, before the commit", store_type=UnlockEarlyStore),
    "txn-pbft-byzantine-driver": TxnVariant(
        "PBFT groups, every driver decides commit whatever the votes (a Byzantine driver: "
        "votes and decisions carry no certificate yet)",
        node_type=ByzantineDriverNode, ordering="pbft"),
}
