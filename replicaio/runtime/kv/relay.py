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

Bounds: one outstanding submit per connection (the RESP front answers a
connection's commands in order), so at most ``client_connections_max`` at once;
a second submit for a client already awaited replaces the first (counted
``kv_gateway_replaced``). Bad payloads are answered ``-ERR`` and counted
``rejected_resp_command_gateway_<reason>``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from replicaio.core.codec import Codec, DecodeError
from replicaio.runtime.client import ServiceHost
from replicaio.services.kv.resp import Reply as RespReply
from replicaio.services.kv.resp import RespError
from replicaio.smr.api import AuthenticatedRequest, Rejected, Reply

SUBMIT_COMMAND: Final = b"replicaio.submit"
AWAIT_COMMAND: Final = b"replicaio.await"
GATEWAY_COMMANDS: Final = frozenset({SUBMIT_COMMAND, AWAIT_COMMAND})


class GatewaySubmits:
    """Requests gateways submitted through this node, awaiting this replica's answer."""

    def __init__(self) -> None:
        self.waiting: dict[int, tuple[int, asyncio.Future[Reply | Rejected]]] = {}

    def on_output(self, output: Any) -> None:
        kind = type(output)
        if kind is not Reply and kind is not Rejected:
            return
        found = self.waiting.get(output.client)
        if found is None or found[0] != output.seq or found[1].done():
            return
        found[1].set_result(output)

    async def answer(
        self, host: ServiceHost, argv: list[bytes], timeout_s: float
    ) -> tuple[RespReply, str | None]:
        """Answer one ``REPLICAIO.SUBMIT`` or ``REPLICAIO.AWAIT``: the reply, and a
        rejection label if the command is bad."""
        name = argv[0].lower()
        if name == AWAIT_COMMAND:
            if len(argv) != 3:
                return RespError("ERR wrong number of arguments for 'replicaio.await'"), "arity"
            try:
                client, seq = int(argv[1]), int(argv[2])
            except ValueError:
                return RespError("ERR client and seq must be integers"), "not_integer"
            if not (0 <= client < 1 << 63 and 1 <= seq < 1 << 63):
                return RespError("ERR client or seq out of range"), "out_of_range"
            return await self.wait(host, client, seq, None, timeout_s), None
        if len(argv) != 2:
            return RespError("ERR wrong number of arguments for 'replicaio.submit'"), "arity"
        try:
            request = host.codec.decode_as(argv[1], AuthenticatedRequest)
        except DecodeError as error:
            return RespError(f"ERR undecodable request: {error.reason}"), "undecodable"
        client, seq = request.request.client, request.request.seq
        return await self.wait(host, client, seq, argv[1], timeout_s), None

    async def wait(
        self, host: ServiceHost, client: int, seq: int, payload: bytes | None, timeout_s: float
    ) -> RespReply:
        """Submit ``payload`` (if any), then wait for this replica's answer."""
        codec: Codec = host.codec
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply | Rejected] = loop.create_future()
        if client in self.waiting:
            host.counters.count("kv_gateway_replaced")
        self.waiting[client] = (seq, future)

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
            if self.waiting.get(client, (0, None))[1] is future:
                del self.waiting[client]
        host.counters.count("kv_gateway_answers")
        return codec.encode(answer)
