"""MinBFT's wire messages, what their UIs cover, and its observable outputs.

Veronese et al., *Efficient Byzantine Fault-Tolerance* (IEEE TC 2013), section
4: PREPARE, COMMIT (4.2), CHECKPOINT (4.3), REQ-VIEW-CHANGE, VIEW-CHANGE and
NEW-VIEW (4.4). Every message that orders, votes, checkpoints or changes views
carries a UI of its author's USIG (``usig.py``); a replica processes each
peer's UI-certified messages strictly in counter order. What a UI covers
(:func:`certified_bytes`): the message's msgpack form with its ``ui`` emptied
and the parts that travel only as evidence emptied (a PREPARE's batch: its
digest stays and binds it; a VIEW-CHANGE's batches; a NEW-VIEW's VIEW-CHANGEs
and batches), behind the label ``minbft``, so no UI of one kind of message can
pass for another.

``ReqViewChange`` is signed (``context.sign``), not UI-certified: it only asks;
``Status`` and ``Relay`` travel on authenticated channels. State transfer uses
PBFT's ``StateRequest``/``StateReply`` (``replicaio.protocols.pbft``): fetched
state is checked against a certified digest either way.

The outputs (``Executed``, ``StateInstalled``, ``CheckpointDisagreement``,
``ViewStarted``) are PBFT's: they are the outputs of a BFT ordering under SMR,
and ``replicaio.check.pbft`` checks them for either protocol.
"""

from __future__ import annotations

import struct
from typing import Annotated, Any

import msgspec
from msgspec.structs import replace

from replicaio.core.codec import Message, Meta
from replicaio.core.signing import SIGNATURE_BYTES_MAX
from replicaio.protocols.minbft.usig import (
    CHECKPOINT_LABEL,
    DECIDED_LABEL,
    NEW_VIEW_LABEL,
    UI,
    UsigAdmission,
    UsigAttestation,
)
from replicaio.protocols.pbft.messages import (
    BATCH_BYTES_MAX,
    DIGEST_BYTES,
    REPLICAS_MAX,
    SNAPSHOT_BYTES_MAX,
    CheckpointDisagreement,
    Executed,
    StateInstalled,
    StateReply,
    StateRequest,
    ViewChangeStarted,
    ViewStarted,
    checkpoint_digest,
    digest_of,
)

LOG_ENTRIES_MAX = 4096  # the wire bound on a VIEW-CHANGE's log
CHOSEN_MAX = 4096

Digest = Annotated[bytes, Meta(max_length=DIGEST_BYTES)]
BatchBytes = Annotated[bytes, Meta(max_length=BATCH_BYTES_MAX)]
Signature = Annotated[bytes, Meta(max_length=SIGNATURE_BYTES_MAX)]
Count = Annotated[int, Meta(ge=0, le=(1 << 63) - 1)]
NULL_DIGEST = digest_of(b"")


# -- normal case (section 4.2) --------------------------------------------------------


class Prepare(Message, tag="minbft.Prepare"):
    """The primary of ``view`` orders the batch with ``digest`` at ``seq``; its
    UI is the unique identifier of the proposal (``seq`` must follow the
    previous PREPARE of the view in the primary's counter order)."""

    view: Count
    seq: Count
    digest: Digest
    batch: BatchBytes
    replica: Count
    ui: UI


class Commit(Message, tag="minbft.Commit"):
    """``replica`` accepted the PREPARE of ``(view, seq, digest)`` whose UI is
    ``primary_ui`` (so a COMMIT proves the PREPARE it answers)."""

    view: Count
    seq: Count
    digest: Digest
    primary_ui: UI
    replica: Count
    ui: UI


class Relay(Message, tag="minbft.Relay"):
    """A batch a backup's clients sent, relayed to the primary."""

    batch: BatchBytes


# -- checkpoints (section 4.3) -----------------------------------------------------------


class Checkpoint(Message, tag="minbft.Checkpoint"):
    """``replica``'s state after executing ``seq`` has digest ``digest``. f+1
    matching ones are a certificate; the author's own one also marks where its
    VIEW-CHANGE log starts (every later UI of it is in that log)."""

    seq: Count
    digest: Digest
    replica: Count
    ui: UI


Certificate = Annotated[tuple[Checkpoint, ...], Meta(max_length=REPLICAS_MAX)]


# -- view change (section 4.4) ---------------------------------------------------------------


class ReqViewChange(Message, tag="minbft.ReqViewChange"):
    """``replica`` asks to move to ``view`` (no current-view field: a replica
    whose view lags must still be able to join, Hyperledger MinBFT's issue).

    ``unfollowable``: it cannot take part in the view it leaves (it resumed a
    peer's stream in it, so that peer's PREPAREs or COMMITs no longer count for
    it until a view change); the primary then joins the request once its view
    has run one timeout (normal.py, *the primary's timer*)."""

    view: Count
    replica: Count
    signature: Signature
    unfollowable: bool = False


class Chosen(Message, tag="minbft.Chosen"):
    """A NEW-VIEW's decision for one number: the batch digest (or the null)."""

    seq: Count
    digest: Digest


class NewViewHeader(Message, tag="minbft.NewViewHeader"):
    """What a NEW-VIEW decides: its stable base and the batch of every number
    above it up to the last one any VIEW-CHANGE showed."""

    view: Count
    replica: Count
    base: Count
    base_digest: Digest
    chosen: Annotated[tuple[Chosen, ...], Meta(max_length=CHOSEN_MAX)]


class NewViewCommit(Message, tag="minbft.NewViewCommit"):
    """``replica`` accepted the NEW-VIEW with ``header`` (UI ``primary_ui``).

    ``certified``: ``replica`` holds the view's :class:`NewViewCertificate`
    (f+1 replicas committed to this header). The NEW-VIEW's numbers execute on
    f+1 certified ones, so the replica a commit quorum shares with a later
    view-change quorum can show the certificate (docs/minbft.md, *The NEW-VIEW
    choice*). A backup whose own commitment completes the certificate sends
    only the certified one; the primary sends only that one."""

    header: NewViewHeader
    primary_ui: UI
    replica: Count
    ui: UI
    certified: bool = False


class NewViewVote(Message, tag="minbft.NewViewVote"):
    """One backup's NEW-VIEW-COMMIT inside a :class:`NewViewCertificate`: what
    its UI covers is the NEW-VIEW-COMMIT rebuilt from the certificate's header."""

    replica: Count
    certified: bool
    ui: UI


class NewViewCertificate(Message, tag="minbft.NewViewCertificate"):
    """f+1 replicas committed to the NEW-VIEW with ``header``: its primary (by
    ``primary_ui``, its UI on the header) and f backups (``votes``). One of
    them is correct and validated the NEW-VIEW, so the view was started the
    way the protocol demands and ``header`` is what it decided."""

    header: NewViewHeader
    primary_ui: UI
    votes: Annotated[tuple[NewViewVote, ...], Meta(max_length=REPLICAS_MAX)]


class Stub(Message, tag="minbft.Stub"):
    """A logged message kept by its digest (a VIEW-CHANGE or NEW-VIEW of the
    author's): enough to check its UI, so the log's counters stay contiguous.
    A NEW-VIEW's stub keeps its ``header`` (what its UI covers): the new
    primary's decision counts as its commitment to every number it chose, and a
    later VIEW-CHANGE must show it like a backup's NEW-VIEW-COMMIT."""

    digest: Digest
    ui: UI
    header: NewViewHeader | None = None


LogEntry = Prepare | Commit | Checkpoint | NewViewCommit | Stub


class ViewChange(Message, tag="minbft.ViewChange"):
    """``replica`` moves to ``view``: its own CHECKPOINT of its stable checkpoint
    (``None``: the initial state) with that checkpoint's certificate, and every
    message its USIG certified since (``log``, counters contiguous up to this
    message's own); ``batches``: the batches its logged COMMITs refer to."""

    view: Count
    replica: Count
    checkpoint: Checkpoint | None
    proof: Certificate
    log: Annotated[tuple[LogEntry, ...], Meta(max_length=LOG_ENTRIES_MAX)]
    batches: Annotated[tuple[BatchBytes, ...], Meta(max_length=LOG_ENTRIES_MAX)]
    ui: UI
    # The NEW-VIEW certificate of every view its log shows an entry of (one per
    # view, views increasing): a PREPARE, COMMIT or certified NEW-VIEW-COMMIT of
    # a view above 0 without it makes the VIEW-CHANGE invalid.
    certificates: Annotated[tuple[NewViewCertificate, ...],
                            Meta(max_length=LOG_ENTRIES_MAX)] = ()
    # The author's USIG attestation made at ``checkpoint``'s counter: that
    # CHECKPOINT is the first of a number that high it certified, and the log
    # starts at or before the first certified NEW-VIEW-COMMIT still open then
    # (docs/minbft.md, *The pre-anchor hiding gap*). Required with a checkpoint.
    attestation: UsigAttestation | None = None


class NewView(Message, tag="minbft.NewView"):
    """The primary of ``header.view`` starts it with f+1 VIEW-CHANGEs (without
    their batches) and the batches of ``header.chosen``; its UI covers the header."""

    header: NewViewHeader
    view_changes: Annotated[tuple[ViewChange, ...], Meta(max_length=REPLICAS_MAX)]
    batches: Annotated[tuple[BatchBytes, ...], Meta(max_length=CHOSEN_MAX)]
    ui: UI


# -- status and retransmission ----------------------------------------------------------------


class Status(Message, tag="minbft.Status"):
    """Where ``replica`` is, and the next counter it expects from each replica
    (peers re-send what it misses)."""

    view: Count
    active: bool
    stable_seq: Count
    executed: Count
    replica: Count
    expected: Annotated[tuple[Count, ...], Meta(max_length=REPLICAS_MAX)]
    # The USIG epoch this replica takes each replica's messages under (its own:
    # its USIG's), and the operator's admission of its own epoch if above 0:
    # peers switch its stream to an admitted epoch (docs/minbft.md, Recovery).
    epochs: Annotated[tuple[Count, ...], Meta(max_length=REPLICAS_MAX)] = ()
    admission: UsigAdmission | None = None


class Resume(Message, tag="minbft.Resume"):
    """The sender no longer keeps the messages a peer waits for (they are below
    its stable checkpoint): it offers its own CHECKPOINT of that checkpoint,
    with the certificate, as the point to resume its stream from."""

    checkpoint: Checkpoint
    proof: Certificate
    # Its USIG's attestation made at ``checkpoint``'s counter: the highest view
    # of a NEW-VIEW it certified before (the receiver skips those messages).
    attestation: UsigAttestation | None = None


UI_TYPES: tuple[type, ...] = (Prepare, Commit, Checkpoint, NewViewCommit, ViewChange, NewView)
WIRE_TYPES: tuple[type, ...] = (
    *UI_TYPES, Relay, ReqViewChange, Resume, Status, StateRequest, StateReply,
)


# -- what a UI covers ---------------------------------------------------------------------------

_ENCODER = msgspec.msgpack.Encoder()
EMPTY_UI = UI(0, 1, b"")


def stripped(message: Any) -> Any:
    """``message`` as its UI covers it (see the module docstring)."""
    kind = type(message)
    if kind is Prepare:
        return replace(message, batch=b"", ui=EMPTY_UI)
    if kind is ViewChange:
        log = tuple(
            replace(entry, batch=b"") if type(entry) is Prepare else entry for entry in message.log
        )
        return replace(message, log=log, batches=(), ui=EMPTY_UI)
    if kind is NewView:
        return message.header
    if kind is NewViewHeader:
        return message
    return replace(message, ui=EMPTY_UI)


def certified_bytes(message: Any) -> bytes:
    """The bytes whose digest a message's UI certifies. A NEW-VIEW's (its
    header's) start with the USIG's ``NEW_VIEW_LABEL`` and the view, so the
    USIG knows the highest view it certified a NEW-VIEW of (``Usig.attest``);
    a CHECKPOINT's with ``CHECKPOINT_LABEL`` and its number, a certified
    NEW-VIEW-COMMIT's with ``DECIDED_LABEL`` and the last number its header
    decides, so the USIG knows where its VIEW-CHANGE logs must start
    (``UsigMarks``). No other message starts so."""
    covered = stripped(message)
    kind = type(covered)
    if kind is NewViewHeader:
        return NEW_VIEW_LABEL + struct.pack(">Q", covered.view) + _ENCODER.encode(covered)
    if kind is Checkpoint:
        return CHECKPOINT_LABEL + struct.pack(">Q", covered.seq) + _ENCODER.encode(covered)
    if kind is NewViewCommit and covered.certified:
        chosen = covered.header.chosen
        last = chosen[-1].seq if chosen else 0
        return DECIDED_LABEL + struct.pack(">Q", last) + _ENCODER.encode(covered)
    return b"minbft\x00" + _ENCODER.encode(covered)


def certified_digest(message: Any) -> bytes:
    return digest_of(certified_bytes(message))


def prepare_header(view: int, seq: int, digest: bytes, primary: int) -> Prepare:
    """The PREPARE a COMMIT refers to, as its UI covers it."""
    return Prepare(view, seq, digest, b"", primary, EMPTY_UI)


def without_batches(view_change: ViewChange) -> ViewChange:
    """A VIEW-CHANGE as a NEW-VIEW carries it (its UI still verifies)."""
    log = tuple(
        replace(entry, batch=b"") if type(entry) is Prepare else entry for entry in view_change.log
    )
    return replace(view_change, log=log, batches=())


def signed_request(request: ReqViewChange) -> bytes:
    return b"minbft-req\x00" + _ENCODER.encode(replace(request, signature=b""))


__all__ = [
    "NULL_DIGEST",
    "SNAPSHOT_BYTES_MAX",
    "UI",
    "WIRE_TYPES",
    "Checkpoint",
    "CheckpointDisagreement",
    "Chosen",
    "Commit",
    "Executed",
    "NewView",
    "NewViewCertificate",
    "NewViewCommit",
    "NewViewHeader",
    "NewViewVote",
    "Prepare",
    "Relay",
    "ReqViewChange",
    "Resume",
    "StateInstalled",
    "StateReply",
    "StateRequest",
    "Status",
    "Stub",
    "ViewChange",
    "ViewChangeStarted",
    "ViewStarted",
    "certified_bytes",
    "certified_digest",
    "checkpoint_digest",
    "digest_of",
    "prepare_header",
    "without_batches",
]
