"""One Redis client connection of the front, and the group of commands it sends as
one SMR request.

A :class:`Connection` holds its parser, what was parsed and not yet taken
(``items``), what is read and not yet answered (bounded by ``pipeline_depth_max``
and ``pipeline_bytes_max``), its SMR client ids and MULTI/WATCH state, and what
it is busy with (one SMR request in flight, or a task answering what needs to
wait); :meth:`Connection.full` names the bound that stops reading it,
:meth:`Connection.expired` the timeout it ran into. :class:`ClientProtocol` is
asyncio's side of it (bytes in, write buffer full or drained, closed). A
:class:`Group` gathers consecutive replicated commands within the bounds of one
SMR request. What drives them lives in ``service``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, Final, cast

from replicaio.runtime.kv.params import RespParams
from replicaio.runtime.kv.requests import RETRY_NOW, Outcome, Waiter
from replicaio.services.kv.redis_plan import KV_PARAMS, Replicated
from replicaio.services.kv.resp import RESP2, Reply, RespParser, RespProtocolError
from replicaio.services.kv.state_machine import KvError, KvResult
from replicaio.services.kv.transactions import Transaction

if TYPE_CHECKING:
    from replicaio.runtime.kv.service import RespService

ARGUMENT_OVERHEAD_BYTES: Final = 48  # what one parsed argument costs beyond its bytes
# What one key-value command's reply is planned to take: a read returns a value
# (planned as one of 64 KiB; a larger one makes the store stop the batch after
# it, and the rest is sent again); a write an integer, a flag, OK or an error.
READ_REPLY_BYTES_MAX: Final = min(KV_PARAMS.value_bytes_max, 64 * 1024) + 64
WRITE_REPLY_BYTES_MAX: Final = 512


def reply_bytes_max(planned: Replicated) -> int:
    """The bytes the replies of ``planned`` are planned to take (a group is planned
    with this, since its replies come back together)."""
    each = READ_REPLY_BYTES_MAX if planned.read_only else WRITE_REPLY_BYTES_MAX
    return each * len(planned.commands)


def plans_that_fit(group: list[tuple[Command, Replicated]], results: list[KvResult]) -> int:
    """How many plans of ``group`` to answer: those before the first with a
    ``result_too_large`` result, where the store stopped the batch (the rest did
    not run and is sent again). The first plan is always answered (a plan whose
    values do not fit even alone gets that error), and so is a plan that writes
    and ran in part (it must not run twice)."""
    offset = 0
    for index, (_, planned) in enumerate(group):
        count = len(planned.commands)
        mine = results[offset : offset + count]
        cut = [isinstance(result, KvError) and result.code == "result_too_large"
               for result in mine]
        if any(cut):
            ran_in_part = not cut[0]
            return index + 1 if index == 0 or (ran_in_part and not planned.read_only) else index
        offset += count
    return len(group)



class Command:
    """One parsed command. (A plain class, not a dataclass: a dataclass's
    ``__init__`` is generated source, interpreted even where this module is
    compiled, and one is made per command.)"""

    __slots__ = ("argv", "received", "size")

    def __init__(self, argv: list[bytes], received: float, size: int) -> None:
        self.argv = argv
        self.received = received  # perf_counter at parse: latency is measured from here
        self.size = size  # bytes it holds (pipeline_bytes_max)


def command_size(argv: list[bytes]) -> int:
    size = ARGUMENT_OVERHEAD_BYTES * len(argv)
    for word in argv:  # (a loop, not sum() of a generator: a frame per word)
        size += len(word)
    return size


class EndOfInput:
    """The reader is done: the client closed, or broke the protocol (``error``)."""

    __slots__ = ("error",)

    def __init__(self, error: RespProtocolError | None = None) -> None:
        self.error = error


Item = Command | EndOfInput
# What a connection's reader waits for, which decides the timeout that applies.
IDLE, REQUEST, ROOM = "idle", "request_read", "room"
STALLED = "stalled"
REPLY_BOUND: Final = "bound_resp_reply_bytes_max"  # the timeout of a client that reads no replies


class Connection:
    """One client's connection (implements ``redis_commands.Session``)."""

    __slots__ = (
        "active",
        "busy",
        "closing",
        "command_started",
        "connection_id",
        "ended",
        "eof",
        "finished",
        "group_seqs",
        "items",
        "last_command",
        "lost",
        "name",
        "nonce",
        "opened",
        "parser",
        "protocol",
        "pumping",
        "read_client",
        "read_seq",
        "reading_paused",
        "service",
        "timed_out",
        "transaction",
        "transport",
        "unanswered",
        "unanswered_bytes",
        "waiting",
        "writable",
        "write_client",
        "write_seq",
        "writing_paused",
    )

    def __init__(
        self, service: RespService, transport: asyncio.Transport, connection_id: int,
        read_client: int, write_client: int, parser: RespParser,
    ) -> None:
        self.service = service
        self.transport = transport
        self.parser = parser
        self.connection_id = connection_id
        self.read_client = read_client
        self.read_seq = 0
        self.write_client = write_client
        self.write_seq = 0  # 0: no session registered yet; then the last write's seq
        self.group_seqs: dict[int, int] = {}  # a sharded cluster: write_seq per group
        self.nonce = 0  # a sharded cluster: the last transaction attempt's nonce
        self.protocol = RESP2
        self.name: bytes | None = None
        self.closing = False
        self.transaction = Transaction()  # MULTI/WATCH state; dropped with the connection
        self.finished = False  # answered to its end and closed (or the service closed)
        self.items: deque[Item] = deque()  # parsed, not yet taken, in order
        self.unanswered = 0  # commands read and not yet answered
        self.unanswered_bytes = 0  # their size
        # What the connection is busy with, in order: None (nothing: what is queued
        # can be taken), the one SMR request in flight (a Flight) or the task
        # answering what needs to wait. Nothing else is taken meanwhile.
        self.busy: object | None = None
        self.pumping = False  # in RespService.pump (which is not reentrant)
        self.eof = False  # the client closed its side (or the connection was lost)
        self.lost = False  # the connection is gone: nothing written arrives
        self.ended = False  # EndOfInput is queued: nothing more is parsed
        self.reading_paused = False  # at a bound: the transport does not read
        self.writing_paused = False  # more than reply_bytes_max replies unsent
        self.writable: asyncio.Future[None] | None = None  # a task waits for that to end
        self.waiting = IDLE  # what the reader waits for (which timeout applies)
        self.active = time.monotonic()  # when it last read, or wrote a reply
        self.command_started = 0.0  # when the command being read began to arrive
        self.timed_out: str | None = None  # the timeout that closed the connection
        self.opened = time.monotonic()
        self.last_command = b"NULL"  # CLIENT LIST's cmd (the name as sent)

    def reply_backlog(self) -> int:
        """Reply bytes written and not yet taken by the kernel."""
        return self.transport.get_write_buffer_size()

    def server_info(self) -> dict[str, dict[str, str | int]]:
        return self.service.server_info()

    @property
    def scripts(self) -> dict[str, str]:
        return self.service.scripts

    def clients(self) -> list[dict[str, str | int]]:
        return self.service.clients()

    def kill_clients(self, client_id: int | None, address: str | None, skip_me: bool) -> int:
        return self.service.kill_clients(client_id, address, None if not skip_me else self)

    def server_time_us(self) -> int:
        return time.time_ns() // 1000

    def role(self) -> Reply:
        return self.service.role()

    def address(self) -> str:
        peer = self.transport.get_extra_info("peername")
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "?"

    def describe(self, now: float) -> dict[str, str | int]:
        """This connection as a CLIENT LIST line's fields."""
        return {
            "id": self.connection_id,
            "addr": self.address(),
            "name": (self.name or b"").decode("utf-8", "replace"),
            "age": int(now - self.opened),
            "idle": int(now - self.active),
            "db": 0,
            "multi": len(self.transaction.queued) if self.transaction.active else -1,
            "watch": len(self.transaction.watches),
            "resp": self.protocol,
            "cmd": self.last_command[:32].lower().decode("ascii", "replace"),
        }

    def push(self, item: Item) -> None:
        self.items.append(item)
        if isinstance(item, Command):
            self.unanswered += 1
            self.unanswered_bytes += item.size

    def write(self, data: bytes, answered: Command | None) -> None:
        if data and not self.transport.is_closing():
            self.transport.write(data)
            self.active = time.monotonic()
        if answered is not None:
            self.unanswered -= 1
            self.unanswered_bytes -= answered.size
            assert self.unanswered >= 0
            assert self.unanswered_bytes >= 0

    def write_replies(self, replies: list[bytes], answered: list[Command]) -> None:
        """The replies to ``answered`` (one each, in order) in one write to the
        socket, not one per reply: a pipelining client's group of commands is
        answered with one system call."""
        assert len(replies) == len(answered)
        if len(replies) == 1:
            self.write(replies[0], answered[0])
            return
        if replies and not self.transport.is_closing():
            self.transport.write(b"".join(replies))
            self.active = time.monotonic()
        self.unanswered -= len(answered)
        self.unanswered_bytes -= sum(item.size for item in answered)
        assert self.unanswered >= 0
        assert self.unanswered_bytes >= 0

    async def until_writable(self) -> None:
        """Wait until fewer than the low mark of replies are unsent (the transport's
        ``resume_writing``); ``ConnectionResetError`` once the connection is gone."""
        while self.writing_paused and not self.lost:
            if self.writable is None:
                self.writable = asyncio.get_running_loop().create_future()
            await self.writable
        if self.lost:
            raise ConnectionResetError("the client's connection is gone")

    def wake_writers(self) -> None:
        """Wake the task waiting in :meth:`until_writable`, if any."""
        writable, self.writable = self.writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    def expired(self, now: float, params: RespParams) -> str | None:
        """The timeout this connection has run into, if any (see the module docstring)."""
        if self.waiting is REQUEST:
            timeout_ms = params.request_read_timeout_ms
            if timeout_ms and now - self.command_started > timeout_ms / 1000:
                return REQUEST
            return None
        stalled = self.reply_backlog() > params.reply_bytes_max
        if self.unanswered and not stalled:
            return None  # its commands are in SMR: request_timeout_ms bounds the wait
        timeout_ms = params.idle_timeout_ms
        if timeout_ms and now - self.active > timeout_ms / 1000:
            return STALLED if stalled else IDLE
        return None

    def idle_since(self) -> float | None:
        """When this connection went idle: nothing to answer, nothing unsent, no
        command half read, not closing (``None``: it is not idle)."""
        if self.waiting is not IDLE or self.unanswered or self.timed_out is not None:
            return None
        if self.items or self.reply_backlog():
            return None
        return self.active

    def full(self, params: RespParams) -> str | None:
        """The bound that stops reading this connection now, if any."""
        if self.unanswered >= params.pipeline_depth_max:
            return "bound_resp_pipeline_depth_max"
        if self.unanswered_bytes >= params.pipeline_bytes_max:
            return "bound_resp_pipeline_bytes_max"
        if self.transport.get_write_buffer_size() > params.reply_bytes_max:  # reply_backlog
            return REPLY_BOUND
        return None


class Group:
    """Replicated commands gathered for one SMR request, within its bounds: the
    commands' count and encoded size, and (unless they all only read, which
    ``run_group`` may split after the fact) the most bytes their replies take."""

    __slots__ = ("commands", "members", "read_only", "replies", "size", "target")

    def __init__(self) -> None:
        self.target = 0  # a sharded cluster: the group the members' keys live in
        self.members: list[tuple[Command, Replicated]] = []
        self.commands = 0
        self.size = 0
        self.replies = 0
        self.read_only = True

    def fits(self, planned: Replicated, params: RespParams, reply_budget: int) -> bool:
        if not self.members:
            return True
        if self.size + sum(len(command) for command in planned.commands) > (
            params.group_bytes_max
        ):
            return False
        if self.commands + len(planned.commands) > params.group_commands_max:
            return False
        reads_only = self.read_only and planned.read_only
        return reads_only or self.replies + reply_bytes_max(planned) <= reply_budget

    def add(self, item: Command, planned: Replicated) -> None:
        self.members.append((item, planned))
        self.commands += len(planned.commands)
        self.size += sum(len(command) for command in planned.commands)
        self.replies += reply_bytes_max(planned)
        self.read_only = self.read_only and planned.read_only

    def take(self) -> list[tuple[Command, Replicated]]:
        """The members, leaving the group empty."""
        members = self.members
        self.members = []
        self.commands = self.size = self.replies = 0
        self.read_only = True
        return members



class ClientProtocol(asyncio.Protocol):
    """asyncio's side of one client connection: each callback goes straight to the
    service (``RespService.on_data`` and the rest), on the loop, without a task."""

    def __init__(self, service: RespService) -> None:
        self.service = service
        self.connection: Connection | None = None  # once admitted
        self.early = bytearray()  # bytes that came before it was admitted (bounded: paused)
        self.early_eof = False
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None  # TLS

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, but are one)
        self.service.on_connected(self, cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        connection = self.connection
        if connection is not None:
            self.service.on_data(connection, data)
        else:
            self.early += data

    def eof_received(self) -> bool:
        connection = self.connection
        if connection is not None:
            self.service.on_eof(connection)
        else:
            self.early_eof = True
        # Keep the transport open: the replies to what came before go out (TLS
        # cannot half-close: asyncio warns if asked to, and closes it anyway).
        return self.streams is None

    def connection_lost(self, exc: Exception | None) -> None:
        connection = self.connection
        if connection is not None:
            self.service.on_lost(connection)

    def pause_writing(self) -> None:
        connection = self.connection
        if connection is not None:
            connection.writing_paused = True
            self.service.count(REPLY_BOUND)

    def resume_writing(self) -> None:
        connection = self.connection
        if connection is not None:
            connection.writing_paused = False
            connection.active = time.monotonic()
            connection.wake_writers()
            self.service.pump(connection)


class Flight:
    """The one SMR request of a connection's group of replicated commands, sent and
    answered without a task (``RespService.send``): its outcome arrives by
    :meth:`settled` (from the node's outputs, a refusal, or the retry timer). A
    final one answers the group at once; one that asks to send again (or a
    session that expired) hands the request to a task that goes on as
    ``RespService.request`` would have (``RespService.resume``)."""

    __slots__ = ("client", "command", "connection", "deadline", "group", "members", "over",
                 "read_only", "seq", "service", "waiter")

    def __init__(self, service: RespService, connection: Connection,
                 members: list[tuple[Command, Replicated]], client: int, seq: int,
                 command: bytes, read_only: bool, group: int | None = None) -> None:
        self.service = service
        self.group = group  # a sharded cluster: the group it was sent to
        self.connection = connection
        self.members = members
        self.client = client
        self.seq = seq
        self.command = command
        self.read_only = read_only
        self.deadline = 0.0  # loop time: request_timeout_ms after the first send
        self.over = False  # its first attempt is settled
        self.waiter = Waiter(seq, None, self.settled)

    def on_done(self, reason: str | None) -> None:
        """The host's completion: a reason if the request was refused before SMR saw it."""
        if reason is not None:
            self.settled(self.service.refused(reason))

    def settled(self, outcome: Outcome) -> None:
        if self.over:
            return
        self.over = True
        self.waiter.on_outcome = None
        self.service.landed(self, outcome)


class RetryTimers:
    """The ``retry_after_ms`` timers of every :class:`Flight` of a front, as one
    loop timer: flights wait in the order they were sent, each due ``delay``
    seconds after, and a flight still unsettled when it is due settles with
    ``RETRY_NOW`` (sent again by its task), as its own ``call_later`` did before
    (docs/benchmarks.md, "The front's retry timers": a timer made and cancelled
    per request cost the leader's main thread a handle, a heap entry and the
    garbage they left). The delay is the
    same for every flight, so the queue is in due order. A settled flight stays
    queued until it is due or a later :meth:`add` finds it at the head: at most
    the flights sent in the last ``delay`` seconds wait, each a reference."""

    __slots__ = ("delay", "handle", "loop", "queue")

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self.loop = loop
        self.delay = delay
        self.queue: deque[tuple[float, Flight]] = deque()
        self.handle: asyncio.TimerHandle | None = None

    def add(self, flight: Flight) -> None:
        """``flight`` settles with ``RETRY_NOW`` in ``delay`` seconds unless it settled first."""
        queue = self.queue
        while queue and queue[0][1].over:
            queue.popleft()
        queue.append((self.loop.time() + self.delay, flight))
        if self.handle is None:
            self.handle = self.loop.call_at(queue[0][0], self.fire)

    def fire(self) -> None:
        self.handle = None
        queue = self.queue
        now = self.loop.time()
        while queue and (queue[0][1].over or queue[0][0] <= now):
            _, flight = queue.popleft()
            if not flight.over:
                flight.settled(RETRY_NOW)
        if queue and self.handle is None:
            self.handle = self.loop.call_at(queue[0][0], self.fire)

    def close(self) -> None:
        """Nothing settles by this any more."""
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.queue.clear()
