"""The gateway's deadline against a view change, with real processes on
127.0.0.1 (docs/kv.md, *The gateway's deadline*): Redis clients write through
``replicaio kv gateway`` to a 4-node PBFT cluster, the primary is killed with
SIGKILL, and every write that was in flight must still come back with its
result, not ``-UNKNOWN``: the gateway's deadline covers a multicast attempt
given the node's whole ``request_timeout_ms`` after the first one went to a
dead primary (``GatewayHost.deadline_ms``). Each writer INCRs a counter of its
own, so a write answered twice or applied without an answer shows in the
counter's final value.

Every wait is bounded; the fixture's finalizer kills every process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from test_kv_gateway_cluster import Gateway, pbft_behind_gateway, replication
from test_kv_service_cluster import DEADLINE_S, LOCAL

from replicaio.runtime.local import LocalCluster

WRITERS = 4
# Longer than any deadline of the gateway's: the client never gives up first.
SOCKET_TIMEOUT_S = 30.0


class Writers:
    """``WRITERS`` threads, each INCRementing its own counter through the
    gateway until stopped, recording each answer: its value, or the error."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.oks = [0] * WRITERS
        self.errors: list[tuple[int, str, float]] = []  # writer, message, seconds taken
        self.slowest_s = 0.0
        self.threads = [threading.Thread(target=self.run, args=(index,), daemon=True)
                        for index in range(WRITERS)]

    def run(self, index: int) -> None:
        client = redis.Redis(host=LOCAL, port=self.port, socket_timeout=SOCKET_TIMEOUT_S,
                             socket_connect_timeout=2.0, retry=Retry(NoBackoff(), 0))
        try:
            while not self.stop.is_set():
                began = time.monotonic()
                try:
                    value = client.incr(f"deadline{index}")
                except redis.RedisError as error:
                    with self.lock:
                        self.errors.append((index, str(error), time.monotonic() - began))
                    continue
                taken = time.monotonic() - began
                with self.lock:
                    self.oks[index] += 1
                    self.slowest_s = max(self.slowest_s, taken)
                    if value != self.oks[index]:  # an earlier write applied unanswered
                        self.errors.append((index, f"INCR gave {value}", taken))
                        self.oks[index] = value
        finally:
            client.close()

    def ok_count(self) -> int:
        with self.lock:
            return sum(self.oks)

    def wait_for(self, more: int) -> None:
        target = self.ok_count() + more
        deadline = time.monotonic() + DEADLINE_S + SOCKET_TIMEOUT_S
        while self.ok_count() < target:
            assert time.monotonic() < deadline, (self.ok_count(), target, self.errors[:4])
            time.sleep(0.05)

    def __enter__(self) -> Writers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(SOCKET_TIMEOUT_S + 5)


@pytest.fixture
def pbft(tmp_path: Path) -> Iterator[tuple[LocalCluster, Gateway]]:
    with pbft_behind_gateway(tmp_path) as running:
        yield running


def test_writes_in_flight_when_the_primary_dies_get_their_results(
    pbft: tuple[LocalCluster, Gateway],
) -> None:
    """The primary killed while four clients write: the writes it had taken
    are lost with it; the gateway sends them again to every replica after
    ``MULTICAST_AFTER_S``, the backups' timers replace the primary, and the
    new one orders them. With the gateway's deadline equal to the node's
    ``request_timeout_ms`` (2.5 s here) those writes came back ``-UNKNOWN no
    quorum``; now every one gets its result, and each counter ends at the
    number of answers its writer got."""
    cluster, gateway = pbft
    with Writers(gateway.port) as writers:
        writers.wait_for(20)
        primary = int(replication(cluster, 1)["leader_node"])
        cluster.kill(primary)
        writers.wait_for(40)
    print(f"gateway deadline: slowest write {writers.slowest_s:.2f} s, "
          f"errors {writers.errors}")
    assert writers.errors == [], writers.errors
    client = redis.Redis(host=LOCAL, port=gateway.port, socket_timeout=SOCKET_TIMEOUT_S)
    try:
        for index in range(WRITERS):
            assert int(client.get(f"deadline{index}") or 0) == writers.oks[index], index
    finally:
        client.close()
