"""``replicaio ctl --cluster FILE status|health|member|move-leader``: operating a live KV cluster.

Every node of a key-value cluster (``[host] client_service = "resp"``) answers
Redis's ``INFO`` on its client port; ``ctl`` asks each node in turn (a plain
socket, a bounded reply) and reports, per node: reachable or not, its role,
term and leader as the protocol sees them, its commit and applied indexes, its
lag (the highest commit index any node reported minus its applied index), and
the replicaio version it runs. ``status`` prints a table (``--json``: one JSON
object) and exits 0 whatever it finds; ``health`` also reads a key on every
node through the read barrier (a linearizable read: it needs a leader and a
quorum) and exits 0 only if every node answered it, else 1.

``member list`` prints the voters, learners and learners being promoted as
the leader sees them; ``member add|remove|promote N`` and ``move-leader N``
send ``REPLICAIO.ADMIN`` (``runtime/kv/admin.py``) to the leader, which
accepts or refuses the change (exit 1 with its reason, e.g. ``not_caught_up``);
``ctl`` then waits until the leader's configuration (or leadership) shows it.
``snapshot save PATH`` writes a consistent backup of the store (taken by one
node after a linearizable read); ``snapshot restore PATH --out DIR`` makes a NEW
cluster in DIR holding the backup's data, left stopped for ``kv up --data-dir
DIR`` (``runtime/kv/backup.py``, ADR 0020).
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final

from replicaio.cli_common import print_json
from replicaio.core.errors import UsageError
from replicaio.runtime.config import Address, ClusterFile, load_cluster_file

EXIT_OK: Final = 0
EXIT_UNHEALTHY: Final = 1
REPLY_BYTES_MAX: Final = 1 << 20  # an INFO reply, at most
HEALTH_KEY: Final = b"replicaio:health"
BACKUP_BYTES_MAX: Final = 1 << 31  # a backup ctl accepts, at most (the store: 512 MiB)


class ReplyError(Exception):
    """A node answered with a Redis error, or not in RESP."""


@dataclass(slots=True)
class NodeStatus:
    node: int
    address: str
    reachable: bool
    role: str = "?"
    term: int = 0
    leader: int = -1
    commit_index: int = 0
    applied_index: int = 0
    lag: int = 0
    version: str = "?"
    error: str = ""
    healthy: bool | None = None  # health only: the read through the barrier answered
    read_ms: float | None = None
    voters: str = ""
    learners: str = ""
    promoting: str = ""
    groups: str = ""  # a sharded cluster: each group's leader as this node sees it


def command(*words: bytes) -> bytes:
    parts = [b"*%d\r\n" % len(words)]
    for word in words:
        parts.append(b"$%d\r\n%b\r\n" % (len(word), word))
    return b"".join(parts)


def read_reply(stream: BinaryIO) -> bytes | None:
    """One RESP reply of a bulk string, a simple string or nil (what INFO, GET,
    PING answer); ``ReplyError`` for an error or anything else."""
    line = stream.readline(REPLY_BYTES_MAX)
    if not line.endswith(b"\r\n"):
        raise ReplyError("connection closed or reply line too long")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        raise ReplyError(rest.decode("utf-8", "replace"))
    if kind in (b"$", b"_"):
        size = int(rest) if kind == b"$" and rest else -1
        if size < 0:
            return None
        if size > REPLY_BYTES_MAX:
            raise ReplyError("reply too large")
        data = stream.read(size + 2)
        if len(data) != size + 2:
            raise ReplyError("connection closed inside a reply")
        return bytes(data[:-2])
    raise ReplyError(f"unexpected reply {line[:40]!r}")


def ask(address: Address, timeout_s: float, *words: bytes) -> bytes | None:
    with socket.create_connection((address.host, address.port), timeout=timeout_s) as sock:
        sock.sendall(command(*words))
        with sock.makefile("rb") as stream:
            return read_reply(stream)


def parse_info(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            name, _, value = line.partition(":")
            fields[name] = value
    return fields


def integer(fields: dict[str, str], name: str, default: int) -> int:
    try:
        return int(fields.get(name, default))
    except ValueError:
        return default


def node_status(node: int, address: Address, timeout_s: float) -> NodeStatus:
    try:
        reply = ask(address, timeout_s, b"INFO")
    except (OSError, ReplyError, ValueError) as error:
        return NodeStatus(node, str(address), False, error=str(error)[:200])
    fields = parse_info((reply or b"").decode("utf-8", "replace"))
    if "groups" in fields:
        return sharded_status(node, address, fields)
    return NodeStatus(
        node, str(address), True, role=fields.get("role", "?"),
        term=integer(fields, "term", 0), leader=integer(fields, "leader_node", -1),
        commit_index=integer(fields, "commit_index", 0),
        applied_index=integer(fields, "applied_index", 0),
        version=fields.get("replicaio_version", "?"), voters=fields.get("voters", ""),
        learners=fields.get("learners", ""), promoting=fields.get("promoting", ""),
    )


def sharded_status(node: int, address: Address, fields: dict[str, str]) -> NodeStatus:
    """A node of a sharded cluster (INFO's ``# Groups``): its role names the groups it
    leads; term is the highest of its groups'; commit and applied indexes are its
    groups' sums (so lag adds up over them); ``groups`` is ``group:leader`` pairs."""
    count = integer(fields, "groups", 0)
    leaders = [integer(fields, f"group_{group}_leader", -1) for group in range(count)]
    led = [str(group) for group, leader in enumerate(leaders) if leader == node]
    return NodeStatus(
        node, str(address), True,
        role=f"leader of {','.join(led)}" if led else "follower",
        term=max((integer(fields, f"group_{g}_term", 0) for g in range(count)), default=0),
        commit_index=sum(integer(fields, f"group_{g}_commit_index", 0) for g in range(count)),
        applied_index=sum(integer(fields, f"group_{g}_applied_index", 0)
                          for g in range(count)),
        version=fields.get("replicaio_version", "?"),
        groups=" ".join(f"{group}:{leader}" for group, leader in enumerate(leaders)),
    )


def cluster_status(cluster: ClusterFile, timeout_s: float) -> list[NodeStatus]:
    found = [node_status(entry.id, entry.client, timeout_s) for entry in cluster.nodes]
    committed = max((item.commit_index for item in found if item.reachable), default=0)
    for item in found:
        if item.reachable:
            item.lag = max(0, committed - item.applied_index)
    return found


def check_health(cluster: ClusterFile, found: list[NodeStatus], timeout_s: float) -> None:
    """Read a key through every reachable node's read barrier (linearizable: it needs a
    leader and a quorum behind it)."""
    addresses = {entry.id: entry.client for entry in cluster.nodes}
    for item in found:
        if not item.reachable:
            item.healthy = False
            continue
        started = time.perf_counter()
        try:
            ask(addresses[item.node], timeout_s, b"GET", HEALTH_KEY)
        except (OSError, ReplyError, ValueError) as error:
            item.healthy, item.error = False, str(error)[:200]
            continue
        item.healthy = True
        item.read_ms = round((time.perf_counter() - started) * 1000, 2)


def render(found: list[NodeStatus], health: bool) -> str:
    header = ["node", "address", "role", "term", "leader", "commit", "applied", "lag",
              "version"] + (["healthy", "read ms"] if health else [])
    rows = [header]
    for item in found:
        if not item.reachable:
            row = [str(item.node), item.address, "DOWN", "", "", "", "", "", item.error[:40]]
        else:
            leader = item.groups or str(item.leader)  # (sharded: group:leader pairs)
            row = [str(item.node), item.address, item.role, str(item.term), leader,
                   str(item.commit_index), str(item.applied_index), str(item.lag), item.version]
        if health:
            row += ["yes" if item.healthy else "NO",
                    "" if item.read_ms is None else str(item.read_ms)]
        rows.append(row)
    widths = [max(len(row[index]) for row in rows) for index in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths,
                                                                         strict=True)).rstrip()
                     for row in rows)


def load_kv_cluster(name: str | None) -> ClusterFile:
    if name is None:
        raise UsageError("--cluster FILE is required (the cluster's TOML file)")
    path = Path(name)
    cluster = load_cluster_file(path)
    if cluster.host.client_service != "resp":
        raise UsageError(f"{path}: ctl speaks to key-value clusters (client_service = "
                         f"\"resp\"), not {cluster.host.client_service!r}")
    return cluster


def command_ctl(args: argparse.Namespace) -> int:
    cluster = load_kv_cluster(getattr(args, "cluster", None))
    found = cluster_status(cluster, args.timeout)
    health = args.action == "health"
    if health:
        check_health(cluster, found, args.timeout)
    if args.json:
        print_json({"cluster": args.cluster, "protocol": cluster.protocol,
                    "nodes": [asdict(item) for item in found],
                    **({"healthy": all(item.healthy for item in found)} if health else {})})
    else:
        print(render(found, health))
    if health and not all(item.healthy for item in found):
        return EXIT_UNHEALTHY
    return EXIT_OK


def leader_of(found: list[NodeStatus]) -> NodeStatus | None:
    return next((item for item in found if item.reachable and item.role == "leader"), None)


def command_member(args: argparse.Namespace) -> int:
    """``member list|add|remove|promote`` and ``move-leader``."""
    cluster = load_kv_cluster(getattr(args, "cluster", None))
    action = "transfer" if args.action == "move-leader" else args.member_action
    found = cluster_status(cluster, args.timeout)
    leader = leader_of(found)
    if leader is None:
        print("replicaio ctl: no node says it leads: try again, or see ctl status",
              file=sys.stderr)
        return EXIT_UNHEALTHY
    if action == "list":
        report = {"leader": leader.node, "term": leader.term, "voters": leader.voters,
                  "learners": leader.learners, "promoting": leader.promoting}
        if args.json:
            print_json(report)
        else:
            print("\n".join(f"{name}: {value}" for name, value in report.items()))
        return EXIT_OK
    if args.node is None:
        raise UsageError(f"{args.action} needs a node id")
    address = {entry.id: entry.client for entry in cluster.nodes}[leader.node]
    try:
        ask(address, args.timeout, b"REPLICAIO.ADMIN", action.encode(), str(args.node).encode())
    except ReplyError as error:
        print(f"replicaio ctl: {action} {args.node}: {error}", file=sys.stderr)
        return EXIT_UNHEALTHY
    except OSError as error:
        print(f"replicaio ctl: cannot reach the leader {address}: {error}", file=sys.stderr)
        return EXIT_UNHEALTHY
    done = wait_for_change(cluster, action, args.node, args.timeout * 4)
    if args.json:
        print_json({"action": action, "node": args.node, "accepted": True, "visible": done})
    else:
        print(f"{action} {args.node}: accepted by leader {leader.node}"
              + ("" if done else " (not visible yet: see ctl member list)"))
    return EXIT_OK


def wait_for_change(cluster: ClusterFile, action: str, node: int, timeout_s: float) -> bool:
    """Whether the leader's view shows the change within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        leader = leader_of(cluster_status(cluster, 2.0))
        if leader is not None:
            voters = set(filter(None, leader.voters.split(",")))
            learners = set(filter(None, leader.learners.split(",")))
            name = str(node)
            if (action == "transfer" and leader.node == node) or (
                action == "remove" and name not in voters | learners) or (
                action in ("add", "promote") and name in voters) or (
                action == "add_learner" and name in learners):
                return True
        time.sleep(0.1)
    return False


def add_ctl_command(commands: Any) -> None:
    ctl = commands.add_parser(
        "ctl", help="operate a live key-value cluster (status, health, member, move-leader, "
        "snapshot)")
    actions = ctl.add_subparsers(dest="action", required=True)
    ctl.set_defaults(timeout=5.0, json=False)

    def common(parser: argparse.ArgumentParser) -> None:
        # Before or after the action (ctl --cluster F status, ctl status --cluster F).
        parser.add_argument("--cluster", default=argparse.SUPPRESS,
                            help="the cluster's TOML file (required)")
        parser.add_argument("--timeout", type=float, default=argparse.SUPPRESS,
                            help="seconds per node and request (default: 5)")
        parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                            help="one JSON object on stdout")

    common(ctl)

    status = actions.add_parser("status", help="each node's role, term, leader, commit and "
                                "applied index, lag, version")
    health = actions.add_parser("health", help="status, and a linearizable read through "
                                "every node (exit 1 if one fails)")
    for parser in (status, health):
        common(parser)
        parser.set_defaults(handler=command_ctl)
    member = actions.add_parser("member", help="list, add, remove or promote a member")
    common(member)
    member.add_argument("member_action", choices=("list", "add", "add_learner", "remove",
                                                  "promote"))
    member.add_argument("node", type=int, nargs="?", default=None, help="the node id")
    member.set_defaults(handler=command_member)
    move = actions.add_parser("move-leader", help="hand leadership to voter NODE")
    common(move)
    move.add_argument("node", type=int, help="the node id")
    move.set_defaults(handler=command_member, member_action="transfer")
    add_snapshot_commands(actions, common)


def add_snapshot_commands(actions: Any, common: Any) -> None:
    snapshot = actions.add_parser("snapshot", help="save a consistent backup, or restore one "
                                  "into a new cluster")
    which = snapshot.add_subparsers(dest="snapshot_action", required=True)
    save = which.add_parser("save", help="write a consistent backup of the store to PATH")
    common(save)
    save.add_argument("path", help="the backup file to write")
    save.add_argument("--bytes-max", type=int, default=BACKUP_BYTES_MAX,
                      help="refuse a backup larger than this")
    save.set_defaults(handler=command_snapshot_save)
    restore = which.add_parser("restore", help="make a NEW cluster in --out DIR holding the "
                               "backup's data (left stopped: start it with kv up --data-dir DIR)")
    common(restore)
    restore.add_argument("path", help="the backup file to restore")
    restore.add_argument("--out", required=True, help="the new cluster's data directory "
                         "(must be missing or empty)")
    restore.add_argument("--nodes", type=int, default=3, help="the new cluster's size")
    restore.add_argument("--base-port", type=int, default=None,
                         help="the new cluster's base port (kv up's default otherwise)")
    restore.add_argument("--protocol", default="raft", help="the new cluster's service")
    restore.set_defaults(handler=command_snapshot_restore)


def command_snapshot_save(args: argparse.Namespace) -> int:
    from replicaio.runtime.kv.backup import save

    cluster = load_kv_cluster(getattr(args, "cluster", None))
    path = Path(args.path)
    if not path.parent.is_dir():
        raise UsageError(f"{path}: no such directory {path.parent}")
    errors = []
    for entry in cluster.nodes:  # the first node that answers the read barrier
        try:
            header = save(entry.client.host, entry.client.port, path, args.timeout,
                          args.bytes_max)
        except (OSError, UsageError) as error:
            errors.append(f"node {entry.id}: {error}")
            continue
        if args.json:
            print_json({"path": str(path), **header})
        else:
            print(f"snapshot saved to {path}: {header['keys']} keys, {header['bytes']} bytes, "
                  f"applied index {header['applied_index']} (node {header['node']})")
        return EXIT_OK
    print("replicaio ctl: no node saved a snapshot: " + "; ".join(errors), file=sys.stderr)
    return EXIT_UNHEALTHY


def command_snapshot_restore(args: argparse.Namespace) -> int:
    from replicaio.runtime.kv.backup import restore

    if args.nodes < 1:
        raise UsageError("--nodes must be >= 1")
    found = restore(Path(args.path), Path(args.out), args.nodes, args.base_port,
                    args.protocol, args.timeout)
    if args.json:
        print_json(found)
    else:
        print(f"restored {found['keys_restored']} of {found['keys_saved']} keys from "
              f"{found['from']} into a new {found['nodes']}-node cluster in {found['out']}; "
              f"start it with: replicaio kv up --data-dir {found['out']}")
    return EXIT_OK if found["keys_restored"] == found["keys_saved"] else EXIT_UNHEALTHY
