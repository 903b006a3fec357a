"""The client-side gateway in front of a sharded store over MinBFT groups
(``txn-kv-minbft``, ``kv up --groups 3 --protocol minbft``), with real
processes on 127.0.0.1: three node processes (n = 2f+1, f = 1), each a replica
of three MinBFT groups with a USIG per group (ADR 0031), and ``replicaio kv
gateway`` reading the slot map from the cluster file. Node 2 is Byzantine
throughout (``replicaio node --byzantine``): its replicas answer clients with
results they gave earlier and withhold half of their UI messages to one peer
in every group, and its transaction driver alters what it is asked and lies
about outcomes.

The gateway does for MinBFT groups what it does for PBFT groups: a
single-group command is a ``GroupRequest`` to its group, accepted on f+1 = 2
matching replies; MULTI/EXEC across groups is an attempt the gateway signs,
accepted on f+1 matching outcomes. The tests are
``test_kv_gateway_groups_cluster.py``'s, run on this cluster (its fixture
``sharded`` here).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_kv_gateway_cluster import Gateway, behind_gateway
from test_kv_gateway_groups_cluster import (  # noqa: F401  (its tests, on MinBFT groups)
    SECTIONS,
    test_bad_gateway_input_on_a_sharded_node_is_refused,
    test_redis_cli_multi_exec_across_groups_through_the_gateway,
    test_single_group_commands_through_the_gateway,
    test_transactions_across_groups_through_the_gateway,
    test_transfers_through_the_gateway_keep_the_total_despite_a_byzantine_node,
    until_serving,
)

from replicaio.runtime.local import LocalCluster

NODES = 3
LIAR = NODES - 1
BEHAVIOUR = "pbft_stale_reads+minbft_withhold+txn_lying_driver+txn_altering_driver"


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Gateway]]:
    directory = tmp_path_factory.mktemp("gateway-minbft-groups")
    cluster = LocalCluster(directory / "cluster", protocol="txn-kv-minbft", nodes=NODES,
                           sections=SECTIONS, auth="ed25519", metrics=True)

    def start() -> None:
        for node in range(NODES):
            cluster.start(node, byzantine=BEHAVIOUR if node == LIAR else None)
        cluster.wait_ready(range(NODES))

    with behind_gateway(cluster, directory / "gateway.log", start) as gateway:
        until_serving(gateway.port)
        yield cluster, gateway
