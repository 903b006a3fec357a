"""The Redis front of the replicated key-value store: a client service of the live runtime.

Theory of operation
-------------------
:class:`RespService` is the ``resp`` client service (``[host] client_service =
"resp"``; see ``replicaio.runtime.client``). Each node serves Redis clients on
its client port; every node takes reads and writes. Commands go through SMR
(``replicaio.smr``) as ``ClientRequest`` s, so they are linearizable whatever
node a client talks to: writes are ordered by the log, reads are served after
the read barrier (Raft's read-index), and a follower forwards both to the leader
(SMR forwarding; no ``MOVED`` redirections: clients need not know the leader).

One connection, no task on the common path. Each connection is an
``asyncio.Protocol`` (``connection.ClientProtocol``; a TLS connection is handed
over to one once its handshake is done): the bytes asyncio reads go to the
connection's parser (``resp.RespParser``, bounded) and its **pump**
(:meth:`RespService.pump`), on the loop's callback. The pump queues the commands
parsed, stops reading (``pause_reading``: TCP backpressure) while
``pipeline_depth_max`` commands, or ``pipeline_bytes_max`` bytes of them, wait for
their replies, or while more than ``reply_bytes_max`` bytes of replies wait to be
sent (a client that does not read its replies: the transport's write buffer high
mark, ``pause_writing``), and answers them in order: a local command at once
(``redis_commands.plan``), consecutive replicated ones packed into **one SMR
request** (a ``batch`` command when there are several; at most
``group_commands_max`` commands and ``group_bytes_max`` bytes), so a pipeline
(the commands of one read, or of the reads that came while the request before
was in flight) becomes one replicated request, executed at one position of the
log, in order. That request is handed to the node by ``host.try_submit``
(:class:`connection.Flight`, no task), and its outcome, delivered by
:meth:`RespService.on_outputs` from the node's batch, writes the group's replies
in one write and pumps the next commands. What must wait goes to a task that
runs the general path (:meth:`RespService.answer`) while the connection takes
nothing else: ``MULTI`` ... ``EXEC``, ``WATCH``, ``RESET``, an operator's and a
gateway's commands, a connection's first write (its session's registration), a
request to send again (no answer within ``retry_after_ms``, a passing refusal,
an expired session), a full inbox (``submit`` waits for room). On a sharded
cluster a run of commands whose keys live in one group takes the same path as
that group's request (``GroupRequest``, under the connection's session in that
group, ``Connection.group_seqs``); a command across groups or without keys, a
group's first write and a request refused for keys a transaction across
groups holds (``LOCKED_RESULT``: nothing applied; sent again after a pause) go
to the task. A protocol violation is counted
(``rejected_resp_<reason>``), answered ``-ERR Protocol error: ...`` after the
replies to the commands before it, and closes the connection; so does the end of
the client's input (after the replies to everything it sent). A connection
reset (or aborted by a timeout, an eviction, ``CLIENT KILL``) lets its request
in flight finish and drops the commands not yet sent, as Redis drops a gone
client's query buffer. Before each request and each local reply the pump waits
while more than ``reply_bytes_max`` bytes of replies are unsent, so a connection
holds at most that plus one request's replies. Those come back as one SMR
result, bounded by the store's ``result_bytes_max``: a group with writes counts
each read's largest reply (:func:`reply_bytes_max`) against it; a group of reads
only is sent whole, and if its values do not all fit (``result_too_large``), the
commands that got their values are answered and the rest is sent again
(``kv_read_groups_split``). ``MULTI`` ... ``EXEC`` and ``WATCH`` are planned by
``transactions.plan_transaction`` first: a transaction is queued on the
connection and sent at ``EXEC`` as one ``exec`` command (all or nothing, at one
position of the log).

Timeouts (a periodic sweep, :meth:`RespService.sweep`): a connection with
nothing to answer that sends nothing for ``idle_timeout_ms`` (Redis's
``timeout``), or that stops reading its replies for as long (``stalled``), and
one that takes more than ``request_read_timeout_ms`` to send a whole command,
are closed and counted ``timeout_resp_<idle|stalled|request_read>``; 0 turns a
timeout off. Waiting for SMR is never a timeout here (``request_timeout_ms``
bounds it).

At-most-once. Each connection has its own SMR client ids (unique across the
cluster and across restarts: ``incarnation``, node id and a counter,
:func:`smr_client_id`): one for its writes, one for its reads (reads touch no
session, and a late answer to a read must never pass for a write's). Before
its first write a connection registers a session (an empty command, seq 1,
awaited); its writes are then numbered 2, 3, ... and it has at most one
request in SMR at a time. A request that gets no answer within
``retry_after_ms``, or is refused for a passing reason (``busy``, no leader
known, a read timing out), is sent again with the **same** (client, seq): the
session table executes it at most once, even if the session is evicted
meanwhile (SMR then refuses it: ``session_expired``; sent once, it certainly
did not run and goes again under a new registered id; sent more than once, its
outcome is unknown: ``-UNKNOWN session expired ...``). After
``request_timeout_ms`` without a result a read gets ``-TRYAGAIN no quorum ...``
(it had no effect) and a write ``-UNKNOWN no quorum ...``: its outcome is
unknown (it may still take effect), which the client must treat as such. Never
``TRYAGAIN`` for a write: Redis clients send a TRYAGAIN again as a new command,
and an INCR whose answer was lost would apply twice. No reply is ever made up: every
answer comes from the state machine's execution.

Bounds (:class:`RespParams`, the cluster file's ``[service]`` table): the
parser's (``bulk_bytes_max``, ``array_items_max``, ``inline_bytes_max``,
``command_bytes_max``), ``pipeline_depth_max``, ``group_commands_max``,
``group_bytes_max``, ``pipeline_bytes_max``, ``reply_bytes_max``,
``transaction_commands_max``, ``transaction_bytes_max``, ``watch_keys_max``, and
``[host] client_connections_max`` clients. A client beyond it evicts the
connection idle the longest, if idle at least ``evict_idle_after_ms``
(``kv_clients_evicted_idle``, ``INFO`` ``evicted_clients``); if none is, it gets
``-ERR max number of clients reached`` (``bound_client_connections_max``). So one connection holds
at most about its parser's buffer, ``pipeline_bytes_max`` plus one command,
and ``reply_bytes_max`` plus one request's replies.

Metrics (``collect_metrics``, through the node's endpoint): request latency
per command (``replicaio_kv_request_seconds``), and the protocol's gauges
(``replicaio_protocol_<name>``, ``replicaio.services.kv.status``). Counters go
to the runtime's counters: ``rejected_resp_<reason>`` (protocol violations),
``rejected_resp_command_<reason>`` (bad commands), ``kv_retries``,
``kv_redirects``, ``kv_no_quorum``, ``kv_smr_requests``, ``kv_smr_commands``,
``kv_transactions``, ``kv_transactions_aborted``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Coroutine, Iterator, Mapping
from typing import Any, Final, cast

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

from replicaio.assembly import kv_value_sizes
from replicaio.core.codec import DecodeError
from replicaio.core.stream import GroupOutput
from replicaio.runtime import hoptrace
from replicaio.runtime.client import ListeningService, ServiceHost, register_service
from replicaio.runtime.config import Address, HostParams
from replicaio.runtime.kv import sharded
from replicaio.runtime.kv.admin import ADMIN_COMMAND, run_admin
from replicaio.runtime.kv.backup import SNAPSHOT_COMMAND, run_snapshot
from replicaio.runtime.kv.connection import (
    IDLE,
    REPLY_BOUND,
    REQUEST,
    ROOM,
    ClientProtocol,
    Command,
    Connection,
    EndOfInput,
    Flight,
    Group,
    Item,
    RetryTimers,
    command_size,
    plans_that_fit,
)
from replicaio.runtime.kv.info import role_reply, server_info
from replicaio.runtime.kv.params import RespParams, parse_resp_params
from replicaio.runtime.kv.relay import GATEWAY_COMMANDS, UNGROUPED, GatewaySubmits
from replicaio.runtime.kv.requests import (
    CLIENT_IDS_MAX,
    EXPIRED_ERROR,
    NOT_REGISTERED_ERROR,
    READ_EXPIRED_ERROR,
    RETRY_LATER,
    RETRY_NOW,
    RETRYABLE,
    SESSION_EXPIRED,
    Outcome,
    Retry,
    SessionExpired,
    Waiter,
    settle,
    smr_client_id,
)
from replicaio.runtime.logs import RateLimitedLog
from replicaio.runtime.metrics import LoopHistogram, LoopHistograms
from replicaio.services.kv.redis_commands import (
    METRIC_NAMES,
    finish_get,
    finish_set,
    is_replicated,
    plan,
)
from replicaio.services.kv.redis_plan import KV_PARAMS, Local, Replicated
from replicaio.services.kv.resp import (
    NULL_ARRAY,
    OK,
    OK_BYTES,
    Reply,
    RespError,
    RespParser,
    RespProtocolError,
    encode_reply,
)
from replicaio.services.kv.state_machine import (
    PUT_RESULT,
    VALUE_BYTES_CEILING,
    KvError,
    KvResult,
    decode_batch_result,
    decode_result,
    encode_at,
    encode_batch,
    encode_get,
    encode_put,
)
from replicaio.services.kv.status import protocol_status, role_name
from replicaio.services.kv.transactions import (
    TRANSACTION_COMMANDS,
    Exec,
    TransactionPlan,
    Watch,
    plan_transaction,
)
from replicaio.services.txn.kv_store import LOCKED_RESULT
from replicaio.services.txn.protocol import TxnResult
from replicaio.services.txn.slots import SlotMap
from replicaio.smr.api import ClientRequest, Redirect, Rejected
from replicaio.smr.api import Reply as SmrReply
from replicaio.smr.auth import NodeClientSigner
from replicaio.smr.client import BYZANTINE
from replicaio.smr.groups import FRONT_CLIENT_BIT, GroupRequest

__all__ = ["RespParams", "RespService", "parse_resp_params", "smr_client_id"]


def node_vouch(host: ServiceHost) -> NodeClientSigner | None:
    """On a Byzantine fault tolerant cluster, the front's requests are signed by its
    node (the trusted shortcut: ``replicaio.smr.auth``, scheme ``node``); else None."""
    core = getattr(host, "core", None)
    config = getattr(core, "config", None)
    if core is None or config is None or config.resilience not in BYZANTINE:
        return None
    return NodeClientSigner(host.codec, core.signer)

logger = logging.getLogger("replicaio.kv")

# Commands that may need to wait (an operator's, a gateway's, MULTI ... EXEC and
# WATCH, RESET): answered by a task (``RespService.answer``), not on the pump.
AWAITING_COMMANDS: Final = frozenset(
    {ADMIN_COMMAND, SNAPSHOT_COMMAND, b"reset", *TRANSACTION_COMMANDS, *GATEWAY_COMMANDS})
LATENCY_BUCKETS: Final = (
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0
)
GROUP_REPLY_BYTES_MAX: Final = KV_PARAMS.result_bytes_max
SWEEP_PERIOD_S_MAX: Final = 1.0  # how often timeouts are checked, at most
COMMAND_NAMES: Final = METRIC_NAMES | {name.decode() for name in TRANSACTION_COMMANDS}


class RespService(ListeningService):
    """The ``resp`` client service; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.host: ServiceHost | None = None
        self.host_params = HostParams()
        self.params = RespParams()
        # the protocol's largest value and SMR command (values=), from start()
        self.value_bytes_max, self.smr_command_bytes_max = kv_value_sizes(None)
        self.limits = self.params.limits()
        self.transaction_limits = self.params.transaction_limits()
        self.connections_open: set[Connection] = set()
        self.waiters: dict[int, Waiter] = {}
        self.connection_next = 0
        self.sweeper: asyncio.Task[None] | None = None
        self.retries: RetryTimers | None = None  # every Flight's retry_after_ms
        self.loop: asyncio.AbstractEventLoop | None = None  # start()'s
        self.reply_budget = min(self.params.reply_bytes_max, GROUP_REPLY_BYTES_MAX)
        self.client_next = 0  # SMR client ids handed out in this incarnation
        self.scripts: dict[str, str] = {}  # SCRIPT LOAD: sha1 -> store command (bounded)
        self.connections_received = 0
        self.clients_evicted = 0  # idle connections closed for a new client (evict_idle)
        self.commands_processed = 0
        self.incarnation = 0
        self.node_id = 0
        self.vouch: NodeClientSigner | None = None  # Byzantine clusters: sign as the node
        self.gateway_submits = GatewaySubmits()
        self.slots: SlotMap | None = None  # a sharded cluster's (``sharded``)
        self.transactions: dict[int, tuple[int, asyncio.Future[Any]]] = {}  # across groups
        self.started = time.monotonic()
        self.warn = RateLimitedLog(logger)
        self.registry = CollectorRegistry(auto_describe=False)
        self.latency = LoopHistograms(
            "replicaio_kv_request_seconds",
            "Redis command latency at the node, from parse to reply, by command",
            LATENCY_BUCKETS, ["command"], registry=self.registry,
        )
        # Each command's child of ``latency``, found without building a tuple per
        # call; as many as there are command names, a bounded set.
        self.latency_by_command: dict[str, LoopHistogram] = {}
        self.hops: hoptrace.HopTrace | None = None  # the host's, when it traces

    @staticmethod
    def check_params(table: Mapping[str, Any], protocol: str | None = None) -> None:
        """Validate the ``[service]`` table (called when the cluster file is loaded)."""
        parse_resp_params(table, protocol)

    # -- ClientService -----------------------------------------------------------------------

    async def start(self, host: ServiceHost, address: Address, params: HostParams) -> None:
        self.host = host
        # Taken once (``asyncio.get_running_loop`` checks the process id, a system
        # call, each time it is asked; ADR 0053).
        self.loop = asyncio.get_running_loop()
        self.host_params = params
        cluster = getattr(host, "cluster", None)
        protocol = getattr(cluster, "protocol", None)
        self.params = parse_resp_params(getattr(cluster, "service_params", None) or {},
                                        protocol if isinstance(protocol, str) else None)
        self.value_bytes_max, self.smr_command_bytes_max = kv_value_sizes(
            protocol if isinstance(protocol, str) else None)
        self.limits = self.params.limits()
        self.reply_budget = min(self.params.reply_bytes_max, GROUP_REPLY_BYTES_MAX)
        self.transaction_limits = self.params.transaction_limits()
        self.node_id = int(getattr(host, "node_id", 0))
        self.vouch = node_vouch(host)
        self.slots = sharded.slots_of(self)
        hops = getattr(host, "hops", None)
        self.hops = hops if isinstance(hops, hoptrace.HopTrace) else None
        await self.listen_clients(address)
        timeouts = [timeout for timeout in (self.params.idle_timeout_ms,
                                            self.params.request_read_timeout_ms) if timeout]
        if timeouts:
            period = min(SWEEP_PERIOD_S_MAX, min(timeouts) / 4000)
            self.sweeper = asyncio.get_running_loop().create_task(self.sweep(period))

    async def close(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.sweeper
        if self.retries is not None:
            self.retries.close()
        if self.server is not None:
            self.server.close()  # no new clients; then every connection is closed
        for connection in list(self.connections_open):
            connection.finished = True
            connection.transport.abort()
        self.connections_open.clear()
        await super().close()

    async def sweep(self, period: float) -> None:
        """Close the connections that ran into a timeout (counted ``timeout_resp_<kind>``)."""
        params = self.params
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for connection in list(self.connections_open):
                kind = connection.expired(now, params)
                if kind is None or connection.timed_out is not None:
                    continue
                connection.timed_out = kind
                self.count(f"timeout_resp_{kind}")
                connection.transport.abort()  # unsent replies are dropped: nobody reads them

    def connections(self) -> int:
        return len(self.connections_open)

    def expects_outputs(self) -> bool:
        """Whether a request of this node's clients is open: a waiting client, a
        gateway's submission or attempt, a transaction across groups (kept once
        expected). Otherwise ``on_outputs`` would drop every output (another
        node's clients' replies, Raft's ``Applied``): a follower with no client
        of its own skips it (the host asks first)."""
        submits = self.gateway_submits
        return bool(self.waiters or submits.waiting or submits.attempts or self.transactions)

    def on_outputs(self, outputs: list[Any]) -> None:
        """Replies, redirections and refusals for our connections' requests."""
        waiters = self.waiters
        submits = self.gateway_submits
        for output in outputs:
            kind = type(output)
            group = UNGROUPED
            if kind is GroupOutput or kind is TxnResult:
                if kind is GroupOutput:
                    group = output.group
                elif submits.attempts:
                    submits.on_output(output)
                output = self.on_group_output(output)
                kind = type(output)
            if kind is not SmrReply and kind is not Rejected and kind is not Redirect:
                continue
            if submits.waiting:
                submits.on_output(output, group)
            waiter = waiters.get(output.client)
            if waiter is None or waiter.seq != output.seq:
                continue  # another node's client, or an answer we no longer wait for
            if kind is SmrReply:
                on_outcome = waiter.on_outcome  # (Waiter.settle, inline: every reply)
                if on_outcome is not None:
                    on_outcome(output.result)
                else:
                    waiter.settle(output.result)
            elif kind is Redirect:
                self.count("kv_redirects")  # no leader known yet (we forward otherwise)
                waiter.settle(RETRY_LATER)
            else:
                waiter.settle(self.refused(output.reason))

    def on_group_output(self, output: Any) -> Any:
        """A sharded cluster's output: a group's reply (unwrapped, for the loop of
        ``on_outputs``) or a transaction's outcome (settled here)."""
        if type(output) is GroupOutput:
            assert self.host is not None
            try:
                return self.host.codec.decode(output.body)
            except DecodeError:
                return None
        expected = self.transactions.get(output.client)
        if expected is not None and expected[0] == output.nonce and not expected[1].done():
            expected[1].set_result(output)
        return None

    def expect_transaction(self, client: int, nonce: int) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.transactions[client] = (nonce, future)
        return future

    def refused(self, reason: str) -> Outcome:
        if reason in RETRYABLE:
            return RETRY_LATER
        if reason == "session_expired":
            return SESSION_EXPIRED
        return RespError(f"ERR request refused by the replica: {reason}")

    # -- one client ----------------------------------------------------------------------------

    async def listen_clients(self, address: Address) -> None:
        """Accept Redis clients on ``address``: each connection's bytes go straight
        from asyncio's callbacks (:class:`ClientProtocol`) to the parser and the
        connection's :meth:`pump`, on the loop. A TLS connection is handed over to
        the same protocol once its handshake is done (:meth:`on_tls_client`)."""
        if self.tls is not None:
            await self.listen(address, self.on_tls_client)
            return
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: ClientProtocol(self), address.host, address.port, reuse_address=True
        )

    async def on_tls_client(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        """A client whose TLS handshake passed (``replicaio.runtime.tls``): its
        transport goes over to a :class:`ClientProtocol`, with what the
        handshake's stream reader still holds."""
        ready = getattr(self.host, "ready", None)
        if isinstance(ready, asyncio.Event):
            await ready.wait()
        transport = cast(asyncio.Transport, writer.transport)  # (uvloop's: not a subclass)
        protocol = ClientProtocol(self)
        protocol.streams = (reader, writer)  # kept: a StreamWriter closes its transport in __del__
        held = getattr(reader, "_buffer", None)  # (StreamReader has no public peek)
        data = bytes(held) if held else b""
        if held:
            held.clear()
        eof = reader.at_eof() or bool(getattr(reader, "_eof", False))
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if data:
            protocol.data_received(data)
        if eof:
            protocol.eof_received()
        connection = protocol.connection
        if connection is not None and not connection.reading_paused:
            transport.resume_reading()  # (the stream reader may have paused it)

    def on_connected(self, protocol: ClientProtocol, transport: asyncio.Transport) -> None:
        """A new connection: admitted at once, or once the node has started."""
        ready = getattr(self.host, "ready", None)
        if isinstance(ready, asyncio.Event) and not ready.is_set():
            transport.pause_reading()
            task = asyncio.get_running_loop().create_task(
                self.admit_when_ready(protocol, transport, ready))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return
        self.admit(protocol, transport)

    async def admit_when_ready(self, protocol: ClientProtocol, transport: asyncio.Transport,
                               ready: asyncio.Event) -> None:
        await ready.wait()  # the incarnation is known once the node has started
        if transport.is_closing():
            return
        self.admit(protocol, transport)
        connection = protocol.connection
        if connection is None:
            return
        if not connection.reading_paused:
            transport.resume_reading()
        if protocol.early:
            data, protocol.early = bytes(protocol.early), bytearray()
            self.on_data(connection, data)
        if protocol.early_eof:
            self.on_eof(connection)

    def admit(self, protocol: ClientProtocol, transport: asyncio.Transport) -> None:
        host = self.host
        assert host is not None
        if self.slots is None:
            self.slots = sharded.slots_of(self)  # (the node protocol exists by now)
        if (len(self.connections_open) >= self.host_params.client_connections_max
                and not self.evict_idle()):
            self.count("bound_client_connections_max")
            transport.write(b"-ERR max number of clients reached\r\n")
            transport.close()
            return
        self.incarnation = int(getattr(getattr(host, "core", None), "incarnation", 0))
        read_client, write_client = self.new_client_id(), self.new_client_id()
        if read_client is None or write_client is None:
            transport.write(b"-ERR this node ran out of client ids; restart it\r\n")
            transport.close()
            return
        connection_id = self.connection_next
        self.connection_next += 1
        self.connections_received += 1
        connection = Connection(self, transport, connection_id, read_client, write_client,
                                RespParser(self.limits))
        # pause_writing once more than reply_bytes_max replies are unsent.
        transport.set_write_buffer_limits(high=self.params.reply_bytes_max)
        self.connections_open.add(connection)
        protocol.connection = connection

    # -- a connection's bytes, in order, without a task --------------------------------------

    def on_data(self, connection: Connection, data: bytes) -> None:
        connection.active = time.monotonic()
        connection.parser.feed(data)
        self.pump(connection)

    def on_eof(self, connection: Connection) -> None:
        connection.eof = True
        self.pump(connection)

    def on_lost(self, connection: Connection) -> None:
        """The connection is gone (reset, or aborted by us: a timeout, an eviction,
        CLIENT KILL): the request in flight runs to its end, the commands not yet
        sent are dropped (as Redis drops a gone client's query buffer: nobody could
        learn their outcome), and it ends."""
        connection.lost = connection.eof = True
        for item in connection.items:
            if isinstance(item, Command):
                connection.write(b"", item)
        connection.items.clear()
        connection.writing_paused = False
        connection.wake_writers()
        self.pump(connection)

    def pump(self, connection: Connection) -> None:
        """Parse what was read (within the connection's bounds) and answer what can be
        answered now, in order, until the connection is busy (an SMR request in
        flight, or a task) or has nothing left. Called from asyncio's callbacks and
        from a request's outcome: no task switch on the common path."""
        if connection.pumping or connection.finished:
            return
        connection.pumping = True
        try:
            while connection.busy is None:
                self.parse(connection)
                if not connection.items or not self.take(connection):
                    break
        finally:
            connection.pumping = False

    def parse(self, connection: Connection) -> None:
        """Queue the commands the parser holds while the connection is within its
        bounds; stop reading the socket at a bound, read again below it."""
        if connection.ended:
            return
        if connection.lost:  # reset: what was not parsed is dropped
            connection.push(EndOfInput())
            connection.ended = True
            return
        parser = connection.parser
        params = self.params
        hops = self.hops
        try:
            while True:
                bound = connection.full(params)
                if bound is not None:
                    if not connection.reading_paused:
                        if bound != REPLY_BOUND:  # (that one is counted by pause_writing)
                            self.count(bound)
                        connection.reading_paused = True
                        connection.waiting = ROOM
                        connection.transport.pause_reading()
                    return
                # (an empty buffer holds no command: whole_multibulk empties it
                # after the last one, so a lone command's second look costs no call)
                argv = parser.next_command() if parser.buffer else None
                if argv is None:
                    break
                if hops is not None:
                    hops.stamp(hoptrace.COMMAND)
                connection.push(Command(argv, time.perf_counter(), command_size(argv)))
        except RespProtocolError as error:
            self.reject(error.reason)
            connection.push(EndOfInput(error))
            connection.ended = True
            connection.transport.pause_reading()
            return
        if connection.eof:
            if parser.in_command() and connection.timed_out is None:
                self.reject("truncated_frame")
            connection.push(EndOfInput())
            connection.ended = True
            return
        if connection.reading_paused:
            connection.reading_paused = False
            connection.transport.resume_reading()
        if not parser.in_command():
            connection.waiting = IDLE
        elif connection.waiting is not REQUEST:
            connection.waiting = REQUEST
            connection.command_started = time.monotonic()

    def plain(self, connection: Connection, item: Command) -> bool:
        """Whether ``item`` may be answered without a task: a key-value command (one
        SMR request with its neighbours; on a sharded cluster, if its keys live in
        one group: ``take``) or a local one, outside MULTI; the rest goes to
        :meth:`answer` in a task."""
        if connection.closing or connection.transaction.active:
            return False
        return item.argv[0].lower() not in AWAITING_COMMANDS

    def take(self, connection: Connection) -> bool:
        """Take queued items: answer a local command, or send the next group of
        replicated ones as one SMR request, or hand what needs to wait to a task.
        True if the pump may go on at once."""
        items = connection.items
        head = items[0]
        if isinstance(head, EndOfInput):
            items.popleft()
            if head.error is not None:
                reply = RespError(f"ERR Protocol error: {head.error.message}")
                connection.write(encode_reply(reply, connection.protocol), None)
            self.end(connection)
            return False
        if connection.writing_paused and (
                connection.reply_backlog() > self.params.reply_bytes_max):
            return False  # resume_writing pumps again
        if len(items) == 1 and self.slots is None and self.take_lone(connection, head):
            return True
        if not self.plain(connection, head):
            self.answer_in_task(connection)
            return False
        group = Group()
        slots = self.slots
        checked = True  # (the head: plain, as found above)
        while items:
            item = items[0]
            if isinstance(item, EndOfInput) or not (checked or self.plain(connection, item)):
                break
            checked = False
            argv = item.argv
            if group.members and not is_replicated(argv):
                break  # (before HELLO changes the encoding of the group's replies)
            planned = plan(connection, argv)
            if not isinstance(planned, Local) and any(
                len(word) > self.value_bytes_max for word in argv[2:]
            ):  # the store would refuse it: say so before it costs a request
                planned = Local(RespError(
                    f"ERR value too large (at most {self.value_bytes_max} bytes)"
                ), "value_too_large")
            if isinstance(planned, Local):
                if group.members:
                    break  # (a replicated command's plan has no effect: planned again)
                items.popleft()
                if planned.rejected is not None:
                    self.count(f"rejected_resp_command_{planned.rejected}")
                self.finish(connection, item, "local", planned.reply)
                if connection.closing:  # QUIT: nothing after it is answered
                    for rest in items:
                        if isinstance(rest, Command):
                            connection.write(b"", rest)
                    items.clear()
                    self.end(connection)
                    return False
                return True
            if slots is not None:  # sharded: one group's commands per request
                where = sharded.target(slots, planned.commands)
                if not isinstance(where, int):  # across groups, keyless, CROSSSLOT
                    if group.members:
                        break
                    self.answer_in_task(connection)
                    return False
                if group.members and where != group.target:
                    break
                group.target = where
            if not group.fits(planned, self.params, self.reply_budget):
                break
            group.add(item, planned)
            items.popleft()
        self.send(connection, group.take(), group.target if slots is not None else None)
        return True

    def take_lone(self, connection: Connection, item: Command) -> bool:
        """Send ``item``, the only command queued, at once if it is a plain ``SET key
        value`` (on a connection with a session) or ``GET key`` whose key and value
        are within every bound: what :meth:`take` and :meth:`send` would send for
        it, without planning a group (ADR 0064: a one-client SET runs this). False
        for anything else, which takes the general path."""
        argv = item.argv
        count = len(argv)
        if count == 3:
            if connection.write_seq == 0 or argv[0].lower() != b"set":
                return False  # (a first write registers the session: run_group)
            data = argv[2]
            if len(data) > self.value_bytes_max or len(data) > VALUE_BYTES_CEILING:
                return False  # refused by plan or take, with their errors
            read_only = False
        elif count == 2:
            if argv[0].lower() != b"get":
                return False
            data = b""
            read_only = True
        else:
            return False
        key = argv[1]
        if (len(key) > KV_PARAMS.key_bytes_max or connection.closing
                or connection.transaction.active):
            return False
        if read_only:
            planned = Replicated("get", (encode_get(key),), True, finish_get)
        else:
            planned = Replicated("set", (encode_put(key, data),), False, finish_set)
        payload = planned.commands[0]
        if len(payload) > self.smr_command_bytes_max:
            return False  # too_large, said by send
        connection.items.popleft()
        self.send_payload(connection, [(item, planned)], payload, read_only, None)
        return True

    def answer_in_task(self, connection: Connection) -> None:
        """Hand every queued item to :meth:`answer` in a task."""
        taken = list(connection.items)
        connection.items.clear()
        self.spawn(connection, self.answer(connection, taken))

    def send(self, connection: Connection, members: list[tuple[Command, Replicated]],
             group: int | None = None) -> None:
        """One SMR request for a group of commands (on a sharded cluster, in
        ``group``, under the connection's session there), sent without a task
        (:class:`Flight`) when the inbox has room and the connection's writes have
        a session (in that group); else by a task (the first write registers the
        session)."""
        commands = [command for _, planned in members for command in planned.commands]
        read_only = all(planned.read_only for _, planned in members)
        payload = commands[0] if len(commands) == 1 else encode_batch(commands)
        if len(payload) > self.smr_command_bytes_max:
            self.too_large(connection, members, payload)
            return
        self.send_payload(connection, members, payload, read_only, group)

    def send_payload(self, connection: Connection, members: list[tuple[Command, Replicated]],
                     payload: bytes, read_only: bool, group: int | None) -> None:
        """:meth:`send`'s request for ``members``, whose commands are ``payload``."""
        write_seq = connection.write_seq if group is None else connection.group_seqs.get(group, 0)
        if not read_only and write_seq == 0:
            self.spawn(connection, self.run_group(connection, members))
            return
        host = self.host
        assert host is not None
        if read_only:  # at this node's clock (see call_in)
            payload = encode_at(time.time_ns() // 1_000_000, payload)
            connection.read_seq += 1
            client, seq = connection.read_client, connection.read_seq
        else:
            seq = write_seq + 1
            if group is None:
                connection.write_seq = seq
            else:
                connection.group_seqs[group] = seq
            client = connection.write_client
        flight = Flight(self, connection, members, client, seq, payload, read_only, group)
        request = ClientRequest(client, seq, payload, read_only)
        vouch = self.vouch
        encoded = host.codec.encode(request if vouch is None else vouch.wrap(request, group))
        if group is not None:
            encoded = host.codec.encode(GroupRequest(group, encoded))
        self.waiters[client] = flight.waiter
        connection.busy = flight
        loop = self.loop or asyncio.get_running_loop()
        flight.deadline = loop.time() + self.params.request_timeout_ms / 1000
        try_submit = getattr(host, "try_submit", None)
        if try_submit is not None and try_submit(encoded, flight.on_done):
            (self.retries or self.retry_timers(loop)).add(flight)
            return
        # The inbox is full (or the host has no try_submit): wait for room in a task.
        task = loop.create_task(self.submit_flight(flight, encoded))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def submit_flight(self, flight: Flight, encoded: bytes) -> None:
        host = self.host
        assert host is not None
        await host.submit(encoded, flight.on_done)
        if not flight.over:
            self.retry_timers(self.loop or asyncio.get_running_loop()).add(flight)

    def retry_timers(self, loop: asyncio.AbstractEventLoop) -> RetryTimers:
        """The front's one :class:`RetryTimers`, made at its first flight."""
        timers = self.retries
        if timers is None:
            timers = self.retries = RetryTimers(loop, self.params.retry_after_ms / 1000)
        return timers

    def landed(self, flight: Flight, outcome: Outcome) -> None:
        """A flight's first attempt settled: answer its group, or go on in a task
        (sent again; or, sharded, its keys locked by a transaction across groups:
        sent again as ``sharded.call_group`` does, after a pause)."""
        connection = flight.connection
        if isinstance(outcome, Retry | SessionExpired):
            self.spawn(connection, self.resume(flight, outcome))
            return
        if self.waiters.get(flight.client) is flight.waiter:
            del self.waiters[flight.client]
        members = flight.members
        if flight.group is not None and outcome == LOCKED_RESULT:
            self.spawn(connection, self.locked(connection, members))
            return
        answered = self.answer_group(connection, members, outcome)
        connection.busy = None
        if answered < len(members):
            self.spawn(connection, self.run_group(connection, members[answered:]))
            return
        parser = connection.parser
        if (connection.items or parser.buffer or parser.arguments is not None
                or connection.eof or connection.reading_paused):
            self.pump(connection)
        # (else the pump would find nothing to parse, take or resume: a one-client
        # SET's answer ends here, ADR 0064)

    async def resume(self, flight: Flight, outcome: Outcome) -> bool:
        """Go on with a flight whose first attempt asked to send again, as
        :meth:`call` would have (same (client, seq); a new session if it expired)."""
        connection = flight.connection
        group = flight.group
        result, attempts = await self.request(
            flight.client, flight.seq, flight.command, flight.read_only, group,
            sent=(flight.waiter, flight.deadline, outcome),
        )
        if isinstance(result, SessionExpired):
            if flight.read_only:
                result = READ_EXPIRED_ERROR
            else:
                result = self.session_expired(connection, attempts) or await self.call(
                    connection, flight.command, False, group)
        members = flight.members
        if group is not None and result == LOCKED_RESULT:
            await self.locked(connection, members)
            return False
        answered = self.answer_group(connection, members, result)
        await self.run_group(connection, members[answered:])
        return False

    async def locked(self, connection: Connection,
                     members: list[tuple[Command, Replicated]]) -> bool:
        """A sharded group's request refused for keys a transaction across groups
        holds (nothing applied): sent again after a pause, by ``sharded.call_group``."""
        self.count("kv_locked_retries")
        await asyncio.sleep(self.params.retry_backoff_ms / 1000 * (0.5 + random.random()))
        await self.run_group(connection, members)
        return False

    def spawn(self, connection: Connection, work: Coroutine[Any, Any, bool | None]) -> None:
        """Let a task answer what needs to wait; the connection takes nothing else
        meanwhile, and is pumped again (or ended) when it is done."""
        loop = self.loop or asyncio.get_running_loop()
        task = loop.create_task(self.run_busy(connection, work))
        connection.busy = task
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run_busy(self, connection: Connection,
                       work: Coroutine[Any, Any, bool | None]) -> None:
        try:
            done = bool(await work)
            await self.drain(connection)
        except (ConnectionError, OSError):
            done = True
        connection.busy = None
        if done:
            self.end(connection)
        else:
            self.pump(connection)

    def end(self, connection: Connection) -> None:
        """Close the connection once its replies are sent; its slot is free."""
        if connection.finished:
            return
        connection.finished = True
        connection.items.clear()
        self.connections_open.discard(connection)
        connection.transport.close()

    def reject(self, reason: str) -> None:
        self.count(f"rejected_resp_{reason}")
        self.warn(logging.WARNING, reason, "client input rejected", reason=reason)

    async def drain(self, connection: Connection) -> None:
        """Wait while more than ``reply_bytes_max`` replies wait to be sent."""
        if connection.reply_backlog() > self.params.reply_bytes_max:
            await connection.until_writable()
            connection.active = time.monotonic()

    async def answer(self, connection: Connection, items: list[Item]) -> bool:
        """Answer ``items`` in order; True once the connection must close."""
        group = Group()
        for item in items:
            if connection.lost and isinstance(item, Command):  # gone: see on_lost
                connection.write(b"", item)
                continue
            if isinstance(item, EndOfInput):
                await self.run_group(connection, group.take())
                if item.error is not None:
                    reply = RespError(f"ERR Protocol error: {item.error.message}")
                    connection.write(encode_reply(reply, connection.protocol), None)
                return True
            if connection.closing:  # after QUIT: nothing more is answered
                connection.write(b"", item)
                continue
            if item.argv[0].lower() == ADMIN_COMMAND:  # an operator's membership request
                await self.run_group(connection, group.take())
                self.finish(connection, item, "local", await run_admin(self.host, item.argv))
                continue
            if item.argv[0].lower() == SNAPSHOT_COMMAND:  # an operator's backup (ctl)
                await self.run_group(connection, group.take())
                await self.drain(connection)
                self.finish(connection, item, "local", await run_snapshot(self, connection))
                continue
            step = plan_transaction(
                connection.transaction, connection, item.argv, self.transaction_limits
            )
            if step is not None:  # MULTI...EXEC, WATCH: after the commands before them
                await self.run_group(connection, group.take())
                await self.drain(connection)
                await self.run_transaction(connection, item, step)
                continue
            if item.argv and item.argv[0].lower() in GATEWAY_COMMANDS:  # from a gateway
                await self.run_group(connection, group.take())
                await self.drain(connection)
                assert self.host is not None
                submitted, rejected = await self.gateway_submits.answer(
                    self.host, item.argv, self.params.request_timeout_ms / 1000,
                    self.slots,
                )
                if rejected is not None:
                    self.count(f"rejected_resp_command_gateway_{rejected}")
                self.finish(connection, item, "local", submitted)
                continue
            if not is_replicated(item.argv):  # before HELLO changes the encoding
                await self.run_group(connection, group.take())
            planned = plan(connection, item.argv)
            if not isinstance(planned, Local) and any(
                len(word) > self.value_bytes_max for word in item.argv[2:]
            ):  # the store would refuse it: say so before it costs a request
                planned = Local(RespError(
                    f"ERR value too large (at most {self.value_bytes_max} bytes)"
                ), "value_too_large")
            if isinstance(planned, Local):  # (a replicated command may be refused here)
                await self.run_group(connection, group.take())
                if planned.rejected is not None:
                    self.count(f"rejected_resp_command_{planned.rejected}")
                await self.drain(connection)
                self.finish(connection, item, "local", planned.reply)
                continue
            if self.slots is not None:  # sharded: by group, or across groups
                where = sharded.target(self.slots, planned.commands)
                if not isinstance(where, int):
                    await self.run_group(connection, group.take())
                    await self.drain(connection)
                    await self.run_spread(connection, item, planned, where)
                    continue
                if group.members and where != group.target:
                    await self.run_group(connection, group.take())
                group.target = where
            if not group.fits(planned, self.params, self.reply_budget):
                await self.run_group(connection, group.take())
            group.add(item, planned)
        await self.run_group(connection, group.take())
        return connection.closing

    def finish(self, connection: Connection, item: Command, name: str, reply: Reply) -> None:
        connection.write(self.answered(connection, item, name, reply), item)

    def answered(self, connection: Connection, item: Command, name: str, reply: Reply) -> bytes:
        """Count and time the answer to ``item``; its encoded reply, for the caller
        to write (alone, or joined with the rest of its group's)."""
        self.commands_processed += 1
        connection.last_command = item.argv[0]  # (decoded only when CLIENT LIST asks)
        if name == "local":
            word = item.argv[0].lower().decode("ascii", "replace")
            name = word if word in COMMAND_NAMES else "unknown"
        latency = self.latency_by_command.get(name)
        if latency is None:
            latency = self.latency_by_command[name] = self.latency.labels(name)
        latency.observe(time.perf_counter() - item.received)
        return OK_BYTES if reply is OK else encode_reply(reply, connection.protocol)

    async def run_group(
        self, connection: Connection, group: list[tuple[Command, Replicated]]
    ) -> None:
        """Send a group of replicated commands as one SMR request; answer each. A
        read-only group whose values did not all fit in one result
        (``result_too_large``) is answered up to there and the rest sent again."""
        while group:
            answered = await self.run_group_once(connection, group)
            del group[:answered]

    async def run_group_once(
        self, connection: Connection, group: list[tuple[Command, Replicated]]
    ) -> int:
        """One SMR request for ``group``; how many of its commands were answered."""
        await self.drain(connection)
        commands = [command for _, planned in group for command in planned.commands]
        read_only = all(planned.read_only for _, planned in group)
        payload = commands[0] if len(commands) == 1 else encode_batch(commands)
        if len(payload) > self.smr_command_bytes_max:
            return self.too_large(connection, group, payload)
        if self.slots is None:
            outcome = await self.call(connection, payload, read_only)
        else:
            where = sharded.target(self.slots, commands)
            assert isinstance(where, int)  # (answer() groups commands by group)
            outcome = await sharded.call_group(self, connection, payload, read_only, where)
        return self.answer_group(connection, group, outcome)

    def too_large(self, connection: Connection, group: list[tuple[Command, Replicated]],
                  payload: bytes) -> int:
        self.count("rejected_resp_command_too_large")
        error = RespError(
            f"ERR command too large for one replicated request ({len(payload)} > "
            f"{self.smr_command_bytes_max} bytes)"
        )
        connection.write_replies(
            [self.answered(connection, item, planned.name, error) for item, planned in group],
            [item for item, _ in group],
        )
        return len(group)

    def answer_group(self, connection: Connection, group: list[tuple[Command, Replicated]],
                     outcome: bytes | RespError) -> int:
        """Answer ``group`` from its SMR request's outcome, in one write; how many of
        its commands were answered (a read-only group may be cut: ``plans_that_fit``)."""
        host = self.host
        assert host is not None
        counters = host.counters
        counters.count("kv_smr_requests")
        counters.count("kv_smr_commands", len(group))
        if len(group) == 1:
            self.answer_one(connection, group[0], outcome)
            return 1
        commands = sum(len(planned.commands) for _, planned in group)
        results = self.results(outcome, commands)
        answered = len(group)
        # (a group of one is answered whole: plans_that_fit answers the first plan always)
        if answered > 1 and not isinstance(results, RespError):
            answered = plans_that_fit(group, results)
            if answered < len(group):
                counters.count("kv_read_groups_split")
        offset = 0
        replies: list[bytes] = []
        for item, planned in group[:answered]:
            count = len(planned.commands)
            if isinstance(results, RespError):
                reply: Reply = results
            else:
                reply = planned.finish(results[offset : offset + count])
            offset += count
            replies.append(self.answered(connection, item, planned.name, reply))
        # One write for the group's replies (pipelined commands come back together).
        if self.hops is not None:
            self.hops.stamp(hoptrace.REPLY)
        connection.write_replies(replies, [item for item, _ in group[:answered]])
        return answered

    def answer_one(self, connection: Connection, member: tuple[Command, Replicated],
                   outcome: bytes | RespError) -> None:
        """:meth:`answer_group` for a group of one (a one-client SET's or GET's): a
        SET's ``PUT_RESULT`` is ``OK`` without decoding it (what ``finish_set``
        would make of it)."""
        item, planned = member
        reply: Reply
        if outcome == PUT_RESULT and planned.finish is finish_set:
            reply = OK
        else:
            results = self.results(outcome, len(planned.commands))
            reply = results if isinstance(results, RespError) else planned.finish(results)
        data = self.answered(connection, item, planned.name, reply)
        if self.hops is not None:
            self.hops.stamp(hoptrace.REPLY)
        connection.write(data, item)

    async def run_transaction(
        self, connection: Connection, item: Command, step: TransactionPlan
    ) -> None:
        """Answer a transaction command (see ``transactions``): at once, or after one
        SMR request (WATCH's read of versions; EXEC's whole transaction)."""
        if isinstance(step, Watch):
            if self.slots is not None:
                outcome = await self.watch_across(connection, step.keys)
            else:
                outcome = await self.call(connection, step.command, True)
            self.finish(connection, item, "watch", step.finish(connection.transaction, outcome))
            return
        if not isinstance(step, Exec):
            assert step is not None
            if step.rejected is not None:
                self.count(f"rejected_resp_command_{step.rejected}")
            self.finish(connection, item, "local", step.reply)
            return
        if len(step.command) > self.smr_command_bytes_max:
            self.count("rejected_resp_command_too_large")
            self.finish(connection, item, "exec", RespError(
                f"ERR transaction too large for one replicated request ({len(step.command)} > "
                f"{self.smr_command_bytes_max} bytes, watches included); nothing was applied"
            ))
            return
        if self.slots is None:
            outcome = await self.call(connection, step.command, step.read_only)
        else:
            outcome = await self.exec_across(connection, step.command, step.read_only)
        self.count("kv_smr_requests")
        self.count("kv_transactions")
        reply = step.finish(outcome)
        if reply is NULL_ARRAY:
            self.count("kv_transactions_aborted")
        self.finish(connection, item, "exec", reply)

    # -- a sharded cluster (``sharded``) -------------------------------------------------------

    async def run_spread(self, connection: Connection, item: Command, planned: Replicated,
                         where: sharded.Target | RespError) -> None:
        """A command whose key-value commands live in several groups (one transaction
        across them), or none (keyless: every group in turn), or CROSSSLOT."""
        assert self.slots is not None
        reply: Reply
        if isinstance(where, RespError):
            reply = where
        elif where is None:
            reply = await self.fan_out(connection, planned)
        else:
            ops = sharded.transaction_ops(self.slots, planned.commands, [])
            results = ops if isinstance(ops, RespError) else await sharded.transact(
                self, connection, ops, planned.read_only)
            if results is None or isinstance(results, RespError):
                reply = results or RespError("ERR internal error: no results")
            else:
                reply = planned.finish([decode_result(result) for result in results])
        self.finish(connection, item, planned.name, reply)

    async def fan_out(self, connection: Connection, planned: Replicated) -> Reply:
        assert self.slots is not None
        name = sharded.fan_out_name(planned.commands[0]) if len(planned.commands) == 1 else None
        if name is None:
            return RespError(f"ERR {planned.name} is not supported on a cluster of several "
                             "groups")
        results: list[bytes] = []
        for group in range(self.slots.groups):
            outcome = await sharded.call_group(self, connection, planned.commands[0],
                                               planned.read_only, group)
            if isinstance(outcome, RespError):
                return outcome
            results.append(outcome)
        return planned.finish([decode_result(sharded.combine(name, results))])

    async def watch_across(self, connection: Connection, keys: tuple[bytes, ...]
                           ) -> bytes | RespError:
        """WATCH's versions, each read in its key's group (a batch-shaped result)."""
        assert self.slots is not None
        results: list[bytes] = []
        for key in keys:
            outcome = await sharded.call_group(self, connection, sharded.version_command(key),
                                               True, self.slots.group_of(key))
            if isinstance(outcome, RespError):
                return outcome
            results.append(outcome)
        return results[0] if len(results) == 1 else sharded.batch_result(results)

    async def exec_across(self, connection: Connection, command: bytes, read_only: bool
                          ) -> bytes | RespError:
        """EXEC: in its one group as one command, or across groups as a transaction."""
        assert self.slots is not None
        parts = sharded.exec_parts(command)
        if parts is None:
            return RespError("ERR internal error: unreadable exec")
        watches, commands = parts
        groups = {self.slots.group_of(key) for key, _ in watches}
        for one in commands:
            found = sharded.command_groups(self.slots, one)
            groups |= found if found is not None else {-1}
        if len(groups) <= 1 and -1 not in groups:
            return await sharded.call_group(self, connection, command, read_only,
                                            min(groups, default=0))
        ops = sharded.transaction_ops(self.slots, commands, watches)
        if isinstance(ops, RespError):
            return ops
        results = await sharded.transact(self, connection, ops, read_only)
        return results if isinstance(results, RespError) else sharded.exec_result(results)

    @staticmethod
    def results(outcome: bytes | RespError, count: int) -> list[KvResult] | RespError:
        if isinstance(outcome, RespError):
            return outcome
        if count == 1:
            return [decode_result(outcome)]
        decoded = decode_batch_result(outcome)
        if isinstance(decoded, KvError) or len(decoded) != count:
            return RespError(f"ERR internal error: unreadable batch result: {decoded!r}"[:200])
        return [decode_result(item) for item in decoded]

    def new_client_id(self) -> int | None:
        """A fresh SMR client id, or None once this incarnation has used them all."""
        if self.client_next >= CLIENT_IDS_MAX // 2:
            self.count("bound_resp_client_ids_max")
            return None
        self.client_next += 1
        # Apart from the node's own in-node callers' ids (a sharded cluster's).
        number = (self.client_next - 1) | FRONT_CLIENT_BIT
        return smr_client_id(self.incarnation, self.node_id, number)

    async def call(
        self, connection: Connection, command: bytes, read_only: bool, group: int | None = None
    ) -> bytes | RespError:
        """Execute ``command`` through SMR for ``connection`` (see the module docstring:
        reads on the read client id, writes on a registered session; on a sharded
        cluster, in ``group``, under the connection's session there)."""
        if group is not None:
            connection.write_seq = connection.group_seqs.get(group, 0)
            try:
                return await self.call_in(connection, command, read_only, group)
            finally:
                connection.group_seqs[group] = connection.write_seq
        return await self.call_in(connection, command, read_only, None)

    async def call_in(
        self, connection: Connection, command: bytes, read_only: bool, group: int | None
    ) -> bytes | RespError:
        if read_only:
            # Run at this node's clock, so keys due by now read as expired even if
            # no write has advanced the log's clock since (docs/kv.md, Expiry).
            command = encode_at(time.time_ns() // 1_000_000, command)
            connection.read_seq += 1
            outcome, _ = await self.request(connection.read_client, connection.read_seq,
                                            command, True, group)
            return outcome if not isinstance(outcome, SessionExpired) else READ_EXPIRED_ERROR
        while True:
            if connection.write_seq == 0:
                registered, _ = await self.request(connection.write_client, 1, b"", False,
                                                   group)
                if not isinstance(registered, bytes):
                    # The command itself was not sent: nothing of it can have run.
                    if isinstance(registered, RespError) and not registered.text.startswith(
                            "UNKNOWN"):
                        return registered
                    return NOT_REGISTERED_ERROR
                connection.write_seq = 1
                self.count("kv_sessions_registered")
            connection.write_seq += 1
            outcome, attempts = await self.request(
                connection.write_client, connection.write_seq, command, False, group
            )
            if not isinstance(outcome, SessionExpired):
                return outcome
            expired = self.session_expired(connection, attempts)
            if expired is not None:
                return expired

    def session_expired(self, connection: Connection, attempts: int) -> RespError | None:
        """The connection's write session was evicted from the session table: go on
        under a new id (registered before its next write); the error to answer if
        the write may have run (sent more than once) or no id is left."""
        self.count("kv_sessions_expired")
        fresh = self.new_client_id()
        if fresh is None:
            return EXPIRED_ERROR
        connection.write_client, connection.write_seq = fresh, 0
        connection.group_seqs.clear()  # a new id: a new session in every group
        if attempts > 1:
            return EXPIRED_ERROR  # an earlier attempt may have run before the eviction
        return None

    async def request(
        self, client: int, seq: int, command: bytes, read_only: bool, group: int | None = None,
        *, sent: tuple[Waiter, float, Outcome] | None = None,
    ) -> tuple[bytes | RespError | SessionExpired, int]:
        """One SMR request, sent again with the same (client, seq) until it is answered
        or ``request_timeout_ms`` passes (then ``-TRYAGAIN`` for a read, ``-UNKNOWN`` for a
        write); and how many times it was sent. ``sent``: it was sent once already
        (a :class:`Flight`): its waiter, deadline and that attempt's outcome."""
        host = self.host
        assert host is not None
        request = ClientRequest(client, seq, command, read_only)
        vouch = self.vouch
        payload = host.codec.encode(request if vouch is None else vouch.wrap(request, group))
        if group is not None:
            payload = host.codec.encode(GroupRequest(group, payload))
        loop = asyncio.get_running_loop()
        params = self.params
        first: Outcome | None = None
        if sent is None:
            waiter = Waiter(seq)
            deadline = loop.time() + params.request_timeout_ms / 1000
            attempts = 0
        else:
            waiter, deadline, first = sent
            waiter.on_outcome = None
            attempts = 1
        self.waiters[client] = waiter
        try:
            while True:
                if first is not None:
                    outcome, first = first, None
                else:
                    attempts += 1
                    future: asyncio.Future[Outcome] = loop.create_future()
                    waiter.future = future

                    def on_done(reason: str | None,
                                future: asyncio.Future[Outcome] = future) -> None:
                        if reason is not None:  # refused before SMR even saw it
                            settle(future, self.refused(reason))

                    await host.submit(payload, on_done)
                    wait = max(0.0, min(params.retry_after_ms / 1000, deadline - loop.time()))
                    timer = loop.call_later(wait, settle, future, RETRY_NOW)
                    try:
                        outcome = await future
                    finally:
                        timer.cancel()
                if not isinstance(outcome, Retry):
                    return outcome, attempts
                remaining = deadline - loop.time()
                if remaining <= 0:
                    self.count("kv_no_quorum")
                    if read_only:  # it had no effect: the client may send it again
                        return RespError(
                            f"TRYAGAIN no quorum: no answer within {params.request_timeout_ms} "
                            "ms (a read has no effect)"
                        ), attempts
                    return RespError(  # not TRYAGAIN: see requests.EXPIRED_ERROR
                        f"UNKNOWN no quorum: no answer within {params.request_timeout_ms} ms "
                        "(the write may still take effect)"
                    ), attempts
                self.count("kv_retries")
                if outcome.delay:
                    await asyncio.sleep(min(params.retry_backoff_ms / 1000, remaining))
        finally:
            if self.waiters.get(client) is waiter:
                del self.waiters[client]

    # -- introspection -------------------------------------------------------------------------

    def count(self, name: str, by: int = 1) -> None:
        assert self.host is not None
        self.host.counters.count(name, by)

    def server_info(self) -> dict[str, dict[str, str | int]]:
        """INFO: a small, honest picture of this node (see ``info``)."""
        return server_info(self)

    def clients(self) -> list[dict[str, str | int]]:
        now = time.monotonic()
        return [connection.describe(now) for connection in
                sorted(self.connections_open, key=lambda found: found.connection_id)]

    def evict_idle(self) -> bool:
        """Every client slot is taken: close the connection idle the longest, if
        it has been idle at least ``evict_idle_after_ms`` (counted
        ``kv_clients_evicted_idle``), so that a new client is not locked out by
        clients that went quiet. Returns whether a slot was freed."""
        after_ms = self.params.evict_idle_after_ms
        if not after_ms:
            return False
        idle = [(since, connection.connection_id, connection)
                for connection in self.connections_open
                if (since := connection.idle_since()) is not None]
        if not idle:
            return False
        since, _, connection = min(idle, key=lambda found: found[:2])
        if time.monotonic() - since < after_ms / 1000:
            return False
        connection.timed_out = "evicted"
        self.connections_open.discard(connection)  # its slot is the new client's now
        self.clients_evicted += 1
        self.count("kv_clients_evicted_idle")
        connection.transport.abort()
        return True

    def kill_clients(self, client_id: int | None, address: str | None,
                     skip: Connection | None) -> int:
        """Close the connections matching every filter given (not ``skip``)."""
        killed = 0
        for connection in list(self.connections_open):
            if connection is skip:
                continue
            if client_id is not None and connection.connection_id != client_id:
                continue
            if address is not None and connection.address() != address:
                continue
            connection.transport.abort()
            killed += 1
        self.count("kv_clients_killed", killed)
        return killed

    def role(self) -> Reply:
        return role_reply(self)

    def collect_metrics(self) -> Iterator[Metric]:
        """Latency histograms and protocol gauges (the runtime's metrics hook)."""
        yield from self.registry.collect()
        for name, number in sorted(protocol_status(self.host).items()):
            gauge = GaugeMetricFamily(
                f"replicaio_protocol_{name}", f"Replication protocol status: {name}"
            )
            gauge.add_metric([], number)
            yield gauge
        role = GaugeMetricFamily("replicaio_protocol_role", "1 for the protocol role this "
                                 "node is in (leader, follower, candidate, ...)", labels=["role"])
        name = role_name(self.host)
        if name != "unknown":
            role.add_metric([name], 1)
        yield role


register_service("resp", RespService)
