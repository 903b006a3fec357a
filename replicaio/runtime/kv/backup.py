"""Backups of a live key-value cluster: ``ctl snapshot save PATH`` and ``ctl snapshot
restore PATH --out DIR`` (the two halves of etcdctl's ``snapshot save|restore``).

**Save.** ``ctl`` sends ``REPLICAIO.SNAPSHOT`` to a node's client port. The node
first runs a linearizable read (the read barrier of every read: it needs a leader
and a quorum), then encodes its replica of the store in the same event loop turn:
the state after at least every write acknowledged before the save began, and a
committed prefix of the log (a replica applies only committed batches), so keys,
types, versions and expiry deadlines are consistent with each other. At most
:data:`SNAPSHOTS_INFLIGHT_MAX` saves run on a node at once (a snapshot is a copy
of the store in memory; another save is answered ``-BUSY``). The file written is::

    replicaio-kv-backup 1\\n
    {"applied_index": ..., "protocol": ..., "sha256": ..., "bytes": ..., ...}\\n
    <the key-value store's snapshot bytes (services/kv/kv_snapshot.py)>

**Restore.** Into a NEW cluster, never over a running one. ``ctl`` checks the file
(header, length, sha256) and decodes it into a local store (which validates it as
every replica validates a snapshot), starts a new cluster in ``--out DIR`` (its own
secret, its own ports), checks that it is empty, writes every key back through the
client port with ordinary commands (``SET``, ``RPUSH``, ``HSET``, ``SADD``,
``ZADD``, then ``PEXPIREAT`` for keys with a deadline), each small enough for one
replicated command and pipelined, checks the key count, and stops it. ``replicaio
kv up --data-dir DIR`` then starts the restored cluster. Keys whose deadline passed
since the save are written and expire at once, as they would have. What is not
carried over: sessions of the old cluster's clients and WATCH versions (a new
cluster's clients and transactions start afresh). See ADR 0020.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final

from replicaio.core.errors import UsageError
from replicaio.runtime.kv.info import store_of
from replicaio.services.kv.resp import Reply, RespError
from replicaio.services.kv.state_machine import KeyValueStateMachine, KvSnapshotError
from replicaio.services.kv.values import Hash, ListValue, SetValue, ZSet, format_number

if TYPE_CHECKING:
    from replicaio.runtime.kv.connection import Connection
    from replicaio.runtime.kv.service import RespService

SNAPSHOT_COMMAND: Final = b"replicaio.snapshot"
MAGIC: Final = b"replicaio-kv-backup 1\n"
HEADER_BYTES_MAX: Final = 4096
SNAPSHOTS_INFLIGHT_MAX: Final = 1
# A restore's commands: items per command and bytes per command, below every bound
# of the front and of SMR (a 64 KiB value alone still fits one command).
RESTORE_ITEMS_MAX: Final = 256
RESTORE_BYTES_MAX: Final = 32 * 1024
RESTORE_PIPELINE_MAX: Final = 64  # commands sent before their replies are read
_inflight = 0


async def run_snapshot(service: RespService, connection: Connection) -> Reply:
    """``REPLICAIO.SNAPSHOT``: this node's store after a linearizable read, as a backup
    file's bytes (see the module docstring)."""
    global _inflight
    from replicaio.services.kv.state_machine import encode_redis

    store = store_of(service.host)
    if not isinstance(store, KeyValueStateMachine):
        return RespError("ERR this node serves no key-value store")
    if _inflight >= SNAPSHOTS_INFLIGHT_MAX:
        return RespError("BUSY a snapshot is being saved on this node; try again")
    _inflight += 1
    try:
        barrier = await service.call(connection, encode_redis("dbsize"), True)
        if isinstance(barrier, RespError):
            return barrier
        payload = store.snapshot()  # this turn: nothing applies in between
        status = service.server_info().get("Replication", {})
    finally:
        _inflight -= 1
    cluster = getattr(service.host, "cluster", None)
    header = {
        "format": 1,
        "protocol": str(getattr(cluster, "protocol", "")),
        "node": service.node_id,
        "applied_index": status.get("applied_index", 0),
        "term": status.get("term", 0),
        "keys": len(store.data),
        "saved_at_ms": time.time_ns() // 1_000_000,
        "bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    return MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + payload


# -- ctl side: a plain RESP client ----------------------------------------------------


def encode_command(*words: bytes) -> bytes:
    parts = [b"*%d\r\n" % len(words)]
    for word in words:
        parts.append(b"$%d\r\n%b\r\n" % (len(word), word))
    return b"".join(parts)


def read_reply(stream: BinaryIO, bulk_bytes_max: int) -> bytes | int | None:
    """One RESP2 reply: a bulk or simple string, an integer or nil; ``UsageError`` with
    the node's message for an error reply."""
    line = stream.readline(HEADER_BYTES_MAX)
    if not line.endswith(b"\r\n"):
        raise UsageError("the node closed the connection or sent a malformed reply")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b":":
        return int(rest)
    if kind == b"-":
        raise UsageError(f"the node answered: {rest.decode('utf-8', 'replace')}")
    if kind == b"$":
        length = int(rest)
        if length < 0:
            return None
        if length > bulk_bytes_max:
            raise UsageError(f"a reply of {length} bytes is over --bytes-max {bulk_bytes_max}")
        body = stream.read(length + 2)
        if len(body) != length + 2:
            raise UsageError("the node closed the connection in the middle of a reply")
        return body[:-2]
    raise UsageError(f"unexpected reply {line[:40]!r}")


def save(host: str, port: int, path: Path, timeout_s: float, bytes_max: int) -> dict[str, Any]:
    """Ask the node at ``host:port`` for a backup and write it to ``path`` (atomically:
    a temporary file, fsync, rename); its header."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(encode_command(b"REPLICAIO.SNAPSHOT"))
        with sock.makefile("rb") as stream:
            found = read_reply(stream, bytes_max)
    if not isinstance(found, bytes):
        raise UsageError(f"the node answered {found!r}, not a snapshot")
    header, _ = parse_backup(found)
    temporary = path.with_name(path.name + ".partial")
    with open(temporary, "wb") as sink:
        sink.write(found)
        sink.flush()
        os.fsync(sink.fileno())
    temporary.replace(path)
    return header


def parse_backup(data: bytes) -> tuple[dict[str, Any], bytes]:
    """(header, store snapshot) of a backup file's bytes; ``UsageError`` unless it is
    one, whole and unaltered."""
    if not data.startswith(MAGIC):
        raise UsageError("not a replicaio key-value backup (bad first line)")
    end = data.find(b"\n", len(MAGIC), len(MAGIC) + HEADER_BYTES_MAX)
    if end < 0:
        raise UsageError("backup header missing or too long")
    try:
        header = json.loads(data[len(MAGIC):end])
    except ValueError as error:
        raise UsageError(f"backup header is not JSON: {error}") from None
    payload = data[end + 1:]
    if not isinstance(header, dict) or header.get("bytes") != len(payload):
        raise UsageError(f"backup truncated: {len(payload)} bytes of "
                         f"{header.get('bytes') if isinstance(header, dict) else '?'}")
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise UsageError("backup damaged: its sha256 does not match its header")
    return header, payload


def load_store(path: Path) -> tuple[dict[str, Any], KeyValueStateMachine]:
    """A backup file as a store, validated as a replica validates a snapshot."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error}") from None
    header, payload = parse_backup(data)
    store = KeyValueStateMachine()
    try:
        store.restore(payload)
    except KvSnapshotError as error:
        raise UsageError(f"{path}: {error}") from None
    return header, store


def chunks(items: list[list[bytes]]) -> Iterator[list[bytes]]:
    """``items`` (each a list of words) grouped within the restore's bounds."""
    group: list[bytes] = []
    size = 0
    for item in items:
        item_size = sum(len(word) for word in item)
        if group and (len(group) >= RESTORE_ITEMS_MAX or size + item_size > RESTORE_BYTES_MAX):
            yield group
            group, size = [], 0
        group.extend(item)
        size += item_size
    if group:
        yield group


def restore_commands(store: KeyValueStateMachine) -> Iterator[list[bytes]]:
    """The ordinary Redis commands that rebuild ``store``'s keys, key by key in byte order."""
    for key in sorted(store.data):
        value = store.data[key]
        if isinstance(value, bytes):
            yield [b"SET", key, value]
        elif isinstance(value, ListValue):
            for group in chunks([[item] for item in value]):
                yield [b"RPUSH", key, *group]
        elif isinstance(value, Hash):
            for group in chunks([[field, item] for field, item in sorted(value.items())]):
                yield [b"HSET", key, *group]
        elif isinstance(value, SetValue):
            for group in chunks([[member] for member in sorted(value)]):
                yield [b"SADD", key, *group]
        elif isinstance(value, ZSet):
            pairs = [[format_number(score), member] for member, score in sorted(value.items())]
            for group in chunks(pairs):
                yield [b"ZADD", key, *group]
        else:  # a value type this restore does not know: a bug here, not in the file
            raise AssertionError(f"no restore for {type(value).__name__}")
        deadline = store.expires.get(key)
        if deadline is not None:
            yield [b"PEXPIREAT", key, str(deadline).encode()]


def write_keys(host: str, port: int, store: KeyValueStateMachine, timeout_s: float) -> int:
    """Write ``store``'s keys into the (empty) cluster at ``host:port``; commands sent."""
    sent = 0
    with socket.create_connection((host, port), timeout=timeout_s) as sock, \
            sock.makefile("rb") as stream:
        sock.sendall(encode_command(b"DBSIZE"))
        if read_reply(stream, HEADER_BYTES_MAX) != 0:
            raise UsageError("the new cluster is not empty: a restore never writes over data")
        pending: list[bytes] = []

        def flush() -> None:
            sock.sendall(b"".join(pending))
            for _ in pending:
                read_reply(stream, HEADER_BYTES_MAX)
            pending.clear()

        for words in restore_commands(store):
            pending.append(encode_command(*words))
            sent += 1
            if len(pending) >= RESTORE_PIPELINE_MAX:
                flush()
        flush()
    return sent


def restore(path: Path, out: Path, nodes: int, base_port: int | None, protocol: str,
            timeout_s: float) -> dict[str, Any]:
    """Restore the backup ``path`` into a new cluster in ``out`` (left stopped)."""
    header, store = load_store(path)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"--out {out}: not empty; a restore makes a NEW cluster")
    up = [sys.executable, "-m", "replicaio.cli", "kv", "up", "--nodes", str(nodes),
          "--data-dir", str(out), "--protocol", protocol, "--json"]
    if base_port is not None:
        up += ["--base-port", str(base_port)]
    started = subprocess.run(up, capture_output=True, text=True, timeout=120, check=False)
    if started.returncode != 0:
        raise UsageError(f"cannot start the new cluster in {out}: "
                         f"{(started.stderr or started.stdout).strip()[-500:]}")
    try:
        from replicaio.runtime.config import load_cluster_file

        client = load_cluster_file(out / "cluster.toml").nodes[0].client
        commands = write_keys(client.host, client.port, store, timeout_s)
        with socket.create_connection((client.host, client.port), timeout=timeout_s) as sock, \
                sock.makefile("rb") as stream:
            sock.sendall(encode_command(b"DBSIZE"))
            keys = read_reply(stream, HEADER_BYTES_MAX)
    finally:
        subprocess.run([sys.executable, "-m", "replicaio.cli", "kv", "down", "--data-dir",
                        str(out)], capture_output=True, timeout=120, check=False)
    return {"from": str(path), "out": str(out), "keys_saved": len(store.data),
            "keys_restored": keys, "commands": commands, "saved_applied_index":
            header.get("applied_index"), "protocol": protocol, "nodes": nodes}
