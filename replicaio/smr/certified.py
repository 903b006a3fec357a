"""Certified results of in-node calls: f+1 matching signed answers of a group's replicas.

Theory of operation
-------------------
A node's components call a replicated group through the node's own replica
(``GroupCaller``, ``replicaio.smr.groups``). In a Byzantine fault tolerant
group that answer is as good as the node: a correct node trusts its own
replica, which executed the command at its place in the committed log, but
nobody else can check what the node *says* the group answered. A service
that moves one group with another group's answer (the transaction protocol:
a coordinator decides on the participants' votes, participants apply the
coordinator's decision) needs the answer in a form a third party checks:
a **certificate**, f+1 signatures of distinct replicas of the group over the
same *claim*. At least one of them is correct and executed the command in
the group's committed order, so the claim is what the group's state machine
said (Castro and Liskov's f+1 matching replies, made transferable).

* The service names what a result *claims* (``attest``: result bytes ->
  claim bytes, or ``None`` for a result that claims nothing). Claims are
  self-contained statements ("group g prepared transaction T with
  coordinator c"): a signature covers a label, the group and the claim, not
  the call, so a certificate is checked without knowing who asked.
* **Push.** Every replica of a BFT group answers every request it executes
  (``SmrReplica.reply_all``). On each node, :class:`Attestations` sees those
  answers for *another* node's in-node calls (the client id names the
  vouching node, ``smr.auth``); it signs the claim and sends an
  :class:`Attestation` to that node.
* **Pull.** A call still short of f+1 after ``attempt_timeout_us`` sends an
  :class:`AttestationRequest` to the nodes it has not heard; each answers
  from its replica's session table (the last result of that in-node session,
  ``smr/sessions.py``) if it executed the call. So a lost attestation is
  asked for again, ``attempts_max`` times at most.
* **Collect.** The caller waits for its own replica's answer (its result, as
  before), then for attestations of the same claim from f+1 distinct nodes
  (its own included), each signature checked on arrival. The certificate is
  the codec value ``[group, claim, [[node, signature], ...]]``.
* **Check.** :class:`Certifier` is what a state machine uses: a pure,
  deterministic function of the certificate and the nodes' public keys
  (signatures are deterministic, ADR 0008), so every correct replica reaches
  the same verdict. It never raises on a malformed certificate.

Fault model: up to f Byzantine nodes, which may sign anything they like (one
false claim per node, never f+1), withhold or forge attestations, or flood
requests (each answered by at most one message; nothing is kept for them).
Bounds: one collection per in-node call in flight (``callers_max`` per group);
per collection at most one attestation per node; claims ``CLAIM_BYTES_MAX``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Final

from replicaio.core.codec import Message, Meta
from replicaio.core.context import Context
from replicaio.core.lines import Line, first
from replicaio.core.signing import SIGNATURE_BYTES_MAX
from replicaio.core.stream import GROUPS_MAX
from replicaio.smr.auth import vouching_node

if TYPE_CHECKING:
    from replicaio.smr.groups import Groups

ATTESTATION_LABEL: Final = b"replicaio group attestation v1"
CLAIM_BYTES_MAX: Final = 4096
SIGNERS_MAX: Final = 1024  # nodes named in one certificate (the node id space)

Attest = Callable[[bytes], bytes | None]
Verify = Callable[[int, bytes, bytes], bool]


class Attestation(Message, tag="smr.Attestation"):
    """The sender's replica of ``group`` executed the in-node call ``(client, seq)``
    of the receiving node; its result claims ``claim``, signed by the sender
    (:func:`attestation_bytes`)."""

    group: Annotated[int, Meta(ge=0, lt=GROUPS_MAX)]
    client: int
    seq: int
    claim: Annotated[bytes, Meta(max_length=CLAIM_BYTES_MAX)]
    signature: Annotated[bytes, Meta(max_length=SIGNATURE_BYTES_MAX)]


class AttestationRequest(Message, tag="smr.AttestationRequest"):
    """Asks the receiver to attest its replica's result of the sender's call
    ``(client, seq)`` in ``group``, if it executed it."""

    group: Annotated[int, Meta(ge=0, lt=GROUPS_MAX)]
    client: int
    seq: int


def attestation_bytes(group: int, claim: bytes) -> bytes:
    """What a replica signs: a label of its own, the group, the claim."""
    return ATTESTATION_LABEL + struct.pack(">I", group) + claim


@dataclass(frozen=True, slots=True)
class Certifier:
    """Checks certificates of group claims (for state machines: pure, deterministic).

    ``members(group)`` are the nodes whose replicas form ``group``; a certificate
    needs ``threshold`` (f+1) distinct members' valid signatures of one claim."""

    verify: Verify
    members: Callable[[int], range | tuple[int, ...]]
    threshold: int

    def claim(self, certificate: Any, group: int) -> bytes | None:
        """The claim ``certificate`` proves ``group`` made, or ``None`` (never raises)."""
        if not (isinstance(certificate, tuple) and len(certificate) == 3):
            return None
        certified_group, claim, signed = certificate
        if certified_group != group or type(claim) is not bytes or not isinstance(signed, tuple):
            return None
        if len(claim) > CLAIM_BYTES_MAX or len(signed) > SIGNERS_MAX:
            return None
        members = self.members(group)
        data = attestation_bytes(group, claim)
        good: set[int] = set()
        for entry in signed:
            if not (isinstance(entry, tuple) and len(entry) == 2):
                return None
            node, signature = entry
            if type(node) is not int or type(signature) is not bytes or node not in members:
                return None
            if node not in good and self.verify(node, data, signature):
                good.add(node)
        return claim if len(good) >= self.threshold else None


@dataclass(slots=True)
class Collection:
    """Attestations for one in-node call: at most one per node."""

    seq: int
    changed: Line[None]
    signed: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # node -> claim, sig

    def matching(self, claim: bytes) -> list[list[Any]]:
        return [[node, signature] for node, (said, signature) in sorted(self.signed.items())
                if said == claim]


class Attestations:
    """Signs, answers and collects attestations on one node (see the module docstring)."""

    def __init__(self, context: Context, groups: Groups, attest: Attest, threshold: int,
                 attempts_max: int, attempt_timeout_us: int) -> None:
        self.context = context
        self.groups = groups
        self.attest = attest
        self.threshold = threshold
        self.attempts_max = attempts_max
        self.attempt_timeout_us = attempt_timeout_us
        self.collections: dict[tuple[int, int], Collection] = {}  # (group, client) ->
        self.stream = context.stream(Attestation, AttestationRequest, handler=self.on_message)

    # -- every node: attest other nodes' calls ---------------------------------------

    def on_reply(self, group: int, owner: int, client: int, seq: int, result: bytes) -> None:
        """Our replica of ``group`` answered node ``owner``'s call: attest its claim."""
        claim = self.attest(result)
        if claim is None or len(claim) > CLAIM_BYTES_MAX:
            return
        signature = self.context.sign(attestation_bytes(group, claim))
        self.stream.send(owner, Attestation(group, client, seq, claim, signature))
        self.context.count("attestations_sent")

    def on_message(self, source: int, message: Any) -> None:
        if type(message) is AttestationRequest:
            self.on_request(source, message)
        elif type(message) is Attestation:
            self.on_attestation(source, message)

    def on_request(self, source: int, request: AttestationRequest) -> None:
        if vouching_node(request.client) != source or source == self.context.id:
            self.context.count("attestation_request_not_the_callers")
            return
        if not request.group < len(self.groups.replicas):
            self.context.count("attestation_request_unknown_group")
            return
        sessions = self.groups.replicas[request.group].replica.sessions
        session = sessions.lookup(request.client)
        if session is None or session.last_seq != request.seq:
            return  # not executed here (yet), or long gone: the caller asks again or gives up
        self.on_reply(request.group, source, request.client, request.seq, session.result)

    def on_attestation(self, source: int, attestation: Attestation) -> None:
        collection = self.collections.get((attestation.group, attestation.client))
        if collection is None or collection.seq != attestation.seq:
            self.context.count(self.unmatched(attestation, collection))
            return
        data = attestation_bytes(attestation.group, attestation.claim)
        if not self.context.verify(source, data, attestation.signature):
            self.context.count("attestation_bad_signature")
            return
        collection.signed[source] = (attestation.claim, attestation.signature)
        if not collection.changed.ready:
            collection.changed.set(None)

    def unmatched(self, attestation: Attestation, collection: Collection | None) -> str:
        """The counter for an attestation no open call waits for. Correct peers
        send such ones all the time: every replica attests every in-node call of
        ours it executes, so the n-f-1 beyond the certificate arrive after the
        call closed, and calls made without a certificate (``GroupCaller.call``)
        are attested too (``attestation_late``). Misbehaviour is only a call that
        is not ours or a request number we have not sent yet."""
        if vouching_node(attestation.client) != self.context.id:
            return "attestation_unexpected"
        if collection is not None and attestation.seq > collection.seq:
            return "attestation_unexpected"
        return "attestation_late"

    # -- this node's calls ---------------------------------------------------------------

    def open(self, group: int, client: int, seq: int) -> None:
        """Collect attestations for our call ``(client, seq)`` (before sending it)."""
        scheduler = self.context.node.scheduler
        self.collections[(group, client)] = Collection(seq, Line(scheduler, "attested"))

    def close(self, group: int, client: int) -> None:
        self.collections.pop((group, client), None)

    async def certify(self, group: int, client: int, result: bytes) -> Any | None:
        """The certificate of our own replica's ``result`` of the open call, or
        ``None`` (it claims nothing, or f+1 matching attestations never came)."""
        collection = self.collections[(group, client)]
        claim = self.attest(result)
        if claim is None:
            return None
        own = self.context.sign(attestation_bytes(group, claim))
        collection.signed[self.context.id] = (claim, own)
        for _ in range(self.attempts_max):
            timer = self.context.sleep(self.attempt_timeout_us)
            while len(collection.matching(claim)) < self.threshold and not timer.ready:
                collection.changed = Line(self.context.node.scheduler, "attested")
                await first(collection.changed, timer)
            matching = collection.matching(claim)
            if len(matching) >= self.threshold:
                return [group, claim, matching[: self.threshold]]
            for node in range(self.context.n):  # pull what the pushes did not bring
                if node not in collection.signed:
                    self.stream.send(node, AttestationRequest(group, client, collection.seq))
        self.context.count("certificate_not_collected")
        return None
