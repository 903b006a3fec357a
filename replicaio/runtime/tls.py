"""Mutual TLS 1.3 on the peer and client ports (the standard library's ``ssl``).

Who uses it: the peer transport (``replicaio.runtime.transport``) and the client
services (``replicaio.runtime.client.ListeningService``) when the cluster file
has a ``[tls]`` table (``TlsConfig``); certificates come from ``replicaio certs
init`` (``replicaio.runtime.certs``).

Guarantees, against anyone who can reach a port but holds no key signed by
the cluster's CA: nothing they send gets past the TLS handshake. Both ends
present a certificate; TLS 1.3 only; the CA file is the only trust anchor
(the system's are not loaded). Identities are URIs in the certificate's
subjectAltName: ``urn:replicaio:node:I`` for node ``I`` and
``urn:replicaio:client:NAME`` for a client. On the peer port a certificate
must name a *node*, and the node the connection claims to be (the transport
compares it with the ``hello``); on the client port any certificate of the CA
is accepted (a client's or a node's). Host names are not checked: a node's
identity is its URI, so addresses may change (DNS names, pods) without new
certificates.

A refused TLS handshake is counted ``rejected_tls_<reason>`` (``unknown_ca``,
``expired``, ``no_certificate``, ``plaintext``, ``not_a_node``, ``handshake``)
and logged (rate-limited) with the remote address; the connection is closed. A
connection closed before it sends anything (a TCP health probe) is only counted
(``tls_closed_before_hello``). The listener (:class:`TlsServer`) accepts sockets
itself and upgrades them with ``loop.connect_accepted_socket`` after a peek at
the first byte, so nothing is read before TLS and failures reach the counters.
Pending handshakes on a client port are bounded by ``handshakes_pending_max``
(beyond it a new connection is closed at once, ``bound_tls_handshakes_pending_max``)
and each by ``handshake_timeout_ms`` (``rejected_tls_timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from replicaio.runtime.counters import Counters
from replicaio.runtime.logs import RateLimitedLog

NODE_URI_PREFIX = "urn:replicaio:node:"
TLS_HANDSHAKE_RECORD = 0x16  # the first byte a TLS client sends
STREAM_LIMIT = 1 << 16  # asyncio's default StreamReader limit
LISTEN_BACKLOG = 128
CLIENT_URI_PREFIX = "urn:replicaio:client:"

logger = logging.getLogger("replicaio.tls")

ClientHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """The ``[tls]`` table with this node's files resolved (see ``docs/runtime.md``)."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    peer: bool = True  # TLS between the nodes
    client: bool = True  # TLS on the client (Redis) port, client certificates required
    handshake_timeout_ms: int = 5_000
    handshakes_pending_max: int = 64


def server_context(config: TlsConfig) -> ssl.SSLContext:
    """Accepts TLS 1.3 from holders of a certificate of the CA (and presents ours)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    prepare(context, config)
    return context


def client_context(config: TlsConfig) -> ssl.SSLContext:
    """Dials with our certificate; accepts a server whose certificate the CA signed
    (identities are checked by URI afterwards, not by host name)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    prepare(context, config)
    return context


def prepare(context: ssl.SSLContext, config: TlsConfig) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(config.ca_file))
    context.load_cert_chain(str(config.cert_file), str(config.key_file))


def identity(ssl_object: Any) -> str | None:
    """The replicaio URI in the peer certificate's subjectAltName, if any."""
    if ssl_object is None:
        return None
    certificate = ssl_object.getpeercert()
    if not certificate:
        return None
    for kind, value in certificate.get("subjectAltName", ()):
        if kind == "URI" and isinstance(value, str) and value.startswith("urn:replicaio:"):
            return value
    return None


def node_of(uri: str | None) -> int | None:
    """Node ``I`` for ``urn:replicaio:node:I``, else ``None``."""
    if uri is None or not uri.startswith(NODE_URI_PREFIX):
        return None
    number = uri[len(NODE_URI_PREFIX):]
    return int(number) if number.isdigit() and len(number) <= 6 else None


def rejection_reason(error: BaseException) -> str:
    """A stable counter suffix for a failed TLS handshake."""
    if isinstance(error, ssl.SSLCertVerificationError):
        message = (error.verify_message or "").lower()
        if "expired" in message or "not yet valid" in message:
            return "expired"
        return "unknown_ca"
    text = str(error).upper()
    if "WRONG_VERSION_NUMBER" in text or "HTTP_REQUEST" in text or "RECORD_LAYER" in text:
        return "plaintext"
    if "PEER_DID_NOT_RETURN_A_CERTIFICATE" in text or "CERTIFICATE_REQUIRED" in text:
        return "no_certificate"
    if "CERTIFICATE_EXPIRED" in text:
        return "expired"
    if "UNKNOWN_CA" in text or "CERTIFICATE_VERIFY_FAILED" in text or "BAD_CERTIFICATE" in text:
        return "unknown_ca"
    return "handshake"


class TlsAcceptor:
    """The server side of one port: each accepted socket is checked (a TLS client
    speaks first, with a handshake record), upgraded, and its certificate's identity
    checked; refusals are counted and logged. See the module docstring."""

    def __init__(self, config: TlsConfig, counters: Counters, *, nodes_only: bool) -> None:
        self.config = config
        self.context = server_context(config)
        self.counters = counters
        self.nodes_only = nodes_only
        self.pending = 0
        self.warn = RateLimitedLog(logger)

    async def accept(self, connection: socket.socket
                     ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The TLS streams of ``connection``, or ``None`` if it was refused (then it is
        closed, counted and logged)."""
        remote = str(connection.getpeername()) if connection.fileno() >= 0 else "?"
        if self.pending >= self.config.handshakes_pending_max:
            self.counters.count("bound_tls_handshakes_pending_max")
            connection.close()
            return None
        self.pending += 1
        try:
            streams = await asyncio.wait_for(self.handshake(connection, remote),
                                             self.config.handshake_timeout_ms / 1000)
        except TimeoutError:
            streams = None
            self.refuse("timeout", remote, "no TLS handshake in time")
        finally:
            self.pending -= 1
        if streams is None:
            connection.close()
        return streams

    async def handshake(self, connection: socket.socket, remote: str
                        ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        loop = asyncio.get_running_loop()
        first = await peek(connection)
        if not first:
            self.counters.count("tls_closed_before_hello")  # a TCP probe: no log
            return None
        if first[0] != TLS_HANDSHAKE_RECORD:
            self.refuse("plaintext", remote, f"first byte {first!r}: not TLS")
            return None
        reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, connection, ssl=self.context,
                ssl_handshake_timeout=self.config.handshake_timeout_ms / 1000)
        except ssl.SSLError as error:
            self.refuse(rejection_reason(error), remote, str(error))
            return None
        except (ConnectionError, OSError, TimeoutError) as error:
            self.refuse("handshake", remote, str(error) or type(error).__name__)
            return None
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        found = identity(writer.get_extra_info("ssl_object"))
        if self.nodes_only and node_of(found) is None:
            self.refuse("not_a_node", remote, f"certificate names {found!r}")
            writer.close()
            return None
        return reader, writer

    def refuse(self, reason: str, remote: str, detail: str) -> None:
        self.counters.count(f"rejected_tls_{reason}")
        self.warn(logging.WARNING, f"tls:{reason}", "TLS connection refused", remote=remote,
                  reason=reason, detail=detail[:200])


async def peek(connection: socket.socket) -> bytes:
    """The first byte the other end sent, left in the socket (``b""``: it closed)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            return connection.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            return b""
        readable: asyncio.Future[None] = loop.create_future()
        loop.add_reader(connection.fileno(), readable.set_result, None)
        try:
            await readable
        finally:
            loop.remove_reader(connection.fileno())


class TlsServer:
    """Listens on one address and serves each connection that passes the
    :class:`TlsAcceptor` with ``handler`` (the shape of ``asyncio.Server`` that the
    runtime uses: ``sockets``, ``close``, ``wait_closed``)."""

    def __init__(self, acceptor: TlsAcceptor, handler: ClientHandler,
                 listener: socket.socket) -> None:
        self.acceptor = acceptor
        self.handler = handler
        self.listener = listener
        self.sockets = (listener,)
        self.handshakes: set[asyncio.Task[Any]] = set()
        self.accepting: asyncio.Task[None] | None = None

    async def accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            connection, _ = await loop.sock_accept(self.listener)
            connection.setblocking(False)
            task = loop.create_task(self.serve(connection))
            self.handshakes.add(task)
            task.add_done_callback(self.handshakes.discard)

    async def serve(self, connection: socket.socket) -> None:
        streams = await self.acceptor.accept(connection)
        task = asyncio.current_task()
        if task is not None:
            self.handshakes.discard(task)
        if streams is not None:
            with contextlib.suppress(ConnectionError):
                await self.handler(*streams)

    def close(self) -> None:
        if self.accepting is not None:
            self.accepting.cancel()
        for task in list(self.handshakes):
            task.cancel()
        self.listener.close()

    async def wait_closed(self) -> None:
        if self.accepting is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.accepting


async def start_tls_server(acceptor: TlsAcceptor, handler: ClientHandler, host: str,
                           port: int) -> TlsServer:
    """Listen on ``host:port`` (``OSError`` if it cannot) and serve TLS connections."""
    loop = asyncio.get_running_loop()
    family, kind, protocol, _, address = (await loop.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE))[0]
    listener = socket.socket(family, kind, protocol)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(LISTEN_BACKLOG)
        listener.setblocking(False)
    except OSError:
        listener.close()
        raise
    server = TlsServer(acceptor, handler, listener)
    server.accepting = loop.create_task(server.accept_loop())
    return server
