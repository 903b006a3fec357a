"""The client-side gateway: Redis clients on a BFT cluster, trusting no single replica.

``replicaio kv gateway --cluster FILE --port P`` runs, next to the Redis
clients (on their host), a RESP server that is the very Redis front a node
runs (``replicaio.runtime.kv.service.RespService``: parsing, pipelines,
transactions, sessions, retries), over a different host: :class:`GatewayHost`.
Where a node's front hands a request to its own replica, the gateway

1. signs it as a client of its own (``replicaio.smr.auth``: one key, hence one
   client id, per front session; Ed25519 when the cluster's nodes use Ed25519,
   else the keyed-hash scheme of ``hmac`` clusters, which trust their clients),
2. sends it with ``REPLICAIO.SUBMIT`` to the replica it believes is the primary
   (the replies' leader hint) and asks the others for their answer with
   ``REPLICAIO.AWAIT`` (``replicaio.runtime.kv.relay``); when the front sends
   the same ``(client, seq)`` again (no decision in time: a faulty or changed
   primary), ``SUBMIT`` goes to **every** replica, and the backups relay it to
   the primary,
3. counts each replica's answer as that replica's vote (the connection says who
   answered, never the answer), and gives the front a result only once f+1
   replicas sent the same one (``replicaio.smr.client.Votes``); refusals
   likewise. With no decision by ``retry_after_ms`` the front sends the same
   ``(client, seq)`` again; a replica that lies, or f that do, cannot make the
   client see a result no correct replica computed.

The front's deadline for a request (``-UNKNOWN`` for a write after it, its
outcome unknown) is the gateway's, not the nodes' ``request_timeout_ms``:
``retry_after_ms`` + ``MULTICAST_AFTER_S`` + ``ATTEMPTS_COVERED`` x the nodes'
``request_timeout_ms`` (:meth:`GatewayHost.deadline_ms`; ADR 0050), so that
the attempt sent to every replica after a dead primary's, which waits the
nodes' whole timeout at each node, is not cut short. Each attempt still waits
the nodes' ``request_timeout_ms``.

With ``--fast-reads`` (the read-only optimisation, Castro and Liskov, TOCS
2002, section 5.1.3) a read goes first *unordered* to every replica, under a
reader identity of its own (its numbers never meet the ordered ones), and is
answered once R replicas sent the same result from their current state
(ceil((n + f + 1) / 2), 2f+1 of 3f+1; every replica with MinBFT's 2f+1); on a
mismatch or a timeout (``READ_UNORDERED_TIMEOUT_S``) it goes through the log
as before (the client library's read: ``SmrClient.read_unordered``). Writes
then need W matching replies, R + W >= n + f + 1 (as many as R for n >= 3f+1,
the ordinary f+1 with R = n): a read's quorum then meets every completed write
in a correct replica that executed it (``replicaio.smr.client.fast_quorums``).

**Sharded clusters** (``txn-kv-pbft``: G PBFT groups, every node a replica
of each; ``txn-kv-minbft``: G MinBFT groups, n = 2f+1, alike: nothing here
depends on the ordering; ``docs/transactions.md``). The gateway reads the slot map from the
cluster file's protocol, so its front routes as a node's does: a command (or
pipeline, or ``MULTI``/``EXEC``) whose keys live in one group is one SMR
request of that group, sent with ``REPLICAIO.SUBMIT``/``AWAIT`` naming the
group, signed under a key of the gateway's own *per front session and group*
(so no replica can pass a request signed for one group off in another) and
numbered 1, 2, 3... in that group's session whatever the front's numbers;
accepted on f+1 matching replies, as above. A transaction across groups
(``MULTI``/``EXEC``, ``MSET``/``MGET``/``DEL`` over several groups) is an
attempt the gateway signs with the front session's key
(``SignedTxnRequest``) and sends with ``REPLICAIO.TXN`` to **every** node;
each node drives it, and the outcome counts once f+1 nodes gave the same
definite one (``services.txn.outcomes``, the rule of ``TxnClient(replies=f+1)``;
the nodes that answered nothing definite are asked the same signed attempt
again before the outcome is called unknown, which the front answers
``-UNKNOWN``, never ``-TRYAGAIN``; ``--txn-first-wave-ms`` sends it to f+1
nodes first, the others once those cannot settle it or after that long): a
Byzantine node can neither alter the attempt (every group checks its part
against the signature, ADR 0029) nor make the client believe an outcome no
correct node reached.

A node's own RESP port stays a *trusted shortcut*: it answers from that one
replica (which is all a Raft client ever trusts). Use the gateway when the
replica you would talk to may be Byzantine.

The voting and the replica connections are the client library's
(``replicaio.runtime.smr_client.SmrClient``). Bounds: the library's
connections per replica, ``SIGNERS_MAX`` client keys (the oldest forgotten: its session then
starts over under a new id), every wait bounded by the front's timeouts; a
request the gateway cannot place (a group the slot map does not have, a
payload it cannot read) is refused to the front and counted
``gateway_refused_input_<reason>``.
Counters (``/metrics`` is not served; ``INFO`` shows the front's): ``gateway_*``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any, Final

from replicaio.assembly import protocol_factory
from replicaio.core.codec import Codec, DecodeError
from replicaio.runtime.config import Address, ClusterFile, HostParams
from replicaio.runtime.counters import Counters
from replicaio.runtime.kv.relay import UNGROUPED
from replicaio.runtime.kv.service import RespService
from replicaio.runtime.smr_client import SmrClient
from replicaio.runtime.txn_client import sign_attempt
from replicaio.services.txn.outcomes import OutcomeVotes
from replicaio.services.txn.protocol import TxnRequest, TxnResult
from replicaio.services.txn.slots import SlotMap
from replicaio.smr.api import ClientRequest, Rejected, Reply
from replicaio.smr.auth import ClientSigner
from replicaio.smr.client import Accepted, Refused
from replicaio.smr.groups import GroupRequest

logger = logging.getLogger("replicaio.gateway")

# A request still undecided this long after it was first sent goes to every
# replica (its primary may be faulty, or changed): sooner only loads the primary
# with copies, and a Byzantine fault tolerant backup that relays a request
# arms its view-change timer.
MULTICAST_AFTER_S: Final = 1.0
# Attempts of the node's whole ``request_timeout_ms`` the gateway's deadline
# covers after the multicast (``GatewayHost.deadline_ms``).
ATTEMPTS_COVERED: Final = 2
SIGNERS_MAX: Final = 65_536
ATTEMPTS: Final = -2  # the "group" of a front session's attempts across groups
OnDone = Callable[[str | None], None]


def cluster_slots(cluster: ClusterFile) -> SlotMap | None:
    """The slot map of a sharded cluster's protocol (``txn-kv-pbft:groups=G``...),
    ``None`` for a cluster of one group."""
    slots = getattr(protocol_factory(cluster.protocol), "slots", None)
    return slots if isinstance(slots, SlotMap) else None


class Session:
    """A front session's identity in one group: its key, and the numbers it uses
    there (1, 2, 3...: a fresh session, whatever numbers the front gives)."""

    __slots__ = ("front_seq", "seq", "signer")

    def __init__(self, signer: ClientSigner) -> None:
        self.signer = signer
        self.front_seq = -1  # the front's number of the request numbered ``seq``
        self.seq = 0

    def number(self, front_seq: int) -> int:
        """The session's number for the front's ``front_seq`` (the same one again
        for the front's resend of it)."""
        if front_seq != self.front_seq:
            self.front_seq = front_seq
            self.seq += 1
        return self.seq


def unwrap_read(codec: Codec, command: bytes) -> bytes:
    """The read inside the front's ``["at", time_ms, read]`` (the command itself
    if it is not one)."""
    try:
        value = codec.decode_value(command)
    except DecodeError:
        return command
    if (isinstance(value, tuple) and len(value) == 3 and value[0] == "at"
            and isinstance(value[2], bytes)):
        return value[2]
    return command


class GatewayHost:
    """What the Redis front needs of a host (``ServiceHost``), over the replicas."""

    def __init__(
        self, cluster: ClusterFile, service: RespService, *, fast_reads: bool = False,
        first_wave_ms: int = 0,
    ) -> None:
        self.cluster = cluster
        self.service = service
        self.codec = Codec()
        self.counters = Counters()
        self.smr = SmrClient(cluster, self.counters, fast_reads=fast_reads)
        self.n = self.smr.n
        self.fast_reads = self.smr.fast_reads
        self.quorum = self.smr.quorum  # W with fast reads (module docstring)
        # A sharded cluster's slot map (the front routes by it: ``kv.sharded``).
        self.slots = cluster_slots(cluster)
        # (front client id, group) -> its session in that group
        self.sessions: OrderedDict[tuple[int, int], Session] = OrderedDict()
        # unordered reads: one reader identity per front client and group, and its numbers
        self.readers: OrderedDict[tuple[int, int], tuple[ClientSigner, int]] = OrderedDict()
        # (front client id, group) -> (seq, when first sent, multicast yet) of its request
        self.sent: OrderedDict[tuple[int, int], tuple[int, float, bool]] = OrderedDict()
        self.tasks: set[asyncio.Task[None]] = set()
        self.node_id = 0
        # An attempt across groups is decided by f+1 nodes' matching outcomes.
        self.txn_replies = cluster.cluster_config().f + 1
        # > 0: an attempt goes to f+1 nodes first, to the others once those cannot
        # settle it or after this long (``OutcomeVotes.widen``); 0: to all at once.
        self.first_wave_s = first_wave_ms / 1000
        # The nodes' ``request_timeout_ms`` (what one attempt waits), set by
        # ``widen_deadline`` once the front read the cluster file's ``[service]``.
        self.node_timeout_ms = service.params.request_timeout_ms

    def deadline_ms(self) -> int:
        """The front's deadline for one of its requests, the gateway's: a
        first attempt through the believed primary for ``MULTICAST_AFTER_S``
        (plus the front's ``retry_after_ms``, when it sends the request again
        and the gateway multicasts it), then ``ATTEMPTS_COVERED`` attempts of
        the node's whole ``request_timeout_ms`` (each node waits that long for
        the result before it answers without one). The node's own timeout as
        the gateway's deadline (until 2026-12-07) cut the multicast attempt
        short: a write in flight when the primary died came back ``-UNKNOWN``
        after 2.5 s although the view change had ordered it
        (``tests/test_kv_gateway_deadline.py``)."""
        params = self.service.params
        return (int(MULTICAST_AFTER_S * 1000) + params.retry_after_ms
                + ATTEMPTS_COVERED * self.node_timeout_ms)

    def widen_deadline(self) -> None:
        """Once the front started (its ``params`` the cluster file's, as a
        node's front): keep the nodes' ``request_timeout_ms`` for each attempt
        and give the front :meth:`deadline_ms` for a request."""
        params = self.service.params
        self.node_timeout_ms = params.request_timeout_ms
        self.service.params = dataclasses.replace(params, request_timeout_ms=self.deadline_ms())

    def session(self, local: int, group: int = UNGROUPED) -> Session:
        """The session (signer, hence cluster-wide client id, and numbers) of the
        front's id ``local`` in ``group``."""
        key = (local, group)
        session = self.sessions.get(key)
        if session is not None:
            self.sessions.move_to_end(key)
            return session
        if len(self.sessions) >= SIGNERS_MAX:
            self.sessions.popitem(last=False)
            self.counters.count("bound_gateway_signers_max")
        session = Session(self.smr.new_signer())
        self.sessions[key] = session
        return session

    def refuse_input(self, reason: str, on_done: OnDone | None) -> None:
        """A request from the front the gateway cannot place: refused, counted (told
        on the loop's next turn: the front's ``send`` is still running)."""
        self.counters.count(f"gateway_refused_input_{reason}")
        if on_done is not None:
            asyncio.get_running_loop().call_soon(on_done, reason)

    async def submit(self, payload: Any, on_done: OnDone | None = None) -> None:
        """A front's request (the task path): as :meth:`try_submit`."""
        self.try_submit(payload, on_done)

    def try_submit(self, payload: Any, on_done: OnDone | None = None) -> bool:
        """A front's request, on the loop's callback (the front's fast path, no
        task of the front's): sign it, send it to the replicas and vote, in a
        task of the gateway's (the votes wait on the network). Always taken
        (``True``): the front bounds what it sends, one request per connection."""
        try:
            decoded = self.codec.decode(payload) if type(payload) is bytes else payload
        except DecodeError:
            self.refuse_input("bad_request", on_done)
            return True
        group = UNGROUPED
        if type(decoded) is GroupRequest:
            if self.slots is None or decoded.group >= self.slots.groups:
                self.refuse_input("unknown_group", on_done)
                return True
            group = decoded.group
            try:
                decoded = self.codec.decode(decoded.payload)
            except DecodeError:
                self.refuse_input("bad_request", on_done)
                return True
        elif type(decoded) is TxnRequest:
            if self.slots is None:
                self.refuse_input("not_sharded", on_done)
                return True
            if on_done is not None:
                on_done(None)
            self.spawn(self.transact(decoded))
            return True
        elif self.slots is not None:
            self.refuse_input("group_required", on_done)
            return True
        if type(decoded) is not ClientRequest:
            self.refuse_input("bad_request", on_done)
            return True
        request = decoded
        if on_done is not None:
            on_done(None)
        loop = asyncio.get_running_loop()
        key = (request.client, group)
        sent = self.sent.get(key)
        multicast = False
        if sent is not None and sent[0] == request.seq:
            # The front sends it again: it is either still being voted on, or
            # long undecided; then, once, to every replica.
            if sent[2] or loop.time() - sent[1] < MULTICAST_AFTER_S:
                self.counters.count("gateway_resends_absorbed")
                return True
            multicast = True
            self.counters.count("gateway_multicasts")
        first_sent = sent[1] if sent is not None and sent[0] == request.seq else loop.time()
        self.remember_sent(key, (request.seq, first_sent, multicast))
        self.spawn(self.vote(request, multicast, group))
        return True

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def transact(self, local: TxnRequest) -> None:
        """A front's attempt across groups: signed under the front session's key
        (its attempts numbered 1, 2, 3...), sent with ``REPLICAIO.TXN`` to every
        node (each drives it), decided once f+1 nodes gave the same definite
        outcome (``services.txn.outcomes``). Once every node answered without a
        match, the same signed attempt is asked again of the nodes that answered
        nothing definite (``OutcomeVotes.reask``: at most ``REASKS_MAX`` times,
        within the front's timeout); only then ``unknown`` (the front says
        ``-UNKNOWN``, never ``TRYAGAIN``: it may have committed)."""
        session = self.session(local.client, ATTEMPTS)
        signer = session.signer
        request = TxnRequest(signer.client, session.number(local.nonce), local.ops)
        argv = (b"REPLICAIO.TXN", self.codec.encode(sign_attempt(self.codec, request, signer)))
        params = self.service.params
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.node_timeout_ms / 1000
        self.counters.count("gateway_attempts")

        async def ask(node: int) -> tuple[int, bytes | None]:
            return node, await self.smr.pools[node].command(
                argv, max(0.0, deadline - loop.time()))

        votes = OutcomeVotes(request.client, request.nonce, self.txn_replies, range(self.n),
                             first=self.txn_replies if self.first_wave_s else None)
        outcome: TxnResult | None = None
        pending = {asyncio.ensure_future(ask(node)) for node in votes.asked}
        widen_at = loop.time() + self.first_wave_s
        try:
            while outcome is None:
                if len(votes.asked) < self.n and (
                        votes.short() or votes.complete() or loop.time() >= widen_at):
                    # The first wave cannot settle it, or did not in time (a faulty
                    # node among them may lie or stay silent): ask the others.
                    self.counters.count("gateway_attempts_widened")
                    pending |= {asyncio.ensure_future(ask(node)) for node in votes.widen()}
                if not pending:
                    again = votes.reask() if loop.time() < deadline else []
                    if not again:
                        break
                    # Undecided answers (drivers that gave up, or found it decided
                    # without its results): the same signed attempt again, a little later.
                    self.counters.count("gateway_attempt_reasks")
                    await asyncio.sleep(min(params.retry_backoff_ms / 1000,
                                            max(0.0, deadline - loop.time())))
                    pending = {asyncio.ensure_future(ask(node)) for node in again}
                    continue
                wait_s = (max(0.0, widen_at - loop.time()) if len(votes.asked) < self.n
                          else None)
                done, pending = await asyncio.wait(pending, timeout=wait_s,
                                                   return_when=asyncio.FIRST_COMPLETED)
                for finished in done:
                    node, answer = finished.result()
                    votes.heard(node, self.txn_answer(answer, request))
                outcome = votes.matched()
        finally:
            for task in pending:
                task.cancel()
        if outcome is None:
            outcome = votes.unknown()
        self.counters.count(f"gateway_attempts_{outcome.outcome}")
        self.service.on_outputs([TxnResult(local.client, local.nonce, outcome.outcome,
                                           outcome.reason, outcome.reads)])

    def txn_answer(self, answer: bytes | None, request: TxnRequest) -> TxnResult | None:
        """A node's answer to ``request``: its outcome, or ``None`` (none, or not one)."""
        if answer is None:
            return None
        try:
            result = self.codec.decode_as(answer, TxnResult)
        except DecodeError:
            self.counters.count("gateway_attempt_answers_undecodable")
            return None
        if result.client != request.client or result.nonce != request.nonce:
            self.counters.count("gateway_attempt_answers_unexpected")
            return None
        return result

    def reader(self, local: int, group: int = UNGROUPED) -> tuple[ClientSigner, int]:
        """The reader identity of the front's id ``local`` (in ``group``) and its
        next number."""
        key = (local, group)
        found = self.readers.pop(key, None)
        if found is None:
            if len(self.readers) >= SIGNERS_MAX:
                self.readers.popitem(last=False)
            found = (self.smr.new_signer(), 0)
        signer, number = found[0], found[1] + 1
        self.readers[key] = (signer, number)
        return signer, number

    async def read_unordered(self, local: ClientRequest, group: int = UNGROUPED) -> bool:
        """The read-only optimisation: whether a read quorum's matching answers
        from their current state decided ``local`` (else it goes through the log)."""
        signer, number = self.reader(local.client, group)
        self.counters.count("gateway_reads_unordered")
        decision = await self.smr.read_unordered(
            signer, number, local.command, group=None if group == UNGROUPED else group)
        if decision is not None:
            self.decide(local, decision)
            return True
        self.counters.count("gateway_reads_unordered_fallbacks")
        return False

    async def vote(self, local: ClientRequest, multicast: bool, group: int = UNGROUPED) -> None:
        unordered = self.fast_reads and local.read_only and not multicast
        if unordered and await self.read_unordered(local, group):
            return
        session = self.session(local.client, group)
        signer = session.signer
        # Reads go through the log like writes: every replica executes them at the
        # same position and answers alike, so f+1 can match (a read served from
        # each replica's own state would need a read quorum matching, and rarely get it
        # under writes). The front's clock wrapper is for unordered reads only.
        command = unwrap_read(self.codec, local.command) if local.read_only else local.command
        # (A sharded front's reads and its groups' sessions share its numbers:
        # each group's session numbers its own requests 1, 2, 3...)
        request = ClientRequest(signer.client, session.number(local.seq), command, False)
        timeout_s = self.node_timeout_ms / 1000
        self.counters.count("gateway_requests")
        decision = await self.smr.attempt(signer, request, multicast, timeout_s, self.quorum,
                                          None if group == UNGROUPED else group)
        if decision is not None:
            self.decide(local, decision)
            return
        self.counters.count("gateway_undecided")  # the front sends it again: multicast
        key = (local.client, group)
        sent = self.sent.get(key)
        if sent is not None and sent[0] == local.seq:
            self.sent[key] = (sent[0], sent[1] - MULTICAST_AFTER_S, False)

    def remember_sent(self, key: tuple[int, int], state: tuple[int, float, bool]) -> None:
        sent = self.sent
        sent.pop(key, None)
        if len(sent) >= SIGNERS_MAX:
            sent.popitem(last=False)
        sent[key] = state

    def decide(self, local: ClientRequest, decision: Accepted | Refused) -> None:
        if isinstance(decision, Accepted):
            self.counters.count("gateway_accepted")
            output: Reply | Rejected = Reply(local.client, local.seq, decision.result,
                                             decision.replicas[0])
        else:
            self.counters.count(f"gateway_refused_{decision.reason}")
            output = Rejected(local.client, local.seq, decision.reason)
        self.service.on_outputs([output])

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.smr.close()


async def serve_gateway(
    cluster: ClusterFile, address: Address, ready: asyncio.Event | None = None,
    *, fast_reads: bool = False, first_wave_ms: int = 0,
) -> None:
    """Run the gateway on ``address`` until cancelled."""
    service = RespService()
    host = GatewayHost(cluster, service, fast_reads=fast_reads, first_wave_ms=first_wave_ms)
    await service.start(host, address, HostParams())
    host.widen_deadline()
    logger.info("gateway listening on %s:%s for %d replicas (%d matching replies, "
                "%d ms per request%s%s)",
                address.host, service.port, host.n, host.quorum,
                service.params.request_timeout_ms,
                ", unordered reads" if host.fast_reads else "",
                "" if host.slots is None else f", {host.slots.groups} groups, transactions "
                f"across them on {host.txn_replies} matching outcomes")
    if ready is not None:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        host.close()
        await service.close()
