"""Checkpoints and garbage collection: Castro and Liskov, OSDI 1999, section 4.3.

SMR snapshots its state (the application and the reply cache) after every
K-th executed number, the same bytes on every correct replica (ADR 0005),
and hands it over with ``compact``. The replica multicasts signed
CHECKPOINT(n, d, i) with d the snapshot's digest. 2f+1 matching CHECKPOINTs
for (n, d) are the checkpoint's certificate: the checkpoint is *stable*. A
replica whose own snapshot at n has digest d then

1. writes the stable checkpoint, its snapshot and its certificate (kept: it is
   the C set of every VIEW-CHANGE until the next one, concord-bft PR 1489),
2. discards the messages, prepared certificates, snapshots and records for
   numbers at or below n, and moves the watermarks: h = n, H = n + L.

A certificate for a number this replica has not reached is the trigger of
state transfer (``state_transfer.py``): the others have discarded what it
would need to catch up message by message (Fabric issue 1120). A
certificate for a digest other than its own means its execution diverged
(non-determinism): it is reported (``CheckpointDisagreement``, counted
``pbft_checkpoint_disagreement``), never silently ignored.

Bounds: CHECKPOINTs are kept for numbers in (h, H] (at most L/K numbers, one
per replica each), and for numbers beyond H only each replica's newest one
(``far``): those tell a replica that it fell more than L behind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from replicaio.protocols.pbft.messages import (
    Checkpoint,
    CheckpointDisagreement,
    checkpoint_digest,
)

if TYPE_CHECKING:
    from replicaio.protocols.pbft.pbft import Pbft


class Checkpoints:
    """Section 4.3 over the shared state of a :class:`Pbft`."""

    def __init__(self, pbft: Pbft) -> None:
        self.pbft = pbft
        self.snapshots: dict[int, tuple[bytes, bytes]] = {}  # own: seq -> (digest, snapshot)
        self.votes: dict[int, dict[int, Checkpoint]] = {}  # seq in (h, H] -> replica -> vote
        self.far: dict[int, Checkpoint] = {}  # replica -> its newest vote beyond H
        self.reported: set[int] = set()  # numbers whose disagreement was reported

    def votes_held(self) -> int:
        return sum(len(votes) for votes in self.votes.values()) + len(self.far)

    # -- own checkpoints --------------------------------------------------------------

    def on_snapshot(self, index: int, snapshot: bytes) -> None:
        """SMR's snapshot after executing ``index``: a checkpoint at multiples of K."""
        pbft = self.pbft
        if index % pbft.params.checkpoint_interval != 0 or index <= pbft.stable_seq:
            return
        assert index <= pbft.executed, "SMR snapshots only what was executed"
        digest = checkpoint_digest(snapshot)
        self.snapshots[index] = (digest, snapshot)
        unsigned = Checkpoint(index, digest, pbft.id, b"")
        checkpoint = Checkpoint(index, digest, pbft.id, pbft.sign(unsigned))
        pbft.send_all(checkpoint)
        self.record(checkpoint)

    # -- CHECKPOINT messages -------------------------------------------------------------

    def ignore_checkpoint(self, checkpoint: Checkpoint) -> str | None:
        pbft = self.pbft
        if checkpoint.seq <= pbft.stable_seq:
            return "checkpoint_old"
        if checkpoint.seq % pbft.params.checkpoint_interval != 0:
            return "checkpoint_not_interval"
        if not pbft.verify(checkpoint.replica, checkpoint):
            return "checkpoint_bad_signature"
        return None

    def on_checkpoint(self, source: int, checkpoint: Checkpoint) -> None:
        """A CHECKPOINT, from its author or forwarded (it is signed)."""
        reason = self.ignore_checkpoint(checkpoint)
        if reason is not None:
            self.pbft.reject(reason)
            return
        self.record(checkpoint)

    def record(self, checkpoint: Checkpoint) -> None:
        pbft = self.pbft
        seq = checkpoint.seq
        if seq > pbft.high:
            known = self.far.get(checkpoint.replica)
            if known is None or known.seq < seq:
                self.far[checkpoint.replica] = checkpoint
            self.check_far()
            return
        votes = self.votes.setdefault(seq, {})
        if checkpoint.replica in votes:
            return  # the first vote of a replica counts
        votes[checkpoint.replica] = checkpoint
        self.check_certificate(seq)

    def certificate(self, votes: list[Checkpoint]) -> tuple[Checkpoint, ...] | None:
        """2f+1 matching votes (by digest), lowest replicas first; or None."""
        by_digest: dict[bytes, list[Checkpoint]] = {}
        for vote in votes:
            by_digest.setdefault(vote.digest, []).append(vote)
        for digest in sorted(by_digest):
            matching = sorted(by_digest[digest], key=lambda vote: vote.replica)
            if len(matching) >= self.pbft.quorum:
                return tuple(matching[: self.pbft.quorum])
        return None

    def check_certificate(self, seq: int) -> None:
        votes = self.votes.get(seq)
        if votes is None:
            return
        proof = self.certificate(list(votes.values()))
        if proof is not None:
            self.on_certificate(seq, proof[0].digest, proof)

    def check_far(self) -> None:
        """2f+1 replicas vouch for a state beyond H: this replica fell behind."""
        by_seq: dict[int, list[Checkpoint]] = {}
        for vote in self.far.values():
            by_seq.setdefault(vote.seq, []).append(vote)
        for seq in sorted(by_seq, reverse=True):
            proof = self.certificate(by_seq[seq])
            if proof is not None:
                self.on_certificate(seq, proof[0].digest, proof)
                return

    # -- certificates ------------------------------------------------------------------------

    def valid_certificate(self, seq: int, digest: bytes, proof: tuple[Checkpoint, ...]) -> bool:
        """Whether ``proof`` certifies ``(seq, digest)``: 2f+1 distinct replicas'
        signed matching CHECKPOINTs (the genesis state, number 0, needs none)."""
        pbft = self.pbft
        if seq == 0:
            return digest == b"" and not proof
        if seq < 0 or seq % pbft.params.checkpoint_interval != 0:
            return False
        signers = set()
        for vote in proof:
            if vote.seq != seq or vote.digest != digest or vote.replica in signers:
                return False
            if not pbft.verify(vote.replica, vote):
                return False
            signers.add(vote.replica)
        return len(signers) >= pbft.quorum

    def on_certificate(self, seq: int, digest: bytes, proof: tuple[Checkpoint, ...]) -> None:
        """A checked certificate for ``(seq, digest)``: make it stable, report a
        disagreement, or fetch the state."""
        pbft = self.pbft
        if seq <= pbft.stable_seq:
            return
        own = self.snapshots.get(seq)
        if own is not None:
            if own[0] == digest:
                self.make_stable(seq, digest, own[1], proof)
            else:
                self.report_disagreement(seq, own[0], digest)
            return
        if seq > pbft.executed:
            pbft.transfer.fetch(seq, digest, proof)
        else:
            # Executed past it without its snapshot (SMR hands over the newest
            # only): a later checkpoint will do.
            pbft.count("pbft_checkpoint_without_snapshot")

    def report_disagreement(self, seq: int, own: bytes, certified: bytes) -> None:
        pbft = self.pbft
        if seq in self.reported:
            return
        if len(self.reported) >= pbft.params.log_size:
            self.reported.clear()
        self.reported.add(seq)
        pbft.count("pbft_checkpoint_disagreement")
        pbft.context.output(CheckpointDisagreement(pbft.id, seq, own, certified))

    def make_stable(
        self, seq: int, digest: bytes, snapshot: bytes, proof: tuple[Checkpoint, ...]
    ) -> None:
        """The checkpoint at ``seq`` is stable: keep it with its certificate,
        discard everything below it, move the window (durable before erasing)."""
        pbft = self.pbft
        assert seq > pbft.stable_seq
        old = pbft.stable_seq
        pbft.context.persist(
            "stable", (seq, digest, snapshot, tuple(pbft.encode(vote) for vote in proof))
        )
        pbft.stable_seq, pbft.stable_digest = seq, digest
        pbft.stable_snapshot, pbft.stable_proof = snapshot, proof
        pbft.erase_below(old, seq)
        for table in (pbft.slots, pbft.prepared_proofs, self.snapshots, self.votes):
            for below in [key for key in table if key <= seq]:
                del table[below]
        for replica in [replica for replica, vote in self.far.items() if vote.seq <= pbft.high]:
            vote = self.far.pop(replica)
            if vote.seq > seq:
                self.votes.setdefault(vote.seq, {}).setdefault(replica, vote)
        pbft.count("pbft_checkpoints_stable")
        pbft.recovery.maybe_recovered()
        pbft.normal.assign()
        for pending in sorted(self.votes):
            self.check_certificate(pending)
