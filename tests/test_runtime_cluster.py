"""The live runtime with real node processes on 127.0.0.1: Bracha end to end,
kill -9 and restart of one node and of all nodes, a corrupted WAL, event-log
replay of live nodes, and the cluster/broadcast commands.

Every loop is bounded in time; every process is killed by the fixture's
finalizer whatever happens.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from replicaio.cli import main
from replicaio.protocols.broadcast import Accepted, Delivered
from replicaio.runtime.client import HistoryEnd, StreamClient
from replicaio.runtime.local import LocalCluster, free_port_block, listens_on
from replicaio.storage.file import SEGMENT_RECORDS_START

DEADLINE_S = 20.0
# Fast ticks and reconnects so that a restarted node is caught up quickly.
FAST = {
    "node": {"tick_us": 10_000},
    "transport": {"reconnect_delay_ms_min": 10, "reconnect_delay_ms_max": 200},
}


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    made: list[LocalCluster] = []

    def make(**options: Any) -> LocalCluster:
        options.setdefault("sections", FAST)
        options.setdefault("loops", ("asyncio", "auto"))  # both loops in one cluster
        cluster = LocalCluster(tmp_path / f"cluster{len(made)}", **options)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()


class Watcher:
    """Everything one node streamed to one client connection."""

    def __init__(self, client: StreamClient) -> None:
        self.client = client
        self.delivered: dict[tuple[int, int], list[Delivered]] = {}
        self.accepted: list[Accepted] = []
        self.greeted = False

    def pump(self, timeout_s: float) -> None:
        message = self.client.next_output(timeout_s)
        if type(message) is Delivered:
            self.delivered.setdefault((message.sender, message.seq), []).append(message)
        elif type(message) is Accepted:
            self.accepted.append(message)
        elif type(message) is HistoryEnd:
            self.greeted = True

    def values(self) -> dict[tuple[int, int], bytes]:
        return {key: found[0].value for key, found in self.delivered.items()}

    def fresh(self) -> list[tuple[int, int]]:
        """(sender, seq) of every delivery that was not a recovered re-announcement."""
        return [key for key, found in self.delivered.items() for item in found
                if not item.recovered]


def watch(cluster: LocalCluster, node_id: int) -> Watcher:
    watcher = Watcher(cluster.client(node_id))
    pump_until([watcher], lambda: watcher.greeted, "greeting")
    return watcher


def pump_until(watchers: list[Watcher], done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not done():
        if time.monotonic() > deadline:
            state = {index: sorted(w.delivered) for index, w in enumerate(watchers)}
            raise AssertionError(f"timed out waiting for {what}; delivered: {state}")
        for watcher in watchers:
            watcher.pump(0.01)


def has_deliveries(watcher: Watcher, count: int) -> Callable[[], bool]:
    return lambda: len(watcher.delivered) == count


def broadcast(watcher: Watcher, values: list[bytes]) -> None:
    for value in values:
        watcher.client.request(value)


def test_bracha_cluster_of_processes_delivers_every_broadcast_everywhere(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(nodes=4)
    cluster.start_all()
    watchers = [watch(cluster, node) for node in range(4)]
    sent = {node: [f"v{node}.{k}".encode() for k in range(5)] for node in range(4)}
    for node, watcher in enumerate(watchers):
        broadcast(watcher, sent[node])
    pump_until(watchers, lambda: all(len(w.delivered) == 20 for w in watchers), "20 deliveries")
    expected = {(node, k): sent[node][k] for node in range(4) for k in range(5)}
    for watcher in watchers:
        assert watcher.values() == expected  # agreement and validity, in every process
        assert sorted(watcher.fresh()) == sorted(expected)  # exactly once each
    assert [a.seq for a in watchers[0].accepted] == [0, 1, 2, 3, 4]


def test_a_client_port_another_process_took_moves_the_cluster_to_fresh_ports(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    """A port free when chosen may be bound by a concurrent test run before the
    node binds it: the node exits (address in use), and ``wait_ready`` used to
    take the other process's listener for the node's. A test then talked to that
    process (a cross-group MGET read ``[None, None]``: docs/transactions.md,
    *Reads across groups*). Now the port must be the node's own, and a first
    start moves the cluster to fresh ports."""
    cluster = make_cluster(nodes=4)
    taken = cluster.cluster.nodes[2].client.port
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("127.0.0.1", taken))
        other.listen(8)
        assert listens_on(os.getpid(), taken) is True
        cluster.start_all()
        assert taken not in [entry.client.port for entry in cluster.cluster.nodes]
        assert cluster.runs == dict.fromkeys(range(4), 1)
        assert all(process.poll() is None for process in cluster.processes.values())
        moved = (cluster.directory / "node-2.run-1.log.port-taken").read_text()
        assert "address already in use" in moved
    watchers = [watch(cluster, node) for node in range(4)]
    broadcast(watchers[2], [b"moved"])
    pump_until(watchers, lambda: all(len(w.delivered) == 1 for w in watchers), "1 delivery")


def test_live_event_logs_replay_exactly_like_simulated_ones(
    make_cluster: Callable[..., LocalCluster], capsys: pytest.CaptureFixture[str],
) -> None:
    cluster = make_cluster(nodes=4)
    cluster.start_all()
    watchers = [watch(cluster, node) for node in range(4)]
    for node, watcher in enumerate(watchers):
        broadcast(watcher, [f"r{node}".encode()])
    pump_until(watchers, lambda: all(len(w.delivered) == 4 for w in watchers), "4 deliveries")
    for node in range(4):
        assert cluster.stop(node) == 0  # SIGTERM: clean stop, log flushed
    for node in range(4):
        status = main(["replay", str(cluster.event_log(node, 1)), "--node", str(node), "--json"])
        report = json.loads(capsys.readouterr().out)
        assert status == 0, report["divergence"]
        assert report["matched"] and report["steps"] > 4


def test_kill_9_of_one_node_under_load_then_it_catches_up_and_never_delivers_twice(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(nodes=4)
    cluster.start_all()
    watchers = [watch(cluster, node) for node in range(4)]
    before = {node: [f"a{node}.{k}".encode() for k in range(3)] for node in range(4)}
    for node, watcher in enumerate(watchers):
        broadcast(watcher, before[node])
    # Let node 3 get part of the way, then kill it in the middle of the load: once
    # it has durably accepted its own three broadcasts (so they exist in every
    # life of it) and delivered some, but its SENDs may still be on their way
    # (a host releases a batch's replies before its sends, docs/runtime.md).
    pump_until(watchers[3:], lambda: len(watchers[3].accepted) == 3
               and len(watchers[3].delivered) >= 4, "node 3 under way")
    cluster.kill(3)
    first_life = watchers[3]
    pump_until([first_life], lambda: first_life.client.closed, "node 3's connection to end")
    during = {node: [f"b{node}.{k}".encode() for k in range(3)] for node in range(3)}
    for node in range(3):
        broadcast(watchers[node], during[node])
    # n - f = 3 live nodes keep delivering without node 3 (Bracha, f = 1): every
    # broadcast of nodes 0-2. Node 3's own need its SEND at all three, which a
    # kill -9 may have cut short: those are owed only once it is back.
    live_senders = {(sender, seq) for sender in range(3) for seq in range(6)}
    pump_until(watchers[:3], lambda: all(live_senders <= w.delivered.keys()
                                         for w in watchers[:3]),
               "the 18 broadcasts of nodes 0-2 at nodes 0-2")
    cluster.start(3)
    cluster.wait_ready([3])
    second_life = watch(cluster, 3)
    pump_until([*watchers[:3], second_life],
               lambda: all(len(w.delivered) == 21 for w in [*watchers[:3], second_life]),
               "node 3 to catch up after restart, and its own broadcasts everywhere")
    # It broadcasts again: with a new sequence number, delivered everywhere.
    broadcast(second_life, [b"after"])
    everyone = [*watchers[:3], second_life]
    pump_until(everyone, lambda: all(len(w.delivered) == 22 for w in everyone), "22 deliveries")
    assert [a.seq for a in second_life.accepted] == [3]
    expected = watchers[0].values()
    assert second_life.values() == expected
    assert first_life.values().items() <= expected.items()
    # Never twice: a (sender, seq) is delivered fresh at most once over both lives;
    # what was delivered before the kill comes back only as a recovered re-announcement.
    fresh = first_life.fresh() + second_life.fresh()
    assert len(fresh) == len(set(fresh))
    assert set(fresh) | {key for key, found in second_life.delivered.items()
                         if found[0].recovered} == set(expected)
    for key in first_life.fresh():
        assert all(item.recovered for item in second_life.delivered.get(key, []))


def test_every_delivery_survives_kill_9_of_all_nodes_and_is_reannounced(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(nodes=4)
    cluster.start_all()
    watchers = [watch(cluster, node) for node in range(4)]
    for node, watcher in enumerate(watchers):
        broadcast(watcher, [f"d{node}.{k}".encode() for k in range(3)])
    pump_until(watchers, lambda: all(len(w.delivered) == 12 for w in watchers), "12 deliveries")
    delivered = watchers[0].values()
    for node in range(4):
        cluster.kill(node)
    for node in range(4):
        cluster.start(node)
    cluster.wait_ready(range(4))
    again = [watch(cluster, node) for node in range(4)]
    # A watcher may connect before its node has replayed its deliveries: wait
    # for the re-announcements (no new input has been given yet).
    pump_until(again, lambda: all(len(w.delivered) == 12 for w in again), "re-announcements")
    for watcher in again:
        # Re-announced at start, before any new input: recovered, same values.
        assert watcher.values() == delivered
        assert all(item.recovered for found in watcher.delivered.values() for item in found)
    for node, watcher in enumerate(again):
        broadcast(watcher, [f"e{node}".encode()])
    pump_until(again, lambda: all(len(w.delivered) == 16 for w in again), "16 deliveries")
    assert [(a.seq, a.value) for a in again[2].accepted] == [(3, b"e2")]


def test_raft_with_smr_and_kv_runs_unchanged_on_the_live_runtime(
    make_cluster: Callable[..., LocalCluster], capsys: pytest.CaptureFixture[str],
) -> None:
    import msgpack

    from replicaio.core.codec import Codec
    from replicaio.services.kv.state_machine import encode_command
    from replicaio.smr.api import ClientRequest, Reply

    codec = Codec()
    cluster = make_cluster(protocol="raft", nodes=3)
    cluster.start_all()
    clients = [cluster.client(node) for node in range(3)]

    def call(node: int, client: int, seq: int, command: bytes, read_only: bool) -> list[Any]:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:  # before an election, a request may be refused
            clients[node].request(codec.encode(ClientRequest(client, seq, command, read_only)))
            while time.monotonic() < deadline:
                message = clients[node].next_output(0.5)
                if message is None:
                    break  # no answer: retry with the same (client, seq)
                if type(message) is Reply and (message.client, message.seq) == (client, seq):
                    result: list[Any] = msgpack.unpackb(message.result)
                    return result
                if getattr(message, "client", None) == client:
                    break  # refused or redirected: retry
            time.sleep(0.05)
        raise AssertionError(f"no reply to client {client} seq {seq}")

    for node in range(3):  # followers forward to the leader
        assert call(node, 100 + node, 1, encode_command("put", b"k%d" % node, b"v%d" % node),
                    False)[0] == "ok"
    for node in range(3):
        assert call(node, 200, node + 1, encode_command("get", b"k%d" % ((node + 1) % 3)),
                    True) == ["ok", b"v%d" % ((node + 1) % 3)]
    for node in range(3):
        assert cluster.stop(node) == 0
    for node in range(3):
        assert main(["replay", str(cluster.event_log(node, 1)), "--node", str(node)]) == 0
    assert "every effect matches" in capsys.readouterr().out


def test_a_corrupted_wal_record_in_the_middle_makes_the_node_refuse_to_start(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(nodes=1)
    cluster.start_all()
    watcher = watch(cluster, 0)
    for k in range(3):  # one at a time: several batches in the log
        broadcast(watcher, [f"w{k}".encode()])
        pump_until([watcher], has_deliveries(watcher, k + 1), "a delivery")
    assert cluster.stop(0) == 0
    segments = sorted((cluster.directory / "node-0").glob("wal-*.log"))
    data = bytearray(segments[0].read_bytes())
    data[SEGMENT_RECORDS_START + 5] ^= 0xFF  # inside the checksum of the first record (batch 1)
    segments[0].write_bytes(bytes(data))
    process = cluster.start(0)
    status = process.wait(DEADLINE_S)
    cluster.processes.pop(0)
    output = cluster.stderr_log(0, 2).read_text()
    assert status == 2
    assert "cannot open its storage" in output
    assert "refusing to open" in output
    assert segments[0].name in output
    assert segments[0].read_bytes() == bytes(data)  # a refusal modifies nothing


def test_cluster_up_broadcast_metrics_and_down_commands(tmp_path: Path) -> None:
    directory = tmp_path / "up"
    command = [sys.executable, "-m", "replicaio.cli"]
    try:
        base, up = cluster_up_bracha(command, directory)
        assert up.returncode == 0, up.stderr + up.stdout
        assert "cluster up: 4 bracha nodes" in up.stdout
        sent = subprocess.run(
            [*command, "broadcast", "--config", str(directory / "cluster.toml"), "--node", "2",
             "hello"],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert sent.returncode == 0, sent.stderr + sent.stdout
        report = json.loads(sent.stdout)
        assert report["seq"] == 0 and report["delivered_ms"] > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{base + 8}/metrics", timeout=10) as page:
            metrics = page.read().decode()
        assert 'replicaio_peer_connected{peer="1"} 1.0' in metrics
        assert "replicaio_fsync_seconds_count" in metrics
        assert "replicaio_step_batch_inputs_bucket" in metrics
    finally:
        down = subprocess.run(
            [*command, "cluster", "down", "--data-dir", str(directory)],
            capture_output=True, text=True, timeout=60, check=False,
        )
    assert down.returncode == 0, down.stderr
    assert "4 node process(es) stopped" in down.stdout
    assert not list(directory.glob("*.pid"))


def cluster_up_bracha(command: list[str], directory: Path
                      ) -> tuple[int, subprocess.CompletedProcess[str]]:
    """``cluster up`` of 4 Bracha nodes on a free block of 12 ports. The block
    is free when chosen, but parallel test runs on this machine may take a port
    before the nodes listen: ``cluster up`` then refuses with "already in use"
    (or a node exits for it), and the test takes another block (bounded)."""
    for _ in range(3):
        base = free_port_block(12)
        up = subprocess.run(
            [*command, "cluster", "up", "--protocol", "bracha", "--nodes", "4", "--base-port",
             str(base), "--data-dir", str(directory), "--metrics", "--no-fsync"],
            capture_output=True, text=True, timeout=60, check=False,
        )
        if up.returncode == 0 or "already in use" not in up.stderr + up.stdout:
            return base, up
        subprocess.run([*command, "cluster", "down", "--data-dir", str(directory)],
                       capture_output=True, text=True, timeout=60, check=False)
    return base, up
