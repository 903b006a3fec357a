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

The snapshot travels in chunks of ``STATE_CHUNK_BYTES`` (bounded messages,
whatever the state's size). The certified digest is of the *manifest*, the
chunks' digests (``messages.checkpoint_digest``): the replica fetches the
manifest first and checks it against the certified digest, then each chunk on
arrival against its entry, so a faulty peer's chunk is refused at once and
costs one round trip. The transfer is resumable: chunks received are kept
while the peer changes (a slow or silent one is left after
``state_fetch_timeout_us``), up to ``snapshot_bytes_max`` in all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from replicaio.core.lines import Line, first
from replicaio.protocols.pbft.messages import (
    DIGEST_BYTES,
    STATE_CHUNK_BYTES,
    Checkpoint,
    StateInstalled,
    StateReply,
    StateRequest,
    checkpoint_digest,
    digest_of,
    state_manifest,
)

if TYPE_CHECKING:
    from replicaio.protocols.pbft.pbft import Pbft



class StateTransfer:
    """Fetching a certified state chunk by chunk, and serving one."""

    def __init__(self, pbft: Pbft) -> None:
        self.pbft = pbft
        self.target: tuple[int, bytes, tuple[Checkpoint, ...]] | None = None
        self.manifest: list[bytes] | None = None  # the chunks' digests, once verified
        self.chunks: dict[int, bytes] = {}  # received and verified, by index
        self.progress: Line[None] | None = None  # set by every reply to the last request
        self.refused = False  # the last reply was damaged: ask the next signer
        self.newer: tuple[int, bytes, tuple[Checkpoint, ...]] | None = None
        self.replies = 0  # names the progress lines apart

    def fetch(self, seq: int, digest: bytes, proof: tuple[Checkpoint, ...]) -> None:
        """Fetch the state certified at ``seq``. While a transfer makes progress
        a newer certificate waits (``newer``): switching would throw away the
        chunks received; it is taken when the transfer stalls for a timeout
        (the peers may have discarded the older state)."""
        target = self.target
        if target is not None:
            if seq > target[0] and (self.newer is None or seq > self.newer[0]):
                self.newer = (seq, digest, proof)
            return
        self.start(seq, digest, proof)

    def start(self, seq: int, digest: bytes, proof: tuple[Checkpoint, ...]) -> None:
        pbft = self.pbft
        self.newer = None
        self.target = (seq, digest, proof)
        self.manifest = None
        self.chunks = {}
        pbft.count("pbft_state_transfers_started")
        self.progress = Line(pbft.context.node.scheduler, ("pbft.state", seq, 0))
        pbft.context.spawn(self.fetch_task(seq), "pbft.state_transfer")

    def wanted(self) -> int:
        """The next piece to ask for: -1 the manifest, else the first missing chunk."""
        manifest = self.manifest
        if manifest is None:
            return -1
        return next(index for index in range(len(manifest)) if index not in self.chunks)

    async def fetch_task(self, seq: int) -> None:
        """Ask the certificate's signers in turn; stay with one while it answers."""
        pbft = self.pbft
        rounds = 0
        while self.target is not None and self.target[0] == seq:
            progress = self.progress
            assert progress is not None
            _, digest, proof = self.target
            signers = [vote.replica for vote in proof if vote.replica != pbft.id]
            if not signers:
                self.target = None  # nobody to ask: the next certificate starts over
                return
            peer = signers[rounds % len(signers)]
            pbft.send(peer, StateRequest(seq, digest, self.wanted()))
            timeout = pbft.context.sleep(pbft.params.state_fetch_timeout_us)
            await first(progress, timeout, label="pbft.state")
            if progress.ready and not self.refused:
                continue  # this signer answers: stay with it
            self.refused = False
            rounds += 1  # silent, slow or lying: the next signer (chunks are kept)
            newer = self.newer
            if not progress.ready and newer is not None:
                self.start(*newer)  # stalled: the newest certified state instead
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
        chunk = request.chunk
        if chunk == -1:
            data = state_manifest(snapshot)
        elif type(chunk) is int and 0 <= chunk * STATE_CHUNK_BYTES < max(len(snapshot), 1):
            data = snapshot[chunk * STATE_CHUNK_BYTES:(chunk + 1) * STATE_CHUNK_BYTES]
        else:
            pbft.reject("state_request_bad_chunk")
            return
        if len(data) > STATE_CHUNK_BYTES:
            pbft.count("pbft_state_too_large_to_send")  # a manifest beyond one chunk
            return
        pbft.send(source, StateReply(request.seq, chunk, data))

    def ignore_state_reply(self, reply: StateReply) -> str | None:
        target = self.target
        if target is None or reply.seq != target[0]:
            return "state_reply_unasked"
        manifest = self.manifest
        if reply.chunk == -1:
            if manifest is not None:
                return "state_reply_duplicate"
            chunks = len(reply.data) // DIGEST_BYTES
            if len(reply.data) % DIGEST_BYTES or not chunks:
                return "state_reply_bad_manifest"
            if (chunks - 1) * STATE_CHUNK_BYTES > self.pbft.params.snapshot_bytes_max:
                return "state_reply_oversized"
            if digest_of(reply.data) != target[1]:
                return "state_reply_digest_mismatch"
            return None
        if manifest is None or not 0 <= reply.chunk < len(manifest):
            return "state_reply_unasked"
        if reply.chunk in self.chunks:
            return "state_reply_duplicate"
        if digest_of(reply.data) != manifest[reply.chunk]:
            return "state_reply_digest_mismatch"
        return None

    def on_state_reply(self, source: int, reply: StateReply) -> None:
        pbft = self.pbft
        reason = self.ignore_state_reply(reply)
        if reason is not None:
            pbft.reject(reason)
            if reason == "state_reply_digest_mismatch" and self.progress is not None:
                self.refused = True  # a faulty signer: on to the next one now
                self.next_progress(reply.seq)
            return
        if reply.chunk == -1:
            data = reply.data
            self.manifest = [data[at:at + DIGEST_BYTES] for at in range(0, len(data), DIGEST_BYTES)]
        else:
            self.chunks[reply.chunk] = reply.data
            pbft.count("pbft_state_chunks_received")
        progress = self.progress
        assert progress is not None and self.target is not None
        seq, digest, proof = self.target
        manifest = self.manifest
        assert manifest is not None
        if len(self.chunks) < len(manifest):
            self.next_progress(seq)
            return
        snapshot = b"".join(self.chunks[index] for index in range(len(manifest)))
        assert checkpoint_digest(snapshot) == digest  # every chunk was checked
        self.target, self.manifest, self.chunks, self.progress = None, None, {}, None
        self.newer = None  # certificates keep coming: a newer one starts a new fetch
        progress.set(None)
        self.install(seq, digest, snapshot, proof)

    def next_progress(self, seq: int) -> None:
        """Wake the fetch task (its request was answered) with a fresh line."""
        progress = self.progress
        assert progress is not None
        self.replies += 1
        self.progress = Line(self.pbft.context.node.scheduler, ("pbft.state", seq, self.replies))
        progress.set(None)

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
