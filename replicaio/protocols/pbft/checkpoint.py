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

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from replicaio.core.context import Context
from replicaio.protocols.pbft.messages import (
    Checkpoint,
    CheckpointDisagreement,
    checkpoint_digest,
)

if TYPE_CHECKING:
    from replicaio.protocols.pbft.pbft import Pbft


class CheckpointVote(Protocol):
    """What a CHECKPOINT says, whatever vouches for it (a signature, a UI)."""

    @property
    def seq(self) -> int: ...
    @property
    def digest(self) -> bytes: ...
    @property
    def replica(self) -> int: ...


class CheckpointParams(Protocol):
    @property
    def checkpoint_interval(self) -> int: ...
    @property
    def log_size(self) -> int: ...


class StateFetcher(Protocol):
    def fetch(self, seq: int, digest: bytes, proof: tuple[Any, ...]) -> None: ...


class CheckpointHost(Protocol):
    """The replica state the checkpoint votes read (PBFT's and MinBFT's)."""

    id: int
    context: Context
    stable_seq: int
    executed: int

    @property
    def params(self) -> CheckpointParams: ...
    @property
    def high(self) -> int: ...
    @property
    def quorum(self) -> int: ...
    @property
    def transfer(self) -> StateFetcher: ...
    def count(self, counter: str, by: int = 1) -> None: ...


V = TypeVar("V", bound=CheckpointVote)


class CheckpointVotes(ABC, Generic[V]):
    """The part of section 4.3 PBFT and MinBFT share: CHECKPOINT votes held in
    the window (h, H] (one per replica and number, the first counts) and each
    replica's newest beyond H (``far``); ``quorum`` matching votes are a
    certificate; a certificate makes this replica's own checkpoint stable,
    reports a disagreement with its own digest, or fetches the state it has not
    reached. The protocol says what vouches for a vote (``verify_vote``), how a
    checkpoint becomes stable (``make_stable``) and prefixes its counters
    (``name``). Bounded: at most L/K numbers of n votes, n far votes, and
    ``log_size`` reported numbers."""

    name = ""  # the counters' prefix

    def __init__(self, host: CheckpointHost) -> None:
        self.host = host
        self.snapshots: dict[int, tuple[bytes, bytes]] = {}  # own: seq -> (digest, snapshot)
        self.votes: dict[int, dict[int, V]] = {}  # seq in (h, H] -> replica -> vote
        self.far: dict[int, V] = {}  # replica -> its newest vote beyond H
        self.reported: set[int] = set()  # numbers whose disagreement was reported

    @abstractmethod
    def verify_vote(self, vote: V) -> bool:
        """Whether ``vote`` is vouched for by its replica (never raises)."""

    @abstractmethod
    def make_stable(self, seq: int, digest: bytes, snapshot: bytes, proof: tuple[V, ...]) -> None:
        """The checkpoint at ``seq`` is stable (this replica's snapshot has ``digest``)."""

    def votes_held(self) -> int:
        return sum(len(votes) for votes in self.votes.values()) + len(self.far)

    def record(self, checkpoint: V) -> None:
        host = self.host
        seq = checkpoint.seq
        if seq > host.high:
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

    def certificate(self, votes: list[V]) -> tuple[V, ...] | None:
        """``quorum`` matching votes (by digest), lowest replicas first; or None."""
        by_digest: dict[bytes, list[V]] = {}
        for vote in votes:
            by_digest.setdefault(vote.digest, []).append(vote)
        quorum = self.host.quorum
        for digest in sorted(by_digest):
            matching = sorted(by_digest[digest], key=lambda vote: vote.replica)
            if len(matching) >= quorum:
                return tuple(matching[:quorum])
        return None

    def check_certificate(self, seq: int) -> None:
        votes = self.votes.get(seq)
        if votes is None:
            return
        proof = self.certificate(list(votes.values()))
        if proof is not None:
            self.on_certificate(seq, proof[0].digest, proof)

    def check_far(self) -> None:
        """A quorum vouches for a state beyond H: this replica fell behind."""
        by_seq: dict[int, list[V]] = {}
        for vote in self.far.values():
            by_seq.setdefault(vote.seq, []).append(vote)
        for seq in sorted(by_seq, reverse=True):
            proof = self.certificate(by_seq[seq])
            if proof is not None:
                self.on_certificate(seq, proof[0].digest, proof)
                return

    # -- certificates ------------------------------------------------------------------------

    def valid_certificate(self, seq: int, digest: bytes, proof: tuple[V, ...]) -> bool:
        """Whether ``proof`` certifies ``(seq, digest)``: ``quorum`` distinct
        replicas' vouched-for matching CHECKPOINTs (the genesis state, number 0,
        needs none)."""
        host = self.host
        if seq == 0:
            return digest == b"" and not proof
        if seq < 0 or seq % host.params.checkpoint_interval != 0:
            return False
        signers: set[int] = set()
        for vote in proof:
            if vote.seq != seq or vote.digest != digest or vote.replica in signers:
                return False
            if not self.verify_vote(vote):
                return False
            signers.add(vote.replica)
        return len(signers) >= host.quorum

    def on_certificate(self, seq: int, digest: bytes, proof: tuple[V, ...]) -> None:
        """A checked certificate for ``(seq, digest)``: make it stable, report a
        disagreement, or fetch the state."""
        host = self.host
        if seq <= host.stable_seq:
            return
        own = self.snapshots.get(seq)
        if own is not None:
            if own[0] == digest:
                self.make_stable(seq, digest, own[1], proof)
            else:
                self.report_disagreement(seq, own[0], digest)
            return
        if seq > host.executed:
            host.transfer.fetch(seq, digest, proof)
        else:
            # Executed past it without its snapshot (SMR hands over the newest
            # only): a later checkpoint will do.
            host.count(f"{self.name}_checkpoint_without_snapshot")

    def report_disagreement(self, seq: int, own: bytes, certified: bytes) -> None:
        host = self.host
        if seq in self.reported:
            return
        if len(self.reported) >= host.params.log_size:
            self.reported.clear()
        self.reported.add(seq)
        host.count(f"{self.name}_checkpoint_disagreement")
        host.context.output(CheckpointDisagreement(host.id, seq, own, certified))


class Checkpoints(CheckpointVotes[Checkpoint]):
    """Section 4.3 over the shared state of a :class:`Pbft`: signed CHECKPOINTs,
    2f+1 of them a certificate."""

    name = "pbft"

    def __init__(self, pbft: Pbft) -> None:
        super().__init__(pbft)
        self.pbft = pbft

    def verify_vote(self, vote: Checkpoint) -> bool:
        return self.pbft.verify(vote.replica, vote)

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
        pbft.view_changes.accept_carried()
        pbft.normal.assign()
        for pending in sorted(self.votes):
            self.check_certificate(pending)
