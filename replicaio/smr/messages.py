"""SMR's own messages: the batch format, replica-to-replica forwarding, outputs.

Everything here is a frozen ``Message`` struct (namespaced ``smr.``), so the
simulator's codec, the event log and a live transport carry it unchanged.
What clients send and receive (``ClientRequest``, ``Reply``, ``Redirect``,
``Rejected``) is the contract in ``replicaio.smr.api``.
"""

from __future__ import annotations

from typing import Annotated

from replicaio.core.codec import Message, Meta, Name
from replicaio.smr.api import AuthenticatedRequest, ClientRequest

# -- the unit of ordering ------------------------------------------------------

BATCH_REQUESTS_MAX = 1 << 16  # the wire bound; SmrParams.batch_requests_max is at most this
DIGEST_BYTES_MAX = 64
Requests = Annotated[tuple[ClientRequest, ...], Meta(max_length=BATCH_REQUESTS_MAX)]
SignedRequests = Annotated[tuple[AuthenticatedRequest, ...], Meta(max_length=BATCH_REQUESTS_MAX)]


class Batch(Message, tag="smr.Batch"):
    """Requests submitted together; what an ordering protocol orders (as bytes).

    ``(replica, incarnation, number)`` names the batch so its submitter knows
    when one of its own batches committed (its in-flight window); it plays no
    part in execution. Every replica executes ``requests`` in order.

    ``time_ms`` is the submitter's (the leader's) clock when it cut the batch
    (0: no clock); a state machine that keeps time (``api.Clocked``) is
    advanced to it before the requests run, on every replica alike.
    """

    replica: int
    incarnation: int
    number: int
    requests: Requests
    time_ms: int = 0


class SignedBatch(Message, tag="smr.SignedBatch"):
    """A :class:`Batch` whose requests keep their clients' authenticators (Byzantine
    fault tolerant services): a backup checks them before accepting the batch
    (``validate_batch``), and every replica before executing one."""

    replica: int
    incarnation: int
    number: int
    requests: SignedRequests
    time_ms: int = 0


# -- between replicas (unreliable streams; clients retry on loss) --------------


class Forward(Message, tag="smr.Forward"):
    """Requests a non-leader replica received from its clients, for the leader to
    batch. Their replies come from the origin replica's own apply."""

    requests: Requests


class SignedForward(Message, tag="smr.SignedForward"):
    """A :class:`Forward` of authenticated requests: a backup relays its clients'
    requests to the primary, which checks each before batching it."""

    requests: SignedRequests


class ForwardRefused(Message, tag="smr.ForwardRefused"):
    """The replica a request was forwarded to could not take it: ``reason`` is
    ``not_leader`` (then ``leader`` is its hint) or ``busy``."""

    client: int
    seq: int
    reason: Name
    leader: int


class ReadIndexRequest(Message, tag="smr.ReadIndexRequest"):
    """Asks the leader for a read index (Raft thesis 6.4: reads on followers);
    ``number`` correlates the answer."""

    number: int


class ReadIndexReply(Message, tag="smr.ReadIndexReply"):
    """The index after which a read asked for with ``number`` is linearizable, or
    ``-1`` if the replica could not give one (``leader`` is then its hint)."""

    number: int
    index: int
    leader: int


# -- outputs besides the client replies of the api -----------------------------


class Applied(Message, tag="smr.Applied"):
    """Batch ``index`` was applied; ``digest`` fingerprints its bytes. Emitted only
    with ``SmrParams.emit_applied``, so a checker outside the nodes can hold every
    replica to one sequence (state machine safety), whatever the protocol."""

    index: int
    digest: Annotated[bytes, Meta(max_length=DIGEST_BYTES_MAX)]
