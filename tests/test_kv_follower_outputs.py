"""A node's host hands its outputs to the KV front only when a client of that
node can be waiting (``ClientService.expects_outputs``): a follower no client
talks to skips the hand-off of every applied entry's outputs, which its front
would drop; a client on a follower still gets every answer (writes it
forwards, reads by read-index). Three Raft hosts in one process, real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from test_kv_service_resp import DEADLINE_S, LOCAL, run, until

from replicaio.runtime.config import load_cluster_file, render_cluster_file
from replicaio.runtime.host import NodeHost
from replicaio.runtime.kv.service import RespService
from replicaio.runtime.local import free_ports
from replicaio.smr.api import Reply


def test_a_front_expects_outputs_only_while_a_request_of_its_clients_is_open() -> None:
    service = RespService()
    assert not service.expects_outputs()
    service.waiters[7] = object()  # type: ignore[assignment]
    assert service.expects_outputs()
    del service.waiters[7]
    service.gateway_submits.waiting[(0, 7)] = (1, object())  # type: ignore[assignment]
    assert service.expects_outputs()
    service.gateway_submits.waiting.clear()
    service.gateway_submits.attempts[7] = (1, object())  # type: ignore[assignment]
    assert service.expects_outputs()
    service.gateway_submits.attempts.clear()
    service.transactions[7] = (1, object())  # type: ignore[assignment]
    assert service.expects_outputs()


class Recorder:
    """A client service that says whether it expects outputs and records what it gets."""

    def __init__(self, expects: bool) -> None:
        self.expects = expects
        self.got: list[list[Any]] = []

    def expects_outputs(self) -> bool:
        return self.expects

    def on_outputs(self, outputs: list[Any]) -> None:
        self.got.append(list(outputs))


def test_the_host_hands_outputs_over_only_to_a_service_that_expects_them(
    tmp_path: Path,
) -> None:
    host = NodeHost(three_nodes(tmp_path)[0], 1)
    reply = Reply(1, 1, b"", 0, 0, -1)
    for expects in (False, True):
        recorder = Recorder(expects)
        host.service = recorder  # type: ignore[assignment]
        host.release_outputs([reply])
        assert recorder.got == ([[reply]] if expects else [])


def three_nodes(tmp_path: Path) -> tuple[Any, list[int]]:
    ports = free_ports(6)
    (tmp_path / "cluster.key").write_text("5e" * 32 + "\n")
    path = tmp_path / "cluster.toml"
    path.write_text(render_cluster_file(
        protocol="raft", secret_file="cluster.key",
        nodes=[{"id": node, "peer": f"{LOCAL}:{ports[node]}",
                "client": f"{LOCAL}:{ports[3 + node]}", "data_dir": f"node-{node}"}
               for node in range(3)],
        sections={"host": {"client_service": "resp", "fsync": False},
                  "node": {"tick_us": 10_000},
                  "transport": {"reconnect_delay_ms_min": 5, "reconnect_delay_ms_max": 50},
                  "service": {"request_timeout_ms": 3000}},
    ))
    return load_cluster_file(path), ports[3:]


def test_a_follower_without_clients_skips_the_hand_off_and_one_with_a_client_answers(
    tmp_path: Path,
) -> None:
    cluster, client_ports = three_nodes(tmp_path)

    async def scenario() -> None:
        hosts = [NodeHost(cluster, node) for node in range(3)]
        running = [asyncio.get_running_loop().create_task(host.run()) for host in hosts]
        clients: list[aioredis.Redis] = []
        try:
            for host in hosts:
                await asyncio.wait_for(host.ready.wait(), DEADLINE_S)
            clients = [aioredis.Redis(host=LOCAL, port=port, retry=Retry(NoBackoff(), 0))
                       for port in client_ports]
            await until(lambda: clients[0].set("k", "0"), True)  # a leader, wherever
            roles = [(await client.info("replication"))["role"] for client in clients]
            assert roles.count("leader") == 1, roles
            leader = roles.index("leader")
            follower = (leader + 1) % 3
            handed: list[int] = [0, 0, 0]
            for node, host in enumerate(hosts):
                service = host.service
                assert isinstance(service, RespService)
                handed_over = service.on_outputs

                def count(outputs: list[Any], node: int = node,
                          handed_over: Callable[[list[Any]], None] = handed_over) -> None:
                    handed[node] += 1
                    handed_over(outputs)

                service.on_outputs = count  # type: ignore[method-assign]
            outputs_before = hosts[follower].stats["outputs"]
            for value in range(20):  # a client of the leader only
                assert await clients[leader].set("k", str(value)) is True
            await until(lambda: clients[leader].get("k"), b"19")
            await asyncio.sleep(0.2)  # the followers apply the last entries too
            assert hosts[follower].stats["outputs"] > outputs_before  # it had outputs ...
            assert handed[follower] == 0  # ... and no client to hand them to
            assert handed[leader] > 0
            # A client of the follower: a forwarded write and a read-index read.
            assert await clients[follower].set("f", "1") is True
            assert await clients[follower].get("f") == b"1"
            assert await clients[follower].incr("n") == 1
            assert await clients[follower].get("k") == b"19"
            assert handed[follower] > 0
            for client in clients:
                await client.aclose()
        finally:
            for host in hosts:
                host.stop()
            for task in running:
                await asyncio.wait_for(task, DEADLINE_S)

    run(scenario)
