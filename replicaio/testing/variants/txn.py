"""Deliberately broken variants of the transaction protocol, to prove the checkers bite.

``txn-unlock-early``: a participant releases its locks as soon as it has
prepared ("unlock before commit"), instead of at commit or abort; the effect
recorded at prepare is still applied at commit. Two transactions on one key
then prepare against the same state and the second commit overwrites the
first: lost appends and write skew, which the list-append checker names
(``incompatible-order``, ``G-single``, ``G2``) and the bank total exposes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from replicaio.services.txn.protocol import TxnNode
from replicaio.services.txn.store import PREPARED, TxnStore


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


@dataclass(frozen=True, slots=True)
class TxnVariant:
    summary: str
    node_type: type[TxnNode] = TxnNode
    store_type: type[TxnStore] = TxnStore


TXN_VARIANTS: dict[str, TxnVariant] = {
    "txn-unlock-early": TxnVariant(
        "a participant unlocks at prepare, before the commit", store_type=UnlockEarlyStore),
}
