"""The client port: pluggable per service, with the output stream as the first service.

A node serves its clients through one :class:`ClientService`, chosen by name
in the cluster file (``[host] client_service``, default ``"stream"``); a
service registers its factory with :func:`register_service`. The host calls,
in this order: ``start`` once its core has started; ``on_outputs`` with every
released batch of outputs (after the writes they depend on are durable, in
step order); ``close`` at shutdown. A service submits client requests with
``host.submit(payload, on_done)``, which waits only for room in the host's
inbox (backpressure) and later calls ``on_done(reason)`` with ``None`` once the
request was stepped and its batch released, or the core's rejection reason.
The Redis (RESP) front of the KV service (``replicaio.runtime.kv.service``)
plugs in here, next to ``"stream"``: fronts with heavier imports are listed by
module name in :data:`SERVICE_MODULES` and imported on first use. A service
may take parameters from the cluster file's ``[service]`` table: its factory's
``check_params(table)`` validates them when the file is loaded (raising
``ClusterFileError`` naming ``service.<key>``), and the service reads them from
``host.cluster.service_params`` at start.

The ``stream`` service (for the broadcast protocols), wire format: frames of a
4-byte big-endian length and a body (``replicaio.runtime.framing``).

* client -> node: the body is one msgpack value, the request payload (for a
  broadcast, a ``bin``), decoded strictly with the node's codec limits;
* node -> client: the body is one codec-encoded message (``[tag, field...]``,
  see docs/codec.md): the node's outputs (``Accepted``, ``Delivered``, ...),
  ``RequestRejected(reason)`` for this client's refused requests, and once,
  right after connecting, ``HistoryEnd(outputs)`` after the replay of the
  outputs this process released before the client connected (at most
  ``client_history_max``), so a client sees recovered deliveries too.

Bad input (garbage, an oversized or truncated frame, a payload that does not
decode) is counted as ``rejected_client_<reason>`` and closes that client only.
Bounds: ``client_connections_max`` (``bound_client_connections_max``),
``client_queue_max`` frames and ``client_queue_bytes_max`` bytes waiting for
one client (beyond either the client is too slow and is disconnected:
``bound_client_queue_max``, ``bound_client_queue_bytes_max``), and
``client_history_max`` outputs, at most ``client_history_bytes_max`` bytes,
kept for late joiners (``bound_client_history_max`` counts each one forgotten).
So a client that never reads costs at most about twice
``client_queue_bytes_max`` (its queue, and the batch being written to it).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from replicaio.core.codec import Codec, DecodeError, Message, Name, Value
from replicaio.core.errors import UsageError
from replicaio.runtime.config import Address, ClusterFileError, HostParams
from replicaio.runtime.counters import Counters
from replicaio.runtime.framing import LENGTH, LENGTH_BYTES, FrameError, frame_header, read_frame
from replicaio.runtime.logs import RateLimitedLog
from replicaio.runtime.tls import TlsAcceptor, TlsServer, start_tls_server

logger = logging.getLogger("replicaio.client")

OnDone = Callable[[str | None], None]


class RequestRejected(Message, tag="RequestRejected"):
    """To a client: the core refused its request (``reason`` as counted by the core)."""

    reason: Name


class HistoryEnd(Message, tag="HistoryEnd"):
    """To a client: the replay of earlier outputs is over; live outputs follow."""

    outputs: int


class ServiceHost(Protocol):
    """What the node host offers a client service."""

    codec: Codec
    counters: Counters

    async def submit(self, payload: Any, on_done: OnDone | None = None) -> None: ...


class ClientService(Protocol):
    """A client-facing front of a node; see the module docstring for the call order."""

    tls: TlsAcceptor | None  # the host sets it before ``start`` when the port speaks TLS

    async def start(self, host: ServiceHost, address: Address, params: HostParams) -> None: ...

    def on_outputs(self, outputs: list[Any]) -> None: ...

    def expects_outputs(self) -> bool:
        """Whether an output could concern this service now: ``False`` only when
        ``on_outputs`` would drop whatever came (no client of this node waits),
        and the host then does not call it."""
        ...

    async def close(self) -> None: ...

    @property
    def port(self) -> int: ...

    def connections(self) -> int: ...


ServiceFactory = Callable[[], ClientService]
SERVICES: dict[str, ServiceFactory] = {}
# Services defined above the runtime, imported by name when first asked for.
SERVICE_MODULES: dict[str, str] = {"resp": "replicaio.runtime.kv.service"}


def register_service(name: str, factory: ServiceFactory) -> None:
    """Make ``factory`` available as ``[host] client_service = name``."""
    if name in SERVICES and SERVICES[name] is not factory:
        raise UsageError(f"client service {name!r} is already registered")
    SERVICES[name] = factory


def service_factory(name: str) -> ServiceFactory:
    factory = SERVICES.get(name)
    if factory is None and name in SERVICE_MODULES:
        importlib.import_module(SERVICE_MODULES[name])  # registers itself on import
        factory = SERVICES.get(name)
    if factory is None:
        raise UsageError(f"unknown client service {name!r}; known: {', '.join(service_names())}")
    return factory


def service_names() -> list[str]:
    """Every client service a cluster file may name."""
    return sorted(set(SERVICES) | set(SERVICE_MODULES))


def check_service_params(name: str, params: Mapping[str, Any], protocol: str | None = None
                         ) -> None:
    """Validate the ``[service]`` table for service ``name`` (``ClusterFileError``)
    of a cluster running ``protocol``."""
    factory = service_factory(name)
    check = getattr(factory, "check_params", None)
    if check is not None:
        check(params, protocol)
    elif params:
        raise ClusterFileError("service", f"service {name!r} takes no parameters, got "
                               f"{sorted(params)}")


class StreamClientConnection:
    __slots__ = ("queue", "queued_bytes", "wakeup", "writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.wakeup = asyncio.Event()

    def append(self, data: bytes) -> None:
        self.queue.append(data)
        self.queued_bytes += len(data)


ClientHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class ListeningService:
    """What every client service shares: the TCP listener, the tasks serving its
    connections (``track`` each at its start), and an orderly ``close``."""

    def __init__(self) -> None:
        self.server: asyncio.Server | TlsServer | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.tls: TlsAcceptor | None = None  # set by the host before start: mutual TLS

    async def listen(self, address: Address, on_client: ClientHandler) -> None:
        """Accept connections on ``address``; each is served by ``on_client`` (after
        the TLS handshake, when ``tls`` is set: a refused one never reaches it)."""
        if self.tls is not None:
            async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                self.track()
                await on_client(reader, writer)

            self.server = await start_tls_server(self.tls, tracked, address.host, address.port)
            return
        self.server = await asyncio.start_server(
            on_client, address.host, address.port, reuse_address=True
        )

    def track(self) -> None:
        """Called first by a connection's handler: ``close`` will cancel it."""
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()


class StreamService(ListeningService):
    """Requests in, every output out; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.host: ServiceHost | None = None
        self.params = HostParams()
        self.clients: set[StreamClientConnection] = set()
        self.history: deque[bytes] = deque()
        self.history_bytes = 0
        self.warn = RateLimitedLog(logger)

    async def start(self, host: ServiceHost, address: Address, params: HostParams) -> None:
        self.host = host
        self.params = params
        await self.listen(address, self.on_client)

    def connections(self) -> int:
        return len(self.clients)

    # -- outputs -----------------------------------------------------------------------------

    def expects_outputs(self) -> bool:
        return True  # every output goes to every client and to the history

    def on_outputs(self, outputs: list[Any]) -> None:
        assert self.host is not None
        for output in outputs:
            body = self.host.codec.encode(output)
            data = frame_header(len(body)) + body
            self.remember(data)
            for client in list(self.clients):
                self.enqueue(client, data)

    def remember(self, data: bytes) -> None:
        """Keep ``data`` for clients that connect later, forgetting the oldest."""
        assert self.host is not None
        params = self.params
        self.history.append(data)
        self.history_bytes += len(data)
        while self.history and (
            len(self.history) > params.client_history_max
            or self.history_bytes > params.client_history_bytes_max
        ):
            self.history_bytes -= len(self.history.popleft())
            self.host.counters.count("bound_client_history_max")

    def enqueue(self, client: StreamClientConnection, data: bytes) -> None:
        assert self.host is not None
        if len(client.queue) >= self.params.client_queue_max:
            bound = "bound_client_queue_max"
        elif client.queued_bytes + len(data) > self.params.client_queue_bytes_max:
            bound = "bound_client_queue_bytes_max"
        else:
            client.append(data)
            client.wakeup.set()
            return
        self.host.counters.count(bound)
        self.clients.discard(client)
        client.writer.close()

    # -- one client --------------------------------------------------------------------------

    async def on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host = self.host
        assert host is not None
        self.track()
        if len(self.clients) >= self.params.client_connections_max:
            host.counters.count("bound_client_connections_max")
            writer.close()
            return
        client = StreamClientConnection(writer)
        self.clients.add(client)
        for data in self.history:  # at most client_history_bytes_max: it fits
            client.append(data)
        end = host.codec.encode(HistoryEnd(len(self.history)))
        client.append(frame_header(len(end)) + end)
        client.wakeup.set()
        writer_task = asyncio.get_running_loop().create_task(self.write_loop(client))
        try:
            await self.read_loop(host, client, reader)
        except asyncio.CancelledError:
            pass
        finally:
            self.clients.discard(client)
            writer_task.cancel()
            writer.close()

    async def read_loop(
        self, host: ServiceHost, client: StreamClientConnection, reader: asyncio.StreamReader
    ) -> None:
        while True:
            try:
                body = await read_frame(reader, self.params.client_frame_bytes_max)
            except FrameError as error:
                self.reject(host, error.reason)
                return
            except (ConnectionError, OSError):
                return
            if body is None:
                return
            try:
                payload = host.codec.decode_value(body)
            except DecodeError as error:
                self.reject(host, f"decode_{error.reason}")
                return

            def on_done(reason: str | None, client: StreamClientConnection = client) -> None:
                if reason is not None and client in self.clients:
                    data = host.codec.encode(RequestRejected(reason))
                    self.enqueue(client, frame_header(len(data)) + data)

            await host.submit(payload, on_done)

    def reject(self, host: ServiceHost, reason: str) -> None:
        host.counters.count(f"rejected_client_{reason}")
        self.warn(logging.WARNING, reason, "client input rejected", reason=reason)

    async def write_loop(self, client: StreamClientConnection) -> None:
        try:
            while True:
                if not client.queue:
                    client.wakeup.clear()
                    await client.wakeup.wait()
                    continue
                data = b"".join(client.queue)
                client.queue.clear()
                client.queued_bytes = 0
                client.writer.write(data)
                await client.writer.drain()
        except (ConnectionError, OSError):
            client.writer.close()


register_service("stream", StreamService)


# -- a small blocking client (the CLI's broadcast command, tests) ---------------------------


class StreamClient:
    """A blocking client of the ``stream`` service."""

    def __init__(self, address: Address, *, timeout_s: float = 10.0, codec: Codec | None = None):
        self.codec = codec or Codec()
        self.socket = socket.create_connection((address.host, address.port), timeout=timeout_s)
        self.buffer = bytearray()
        self.closed = False  # the node ended the connection
        self.frame_bytes_max = HostParams().client_frame_bytes_max

    def request(self, payload: Value) -> None:
        body = self.codec.encode_value(payload)
        self.socket.sendall(frame_header(len(body)) + body)

    def send_raw(self, data: bytes) -> None:
        self.socket.sendall(data)

    def next_output(self, timeout_s: float) -> Any | None:
        """The next message from the node, or ``None`` if none came within ``timeout_s``
        (or the node closed the connection)."""
        deadline = time.monotonic() + timeout_s
        while True:
            if len(self.buffer) >= LENGTH_BYTES:
                (length,) = LENGTH.unpack_from(self.buffer)
                if length > self.frame_bytes_max:
                    raise UsageError(f"node sent an oversized frame ({length} bytes)")
                if len(self.buffer) >= LENGTH_BYTES + length:
                    body = bytes(self.buffer[LENGTH_BYTES : LENGTH_BYTES + length])
                    del self.buffer[: LENGTH_BYTES + length]
                    return self.codec.decode(body)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closed:
                return None
            self.socket.settimeout(remaining)
            try:
                chunk = self.socket.recv(65536)
            except TimeoutError:
                return None
            if not chunk:
                self.closed = True
                return None
            self.buffer += chunk

    def close(self) -> None:
        self.socket.close()

    def __enter__(self) -> StreamClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
