"""The client-side gateway in front of a sharded store over PBFT groups
(``txn-kv-pbft``), with real processes on 127.0.0.1: four node processes, each
a replica of three PBFT groups, and ``replicaio kv gateway`` reading the slot
map from the cluster file.

Through the gateway: single-group commands go to their group as SMR requests
the gateway signs (a session of its own per front session and group) and are
accepted on f+1 matching replies. Bad input (an unknown group, a malformed signed attempt) on
the replicas' ``REPLICAIO.*`` commands is refused and counted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from test_kv_gateway_cluster import Gateway
from test_kv_groups_cluster import connect, key_in

from replicaio.runtime.local import LocalCluster

GROUPS = 3
DEADLINE_S = 60.0
SECTIONS = {
    "protocol.params": {"groups": GROUPS},
    "node": {"tick_us": 10_000},
    "transport": {"reconnect_delay_ms_min": 10, "reconnect_delay_ms_max": 200},
    "host": {"client_service": "resp", "fsync": False},
    "service": {"retry_after_ms": 300, "retry_backoff_ms": 20, "request_timeout_ms": 8000},
}


def until_serving(port: int) -> None:
    """A write in every group answers through the front at ``port``."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        client = connect(port)
        try:
            for group in range(GROUPS):
                client.set(key_in(group, "probe"), "1")
            return
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
        finally:
            client.close()


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Gateway]]:
    directory = tmp_path_factory.mktemp("gateway-groups")
    cluster = LocalCluster(directory / "cluster", protocol="txn-kv-pbft", nodes=4,
                           sections=SECTIONS, auth="ed25519")
    gateway: Gateway | None = None
    try:
        cluster.start_all()
        gateway = Gateway(cluster, directory / "gateway.log")
        until_serving(gateway.port)
        yield cluster, gateway
    finally:
        if gateway is not None:
            gateway.close()
        cluster.close()


def test_single_group_commands_through_the_gateway(
        sharded: tuple[LocalCluster, Gateway]) -> None:
    cluster, gateway = sharded
    client = connect(gateway.port)
    keys = [key_in(group, "one") for group in range(GROUPS)]
    for index, key in enumerate(keys):
        assert client.set(key, f"v{index}") is True
        assert client.incr(key + "-n") == 1
    assert [client.get(key) for key in keys] == ["v0", "v1", "v2"]
    pipe = client.pipeline(transaction=False)  # a pipeline of one group: one request
    pipe.set(keys[1], "a").append(keys[1], "b").get(keys[1])
    assert pipe.execute() == [True, 2, "ab"]
    pipe = client.pipeline(transaction=True)  # MULTI/EXEC of one group: one exec
    pipe.incr(keys[2] + "-n").get(keys[2])
    assert pipe.execute() == [2, "v2"]
    node = connect(cluster.cluster.nodes[3].client.port)  # every replica executed it
    assert node.get(keys[1]) == "ab"
    client.close()
    node.close()


def test_bad_gateway_input_on_a_sharded_node_is_refused(
        sharded: tuple[LocalCluster, Gateway]) -> None:
    cluster, gateway = sharded
    node = redis.Redis(host="127.0.0.1", port=cluster.cluster.nodes[0].client.port,
                       socket_timeout=10.0)
    refusals = [
        ("REPLICAIO.AWAIT", "1", "1"),  # no group on a sharded cluster
        ("REPLICAIO.AWAIT", "1", "1", "7"),  # no group 7
        ("REPLICAIO.AWAIT", "1", "1", "x"),
        ("REPLICAIO.SUBMIT", b"\x00junk", "0"),
        ("REPLICAIO.TXN", b"\x00junk"),
        ("REPLICAIO.TXN",),
    ]
    for argv in refusals:
        with pytest.raises(redis.ResponseError):
            node.execute_command(*argv)
    node.close()
    client = connect(gateway.port)  # the gateway and the node keep serving
    assert client.set(key_in(1, "after"), "1") is True
    client.close()

