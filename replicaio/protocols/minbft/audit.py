"""MinBFT's self-audit (ADR 0069, ADR 0071): what a replica keeps derived or
bounded, cross-checked against what it derives from, and the per-replica
invariants of the paper and of our streams.

Besides what PBFT keeps (the window, the slots, the CHECKPOINT votes and
snapshots, the stable checkpoint: :func:`~replicaio.protocols.pbft.audit.audit_window`
and :func:`~replicaio.protocols.pbft.audit.audit_checkpoint_votes`, shared), a
MinBFT replica keeps one :class:`~replicaio.protocols.minbft.streams.PeerStream`
per peer (the next counter it takes from that peer's USIG, the messages held
above a gap, the view the peer's messages put it in), its own UI-certified
messages since its anchor (``own_log``), its own CHECKPOINTs, and the view
change's commitments. The simulator asks :meth:`Minbft.audit
<replicaio.protocols.minbft.minbft.Minbft.audit>` every few hundred steps and
at the end of a run; each problem is an ``internal-consistency`` violation.

The invariants (Veronese et al., IEEE TC 2013, sections 4.1-4.4; our
docs/minbft.md), each O(window), never O(history):

* the window, execution and the checkpoint votes as PBFT's, with MinBFT's
  quorum (f+1 CHECKPOINTs certify); a committed slot holds its batch;
* every own snapshot kept is of a multiple of K at or below ``executed``, and
  at most ``snapshots_served_max`` at or below h (kept to serve fetches);
* the slots: while changing views only what committed is kept (a slot may
  stay empty); in an active
  view a slot not committed holds commitments of the current view only, and
  one whose PREPARE (or NEW-VIEW choice) and f+1 matching commitments are in
  has committed (section 4.2);
* each peer's stream: messages are taken strictly in counter order, so a
  message held above a gap has a counter above the next one expected (one at
  the next counter would have been taken, one below it was taken already and
  leaks), filed under its own counter and the stream's USIG epoch, at most
  ``held_max`` of them; the stream's views are ordered (the newest NEW-VIEW's
  view and a view marked faulty are at most the peer's view); its latest
  CHECKPOINT is a multiple of K; and the stream was persisted after the step
  that moved it (``rx<peer>``: a restart resumes from it);
* the own log: the USIG's counters from the log's first one up to the USIG's
  current counter, each message filed under its UI's counter (the USIG
  gives every value once, in order: a gap is a message a VIEW-CHANGE cannot
  show); the anchor (the own CHECKPOINT of the stable checkpoint) is in it,
  at or below h; ``own_last_checkpoint`` is the newest own CHECKPOINT in it;
  every own CHECKPOINT kept above h is the one logged at its counter;
* the view change: NEW-VIEW-COMMITs counted are of the current NEW-VIEW,
  filed under their backups (never the primary's); commitments deferred for a
  view not started yet are of one view per peer, above an active replica's
  view; VIEW-CHANGEs kept are filed under their replicas, none below the view
  a replica changes to.

An inert replica (its USIG lost, waiting for the operator) holds nothing to
audit. Not compiled: it runs once per few hundred simulated steps, never live.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from replicaio.protocols.minbft.messages import Checkpoint, Commit
from replicaio.protocols.pbft.audit import audit_checkpoint_votes, audit_window

if TYPE_CHECKING:
    from replicaio.protocols.minbft.minbft import Minbft


def audit_minbft(minbft: Minbft) -> list[str]:
    """Every inconsistency between ``minbft``'s derived or bounded state and
    what it derives from, and every broken per-replica invariant; empty when
    all hold (see the module docstring)."""
    if minbft.usig is None:
        return []
    params = minbft.params
    interval = params.checkpoint_interval
    problems = audit_window(minbft, interval, minbft.slots, lambda slot: slot.committed)
    checkpoints = minbft.checkpoints
    problems.extend(audit_checkpoint_votes(
        checkpoints, minbft, interval, minbft.quorum, minbft.stable_digest,
        minbft.stable_proof))
    low = minbft.stable_seq
    snapshots = checkpoints.snapshots
    if any(seq % interval or seq > minbft.executed for seq in snapshots):
        problems.append(f"own snapshots {sorted(snapshots)[:4]} not of executed checkpoints")
    served = sum(1 for seq in snapshots if seq <= low)
    if served > params.snapshots_served_max:
        problems.append(f"{served} snapshots kept at or below h = {low}")
    problems.extend(audit_slots(minbft))
    problems.extend(audit_streams(minbft))
    problems.extend(audit_own_log(minbft))
    problems.extend(audit_views(minbft))
    return problems


def audit_slots(minbft: Minbft) -> list[str]:
    problems: list[str] = []
    view, active = minbft.view, minbft.active
    quorum = minbft.quorum
    for seq, slot in minbft.slots.items():
        if slot.committed:
            if slot.batch is None:
                problems.append(f"slot {seq} committed without its batch")
            continue
        if not active:
            # (an empty one is made at a restart for a record of an older view)
            if slot.batch is not None or slot.votes:
                problems.append(f"slot {seq} holds what did not commit while changing to "
                                f"view {view}")
            continue
        if any(vote[0] != view for vote in slot.votes.values()) or (
                slot.batch is not None and slot.view != view):
            problems.append(f"slot {seq} holds commitments of another view than {view}")
        elif slot.batch is not None and slot.matching() >= quorum:
            problems.append(f"slot {seq} holds {slot.matching()} matching commitments, "
                            "not committed")
    return problems


def audit_streams(minbft: Minbft) -> list[str]:
    problems: list[str] = []
    interval = minbft.params.checkpoint_interval
    held_max = minbft.params.held_max
    for peer, stream in minbft.streams.items():
        name = f"stream of {peer}"
        if stream.peer != peer:
            problems.append(f"{name} filed under another peer ({stream.peer})")
        if stream.next < 1:
            problems.append(f"{name} expects counter {stream.next}")
        below = sorted(counter for counter in stream.held if counter <= stream.next)
        if below:
            problems.append(
                f"{name} holds counters {below[:4]}, not above the next expected "
                f"{stream.next}"
            )
        if len(stream.held) > held_max:
            problems.append(f"{name} holds {len(stream.held)} messages, above {held_max}")
        if any(message.ui.counter != counter or message.ui.epoch != stream.epoch
               for counter, message in stream.held.items()):
            problems.append(f"{name} holds a message under another counter or epoch")
        if stream.nv_view > stream.view or stream.faulty_view > stream.view:
            problems.append(
                f"{name} in view {stream.view} with its NEW-VIEW's {stream.nv_view} or "
                f"faulty view {stream.faulty_view} above it"
            )
        if stream.last_checkpoint < 0 or stream.last_checkpoint % interval:
            problems.append(f"{name}'s latest CHECKPOINT {stream.last_checkpoint} "
                            f"not a multiple of K = {interval}")
        if stream.dirty:
            problems.append(f"{name} moved and not persisted")
    return problems


def audit_own_log(minbft: Minbft) -> list[str]:
    problems: list[str] = []
    usig = minbft.usig
    assert usig is not None
    own_log = minbft.own_log
    counter = usig.counter
    if own_log:
        first = min(own_log)
        if max(own_log) != counter or len(own_log) != counter - first + 1:
            problems.append(
                f"own log holds {len(own_log)} messages from {first}, not every counter "
                f"up to the USIG's {counter}"
            )
    elif counter > 0:
        problems.append(f"own log empty, the USIG at {counter}")
    misfiled = sorted(key for key, (message, _) in own_log.items() if message.ui.counter != key)
    if misfiled:
        problems.append(f"own messages {misfiled[:4]} filed under another counter")
    checkpoint_seqs = [message.seq for message, _ in own_log.values()
                       if type(message) is Checkpoint]
    newest = max(checkpoint_seqs, default=0)
    anchor = minbft.own_checkpoint
    if anchor is not None:
        kept = own_log.get(anchor.ui.counter)
        if kept is None or kept[0] != anchor or anchor.seq > minbft.stable_seq:
            problems.append(f"the anchor (own CHECKPOINT of {anchor.seq}) is not in the own "
                            f"log at or below h = {minbft.stable_seq}")
    if minbft.own_last_checkpoint != newest:
        problems.append(f"own_last_checkpoint {minbft.own_last_checkpoint} != the own log's "
                        f"newest CHECKPOINT {newest}")
    for seq, own in minbft.checkpoints.own.items():
        kept = own_log.get(own.ui.counter)
        if own.seq != seq or seq <= minbft.stable_seq or kept is None or kept[0] != own:
            problems.append(f"own CHECKPOINT of {seq} kept above h is not the one logged")
    return problems


def audit_views(minbft: Minbft) -> list[str]:
    problems: list[str] = []
    view, active = minbft.view, minbft.active
    changes = minbft.view_changes
    if any(vc.replica != replica for replica, vc in changes.received.items()):
        problems.append("a VIEW-CHANGE filed under another replica")
    if not active and any(vc.view < view for vc in changes.received.values()):
        problems.append(f"VIEW-CHANGEs of views below {view} kept while changing to it")
    new_view = changes.new_view
    if active and new_view is not None:
        header = new_view.header
        primary = minbft.primary(header.view)
        if header.view != view:
            problems.append(f"active in view {view} with the NEW-VIEW of {header.view}")
        if any(commit.replica != replica or replica == primary or commit.header != header
               for replica, commit in changes.new_view_commits.items()):
            problems.append("a NEW-VIEW-COMMIT counted of another NEW-VIEW or replica")
    if any(not 0 <= replica < minbft.n for replica in changes.new_view_votes):
        problems.append(f"certified commitments counted of {sorted(changes.new_view_votes)}")
    for source, kept in minbft.deferred.items():
        views = {item.view if isinstance(item, Commit) else item.header.view for item in kept}
        if len(views) > 1 or len(kept) > minbft.params.held_max or (
                active and any(deferred <= view for deferred in views)):
            problems.append(f"commitments deferred from {source} of views {sorted(views)} "
                            f"in view {view}")
    return problems
