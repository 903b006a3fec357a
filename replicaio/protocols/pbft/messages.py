"""PBFT's wire messages, how they are signed, and its observable outputs.

Castro and Liskov, *Practical Byzantine Fault Tolerance* (OSDI 1999), section
4 (the signature-based protocol), with the names of the paper: PRE-PREPARE,
PREPARE, COMMIT (4.2), CHECKPOINT (4.3), VIEW-CHANGE and NEW-VIEW (4.4).
Every protocol message is signed by its author (``replicaio.core.signing``),
so a prepared certificate (a PRE-PREPARE and 2f matching PREPAREs) and a
checkpoint certificate (2f+1 matching CHECKPOINTs) can be forwarded and checked
by any replica: that is what VIEW-CHANGE and NEW-VIEW carry, and what a lagging
replica is shown before it fetches state.

What a signature covers (:func:`signed_bytes`): the message's msgpack form
with its ``signature`` emptied and every batch emptied (the digest stays, and
binds the batch). So a VIEW-CHANGE inside a NEW-VIEW may travel without its
batches and still verify, and one kind of message can never be passed off as
another (the tag is part of the bytes).

``Relay``, ``Status`` and the state-transfer messages are not signed: they
travel on authenticated channels and nothing is built from them that a third
replica must check (fetched state is checked against a certified digest).

Every field is bounded in its type (the codec refuses anything else); the
receiver checks the rest (ranges, who may send what) and drops a bad message
with a counter ``pbft_rejected_<reason>``.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec.structs import replace

from replicaio.core.codec import Message, Meta
from replicaio.core.effects import notice, notice_advising
from replicaio.core.signing import SIGNATURE_BYTES_MAX
from replicaio.protocols.digest import digest_of as digest_of  # re-exported

DIGEST_BYTES = 32  # SHA-256
BATCH_BYTES_MAX = 1 << 20  # the wire bound; PbftParams.batch_bytes_max is at most this
SNAPSHOT_BYTES_MAX = 1 << 26
REPLICAS_MAX = 1024  # certificates hold at most one message per replica
LOG_SIZE_MAX = 4096  # the wire bound on L (prepared certificates in a VIEW-CHANGE)

Digest = Annotated[bytes, Meta(max_length=DIGEST_BYTES)]
Signature = Annotated[bytes, Meta(max_length=SIGNATURE_BYTES_MAX)]
BatchBytes = Annotated[bytes, Meta(max_length=BATCH_BYTES_MAX)]


NULL_DIGEST = digest_of(b"")  # the null request of a NEW-VIEW gap (section 4.4)
STATE_CHUNK_BYTES = 64 * 1024  # state transfer: one chunk of a snapshot per message
DIGEST_BYTES = 32


def state_manifest(snapshot: bytes) -> bytes:
    """The digests of ``snapshot``'s chunks of ``STATE_CHUNK_BYTES``, concatenated
    (at least one chunk, possibly empty)."""
    size = STATE_CHUNK_BYTES
    chunks = [snapshot[start:start + size] for start in range(0, len(snapshot), size)]
    return b"".join(digest_of(chunk) for chunk in chunks or [b""])


def checkpoint_digest(snapshot: bytes) -> bytes:
    """The digest CHECKPOINTs certify: of the chunks' digests, so that state
    transfer can check every chunk on arrival against the certified digest."""
    return digest_of(state_manifest(snapshot))


# -- normal case (section 4.2) ---------------------------------------------------


class PrePrepare(Message, tag="pbft.PrePrepare"):
    """The primary of ``view`` assigns ``seq`` to the batch with ``digest``.
    ``batch`` travels along (the paper piggybacks the request); the signature
    covers the digest, not the batch."""

    view: int
    seq: int
    digest: Digest
    batch: BatchBytes
    signature: Signature


class Prepare(Message, tag="pbft.Prepare"):
    """Backup ``replica`` accepted the PRE-PREPARE of ``(view, seq, digest)``."""

    view: int
    seq: int
    digest: Digest
    replica: int
    signature: Signature


class Commit(Message, tag="pbft.Commit"):
    """``replica`` has a prepared certificate for ``(view, seq, digest)``."""

    view: int
    seq: int
    digest: Digest
    replica: int
    signature: Signature


class Relay(Message, tag="pbft.Relay"):
    """A batch a backup's clients sent, relayed to the primary (ADR 0005)."""

    batch: BatchBytes


# -- checkpoints (section 4.3) ------------------------------------------------------


class Checkpoint(Message, tag="pbft.Checkpoint"):
    """``replica``'s state after executing ``seq`` has digest ``digest``."""

    seq: int
    digest: Digest
    replica: int
    signature: Signature


Certificate = Annotated[tuple[Checkpoint, ...], Meta(max_length=REPLICAS_MAX)]


# -- view change (section 4.4) --------------------------------------------------------


class PreparedProof(Message, tag="pbft.PreparedProof"):
    """A prepared certificate: the PRE-PREPARE and 2f matching PREPAREs from
    distinct backups (an element of the P set)."""

    pre_prepare: PrePrepare
    prepares: Annotated[tuple[Prepare, ...], Meta(max_length=REPLICAS_MAX)]


class ViewChange(Message, tag="pbft.ViewChange"):
    """``replica`` moves to ``view``: its stable checkpoint ``(stable_seq,
    stable_digest)`` with its certificate (the C set) and a prepared certificate
    for every sequence number above it that prepared (the P set, one per
    number, from the highest view it prepared in)."""

    view: int
    stable_seq: int
    stable_digest: Digest
    checkpoint_proof: Certificate
    prepared: Annotated[tuple[PreparedProof, ...], Meta(max_length=LOG_SIZE_MAX)]
    replica: int
    signature: Signature


class NewView(Message, tag="pbft.NewView"):
    """The primary of ``view`` starts it: 2f+1 VIEW-CHANGEs (the V set) and the
    PRE-PREPAREs they imply (the O set: re-proposed batches and null requests)."""

    view: int
    view_changes: Annotated[tuple[ViewChange, ...], Meta(max_length=REPLICAS_MAX)]
    pre_prepares: Annotated[tuple[PrePrepare, ...], Meta(max_length=LOG_SIZE_MAX)]
    replica: int
    signature: Signature


# -- status, retransmission, state transfer -------------------------------------------


class Status(Message, tag="pbft.Status"):
    """Where ``replica`` is, sent periodically; peers answer with what it lacks
    (the paper's status messages, TOCS section 5.2)."""

    view: int
    active: bool
    stable_seq: int
    executed: int
    replica: int


class StateRequest(Message, tag="pbft.StateRequest"):
    """Asks for part of the state at checkpoint ``seq`` with ``digest`` (section
    4.3 and TOCS 5.3.2: a replica behind the others' stable checkpoint):
    ``chunk`` -1 for the manifest (the chunks' digests), else that chunk."""

    seq: int
    digest: Digest
    chunk: int = -1


class StateReply(Message, tag="pbft.StateReply"):
    """Chunk ``chunk`` of the snapshot at ``seq`` (-1: its manifest); the
    requester checks it against the certified digest."""

    seq: int
    chunk: int
    data: Annotated[bytes, Meta(max_length=STATE_CHUNK_BYTES)]


WIRE_TYPES: tuple[type, ...] = (
    PrePrepare, Prepare, Commit, Relay, Checkpoint, ViewChange, NewView, Status,
    StateRequest, StateReply,
)


# -- signing ------------------------------------------------------------------------------

_ENCODER = msgspec.msgpack.Encoder()


def stripped(message: Any) -> Any:
    """``message`` as its signature covers it: signature and batches emptied."""
    kind = type(message)
    if kind is PrePrepare:
        return replace(message, batch=b"", signature=b"")
    if kind is ViewChange:
        prepared = tuple(
            replace(proof, pre_prepare=replace(proof.pre_prepare, batch=b""))
            for proof in message.prepared
        )
        return replace(message, prepared=prepared, signature=b"")
    return replace(message, signature=b"")


def signed_bytes(message: Any) -> bytes:
    """The bytes a message's signature covers (see the module docstring)."""
    return b"pbft\x00" + _ENCODER.encode(stripped(message))


def without_batches(view_change: ViewChange) -> ViewChange:
    """A VIEW-CHANGE as a NEW-VIEW carries it (its signature still verifies)."""
    result: ViewChange = stripped(view_change)
    return replace(result, signature=view_change.signature)


# -- outputs (for checkers outside the nodes) -----------------------------------------------


class Executed(Message, tag="pbft.Executed"):
    """``node`` executed the batch with ``digest`` at ``seq``, committed in ``view``."""

    node: int
    view: int
    seq: int
    digest: Digest


@notice
class StateInstalled(Message, tag="pbft.StateInstalled"):
    """``node`` installed the certified state at checkpoint ``seq`` (state transfer)."""

    node: int
    seq: int
    digest: Digest


@notice
class ViewStarted(Message, tag="pbft.ViewStarted"):
    """``node`` entered ``view`` (a NEW-VIEW accepted, or view 0 at the start)."""

    node: int
    view: int
    primary: int


@notice
class ViewChangeStarted(Message, tag="pbft.ViewChangeStarted"):
    """``node`` left its view for ``view``, not started yet (a VIEW-CHANGE
    multicast, a restart in the middle of a view change, or a damaged log):
    it takes part in no older view, and in ``view`` only once a NEW-VIEW
    starts it (``ViewStarted``). Hosts and checkers learn from it that the
    replicas do not share an active view (``PbftChecker.stable``)."""

    node: int
    view: int


@notice
class CheckpointDisagreement(Message, tag="pbft.CheckpointDisagreement"):
    """``node``'s own digest at checkpoint ``seq`` differs from the one 2f+1
    replicas certified: its execution diverged (non-determinism), reported."""

    node: int
    seq: int
    own: Digest
    certified: Digest


@notice_advising(
    "replica {node} withholding its votes: {withheld}. True: its storage lost writes it may "
    "have acknowledged, so it counts towards no quorum until state transfer brings it past "
    "what it may have voted for; a second notice with False says it has. Nothing to do "
    "unless no second notice comes (then its peers cannot give it their state)")
class VotesWithheld(Message, tag="pbft.VotesWithheld"):
    """``node`` started (``withheld``) or stopped withholding its votes: its
    storage lost writes and it does not count towards quorums until it has
    recovered (``recovery.py``); the checkers count it faulty meanwhile."""

    node: int
    withheld: bool
