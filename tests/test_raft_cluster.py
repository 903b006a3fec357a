"""A hand-controlled Raft cluster for the paper tests, and tests of the helper.

:class:`Cluster` hosts real :class:`~replicaio.core.node.Node` cores running
:class:`~replicaio.protocols.raft.RaftNode`, exactly as a host must (persist
and sync, then sends, timers, outputs), on virtual time with a fixed
latency, every message encoded by the real codec. Tests drive it with
``run`` (events in time order, until a condition or a time), and shape the
world with ``partition``/``heal``, ``crash``/``restart`` (a crash may land
inside a node's next step and keep a prefix of its writes), ``wipe`` (lose a
disk), a message ``drop`` filter, and ``prefer`` (which node's election
timeouts are the shortest, via the ``random`` choice points). Every output
goes through :class:`~replicaio.check.raft.RaftChecker`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import random
from collections.abc import Callable
from typing import Any

import pytest

from replicaio.check.raft import RaftChecker
from replicaio.core.codec import Codec
from replicaio.core.config import ClusterConfig, Resilience
from replicaio.core.effects import Input, Receive, Request, TimerFired
from replicaio.core.lines import Line
from replicaio.core.node import Node, ProtocolFactory
from replicaio.protocols.raft import (
    Raft,
    RaftAdmin,
    RaftNode,
    RaftNodeFactory,
    RaftParams,
    RaftView,
    Role,
)
from replicaio.smr.api import Committed, NotLeader
from replicaio.storage.base import after_start, start_input
from replicaio.storage.memory import MemoryStorage

DELIVER, TIMER = 0, 1
FAST_PARAMS = RaftParams(
    heartbeat_us=10_000, election_timeout_min_us=50_000, election_timeout_max_us=100_000
)


class ReadingRaftNode(RaftNode):
    """RaftNode with a tiny state machine (a hash chain of the batches) that
    snapshots every ``compact_every`` entries, and ``"read"`` requests (a read
    barrier, kept in ``reads``)."""

    def __init__(
        self, context: Any, params: RaftParams, compact_every: int = 0,
        raft_type: type[Raft] = Raft,
    ) -> None:
        super().__init__(context, params, raft_type)
        self.reads: list[Line[int] | NotLeader] = []
        self.compact_every = compact_every
        self.state = b""
        self.state_index = 0

    def on_commit(self, committed: Committed) -> None:
        super().on_commit(committed)
        assert committed.index == self.state_index + 1, "applied in order, without gaps"
        self.state = hashlib.blake2b(self.state + committed.batch, digest_size=8).digest()
        self.state_index = committed.index
        if self.compact_every and committed.index % self.compact_every == 0:
            self.raft.compact(committed.index, self.state_index.to_bytes(8, "big") + self.state)

    def on_snapshot(self, index: int, snapshot: bytes) -> None:
        super().on_snapshot(index, snapshot)
        assert int.from_bytes(snapshot[:8], "big") == index
        self.state_index, self.state = index, snapshot[8:]

    def on_request(self, payload: Any) -> str | None:
        if payload == "read":
            self.reads.append(self.raft.read_barrier())
            return None
        if isinstance(payload, tuple) and payload[0] == "reads":  # several in one step
            self.reads.extend(self.raft.read_barrier() for _ in range(payload[1]))
            return None
        if isinstance(payload, tuple) and payload[0] == "compact":
            self.raft.compact(payload[1], payload[2])
            return None
        return super().on_request(payload)


class Factory(RaftNodeFactory):
    def __init__(
        self, params: RaftParams, compact_every: int = 0, raft_type: type[Raft] = Raft
    ) -> None:
        super().__init__(params, raft_type)
        self.compact_every = compact_every

    def __call__(self, context: Any) -> ReadingRaftNode:
        return ReadingRaftNode(context, self.params, self.compact_every, self.raft_type)


class Cluster:
    """See the module docstring."""

    def __init__(
        self, n: int, params: RaftParams = FAST_PARAMS, *, latency_us: int = 1_000, seed: int = 0,
        preferred: int | None = 0, compact_every: int = 0, loss: float = 0.0,
        duplicate: float = 0.0, jitter_us: int = 0, raft_type: type[Raft] = Raft,
    ) -> None:
        self.n = n
        self.params = params
        self.factory = Factory(params, compact_every, raft_type)
        self.loss, self.duplicate, self.jitter_us = loss, duplicate, jitter_us
        self.network_rng = random.Random(f"raft-test-network:{seed}")
        self.config = ClusterConfig(n=n, f=(n - 1) // 2, resilience=Resilience.CRASH)
        self.codec = Codec()
        self.latency_us = latency_us
        self.disks = [MemoryStorage() for _ in range(n)]
        self.nodes: list[Node | None] = [None] * n
        self.now = 0
        self.heap: list[tuple[int, int, int, int, Any]] = []
        self.sequence = 0
        self.timer_tokens: list[dict[int, int]] = [{} for _ in range(n)]
        self.blocked: set[tuple[int, int]] = set()
        self.drop: Callable[[int, int, Any], bool] | None = None
        self.rngs = [random.Random(f"raft-test:{seed}:{node}") for node in range(n)]
        # The node whose election timeouts are the shortest (None: all seeded).
        self.preferred = preferred
        # Forced election-timeout draws per node, used before any other rule.
        self.draws: dict[int, list[int]] = {}
        self.mid_step_crash: dict[int, int] = {}
        self.checker = RaftChecker()
        self.outputs: list[tuple[int, int, Any]] = []
        self.sent: list[tuple[int, int, Any]] = []  # (source, destination, message), all of them
        self.sent_before_sync: list[tuple[int, int, Any]] = []  # those marked sends_before_sync
        self.counters: dict[str, int] = {}

    # -- hosting ------------------------------------------------------------------

    def choose_for(self, node: int) -> Callable[[str, int], int]:
        def choose(label: str, count: int) -> int:
            if label == "random" and count == self.params.election_timeout_range_us:
                if self.draws.get(node):
                    return self.draws[node].pop(0)
                if self.preferred is not None:
                    return 0 if node == self.preferred else count - 1
            return self.rngs[node].randrange(count)

        return choose

    def start(self, *nodes: int, join: bool = False) -> None:
        """Start nodes (all by default); ``join``: on a new disk replacing a lost one."""
        factory = self.node_factory(join=join)
        for node in nodes or range(self.n):
            assert self.nodes[node] is None
            self.nodes[node] = Node(
                node, self.config, factory, choose=self.choose_for(node), codec=self.codec
            )
            self.step(node, start_input(self.disks[node]))
            core = self.nodes[node]
            if core is not None:  # the start step was synced
                after_start(self.disks[node], core.incarnation)

    def node_factory(self, *, join: bool) -> ProtocolFactory:
        """What builds a node's protocol at its start (``join``: on a new disk)."""
        if not join:
            return self.factory
        params = dataclasses.replace(self.params, join=True)
        return Factory(params, self.factory.compact_every, self.factory.raft_type)

    def step(self, node: int, event: Input) -> None:
        core = self.nodes[node]
        assert core is not None
        effects = core.step(event)
        disk = self.disks[node]
        for key, value in effects.persists:
            if value is None:
                disk.delete(key)
            else:
                disk.put(key, value)
        early = effects.sends_before_sync or []
        if node in self.mid_step_crash:
            # What a live host sends before its sync is out before the crash.
            for position in early:
                self.transmit(node, *effects.sends[position])
            keep = min(self.mid_step_crash.pop(node), disk.unsynced_count)
            self.go_down(node, keep)
            return
        disk.sync()
        for position, (destination, message) in enumerate(effects.sends):
            if position in early:
                self.sent_before_sync.append((node, destination, message))
            self.transmit(node, destination, message)
        for timer_id in effects.timers_cancelled:
            self.timer_tokens[node].pop(timer_id, None)
        for timer_id, delay in effects.timers_set:
            self.sequence += 1
            self.timer_tokens[node][timer_id] = self.sequence
            self.push(self.now + delay, TIMER, node, (timer_id, self.sequence))
        for output in effects.outputs:
            self.outputs.append((self.now, node, output))
            self.checker.on_output(node, output, self.now)

    def transmit(self, source: int, destination: int, message: Any) -> None:
        self.sent.append((source, destination, message))
        data = self.codec.encode(message)
        rng = self.network_rng
        if self.loss and rng.random() < self.loss:
            return
        copies = 2 if self.duplicate and rng.random() < self.duplicate else 1
        for _ in range(copies):
            delay = self.latency_us + (rng.randrange(self.jitter_us) if self.jitter_us else 0)
            self.push(self.now + delay, DELIVER, destination, (source, data))

    def push(self, at_us: int, kind: int, node: int, payload: Any) -> None:
        self.sequence += 1
        heapq.heappush(self.heap, (at_us, self.sequence, kind, node, payload))

    def go_down(self, node: int, keep_unsynced: int = 0, lose_synced: int = 0) -> None:
        core = self.nodes[node]
        assert core is not None
        for name, value in core.counters.items():
            self.counters[name] = self.counters.get(name, 0) + value
        self.disks[node].crash(keep_unsynced=keep_unsynced, lose_synced=lose_synced)
        self.nodes[node] = None
        self.timer_tokens[node] = {}

    # -- driving --------------------------------------------------------------------

    def run(
        self, for_us: int | None = None, *, until: Callable[[], bool] | None = None,
        limit_us: int = 5_000_000,
    ) -> bool:
        """Process events in time order for ``for_us``, or until ``until()`` holds
        (False if it did not within ``limit_us``)."""
        end = self.now + (for_us if for_us is not None else limit_us)
        while self.heap and self.heap[0][0] <= end:
            if until is not None and until():
                return True
            at_us, _, kind, node, payload = heapq.heappop(self.heap)
            self.now = at_us
            if self.nodes[node] is None:
                continue
            if kind == TIMER:
                timer_id, token = payload
                if self.timer_tokens[node].get(timer_id) != token:
                    continue
                del self.timer_tokens[node][timer_id]
                self.step(node, TimerFired(timer_id))
            else:
                source, data = payload
                if (source, node) in self.blocked:
                    continue
                if self.drop is not None and self.drop(source, node, self.codec.decode(data)):
                    continue
                self.step(node, Receive(source, data))
        if until is not None:
            return until()
        self.now = max(self.now, end)
        return True

    def inject(self, source: int, destination: int, message: Any) -> list[Any]:
        """Hand ``destination`` a message as if from ``source``, now; returns what
        ``destination`` sent in that step (its replies also go on the network)."""
        before = len(self.sent)
        self.step(destination, Receive(source, self.codec.encode(message)))
        return [sent[2] for sent in self.sent[before:] if sent[0] == destination]

    def request(self, node: int, payload: Any) -> None:
        self.step(node, Request(payload))

    # -- faults -----------------------------------------------------------------------

    def partition(self, *groups: tuple[int, ...]) -> None:
        """Cut every link between nodes of different groups (both ways)."""
        side = {node: index for index, group in enumerate(groups) for node in group}
        self.blocked = {
            (a, b) for a in range(self.n) for b in range(self.n)
            if a != b and side.get(a, -1) != side.get(b, -1)
        }

    def isolate(self, node: int) -> None:
        self.partition((node,), tuple(other for other in range(self.n) if other != node))

    def heal(self) -> None:
        self.blocked = set()

    def crash(self, node: int, keep_unsynced: int = 0, *, lose_synced: int = 0) -> None:
        """Power loss; ``lose_synced``: a storage fault loses that many synced writes too."""
        self.go_down(node, keep_unsynced, lose_synced)

    def crash_in_next_step(self, node: int, keep_unsynced: int) -> None:
        self.mid_step_crash[node] = keep_unsynced

    def restart(self, node: int, *, join: bool = False) -> None:
        self.start(node, join=join)

    def wipe(self, node: int) -> None:
        """Lose ``node``'s disk (it must be down)."""
        assert self.nodes[node] is None
        self.disks[node] = MemoryStorage()

    # -- looking ---------------------------------------------------------------------

    def up(self) -> list[int]:
        return [node for node in range(self.n) if self.nodes[node] is not None]

    def protocol(self, node: int) -> ReadingRaftNode:
        core = self.nodes[node]
        assert core is not None and isinstance(core.protocol, ReadingRaftNode)
        return core.protocol

    def raft(self, node: int) -> Raft:
        return self.protocol(node).raft

    def view(self, node: int) -> RaftView:
        return self.raft(node).observe()

    def leaders(self) -> list[int]:
        return [node for node in self.up() if self.view(node).role is Role.LEADER]

    def leader(self) -> int | None:
        """The up leader of the highest term, if any."""
        found = [(self.view(node).term, node) for node in self.leaders()]
        return max(found)[1] if found else None

    def elect(self, node: int, limit_us: int = 3_000_000) -> int:
        """Let ``node`` time out first (from its next timeout draw on) and win,
        with an entry of its term and its configuration committed (so it takes
        admin requests); returns its term."""
        self.preferred = node
        assert self.run(until=lambda: node in self.leaders() and self.settled(node),
                        limit_us=limit_us), f"node {node} did not become leader"
        return self.view(node).term

    def committed_in_term(self, node: int) -> bool:
        raft = self.raft(node)
        return raft.commit_index >= raft.term_start_index

    def settled(self, node: int) -> bool:
        """Leader ``node`` committed an entry of its term, has no change pending,
        and registered the disk of every member it can reach."""
        raft = self.raft(node)
        config = raft.log.config
        reachable = [
            member for member, identity in (*config.voters, *config.learners)
            if identity == 0 and self.nodes[member] is not None
            and (node, member) not in self.blocked
        ]
        return (
            self.committed_in_term(node)
            and raft.commit_index >= raft.log.config_index
            and not reachable
        )

    def submit(self, node: int, batch: bytes) -> None:
        self.request(node, batch)

    def admin(self, node: int, action: str, target: int) -> str | None:
        return self.raft_admin(node, RaftAdmin(action, target))  # type: ignore[arg-type]

    def raft_admin(self, node: int, request: RaftAdmin) -> str | None:
        before = dict(self.node_counters(node))
        self.request(node, request)
        after = self.node_counters(node)
        for name, value in after.items():
            if name.startswith("request_rejected_") and value != before.get(name, 0):
                return name[len("request_rejected_") :]
        return None

    def node_counters(self, node: int) -> dict[str, int]:
        core = self.nodes[node]
        assert core is not None
        return dict(core.counters)

    def count(self, name: str) -> int:
        total = self.counters.get(name, 0)
        for node in self.up():
            total += self.node_counters(node).get(name, 0)
        return total

    def committed(self, node: int) -> dict[int, bytes]:
        return self.protocol(node).committed

    def batches(self, node: int) -> list[bytes]:
        """The non-empty batches ``node`` applied, in index order."""
        committed = self.committed(node)
        return [committed[index] for index in sorted(committed) if committed[index]]

    def caught_up(self) -> bool:
        """Every up node applied everything the leader's log holds."""
        leader = self.leader()
        if leader is None:
            return False
        last = self.view(leader).last_index
        return all(self.view(node).applied_index >= last for node in self.up())

    def all_applied(self, batch: bytes, nodes: list[int] | None = None) -> bool:
        """Every node (of ``nodes``) applied ``batch`` as an entry (not through a snapshot)."""
        return all(batch in self.committed(node).values() for node in (nodes or self.up()))

    def messages(self, kind: type, source: int | None = None) -> list[tuple[int, int, Any]]:
        return [
            sent for sent in self.sent
            if type(sent[2]) is kind and (source is None or sent[0] == source)
        ]

    def assert_safe(self) -> None:
        assert not self.checker.violations, self.checker.violations


# -- tests of the helper itself ----------------------------------------------------------


def test_cluster_elects_one_leader_and_replicates() -> None:
    cluster = Cluster(3)
    cluster.start()
    term = cluster.elect(0)
    cluster.submit(0, b"x")
    assert cluster.run(until=lambda: cluster.all_applied(b"x"))
    assert cluster.leaders() == [0]
    assert all(cluster.view(node).term == term for node in range(3))
    cluster.assert_safe()


def test_cluster_partition_blocks_both_ways() -> None:
    cluster = Cluster(3)
    cluster.start()
    cluster.elect(0)
    cluster.isolate(2)
    cluster.submit(0, b"x")
    cluster.run(200_000)
    assert cluster.all_applied(b"x", [0, 1])
    assert not cluster.all_applied(b"x", [2])
    cluster.heal()
    assert cluster.run(until=lambda: cluster.all_applied(b"x"))


def test_cluster_crash_mid_step_keeps_a_prefix() -> None:
    cluster = Cluster(3)
    cluster.start()
    cluster.elect(0)
    cluster.crash_in_next_step(1, keep_unsynced=0)
    cluster.submit(0, b"x")
    cluster.run(5_000)
    assert cluster.nodes[1] is None
    assert cluster.disks[1].unsynced_count == 0


@pytest.mark.parametrize("seed", range(3))
def test_cluster_runs_are_reproducible(seed: int) -> None:
    def run() -> list[tuple[int, int, str]]:
        cluster = Cluster(3, seed=seed)
        cluster.start()
        cluster.run(400_000)
        return [(at, node, repr(output)) for at, node, output in cluster.outputs]

    assert run() == run()
