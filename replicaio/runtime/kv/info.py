"""``INFO`` and ``ROLE`` of the Redis front: what a node says about itself.

INFO's sections follow Redis's names and fields where a tool reads them
(``redis-cli --stat`` reads ``# Keyspace``'s ``keys=``, ``used_memory``,
``connected_clients``, ``blocked_clients``, ``total_commands_processed`` and
``total_connections_received``; ``--bigkeys`` and ``--scan`` use ``SCAN``,
``TYPE`` and the size commands). ``redis_version`` is the Redis compatibility
level of the command set (:data:`REDIS_COMPATIBILITY`), not a Redis build.
Everything is this node's local view, read between steps on its event loop:
``# Keyspace`` and ``used_memory`` come from its replica of the store, which
may lag the leader by the entries it has not applied yet.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Final

from replicaio import __version__
from replicaio.services.kv.resp import Reply
from replicaio.services.kv.status import protocol_status, role_name, storage_info

if TYPE_CHECKING:
    from replicaio.runtime.kv.service import RespService

REDIS_COMPATIBILITY: Final = "7.2.0"  # the Redis version whose commands we follow


def rss_bytes() -> int:
    """This process's resident memory (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def store_of(host: Any) -> Any:
    """This node's replica of the key-value store, if it has one."""
    return getattr(getattr(getattr(host, "core", None), "protocol", None), "state_machine", None)


def human(size: int) -> str:
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.2f}{unit}"
    return f"{size}B"


def members(host: Any) -> dict[str, str | int]:
    """The configuration as this node's protocol sees it (Raft's ``observe()``):
    ``voters``, ``learners`` and ``promoting``, comma-separated node ids."""
    ordering = getattr(getattr(getattr(host, "core", None), "protocol", None), "ordering", None)
    observe = getattr(ordering, "observe", None)
    config = getattr(observe(), "config", None) if callable(observe) else None
    if config is None:
        return {}

    def ids(items: Any) -> str:
        return ",".join(str(item[0] if isinstance(item, tuple) else item) for item in items)

    return {"voters": ids(getattr(config, "voters", ())),
            "learners": ids(getattr(config, "learners", ())),
            "promoting": ids(getattr(config, "promoting", ()))}


def keyspace(store: Any) -> dict[str, str | int]:
    data = getattr(store, "data", None)
    if not isinstance(data, dict) or not data:
        return {}
    expires = len(getattr(store, "expires", {}))
    return {"db0": f"keys={len(data)},expires={expires},avg_ttl=0"}


def server_info(service: RespService) -> dict[str, dict[str, str | int]]:
    host = service.host
    status = protocol_status(host)
    cluster = getattr(host, "cluster", None)
    core = getattr(host, "core", None)
    store = store_of(host)
    used = int(getattr(store, "used_bytes", 0))
    params = getattr(store, "params", None)
    uptime = int(time.monotonic() - service.started)
    return {
        "Server": {
            "redis_version": REDIS_COMPATIBILITY,
            "redis_mode": "standalone",
            "server_name": "replicaio",
            "replicaio_version": __version__,
            "resp_versions": "2,3",
            "process_id": os.getpid(),
            "tcp_port": service.port if service.server is not None else 0,
            "uptime_in_seconds": uptime,
            "uptime_in_days": uptime // 86400,
            "node_id": service.node_id,
            "incarnation": int(getattr(core, "incarnation", 0)),
            "protocol": str(getattr(cluster, "protocol", "unknown")),
            "nodes": int(getattr(cluster, "n", 0)),
        },
        "Clients": {
            "connected_clients": len(service.connections_open),
            "blocked_clients": 0,  # blocking commands are refused
            "maxclients": service.host_params.client_connections_max,
        },
        "Memory": {
            "used_memory": used,  # the store's counted bytes (KvParams.bytes_max bounds it)
            "used_memory_human": human(used),
            "used_memory_rss": rss_bytes(),
            "maxmemory": int(getattr(params, "bytes_max", 0)),
            "maxmemory_policy": "noeviction",
        },
        "Persistence": storage_info(getattr(host, "storage", None)),
        "Stats": {
            "total_connections_received": service.connections_received,
            "evicted_clients": service.clients_evicted,  # idle ones, for a new client
            "total_commands_processed": service.commands_processed,
            "expired_keys_pending": len(getattr(store, "expires", {})),
        },
        "Replication": {
            "role": role_name(host),
            "leader_node": status.get("leader", -1),
            "term": status.get("term", 0),
            "commit_index": status.get("commit_index", 0),
            "applied_index": status.get("applied_index", 0),
            "recovering": status.get("recovering", 0),
            **members(host),
        },
        "Keyspace": keyspace(store),
        **groups_section(status),
    }


def groups_section(status: dict[str, int]) -> dict[str, dict[str, str | int]]:
    """A sharded cluster's ``# Groups``: each group's leader, term, indexes and locks
    as this node sees them (``TxnNode.status``)."""
    if "groups" not in status:
        return {}
    return {"Groups": {name: number for name, number in status.items()
                       if name.startswith("group") or name == "txn_drivers"}}


def role_reply(service: RespService) -> Reply:
    """ROLE: ``master`` for the leader (every node takes writes, but only the
    leader orders them), ``slave`` with the leader's client address otherwise."""
    host = service.host
    status = protocol_status(host)
    applied = status.get("applied_index", 0)
    if role_name(host) == "leader":
        return [b"master", applied, []]
    leader = status.get("leader", -1)
    cluster = getattr(host, "cluster", None)
    nodes = getattr(cluster, "nodes", None) or ()
    address = next((entry.client for entry in nodes if getattr(entry, "id", None) == leader),
                   None)
    if address is None:
        return [b"slave", b"?", -1, b"connect", applied]
    return [b"slave", str(address.host).encode(), int(address.port), b"connected", applied]
