"""The dependency graph of committed transactions, and the cycles that name anomalies.

Theory of operation (Adya, "Weak consistency", MIT 1999, chapter 3; Kingsbury
and Alvaro, "Elle: inferring isolation anomalies from experimental
observations", VLDB 2020): a history is serializable iff the graph of its
committed transactions with these edges is acyclic:

* ``ww`` (write-write): T1 installed a version of a key and T2 the next one;
* ``wr`` (write-read): T2 read the version T1 installed;
* ``rw`` (read-write, an anti-dependency): T1 read a version and T2 installed
  the next one, which T1 did not see.

*Strict* serializability adds ``rt`` (real-time) edges: T1 returned before T2
was called. A cycle is named after the weakest isolation level it breaks,
searched from the worst down, so each strongly connected component reports
its most telling cycle:

=================  ===============================================
``G0``             only ``ww`` edges (dirty write)
``G1c``            ``ww`` and ``wr`` edges, at least one ``wr`` (circular information flow)
``G-single``       exactly one ``rw`` edge (read skew, lost update)
``G2``             two or more ``rw`` edges (write skew)
=================  ===============================================

A cycle that needs a real-time edge has the same name with ``-realtime``
(``G-single-realtime``: serializable, but not *strictly*).

Guarantees: deterministic (edges and nodes are visited in sorted order);
sound (every reported cycle is in the graph, each edge with the evidence that
put it there); complete for cycles (a graph with a cycle always yields an
anomaly). Cost: Tarjan's SCC is linear; the searches for a named cycle are
breadth-first inside one component.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

WW: Final = "ww"
WR: Final = "wr"
RW: Final = "rw"
RT: Final = "rt"
EDGE_KINDS: Final = (WW, WR, RW, RT)

# (anomaly name, edge kinds a cycle may use, whether it has exactly one rw edge)
CYCLE_SEARCHES: Final = (
    ("G0", frozenset({WW}), False),
    ("G1c", frozenset({WW, WR}), False),
    ("G-single", frozenset({WW, WR, RW}), True),
    ("G2", frozenset({WW, WR, RW}), False),
    ("G0-realtime", frozenset({WW, RT}), False),
    ("G1c-realtime", frozenset({WW, WR, RT}), False),
    ("G-single-realtime", frozenset({WW, WR, RW, RT}), True),
    ("G2-realtime", frozenset({WW, WR, RW, RT}), False),
)


@dataclass(frozen=True, slots=True)
class Step:
    """One edge of a cycle: ``source`` -> ``target`` for ``why``."""

    source: int
    target: int
    kind: str
    why: str


@dataclass(slots=True)
class Graph:
    """Edges between transactions (by history index), each kind with its first evidence."""

    edges: dict[int, dict[int, dict[str, str]]] = field(default_factory=dict)

    def add(self, source: int, target: int, kind: str, why: str) -> None:
        assert kind in EDGE_KINDS
        if source == target:
            return  # a transaction's own order is not a dependency
        self.edges.setdefault(source, {}).setdefault(target, {}).setdefault(kind, why)
        self.edges.setdefault(target, {})

    def count(self, kind: str) -> int:
        return sum(kind in kinds for targets in self.edges.values() for kinds in targets.values())

    def successors(self, node: int, kinds: frozenset[str]) -> Iterable[tuple[int, str]]:
        for target in sorted(self.edges.get(node, {})):
            found = self.edges[node][target]
            for kind in EDGE_KINDS:
                if kind in kinds and kind in found:
                    yield target, kind
                    break  # one edge per pair is enough to walk it


def strongly_connected(
    graph: Graph, nodes: Iterable[int], kinds: frozenset[str]
) -> list[list[int]]:
    """Tarjan's algorithm, iterative; components of more than one node, sorted."""
    allowed = set(nodes)
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    on_stack: set[int] = set()
    stack: list[int] = []
    found: list[list[int]] = []
    counter = 0
    for root in sorted(allowed):
        if root in index:
            continue
        work: list[tuple[int, list[int]]] = []
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        work.append((root, [t for t, _ in graph.successors(root, kinds) if t in allowed]))
        while work:
            node, pending = work[-1]
            if pending:
                target = pending.pop()
                if target not in index:
                    index[target] = low[target] = counter
                    counter += 1
                    stack.append(target)
                    on_stack.add(target)
                    work.append(
                        (target, [t for t, _ in graph.successors(target, kinds) if t in allowed])
                    )
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def _path(
    graph: Graph, start: int, goal: int, members: set[int], kinds: frozenset[str]
) -> list[Step] | None:
    """A shortest path ``start`` -> ``goal`` inside ``members`` over ``kinds``."""
    came: dict[int, tuple[int, str]] = {}
    queue = deque([start])
    seen = {start}
    while queue:
        node = queue.popleft()
        for target, kind in graph.successors(node, kinds):
            if target not in members:
                continue
            if target == goal:
                steps = [Step(node, goal, kind, graph.edges[node][goal][kind])]
                while node != start:
                    parent, parent_kind = came[node]
                    why = graph.edges[parent][node][parent_kind]
                    steps.append(Step(parent, node, parent_kind, why))
                    node = parent
                return steps[::-1]
            if target not in seen:
                seen.add(target)
                came[target] = (node, kind)
                queue.append(target)
    return None


def _cycle(graph: Graph, members: list[int], kinds: frozenset[str], single_rw: bool
           ) -> list[Step] | None:
    """A cycle inside ``members`` using only ``kinds`` (exactly one ``rw`` if ``single_rw``)."""
    if single_rw:
        others = kinds - {RW}
        member_set = set(members)
        for source in members:
            for target in sorted(graph.edges.get(source, {})):
                if target not in member_set or RW not in graph.edges[source][target]:
                    continue
                back = [] if target == source else _path(graph, target, source, member_set, others)
                if back is not None:
                    return [Step(source, target, RW, graph.edges[source][target][RW]), *back]
        return None
    for component in strongly_connected(graph, members, kinds):
        start = component[0]
        steps = _path(graph, start, start, set(component), kinds)
        assert steps is not None, "a strongly connected component has a cycle through each node"
        return steps
    return None


@dataclass(frozen=True, slots=True)
class Cycle:
    """A named cycle of the dependency graph."""

    name: str
    steps: tuple[Step, ...]


def find_cycles(graph: Graph) -> list[Cycle]:
    """One named cycle per strongly connected component of the whole graph."""
    cycles = []
    for component in strongly_connected(graph, graph.edges, frozenset(EDGE_KINDS)):
        for name, kinds, single_rw in CYCLE_SEARCHES:
            steps = _cycle(graph, component, kinds, single_rw)
            if steps is not None:
                cycles.append(Cycle(name, tuple(steps)))
                break
        else:
            raise AssertionError("a component of the whole graph has some cycle")
    return cycles


def real_time_edges(graph: Graph, spans: Iterable[tuple[int, float, float | None]]) -> None:
    """Add ``rt`` edges T1 -> T2 for T1 returned before T2 was called, reduced:
    only from the *frontier* of completed transactions (one that returned
    before another completed one was called is implied through it, as in Elle)."""
    listed = list(spans)
    calls = {index: call for index, call, _ in listed}
    returns = {index: returned for index, _, returned in listed}
    events: list[tuple[float, int, int]] = []  # (time, 0 = call before 1 = return, index)
    for index, call, returned in listed:
        events.append((call, 0, index))
        if returned is not None:
            events.append((returned, 1, index))
    # Equal times are concurrent: a call at t sees only returns strictly before t.
    events.sort()
    frontier: dict[int, None] = {}
    for _, kind, index in events:
        if kind == 0:
            for before in frontier:
                graph.add(before, index, RT, f"T{before} returned before T{index} was called")
            continue
        call = calls[index]
        implied = [before for before in frontier if _before(returns[before], call)]
        for before in implied:
            del frontier[before]
        frontier[index] = None


def _before(returned: float | None, call: float) -> bool:
    return returned is not None and returned < call
