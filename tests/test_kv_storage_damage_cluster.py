"""A damaged log never produces a wrong answer (issue 9, docs/raft.md "A node whose
storage lost writes"), with real node processes, real files and fsync on 127.0.0.1.

* A follower's WAL loses its tail after SIGTERM or kill -9 (the last segment cut
  by 10 bytes or to half, or a flipped bit in its last record): the node warns
  at start (log, ``INFO``, metrics), starts with a new incarnation, recovers from
  its peers, catches up and serves correct reads.
* A follower's WAL has a flipped byte in a record in its middle (later batches
  follow): the node starts anyway, cuts its log back to the intact prefix (the
  rest kept in ``damaged-1/``), reports it, rejoins like a replaced disk and
  recovers what it lost from its peers (protocol-aware recovery).
* The two-fault sequence: a follower loses the tail of its WAL, then the leader
  is killed. No acknowledged write is lost and no read ever answers wrong; the
  cluster may be unavailable until the leader returns.

Every wait is bounded; the fixture's finalizer kills every process.
"""

from __future__ import annotations

import contextlib
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from test_kv_service_cluster import DEADLINE_S, connect, leader_of, make_cluster, port_of

from replicaio.runtime.local import LocalCluster
from replicaio.storage.file import SEGMENT_RECORDS_START, Record, decode_record

__all__ = ["make_cluster"]  # the fixture, shared with test_kv_service_cluster

WARNING = "storage lost writes it may have acknowledged"
# (how the follower stops, what happens to the tail of its log)
DAMAGES = (
    ("sigterm", "cut-10"),
    ("kill", "cut-half"),
    ("sigterm", "flip-last"),
    ("kill", "cut-10"),
    ("sigterm", "cut-half"),
    ("kill", "flip-last"),
)


def info(cluster: LocalCluster, node: int, section: str) -> dict[str, Any]:
    client = connect(port_of(cluster, node))
    try:
        found: dict[str, Any] = client.info(section)
        return found
    finally:
        client.close()


def wait_for(condition: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, OSError):
            if condition():
                return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def write(cluster: LocalCluster, node: int, model: dict[str, str], prefix: str, count: int) -> None:
    """SET ``count`` keys through ``node``, one at a time (many batches), each acknowledged."""
    client = connect(port_of(cluster, node))
    try:
        for number in range(count):
            key, value = f"{prefix}-{number}", f"v-{prefix}-{number}"

            def acknowledged(key: str = key, value: str = value) -> bool:
                return client.set(key, value) is True

            wait_for(acknowledged, f"SET {key}")
            model[key] = value
    finally:
        client.close()


def caught_up(cluster: LocalCluster, node: int, leader: int) -> bool:
    commit = int(info(cluster, leader, "replication")["commit_index"])
    return int(info(cluster, node, "replication")["applied_index"]) >= commit


def get(client: redis.Redis, key: str) -> bytes | None:
    """GET ``key``, retrying refusals and timeouts (bounded)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            found = client.get(key)
            assert not isinstance(found, str)  # connect() leaves decode_responses off
            return found
        except (redis.RedisError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def check_reads(cluster: LocalCluster, node: int, model: dict[str, str]) -> None:
    client = connect(port_of(cluster, node))
    try:
        for key, value in sorted(model.items()):
            found = get(client, key)
            assert found == value.encode(), (node, key, found, value)
    finally:
        client.close()


def last_segment(cluster: LocalCluster, node: int) -> Path:
    return sorted((cluster.directory / f"node-{node}").glob("wal-*.log"))[-1]


def records(path: Path, *, live: bool = False) -> list[Record]:
    """The segment's records, up to its preallocated zeros (a node killed with its
    segment open leaves them); ``live``: of a segment a running node is writing
    (stop at a record still being written)."""
    data = path.read_bytes()
    offset, found = SEGMENT_RECORDS_START, []
    while offset < len(data):
        if data.count(0, offset) == len(data) - offset:
            break  # the zeros written ahead of the log
        decoded = decode_record(data, offset)
        if live and not isinstance(decoded, Record):
            break
        assert isinstance(decoded, Record)
        found.append(decoded)
        offset = decoded.end
    assert found or live
    return found


# A record flipped in the middle of the last segment has at least this many
# batches after it (a damage mid-log, not of the tail).
LATER_BATCHES_MIN = 10


def batches_span(cluster: LocalCluster, node: int) -> int:
    """How many batches the last segment of a running node holds (first to last)."""
    found = records(last_segment(cluster, node), live=True)
    return found[-1].batch - found[0].batch if found else 0


def last_record(path: Path) -> Record:
    return records(path)[-1]


def damage(path: Path, how: str) -> None:
    size = last_record(path).end  # the log's end: the file may run on with zeros
    if how == "cut-10":
        with path.open("r+b") as file:
            file.truncate(size - 10)
    elif how == "cut-half":
        with path.open("r+b") as file:
            file.truncate(size // 2)
    elif how == "flip-middle":  # a record with many later batches after it
        found = records(path)
        # The middle by batch, not by record: a compaction writes a burst of
        # deletes in one batch, and how many batches a run takes moves with
        # how the leader paces its AppendEntries (the caller wrote until the
        # segment held enough of them).
        halfway = (found[0].batch + found[-1].batch) // 2
        middle = next(record for record in found if record.batch >= halfway)
        assert found[-1].batch >= middle.batch + LATER_BATCHES_MIN, (found[0], middle, found[-1])
        data = bytearray(path.read_bytes())
        data[middle.end - 1] ^= 0x10
        path.write_bytes(bytes(data))
    else:
        data = bytearray(path.read_bytes())
        data[last_record(path).end - 1] ^= 0x10
        path.write_bytes(bytes(data))


def stop(cluster: LocalCluster, node: int, how: str) -> None:
    if how == "kill":
        cluster.kill(node)
    else:
        assert cluster.stop(node) == 0


def metric(cluster: LocalCluster, node: int, name: str) -> float:
    address = cluster.cluster.nodes[node].metrics
    assert address is not None
    with urllib.request.urlopen(f"http://{address.host}:{address.port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def test_a_follower_whose_wal_lost_its_tail_warns_recovers_and_reads_right(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(nodes=3, metrics=True)
    cluster.start_all()
    model: dict[str, str] = {}
    for round_, (how_stop, how_damage) in enumerate(DAMAGES):
        damage_a_follower(cluster, model, round_, how_stop, how_damage)
    for node in range(3):
        check_reads(cluster, node, model)


def test_a_follower_whose_wal_is_damaged_mid_log_starts_and_recovers_from_its_peers(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(nodes=3, metrics=True)
    cluster.start_all()
    model: dict[str, str] = {}
    for round_, how_stop in enumerate(("kill", "sigterm")):
        follower = damage_a_follower(cluster, model, round_, how_stop, "flip-middle",
                                     kind="damaged log cut back to its intact prefix")
        quarantine = cluster.directory / f"node-{follower}" / "damaged-1"
        assert [path.suffix for path in quarantine.iterdir()] == [".log"], quarantine
    for node in range(3):
        check_reads(cluster, node, model)


def damage_a_follower(
    cluster: LocalCluster, model: dict[str, str], round_: int, how_stop: str, how_damage: str,
    kind: str = "lost synced writes",
) -> int:
    leader = leader_of(cluster, [0, 1, 2])
    follower = (leader + 1 + round_ % 2) % 3
    write(cluster, leader, model, f"r{round_}", 25)
    wait_for(lambda: caught_up(cluster, follower, leader), "the follower to apply")
    if how_damage == "flip-middle":
        # How many batches 25 writes make on the follower depends on timing (its
        # group commit coalesces AppendEntries under load; its segment may have
        # just rolled over): write on until its last segment holds enough.
        more = 0
        while batches_span(cluster, follower) < 2 * LATER_BATCHES_MIN + 2:
            assert more < 40, f"round {round_}: {more} more writes, too few follower batches"
            write(cluster, leader, model, f"r{round_}-more-{more}", 5)
            wait_for(lambda: caught_up(cluster, follower, leader), "the follower to apply")
            more += 1
    incarnation = int(info(cluster, follower, "server")["incarnation"])
    stop(cluster, follower, how_stop)
    damage(last_segment(cluster, follower), how_damage)
    cluster.start(follower)
    cluster.wait_ready([follower])
    what = f"round {round_}: {how_stop} then {how_damage}"
    # The client port opens just before the start step: wait for its effects.
    log = cluster.stderr_log(follower, cluster.runs[follower])
    wait_for(lambda: WARNING in log.read_text(), f"{what}: the warning in the node's log")
    wait_for(lambda: int(info(cluster, follower, "server")["incarnation"]) > incarnation,
             f"{what}: a new incarnation")
    persistence = info(cluster, follower, "persistence")
    assert persistence["storage_damage"] == kind, (what, persistence)
    wait_for(lambda: metric(cluster, follower, "replicaio_storage_damage") == 1,
             f"{what}: the damage metric")
    # It recovers from its peers: registered again, caught up, right answers.
    wait_for(lambda: int(info(cluster, follower, "replication")["recovering"]) == 0,
             f"{what}: the damaged node to be re-admitted")
    current = leader_of(cluster, [0, 1, 2])
    wait_for(lambda: caught_up(cluster, follower, current), f"{what}: catch-up")
    check_reads(cluster, follower, model)
    return follower


def test_tail_loss_on_a_follower_then_a_leader_crash_loses_no_acknowledged_write(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(nodes=3)
    cluster.start_all()
    leader = leader_of(cluster, [0, 1, 2])
    follower, other = (leader + 1) % 3, (leader + 2) % 3
    model: dict[str, str] = {}
    write(cluster, leader, model, "k", 50)
    wait_for(lambda: caught_up(cluster, follower, leader), "the follower to apply")
    assert cluster.stop(follower) == 0
    damage(last_segment(cluster, follower), "cut-half")
    cluster.kill(leader)  # the second fault: more than 3 nodes tolerate
    cluster.start(follower)
    cluster.wait_ready([follower])
    # Unavailable until the leader returns, but never wrong: every answer is the
    # acknowledged value or a refusal/timeout.
    answers = 0
    for node in (follower, other, follower, other):
        client = redis.Redis(host="127.0.0.1", port=port_of(cluster, node), socket_timeout=3.0,
                             socket_connect_timeout=2.0)
        for key in ("k-0", "k-49"):
            try:
                found = client.get(key)
            except (redis.RedisError, OSError):
                continue
            answers += 1
            assert found == model[key].encode(), (node, key, found)
        client.close()
    cluster.start(leader)
    cluster.wait_ready([leader])
    wait_for(lambda: int(info(cluster, follower, "replication")["recovering"]) == 0,
             "the damaged follower to be re-admitted")
    for node in range(3):
        check_reads(cluster, node, model)
    print(f"{answers} reads answered while a quorum was damaged, all right")
