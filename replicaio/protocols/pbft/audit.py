"""PBFT's self-audit (ADR 0069, ADR 0071): what a replica keeps derived or
bounded, cross-checked against what it derives from, and the per-replica
invariants of the paper.

A replica keeps its message log per sequence number (``slots``), its prepared
certificates (``prepared_proofs``), the CHECKPOINT votes and its own
snapshots, the stable checkpoint with its certificate, and the view-change
state, each changed by several paths (the normal case, garbage collection at
a stable checkpoint, a view change, state transfer, a restart). A path that
forgets one (a garbage collection that keeps one number too many, a view
change that keeps an old view's votes) mostly changes nothing a client sees,
so the safety checkers do not judge it; the simulator asks
:meth:`Pbft.audit <replicaio.protocols.pbft.pbft.Pbft.audit>` every few
hundred steps and at the end of a run, and reports each problem as an
``internal-consistency`` violation (``replicaio.sim.simulator``).

The invariants (Castro and Liskov, OSDI 1999, sections 4.2-4.4; our
docs/pbft.md), each O(window), never O(history):

* the watermarks: the stable checkpoint h is a multiple of K, and
  h <= executed <= H = h + L;
* the log: every slot, prepared certificate, CHECKPOINT vote and own
  snapshot kept is for a number in (h, H] (after garbage collection nothing
  at or below h is kept; nothing is logged above H); each is filed under its
  own number (and a vote under its own replica);
* execution: every number in (h, executed] holds what committed there, and
  the number above ``executed`` has not committed (else it would have been
  executed: execution in order, section 4.2);
* the current view's messages: a slot holds messages of the current view only
  (a view change keeps what committed, nothing else), none while changing
  views; at most one PRE-PREPARE per number; a slot marked prepared holds
  its PRE-PREPARE and 2f matching PREPAREs from distinct backups (recounted),
  and its prepared certificate is that PRE-PREPARE's;
* each prepared certificate kept (the P set of the next VIEW-CHANGE) is one:
  2f PREPAREs matching its PRE-PREPARE from distinct backups of its view;
* the stable checkpoint: its certificate is 2f+1 CHECKPOINTs of distinct
  replicas for (h, its digest) (the genesis state needs none); no number in
  the window holds a certificate for the digest of this replica's own
  snapshot there without being stable (section 4.3: a certified checkpoint
  becomes stable);
* the primary of an active view numbers above every number it pre-prepared;
* the view change: an active replica in view v > 0 holds the NEW-VIEW that
  started v, and no VIEW-CHANGE of its own or for its view; a replica
  changing views holds VIEW-CHANGEs for the view it changes to only, and its
  own (if any) for that view.

Signatures are not checked again (costly, and checked when each message was
taken); neither are snapshots rehashed (O(state)). Bounds on buffers are the
footprint check's (``Pbft.footprint``). Not compiled: it runs once per few
hundred simulated steps, never live.

:func:`audit_window` and :func:`audit_checkpoint_votes` serve MinBFT too
(``replicaio.protocols.minbft.audit``): the window, execution and checkpoint
votes are the same there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from replicaio.protocols.pbft.checkpoint import CheckpointVote, CheckpointVotes
from replicaio.protocols.pbft.messages import PreparedProof

if TYPE_CHECKING:
    from replicaio.protocols.pbft.pbft import Pbft


class AuditedReplica(Protocol):
    """What :func:`audit_window` reads of a PBFT or MinBFT replica."""

    stable_seq: int
    executed: int

    @property
    def high(self) -> int: ...


def audit_window(
    replica: AuditedReplica,
    interval: int,
    slots: Mapping[int, Any],
    committed: Any,
) -> list[str]:
    """The watermarks, the slots' numbers and execution in order, for a replica
    whose slots are ``slots`` (number -> slot with ``seq``) and ``committed``
    tells whether a slot committed."""
    problems: list[str] = []
    low, high, executed = replica.stable_seq, replica.high, replica.executed
    if low < 0 or low % interval:
        problems.append(f"stable checkpoint {low} is not a multiple of K = {interval}")
    if not low <= executed <= high:
        problems.append(f"executed {executed} outside [h, H] = [{low}, {high}]")
    outside: list[int] = []
    misfiled: list[int] = []
    for seq, slot in slots.items():
        if not low < seq <= high:
            outside.append(seq)
        if slot.seq != seq:
            misfiled.append(seq)
    if outside:
        problems.append(f"slots {sorted(outside)[:4]} outside the window ({low}, {high}]")
    if misfiled:
        problems.append(f"slots {sorted(misfiled)[:4]} filed under another number")
    get = slots.get
    for seq in range(low + 1, min(executed, high) + 1):
        slot = get(seq)
        if slot is None or not committed(slot):
            problems.append(f"executed up to {executed} but number {seq} holds nothing committed")
            break
    following = slots.get(executed + 1)
    if following is not None and committed(following):
        problems.append(f"number {executed + 1} committed but not executed")
    return problems


def audit_checkpoint_votes(
    votes_of: CheckpointVotes[Any],
    replica: AuditedReplica,
    interval: int,
    quorum: int,
    stable_digest: bytes,
    stable_proof: Iterable[CheckpointVote],
) -> list[str]:
    """The CHECKPOINT votes held (in the window, each replica's newest beyond
    it), the stable checkpoint's certificate, and that no certified checkpoint
    of this replica's own digest was left unstable."""
    problems: list[str] = []
    low, high = replica.stable_seq, replica.high
    for seq, votes in votes_of.votes.items():
        if not low < seq <= high or seq % interval:
            problems.append(f"checkpoint votes kept for {seq} outside ({low}, {high}]")
            continue
        if any(vote.seq != seq or vote.replica != voter for voter, vote in votes.items()):
            problems.append(f"checkpoint votes for {seq} filed under another number or replica")
            continue
        own = votes_of.snapshots.get(seq)
        if own is None or len(votes) < quorum:
            continue
        certificate = votes_of.certificate(list(votes.values()))
        if certificate is not None and own[0] == certificate[0].digest:
            problems.append(f"checkpoint {seq} certified with this replica's digest, not stable")
    for voter, vote in votes_of.far.items():
        if vote.replica != voter or vote.seq <= high:
            problems.append(
                f"far checkpoint vote of {voter} for {vote.seq} at or below H = {high}"
            )
    proof = tuple(stable_proof)
    if low == 0:
        if proof or stable_digest:
            problems.append("the genesis checkpoint holds a digest or a certificate")
    else:
        signers = {vote.replica for vote in proof}
        if len(signers) != len(proof) or len(signers) < quorum or any(
            vote.seq != low or vote.digest != stable_digest for vote in proof
        ):
            problems.append(
                f"the stable checkpoint {low}'s certificate is not {quorum} matching "
                "CHECKPOINTs of distinct replicas"
            )
    return problems


def audit_pbft(pbft: Pbft) -> list[str]:
    """Every inconsistency between ``pbft``'s derived or bounded state and what
    it derives from, and every broken per-replica invariant; empty when all
    hold (see the module docstring)."""
    params = pbft.params
    interval = params.checkpoint_interval
    low, high = pbft.stable_seq, pbft.high
    slots = pbft.slots
    problems = audit_window(pbft, interval, slots, lambda slot: slot.committed is not None)
    problems.extend(audit_slots(pbft))
    outside = sorted(seq for seq in pbft.prepared_proofs if not low < seq <= high)
    if outside:
        problems.append(f"prepared certificates {outside[:4]} outside ({low}, {high}]")
    backups = pbft.quorum - 1
    n = pbft.n
    for seq, proof in pbft.prepared_proofs.items():
        if not audit_proof(seq, proof, backups, pbft.primary(proof.pre_prepare.view), n):
            problems.append(f"the prepared certificate kept for {seq} is not one")
    checkpoints = pbft.checkpoints
    problems.extend(audit_checkpoint_votes(
        checkpoints, pbft, interval, pbft.quorum, pbft.stable_digest, pbft.stable_proof))
    stale = sorted(seq for seq in checkpoints.snapshots
                   if not low < seq <= pbft.executed or seq % interval)
    if stale:
        problems.append(f"own snapshots {stale[:4]} kept outside ({low}, executed]")
    problems.extend(audit_views(pbft))
    return problems


def audit_proof(seq: int, proof: PreparedProof, backups: int, primary: int, n: int) -> bool:
    """Whether ``proof`` is a prepared certificate for ``seq``: ``backups``
    PREPAREs matching its PRE-PREPARE, of distinct backups (not ``primary``)."""
    pre_prepare = proof.pre_prepare
    if pre_prepare.seq != seq or len(proof.prepares) < backups:
        return False
    view, digest = pre_prepare.view, pre_prepare.digest
    seen = [False] * n
    for prepare in proof.prepares:
        replica = prepare.replica
        if prepare.view != view or prepare.seq != seq or prepare.digest != digest \
                or replica == primary or not 0 <= replica < n or seen[replica]:
            return False
        seen[replica] = True
    return True


def audit_slots(pbft: Pbft) -> list[str]:
    """The current view's messages in the slots (module docstring)."""
    problems: list[str] = []
    view, active = pbft.view, pbft.active
    backups = pbft.quorum - 1
    primary = pbft.primary()
    proofs = pbft.prepared_proofs
    pre_prepared = 0
    for seq, slot in pbft.slots.items():
        pre_prepare = slot.pre_prepare
        prepares, commits = slot.prepares, slot.commits
        if not active:
            if pre_prepare is not None or prepares or commits or slot.prepared:
                problems.append(f"slot {seq} holds messages of a view while changing to {view}")
            continue
        if pre_prepare is not None:
            if pre_prepare.view != view or pre_prepare.seq != seq:
                problems.append(
                    f"slot {seq} holds the PRE-PREPARE of ({pre_prepare.view}, "
                    f"{pre_prepare.seq}) in view {view}"
                )
                continue
            if seq > pre_prepared:
                pre_prepared = seq
        for voter, prepare in prepares.items():
            if prepare.view != view or prepare.seq != seq or prepare.replica != voter:
                problems.append(f"slot {seq} holds a PREPARE of another view, number or replica")
                break
        for voter, commit in commits.items():
            if commit.view != view or commit.seq != seq or commit.replica != voter:
                problems.append(f"slot {seq} holds a COMMIT of another view, number or replica")
                break
        if slot.prepared:
            matching = 0
            if pre_prepare is not None:
                digest = pre_prepare.digest
                for voter, prepare in prepares.items():
                    if prepare.digest == digest and voter != primary:
                        matching += 1
            if matching < backups:
                problems.append(f"slot {seq} prepared on {matching} matching PREPAREs")
            else:
                proof = proofs.get(seq)
                if proof is None or proof.pre_prepare != pre_prepare:
                    problems.append(f"slot {seq} prepared without its prepared certificate")
    normal = pbft.normal
    if active and pre_prepared >= normal.seq_next and pbft.is_primary and not pbft.withholding:
        problems.append(
            f"the primary would number {normal.seq_next}, at or below its PRE-PREPARE "
            f"for {pre_prepared}"
        )
    return problems


def audit_views(pbft: Pbft) -> list[str]:
    """The view-change state against the view (module docstring)."""
    problems: list[str] = []
    view = pbft.view
    changes = pbft.view_changes
    if pbft.active:
        new_view = changes.new_view
        if view > 0 and (new_view is None or new_view.view != view):
            problems.append(f"active in view {view} without the NEW-VIEW that started it")
        if changes.own is not None or changes.for_view:
            problems.append(f"active in view {view} with VIEW-CHANGEs for it held")
        older = sorted(replica for replica, vc in changes.received.items() if vc.view <= view)
        if older:
            problems.append(f"active in view {view} with VIEW-CHANGEs of {older} for it kept")
    else:
        own = changes.own
        if own is not None and own.view != view:
            problems.append(f"changing to view {view} with its own VIEW-CHANGE for {own.view}")
        if any(vc.view != view or vc.replica != replica
               for replica, vc in changes.for_view.items()):
            problems.append(f"VIEW-CHANGEs counted for view {view} of another view or replica")
    if any(vc.replica != replica for replica, vc in changes.received.items()):
        problems.append("a VIEW-CHANGE filed under another replica")
    return problems
