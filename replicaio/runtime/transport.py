"""The peer transport: authenticated, framed TCP between the nodes of a cluster.

Who uses it: the node host (``replicaio.runtime.host``) hands it encoded
messages with :meth:`Transport.send` and receives authenticated payloads
through the ``inbox`` it gave the constructor (``PeerInbox.offer``, called
synchronously as frames are cut out of what the socket yields: no task wakes
per frame; ``replicaio.runtime.peer_reader``). The transport
never decodes payloads (the core does, strictly) and never blocks the host:
``send`` queues, or writes a frame at once when the peer's writer is idle
(nothing queued, nothing unsent in the socket's buffer; at most one such
write per peer per turn of the event loop, the frames queued behind it in the
same turn joined into one write at the turn's end, without a task switch),
which never blocks either.

Connections. One TCP connection per pair of nodes, dialled by the lower id;
the higher id only accepts. A dialler that loses its connection, or cannot
make one, retries after a jittered exponential back-off between
``reconnect_delay_ms_min`` and ``reconnect_delay_ms_max`` (the runtime is not
a deterministic layer: the jitter uses ``random``). When a peer dials again
(it restarted), the new authenticated connection replaces the old one.

Wire format. Every frame is a 4-byte big-endian length and a body of at most
``frame_bytes_max`` bytes (``replicaio.runtime.framing``). The handshake
(bodies are msgpack arrays, at most ``HANDSHAKE_FRAME_BYTES_MAX`` bytes)::

    dialler  -> ["replicaio", 2, "hello", dialler_id, acceptor_id, nonce_d, share_d]
    acceptor -> ["replicaio", 2, "challenge", nonce_a, share_a, tag_a]
    dialler  -> ["replicaio", 2, "proof", tag_d]
    acceptor -> ["replicaio", 2, "welcome"]

with ``transcript = "replicaio handshake v2" | dialler_id | acceptor_id |
nonce_d | nonce_a | share_d | share_a`` (ids 4-byte big-endian, nonces 32
random bytes, shares the ends' ephemeral X25519 public keys), ``tag_a =
auth.tag(dialler, transcript | "acceptor")`` and ``tag_d = auth.tag(acceptor,
transcript | "dialer")``: each end proves it holds the pair's key (or its
signing key) over fresh nonces and both shares, so neither a recorded
handshake nor a reflected tag is accepted, and nobody but the two ends knows
the X25519 secret of the shares.

Session keys (Castro and Liskov, TOCS 2002 section 3.2: pairwise session keys
between replicas, so that the common case needs MACs, not signatures). From
the X25519 secret ``z`` each direction gets its own key, ``k_dir =
HMAC-SHA256(z, "replicaio session v2" | SHA-256(transcript) | direction)``
(``direction`` one byte: 0 from the dialler, 1 from the acceptor). Every data
frame body is ``seq (8 bytes BE) | payload | tag`` with ``tag =
HMAC-SHA256(k_dir, seq | payload)``: a MAC costs about a microsecond where an
Ed25519 signature per frame cost 50 to 100 (the cluster's ``auth`` proves who
is at the other end once per connection; frames are never shown to a third
node, so nothing is lost by not signing them). Sequence numbers start at 1 on
each connection and must run on exactly: a replayed, dropped or reordered
frame, or one from another connection (another session key), is rejected.

Mutual TLS (``[tls] peer = true``; ``replicaio.runtime.tls``). Every connection
is TLS 1.3 first, both ends presenting a certificate of the cluster CA that
names a node; the acceptor checks that it names the node the ``hello`` claims,
the dialler that it names the node it dialled (``rejected_tls_identity``). The
handshake and the tagged frames above then run inside TLS unchanged: they
bind the connection to the cluster's own keys as well (a certificate alone,
without the cluster secret or signing key, is not enough), and they are all
that protects a cluster without TLS. TLS refusals count as
``rejected_tls_<reason>``.

Bad input never stops the node: garbage, an oversized or truncated frame, an
unknown peer, a wrong key, a bad tag or sequence number is counted as
``rejected_<reason>`` and that connection is closed (a stream cannot be
trusted or resynchronised after it); every other connection keeps going.

Bounds: ``outbound_queue_max`` messages and ``outbound_queue_bytes_max``
bytes per peer (while it is slow or unreachable); beyond either the oldest
are dropped and ``bound_outbound_queue_max`` or
``bound_outbound_queue_bytes_max`` counted: safe because the core retransmits
link messages until acknowledged and streams are unreliable by contract.
What has left the queue is bounded too: the writer takes at most
``WRITE_BATCH_BYTES_MAX`` bytes (or one larger frame) per write and waits for
the connection to drain before it takes more, so a peer that stops reading
holds at most the queue's bound, one write and the socket's buffers (a frame
``send`` writes at once, and what was queued behind it in the same turn of the
loop, joined into one write at the turn's end, go only into an empty buffer, so
at most one such write is added). Inbound
flow control is TCP's: when the host's inbox refuses a payload, the
connection's reader holds it and pauses reading until the inbox has room
(``PeerReader``), so the peer's frames wait in the sockets and its own queue.

Handshake slots. Anyone who reaches the peer port can open connections, so
unauthenticated ones are limited in number and time, and a legitimate peer can
always win a slot: at most ``handshakes_pending_max`` at once and
``handshakes_per_source_max`` from one address, each limited to
``handshake_timeout_ms``. A new connection never waits for a slot: when its
source holds its share it replaces that source's oldest pending connection
(``bound_handshakes_per_source_max``), and when every slot is taken it replaces
the oldest of the source that holds the most (``bound_handshakes_pending_max``);
in both cases a connection that has not yet sent a valid ``hello`` goes first
(``handshakes_evicted`` counts them). A dialling peer sends its ``hello`` at
once and completes in two round trips, so silent connections, however many,
cannot keep it out; a flood of well-formed ``hello`` s from one address only
evicts that address's own connections once the others are not the busiest.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import secrets
import socket
import ssl
import struct
from collections import deque
from collections.abc import Mapping
from typing import Any, cast

import msgpack
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from replicaio.runtime import hoptrace
from replicaio.runtime.config import Address, TransportParams
from replicaio.runtime.counters import Counters
from replicaio.runtime.crypto import Authenticator
from replicaio.runtime.framing import LENGTH, FrameError, FrameMac, frame_header, read_frame
from replicaio.runtime.logs import RateLimitedLog, log
from replicaio.runtime.peer_reader import (
    SEQUENCE,
    SESSION_TAG_BYTES,
    PeerInbox,
    PeerReader,
)
from replicaio.runtime.tls import (
    TlsAcceptor,
    TlsConfig,
    TlsServer,
    client_context,
    identity,
    node_of,
    rejection_reason,
    start_tls_server,
)

HANDSHAKE_FRAME_BYTES_MAX = 512
HANDSHAKE_MAGIC = "replicaio"
HANDSHAKE_VERSION = 2
NONCE_BYTES = 32
SHARE_BYTES = 32  # an X25519 public key
TRANSCRIPT_LABEL = b"replicaio handshake v2"
SESSION_LABEL = b"replicaio session v2"
FROM_DIALER = b"\x00"
FROM_ACCEPTOR = b"\x01"
WRITE_BATCH_MAX = 256  # frames sealed and written per drain
WRITE_BATCH_BYTES_MAX = 1 << 20  # payload bytes per drain (a larger frame goes alone)

logger = logging.getLogger("replicaio.transport")


class HandshakeRejected(Exception):
    """The other end failed the handshake; ``reason`` is a stable counter suffix."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Connection:
    """An authenticated connection to one peer, with its session keys."""

    # transport.pxd's declarations, in their order (ADR 0067).
    __slots__ = (  # noqa: RUF023
        "peer", "reader", "writer", "transport", "outgoing_key", "incoming_key",
        "outgoing_mac", "send_seq", "task", "protocol",
    )

    def __init__(
        self,
        peer: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        keys: SessionKeys,
        dialer: bool,
    ) -> None:
        self.peer = peer
        self.reader = reader
        self.writer = writer
        # The writer's transport, taken once: ``StreamWriter.transport`` is a
        # property in asyncio's Python source, an interpreted call per read, and
        # the release path reads it per write (a StreamWriter keeps its transport).
        self.transport: asyncio.WriteTransport = writer.transport
        from_dialer, from_acceptor = keys
        self.outgoing_key = from_dialer if dialer else from_acceptor
        self.incoming_key = from_acceptor if dialer else from_dialer
        self.outgoing_mac = FrameMac(self.outgoing_key)  # frame_tag's, set up once
        self.send_seq = 0
        self.task: asyncio.Task[Any] | None = None
        # The read side once the handshake is done (it then owns the transport's
        # callbacks, the write side's flow control included).
        self.protocol: PeerReader | None = None


class PendingHandshake:
    """An inbound connection that has not yet authenticated (a handshake slot)."""

    __slots__ = ("evicted", "greeted", "source", "writer")

    def __init__(self, source: str, writer: asyncio.StreamWriter) -> None:
        self.source = source
        self.writer = writer
        self.greeted = False  # it sent a well-formed hello to this node
        self.evicted = False

    def evict(self) -> None:
        self.evicted = True
        transport = self.writer.transport
        if transport is not None:
            transport.abort()  # its handshake read ends at once


def oldest_evictable(pending: list[PendingHandshake]) -> PendingHandshake:
    """The oldest connection that has not greeted us, else the oldest."""
    for candidate in pending:
        if not candidate.greeted:
            return candidate
    return pending[0]


class PeerChannel:
    """Everything the transport keeps for one peer: its queue, connection, stats."""

    # transport.pxd's declarations, in their order (ADR 0067).
    __slots__ = (  # noqa: RUF023
        "peer", "address", "queue", "queued_bytes", "wakeup", "connection", "idle_writer",
        "flushing", "connections", "frames_in", "frames_out", "bytes_in", "bytes_out",
        "dropped",
    )

    def __init__(self, peer: int, address: Address) -> None:
        self.peer = peer
        self.address = address
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0  # payload bytes in ``queue``
        self.wakeup = asyncio.Event()
        self.connection: Connection | None = None
        # The connection whose write loop waits with nothing queued: ``send``
        # writes to it at once (see ``send``).
        self.idle_writer: Connection | None = None
        # The connection ``send`` wrote to at once this turn of the loop, its write
        # loop still waiting: frames queued behind that one in the same turn are
        # written together at the turn's end (``Transport.flush_written``), the
        # write loop left asleep.
        self.flushing: Connection | None = None
        self.connections = 0
        self.frames_in = 0
        self.frames_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.dropped = 0


def transcript(
    dialer: int, acceptor: int, nonce_dialer: bytes, nonce_acceptor: bytes,
    share_dialer: bytes, share_acceptor: bytes,
) -> bytes:
    return (TRANSCRIPT_LABEL + struct.pack(">II", dialer, acceptor) + nonce_dialer
            + nonce_acceptor + share_dialer + share_acceptor)


SessionKeys = tuple[bytes, bytes]  # (from the dialler, from the acceptor)


def session_keys(secret: bytes, text: bytes) -> SessionKeys:
    """Each direction's MAC key from the X25519 ``secret`` of a handshake with
    ``text`` as its transcript (module docstring)."""
    base = SESSION_LABEL + hashlib.sha256(text).digest()
    return (hmac.digest(secret, base + FROM_DIALER, hashlib.sha256),
            hmac.digest(secret, base + FROM_ACCEPTOR, hashlib.sha256))


def ephemeral_share() -> tuple[X25519PrivateKey, bytes]:
    """A fresh X25519 key for one handshake and its public share."""
    private = X25519PrivateKey.generate()
    return private, private.public_key().public_bytes_raw()


def shared_secret(private: X25519PrivateKey, share: bytes) -> bytes:
    """The X25519 secret with the other end's ``share`` (checked well-formed)."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(share))
    except ValueError:  # a low-order point (all-zero secret) or a malformed key
        raise HandshakeRejected("bad_handshake", "unusable key share") from None


def frame_tag(key: bytes, head: bytes, payload: bytes) -> bytes:
    """The MAC of a data frame under a session key."""
    return hmac.digest(key, head + payload, hashlib.sha256)


def handshake_frame(*fields: Any) -> bytes:
    body: bytes = msgpack.packb([HANDSHAKE_MAGIC, HANDSHAKE_VERSION, *fields], use_bin_type=True)
    return frame_header(len(body)) + body


def parse_handshake(body: bytes, kind: str, arity: int) -> list[Any]:
    """The fields after magic, version and kind; :class:`HandshakeRejected` otherwise."""
    try:
        message = msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        raise HandshakeRejected("bad_handshake", f"not msgpack: {error}") from None
    if not isinstance(message, list) or len(message) < 3 or message[0] != HANDSHAKE_MAGIC:
        raise HandshakeRejected("bad_handshake", "not a replicaio handshake")
    if message[1] != HANDSHAKE_VERSION:
        raise HandshakeRejected("bad_version", f"handshake version {message[1]!r}")
    if message[2] != kind or len(message) != 3 + arity:
        raise HandshakeRejected("bad_handshake", f"expected {kind} with {arity} fields")
    return message[3:]


def nonce_or_reject(value: Any) -> bytes:
    if type(value) is not bytes or len(value) != NONCE_BYTES:
        raise HandshakeRejected("bad_handshake", "nonce must be 32 bytes")
    return value


def share_or_reject(value: Any) -> bytes:
    if type(value) is not bytes or len(value) != SHARE_BYTES:
        raise HandshakeRejected("bad_handshake", "key share must be 32 bytes")
    return value


class Transport:
    """Framed, authenticated TCP to every peer; see the module docstring.
    Compiled, an extension type without an instance dict (ADR 0067): a test
    that changes a method subclasses it."""

    # transport.pxd's declarations, in their order.
    __slots__ = (  # noqa: RUF023
        "node_id", "listen", "authenticator", "params", "inbox", "counters", "channels",
        "server", "tasks", "pending", "closing", "warn", "tls_acceptor", "tls_dial", "hops",
        "loop", "written",
    )

    def __init__(
        self,
        node_id: int,
        listen: Address,
        peers: Mapping[int, Address],
        authenticator: Authenticator,
        params: TransportParams,
        inbox: PeerInbox,
        counters: Counters,
        tls: TlsConfig | None = None,
    ) -> None:
        assert node_id not in peers
        self.node_id = node_id
        self.listen = listen
        self.authenticator = authenticator
        self.params = params
        self.inbox = inbox
        self.counters = counters
        self.channels = {peer: PeerChannel(peer, address) for peer, address in peers.items()}
        self.server: asyncio.Server | TlsServer | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        # Unauthenticated inbound connections, oldest first (dicts keep insertion order).
        self.pending: dict[PendingHandshake, None] = {}
        self.closing = False
        self.warn = RateLimitedLog(logger)
        # Mutual TLS (replicaio.runtime.tls): the handshake below then runs inside it.
        self.tls_acceptor = (None if tls is None
                             else TlsAcceptor(tls, counters, nodes_only=True))
        self.tls_dial = None if tls is None else client_context(tls)
        self.hops: hoptrace.HopTrace | None = None  # set by the host when it traces
        # The loop, taken once at start (``asyncio.get_running_loop`` checks the
        # process id, a system call, each time it is asked; ADR 0053).
        self.loop: asyncio.AbstractEventLoop | None = None
        # The channels ``send`` wrote to at once this turn of the loop, flushed and
        # made idle again by one callback at the end of the turn (``flush_written``).
        self.written: list[PeerChannel] = []

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen (lower ids dial this node) and dial every peer with a higher id."""
        self.loop = asyncio.get_running_loop()
        if self.tls_acceptor is not None:
            self.server = await start_tls_server(
                self.tls_acceptor, self.on_inbound, self.listen.host, self.listen.port
            )
        else:
            self.server = await asyncio.start_server(
                self.on_inbound, self.listen.host, self.listen.port, reuse_address=True
            )
        for peer, channel in self.channels.items():
            if self.node_id < peer:
                self.spawn(self.dial_loop(channel))

    @property
    def port(self) -> int:
        """The port actually bound (useful when the configured one was 0)."""
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        """Stop listening and dialling, close every connection."""
        self.closing = True
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()

    def spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        loop = self.loop or asyncio.get_running_loop()
        task: asyncio.Task[Any] = loop.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # -- sending ---------------------------------------------------------------------------

    def send(self, peer: int, payload: bytes) -> None:
        """Queue ``payload`` for ``peer``; never blocks (drop-oldest beyond the bound)."""
        channel = self.channels[peer]
        overhead = SEQUENCE.size + SESSION_TAG_BYTES
        if len(payload) + overhead > self.params.frame_bytes_max:
            self.counters.count("rejected_outbound_oversized")
            return
        # The write loop waits for work and the socket has sent everything it was
        # given: write now rather than wake the loop for it (one task switch less
        # for a lone message, and the frame is in the kernel before the host goes
        # on to its sync). At most one such write per peer per turn of the event
        # loop: the next frames of the same turn (a batch's release) queue, and
        # are joined into one write at the end of the turn (``flush_written``),
        # without waking the write loop.
        connection = self.idle_now(channel)
        if connection is not None:
            self.claim(channel, connection)
            self.write_frames(channel, connection, [self.seal(connection, payload)])
            return
        queue = channel.queue
        if len(queue) >= self.params.outbound_queue_max:
            channel.queued_bytes -= len(queue.popleft())
            channel.dropped += 1
            self.counters.count("bound_outbound_queue_max")
        bytes_max = self.params.outbound_queue_bytes_max
        while queue and channel.queued_bytes + len(payload) > bytes_max:
            channel.queued_bytes -= len(queue.popleft())
            channel.dropped += 1
            self.counters.count("bound_outbound_queue_bytes_max")
        queue.append(payload)
        channel.queued_bytes += len(payload)
        if channel.flushing is None:
            channel.wakeup.set()

    def send_many(self, sends: list[tuple[int, bytes]]) -> None:
        """``send`` each ``(peer, payload)`` in order, except that several
        payloads for a peer whose writer is idle (as ``send`` writes at once)
        leave in one write: a batch's release (a commit notice and the
        AppendEntries behind it) costs the peer one read and one wake-up."""
        if len(sends) == 1:
            peer, payload = sends[0]
            self.send(peer, payload)
            return
        by_peer: dict[int, list[bytes]] = {}
        for peer, payload in sends:
            by_peer.setdefault(peer, []).append(payload)
        for peer, payloads in by_peer.items():
            channel = self.channels[peer]
            # Claimed as ``send`` claims a writer for a lone frame, so the payloads
            # queue (the bounds and the oversize check apply as to any frame), and
            # leave at once in one write.
            connection = self.idle_now(channel) if len(payloads) > 1 else None
            if connection is not None:
                self.claim(channel, connection)
            for payload in payloads:
                self.send(peer, payload)
            if connection is not None and channel.queue:
                self.write_frames(channel, connection, self.take_frames(channel, connection))

    @staticmethod
    def idle_now(channel: PeerChannel) -> Connection | None:
        """The connection to write to at once, if any: its write loop waits with
        nothing queued and its socket has sent everything it was given."""
        connection = channel.idle_writer
        if connection is None or channel.queue or connection is not channel.connection:
            return None
        transport = connection.transport
        if transport.is_closing() or transport.get_write_buffer_size():
            return None
        return connection

    def claim(self, channel: PeerChannel, connection: Connection) -> None:
        """This turn writes to ``connection`` at once: frames for it queue without
        waking its write loop, until ``flush_written`` at the turn's end."""
        channel.idle_writer = None
        channel.flushing = connection
        written = self.written
        if not written:
            loop = self.loop or asyncio.get_running_loop()
            loop.call_soon(self.flush_written)
        written.append(channel)

    def write_frames(self, channel: PeerChannel, connection: Connection,
                     frames: list[bytes]) -> None:
        """Write ``frames`` (sealed) to ``connection`` in one write, now."""
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        if self.hops is not None:  # before the write: it may wake the peer first
            self.hops.stamp(hoptrace.FRAME_OUT, channel.peer * hoptrace.PEER_UNIT + len(data))
        try:
            connection.transport.write(data)  # (StreamWriter.write's only work)
        except (ConnectionError, OSError):
            connection.writer.close()  # the reader sees the end and cleans up
            return
        except RuntimeError:  # uvloop's write to a closed transport (see dial_once)
            writer = connection.writer
            if not writer.is_closing():
                raise
            writer.close()
            return
        channel.frames_out += len(frames)
        channel.bytes_out += len(data)

    def flush_written(self) -> None:
        """The end of a turn in which ``send`` wrote frames at once: what was queued
        behind them meanwhile goes in one write per peer if the socket took all
        it was given (else the write loop takes it, waiting for the drain), and
        each write loop with nothing left is idle again."""
        written, self.written = self.written, []
        for channel in written:
            connection, channel.flushing = channel.flushing, None
            queue = channel.queue
            if connection is None or channel.connection is not connection:
                if queue:
                    channel.wakeup.set()  # (the current connection's loop, if any)
                continue
            if queue:
                transport = connection.transport
                if transport.is_closing() or transport.get_write_buffer_size():
                    channel.wakeup.set()
                    continue
                self.write_frames(channel, connection, self.take_frames(channel, connection))
                if queue:
                    channel.wakeup.set()  # beyond one write's bound: the loop goes on
                    continue
            if not channel.wakeup.is_set():
                channel.idle_writer = connection

    def take_frames(self, channel: PeerChannel, connection: Connection) -> list[bytes]:
        """Seal the queue's frames for one write (at most ``WRITE_BATCH_MAX`` frames
        and ``WRITE_BATCH_BYTES_MAX`` bytes, or one larger frame)."""
        frames: list[bytes] = []
        taken = 0
        queue = channel.queue
        while queue and len(frames) < WRITE_BATCH_MAX and taken < WRITE_BATCH_BYTES_MAX:
            payload = queue.popleft()
            taken += len(payload)
            frames.append(self.seal(connection, payload))
        channel.queued_bytes -= taken
        return frames

    def seal(self, connection: Connection, payload: bytes) -> bytes:
        connection.send_seq += 1
        head = SEQUENCE.pack(connection.send_seq)
        tag = connection.outgoing_mac.tag(head, payload)  # frame_tag(outgoing_key, ...)
        # (frame_header, inline; one join rather than three concatenations)
        return b"".join((LENGTH.pack(len(head) + len(payload) + len(tag)), head, payload, tag))

    async def write_loop(self, channel: PeerChannel, connection: Connection) -> None:
        writer = connection.writer
        protocol = connection.protocol
        assert protocol is not None
        try:
            while channel.connection is connection:
                if not channel.queue:
                    channel.wakeup.clear()
                    channel.idle_writer = connection
                    try:
                        await channel.wakeup.wait()
                    finally:
                        channel.idle_writer = None
                    continue
                frames = self.take_frames(channel, connection)
                data = b"".join(frames)
                if self.hops is not None:
                    self.hops.stamp(hoptrace.FRAME_OUT,
                                    channel.peer * hoptrace.PEER_UNIT + len(data))
                writer.write(data)
                channel.frames_out += len(frames)
                channel.bytes_out += len(data)
                await protocol.drain()
        except (ConnectionError, OSError):
            writer.close()  # the reader sees the end and cleans up
        except RuntimeError:  # uvloop's write to a closed transport (see dial_once)
            if not writer.is_closing():
                raise
            writer.close()

    # -- receiving -------------------------------------------------------------------------

    def rejected(self, peer: int, error: FrameError) -> None:
        """A connection's reader refused a frame (the connection ends)."""
        self.counters.count(f"rejected_{error.reason}")
        self.warn(logging.WARNING, f"{peer}:{error.reason}", "peer frame rejected",
                  peer=peer, reason=error.reason, detail=str(error))

    async def serve_connection(self, channel: PeerChannel, connection: Connection) -> None:
        """Read frames until the connection ends; the caller installed nothing yet."""
        old = channel.connection
        if old is not None:
            self.counters.count("connections_replaced")
            if old.task is not None:
                old.task.cancel()
            old.writer.close()
        channel.connection = connection
        channel.connections += 1
        connection.task = asyncio.current_task()
        self.counters.count("connections_established")
        log(logger, logging.INFO, "peer connected", peer=channel.peer)
        peer = channel.peer
        reader = PeerReader(peer, connection.incoming_key, self.inbox, channel,
                            self.params.frame_bytes_max,
                            lambda error: self.rejected(peer, error), self.hops)
        connection.protocol = reader
        # Read and write transport alike (asyncio's, TLS's or uvloop's).
        reader.take_over(cast(asyncio.Transport, connection.writer.transport), connection.reader)
        channel.wakeup.set()
        writer_task = self.spawn(self.write_loop(channel, connection))
        reason = "cancelled"
        try:
            reason = await reader.done
        finally:
            writer_task.cancel()
            reader.finish(reason)  # nothing more is delivered from it
            connection.writer.close()
            if channel.connection is connection:
                channel.connection = None
            log(logger, logging.INFO, "peer disconnected", peer=channel.peer, reason=reason)

    # -- dialling (lower id) -----------------------------------------------------------------

    async def dial_loop(self, channel: PeerChannel) -> None:
        attempt = 0
        while not self.closing:
            connection = await self.dial_once(channel)
            if connection is None:
                await asyncio.sleep(self.back_off_seconds(attempt))
                attempt += 1
                continue
            attempt = 0
            await self.serve_connection(channel, connection)
            self.counters.count("disconnects")
            await asyncio.sleep(self.back_off_seconds(0))

    def back_off_seconds(self, attempt: int) -> float:
        """Jittered exponential back-off: uniform in [delay/2, delay]."""
        params = self.params
        delay_ms = min(
            params.reconnect_delay_ms_max, params.reconnect_delay_ms_min * (1 << min(attempt, 20))
        )
        return delay_ms * random.uniform(0.5, 1.0) / 1000

    async def dial_once(self, channel: PeerChannel) -> Connection | None:
        address = channel.address
        params = self.params
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(address.host, address.port, ssl=self.tls_dial),
                params.connect_timeout_ms / 1000,
            )
        except ssl.SSLError as error:
            reason = rejection_reason(error)
            self.counters.count(f"rejected_tls_{reason}")
            self.warn(logging.WARNING, f"dial:{channel.peer}:tls", "TLS to peer refused",
                      peer=channel.peer, reason=reason, detail=str(error)[:200])
            return None
        except (OSError, TimeoutError):
            self.counters.count("connect_failures")
            return None
        if self.tls_dial is not None:
            found = identity(writer.get_extra_info("ssl_object"))
            if node_of(found) != channel.peer:
                self.counters.count("rejected_tls_identity")
                self.warn(logging.WARNING, f"dial:{channel.peer}:tls_identity",
                          "peer's certificate names another identity", peer=channel.peer,
                          identity=str(found))
                writer.close()
                return None
        set_nodelay(writer)
        try:
            return await asyncio.wait_for(
                self.handshake_as_dialer(channel.peer, reader, writer),
                params.handshake_timeout_ms / 1000,
            )
        except (HandshakeRejected, FrameError) as error:
            self.counters.count(f"rejected_{error.reason}")
            self.warn(logging.WARNING, f"dial:{channel.peer}:{error.reason}",
                      "handshake with peer failed", peer=channel.peer, reason=error.reason)
        except TimeoutError:
            self.counters.count("rejected_handshake_timeout")
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            self.counters.count("handshake_failures")
        except RuntimeError:
            # uvloop raises RuntimeError, not ConnectionError, for a write to a
            # transport the peer closed meanwhile; uncaught, it ended this dial
            # loop for good and the node never reconnected to the peer (seen in
            # test_kv_minbft_usig_recovery). Any other RuntimeError is a bug.
            if not writer.is_closing():
                raise
            self.counters.count("handshake_failures")
        writer.close()
        return None

    async def handshake_as_dialer(
        self, peer: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Connection:
        nonce_dialer = secrets.token_bytes(NONCE_BYTES)
        private, share_dialer = ephemeral_share()
        writer.write(handshake_frame("hello", self.node_id, peer, nonce_dialer, share_dialer))
        await writer.drain()
        nonce_acceptor, share_acceptor, tag_acceptor = parse_handshake(
            await self.read_handshake(reader), "challenge", 3
        )
        nonce_acceptor = nonce_or_reject(nonce_acceptor)
        share_acceptor = share_or_reject(share_acceptor)
        text = transcript(self.node_id, peer, nonce_dialer, nonce_acceptor, share_dialer,
                          share_acceptor)
        if type(tag_acceptor) is not bytes or not self.authenticator.verify(
            peer, text + b"acceptor", tag_acceptor
        ):
            raise HandshakeRejected("bad_auth", f"node {peer} failed to prove its key")
        writer.write(handshake_frame("proof", self.authenticator.tag(peer, text + b"dialer")))
        await writer.drain()
        parse_handshake(await self.read_handshake(reader), "welcome", 0)
        keys = session_keys(shared_secret(private, share_acceptor), text)
        return Connection(peer, reader, writer, keys, dialer=True)

    @staticmethod
    async def read_handshake(reader: asyncio.StreamReader) -> bytes:
        body = await read_frame(reader, HANDSHAKE_FRAME_BYTES_MAX)
        if body is None:
            raise HandshakeRejected("handshake_closed", "the other end closed")
        return body

    # -- accepting (higher id) ---------------------------------------------------------------

    async def on_inbound(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        remote = writer.get_extra_info("peername")
        if self.closing:
            writer.close()
            return
        source = str(remote[0]) if isinstance(remote, tuple) and remote else str(remote)
        self.make_room_for(source)
        slot = PendingHandshake(source, writer)
        self.pending[slot] = None
        connection: Connection | None = None
        try:
            connection = await asyncio.wait_for(
                self.handshake_as_acceptor(reader, writer, slot),
                self.params.handshake_timeout_ms / 1000,
            )
        except (HandshakeRejected, FrameError) as error:
            if not slot.evicted:
                self.counters.count(f"rejected_{error.reason}")
                self.warn(logging.WARNING, f"accept:{error.reason}", "inbound handshake rejected",
                          remote=str(remote), reason=error.reason, detail=str(error))
        except TimeoutError:
            self.counters.count("rejected_handshake_timeout")
            self.warn(logging.WARNING, "accept:timeout", "inbound handshake timed out",
                      remote=str(remote))
        except (ConnectionError, OSError):
            if not slot.evicted:
                self.counters.count("handshake_failures")
        except RuntimeError:  # uvloop's write to a closed transport (see dial_once)
            if not writer.is_closing():
                raise
            self.counters.count("handshake_failures")
        except asyncio.CancelledError:  # shutdown: the task ends here, quietly
            pass
        finally:
            self.pending.pop(slot, None)  # (gone already if it was evicted)
        if connection is None:
            writer.close()
            return
        # Cancelled when a newer connection from the same peer replaces it, or at shutdown.
        with contextlib.suppress(asyncio.CancelledError):
            await self.serve_connection(self.channels[connection.peer], connection)

    def make_room_for(self, source: str) -> None:
        """Evict a pending handshake if a new one from ``source`` would exceed a bound
        (see the module docstring: which one goes)."""
        params = self.params
        pending = list(self.pending)
        mine = [slot for slot in pending if slot.source == source]
        if len(mine) >= params.handshakes_per_source_max:
            self.counters.count("bound_handshakes_per_source_max")
            victim = oldest_evictable(mine)
        elif len(pending) >= params.handshakes_pending_max:
            self.counters.count("bound_handshakes_pending_max")
            held: dict[str, int] = {}
            for slot in pending:
                held[slot.source] = held.get(slot.source, 0) + 1
            busiest = max(held, key=lambda name: held[name])  # the first (oldest) on ties
            victim = oldest_evictable([slot for slot in pending if slot.source == busiest])
        else:
            return
        self.counters.count("handshakes_evicted")
        del self.pending[victim]
        victim.evict()

    async def handshake_as_acceptor(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, slot: PendingHandshake
    ) -> Connection:
        set_nodelay(writer)
        dialer, acceptor, nonce_dialer, share_dialer = parse_handshake(
            await self.read_handshake(reader), "hello", 4
        )
        nonce_dialer = nonce_or_reject(nonce_dialer)
        share_dialer = share_or_reject(share_dialer)
        if acceptor != self.node_id:
            raise HandshakeRejected(
                "wrong_node", f"dialled node {acceptor!r}, this is {self.node_id}"
            )
        if (
            type(dialer) is not int
            or dialer not in self.channels
            or dialer >= self.node_id
            or not self.authenticator.knows(dialer)
        ):
            raise HandshakeRejected("unknown_peer", f"node {dialer!r} may not dial {self.node_id}")
        if self.tls_acceptor is not None and node_of(
            identity(writer.get_extra_info("ssl_object"))
        ) != dialer:
            raise HandshakeRejected("tls_identity", f"node {dialer}'s hello, another's certificate")
        slot.greeted = True
        nonce_acceptor = secrets.token_bytes(NONCE_BYTES)
        private, share_acceptor = ephemeral_share()
        secret = shared_secret(private, share_dialer)
        text = transcript(dialer, self.node_id, nonce_dialer, nonce_acceptor, share_dialer,
                          share_acceptor)
        writer.write(
            handshake_frame("challenge", nonce_acceptor, share_acceptor,
                            self.authenticator.tag(dialer, text + b"acceptor"))
        )
        await writer.drain()
        (tag_dialer,) = parse_handshake(await self.read_handshake(reader), "proof", 1)
        if type(tag_dialer) is not bytes or not self.authenticator.verify(
            dialer, text + b"dialer", tag_dialer
        ):
            raise HandshakeRejected("bad_auth", f"node {dialer} failed to prove its key")
        writer.write(handshake_frame("welcome"))
        await writer.drain()
        return Connection(dialer, reader, writer, session_keys(secret, text), dialer=False)

    # -- introspection (metrics) ---------------------------------------------------------

    def queue_depths(self) -> dict[int, int]:
        return {peer: len(channel.queue) for peer, channel in self.channels.items()}

    def queue_bytes(self) -> dict[int, int]:
        return {peer: channel.queued_bytes for peer, channel in self.channels.items()}


def set_nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
