"""SMR over a deterministic test-double ordering: sessions and at-most-once across
retries and snapshots, batching bounds, forwarding, reads, bad input.

The double (:class:`LogOrdering`) keeps one log shared by every node of the
test cluster: the leader appends, commits (in a task, synchronously inside
``submit``, or when the test says so) and tells the others with a ``Notice``;
each node applies from the shared log. Nodes are real ``Node`` cores on a
hand-driven network (:class:`Cluster`), every message through the codec.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pytest

from replicaio.core.codec import Codec, Message
from replicaio.core.config import ClusterConfig, Resilience
from replicaio.core.context import Context
from replicaio.core.effects import Effects, Receive, Request, Start, TimerFired
from replicaio.core.errors import ConfigError
from replicaio.core.lines import Line
from replicaio.core.node import Node
from replicaio.services.kv import (
    KeyValueStateMachine,
    KvError,
    KvOk,
    decode_result,
    encode_command,
)
from replicaio.smr.api import (
    AuthenticatedRequest,
    ClientRequest,
    Committed,
    NotLeader,
    OrderingHandlers,
    Redirect,
    Rejected,
    Reply,
)
from replicaio.smr.auth import KEYED, KeyedClientSigner, SignedClients
from replicaio.smr.messages import (
    Applied,
    Batch,
    Forward,
    ReadIndexReply,
    ReadIndexRequest,
    SignedBatch,
)
from replicaio.smr.params import SmrConstants, SmrParams
from replicaio.smr.protocol import SmrFactory, SmrProtocol
from replicaio.smr.replica import Replica, SmrSnapshotError, decode_snapshot, encode_snapshot
from replicaio.smr.sessions import SessionTable
from replicaio.storage.memory import MemoryStorage
from replicaio.testing.variants.raft import CommitForgetsPendingReplica

CODEC = Codec()

# -- the test double -------------------------------------------------------------------


class Notice(Message, tag="test.smr.Notice"):
    committed: int


@dataclass(frozen=True)
class CommitNow:
    """Admin payload: the leader commits everything appended (manual mode)."""


@dataclass(frozen=True)
class DropUncommitted:
    """Admin payload: the leader loses what it appended but did not commit."""


@dataclass
class SharedLog:
    leader: int = 0
    mode: str = "task"  # "task": commit in a task; "sync": inside submit; "manual"
    entries: list[bytes] = field(default_factory=list)
    committed: int = 0
    compactions: list[tuple[int, int]] = field(default_factory=list)  # (node, index)
    snapshots: dict[int, dict[int, bytes]] = field(default_factory=dict)  # index -> node -> data
    submitted: list[int] = field(default_factory=list)  # requests per submitted batch
    watched: list[tuple[int, tuple[tuple[int, int], ...]]] = field(default_factory=list)


class LogOrdering:
    """A deterministic Ordering double over a log shared by the test's nodes."""

    def __init__(self, context: Context, shared: SharedLog) -> None:
        self.context = context
        self.shared = shared
        self.applied = 0
        self.handlers: OrderingHandlers | None = None

    def bind(self, handlers: OrderingHandlers) -> None:
        self.handlers = handlers

    def start(self) -> None:
        assert self.handlers is not None
        self.stream = self.context.stream(Notice, handler=lambda source, notice: self.catch_up())
        stored = self.context.load("snapshot")
        if stored is not None:
            index, data = stored
            self.handlers.on_snapshot(index, data)
            self.applied = index
        self.catch_up()

    def catch_up(self) -> None:
        assert self.handlers is not None
        while self.applied < self.shared.committed:
            self.applied += 1
            self.handlers.on_commit(Committed(self.applied, self.shared.entries[self.applied - 1]))

    def commit(self) -> None:
        self.shared.committed = len(self.shared.entries)
        self.catch_up()
        self.stream.send_all(Notice(self.shared.committed))

    async def commit_soon(self) -> None:
        self.commit()

    def submit(self, batch: bytes) -> NotLeader | None:
        if self.context.id != self.shared.leader:
            return NotLeader(self.shared.leader)
        self.shared.entries.append(batch)
        signed = CODEC.decode(batch).__class__ is SignedBatch
        kind: type[SignedBatch] | type[Batch] = SignedBatch if signed else Batch
        self.shared.submitted.append(len(CODEC.decode_as(batch, kind).requests))
        if self.shared.mode == "sync":
            self.commit()
        elif self.shared.mode == "task":
            self.context.spawn(self.commit_soon())
        return None

    def read_barrier(self) -> Line[int] | NotLeader:
        if self.context.id != self.shared.leader:
            return NotLeader(self.shared.leader)
        line: Line[int] = Line(self.context.node.scheduler, "barrier")
        line.set(self.shared.committed)
        return line

    def compact(self, index: int, snapshot: bytes) -> None:
        assert index <= self.applied
        self.shared.compactions.append((self.context.id, index))
        self.shared.snapshots.setdefault(index, {})[self.context.id] = snapshot
        self.context.persist("snapshot", [index, snapshot])

    @property
    def leader_hint(self) -> int:
        return self.shared.leader

    def on_admin(self, payload: Any) -> str | None:
        if isinstance(payload, DropUncommitted):
            del self.shared.entries[self.shared.committed :]
        else:
            self.commit()
        return None


# -- a hand-driven cluster -----------------------------------------------------------------


class Cluster:
    """Real node cores; messages move only when :meth:`settle` runs; timers only
    when :meth:`fire` does. ``hold`` keeps matching messages back."""

    def __init__(
        self,
        n: int = 3,
        params: SmrParams | None = None,
        mode: str = "task",
        constants: SmrConstants | None = None,
        resilience: Resilience = Resilience.CRASH,
        authenticator: Any = None,
        ordering: Any = None,
        admin_types: tuple[type, ...] = (),
        replica_type: type[Replica] = Replica,
    ) -> None:
        self.shared = SharedLog(mode=mode)
        ordering_type = ordering or LogOrdering
        self.factory = SmrFactory(
            "double",
            resilience,
            lambda context: ordering_type(context, self.shared),
            KeyValueStateMachine,
            params or SmrParams(),
            admin_types=(CommitNow, DropUncommitted, *admin_types),
            constants=constants,
            authenticator=authenticator,
            replica_type=replica_type,
        )
        f = (n - 1) // 3 if resilience is Resilience.BYZANTINE else (n - 1) // 2
        self.config = ClusterConfig(n=n, f=f, resilience=resilience)
        self.storages = [MemoryStorage() for _ in range(n)]
        self.nodes: list[Node] = [Node(i, self.config, self.factory) for i in range(n)]
        self.outputs: list[list[Any]] = [[] for _ in range(n)]
        self.timers: list[dict[int, int]] = [{} for _ in range(n)]
        self.network: deque[tuple[int, int, bytes]] = deque()
        self.held: list[tuple[int, int, bytes]] = []
        self.hold: Any = None
        for i in range(n):
            self.execute(i, self.nodes[i].step(Start(self.storages[i].recover())))
        self.settle()

    def execute(self, i: int, effects: Effects) -> None:
        for key, value in effects.persists:
            if value is None:
                self.storages[i].delete(key)
            else:
                self.storages[i].put(key, value)
        self.storages[i].sync()
        for destination, body in effects.sends:
            self.network.append((i, destination, CODEC.encode(body)))
        for timer in effects.timers_cancelled:
            self.timers[i].pop(timer, None)
        for timer, delay in effects.timers_set:
            self.timers[i][timer] = delay
        self.outputs[i].extend(effects.outputs)

    def settle(self) -> None:
        while self.network:
            source, destination, data = self.network.popleft()
            if self.hold is not None and self.hold(source, destination, CODEC.decode(data)):
                self.held.append((source, destination, data))
                continue
            self.execute(destination, self.nodes[destination].step(Receive(source, data)))

    def release(self) -> None:
        self.hold = None
        self.network.extend(self.held)
        self.held.clear()
        self.settle()

    def request(self, i: int, payload: Any, *, settle: bool = True) -> None:
        self.execute(i, self.nodes[i].step(Request(payload)))
        if settle:
            self.settle()

    def fire(self, i: int, *, longest: bool = False) -> None:
        """Fire node i's armed timers (only the longest ones with ``longest``)."""
        armed = dict(self.timers[i])
        if longest and armed:
            delay = max(armed.values())
            armed = {timer: d for timer, d in armed.items() if d == delay}
        for timer in armed:
            if self.timers[i].pop(timer, None) is not None:
                self.execute(i, self.nodes[i].step(TimerFired(timer)))
        self.settle()

    def restart(self, i: int) -> None:
        self.storages[i].crash(keep_unsynced=0)
        self.timers[i].clear()
        self.nodes[i] = Node(i, self.config, self.factory)
        self.execute(i, self.nodes[i].step(Start(self.storages[i].recover())))
        self.settle()

    def protocol(self, i: int) -> SmrProtocol:
        protocol = self.nodes[i].protocol
        assert isinstance(protocol, SmrProtocol)
        return protocol

    def kv(self, i: int) -> KeyValueStateMachine:
        state_machine = self.protocol(i).state_machine
        assert isinstance(state_machine, KeyValueStateMachine)
        return state_machine

    def take(self, i: int) -> list[Any]:
        found = [o for o in self.outputs[i] if not isinstance(o, Applied)]
        self.outputs[i].clear()
        return found

    def counter(self, i: int, name: str) -> int:
        return self.nodes[i].counters.get(name, 0)


def write(client: int, seq: int, op: str, key: bytes, *arguments: Any) -> ClientRequest:
    return ClientRequest(client, seq, encode_command(op, key, *arguments), False)


def read(client: int, seq: int, key: bytes) -> ClientRequest:
    return ClientRequest(client, seq, encode_command("get", key), True)


def value_of(reply: Any) -> Any:
    assert isinstance(reply, Reply), reply
    result = decode_result(reply.result)
    assert isinstance(result, KvOk), result
    return result.value


# -- writes, sessions, at-most-once ----------------------------------------------------------


def test_write_is_applied_everywhere_and_answered_by_its_replica_only() -> None:
    cluster = Cluster()
    cluster.request(0, write(7, 1, "put", b"k", b"v"))
    [reply] = cluster.take(0)
    assert reply == Reply(7, 1, reply.result, 0, leader=0)
    assert value_of(reply) is None
    for i in range(3):
        assert cluster.kv(i).data == {b"k": b"v"}
        assert cluster.protocol(i).replica.applied == 1
    assert cluster.take(1) == cluster.take(2) == []


def test_retry_after_commit_answers_the_remembered_result_without_executing() -> None:
    cluster = Cluster()
    cluster.request(0, write(7, 1, "incr", b"n", 5))
    assert value_of(cluster.take(0)[0]) == 5
    cluster.request(0, write(7, 1, "incr", b"n", 5))  # the reply was lost; retry
    assert value_of(cluster.take(0)[0]) == 5
    assert cluster.kv(0).data == {b"n": b"5"}
    assert cluster.counter(0, "smr_replies_cached") == 1
    assert len(cluster.shared.entries) == 1  # nothing was submitted again


def test_retries_racing_the_original_are_ordered_once_and_execute_once() -> None:
    """Copies of one (client, seq) (a retry at the leader and one at another replica,
    relayed, before the first commit) are queued once: one batch orders the
    request. A copy ordered anyway (a second leader's batch) executes nothing and
    answers the same result."""
    cluster = Cluster(mode="manual")
    cluster.request(0, write(7, 1, "incr", b"n", 5))
    cluster.request(0, write(7, 1, "incr", b"n", 5))
    cluster.request(1, write(7, 1, "incr", b"n", 5))  # forwarded to the leader
    assert len(cluster.shared.entries) == 1
    assert cluster.counter(0, "smr_requests_queued_again") == 1
    assert cluster.counter(0, "smr_forward_duplicate") == 1
    cluster.shared.entries.append(CODEC.encode(Batch(2, 1, 0, (write(7, 1, "incr", b"n", 5),))))
    cluster.request(0, CommitNow())
    assert [value_of(reply) for reply in cluster.take(0)] == [5]
    assert [value_of(reply) for reply in cluster.take(1)] == [5]
    for i in range(3):
        assert cluster.kv(i).data == {b"n": b"5"}
    assert cluster.counter(2, "smr_duplicates") == 1
    assert cluster.counter(2, "smr_requests_applied") == 1
    assert cluster.protocol(0).replica.queued == {}


def test_stale_sequence_numbers_are_refused_and_never_executed() -> None:
    cluster = Cluster(mode="manual")
    cluster.request(0, write(7, 1, "incr", b"n", 1))
    cluster.request(0, CommitNow())
    cluster.request(0, write(7, 2, "incr", b"n", 10))
    cluster.request(0, CommitNow())
    assert [value_of(reply) for reply in cluster.take(0)] == [1, 11]
    cluster.request(0, write(7, 1, "incr", b"n", 1))  # older than the last executed
    assert cluster.take(0) == [Rejected(7, 1, "stale_seq")]
    assert cluster.counter(0, "request_rejected_stale_seq") == 1
    # A stale copy that was already ordered is skipped at apply, silently.
    cluster.shared.entries.append(CODEC.encode(Batch(0, 1, 99, (write(7, 1, "incr", b"n", 1),))))
    cluster.request(0, CommitNow())
    assert cluster.kv(2).data == {b"n": b"11"}
    assert cluster.take(0) == []


def test_at_most_once_across_snapshot_and_restart() -> None:
    """The session table is in the snapshot: a replica restarted from it (and one
    that never saw the request) still answers a retry without executing again."""
    cluster = Cluster(constants=SmrConstants(snapshot_interval=1))
    cluster.request(0, write(7, 1, "incr", b"n", 5))
    assert value_of(cluster.take(0)[0]) == 5
    assert (0, 1) in cluster.shared.compactions
    cluster.restart(0)
    replica = cluster.protocol(0).replica
    assert replica.applied == 1
    assert cluster.counter(0, "smr_snapshots_restored") == 1
    cluster.request(0, write(7, 1, "incr", b"n", 5))
    assert value_of(cluster.take(0)[0]) == 5
    assert cluster.kv(0).data == {b"n": b"5"}
    # The retry ordered once more (say by a new leader that had not applied it yet)
    # is still a duplicate everywhere.
    cluster.shared.entries.append(CODEC.encode(Batch(1, 1, 0, (write(7, 1, "incr", b"n", 5),))))
    cluster.request(0, CommitNow())
    for i in range(3):
        assert cluster.kv(i).data == {b"n": b"5"}


def test_state_transfer_answers_replies_the_snapshot_settles() -> None:
    """A replica that owes a reply and is brought forward by a snapshot (not by the
    batch itself) still answers, from the session table."""
    cluster = Cluster(constants=SmrConstants(snapshot_interval=1), mode="manual")
    cluster.request(1, write(7, 1, "put", b"k", b"v"))  # forwarded by 1 to leader 0
    cluster.hold = lambda source, destination, body: destination == 1
    cluster.request(0, CommitNow())
    cluster.held.clear()  # node 1 never hears of the commit
    leader = cluster.protocol(0).replica
    snapshot = encode_snapshot(
        leader.codec, 1, cluster.kv(0).snapshot(), leader.sessions.records()
    )
    follower = cluster.protocol(1).replica
    assert follower.waiting == {7: 1}
    follower.on_snapshot(1, snapshot)
    replies = [o for o in cluster.nodes[1].effects.outputs if isinstance(o, Reply)]
    assert [(r.client, r.seq, r.replica) for r in replies] == [(7, 1, 1)]
    assert follower.waiting == {}
    assert cluster.kv(1).data == {b"k": b"v"}


def test_snapshots_every_interval_and_restart_replays_the_rest() -> None:
    cluster = Cluster(constants=SmrConstants(snapshot_interval=3))
    for seq in range(1, 8):
        cluster.request(0, write(1, seq, "append", b"log", str(seq).encode()))
    assert [index for node, index in cluster.shared.compactions if node == 0] == [3, 6]
    cluster.restart(2)
    assert cluster.kv(2).data == {b"log": b"1234567"}
    assert cluster.protocol(2).replica.applied == 7
    assert cluster.counter(2, "smr_snapshots_restored") == 1


def test_every_replica_snapshots_the_same_indices_to_the_same_bytes() -> None:
    """What a BFT checkpoint certificate needs: equal state, equal snapshot bytes, at
    indices every replica agrees on, whoever answered which client."""
    cluster = Cluster(constants=SmrConstants(snapshot_interval=2, sessions_max=3))
    for seq in range(1, 6):
        cluster.request(seq % 3, write(seq, 1, "put", f"k{seq}".encode(), b"v"))
        cluster.request(seq % 3, write(seq, 2, "incr", b"n", seq))
    assert sorted(cluster.shared.snapshots) == [2, 4, 6, 8, 10]
    for by_node in cluster.shared.snapshots.values():
        assert sorted(by_node) == [0, 1, 2]
        assert len(set(by_node.values())) == 1


def test_snapshot_format_is_versioned_and_checked() -> None:
    codec = Codec()
    data = encode_snapshot(codec, 4, b"app", [(7, 2, b"r", 3)])
    assert decode_snapshot(codec, data) == (4, b"app", [(7, 2, b"r", 3)])
    for bad in (
        b"\xc1",
        codec.encode_value(["replicaio.smr", 2, 4, b"app", []]),
        codec.encode_value(["replicaio.smr", 1, -1, b"app", []]),
        codec.encode_value(["replicaio.smr", 1, 4, b"app", [[7, 2, "r", 3]]]),
        codec.encode_value(["other", 1, 4, b"app", []]),
    ):
        with pytest.raises(SmrSnapshotError):
            decode_snapshot(codec, bad)


def test_session_table_evicts_least_recently_used_deterministically() -> None:
    table = SessionTable(sessions_max=3)
    for index, client in enumerate([1, 2, 3], start=1):
        table.record(client, 1, b"r", index)
    table.record(1, 2, b"r", 4)  # client 1 is now the most recent
    table.record(4, 1, b"r", 5)  # evicts client 2, the least recently used
    assert list(table) == [3, 1, 4]
    assert table.evictions == 1
    copy = SessionTable(sessions_max=3)
    copy.replace(table.records())
    copy.record(5, 1, b"r", 6)
    table.record(5, 1, b"r", 6)
    assert copy.records() == table.records()  # the order travels with the snapshot


def test_sessions_max_is_reached_in_a_cluster() -> None:
    cluster = Cluster(constants=SmrConstants(sessions_max=2, snapshot_interval=1))
    for client in range(1, 5):
        cluster.request(0, write(client, 1, "incr", b"n", 1))
    assert [len(cluster.protocol(i).replica.sessions) for i in range(3)] == [2, 2, 2]
    assert cluster.counter(1, "smr_sessions_evicted") == 2
    cluster.restart(1)
    assert list(cluster.protocol(1).replica.sessions) == list(cluster.protocol(0).replica.sessions)


def test_an_evicted_client_is_refused_not_executed_twice() -> None:
    cluster = Cluster(constants=SmrConstants(sessions_max=2, snapshot_interval=1))
    cluster.request(0, write(1, 1, "incr", b"n", 1))
    cluster.request(0, write(1, 2, "incr", b"n", 1))
    cluster.take(0)
    for client in (2, 3):  # client 1 is the least recently used: evicted
        cluster.request(0, write(client, 1, "put", b"k", b"v"))
    cluster.take(0)
    cluster.request(0, write(1, 2, "incr", b"n", 1))  # a late retry of seq 2
    assert cluster.take(0) == [Rejected(1, 2, "session_expired")]
    assert cluster.counter(0, "smr_session_expired") == 1
    cluster.request(0, read(9, 1, b"n"))
    assert [value_of(reply) for reply in cluster.take(0)] == [b"2"]  # not 3


def test_registration_opens_a_session_and_runs_nothing() -> None:
    cluster = Cluster()
    cluster.request(0, ClientRequest(5, 1, b"", False))
    cluster.request(0, ClientRequest(5, 1, b"", False))  # a retried registration
    replies = cluster.take(0)
    assert [type(reply).__name__ for reply in replies] == ["Reply", "Reply"]
    assert cluster.counter(0, "smr_sessions_registered") == 1
    assert cluster.protocol(0).replica.sessions.lookup(5) is not None


# -- batching and its bounds -----------------------------------------------------------------


def test_batches_grow_while_the_inflight_window_is_full_and_pending_max_rejects() -> None:
    params = SmrParams(pending_max=5, batches_inflight_max=1)
    cluster = Cluster(
        params=params, mode="manual", constants=SmrConstants(batch_requests_max=3)
    )
    for client in range(1, 8):
        cluster.request(0, write(client, 1, "put", b"k", bytes([client])))
    # 1 went alone (window free); 2..6 wait (pending_max=5); 7 is refused.
    assert cluster.shared.submitted == [1]
    assert cluster.take(0) == [Rejected(7, 1, "busy")]
    assert cluster.counter(0, "request_rejected_busy") == 1
    assert cluster.counter(0, "bound_smr_pending_max") == 1
    cluster.request(0, CommitNow())
    assert cluster.shared.submitted == [1, 3]  # batch_requests_max
    cluster.request(0, CommitNow())
    assert cluster.shared.submitted == [1, 3, 2]
    cluster.request(0, CommitNow())
    assert sorted(r.client for r in cluster.take(0)) == [1, 2, 3, 4, 5, 6]


def test_with_a_batch_in_flight_the_next_waits_to_fill() -> None:
    """``batch_fill_min``: the first request goes alone at once; while it is in
    flight the next ones wait until three are pending, then go together (the
    window still has room); once nothing is in flight, one alone goes at once."""
    params = SmrParams(batches_inflight_max=4, batch_fill_min=3)
    cluster = Cluster(params=params, mode="manual")
    for client in range(1, 5):
        cluster.request(0, write(client, 1, "put", b"k", bytes([client])))
    assert cluster.shared.submitted == [1, 3]
    cluster.request(0, write(5, 1, "put", b"k", b"e"))
    assert cluster.shared.submitted == [1, 3]  # waits: two in flight, one pending
    cluster.request(0, CommitNow())
    assert cluster.shared.submitted == [1, 3, 1]  # the window emptied: it goes
    cluster.request(0, CommitNow())
    assert sorted(r.client for r in cluster.take(0)) == [1, 2, 3, 4, 5]


def test_batch_bytes_max_cuts_batches() -> None:
    params = SmrParams(batches_inflight_max=1, pending_max=64)
    constants = SmrConstants(batch_bytes_max=2200, command_bytes_max=1000)
    cluster = Cluster(params=params, mode="manual", constants=constants)
    for client in range(1, 6):
        cluster.request(0, write(client, 1, "put", b"k", b"x" * 900))
    cluster.request(0, CommitNow())
    cluster.request(0, CommitNow())
    assert cluster.shared.submitted == [1, 2, 2]
    for entry in cluster.shared.entries:
        assert len(entry) <= 2200


def test_a_batch_never_applied_frees_its_window_slot_after_batch_timeout() -> None:
    params = SmrParams(batches_inflight_max=1, batch_timeout_us=500_000)
    cluster = Cluster(params=params, mode="manual")
    cluster.request(0, write(1, 1, "put", b"k", b"a"))
    cluster.request(0, DropUncommitted())  # leadership changed: the batch is gone
    cluster.request(0, write(2, 1, "put", b"k", b"b"))
    assert cluster.shared.submitted == [1]
    cluster.fire(0, longest=True)
    assert cluster.counter(0, "smr_batches_presumed_lost") == 1
    assert cluster.shared.submitted == [1, 1]
    cluster.request(0, CommitNow())
    assert [r.client for r in cluster.take(0)] == [2]


def test_a_commit_that_frees_a_window_slot_cuts_the_waiting_request_at_once() -> None:
    """The housekeeper is woken by a commit when requests are pending (ADR 0073)."""
    assert commit_flushes(Replica)


def test_a_commit_that_forgets_the_pending_requests_is_caught() -> None:
    """``raft-commit-forgets-pending``'s replica: the waiting request stays
    pending after the commit that freed its slot (no swarm catches it: a new
    request or a forwarded copy wakes the housekeeper soon enough)."""
    assert not commit_flushes(CommitForgetsPendingReplica)


def commit_flushes(replica_type: type[Replica]) -> bool:
    """Whether the request that waited for the window is submitted in the step
    of the commit that frees it."""
    cluster = Cluster(params=SmrParams(batches_inflight_max=1), mode="manual",
                      replica_type=replica_type)
    cluster.request(0, write(1, 1, "put", b"k", b"a"))
    cluster.request(0, write(2, 1, "put", b"k", b"b"))  # the window is full: it waits
    assert cluster.shared.submitted == [1]
    cluster.request(0, CommitNow())
    return cluster.shared.submitted == [1, 1]


def test_a_commit_with_nothing_to_do_leaves_the_housekeeper_asleep() -> None:
    """Nothing pending, no snapshot to hand over: a commit costs no housekeeper
    step, on the leader or on a follower (ADR 0073); a snapshot due wakes it."""
    cluster = Cluster(mode="manual", constants=SmrConstants(snapshot_interval=2))
    cluster.request(0, write(1, 1, "put", b"k", b"a"))
    kicks = [cluster.protocol(i).replica.kick for i in range(3)]
    assert all(kick is not None and not kick.ready for kick in kicks)
    cluster.request(0, CommitNow())
    assert cluster.protocol(0).replica.applied == 1
    assert [cluster.protocol(i).replica.kick for i in range(3)] == kicks
    assert not any(kick is not None and kick.ready for kick in kicks)
    cluster.request(0, write(1, 2, "put", b"k", b"b"))
    cluster.request(0, CommitNow())  # index 2: a snapshot, handed over in the step
    assert (0, 2) in cluster.shared.compactions


def test_an_ordering_that_commits_inside_submit_is_fine() -> None:
    cluster = Cluster(mode="sync", params=SmrParams(batches_inflight_max=1))
    for seq in range(1, 4):
        cluster.request(0, write(1, seq, "incr", b"n", 1))
    assert [value_of(r) for r in cluster.take(0)] == [1, 2, 3]
    assert cluster.protocol(0).replica.inflight == {}


def test_params_are_validated() -> None:
    with pytest.raises(ConfigError):
        SmrConstants(batch_bytes_max=100).validate()
    with pytest.raises(ConfigError):
        SmrParams(pending_max=2).validate(SmrConstants(batch_requests_max=3))
    with pytest.raises(ConfigError):
        SmrConstants(snapshot_interval=-1).validate()
    with pytest.raises(ConfigError):
        SmrParams(checkpoints_pending_max=0).validate()
    with pytest.raises(ConfigError):
        SmrParams(batch_fill_min=0).validate()


# -- forwarding and redirection -----------------------------------------------------------------


def test_forwarding_the_reply_comes_from_the_origin_apply() -> None:
    cluster = Cluster()
    forwards: list[Any] = []

    def watch(source: int, destination: int, body: Any) -> bool:
        forwards.append(body)
        return False

    cluster.hold = watch
    cluster.request(2, write(9, 1, "put", b"k", b"v"))
    assert any(isinstance(body, Forward) for body in forwards)
    [reply] = cluster.take(2)
    assert reply.replica == 2
    assert cluster.take(0) == []  # the leader ordered it but does not answer
    assert cluster.counter(2, "smr_forwarded") == 1


def test_without_forwarding_followers_redirect() -> None:
    cluster = Cluster(params=SmrParams(forward=False))
    cluster.request(2, write(9, 1, "put", b"k", b"v"))
    assert cluster.take(2) == [Redirect(9, 1, 0)]
    cluster.request(2, read(9, 2, b"k"))
    assert cluster.take(2) == [Redirect(9, 2, 0)]


def test_a_forwarded_request_is_refused_not_forwarded_again() -> None:
    cluster = Cluster()
    cluster.request(2, write(9, 1, "put", b"k", b"v"), settle=False)
    cluster.shared.leader = 1  # leadership moved while the Forward was in the air
    cluster.settle()
    # Node 0 refused (not leader, hint 1); origin 2 redirects its client there,
    # marked forwarded: a duplicated or delayed copy of the Forward may still be
    # taken by a leader, so the client must not count it as a refusal (long
    # profile: a put recorded as failed after such answers was applied).
    assert cluster.take(2) == [Redirect(9, 1, 1, forwarded=True)]
    assert cluster.counter(0, "smr_forward_refused") == 1
    assert cluster.shared.entries == []


class WatchingOrdering(LogOrdering):
    """A BFT-shaped double (``RelayWatch``): notes what SMR says it relayed."""

    def watch_relayed(self, requests: tuple[tuple[int, int], ...]) -> None:
        self.shared.watched.append((self.context.id, requests))


def test_a_bft_ordering_is_told_only_the_requests_relayed_to_the_leader() -> None:
    """A request forwarded to a replica that is no longer the leader is refused
    there, not relayed: that replica must not time it (PBFT's request timer,
    4.4), or it suspects a correct primary once the client gave up (``swarm
    pbft --nodes 4 --byzantine 1`` seed 246). Its origin relayed it, and says so."""
    cluster = Cluster(ordering=WatchingOrdering)
    cluster.request(2, write(9, 1, "put", b"k", b"v"), settle=False)
    assert cluster.shared.watched == [(2, ((9, 1),))]  # relayed to node 0
    cluster.shared.leader = 1  # leadership moved while the Forward was in the air
    cluster.request(0, write(8, 1, "put", b"j", b"w"), settle=False)
    cluster.settle()
    # Node 0 batched its own client's request with node 2's, was refused the
    # batch (not leader), relayed its own to node 1 and refused node 2's.
    assert (0, ((8, 1),)) in cluster.shared.watched
    assert all((9, 1) not in requests for node, requests in cluster.shared.watched if node == 0)
    assert cluster.counter(0, "smr_forward_refused") == 1


def test_a_full_leader_refuses_forwarded_requests_as_busy() -> None:
    params = SmrParams(pending_max=1, batches_inflight_max=1)
    cluster = Cluster(
        params=params, mode="manual", constants=SmrConstants(batch_requests_max=1)
    )
    cluster.request(0, write(1, 1, "put", b"k", b"a"))  # in flight
    cluster.request(0, write(2, 1, "put", b"k", b"b"))  # pending: full
    cluster.request(1, write(3, 1, "put", b"k", b"c"))  # forwarded to a full leader
    # not Rejected (which promises "not executed"): another copy may still run
    assert cluster.take(1) == [Redirect(3, 1, -1, forwarded=True)]


# -- reads -----------------------------------------------------------------------------------------


def test_reads_on_the_leader_go_through_the_barrier_not_the_log() -> None:
    cluster = Cluster()
    cluster.request(0, write(1, 1, "put", b"k", b"v"))
    cluster.take(0)
    cluster.request(0, read(2, 1, b"k"))
    assert value_of(cluster.take(0)[0]) == b"v"
    assert len(cluster.shared.entries) == 1
    assert cluster.counter(0, "smr_reads_served") == 1


def test_follower_reads_ask_the_leader_for_the_index_then_wait_to_apply() -> None:
    cluster = Cluster()
    cluster.request(0, write(1, 1, "put", b"k", b"old"))
    cluster.hold = lambda s, d, body: d == 2 and isinstance(body, Notice)
    cluster.request(0, write(1, 2, "put", b"k", b"new"))
    assert cluster.kv(2).data == {b"k": b"old"}  # node 2 lags one batch
    cluster.request(2, read(5, 1, b"k"))
    assert cluster.take(2) == []  # it has the index (2) but applied only 1: waits
    assert cluster.counter(2, "smr_read_index_asked") == 1
    cluster.release()
    assert value_of(cluster.take(2)[0]) == b"new"  # never the stale b"old"


def test_a_read_that_cannot_be_served_times_out_with_a_rejection() -> None:
    cluster = Cluster(params=SmrParams(read_timeout_us=1000))
    cluster.hold = lambda s, d, body: isinstance(body, ReadIndexRequest)
    cluster.request(2, read(5, 1, b"k"))
    cluster.fire(2)
    assert cluster.take(2) == [Rejected(5, 1, "read_timeout")]
    assert cluster.protocol(2).replica.reads_active == 0
    assert cluster.protocol(2).replica.remote_reads == {}


def test_reads_pending_max_is_reached() -> None:
    cluster = Cluster(params=SmrParams(reads_pending_max=2))
    cluster.hold = lambda s, d, body: isinstance(body, ReadIndexRequest)
    for client in range(3):
        cluster.request(2, read(client, 1, b"k"))
    assert cluster.take(2) == [Rejected(2, 1, "busy")]
    assert cluster.counter(2, "bound_smr_reads_pending_max") == 1


# -- bad input -------------------------------------------------------------------------------------


def test_bad_input_gets_a_typed_rejection_and_a_counter() -> None:
    cluster = Cluster(constants=SmrConstants(command_bytes_max=100))
    cluster.request(0, b"not a request")
    cluster.request(0, ClientRequest(1, 0, encode_command("get", b"k"), False))
    cluster.request(0, ClientRequest(-1, 1, encode_command("get", b"k"), False))
    cluster.request(0, ClientRequest(1, 1, b"x" * 101, False))
    cluster.request(0, ClientRequest(1, 1, "text", False))  # type: ignore[arg-type]
    assert cluster.take(0) == [
        Rejected(1, 0, "bad_request"),
        Rejected(-1, 1, "bad_request"),
        Rejected(1, 1, "too_large"),
        Rejected(1, 1, "bad_request"),
    ]
    assert cluster.counter(0, "request_rejected_bad_request") == 4
    assert cluster.counter(0, "request_rejected_too_large") == 1
    assert cluster.shared.entries == []


def test_a_bad_command_is_replicated_and_answered_with_a_typed_error() -> None:
    cluster = Cluster()
    cluster.request(0, ClientRequest(1, 1, b"\x93\xa3bad", False))
    reply = cluster.take(0)[0]
    result = decode_result(reply.result)
    assert isinstance(result, KvError) and result.code == "malformed", result
    assert all(cluster.kv(i).errors == {"malformed": 1} for i in range(3))


def test_undecodable_batches_are_skipped_deterministically() -> None:
    cluster = Cluster(mode="manual")
    cluster.shared.entries.append(b"\xc1garbage")
    cluster.request(0, CommitNow())
    for i in range(3):
        assert cluster.protocol(i).replica.applied == 1
        assert cluster.counter(i, "smr_batch_undecodable") == 1


def test_waiting_max_drops_the_oldest_owed_reply() -> None:
    cluster = Cluster(params=SmrParams(waiting_max=2), mode="manual")
    for client in range(1, 4):
        cluster.request(0, write(client, 1, "put", b"k", b"v"))
    assert list(cluster.protocol(0).replica.waiting) == [2, 3]
    assert cluster.counter(0, "bound_smr_waiting_max") == 1
    cluster.request(0, CommitNow())
    assert [r.client for r in cluster.take(0)] == [2, 3]


def keyed_clients(context: Context, params: SmrParams) -> SignedClients:
    return SignedClients(context.node.codec, KEYED)


def test_an_authenticator_checks_requests_before_batching() -> None:
    cluster = Cluster(authenticator=keyed_clients)
    good = KeyedClientSigner(CODEC, 1).wrap(write(1, 1, "put", b"k", b"v"))
    forged = AuthenticatedRequest(write(2, 1, "put", b"k", b"forged"), b"", b"\0" * 32)
    cluster.request(0, good)
    cluster.request(0, forged)
    cluster.request(0, write(3, 1, "put", b"k", b"bare"))  # no authenticator at all
    outputs = cluster.take(0)
    assert value_of(outputs[0]) is None
    assert outputs[1] == Rejected(2, 1, "unauthenticated")
    assert cluster.counter(0, "request_rejected_unauthenticated") == 1
    assert cluster.counter(0, "request_rejected_bad_request") == 1
    assert cluster.kv(1).data == {b"k": b"v"}
    # The request travelled with its signature inside the batch.
    assert CODEC.decode_as(cluster.shared.entries[0], SignedBatch).requests == (good,)


def test_applied_outputs_fingerprint_every_batch_on_every_replica() -> None:
    cluster = Cluster(params=SmrParams(emit_applied=True))
    cluster.request(1, write(1, 1, "put", b"k", b"v"))
    applied = [[o for o in cluster.outputs[i] if isinstance(o, Applied)] for i in range(3)]
    assert applied[0] == applied[1] == applied[2]
    assert [a.index for a in applied[0]] == [1]


def test_a_read_index_reply_delayed_across_a_restart_never_serves_a_new_read() -> None:
    # Regression (issue 7): read numbers restarted at 0 in every incarnation and a
    # reply was matched by its number alone, so a reply to the previous
    # incarnation's read completed a new read at an old index: a stale read.
    cluster = Cluster()
    cluster.request(0, write(1, 1, "put", b"k", b"old"))
    cluster.hold = lambda s, d, body: isinstance(body, ReadIndexReply)
    cluster.request(2, read(5, 1, b"k"))  # the leader's answer (index 1) is delayed
    stale = list(cluster.held)
    assert len(stale) == 1
    cluster.held.clear()
    cluster.hold = None
    cluster.restart(2)
    cluster.take(2)
    cluster.hold = lambda s, d, body: d == 2 and isinstance(body, (Notice, ReadIndexRequest))
    cluster.request(0, write(1, 2, "put", b"k", b"new"))  # acknowledged by the leader
    assert cluster.kv(2).data == {b"k": b"old"}  # node 2 lags one batch
    cluster.hold = lambda s, d, body: isinstance(body, (Notice, ReadIndexRequest))
    cluster.request(2, read(6, 1, b"k"))  # a new read; its request to the leader is held
    cluster.network.extend(stale)  # the old reply finally arrives
    cluster.settle()
    assert cluster.take(2) == []  # not answered from the old index
    assert cluster.counter(2, "smr_read_index_reply_stale") == 1
    cluster.release()
    assert value_of(cluster.take(2)[0]) == b"new"


def test_a_read_index_reply_from_a_replica_not_asked_is_dropped() -> None:
    cluster = Cluster()
    cluster.request(0, write(1, 1, "put", b"k", b"v"))
    cluster.hold = lambda s, d, body: isinstance(body, ReadIndexRequest)
    cluster.request(2, read(5, 1, b"k"))
    number = next(iter(cluster.protocol(2).replica.remote_reads))
    forged = ReadIndexReply(number, 0, 1)  # node 1 was not asked
    cluster.network.append((1, 2, CODEC.encode(forged)))
    cluster.settle()
    assert cluster.take(2) == []
    assert cluster.counter(2, "smr_read_index_reply_wrong_source") == 1
    cluster.release()
    assert value_of(cluster.take(2)[0]) == b"v"


def test_snapshots_sized_by_bytes_wait_until_the_log_outgrows_the_last_one() -> None:
    """``snapshot_log_bytes_min``: a multiple of the interval is skipped while the
    batches applied since the last snapshot hold fewer bytes than the floor and
    than that snapshot. The choice is a function of the log: every replica skips
    the same multiples and snapshots the same bytes, a restarted one included."""
    constants = SmrConstants(snapshot_interval=2, snapshot_log_bytes_min=300)
    cluster = Cluster(constants=constants)
    value = b"x" * 200
    for seq in range(1, 25):
        cluster.request(seq % 3, write(1, seq, "put", f"k{seq % 3}".encode(), value))
        if seq == 12:
            cluster.restart(2)
    taken = sorted(cluster.shared.snapshots)
    assert taken and set(taken) < set(range(2, 25, 2)), taken
    assert cluster.counter(0, "smr_snapshots_deferred") > 0
    for by_node in cluster.shared.snapshots.values():
        assert sorted(by_node) == [0, 1, 2]
        assert len(set(by_node.values())) == 1
    # The first snapshot (two values, 472 bytes) is outgrown by two batches; from the
    # second on, each holds three values (682 bytes): three batches or more, so the
    # next multiple of 2 taken is at least 4 later.
    sizes = {index: len(by_node[0]) for index, by_node in cluster.shared.snapshots.items()}
    assert taken[:3] == [2, 4, 8], sizes
    assert all(later - earlier >= 4 for earlier, later in itertools.pairwise(taken[1:])), sizes


def test_snapshots_sized_by_bytes_are_deferred_at_most_63_times_in_a_row() -> None:
    cluster = Cluster(constants=SmrConstants(snapshot_interval=1, snapshot_log_bytes_min=1 << 30))
    for seq in range(1, 71):
        cluster.request(0, write(1, seq, "append", b"log", b"."))
    assert [index for node, index in cluster.shared.compactions if node == 0] == [64]
    assert cluster.counter(0, "smr_snapshots_deferred") == 63 + 6
