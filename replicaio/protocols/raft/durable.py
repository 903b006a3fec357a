"""What Raft's records on a disk hold, read from outside the node: the
simulator's god's-eye check of the commit rule's premise.

Section 5.3: "a log entry is committed once the leader that created the
entry has replicated it on a majority of the servers", and the whole safety
argument (5.4: leader completeness) rests on that majority *durably* holding
the entry. A leader decides it from its match indexes, which only the
acknowledgements it counted feed; nothing inside the protocol can tell when
that bookkeeping is wrong (a quorum-th largest match taken from an unsorted
list commits an index only the leader holds, and the run stays safe unless
the leader then dies before the entry spreads). The simulator holds every
node's disk, so at each ``LeaderCommitted`` it can ask the fact itself
(:func:`commit_not_durable`), property ``commit_durable_quorum``:

* a voter *holds* entry ``(index, term)`` when its durable records have that
  entry (``e:<index>`` of that term), or a snapshot at ``index`` of that
  term, or a snapshot beyond ``index`` (it covers a committed prefix; its
  contents are the applied digests' business);
* voters are those of the leader's latest configuration (the one Raft counts
  with, thesis 4.1: in force once appended), with the identity of the disk
  the configuration registers for them (``UNREGISTERED`` accepts any): a node
  whose disk was replaced holds nothing for its old identity. Learners never
  count. While the latest configuration entry lies beyond the committed index
  (appended after it, in the same step or since), a majority of the one it
  replaced is accepted too: single-server changes, whose majorities overlap;
* the leader's own copy counts only when durable (it counts itself up to its
  synced index only, ``Replication.self_match_index``; ADR 0024);
* fault model: the disks hold what was synced; a node whose disk lost synced
  writes (a storage fault the run injected) counts as holding (``lost``):
  what it acknowledged may be gone, which Raft survives by giving that disk
  a new identity (``membership.py``), not by the majority at commit time.

Pure reads of plain data: no node state changes, nothing is written.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

from replicaio.core.codec import Codec
from replicaio.interfaces.durable import DurableView
from replicaio.protocols.raft.messages import UNREGISTERED, Config, LeaderCommitted
from replicaio.protocols.raft.state import entry_name

if TYPE_CHECKING:
    from replicaio.protocols.raft.raft import Raft

COMMIT_DURABLE_QUORUM = "commit_durable_quorum"


def holds(records: Mapping[str, bytes], prefix: str, codec: Codec, index: int, term: int) -> bool:
    """Whether the durable ``records`` (Raft's slice under ``prefix``) hold
    entry ``(index, term)``, as an entry or inside a snapshot."""
    value = records.get(prefix + entry_name(index))
    if value is not None:
        entry: Any = codec.decode_value(value)  # (term, data, config): state.py
        if entry[0] == term:
            return True
    snapshot = records.get(prefix + "snapshot")
    if snapshot is None:
        return False
    stored: Any = codec.decode_value(snapshot)  # (index, term, digest, config, data, ...)
    snapshot_index, snapshot_term = int(stored[0]), int(stored[1])
    return snapshot_index > index or (snapshot_index == index and snapshot_term == term)


def disk_identity(records: Mapping[str, bytes], prefix: str, codec: Codec) -> int | None:
    """The disk identity Raft drew on this disk (``None``: never started on it)."""
    value = records.get(prefix + "identity")
    if value is None:
        return None
    stored: Any = codec.decode_value(value)  # (identity, joiner): raft.py, start
    return int(stored[0])


def holders(
    config: Config, index: int, term: int, records_of: Callable[[int], Mapping[str, bytes]],
    prefix: str, codec: Codec, lost: Collection[int],
) -> list[int]:
    """The voters of ``config`` whose disks (the registered ones) hold ``(index, term)``."""
    found = []
    for node, registered in config.voters:
        if node in lost:
            found.append(node)
            continue
        records = records_of(node)
        if registered != UNREGISTERED and disk_identity(records, prefix, codec) != registered:
            continue  # another disk than the configuration's: its copy does not count
        if holds(records, prefix, codec, index, term):
            found.append(node)
    return found


def commit_not_durable(
    output: LeaderCommitted, latest: Config, replaced: Config | None,
    records_of: Callable[[int], Mapping[str, bytes]], prefix: str, codec: Codec,
    lost: Collection[int],
) -> str | None:
    """Why ``output`` committed an entry no majority durably holds, or ``None``.
    ``latest``: the leader's latest configuration; ``replaced``: the one before
    it, when the latest was appended beyond the committed index (else None)."""
    index, term = output.index, output.entry_term
    best: tuple[list[int], Config] | None = None
    for config in (latest, replaced):
        if config is None:
            continue
        found = holders(config, index, term, records_of, prefix, codec, lost)
        if 2 * len(found) > len(config.voters):
            return None
        if best is None:
            best = (found, config)
    assert best is not None
    found, config = best
    voters = [node for node, _ in config.voters]
    return (
        f"node {output.node}, leader of term {output.term}, committed index {index} "
        f"(term {term}), but only voters {found} of {voters} durably hold it"
        + ("" if replaced is None else " (nor a majority of the configuration it replaced)")
    )


def check_commit(
    output: LeaderCommitted, raft: Raft, view: DurableView, prefix: str
) -> list[tuple[str, str]]:
    """``commit_durable_quorum`` at ``output``, which ``raft`` (the leader's
    live object, for its configurations) just decided, in the step's effects
    (the host has not synced the step's writes yet: the leader counts its own
    copy only once durable); ``prefix``: the storage keys of Raft's slice."""
    log = raft.log
    replaced = None
    if log.config_index > output.index:  # appended after the committed index (same step)
        replaced = log.config_at(log.config_index - 1)
    problem = commit_not_durable(
        output, log.config, replaced, view.records, prefix, raft.context.node.codec, view.lost()
    )
    return [] if problem is None else [(COMMIT_DURABLE_QUORUM, problem)]
