"""The gateway's entry from the Redis front (``GatewayHost.try_submit``): what it
refuses and how (counted, told on the loop's next turn, never raised), what it
routes where, and how it absorbs the front's resends of one request: each is
voted on once, sent to every replica once if it stays undecided past
``MULTICAST_AFTER_S``, and absorbed otherwise. The votes themselves (the network)
are replaced by a recorder here; the cluster tests run them for real
(``test_kv_gateway_cluster.py``, ``test_kv_gateway_groups_cluster.py``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from test_runtime_host import cluster_file

from replicaio.core.codec import Codec
from replicaio.runtime import gateway as gateway_module
from replicaio.runtime.config import ClusterFile
from replicaio.runtime.gateway import GatewayHost
from replicaio.runtime.kv.relay import UNGROUPED
from replicaio.runtime.kv.service import RespService
from replicaio.services.txn.protocol import TxnRequest
from replicaio.smr.api import ClientRequest
from replicaio.smr.groups import GroupRequest

CODEC = Codec()


class Unsent(GatewayHost):
    """A gateway whose votes and attempts are recorded instead of sent."""

    def __init__(self, cluster: ClusterFile, service: RespService) -> None:
        super().__init__(cluster, service)
        self.votes: list[tuple[ClientRequest, bool, int]] = []
        self.attempts: list[TxnRequest] = []

    async def vote(self, local: ClientRequest, multicast: bool, group: int = UNGROUPED) -> None:
        self.votes.append((local, multicast, group))

    async def transact(self, local: TxnRequest) -> None:
        self.attempts.append(local)


class Recorded:
    """An :class:`Unsent` gateway and what ``try_submit`` told the front."""

    def __init__(self, host: Unsent) -> None:
        self.host = host
        self.votes = host.votes
        self.attempts = host.attempts
        self.told: list[str | None] = []

    def submit(self, payload: Any) -> bool:
        return self.host.try_submit(payload, self.told.append)

    def counted(self, name: str) -> int:
        return self.host.counters.get(name)


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def make(tmp_path: Path, groups: int = 0) -> Recorded:
    """A gateway of a PBFT cluster (n = 4), of ``groups`` groups if > 0."""
    if groups:
        cluster = cluster_file(tmp_path, 4, protocol="txn-kv-pbft",
                               sections={"protocol.params": {"groups": groups}})
    else:
        cluster = cluster_file(tmp_path, 4, protocol="pbft")
    return Recorded(Unsent(cluster, RespService()))


def request(client: int, seq: int, command: bytes = b"x") -> ClientRequest:
    return ClientRequest(client, seq, command, read_only=False)


def test_bad_input_of_one_group_is_refused_and_counted(tmp_path: Path) -> None:
    async def run() -> None:
        gateway = make(tmp_path)
        try:
            assert gateway.submit(b"\xff not a message")
            assert gateway.submit(CODEC.encode(TxnRequest(1, 1, b"")))  # not sharded
            assert gateway.submit(GroupRequest(0, CODEC.encode(request(1, 1))))
            assert gateway.submit(CODEC.encode(GroupRequest(0, b"")))  # a group, no map
            assert gateway.told == []  # told on the loop's next turn, not inside send
            await settle()
            assert gateway.told == ["bad_request", "not_sharded", "unknown_group",
                                    "unknown_group"]
            assert gateway.counted("gateway_refused_input_bad_request") == 1
            assert gateway.counted("gateway_refused_input_not_sharded") == 1
            assert gateway.counted("gateway_refused_input_unknown_group") == 2
            assert gateway.votes == [] and gateway.attempts == []
        finally:
            gateway.host.close()

    asyncio.run(run())


def test_a_request_is_voted_on_once_then_resends_absorbed_then_multicast_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def run() -> None:
        gateway = make(tmp_path)
        try:
            first = request(7, 1)
            assert gateway.submit(CODEC.encode(first))
            assert gateway.told == [None]  # taken at once
            await settle()
            assert [(r.client, r.seq, m) for r, m, _ in gateway.votes] == [(7, 1, False)]
            gateway.submit(first)  # the front's resend, soon: still being voted on
            await settle()
            assert len(gateway.votes) == 1
            assert gateway.counted("gateway_resends_absorbed") == 1
            monkeypatch.setattr(gateway_module, "MULTICAST_AFTER_S", 0.0)
            gateway.submit(first)  # long undecided: once to every replica
            gateway.submit(first)  # and never again
            await settle()
            assert [m for _, m, _ in gateway.votes] == [False, True]
            assert gateway.counted("gateway_multicasts") == 1
            assert gateway.counted("gateway_resends_absorbed") == 2
            gateway.submit(request(7, 2))  # the client's next request: voted on
            gateway.submit(request(8, 1))  # another client's: its own
            await settle()
            assert [(r.client, r.seq, m) for r, m, _ in gateway.votes][2:] == [
                (7, 2, False), (8, 1, False)]
        finally:
            gateway.host.close()

    asyncio.run(run())


def test_a_sharded_cluster_routes_by_group_and_refuses_what_has_none(tmp_path: Path) -> None:
    async def run() -> None:
        gateway = make(tmp_path, groups=2)
        try:
            assert gateway.host.slots is not None and gateway.host.slots.groups == 2
            gateway.submit(CODEC.encode(request(1, 1)))  # no group: refused
            gateway.submit(GroupRequest(2, CODEC.encode(request(1, 1))))  # no such group
            gateway.submit(GroupRequest(1, b"\x00garbage"))
            gateway.submit(GroupRequest(1, CODEC.encode(TxnRequest(1, 1, b""))))
            await settle()
            assert gateway.told == ["group_required", "unknown_group", "bad_request",
                                    "bad_request"]
            assert gateway.votes == []
            gateway.submit(GroupRequest(1, CODEC.encode(request(1, 1))))
            gateway.submit(GroupRequest(0, CODEC.encode(request(1, 1))))  # its own session
            attempt = TxnRequest(3, 9, CODEC.encode_value([[b"r", b"k", b""]]))
            gateway.submit(CODEC.encode(attempt))
            await settle()
            assert [(r.seq, m, g) for r, m, g in gateway.votes] == [(1, False, 1),
                                                                    (1, False, 0)]
            assert gateway.attempts == [attempt]
            assert gateway.told[4:] == [None, None, None]
        finally:
            gateway.host.close()

    asyncio.run(run())
