"""The bank invariant: transfers move money, never make or destroy it.

A bank history has accounts (keys) with integer balances, transfers (a
transaction whose ``add`` deltas sum to 0, usually ``-x`` on one account and
``x`` on another) and reads. The invariant, after Jepsen's bank test:

* ``wrong-total``: every committed transaction that reads *every* account sees
  balances summing to the bank's total (an absent account reads as 0);
* ``negative-balance``: no committed read sees a negative balance (when the
  store promises to refuse overdrafts).

A transaction whose ``add`` deltas do not sum to 0 is not a transfer: the
history is malformed (``HistoryError``). Reads of part of the accounts are
not constrained (they may see a transfer's one side and not the other only
if the store is broken, which the graph of a list-append run catches).
"""

from __future__ import annotations

from collections.abc import Sequence

from replicaio.check.history import OK, HistoryError
from replicaio.check.transactions.history import ADD, READ, Transaction
from replicaio.check.transactions.list_append import Finding


def bank_accounts(transactions: Sequence[Transaction]) -> list[str]:
    return sorted({key for t in transactions for kind, key, _ in t.ops if kind in (ADD, READ)})


def check_bank(
    transactions: Sequence[Transaction], total: int, *, negative_allowed: bool = False
) -> list[Finding]:
    """Findings of the bank invariant (empty: it holds)."""
    accounts = bank_accounts(transactions)
    findings: list[Finding] = []
    for transaction in transactions:
        deltas = [value for kind, _, value in transaction.ops if kind == ADD]
        if deltas and sum(deltas) != 0:
            raise HistoryError(f"T{transaction.index} adds {deltas}: not a transfer (sum != 0)",
                               index=transaction.index)
        if transaction.status != OK:
            continue
        balances: dict[str, int] = {}
        for kind, key, value in transaction.ops:
            if kind != READ:
                continue
            if isinstance(value, tuple):
                raise HistoryError(f"a bank read of {key!r} returned a list",
                                   index=transaction.index)
            balance = 0 if value is None else value
            balances.setdefault(key, balance)
            if balance < 0 and not negative_allowed:
                findings.append(Finding("negative-balance", (transaction.index,),
                                        f"T{transaction.index} read {key} = {balance}"))
        if len(balances) == len(accounts) and accounts:
            seen = sum(balances.values())
            if seen != total:
                shown = ", ".join(f"{key}={balances[key]}" for key in accounts)
                findings.append(Finding(
                    "wrong-total", (transaction.index,),
                    f"T{transaction.index} read every account ({shown}): total {seen}, "
                    f"not {total}"))
    return findings
