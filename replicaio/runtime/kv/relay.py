"""The replica's end of the client-side gateway: two commands on the RESP port.

A Redis client that must not trust one replica talks to a gateway
(``replicaio.runtime.gateway``), which signs each request itself and sends it
with ``REPLICAIO.SUBMIT <payload>`` (a codec-encoded ``AuthenticatedRequest``) to
the replica it believes is the primary, and ``REPLICAIO.AWAIT <client> <seq>``
to the others; after a timeout it sends ``SUBMIT`` to every replica (a backup
relays the request to the primary; the primary orders one copy). ``SUBMIT``
hands the request to the core like any client request (SMR checks the
signature); both answer with the codec-encoded ``Reply`` or ``Rejected`` this
replica's *own* execution gave for that ``(client, seq)`` (every replica of a
Byzantine fault tolerant service answers every request it executes), or
``-TRYAGAIN`` if none came within ``request_timeout_ms``. The gateway accepts a
result once f+1 replicas sent the same one.

On a sharded cluster (``txn-kv-pbft``: G groups, every node a replica of
each) both take the group last: ``REPLICAIO.SUBMIT <payload> <group>`` hands
the request to that group (a ``GroupRequest``) and ``REPLICAIO.AWAIT <client>
<seq> <group>`` waits for that group's answer; a group is required there and
refused elsewhere (``-ERR``, counted ``..._group``), and a request whose keys
live in another group is refused (``..._wrong_group``). ``REPLICAIO.TXN <payload>``
takes a client-signed transaction attempt across groups (a codec-encoded
``SignedTxnRequest``), has this node drive it, and answers with the
``TxnResult`` this node's driver reached (the gateway needs f+1 nodes to
agree: ``replicaio.services.txn.outcomes``).

Bounds: one outstanding submit per connection (the RESP front answers a
connection's commands in order), so at most ``client_connections_max`` at once;
a second submit for a client already awaited (in the same group; an attempt:
the same client) replaces the first (counted ``kv_gateway_replaced``). Bad
payloads are answered ``-ERR`` and counted
``rejected_resp_command_gateway_<reason>``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from replicaio.core.codec import Codec, DecodeError
from replicaio.runtime.client import ServiceHost
from replicaio.services.kv.resp import Reply as RespReply
from replicaio.services.kv.resp import RespError
from replicaio.services.txn.kv_store import encoded_command_keys
from replicaio.services.txn.protocol import SignedTxnRequest, TxnResult
from replicaio.services.txn.slots import SlotMap
from replicaio.smr.api import AuthenticatedRequest, Rejected, Reply
from replicaio.smr.groups import GroupRequest

SUBMIT_COMMAND: Final = b"replicaio.submit"
AWAIT_COMMAND: Final = b"replicaio.await"
TXN_COMMAND: Final = b"replicaio.txn"
GATEWAY_COMMANDS: Final = frozenset({SUBMIT_COMMAND, AWAIT_COMMAND, TXN_COMMAND})
UNGROUPED: Final = -1  # the group of a request on a cluster of one group


class GatewaySubmits:
    """Requests gateways submitted through this node, awaiting this replica's answer."""

    def __init__(self) -> None:
        # (group or UNGROUPED, client) -> (seq, answer)
        self.waiting: dict[tuple[int, int], tuple[int, asyncio.Future[Any]]] = {}
        # attempts across groups: client -> (nonce, outcome)
        self.attempts: dict[int, tuple[int, asyncio.Future[Any]]] = {}

    def on_output(self, output: Any, group: int = UNGROUPED) -> None:
        kind = type(output)
        if kind is TxnResult:
            found = self.attempts.get(output.client)
            if found is not None and found[0] == output.nonce and not found[1].done():
                found[1].set_result(output)
            return
        if kind is not Reply and kind is not Rejected:
            return
        found = self.waiting.get((group, output.client))
        if found is None or found[0] != output.seq or found[1].done():
            return
        found[1].set_result(output)

    async def answer(
        self, host: ServiceHost, argv: list[bytes], timeout_s: float,
        slots: SlotMap | None = None,
    ) -> tuple[RespReply, str | None]:
        """Answer one ``REPLICAIO.SUBMIT``, ``AWAIT`` or ``TXN``: the reply, and a
        rejection label if the command is bad. ``slots``: a sharded cluster's slot
        map (``None`` on a cluster of one group)."""
        groups = None if slots is None else slots.groups
        name = argv[0].lower()
        if name == TXN_COMMAND:
            return await self.transaction(host, argv, timeout_s, groups)
        arity = 3 if name == AWAIT_COMMAND else 2
        if len(argv) not in (arity, arity + 1):
            word = name.decode("ascii", "replace")
            return RespError(f"ERR wrong number of arguments for '{word}'"), "arity"
        group = UNGROUPED
        if len(argv) == arity + 1:
            if groups is None:
                return RespError("ERR this cluster has one group: give none"), "group"
            try:
                group = int(argv[arity])
            except ValueError:
                return RespError("ERR the group must be an integer"), "not_integer"
            if not 0 <= group < groups:
                return RespError(f"ERR no group {group} (groups 0..{groups - 1})"), "group"
        elif groups is not None:
            return RespError(f"ERR this cluster has {groups} groups: give the request's group "
                             "last"), "group"
        if name == AWAIT_COMMAND:
            try:
                client, seq = int(argv[1]), int(argv[2])
            except ValueError:
                return RespError("ERR client and seq must be integers"), "not_integer"
            if not (0 <= client < 1 << 63 and 1 <= seq < 1 << 63):
                return RespError("ERR client or seq out of range"), "out_of_range"
            return await self.wait(host, client, seq, None, timeout_s, group), None
        try:
            request = host.codec.decode_as(argv[1], AuthenticatedRequest)
        except DecodeError as error:
            return RespError(f"ERR undecodable request: {error.reason}"), "undecodable"
        client, seq = request.request.client, request.request.seq
        if slots is not None:
            keys = encoded_command_keys(request.request.command) or ()
            if any(slots.group_of(key) != group for key in keys):
                # (a gateway with another slot map: it would write where no read looks)
                return RespError(f"ERR a key of the request does not live in group {group} "
                                 "(the cluster's slot map)"), "wrong_group"
        payload = argv[1] if group == UNGROUPED else host.codec.encode(
            GroupRequest(group, argv[1]))
        return await self.wait(host, client, seq, payload, timeout_s, group), None

    async def transaction(
        self, host: ServiceHost, argv: list[bytes], timeout_s: float, groups: int | None
    ) -> tuple[RespReply, str | None]:
        """``REPLICAIO.TXN <SignedTxnRequest>``: this node drives the attempt; its
        ``TxnResult`` (the node refuses an unsigned one: ``aborted unsigned``)."""
        if len(argv) != 2:
            return RespError("ERR wrong number of arguments for 'replicaio.txn'"), "arity"
        if groups is None:
            return RespError("ERR this cluster has one group: no transactions across "
                             "groups"), "group"
        try:
            signed = host.codec.decode_as(argv[1], SignedTxnRequest)
        except DecodeError as error:
            return RespError(f"ERR undecodable attempt: {error.reason}"), "undecodable"
        request = signed.request
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if request.client in self.attempts:
            host.counters.count("kv_gateway_replaced")
        self.attempts[request.client] = (request.nonce, future)

        def on_done(reason: str | None) -> None:
            if reason is not None and not future.done():
                future.set_result(TxnResult(request.client, request.nonce, "aborted", reason,
                                            b""))

        try:
            await host.submit(argv[1], on_done)
            try:
                answer = await asyncio.wait_for(asyncio.shield(future), timeout_s)
            except TimeoutError:
                host.counters.count("kv_gateway_timeouts")
                return RespError("TRYAGAIN no outcome from this node yet"), None
        finally:
            if self.attempts.get(request.client, (0, None))[1] is future:
                del self.attempts[request.client]
        host.counters.count("kv_gateway_attempts")
        return host.codec.encode(answer), None

    async def wait(
        self, host: ServiceHost, client: int, seq: int, payload: bytes | None, timeout_s: float,
        group: int = UNGROUPED,
    ) -> RespReply:
        """Submit ``payload`` (if any), then wait for this replica's answer."""
        codec: Codec = host.codec
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        key = (group, client)
        if key in self.waiting:
            host.counters.count("kv_gateway_replaced")
        self.waiting[key] = (seq, future)

        def on_done(reason: str | None) -> None:
            if reason is not None and not future.done():
                future.set_result(Rejected(client, seq, reason))

        try:
            if payload is not None:
                await host.submit(payload, on_done)
            try:
                answer = await asyncio.wait_for(asyncio.shield(future), timeout_s)
            except TimeoutError:
                host.counters.count("kv_gateway_timeouts")
                return RespError("TRYAGAIN no answer from this replica yet")
        finally:
            if self.waiting.get(key, (0, None))[1] is future:
                del self.waiting[key]
        host.counters.count("kv_gateway_answers")
        return codec.encode(answer)
