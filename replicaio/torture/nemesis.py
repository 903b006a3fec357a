"""The nemesis: a fault schedule drawn from the run's seed, and its record.

:func:`draw_schedule` is pure: the same seed, node count, duration and fault
kinds give the same list of :class:`Fault` s (what, on which nodes, from when,
for how long), so a failing run is rerun with the same faults at the same
offsets (the kernel and the processes still schedule as they like: a live run
is reproducible in its faults, not bit for bit). Kinds are drawn from a
shuffled bag (each kind once before any twice). Faults come one at a time,
each followed by a quiet gap, and every one is healed before the next starts.

Kinds (``FAULT_KINDS``):

* ``partition-symmetric``: two random halves that cannot reach each other;
* ``partition-asymmetric``: one side drops what the other sends, not back;
* ``partition-majority``: a minority (1..f nodes) cut off from the majority;
* ``partition-bridge``: two halves that only one node in the middle reaches;
* ``netem``: delay with jitter, loss, duplication, reordering and a slow
  link (``tc netem``; see :meth:`Testbed.shape` for kernels without it) on
  what 1..n nodes send;
* ``slow``: what 1..n-1 nodes (or the leader) send arrives 0.3 to 1.5 s late,
  nothing lost and nothing reordered (a congested or half-broken link: far
  slower than an election timeout or a client's retry, yet every byte gets
  there; the live twin of the simulator's ``slow`` kind);
* ``kill``: ``kill -9`` of 1..f nodes (possibly the leader), restarted at heal;
* ``pause``: ``SIGSTOP`` of one node (possibly the leader), ``SIGCONT`` at heal;
* ``disk-full``: the one node whose data directory is a small tmpfs finds its
  disk full (a filler file), freed at heal (the node is restarted if it died).

Partitions block *peer* traffic only: the clients, outside every group, keep
reaching every node (and get ``-TRYAGAIN`` from a node that cannot commit).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from replicaio.torture.network import LinkShape

PARTITION_KINDS = (
    "partition-symmetric",
    "partition-asymmetric",
    "partition-majority",
    "partition-bridge",
)
FAULT_KINDS = (*PARTITION_KINDS, "netem", "slow", "kill", "pause", "disk-full")
LEADER = -1  # a target resolved when the fault starts: whoever leads then

WARMUP_S = 3.0
FAULT_S_MIN = 2.0
FAULT_S_MAX = 8.0
GAP_S_MIN = 1.0
GAP_S_MAX = 3.0
FAULTS_MAX = 1_000
# ``slow``: the delays drawn (ms), and how many packets a link may hold late (at
# 1.5 s and a busy leader, tc netem's default of 1,000 would drop the rest).
SLOW_DELAYS_MS = (300, 800, 1_500)
SLOW_HELD_PACKETS = 100_000


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault of the schedule; ``groups`` say who blocks whom (see ``blocks``)."""

    kind: str
    start_s: float
    duration_s: float
    nodes: tuple[int, ...] = ()  # targets of kill/pause/netem/slow/disk-full (LEADER allowed)
    groups: tuple[tuple[int, ...], ...] = ()  # partitions: the sides
    link: LinkShape | None = None  # netem, slow: how the targets' links misbehave

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    def blocks(self, n: int) -> dict[int, tuple[int, ...]]:
        """For a partition: node -> the nodes whose packets it drops."""
        assert self.kind in PARTITION_KINDS
        dropped: dict[int, set[int]] = {node: set() for node in range(n)}
        if self.kind == "partition-bridge":
            left, _middle, right = self.groups
            for a in left:
                dropped[a].update(right)
            for b in right:
                dropped[b].update(left)
        elif self.kind == "partition-asymmetric":
            senders, receivers = self.groups
            for node in receivers:
                dropped[node].update(senders)
        else:
            first, second = self.groups
            for a in first:
                dropped[a].update(second)
            for b in second:
                dropped[b].update(first)
        return {node: tuple(sorted(found)) for node, found in dropped.items() if found}

    def describe(self) -> str:
        if self.kind in PARTITION_KINDS:
            sides = " | ".join(",".join(map(str, group)) for group in self.groups)
            arrow = " (first side's packets dropped by the second)" if (
                self.kind == "partition-asymmetric") else ""
            return f"{self.kind} {sides}{arrow}"
        targets = ",".join("leader" if node == LEADER else str(node) for node in self.nodes)
        extra = f" {' '.join(self.link.netem_arguments())}" if self.link else ""
        return f"{self.kind} node {targets}{extra}"


def draw_schedule(
    seed: int, n: int, duration_s: float, kinds: tuple[str, ...], disk_node: int | None
) -> list[Fault]:
    """The faults of a run (see the module docstring); ``disk_node`` is the tmpfs node."""
    assert n >= 1
    assert all(kind in FAULT_KINDS for kind in kinds)
    rng = random.Random(f"replicaio-torture-{seed}")
    usable = [kind for kind in kinds if n >= 2 or kind not in PARTITION_KINDS]
    if disk_node is None:
        usable = [kind for kind in usable if kind != "disk-full"]
    faults: list[Fault] = []
    bag: list[str] = []
    time_s = WARMUP_S
    while usable and time_s + FAULT_S_MIN <= duration_s and len(faults) < FAULTS_MAX:
        length = round(min(rng.uniform(FAULT_S_MIN, FAULT_S_MAX), duration_s - time_s), 2)
        if not bag:  # every kind once, in a random order, then again
            bag = list(usable)
            rng.shuffle(bag)
        kind = bag.pop()
        faults.append(draw_fault(rng, kind, round(time_s, 2), length, n, disk_node))
        time_s += length + rng.uniform(GAP_S_MIN, GAP_S_MAX)
    return faults


def draw_fault(
    rng: random.Random, kind: str, start_s: float, length: float, n: int, disk_node: int | None
) -> Fault:
    f = (n - 1) // 2
    nodes = list(range(n))
    rng.shuffle(nodes)
    if kind == "partition-majority":
        size = rng.randint(1, max(1, f))
        return Fault(kind, start_s, length,
                     groups=(tuple(sorted(nodes[:size])), tuple(sorted(nodes[size:]))))
    if kind in ("partition-symmetric", "partition-asymmetric"):
        cut = rng.randint(1, n - 1)
        return Fault(kind, start_s, length,
                     groups=(tuple(sorted(nodes[:cut])), tuple(sorted(nodes[cut:]))))
    if kind == "partition-bridge":
        if n < 3:
            return Fault("partition-symmetric", start_s, length,
                         groups=((nodes[0],), tuple(sorted(nodes[1:]))))
        middle = nodes[0]
        rest = nodes[1:]
        cut = max(1, len(rest) // 2)
        return Fault(kind, start_s, length, groups=(
            tuple(sorted(rest[:cut])), (middle,), tuple(sorted(rest[cut:]))))
    if kind == "netem":
        count = rng.randint(1, n)
        delay = rng.choice((5, 20, 50, 100))
        link = LinkShape(
            delay_ms=delay, jitter_ms=max(1, delay // 2),
            loss_percent=rng.choice((0, 1, 5, 10, 30)),
            duplicate_percent=rng.choice((0, 1, 5)),
            reorder_percent=rng.choice((0, 10, 25)),
            rate_kbit=rng.choice((0, 0, 0, 512)),
        )
        return Fault(kind, start_s, length, nodes=tuple(sorted(nodes[:count])), link=link)
    if kind == "slow":
        count = rng.randint(1, max(1, n - 1))
        targets = tuple(sorted(nodes[:count]))
        if rng.random() < 0.4:
            targets = (LEADER,)
        link = LinkShape(delay_ms=rng.choice(SLOW_DELAYS_MS), limit_packets=SLOW_HELD_PACKETS)
        return Fault(kind, start_s, length, nodes=targets, link=link)
    if kind == "kill":
        count = rng.randint(1, max(1, f))
        targets = tuple(sorted(nodes[:count]))
        if rng.random() < 0.4:
            targets = (LEADER,)
        return Fault(kind, start_s, length, nodes=targets)
    if kind == "pause":
        return Fault(kind, start_s, length,
                     nodes=(LEADER,) if rng.random() < 0.4 else (nodes[0],))
    assert kind == "disk-full"
    assert disk_node is not None
    return Fault(kind, start_s, length, nodes=(disk_node,))
