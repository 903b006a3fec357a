"""Several replicated groups on one node, and calls into them from the node itself.

Theory of operation
-------------------
A sharded service is G replicated groups; a node process hosts one replica
of each (every group has the same members, the cluster's nodes). Group
``g``'s replica lives at the path ``("group", g)``, so its ordering protocol
and SMR have their own storage slice, links, streams and outputs: the core
routes streams and outputs by group (``replicaio.core.stream``). This is the
"routing by group, not only by message class" a multi-group node needs.

* :class:`Groups` builds and starts the G replicas from one SMR factory (any
  ``Ordering``: Raft now; PBFT or MinBFT groups plug in the same way), and
  routes a client's :class:`GroupRequest` to its group.
* :class:`GroupCaller` lets components of the node (the transaction
  protocol) submit a command to a group through the node's own replica and
  await its result, exactly as an external client would: a
  ``ClientRequest`` under an in-node client session, so SMR executes it at
  most once whatever the retries (followers forward to the leader). Replies
  to in-node clients never leave the node; every other output of a group
  goes out as a ``GroupOutput``.

Bounds: ``callers_max`` in-node sessions at once per group (a call waits for
a free one), ``attempts_max`` attempts of ``attempt_timeout_us`` per call,
then the call gives up (``None``): the caller's own protocol must cope (the
transaction protocol's leases do).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Annotated, Any, Final

from replicaio.core.codec import Message, Meta
from replicaio.core.context import Context
from replicaio.core.errors import ConfigError
from replicaio.core.lines import Line, first
from replicaio.core.stream import GROUP_PATH, GROUPS_MAX, GroupOutput
from replicaio.smr.api import ClientRequest, Redirect, Rejected, Reply
from replicaio.smr.auth import (
    NODE_CLIENT_COUNTER_BITS,
    NODE_CLIENT_INCARNATION_BITS,
    NodeClientSigner,
    node_client_id,
    vouching_node,
)
from replicaio.smr.certified import Attest, Attestations
from replicaio.smr.protocol import SmrFactory, SmrProtocol

# In a client id this node vouches for, the bit of its client front's ids (its
# in-node callers' counters stay below it): their replies are output.
FRONT_CLIENT_BIT: Final = 1 << (NODE_CLIENT_COUNTER_BITS - 1)
GIVE_UP_REASONS: Final = frozenset({"stale_seq", "session_expired", "bad_request", "too_large"})


class GroupRequest(Message, tag="smr.GroupRequest"):
    """A client's payload (an encoded ``ClientRequest``) for group ``group``."""

    group: Annotated[int, Meta(ge=0, lt=GROUPS_MAX)]
    payload: Annotated[bytes, Meta(max_length=1 << 26)]


@dataclass(frozen=True, slots=True)
class CallerParams:
    callers_max: int = 64
    attempts_max: int = 8
    attempt_timeout_us: int = 300_000
    backoff_us: int = 40_000

    def validate(self) -> CallerParams:
        for name in self.__dataclass_fields__:
            if getattr(self, name) < 1:
                raise ConfigError(f"CallerParams.{name} must be >= 1")
        return self


class Groups:
    """The replicas of ``count`` groups on this node (see the module docstring)."""

    def __init__(self, context: Context, count: int, factory: SmrFactory) -> None:
        if not 1 <= count <= GROUPS_MAX:
            raise ConfigError(f"groups must be in 1..{GROUPS_MAX}")
        self.context = context
        self.replicas: list[SmrProtocol] = [
            factory(context.child(GROUP_PATH, group)) for group in range(count)
        ]

    def start(self) -> None:
        for replica in self.replicas:
            replica.start()

    def on_request(self, request: GroupRequest) -> str | None:
        if not 0 <= request.group < len(self.replicas):
            return "unknown_group"
        return self.replicas[request.group].on_request(request.payload)


class GroupCaller:
    """In-node calls into the groups of :class:`Groups` (see the module docstring)."""

    def __init__(self, context: Context, groups: Groups, params: CallerParams,
                 attest: Attest | None = None) -> None:
        self.context = context
        self.groups = groups
        self.params = params.validate()
        # Byzantine fault tolerant groups: results certified by f+1 replicas
        # (``replicaio.smr.certified``), when the service says what they claim.
        self.attestations: Attestations | None = None
        if attest is not None:
            self.attestations = Attestations(
                context, groups, attest, context.f + 1, self.params.attempts_max,
                self.params.attempt_timeout_us)
        node = context.node
        # Unique per node and incarnation (sessions are per group: no group bits),
        # and ids this node may vouch for (``replicaio.smr.auth``): in a Byzantine
        # fault tolerant group its calls are signed as the node.
        incarnation = node.incarnation % (1 << NODE_CLIENT_INCARNATION_BITS)
        base = node_client_id(incarnation, context.id, 0)
        self.vouch = NodeClientSigner(node.codec, node.signer)
        self.free: list[deque[tuple[int, int]]] = []  # per group: (client, last seq)
        self.live = [0] * len(groups.replicas)  # sessions in use or free, per group
        self.minted = [0] * len(groups.replicas)  # sessions ever made (their ids)
        self.base = base
        self.waiting: dict[tuple[int, int], Line[Any]] = {}  # (group, client) -> answer
        self.slot_freed: list[Line[None] | None] = []
        for group in range(len(groups.replicas)):
            self.free.append(deque())
            self.slot_freed.append(None)
            node.group_output_handlers[group] = self.handler(group)

    def handler(self, group: int) -> Any:
        def on_output(value: Any) -> None:
            line = None
            if type(value) in (Reply, Rejected, Redirect):
                line = self.waiting.get((group, value.client))
            if line is not None:
                if not line.ready:
                    line.set(value)
                return
            node = self.context.node
            owner = vouching_node(value.client) if type(value) in (Reply, Rejected) else None
            if owner is not None and (owner != self.context.id
                                      or not value.client & FRONT_CLIENT_BIT):
                # Another node's call (attested to it in a BFT group), or a late
                # answer to one of ours: not output.
                if (self.attestations is not None and owner != self.context.id
                        and type(value) is Reply and not value.client & FRONT_CLIENT_BIT):
                    self.attestations.on_reply(group, owner, value.client, value.seq,
                                               bytes(value.result))
                return
            node.effects.outputs.append(GroupOutput(group, node.codec.encode(value)))

        return on_output

    async def session(self, group: int) -> tuple[int, int]:
        """A free in-node session ``(client, last seq)``; a fresh one registers first
        (an empty command: SMR's full at-most-once guarantee, ``smr/sessions.py``)."""
        while True:
            free = self.free[group]
            if free:
                return free.popleft()
            if self.live[group] < self.params.callers_max:
                self.live[group] += 1
                self.minted[group] += 1
                client = self.base + (self.minted[group] % FRONT_CLIENT_BIT)
                if await self.attempts(group, ClientRequest(client, 1, b"", False)) is None:
                    self.live[group] -= 1
                    continue
                return client, 1
            line = self.slot_freed[group]
            if line is None:
                line = self.slot_freed[group] = Line(self.context.node.scheduler, "caller.slot")
            await line

    def release(self, group: int, client: int, seq: int, usable: bool) -> None:
        if usable:
            self.free[group].append((client, seq))
        else:
            self.live[group] -= 1  # its last request may still run: never reuse it
        line = self.slot_freed[group]
        if line is not None:
            self.slot_freed[group] = None
            line.set(None)

    async def call(self, group: int, command: bytes) -> bytes | None:
        """Run ``command`` in ``group`` (at most once); its result, or ``None``
        if every attempt went unanswered or was refused."""
        client, seq = await self.session(group)
        seq += 1
        result = None
        try:
            result = await self.attempts(group, ClientRequest(client, seq, command, False))
            return result
        finally:
            self.release(group, client, seq, usable=result is not None)

    async def call_certified(self, group: int, command: bytes
                             ) -> tuple[bytes, Any | None] | None:
        """:meth:`call`, and the certificate of what the result claims (``None`` if it
        claims nothing or f+1 matching attestations did not come): the group's
        answer in a form any third party checks (``replicaio.smr.certified``)."""
        attestations = self.attestations
        if attestations is None:
            result = await self.call(group, command)
            return None if result is None else (result, None)
        client, seq = await self.session(group)
        seq += 1
        result = None
        attestations.open(group, client, seq)
        try:
            result = await self.attempts(group, ClientRequest(client, seq, command, False))
            if result is None:
                return None
            return result, await attestations.certify(group, client, result)
        finally:
            attestations.close(group, client)
            self.release(group, client, seq, usable=result is not None)

    async def attempts(self, group: int, request: ClientRequest) -> bytes | None:
        replica = self.groups.replicas[group]
        client = request.client
        try:
            for _ in range(self.params.attempts_max):
                answer: Line[Any] = Line(self.context.node.scheduler, "caller.answer")
                self.waiting[(group, client)] = answer
                carries = replica.replica.authenticator.carries
                replica.on_request(self.vouch.wrap(request, group) if carries else request)
                got = await first(answer, self.context.sleep(self.params.attempt_timeout_us))
                if type(got) is Reply and got.seq == request.seq:
                    return bytes(got.result)
                if type(got) is Rejected and got.reason in GIVE_UP_REASONS:
                    self.context.count(f"txn_call_gave_up_{got.reason}")
                    return None
                await self.context.sleep(self.params.backoff_us)
            self.context.count("txn_call_attempts_max")
            return None
        finally:
            self.waiting.pop((group, client), None)
