"""Raft's self-audit: what a node keeps derived, recomputed from what it is
derived from, and the per-node invariants of the paper.

Raft keeps several values as fields for speed rather than computing them at
each read (ADR 0047, ADR 0065): the log's ``last_index``, its configuration
history (``config_indexes``) and the configuration in force (``config``,
``config_index``), and ``Membership``'s voters, quorum, identities and peers
for that configuration. Each is refreshed by every method that changes what
it derives from; a path that forgets one leaves a node acting on a stale
value, which the safety checkers mostly do not see (a configuration change
that does not take effect is a liveness matter, often masked). The simulator
calls :func:`audit_raft` (through ``Raft.audit``) on every correct node at the
footprint check's cadence and at the end of a run, and reports each problem as
an ``internal-consistency`` violation (``replicaio.sim.simulator``), so a
swarm finds a forgotten refresh (``raft-config-stale-after-truncate``,
``replicaio.testing.variants.raft``).

Raft's records in the node's storage are audited against its state too
(:func:`audit_durable_records`): garbage a compaction or a replaced snapshot
leaves behind is caught where it appears, not when a disk fills.

The paper's per-node invariants checked here (Ongaro's thesis, figure 3.2 and
section 3.6): a node's current term is at least the term of every entry in its
log; terms never decrease along the log; ``lastApplied <= commitIndex <=`` the
last index of the log.

Not compiled: it runs once per few hundred simulated steps, never live.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from replicaio.protocols.raft.messages import Config
from replicaio.protocols.raft.state import ENTRY_PREFIX, PIECE_PREFIX, entry_name, piece_name

if TYPE_CHECKING:
    from replicaio.protocols.raft.raft import Raft


def audit_raft(raft: Raft) -> list[str]:
    """Every inconsistency between ``raft``'s derived fields and what they derive
    from, and every broken per-node invariant; empty when all hold."""
    problems: list[str] = []
    log = raft.log
    entries = log.entries
    if log.last_index != log.base_index + len(entries):
        problems.append(
            f"log.last_index {log.last_index} != base {log.base_index} + "
            f"{len(entries)} entries"
        )
    if len(log.digests) != len(entries):
        problems.append(f"{len(log.digests)} digests for {len(entries)} entries")
    history = [
        log.base_index + 1 + offset
        for offset, entry in enumerate(entries)
        if entry.config is not None
    ]
    if list(log.config_indexes) != history:
        problems.append(
            f"log.config_indexes {list(log.config_indexes)} != the entries' {history}"
        )
    if history:
        config = entries[history[-1] - log.base_index - 1].config
        index = history[-1]
    else:
        config, index = log.base_config, log.base_index
    if log.config != config or log.config_index != index:
        problems.append(
            f"log.config at {log.config_index} is not the latest in the log (at {index})"
        )
    problems.extend(audit_membership(raft, log.config))
    previous = log.base_term
    for offset, entry in enumerate(entries):
        if entry.term < previous:
            problems.append(f"term {entry.term} at {log.base_index + 1 + offset} after {previous}")
            break
        previous = entry.term
    if entries and raft.hard.term < entries[-1].term:
        problems.append(f"current term {raft.hard.term} below the last entry's {entries[-1].term}")
    if not raft.applied_index <= raft.commit_index <= log.last_index:
        problems.append(
            f"applied {raft.applied_index}, commit {raft.commit_index}, "
            f"last index {log.last_index} out of order"
        )
    problems.extend(audit_durable_records(raft))
    return problems


def audit_durable_records(raft: Raft) -> list[str]:
    """Raft's records in the node's storage are exactly its state's (``state.py``):
    the log's entries after its base, the pieces of the current snapshot, and
    no others. Garbage a compaction or a snapshot left behind (an entry the
    base covers, a piece of a replaced snapshot) is a record no bound of the
    footprint catches by itself until the disk fills; between steps there is
    none (``load`` erases what a crash cut short)."""
    problems: list[str] = []
    log = raft.log
    context = raft.context
    entries = list(context.stored_names(ENTRY_PREFIX))
    expected = log.last_index - log.base_index
    if len(entries) != expected or (entries and (
        entries[0] != entry_name(log.base_index + 1) or entries[-1] != entry_name(log.last_index)
    )):
        shown = f"{entries[0]}..{entries[-1]}" if entries else "none"
        problems.append(
            f"{len(entries)} entry records stored ({shown}) for the log's {expected} "
            f"entries {log.base_index + 1}..{log.last_index}"
        )
    pieces = set(context.stored_names(PIECE_PREFIX))
    mine = {piece_name(log.snapshot_index, piece) for piece in range(log.snapshot_pieces)}
    if pieces != mine:
        problems.append(
            f"snapshot piece records {sorted(pieces - mine)[:4]} stored beyond the "
            f"{log.snapshot_pieces} of the snapshot at {log.snapshot_index}"
            + (f", {sorted(mine - pieces)[:4]} of it missing" if mine - pieces else "")
        )
    return problems


def audit_membership(raft: Raft, config: Config) -> list[str]:
    """``Membership``'s caches against ``config``, when they claim to be derived
    from it (they are refreshed lazily: a cache of another configuration object
    is recomputed at its next read, so it is not stale)."""
    membership = raft.membership
    if membership.cached_config is not config:
        return []
    voters = tuple(node for node, _ in config.voters)
    members = (*config.voters, *config.learners)
    identities: dict[int, int] = {}
    for member, identity in members:
        identities.setdefault(member, identity)
    expected = {
        "voters": voters,
        "quorum": len(voters) // 2 + 1,
        "peers": tuple(sorted(node for node, _ in members if node != raft.id)),
        "identities": identities,
    }
    held = {
        "voters": membership.voter_ids,
        "quorum": membership.quorum_size,
        "peers": membership.peer_ids,
        "identities": membership.member_identities,
    }
    return [
        f"membership's {name} {held[name]!r} != {expected[name]!r} from the configuration"
        for name in expected
        if held[name] != expected[name]
    ]
