"""Checking transaction histories: strict serializability and the bank invariant.

Modules: ``history`` (the record, its JSON-lines form, a recorder), ``graph``
(the dependency graph and its named cycles), ``list_append`` (versions from
reads, non-cycle anomalies, edges), ``bank`` (the bank invariant).

:func:`check_transactions` judges a history of either workload:

* **list-append** (``append``/``r`` of lists): strict serializability, after
  Elle (Kingsbury & Alvaro, VLDB 2020). Version orders are recovered from the
  reads, the dependency graph gets ``ww``/``wr``/``rw`` edges and ``rt``
  (real-time) edges, and every strongly connected component is reported as
  its most telling named cycle (``G0``, ``G1c``, ``G-single``, ``G2``, or with
  ``-realtime``), next to the anomalies found without cycles (``G1a``,
  ``G1b``, ``incompatible-order``, ``garbage-read``, ``duplicate-elements``,
  ``internal``). Each anomaly names its transactions and the evidence of
  every edge.
* **bank** (``add``/``r`` of integers, with ``total``): the total is
  constant, as every read of all accounts sees it; no negative balance.

Guarantees: for list-append the verdict is exact for what the reads reveal:
*valid* means the observed versions and the committed transactions have a
strictly serializable order; an anomaly is always real (its cycle is in the
graph). Appends that nobody read constrain nothing (Elle's limit too).
Deterministic: no clock, no randomness, sorted traversal.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from replicaio.check.history import HistoryError
from replicaio.check.transactions.bank import bank_accounts, check_bank
from replicaio.check.transactions.graph import EDGE_KINDS, RT, Cycle, find_cycles, real_time_edges
from replicaio.check.transactions.history import (
    ADD,
    APPEND,
    READ,
    Transaction,
    TransactionRecorder,
    dump_transactions,
    load_transactions,
    validate_clients,
)
from replicaio.check.transactions.list_append import Finding, analyse_list_append

LIST_APPEND = "list-append"
BANK = "bank"
EXPLAINED_ANOMALIES_MAX = 8  # anomalies described in full by ``describe``

EXIT_VALID = 0
EXIT_ANOMALIES = 1
EXIT_INVALID_HISTORY = 2


@dataclass(frozen=True, slots=True)
class Anomaly:
    """A named anomaly: its transactions and, line by line, the evidence."""

    name: str
    transactions: tuple[int, ...]
    evidence: tuple[str, ...]

    def describe(self, history: Sequence[Transaction]) -> str:
        lines = [f"{self.name}: " + " -> ".join(f"T{index}" for index in self.transactions)]
        lines += [f"  {line}" for line in self.evidence]
        by_index = {t.index: t for t in history}
        lines += [f"    {by_index[index].describe()}" for index in dict.fromkeys(self.transactions)
                  if index in by_index]
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class TransactionCheckResult:
    """The verdict: ``valid`` iff no anomaly; ``edges`` counts the graph's edges by kind."""

    workload: str
    valid: bool
    anomalies: tuple[Anomaly, ...]
    transactions: int
    committed: int
    edges: dict[str, int]
    history: tuple[Transaction, ...]

    def names(self) -> list[str]:
        return sorted({anomaly.name for anomaly in self.anomalies})

    def describe(self) -> str:
        edges = ", ".join(f"{kind} {count}" for kind, count in self.edges.items())
        head = (f"{self.workload}: {self.transactions} transactions, {self.committed} committed"
                + (f"; edges {edges}" if edges else ""))
        if self.valid:
            verdict = ("strictly serializable" if self.workload == LIST_APPEND
                       else "bank invariant holds")
            return f"VALID ({verdict}): {head}"
        lines = [f"INVALID: {len(self.anomalies)} anomalies ({', '.join(self.names())}); {head}"]
        for anomaly in self.anomalies[:EXPLAINED_ANOMALIES_MAX]:
            lines.append(anomaly.describe(self.history))
        if len(self.anomalies) > EXPLAINED_ANOMALIES_MAX:
            lines.append(f"... and {len(self.anomalies) - EXPLAINED_ANOMALIES_MAX} more")
        return "\n".join(lines)


def _from_finding(finding: Finding) -> Anomaly:
    return Anomaly(finding.name, finding.transactions, (finding.why,))


def _from_cycle(cycle: Cycle) -> Anomaly:
    members = (*(step.source for step in cycle.steps), cycle.steps[0].source)
    return Anomaly(cycle.name, members,
                   tuple(f"T{s.source} -{s.kind}-> T{s.target}: {s.why}" for s in cycle.steps))


def workload_of(history: Sequence[Transaction]) -> str:
    kinds = {kind for t in history for kind, _, _ in t.ops}
    if ADD in kinds and APPEND in kinds:
        raise HistoryError("a history is list-append (append) or bank (add), not both")
    if ADD in kinds:
        return BANK
    for t in history:
        for kind, _, value in t.ops:
            if kind == READ and isinstance(value, int):
                return BANK
    return LIST_APPEND


def check_transactions(
    history: Sequence[Transaction], *, bank_total: int | None = None, strict: bool = True,
    negative_allowed: bool = False,
) -> TransactionCheckResult:
    """Judge ``history`` (see the module docstring). A bank history needs
    ``bank_total``; ``strict=False`` leaves out real-time edges (serializability);
    ``negative_allowed`` takes negative balances (a store whose transfers may
    overdraw: Redis's ``INCRBY``) and still checks every total."""
    validate_clients(history)
    workload = workload_of(history)
    if workload == BANK:
        if bank_total is None:
            raise HistoryError("a bank history is checked against its total (bank_total)")
        findings = check_bank(history, bank_total, negative_allowed=negative_allowed)
        committed = sum(t.status == "ok" for t in history)
        anomalies = tuple(_from_finding(f) for f in findings)
        return TransactionCheckResult(BANK, not anomalies, anomalies, len(history), committed,
                                      {}, tuple(history))
    analysis = analyse_list_append(history)
    if strict:
        real_time_edges(analysis.graph, [(t.index, t.call, t.return_) for t in history
                                         if t.index in analysis.committed])
    anomalies = tuple([_from_finding(f) for f in analysis.findings]
                      + [_from_cycle(c) for c in find_cycles(analysis.graph)])
    edges = {kind: analysis.graph.count(kind) for kind in EDGE_KINDS
             if strict or kind != RT}
    return TransactionCheckResult(LIST_APPEND, not anomalies, anomalies, len(history),
                                  len(analysis.committed), edges, tuple(history))


def main_check_transactions(
    path: str | os.PathLike[str], *, bank_total: int | None = None, as_json: bool = False
) -> int:
    """``replicaio check-transactions FILE [--json]``: load, check, print; exit 0 valid,
    1 anomalies, 2 unreadable or malformed history."""
    try:
        history = load_transactions(path)
        result = check_transactions(history, bank_total=bank_total)
    except (OSError, UnicodeDecodeError, HistoryError) as error:
        print(f"check-transactions: {os.fspath(path)}: {error}", file=sys.stderr)
        return EXIT_INVALID_HISTORY
    if as_json:
        print(json.dumps({
            "file": os.fspath(path), "workload": result.workload, "valid": result.valid,
            "transactions": result.transactions, "committed": result.committed,
            "edges": result.edges,
            "anomalies": [{"name": anomaly.name, "transactions": list(anomaly.transactions),
                           "evidence": list(anomaly.evidence)} for anomaly in result.anomalies],
        }, sort_keys=True))
    else:
        print(result.describe())
    return EXIT_VALID if result.valid else EXIT_ANOMALIES


__all__ = [
    "BANK",
    "EXIT_ANOMALIES",
    "EXIT_INVALID_HISTORY",
    "EXIT_VALID",
    "LIST_APPEND",
    "Anomaly",
    "Transaction",
    "TransactionCheckResult",
    "TransactionRecorder",
    "bank_accounts",
    "check_transactions",
    "dump_transactions",
    "load_transactions",
    "main_check_transactions",
]
