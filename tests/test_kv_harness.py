"""The KV harness on its own: closed-loop clients through the simulator's harness
API, history recording, retries keeping (client, seq), new ids after unknown
outcomes, liveness accounting; run over the shared-log ordering double of
``test_smr`` so these tests do not depend on any real protocol."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from test_smr import CommitNow, DropUncommitted, LogOrdering, SharedLog

from replicaio import assembly
from replicaio.check.history import INFO, OK, validate_history
from replicaio.core.codec import Codec
from replicaio.core.config import ClusterConfig, Resilience
from replicaio.core.errors import UsageError
from replicaio.services.kv import KeyValueStateMachine, encode_command
from replicaio.sim.harness import harness_for
from replicaio.sim.kv_harness import KvHarness, KvWorkload, kv_options
from replicaio.sim.options import Crash, Partition, SimOptions
from replicaio.sim.simulator import Simulator
from replicaio.smr.api import ClientRequest, Redirect, Rejected, Reply
from replicaio.smr.params import SmrConstants, SmrParams
from replicaio.smr.protocol import SmrFactory

CODEC = Codec()


@pytest.fixture
def double() -> Iterator[SharedLog]:
    """Register the shared-log double as the service ``double`` for one test."""
    shared = SharedLog()

    def build(name: str, parameters: Any) -> SmrFactory:
        return SmrFactory(
            name, Resilience.CRASH, lambda context: LogOrdering(context, shared),
            KeyValueStateMachine, SmrParams(), constants=SmrConstants(snapshot_interval=4),
            admin_types=(CommitNow, DropUncommitted),
        )

    assembly.SERVICES["double"] = assembly.ServiceSpec(
        "double", "double", Resilience.CRASH, build, "test double"
    )
    try:
        yield shared
    finally:
        del assembly.SERVICES["double"]


def test_clients_run_their_quota_and_the_history_is_linearizable(double: SharedLog) -> None:
    options = kv_options(3, 3, (), KvWorkload(clients=4, ops=120))
    simulator = Simulator("double", options, f=1)
    result = simulator.run()
    assert result.violations == []
    assert result.stats["linearizable"] is True
    assert result.stats["ops_completed"] >= 120
    harness = simulator.harness
    assert isinstance(harness, KvHarness)
    operations = harness.operations()
    validate_history(operations)  # clients are sequential, ids retire after info
    kinds = {op.op for op in operations}
    assert {"get", "put", "append", "cas", "delete", "incr", "txn", "putx"} <= kinds
    assert kinds <= {"get", "put", "append", "cas", "delete", "incr", "txn", "putx", "rpush",
                     "lrange"}
    written = [op.value for op in operations if op.op in ("put", "append", "cas")]
    assert len(written) == len(set(written))  # values are unique per write
    # Liveness: every client completed an operation invoked after the heal.
    healed = harness.healed_at
    for client in harness.clients:
        assert any(op.client == client.client_id and op.call >= healed and op.status == OK
                   for op in operations)


def test_runs_are_deterministic(double: SharedLog) -> None:
    options = kv_options(5, 3, (), KvWorkload(clients=3, ops=40))
    first = Simulator("double", options, f=1).run()
    double.__init__()  # type: ignore[misc]  # the double's log lives outside the nodes
    second = Simulator("double", options, f=1).run()
    assert first.log_sha256 == second.log_sha256
    wall = ("wall_seconds", "linearizability_seconds")  # measured, not simulated
    assert {key: value for key, value in first.stats.items() if key not in wall} == {
        key: value for key, value in second.stats.items() if key not in wall
    }


def test_workload_travels_in_the_options_and_is_validated() -> None:
    workload = KvWorkload(clients=2, ops=10, membership_every_us=5)
    options = kv_options(1, 3, ("crash", "partition"), workload)
    assert KvWorkload.from_options(options) == workload
    assert SimOptions.from_dict(options.as_dict()) == options  # JSON round trip
    assert options.crashes and options.partitions
    assert all(crash.at_us < options.safety_us for crash in options.crashes)
    with pytest.raises(UsageError):
        KvWorkload(clients=0).validate()
    with pytest.raises(UsageError):
        KvWorkload(mix=(("frobnicate", 1),)).validate()
    with pytest.raises(UsageError):
        KvWorkload(counters=0).validate()


def test_long_runs_keep_drawing_faults() -> None:
    options = kv_options(2, 5, ("crash", "partition"), KvWorkload(clients=2, ops=400))
    assert options.safety_us >= 5_000_000
    late = [c for c in options.crashes if c.at_us > options.safety_us // 2]
    assert late, "faults are drawn over the whole safety phase, not only its start"


class FakeApi:
    """A hand-driven HarnessApi: requests are collected, callbacks run on demand."""

    def __init__(self) -> None:
        self.time = 0
        self.requests: list[tuple[int, Any]] = []
        self.calls: list[tuple[int, Callable[[], None]]] = []
        self.crashes: list[Crash] = []
        self.partitions: list[Partition] = []

    def now(self) -> int:
        return self.time

    def request(self, node: int, payload: Any) -> None:
        self.requests.append((node, CODEC.decode(payload)))

    def call_at(self, time_us: int, callback: Callable[[], None]) -> None:
        self.calls.append((max(time_us, self.time), callback))

    def crash(self, crash: Crash) -> None:
        self.crashes.append(crash)

    def partition(self, partition: Partition) -> None:
        self.partitions.append(partition)

    def advance(self, until_us: int) -> None:
        while True:
            due = sorted((t, i) for i, (t, _) in enumerate(self.calls) if t <= until_us)
            if not due:
                break
            at, index = due[0]
            _, callback = self.calls.pop(index)
            self.time = at
            callback()
        self.time = until_us


def one_client(**changes: Any) -> tuple[KvHarness, FakeApi]:
    config = ClusterConfig(n=3, f=1, resilience=Resilience.CRASH)
    harness = KvHarness(config)
    api = FakeApi()
    harness.bind(api)
    workload = KvWorkload(clients=1, ops=3, think_us_max=0, mix=(("incr", 1),), **changes)
    harness.requests(kv_options(1, 3, (), workload))
    api.advance(0)
    # A new client id registers its session first (seq 1, empty command).
    node, registration = last_request(api)
    assert (registration.client, registration.seq, registration.command) == (0, 1, b"")
    assert harness.on_output(node, Reply(0, 1, b"", node), api.time) == []
    api.advance(api.time)
    assert harness.operations() and harness.operations()[0].status == INFO  # invoked
    return harness, api


def last_request(api: FakeApi) -> tuple[int, ClientRequest]:
    node, request = api.requests[-1]
    assert isinstance(request, ClientRequest)
    return node, request


def test_retries_keep_client_and_seq_and_follow_redirects() -> None:
    harness, api = one_client()
    node, first = last_request(api)
    assert (first.client, first.seq) == (0, 2)
    api.advance(api.time + 600_000)  # the attempt times out: retried elsewhere
    _, retry = last_request(api)
    assert (retry.client, retry.seq, retry.command) == (0, 2, first.command)
    harness.on_output(1, Redirect(0, 2, 2), api.time)
    api.advance(api.time)
    node, redirected = last_request(api)
    assert node == 2
    assert (redirected.client, redirected.seq) == (0, 2)
    harness.on_output(2, Reply(0, 2, KeyValueStateMachine().apply(redirected.command), 2),
                      api.time)
    [op] = harness.operations()
    assert op.status == OK
    assert op.output is not None
    api.advance(api.time)
    _, second = last_request(api)
    assert (second.client, second.seq) == (0, 3)


def test_an_unknown_outcome_retires_the_client_id() -> None:
    harness, api = one_client(attempts_max=2)
    api.advance(api.time + 600_000)
    api.advance(api.time + 600_000)  # two silent attempts: unknown
    api.advance(api.time)
    ops = harness.operations()
    assert ops[0].status == INFO
    _, request = last_request(api)
    # the new id registers first
    assert request.client != 0 and request.seq == 1 and request.command == b""
    # A late reply to the retired id is no violation, and changes nothing.
    assert harness.on_output(0, Reply(0, 2, b"", 0), api.time) == []
    assert harness.operations()[0].status == INFO


def test_an_operation_refused_by_every_attempt_fails() -> None:
    harness, api = one_client(attempts_max=2, backoff_us=10)
    harness.on_output(0, Rejected(0, 2, "busy"), api.time)
    api.advance(api.time + 10)
    harness.on_output(1, Redirect(0, 2, -1), api.time)
    api.advance(api.time + 10)
    assert harness.operations()[0].status == "fail"
    _, request = last_request(api)
    assert (request.client, request.seq) == (0, 3)  # certain: the id carries on


def test_a_session_error_for_a_current_request_is_a_violation() -> None:
    harness, api = one_client()
    found = harness.on_output(0, Rejected(0, 2, "stale_seq"), api.time)
    assert [v.property for v in found] == ["smr_session"]
    found = harness.on_output(0, Reply(77, 1, b"", 0), api.time)
    assert [v.property for v in found] == ["smr_reply_integrity"]


def test_kv_errors_are_recorded_as_failures() -> None:
    harness, api = one_client()
    kv = KeyValueStateMachine()
    kv.apply(encode_command("incr", b"n", (1 << 63) - 1))
    overflow = kv.apply(encode_command("incr", b"n", 1))  # executed, changed nothing
    harness.on_output(0, Reply(0, 2, overflow, 0), api.time)
    assert harness.operations()[0].status == "fail"


def test_harness_for_knows_services_and_broadcasts() -> None:
    config = ClusterConfig(n=3, f=1, resilience=Resilience.CRASH)
    assert isinstance(harness_for("raft", config), KvHarness)
    assert isinstance(harness_for("raft:snapshot=4", config), KvHarness)
    assert not isinstance(harness_for("beb", ClusterConfig(n=3, f=0, resilience=Resilience.ANY)),
                          KvHarness)


def test_the_nemesis_aims_at_the_believed_leader() -> None:
    config = ClusterConfig(n=3, f=1, resilience=Resilience.CRASH)
    harness = KvHarness(config, leader_hint=lambda: 2)
    api = FakeApi()
    harness.bind(api)
    workload = KvWorkload(clients=1, ops=0, nemesis_every_us=100_000)
    harness.requests(kv_options(1, 3, ("crash",), workload))
    api.advance(1_000_000)
    assert api.crashes
    aimed = sum(crash.node == 2 for crash in api.crashes)
    assert aimed >= len(api.crashes) // 3  # the leader, and sometimes a second node
    api.advance(2_000_001)  # the heal (the safety phase lasts 2 s)
    before = len(api.crashes)
    api.advance(api.time + 3_000_000)
    assert len(api.crashes) == before  # none after the heal


def test_think_time_is_a_flag_that_reproduces() -> None:
    """``--think MS`` sets the clients' pause between operations; the
    reproducing command carries it; a negative pause is refused."""
    import argparse

    from replicaio.sim.kv_cli import add_service_arguments, reproduce_words, workload_of

    parser = argparse.ArgumentParser()
    add_service_arguments(parser)
    args = parser.parse_args(["--think", "75"])
    assert workload_of(args).think_us_max == 75_000
    assert reproduce_words(args)[-2:] == ["--think", "75"]
    assert workload_of(parser.parse_args([])).think_us_max == KvWorkload().think_us_max
    with pytest.raises(UsageError):
        workload_of(parser.parse_args(["--think", "-1"]))
