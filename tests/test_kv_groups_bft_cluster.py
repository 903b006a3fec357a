"""A sharded Redis store over BFT groups, each test run on both: PBFT groups
(protocol ``txn-kv-pbft``, four node processes) and MinBFT groups (``txn-kv-minbft``,
``kv up --groups 3 --protocol minbft``: three node processes, n = 2f+1, with a USIG
per group, ADR 0031: one Ed25519 key per node, the group in what each USIG
certifies), on 127.0.0.1, each node hosting a replica of three groups, through
redis-py and redis-cli on the nodes' own Redis ports.

What a node's Redis front does on BFT groups: a command of one group goes to
that group as an SMR request the node signs for its client (the trusted
shortcut, ADR 0028); a transaction across groups is an attempt the node signs
for its client (``SignedTxnRequest``, scheme ``node``), which every group
checks before it locks anything (ADR 0029), voted and decided with
certificates (ADR 0027). Tested: MSET/MGET and MULTI/EXEC across groups apply
whole, WATCH across groups aborts on a change, redis-cli MULTI/EXEC, and
transfers between accounts of every group keep the bank total while a node
is killed with -9 and restarted. The gateway (a client trusting no single node) in front of such a
store: ``test_kv_gateway_groups_cluster.py``; what is MinBFT's own (a wiped USIG
of one group): ``test_kv_groups_minbft_cluster.py``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import redis
from test_kv_groups_cluster import (
    connect,
    key_in,
    multi_exec_across_groups,
    redis_cli_multi_exec,
    transfers_through_a_kill,
)

from replicaio.runtime.local import LocalCluster

GROUPS = 3
DEADLINE_S = 60.0
SECTIONS: dict[str, dict[str, Any]] = {
    "protocol.params": {"groups": GROUPS},
    "node": {"tick_us": 10_000},
    "transport": {"reconnect_delay_ms_min": 10, "reconnect_delay_ms_max": 200},
    "host": {"client_service": "resp", "fsync": False},
    "service": {"retry_after_ms": 300, "retry_backoff_ms": 20, "request_timeout_ms": 8000},
}
ACCOUNTS = [key_in(group, f"bft{index}-") for index in range(2) for group in range(GROUPS)]
BALANCE = 100


@dataclass(frozen=True)
class Kind:
    """A BFT protocol's sharded store: its protocol name, nodes, and the node the
    transfer test kills (not node 0, whose front the fixture probed)."""

    label: str
    protocol: str
    nodes: int
    kill: int


KINDS = [Kind("PBFT", "txn-kv-pbft", 4, kill=3), Kind("MinBFT", "txn-kv-minbft", 3, kill=2)]


T = TypeVar("T")


def settled(call: Callable[[], T]) -> T:
    """``call``, an idempotent command (a read, or the same values written again),
    sent again while the front answers that nothing was applied (``TRYAGAIN``:
    keys still locked by the previous transaction until its groups applied it,
    or no quorum) or that the outcome is unknown (``UNKNOWN``): under load (the
    machine at load 14-16) a group may change views for longer than
    ``request_timeout_ms``, and a test that took the first answer failed on it
    now and then. Each answer sent again is printed (the test's captured output
    says which one, if it still fails)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            return call()
        except redis.ResponseError as error:
            if time.monotonic() > deadline or not (
                    isinstance(error, redis.exceptions.TryAgainError)
                    or str(error).startswith("UNKNOWN")):
                raise
            print(f"sent again after -{error}")
            time.sleep(0.3)


def ports(cluster: LocalCluster) -> list[int]:
    return [entry.client.port for entry in cluster.cluster.nodes]


def until_serving(cluster: LocalCluster, node: int = 0) -> None:
    """A write in every group answers through ``node``'s front."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            client = connect(ports(cluster)[node])
            for group in range(GROUPS):
                client.set(key_in(group, "probe"), "1")
            client.close()
            return
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@pytest.fixture(scope="module", params=KINDS, ids=[kind.label for kind in KINDS])
def kind(request: pytest.FixtureRequest) -> Kind:
    chosen: Kind = request.param
    return chosen


@pytest.fixture(scope="module")
def cluster(kind: Kind, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp(f"{kind.label}-groups"), protocol=kind.protocol,
                      nodes=kind.nodes, sections=SECTIONS) as made:
        made.start_all()
        until_serving(made)
        yield made


def test_transactions_across_groups_apply_whole(cluster: LocalCluster) -> None:
    client = connect(ports(cluster)[1])
    keys = [key_in(group, "multi") for group in range(GROUPS)]
    assert client.mset({key: str(index) for index, key in enumerate(keys)})
    assert client.mget(keys) == ["0", "1", "2"]
    # (another node's replicas executed the same)
    multi_exec_across_groups(client, connect(ports(cluster)[2]))


def test_watch_across_groups_aborts_on_a_change(cluster: LocalCluster) -> None:
    client = connect(ports(cluster)[0])
    other = connect(ports(cluster)[-1])
    a, b = key_in(0, "watch"), key_in(2, "watch")

    def watched() -> None:
        settled(lambda: client.mset({a: "1", b: "1"}))
        pipe = client.pipeline(transaction=True)
        pipe.watch(a, b)
        settled(lambda: other.set(b, "changed"))
        pipe.multi()
        pipe.set(a, "mine")
        pipe.set(b, "mine")
        with pytest.raises(redis.WatchError):
            pipe.execute()

    settled(watched)  # (an EXEC answered TRYAGAIN applied nothing: watched again)
    assert settled(lambda: client.mget([a, b])) == ["1", "changed"]


def test_redis_cli_multi_exec_across_groups(cluster: LocalCluster) -> None:
    redis_cli_multi_exec(ports(cluster)[2], key_in(0, "cli"), key_in(1, "cli"), timeout_s=60)


def test_transfers_across_groups_keep_the_total_through_a_kill(
        kind: Kind, cluster: LocalCluster) -> None:
    transfers_through_a_kill(cluster, ACCOUNTS, BALANCE, kill=kind.kill, label=kind.label,
                             deadline_s=DEADLINE_S)

