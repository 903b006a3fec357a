"""A Hypothesis state machine over SMR on the shared-log double: clients retry at
any replica, the leader moves, uncommitted batches are lost, replicas restart
from snapshots; at-most-once must hold throughout.

Each client increments its own counter, one operation at a time, and moves to
its next operation only once it got a reply. So if every operation executes
exactly once before its reply, the reply to ``(client, seq)`` is ``seq``; an
operation executed twice (a retry not recognised) or a reply before execution
shows as a different number. Replicas that applied the same index hold the
same state.
"""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from test_smr import Cluster, CommitNow, DropUncommitted

from replicaio.services.kv import KvOk, decode_result, encode_command
from replicaio.services.kv.values import Value
from replicaio.smr.api import ClientRequest, Redirect, Rejected, Reply
from replicaio.smr.params import SmrConstants, SmrParams

CLIENTS = 3
NODES = 3


class SessionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        params = SmrParams(pending_max=4, batches_inflight_max=2)
        constants = SmrConstants(snapshot_interval=2, batch_requests_max=2)
        self.cluster = Cluster(NODES, params=params, mode="manual", constants=constants)
        self.seq = [1] * CLIENTS  # the operation each client is on
        self.answered = [False] * CLIENTS

    def collect(self) -> None:
        for node in range(NODES):
            for output in self.cluster.take(node):
                self.check_output(output)

    def check_output(self, output: Any) -> None:
        if isinstance(output, Redirect | Rejected):
            return
        assert isinstance(output, Reply), output
        result = decode_result(output.result)
        assert isinstance(result, KvOk), result
        client = output.client
        assert output.seq <= self.seq[client], "a reply for an operation never sent"
        if output.seq == self.seq[client]:
            # Executed exactly once, with every earlier operation exactly once.
            assert result.value == output.seq, (output, result)
            self.answered[client] = True

    def leader(self) -> int:
        return self.cluster.shared.leader

    @rule(client=st.integers(0, CLIENTS - 1), node=st.integers(0, NODES - 1))
    def send(self, client: int, node: int) -> None:
        """Send (or retry) the client's current operation to a replica."""
        command = encode_command("incr", f"c{client}".encode(), 1)
        self.cluster.request(node, ClientRequest(client, self.seq[client], command, False))
        self.collect()

    @rule(client=st.integers(0, CLIENTS - 1))
    def advance(self, client: int) -> None:
        """A client that got its reply moves to its next operation."""
        if self.answered[client]:
            self.seq[client] += 1
            self.answered[client] = False

    @rule()
    def commit(self) -> None:
        self.cluster.request(self.leader(), CommitNow())
        self.collect()

    @rule()
    def lose_uncommitted(self) -> None:
        self.cluster.request(self.leader(), DropUncommitted())
        self.collect()

    @rule(node=st.integers(0, NODES - 1))
    def move_leader(self, node: int) -> None:
        self.cluster.shared.leader = node

    @rule(node=st.integers(0, NODES - 1))
    def restart(self, node: int) -> None:
        self.cluster.restart(node)
        self.collect()

    @rule(node=st.integers(0, NODES - 1))
    def time_passes(self, node: int) -> None:
        self.cluster.fire(node)
        self.collect()

    @invariant()
    def replicas_at_one_index_agree(self) -> None:
        states: dict[int, dict[bytes, Value]] = {}
        for node in range(NODES):
            replica = self.cluster.protocol(node).replica
            data = self.cluster.kv(node).data
            assert states.setdefault(replica.applied, data) == data
            for client in range(CLIENTS):
                value = data.get(f"c{client}".encode())
                assert value is None or isinstance(value, bytes), value  # a counter: a string
                executed = 0 if value is None else int(value)
                assert executed <= self.seq[client], "an operation ran more than once"


SessionMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None
)
TestSessions = SessionMachine.TestCase
