"""List-append analysis: recover version orders from reads, then build the graph.

Theory of operation (Elle's list-append, Kingsbury & Alvaro 2020, section 4):
every append to a key adds an element unique to that key, and a read returns
the whole list. So a read *is* a version, and the version order of a key is
the longest list read of it (every other read must be a prefix of it, or
there is no order at all: ``incompatible-order``). From that:

* element ``e`` was installed by the one transaction that appended it;
* ``ww``: the writers of consecutive elements of the longest read;
* ``wr``: a read ending in ``e`` depends on the writer of ``e``;
* ``rw``: a read of length ``i`` anti-depends on the writer of element ``i``
  of the order (the first version it did not see).

Anomalies found without cycles, each naming its transactions:

* ``G1a`` (aborted read): a read saw an element whose append failed;
* ``G1b`` (intermediate read): a read ended with an element its writer
  followed by another append to the same key (it saw a state the writer
  never committed);
* ``garbage-read``: an element nobody appended; ``duplicate-elements``: a
  read holding an element twice; ``internal``: a read after the transaction's
  own appends to that key does not end with them.

Committed transactions: ``ok`` ones, and ``info`` ones whose append some read
observed. Only a transaction's *external* reads (before its own appends to the
key) give ``wr``/``rw`` edges; its appends give ``ww`` edges.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from replicaio.check.history import FAIL, INFO, OK, HistoryError
from replicaio.check.transactions.graph import RW, WR, WW, Graph
from replicaio.check.transactions.history import APPEND, READ, Transaction


@dataclass(frozen=True, slots=True)
class Finding:
    """A non-cycle anomaly: its name, the transactions involved, why."""

    name: str
    transactions: tuple[int, ...]
    why: str


@dataclass(slots=True)
class Analysis:
    graph: Graph
    findings: list[Finding]
    committed: set[int]
    orders: dict[str, tuple[int, ...]]


def _writers(transactions: Sequence[Transaction]) -> dict[tuple[str, int], tuple[int, int]]:
    """(key, element) -> (writer, position among its appends to that key)."""
    writers: dict[tuple[str, int], tuple[int, int]] = {}
    for transaction in transactions:
        positions: dict[str, int] = {}
        for kind, key, element in transaction.ops:
            if kind != APPEND:
                continue
            if (key, element) in writers:
                other = writers[(key, element)][0]
                raise HistoryError(
                    f"element {element} appended to {key!r} twice (T{other} and "
                    f"T{transaction.index}); list-append needs unique elements",
                    index=transaction.index,
                )
            writers[(key, element)] = (transaction.index, positions.get(key, 0))
            positions[key] = positions.get(key, 0) + 1
    return writers


def _reads(transaction: Transaction) -> list[tuple[str, tuple[int, ...], bool, list[int]]]:
    """The ok reads: (key, list, external, own appends to the key before it)."""
    found = []
    own: dict[str, list[int]] = {}
    for kind, key, value in transaction.ops:
        if kind == APPEND:
            own.setdefault(key, []).append(value)
        elif kind == READ and transaction.status == OK:
            values = () if value is None else value
            if isinstance(values, int):
                raise HistoryError(f"a list-append read of {key!r} returned {values}, not a list",
                                   index=transaction.index)
            found.append((key, values, key not in own, list(own.get(key, []))))
    return found


def analyse_list_append(transactions: Sequence[Transaction]) -> Analysis:
    """Findings and the dependency graph (without ``rt`` edges) of a list-append history."""
    by_index = {t.index: t for t in transactions}
    writers = _writers(transactions)
    findings: list[Finding] = []
    longest: dict[str, tuple[tuple[int, ...], int]] = {}  # key -> (list, reader)
    reads = {t.index: _reads(t) for t in transactions}
    for reader, found in reads.items():
        for key, values, _, own in found:
            _check_read(by_index, writers, reader, key, values, own, findings)
            best = longest.get(key)
            if best is None or len(values) > len(best[0]):
                longest[key] = (values, reader)
    for reader, found in reads.items():  # every read is a prefix of the longest one
        for key, values, _, _ in found:
            order, other = longest[key]
            if order[: len(values)] != values:
                findings.append(Finding(
                    "incompatible-order", (other, reader),
                    f"T{reader} read {key} = {list(values)} and T{other} read {list(order)}: "
                    "neither is a prefix of the other, so no version order explains both"))
    orders = {key: order for key, (order, _) in longest.items()}
    observed = {writers[(key, e)][0] for key, order in orders.items() for e in order
                if (key, e) in writers}
    committed = {t.index for t in transactions
                 if t.status == OK or (t.status == INFO and t.index in observed)}
    graph = Graph()
    for index in sorted(committed):
        graph.edges.setdefault(index, {})
    unread: dict[str, list[tuple[int, int]]] = {}  # key -> [(writer, element)] no read saw
    for (key, element), (writer, _) in sorted(writers.items()):
        if writer in committed and element not in set(orders.get(key, ())):
            unread.setdefault(key, []).append((writer, element))
    _order_edges(graph, orders, writers, committed, unread)
    _read_edges(graph, reads, orders, writers, committed, unread)
    return Analysis(graph, findings, committed, orders)


def _check_read(
    by_index: dict[int, Transaction],
    writers: dict[tuple[str, int], tuple[int, int]],
    reader: int,
    key: str,
    values: tuple[int, ...],
    own: list[int],
    findings: list[Finding],
) -> None:
    if len(set(values)) != len(values):
        findings.append(Finding("duplicate-elements", (reader,),
                                f"T{reader} read {key} = {list(values)}, an element twice"))
    for element in values:
        writer = writers.get((key, element))
        if writer is None:
            findings.append(Finding("garbage-read", (reader,),
                                    f"T{reader} read {element} in {key}, which nobody appended"))
        elif by_index[writer[0]].status == FAIL:
            findings.append(Finding(
                "G1a", (writer[0], reader),
                f"T{reader} read {key} = {list(values)} including {element}, appended by "
                f"T{writer[0]}, which failed (aborted read)"))
    if own:
        if list(values[-len(own):]) != own:
            findings.append(Finding(
                "internal", (reader,),
                f"T{reader} appended {own} to {key} and then read {list(values)}, "
                "which does not end with its own appends"))
        return
    if not values:
        return
    writer = writers.get((key, values[-1]))
    if writer is None or writer[0] == reader:
        return
    appended = [e for kind, k, e in by_index[writer[0]].ops if kind == APPEND and k == key]
    if writer[1] < len(appended) - 1:
        findings.append(Finding(
            "G1b", (writer[0], reader),
            f"T{reader} read {key} = {list(values)}, ending with {values[-1]}, which T{writer[0]} "
            f"followed with {appended[writer[1] + 1]} (intermediate read)"))


def _order_edges(
    graph: Graph,
    orders: dict[str, tuple[int, ...]],
    writers: dict[tuple[str, int], tuple[int, int]],
    committed: set[int],
    unread: dict[str, list[tuple[int, int]]],
) -> None:
    for key in sorted(orders):
        order = orders[key]
        last = writers.get((key, order[-1])) if order else None
        if last is not None and last[0] in committed:
            for writer, element in unread.get(key, ()):  # its version comes after every read
                graph.add(last[0], writer, WW,
                          f"T{last[0]} appended {order[-1]}, the last element read of {key}; "
                          f"T{writer} committed {element}, which no read saw, so after it")
        for before, after in itertools.pairwise(order):
            first, second = writers.get((key, before)), writers.get((key, after))
            if first is None or second is None:
                continue
            if first[0] in committed and second[0] in committed:
                graph.add(first[0], second[0], WW,
                          f"T{first[0]} appended {before} to {key}, then T{second[0]} "
                          f"appended {after}")


def _read_edges(
    graph: Graph,
    reads: dict[int, list[tuple[str, tuple[int, ...], bool, list[int]]]],
    orders: dict[str, tuple[int, ...]],
    writers: dict[tuple[str, int], tuple[int, int]],
    committed: set[int],
    unread: dict[str, list[tuple[int, int]]],
) -> None:
    for reader in sorted(reads):
        if reader not in committed:
            continue
        for key, values, external, _ in reads[reader]:
            if not external:
                continue
            order = orders.get(key, ())
            if order[: len(values)] != values:
                continue  # already an incompatible-order finding
            if values:
                writer = writers.get((key, values[-1]))
                if writer is not None and writer[0] in committed:
                    graph.add(writer[0], reader, WR,
                              f"T{reader} read {key} = {list(values)}, seeing T{writer[0]}'s "
                              f"append of {values[-1]}")
            if len(values) < len(order):
                following = order[len(values)]
                writer = writers.get((key, following))
                if writer is not None and writer[0] in committed:
                    graph.add(reader, writer[0], RW,
                              f"T{reader} read {key} = {list(values)}, missing {following}, "
                              f"which T{writer[0]} appended next")
                continue
            for writer_index, element in unread.get(key, ()):
                graph.add(reader, writer_index, RW,
                          f"T{reader} read {key} = {list(values)}, missing {element}, which "
                          f"T{writer_index} committed after every version read")
