"""Read-only status of the replication protocol under a node, for metrics and ``INFO``.

The hook, in order of preference (all read-only, called on the node's own
event loop between steps, so no lock is needed):

1. the node protocol's ``status() -> Mapping[str, int]``, if it has one;
2. else its ordering protocol's ``status()``;
3. else its ordering protocol's ``observe()`` (Raft's ``RaftView``): term,
   leader, commit and applied indexes, snapshot index, last index, role;
   log length is the entries the log holds (else ``last_index -
   snapshot_index``); the snapshot size is read
   from the log's snapshot bytes when the protocol keeps them;

plus the SMR replica's ``figures()`` (applied index, sessions, pending,
waiting, in-flight batches...) as ``smr_<name>``. A protocol that has none of
them reports nothing; a missing field is simply absent. Names are stable:
they become ``replicaio_protocol_<name>`` gauges.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

VIEW_FIELDS = ("term", "leader", "commit_index", "applied_index", "snapshot_index",
               "last_index", "voted_for", "recovering")


def protocol_status(host: Any) -> dict[str, int]:
    """The status of ``host``'s node protocol now (see the module docstring)."""
    core = getattr(host, "core", None)
    protocol = getattr(core, "protocol", None)
    if protocol is None:
        return {}
    found: dict[str, int] = {}
    hook = getattr(protocol, "status", None)
    ordering = getattr(protocol, "ordering", None)
    ordering_hook = getattr(ordering, "status", None)
    if callable(hook):
        found.update(integers(hook()))
    elif callable(ordering_hook):
        found.update(integers(ordering_hook()))
    else:
        observe = getattr(ordering, "observe", None)
        if callable(observe):
            found.update(from_view(observe(), ordering))
    figures = getattr(getattr(protocol, "replica", None), "figures", None)
    if callable(figures):
        found.update({f"smr_{name}": number for name, number in integers(figures()).items()})
    return found


def from_view(view: Any, ordering: Any) -> dict[str, int]:
    found = {name: getattr(view, name) for name in VIEW_FIELDS
             if type(getattr(view, name, None)) is int}
    role = getattr(view, "role", None)
    if role is not None:
        found["is_leader"] = int(getattr(role, "value", role) == "leader")
    entries = getattr(getattr(ordering, "log", None), "entries", None)
    if isinstance(entries, list):
        found["log_entries"] = len(entries)  # with the window a compaction keeps
    elif "last_index" in found and "snapshot_index" in found:
        found["log_entries"] = found["last_index"] - found["snapshot_index"]
    snapshot = getattr(getattr(ordering, "log", None), "snapshot_data", None)
    if isinstance(snapshot, bytes):
        found["snapshot_bytes"] = len(snapshot)
    return found


def role_name(host: Any) -> str:
    """The protocol role of this node (``leader``, ``follower``...), or ``unknown``."""
    ordering = getattr(getattr(getattr(host, "core", None), "protocol", None), "ordering", None)
    observe = getattr(ordering, "observe", None)
    if not callable(observe):
        return "unknown"
    role = getattr(observe(), "role", None)
    return str(getattr(role, "value", role)) if role is not None else "unknown"


def integers(values: Mapping[str, Any]) -> dict[str, int]:
    return {str(name): number for name, number in values.items() if type(number) is int}


def storage_info(storage: Any) -> dict[str, str | int]:
    """INFO's ``Persistence`` section: what the storage found lost at this start."""
    if storage is None:
        return {}
    damage = getattr(storage, "damage", None)
    return {
        "storage_damage": "none" if damage is None else str(damage.kind),
        "storage_damage_detail": "" if damage is None else str(damage.detail),
        "storage_bytes_discarded": int(getattr(storage, "torn_bytes_discarded", 0)),
        "storage_epoch": int(getattr(storage, "epoch", 0)),
        "wal_bytes": int(getattr(storage, "wal_bytes", 0)),
    }
