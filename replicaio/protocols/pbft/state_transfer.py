"""State transfer: Castro and Liskov, OSDI 1999, section 4.3 (and TOCS 2002, 5.3.2).

A replica learns that it is behind when it holds a checkpoint certificate
(2f+1 matching signed CHECKPOINTs) for a number it has not executed: one
collected from the CHECKPOINTs peers multicast or forward in answer to its
STATUS (they include their stable certificate), or the C set of a NEW-VIEW's
VIEW-CHANGE. Since at least f+1 of those 2f+1 signers are correct, the
certificate names the one correct state at that number; the others have
discarded the messages below it (Fabric issue 1120: a replica more than L
behind can only catch up this way).

The replica asks one of the certificate's signers at a time for the state
(``STATE-REQUEST``), moving to the next after ``state_fetch_timeout_us``.
A reply is accepted only if its digest is the certified one, so a faulty
replica can delay the transfer but never install a wrong state. The state
is SMR's snapshot, which carries the reply cache (the session table) too
(concord-bft PR 1331): a client whose request executed while this replica
was behind still gets its cached reply from it. Installing it makes the
checkpoint stable here (with the certificate), and SMR restores it through
``on_snapshot``; execution resumes above it.

The snapshot travels whole, up to ``snapshot_bytes_max`` (and the frame size
of the transport); chunked transfer as Raft's is not done yet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from replicaio.core.lines import Line, first
from replicaio.protocols.pbft.messages import (
    Checkpoint,
    StateInstalled,
    StateReply,
    StateRequest,
    digest_of,
)

if TYPE_CHECKING:
    from replicaio.protocols.pbft.pbft import Pbft

STATE_REPLY_BYTES_MAX = 768 * 1024  # what one frame carries (the simulator's codec: 1 MiB)


class StateTransfer:
    """Fetching a certified state, and serving one."""

    def __init__(self, pbft: Pbft) -> None:
        self.pbft = pbft
        self.target: tuple[int, bytes, tuple[Checkpoint, ...]] | None = None
        self.arrived: Line[bytes] | None = None

    def fetch(self, seq: int, digest: bytes, proof: tuple[Checkpoint, ...]) -> None:
        """Fetch the state certified at ``seq`` (unless a later one is on the way)."""
        pbft = self.pbft
        if self.target is not None and self.target[0] >= seq:
            return
        self.target = (seq, digest, proof)
        pbft.count("pbft_state_transfers_started")
        self.arrived = Line(pbft.context.node.scheduler, ("pbft.state", seq))
        pbft.context.spawn(self.fetch_task(seq), "pbft.state_transfer")

    async def fetch_task(self, seq: int) -> None:
        pbft = self.pbft
        rounds = 0
        while self.target is not None and self.target[0] == seq:
            arrived = self.arrived
            assert arrived is not None
            _, digest, proof = self.target
            signers = [vote.replica for vote in proof if vote.replica != pbft.id]
            if not signers:
                break
            peer = signers[rounds % len(signers)]
            rounds += 1
            pbft.send(peer, StateRequest(seq, digest))
            timeout = pbft.context.sleep(pbft.params.state_fetch_timeout_us)
            await first(arrived, timeout, label="pbft.state")
            if arrived.ready:
                return

    def on_state_request(self, source: int, request: StateRequest) -> None:
        pbft = self.pbft
        snapshot: bytes | None = None
        if request.seq == pbft.stable_seq and request.digest == pbft.stable_digest:
            snapshot = pbft.stable_snapshot
        else:
            own = pbft.checkpoints.snapshots.get(request.seq)
            if own is not None and own[0] == request.digest:
                snapshot = own[1]
        if snapshot is None or request.seq == 0:
            pbft.reject("state_request_unknown")
            return
        if len(snapshot) > STATE_REPLY_BYTES_MAX:
            pbft.count("pbft_state_too_large_to_send")
            return
        pbft.send(source, StateReply(request.seq, snapshot))

    def on_state_reply(self, source: int, reply: StateReply) -> None:
        pbft = self.pbft
        target = self.target
        if target is None or reply.seq != target[0]:
            pbft.reject("state_reply_unasked")
            return
        seq, digest, proof = target
        if len(reply.snapshot) > pbft.params.snapshot_bytes_max:
            pbft.reject("state_reply_oversized")
            return
        if digest_of(reply.snapshot) != digest:
            pbft.reject("state_reply_digest_mismatch")
            return
        self.target = None
        arrived = self.arrived
        assert arrived is not None
        self.arrived = None
        arrived.set(reply.snapshot)
        self.install(seq, digest, reply.snapshot, proof)

    def install(
        self, seq: int, digest: bytes, snapshot: bytes, proof: tuple[Checkpoint, ...]
    ) -> None:
        """The certified state at ``seq``: stable here, and SMR's state if ahead of it."""
        pbft = self.pbft
        if seq <= pbft.stable_seq:
            return  # overtaken (a checkpoint became stable meanwhile)
        pbft.checkpoints.make_stable(seq, digest, snapshot, proof)
        if seq <= pbft.executed:
            return
        handlers = pbft.handlers
        assert handlers is not None
        pbft.executed = seq
        # Which own batches executed in the numbers skipped is unknown: stop
        # waiting for them (their clients retry; sessions make a retry harmless).
        pbft.relayed.clear()
        pbft.count("pbft_state_installed")
        pbft.context.output(StateInstalled(pbft.id, seq, digest))
        handlers.on_snapshot(seq, snapshot)
        pbft.execute_ready()
