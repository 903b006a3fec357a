"""Checkpoints, garbage collection, and the trigger of state transfer (section 4.3).

SMR snapshots after every K-th number (the same bytes on every correct
replica) and hands it over with ``compact``. The replica multicasts a
UI-certified CHECKPOINT(n, d). f+1 matching CHECKPOINTs from distinct
replicas are a certificate (one of them is correct, so d is the state at n).
A replica whose own snapshot at n has digest d then makes it *stable*:
durably keeps the snapshot, the certificate and its own CHECKPOINT of n (the
start of its VIEW-CHANGE log), then erases the slots, records and own
messages below it. A certificate for a number it has not executed makes it
fetch the state (PBFT's ``StateTransfer``, over this state); a certificate for
a digest other than its own is reported (``CheckpointDisagreement``).

After installing a fetched state a replica certifies its own CHECKPOINT of
it: its VIEW-CHANGE log starts there, and its window (K above its own latest
CHECKPOINT) moves.

Bounds: votes for numbers in (h, H], one per replica each, and each
replica's newest vote beyond H (``far``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from replicaio.protocols.minbft.messages import (
    EMPTY_UI,
    Checkpoint,
    checkpoint_digest,
)
from replicaio.protocols.minbft.usig import UsigAttestation
from replicaio.protocols.pbft.checkpoint import CheckpointVotes

if TYPE_CHECKING:
    from replicaio.protocols.minbft.minbft import Minbft


class Checkpoints(CheckpointVotes[Checkpoint]):
    """Section 4.3 over the shared state of a :class:`Minbft`: UI-certified
    CHECKPOINTs, f+1 of them a certificate."""

    name = "minbft"

    def __init__(self, minbft: Minbft) -> None:
        super().__init__(minbft)
        self.minbft = minbft
        self.own: dict[int, Checkpoint] = {}  # own CHECKPOINTs above h

    def verify_vote(self, vote: Checkpoint) -> bool:
        return self.minbft.verify_ui(vote.replica, vote)

    # -- own checkpoints -------------------------------------------------------------------

    def on_snapshot(self, index: int, snapshot: bytes) -> None:
        minbft = self.minbft
        if index % minbft.params.checkpoint_interval != 0 or index <= minbft.stable_seq:
            return
        assert index <= minbft.executed, "SMR snapshots only what was executed"
        # PBFT's chunked state transfer checks each chunk against this digest.
        digest = checkpoint_digest(snapshot)
        self.snapshots[index] = (digest, snapshot)
        self.certify_own(index, digest)

    def certify_own(self, seq: int, digest: bytes) -> Checkpoint | None:
        """This replica's CHECKPOINT of ``seq`` (its window moves)."""
        minbft = self.minbft
        if seq <= minbft.own_last_checkpoint:
            return self.own.get(seq)
        checkpoint: Checkpoint = minbft.emit(Checkpoint(seq, digest, minbft.id, EMPTY_UI))
        minbft.own_last_checkpoint = seq
        self.own[seq] = checkpoint
        self.record(checkpoint)
        minbft.normal.on_checkpoint_sent()
        return checkpoint

    # -- CHECKPOINT messages -------------------------------------------------------------------

    def on_checkpoint(self, checkpoint: Checkpoint) -> None:
        """A CHECKPOINT its author's stream admitted, or one forwarded (checked here)."""
        minbft = self.minbft
        if checkpoint.seq <= minbft.stable_seq:
            return
        self.record(checkpoint)

    def on_forwarded(self, checkpoint: Checkpoint) -> None:
        if not self.minbft.verify_ui(checkpoint.replica, checkpoint):
            self.minbft.reject("checkpoint_bad_ui")
            return
        self.on_checkpoint(checkpoint)

    def make_stable(
        self, seq: int, digest: bytes, snapshot: bytes, proof: tuple[Checkpoint, ...]
    ) -> None:
        """Keep the checkpoint with its certificate and this replica's own
        CHECKPOINT of it (durably, first), then discard everything below it."""
        minbft = self.minbft
        assert seq > minbft.stable_seq
        own = self.own.get(seq)
        if own is None and seq > minbft.own_last_checkpoint:
            own = self.certify_own(seq, digest)  # a fetched state: certify it as ours
        minbft.context.persist("stable", (
            seq, digest, snapshot, tuple(minbft.encode(vote) for vote in proof),
        ))
        old = minbft.stable_seq
        minbft.stable_seq, minbft.stable_digest = seq, digest
        minbft.stable_snapshot, minbft.stable_proof = snapshot, proof
        if own is not None:
            attestation = minbft.attestations.get(own.ui.counter)
            minbft.context.persist("anchor", (
                minbft.encode(own), tuple(minbft.encode(vote) for vote in proof),
                b"" if attestation is None else minbft.encode(attestation)))
            minbft.own_checkpoint, minbft.anchor_proof = own, proof
            minbft.anchor_attestation = attestation
            # keep the anchor itself too: a peer may still ask for it (its resume point)
            minbft.trim_own_log(min(minbft.log_start(), own.ui.counter))
        for number in range(old + 1, seq + 1):
            for prefix in ("pp", "vt", "cm"):
                minbft.context.erase(f"{prefix}{number}")
        self.snapshots[seq] = (digest, snapshot)
        served = sorted(key for key in self.snapshots if key <= seq)
        for below in served[:-minbft.params.snapshots_served_max]:
            del self.snapshots[below]  # the newest stable ones stay, to serve fetches
        for table in (minbft.slots, self.votes, self.own):
            for below in [key for key in table if key <= seq]:
                del table[below]
        for replica in [replica for replica, vote in self.far.items() if vote.seq <= minbft.high]:
            vote = self.far.pop(replica)
            if vote.seq > seq:
                self.votes.setdefault(vote.seq, {}).setdefault(replica, vote)
        minbft.count("minbft_checkpoints_stable")
        minbft.view_changes.take_decided()  # the NEW-VIEW's numbers the window reaches now
        minbft.normal.assign()
        for pending in sorted(self.votes):
            self.check_certificate(pending)
        minbft.recovery.maybe_recovered()

    def load(self) -> None:
        minbft = self.minbft
        stable = minbft.context.load("stable")
        if stable is None:
            return
        seq, digest, snapshot, proof = stable
        minbft.stable_seq, minbft.stable_digest, minbft.stable_snapshot = seq, digest, snapshot
        minbft.stable_proof = tuple(minbft.codec.decode_as(item, Checkpoint) for item in proof)
        minbft.executed = seq
        anchor = minbft.context.load("anchor")
        if anchor is not None:
            own, anchor_proof = anchor[:2]
            if len(anchor) > 2 and anchor[2]:
                minbft.anchor_attestation = minbft.codec.decode_as(anchor[2], UsigAttestation)
            minbft.own_checkpoint = minbft.codec.decode_as(own, Checkpoint)
            minbft.anchor_proof = tuple(
                minbft.codec.decode_as(item, Checkpoint) for item in anchor_proof)
            minbft.own_last_checkpoint = max(minbft.own_last_checkpoint,
                                             minbft.own_checkpoint.seq)
        for _, (message, _) in minbft.own_log.items():
            if type(message) is Checkpoint and message.seq > seq:
                self.own[message.seq] = message
