"""The peer transport over real sockets on 127.0.0.1, in one process.

Each bad input (garbage, oversized and truncated frames, an unknown peer, a
wrong key, a forged tag, a replayed frame, a silent connection) is rejected
and counted under its reason, and the node keeps serving: after every attack
a legitimate peer still connects and its message arrives. Bounds are reached
and counted too.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from replicaio.runtime.certs import init_certs
from replicaio.runtime.config import Address, TransportParams
from replicaio.runtime.counters import Counters
from replicaio.runtime.crypto import (
    Authenticator,
    Ed25519Authenticator,
    HmacAuthenticator,
    generate_ed25519_key,
)
from replicaio.runtime.framing import frame_header
from replicaio.runtime.peer_reader import SEQUENCE
from replicaio.runtime.tls import TlsConfig
from replicaio.runtime.transport import (
    NONCE_BYTES,
    WRITE_BATCH_BYTES_MAX,
    HandshakeRejected,
    Transport,
    ephemeral_share,
    frame_tag,
    handshake_frame,
    parse_handshake,
    session_keys,
    shared_secret,
    transcript,
)
from replicaio.runtime.transport import Connection as PeerConnection

SECRET = bytes(range(32))
TIMEOUT_S = 10.0
PARAMS = TransportParams(
    reconnect_delay_ms_min=5, reconnect_delay_ms_max=50, handshake_timeout_ms=2_000
).validate()
LOCAL = "127.0.0.1"
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class QueueInbox:
    """A host's inbox as the transport sees it: takes every payload into
    ``received`` while it holds fewer than ``room`` of them (the test takes
    them out with ``receive``) and calls back the readers it refused once
    room frees."""

    def __init__(self, room: int = 1 << 30) -> None:
        self.received: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        self.room = room
        self.waiters: list[Callable[[], None]] = []

    def offer(self, peer: int, payload: bytes) -> bool:
        if self.received.qsize() >= self.room:
            return False
        self.received.put_nowait((peer, payload))
        return True

    def when_room(self, resume: Callable[[], None]) -> None:
        self.waiters.append(resume)

    async def get(self) -> tuple[int, bytes]:
        item = await self.received.get()
        waiters, self.waiters = self.waiters, []
        for resume in waiters:
            resume()
        return item


class Node:
    """A transport plus what it received."""

    def __init__(self, transport: Transport, received: QueueInbox) -> None:
        self.transport = transport
        self.received = received

    @property
    def counters(self) -> Counters:
        return self.transport.counters


async def make_node(
    node_id: int,
    peers: dict[int, int],
    *,
    authenticator: Authenticator | None = None,
    params: TransportParams = PARAMS,
    port: int = 0,
    inbox: QueueInbox | None = None,
    tls: Path | None = None,
    kind: type[Transport] = Transport,
) -> Node:
    received = QueueInbox() if inbox is None else inbox
    nodes = tuple(range(max([node_id, *peers]) + 1))
    transport = kind(
        node_id,
        Address(LOCAL, port),
        {peer: Address(LOCAL, peer_port) for peer, peer_port in peers.items()},
        authenticator or HmacAuthenticator(node_id, SECRET, nodes),
        params,
        received,
        Counters(),
        tls=None if tls is None else TlsConfig(
            ca_file=tls / "ca.pem", cert_file=tls / f"node-{node_id}.pem",
            key_file=tls / f"node-{node_id}.key"),
    )
    await transport.start()
    return Node(transport, received)


@contextlib.asynccontextmanager
async def closing(*nodes: Node) -> AsyncIterator[None]:
    """Close the nodes' transports on the way out, in this order, whatever happened."""
    try:
        yield
    finally:
        for node in nodes:
            await node.transport.close()


def rejections(node: Node) -> list[str]:
    """The ``rejected_*`` counters ``node`` has counted (a clean run has none)."""
    return [name for name in node.counters.values if name.startswith("rejected")]


async def until(condition: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        while not condition():
            await asyncio.sleep(0.005)
    del what


async def receive(node: Node) -> tuple[int, bytes]:
    async with asyncio.timeout(TIMEOUT_S):
        return await node.received.get()


def run(scenario: Callable[[], Coroutine[Any, Any, None]], loop: str = "asyncio") -> None:
    """On plain asyncio, or on uvloop (the live runtime's loop where installed)."""
    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        uvloop.run(scenario())
    else:
        asyncio.run(scenario())


LOOPS = ["asyncio", "uvloop"]


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """True once the other end closed the connection (bounded wait)."""
    try:
        async with asyncio.timeout(TIMEOUT_S):
            while await reader.read(4096):
                pass
    except (ConnectionError, TimeoutError):
        return False
    return True


async def legitimate_peer_still_gets_through(acceptor: Node, payload: bytes) -> None:
    dialer = await make_node(0, {1: acceptor.transport.port})
    async with closing(dialer):
        dialer.transport.send(1, payload)
        assert await receive(acceptor) == (0, payload)
        acceptor.transport.send(0, b"reply")
        assert await receive(dialer) == (1, b"reply")


# -- the good case ---------------------------------------------------------------------------


def ed25519_pair() -> tuple[Ed25519Authenticator, Ed25519Authenticator]:
    keys = [generate_ed25519_key() for _ in range(2)]
    publics = {node: public for node, (_, public) in enumerate(keys)}
    return (Ed25519Authenticator(0, keys[0][0], publics),
            Ed25519Authenticator(1, keys[1][0], publics))


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("kind", ["hmac", "ed25519"])
def test_messages_flow_both_ways_in_order(kind: str, loop: str) -> None:
    async def scenario() -> None:
        authenticators: tuple[Any, Any] = (None, None)
        if kind == "ed25519":
            authenticators = ed25519_pair()
        acceptor = await make_node(1, {0: 1}, authenticator=authenticators[1])
        dialer = await make_node(0, {1: acceptor.transport.port},
                                 authenticator=authenticators[0])
        async with closing(dialer, acceptor):
            for index in range(50):
                dialer.transport.send(1, b"to-1 %d" % index)
                acceptor.transport.send(0, b"to-0 %d" % index)
            for index in range(50):
                assert await receive(acceptor) == (0, b"to-1 %d" % index)
                assert await receive(dialer) == (1, b"to-0 %d" % index)
            assert acceptor.counters.get("connections_established") == 1
            assert not rejections(acceptor)

    run(scenario, loop)


class CountingTransport(Transport):
    """Records the frames of each write it makes outside its write loop (a
    subclass: compiled, a ``Transport`` is an extension type, whose methods
    cannot be replaced on an instance; its compiled ``send`` and
    ``flush_written`` call the override; ADR 0067)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writes: list[int] = []

    def write_frames(self, channel: Any, connection: Any, frames: list[bytes]) -> None:
        self.writes.append(len(frames))
        super().write_frames(channel, connection, frames)


def counting_writes(node: Node) -> list[int]:
    """The frames of each write ``node``'s transport makes outside its write loop."""
    transport = node.transport
    assert isinstance(transport, CountingTransport)
    return transport.writes


@pytest.mark.parametrize("loop", LOOPS)
def test_a_frame_to_an_idle_peer_is_written_at_once_the_rest_of_a_turn_joined(loop: str) -> None:
    """``send`` to a peer whose writer waits with nothing queued writes the frame
    before it returns (no wake-up of the write loop); the next frames of the same
    turn of the loop queue, and leave in one write at the turn's end, the write
    loop left asleep (ADR 0053); every frame arrives, in order."""

    async def scenario() -> None:
        acceptor = await make_node(1, {0: 1})
        dialer = await make_node(0, {1: acceptor.transport.port}, kind=CountingTransport)
        channel = dialer.transport.channels[1]
        writes = counting_writes(dialer)
        async with closing(dialer, acceptor):
            dialer.transport.send(1, b"hello")
            assert await receive(acceptor) == (0, b"hello")
            await until(lambda: channel.idle_writer is not None, "the writer idles")
            for round_ in range(3):
                sent = channel.frames_out
                writes.clear()
                for index in range(5):  # one turn of the loop: a batch's release
                    dialer.transport.send(1, b"%d %d" % (round_, index))
                assert channel.frames_out == sent + 1  # the first one, at once
                assert len(channel.queue) == 4  # the others wait for the turn's end
                assert not channel.wakeup.is_set()  # ... not for the write loop
                await asyncio.sleep(0)  # the turn ends
                assert writes == [1, 4] and channel.frames_out == sent + 5
                assert channel.idle_writer is not None and not channel.queue
                for index in range(5):
                    assert await receive(acceptor) == (0, b"%d %d" % (round_, index))
            assert not rejections(acceptor)

    run(scenario, loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_peer_s_frames_of_one_release_leave_in_one_write(loop: str) -> None:
    """``send_many``: the frames for a peer whose writer is idle leave in one write
    at once (a commit notice and the AppendEntries behind it: one read and one
    wake-up for the peer); frames for it later in the same turn join at the
    turn's end; every frame arrives, in order."""

    async def scenario() -> None:
        acceptor = await make_node(1, {0: 1})
        dialer = await make_node(0, {1: acceptor.transport.port}, kind=CountingTransport)
        channel = dialer.transport.channels[1]
        writes = counting_writes(dialer)
        async with closing(dialer, acceptor):
            dialer.transport.send(1, b"hello")
            assert await receive(acceptor) == (0, b"hello")
            for round_ in range(3):
                await until(lambda: channel.idle_writer is not None, "the writer idles")
                writes.clear()
                dialer.transport.send_many([(1, b"%d a" % round_), (1, b"%d b" % round_),
                                            (1, b"%d c" % round_)])
                assert writes == [3] and not channel.queue  # at once, one write
                dialer.transport.send_many([(1, b"%d d" % round_), (1, b"%d e" % round_)])
                assert writes == [3] and len(channel.queue) == 2
                await asyncio.sleep(0)  # the turn ends
                assert writes == [3, 2] and not channel.wakeup.is_set()
                for name in (b"a", b"b", b"c", b"d", b"e"):
                    assert await receive(acceptor) == (0, b"%d %s" % (round_, name))
            assert not rejections(acceptor)

    run(scenario, loop)


def test_dialler_reconnects_after_the_acceptor_restarts() -> None:
    async def scenario() -> None:
        acceptor = await make_node(1, {0: 1})
        port = acceptor.transport.port
        dialer = await make_node(0, {1: port})
        try:
            dialer.transport.send(1, b"first")
            assert await receive(acceptor) == (0, b"first")
            await acceptor.transport.close()
            await until(lambda: dialer.transport.channels[1].connection is None, "disconnect")
            acceptor = await make_node(1, {0: 1}, port=port)
            dialer.transport.send(1, b"second")
            assert await receive(acceptor) == (0, b"second")
            assert dialer.counters.get("connections_established") == 2
        finally:
            await dialer.transport.close()
            await acceptor.transport.close()

    run(scenario)


def test_a_dial_whose_socket_closes_under_the_handshake_is_retried() -> None:
    """uvloop raises RuntimeError (not ConnectionError) for a write to a transport
    the peer closed meanwhile. The dial loop counts it as a failed handshake and
    dials again; uncaught, it ended the loop and the node never reconnected."""
    failures = [1]

    class ClosedOnce(Transport):
        """Its first dial's socket closes under the handshake (a subclass: compiled,
        a ``Transport`` is an extension type, whose methods cannot be replaced;
        ADR 0067)."""

        async def handshake_as_dialer(self, peer: int, reader: asyncio.StreamReader,
                                      writer: asyncio.StreamWriter) -> PeerConnection:
            if failures[0]:
                failures[0] -= 1
                writer.close()
                raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; "
                                   "the handler is closed")
            return await super().handshake_as_dialer(peer, reader, writer)

    async def scenario() -> None:
        acceptor = await make_node(1, {0: 1})
        dialer = await make_node(0, {1: acceptor.transport.port}, kind=ClosedOnce)
        async with closing(dialer, acceptor):
            dialer.transport.send(1, b"after the failed dial")
            assert await receive(acceptor) == (0, b"after the failed dial")
            assert failures == [0]
            assert dialer.counters.get("handshake_failures") == 1

    run(scenario)


# -- bad input, each rejected and counted, and the node keeps serving ----------------------


async def attack_garbage(port: int) -> Connection:
    reader, writer = await asyncio.open_connection(LOCAL, port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # "GET " is a 1.2 GB length
    await writer.drain()
    return reader, writer


async def attack_garbage_in_a_frame(port: int) -> Connection:
    reader, writer = await asyncio.open_connection(LOCAL, port)
    body = secrets.token_bytes(100)
    writer.write(frame_header(len(body)) + body)
    await writer.drain()
    return reader, writer


async def attack_oversized_frame(port: int) -> Connection:
    reader, writer = await asyncio.open_connection(LOCAL, port)
    writer.write(frame_header(PARAMS.frame_bytes_max + 1))
    await writer.drain()
    return reader, writer


async def attack_truncated_frame(port: int) -> Connection:
    reader, writer = await asyncio.open_connection(LOCAL, port)
    writer.write(frame_header(100) + b"x" * 10)
    await writer.drain()
    writer.write_eof()
    return reader, writer


async def attack_unknown_peer(port: int) -> Connection:
    reader, writer = await asyncio.open_connection(LOCAL, port)
    writer.write(handshake_frame("hello", 7, 1, secrets.token_bytes(NONCE_BYTES),
                                 ephemeral_share()[1]))
    await writer.drain()
    return reader, writer


async def attack_low_order_share(port: int) -> Connection:
    """A hello whose X25519 share is the all-zero point: no usable session key."""
    reader, writer = await asyncio.open_connection(LOCAL, port)
    writer.write(handshake_frame("hello", 0, 1, secrets.token_bytes(NONCE_BYTES), bytes(32)))
    await writer.drain()
    return reader, writer


async def attack_frame_of_another_session(port: int) -> Connection:
    """Node 0's key, a valid handshake, then a frame MAC'd under the session key of
    an earlier connection (a recorded frame replayed into a new session)."""
    _, first_writer, earlier = await authenticated_raw(port)
    reader, writer, _ = await authenticated_raw(port)  # replaces the first connection
    first_writer.close()
    writer.write(data_frame(earlier, 1, b"recorded"))
    await writer.drain()
    return reader, writer


async def attack_wrong_key(port: int) -> Connection:
    """A dialler that claims to be node 0 but holds another cluster's secret."""
    reader, writer = await asyncio.open_connection(LOCAL, port)
    impostor = HmacAuthenticator(0, b"another cluster's secret!", (0, 1))
    nonce = secrets.token_bytes(NONCE_BYTES)
    _, share = ephemeral_share()
    writer.write(handshake_frame("hello", 0, 1, nonce, share))
    nonce_acceptor, share_acceptor, _ = parse_handshake(await read_body(reader), "challenge", 3)
    text = transcript(0, 1, nonce, nonce_acceptor, share, share_acceptor)
    writer.write(handshake_frame("proof", impostor.tag(1, text + b"dialer")))
    await writer.drain()
    return reader, writer


async def read_body(reader: asyncio.StreamReader) -> bytes:
    length = int.from_bytes(await reader.readexactly(4), "big")
    return await reader.readexactly(length)


async def authenticated_raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A man in the middle with node 0's key: the handshake passes; returns the
    session key of frames from the dialler."""
    reader, writer = await asyncio.open_connection(LOCAL, port)
    key = HmacAuthenticator(0, SECRET, (0, 1))
    nonce = secrets.token_bytes(NONCE_BYTES)
    private, share = ephemeral_share()
    writer.write(handshake_frame("hello", 0, 1, nonce, share))
    nonce_acceptor, share_acceptor, _ = parse_handshake(await read_body(reader), "challenge", 3)
    text = transcript(0, 1, nonce, nonce_acceptor, share, share_acceptor)
    writer.write(handshake_frame("proof", key.tag(1, text + b"dialer")))
    parse_handshake(await read_body(reader), "welcome", 0)
    from_dialer, _ = session_keys(shared_secret(private, share_acceptor), text)
    return reader, writer, from_dialer


def data_frame(session_key: bytes, seq: int, payload: bytes, *, forge: bool = False) -> bytes:
    head = SEQUENCE.pack(seq)
    tag = frame_tag(session_key, head, payload)
    if forge:
        tag = bytes([tag[0] ^ 1]) + tag[1:]
    body = head + payload + tag
    return frame_header(len(body)) + body


async def attack_bad_mac(port: int) -> Connection:
    reader, writer, session = await authenticated_raw(port)
    writer.write(data_frame(session, 1, b"forged", forge=True))
    await writer.drain()
    return reader, writer


async def attack_replayed_frame(port: int) -> Connection:
    reader, writer, session = await authenticated_raw(port)
    frame = data_frame(session, 1, b"once")
    writer.write(frame + frame)  # the second copy replays sequence number 1
    await writer.drain()
    return reader, writer


ATTACKS: dict[str, tuple[Callable[[int], Awaitable[Connection]], str]] = {
    "garbage bytes": (attack_garbage, "rejected_oversized_frame"),
    "garbage in a frame": (attack_garbage_in_a_frame, "rejected_bad_handshake"),
    "oversized frame": (attack_oversized_frame, "rejected_oversized_frame"),
    "truncated frame": (attack_truncated_frame, "rejected_truncated_frame"),
    "unknown peer": (attack_unknown_peer, "rejected_unknown_peer"),
    "wrong key": (attack_wrong_key, "rejected_bad_auth"),
    "forged tag": (attack_bad_mac, "rejected_bad_mac"),
    "low-order key share": (attack_low_order_share, "rejected_bad_handshake"),
    "frame of another session": (attack_frame_of_another_session, "rejected_bad_mac"),
    "replayed frame": (attack_replayed_frame, "rejected_replayed_frame"),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_bad_input_is_rejected_counted_and_the_node_keeps_serving(name: str) -> None:
    attack, counter = ATTACKS[name]

    async def scenario() -> None:
        acceptor = await make_node(1, {0: 1})
        async with closing(acceptor):
            reader, writer = await attack(acceptor.transport.port)
            await until(lambda: acceptor.counters.get(counter) == 1, counter)
            assert await closed_by_peer(reader)
            if name == "replayed frame":  # the first copy was genuine and got through
                assert await receive(acceptor) == (0, b"once")
            assert acceptor.received.received.empty()
            await legitimate_peer_still_gets_through(acceptor, b"still serving")
            assert acceptor.counters.get(counter) == 1
            writer.close()

    run(scenario)


def test_one_connection_per_pair_a_newer_one_replaces_the_old() -> None:
    async def scenario() -> None:
        acceptor = await make_node(1, {0: 1})
        async with closing(acceptor):
            # Node 0's old connection (say, before it restarted) is still open...
            old_reader, old_writer, _ = await authenticated_raw(acceptor.transport.port)
            await until(lambda: acceptor.transport.channels[0].connection is not None, "old")
            # ...when the restarted node 0 dials again: the new connection wins.
            await legitimate_peer_still_gets_through(acceptor, b"new connection")
            assert acceptor.counters.get("connections_replaced") == 1
            assert await closed_by_peer(old_reader)
            old_writer.close()

    run(scenario)


def test_a_node_with_the_wrong_key_cannot_connect_and_counts_why() -> None:
    async def scenario() -> None:
        acceptor = await make_node(1, {0: 1})
        impostor = await make_node(
            0, {1: acceptor.transport.port},
            authenticator=HmacAuthenticator(0, b"not the cluster secret", (0, 1)),
        )
        async with closing(impostor, acceptor):
            impostor.transport.send(1, b"let me in")
            # The impostor checks the acceptor's proof first, and fails it.
            await until(lambda: impostor.counters.get("rejected_bad_auth") >= 2, "retries")
            assert acceptor.received.received.empty()
            assert acceptor.counters.get("connections_established") == 0

    run(scenario)


def test_a_higher_id_may_not_dial_a_lower_one() -> None:
    async def scenario() -> None:
        acceptor = await make_node(1, {0: 1, 2: 1})
        async with closing(acceptor):
            reader, writer = await asyncio.open_connection(LOCAL, acceptor.transport.port)
            writer.write(handshake_frame("hello", 2, 1, secrets.token_bytes(NONCE_BYTES),
                                         ephemeral_share()[1]))
            await until(lambda: acceptor.counters.get("rejected_unknown_peer") == 1, "reject")
            assert await closed_by_peer(reader)

    run(scenario)


def test_a_silent_connection_times_out_and_pending_handshakes_are_bounded() -> None:
    params = replace(PARAMS, handshake_timeout_ms=300, handshakes_pending_max=2)

    async def scenario() -> None:
        acceptor = await make_node(1, {0: 1}, params=params)
        async with closing(acceptor):
            port = acceptor.transport.port
            silent = [await asyncio.open_connection(LOCAL, port) for _ in range(3)]
            await until(
                lambda: acceptor.counters.get("bound_handshakes_pending_max") == 1, "bound"
            )
            await until(
                lambda: acceptor.counters.get("rejected_handshake_timeout") == 2, "timeouts"
            )
            for reader, _ in silent:
                assert await closed_by_peer(reader)
            await legitimate_peer_still_gets_through(acceptor, b"after the silence")

    run(scenario)


def test_silent_connections_that_fill_every_slot_cannot_keep_a_peer_out() -> None:
    """An attacker keeps every handshake slot full of silent connections (opening a
    new one whenever one is closed) and the deadline is long: a peer still gets in
    at once, because a new connection evicts the oldest that sent nothing."""
    params = replace(PARAMS, handshake_timeout_ms=60_000, handshakes_pending_max=8,
                     handshakes_per_source_max=8)

    async def scenario() -> None:
        acceptor = await make_node(1, {0: 1}, params=params)
        port = acceptor.transport.port
        silent: list[Connection] = []
        stop = asyncio.Event()

        async def attack() -> None:
            while not stop.is_set():
                if len(acceptor.transport.pending) < 8:
                    silent.append(await asyncio.open_connection(LOCAL, port))
                await asyncio.sleep(0.001)

        attacker = asyncio.get_running_loop().create_task(attack())
        try:
            await until(lambda: len(acceptor.transport.pending) == 8, "full slots")
            started = time.monotonic()
            await legitimate_peer_still_gets_through(acceptor, b"through the crowd")
            assert time.monotonic() - started < 3.0
            assert acceptor.counters.get("handshakes_evicted") >= 1
            assert acceptor.counters.get("bound_handshakes_per_source_max") >= 1
            assert await closed_by_peer(silent[0][0])  # the oldest went first
        finally:
            stop.set()
            await attacker
            for _, writer in silent:
                writer.close()
            await acceptor.transport.close()

    run(scenario)


def test_one_source_holds_at_most_its_share_and_the_busiest_source_yields() -> None:
    """Sources are told apart by address (127.0.0.0/8 is all loopback on Linux)."""
    params = replace(PARAMS, handshake_timeout_ms=60_000, handshakes_pending_max=8,
                     handshakes_per_source_max=3)

    async def scenario() -> None:
        acceptor = await make_node(1, {0: 1}, params=params)
        port = acceptor.transport.port

        async def open_from(address: str) -> Connection:
            return await asyncio.open_connection(LOCAL, port, local_addr=(address, 0))

        def held() -> dict[str, int]:
            counts: dict[str, int] = {}
            for slot in acceptor.transport.pending:
                counts[slot.source] = counts.get(slot.source, 0) + 1
            return counts

        async with closing(acceptor):
            first = [await open_from("127.0.0.2") for _ in range(4)]
            await until(lambda: acceptor.counters.get("handshakes_evicted") == 1, "eviction")
            assert acceptor.counters.get("bound_handshakes_per_source_max") == 1
            assert await closed_by_peer(first[0][0])
            others = [await open_from(f"127.0.0.{host}") for host in (3, 3, 3, 4, 4)]
            await until(lambda: held() == {"127.0.0.2": 3, "127.0.0.3": 3, "127.0.0.4": 2},
                        "slots")
            late = await open_from("127.0.0.5")  # all 8 taken: the busiest, oldest, goes
            await until(lambda: held() == {"127.0.0.2": 2, "127.0.0.3": 3, "127.0.0.4": 2,
                                           "127.0.0.5": 1}, "eviction from the busiest")
            assert acceptor.counters.get("bound_handshakes_pending_max") == 1
            assert await closed_by_peer(first[1][0])
            for _, writer in [*first, *others, late]:
                writer.close()

    run(scenario)


def test_outbound_queue_bound_drops_the_oldest_and_counts() -> None:
    params = replace(PARAMS, outbound_queue_max=4)

    async def scenario() -> None:
        unreachable = 1  # nothing listens on port 1 of 127.0.0.1
        dialer = await make_node(0, {1: unreachable}, params=params)
        async with closing(dialer):
            for index in range(10):
                dialer.transport.send(1, b"m%d" % index)
            channel = dialer.transport.channels[1]
            assert list(channel.queue) == [b"m6", b"m7", b"m8", b"m9"]
            assert channel.dropped == 6
            assert dialer.counters.get("bound_outbound_queue_max") == 6
            await until(lambda: dialer.counters.get("connect_failures") >= 2, "retries")

    run(scenario)


def test_outbound_queue_to_a_peer_that_stopped_reading_is_bounded_in_bytes() -> None:
    """A peer that stops reading (its host's inbox full: its reader pauses) while
    256 KiB frames (snapshot chunks, large values) keep coming: the queue holds
    at most ``outbound_queue_bytes_max`` bytes, dropping the oldest, and the
    writer holds at most one write batch beyond it."""
    chunk = 256 * 1024
    bound = 2 << 20
    params = replace(PARAMS, frame_bytes_max=chunk + 1024, outbound_queue_bytes_max=bound)

    async def scenario() -> None:
        inbox = QueueInbox(room=1)
        acceptor = await make_node(1, {0: 1}, params=params, inbox=inbox)
        dialer = await make_node(0, {1: acceptor.transport.port}, params=params)
        channel = dialer.transport.channels[1]
        async with closing(dialer, acceptor):
            dialer.transport.send(1, b"first")
            await until(lambda: inbox.received.qsize() == 1, "the first frame")
            held = 0
            for index in range(400):  # 100 MiB, far beyond what the sockets buffer
                dialer.transport.send(1, index.to_bytes(4, "big") + bytes(chunk - 4))
                assert channel.queued_bytes == sum(len(item) for item in channel.queue)
                assert channel.queued_bytes <= bound
                if index % 16 == 0:
                    await asyncio.sleep(0.001)  # the writer drains what the socket takes
                connection = channel.connection
                assert connection is not None
                buffered = connection.writer.transport.get_write_buffer_size()
                held = max(held, buffered)
            assert dialer.counters.get("bound_outbound_queue_bytes_max") > 300
            assert channel.dropped == dialer.counters.get("bound_outbound_queue_bytes_max")
            # Beyond the queue: at most one write batch (1 MiB of payload and its
            # frames' overhead) waits in the writer's buffer.
            assert held <= WRITE_BATCH_BYTES_MAX + chunk + 1024, held
            # The peer reads again: the newest frames arrive, in order.
            received = [(await receive(acceptor))[1]]
            last = (399).to_bytes(4, "big")
            while received[-1][:4] != last:
                received.append((await receive(acceptor))[1])
            numbers = [int.from_bytes(item[:4], "big") for item in received[1:]]
            assert numbers == sorted(numbers) and len(numbers) < 400

    run(scenario)


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
@pytest.mark.parametrize("loop", LOOPS)
def test_a_flooding_peer_is_paused_not_buffered(loop: str, tls: bool, tmp_path: Path) -> None:
    """A peer that sends far more than the inbox takes: the reader delivers until
    the inbox refuses, then holds that one payload and pauses reading; what it
    buffers stays within one read and one frame, the rest waits in the sockets
    and the sender's bounded queue. Once the inbox has room again it reads on:
    every frame that left the sender arrives, in order. Over TCP and mutual
    TLS, on asyncio and uvloop."""
    certificates = None
    if tls:
        init_certs(tmp_path, 2)
        certificates = tmp_path
    room = 8
    frame = 1024
    params = replace(PARAMS, outbound_queue_max=2048)

    async def scenario() -> None:
        inbox = QueueInbox(room=room)
        acceptor = await make_node(1, {0: 1}, params=params, inbox=inbox, tls=certificates)
        dialer = await make_node(0, {1: acceptor.transport.port}, params=params,
                                 tls=certificates)
        channel = dialer.transport.channels[1]
        async with closing(dialer, acceptor):
            for index in range(20_000):  # 20 MiB
                dialer.transport.send(1, index.to_bytes(4, "big") + bytes(frame - 4))
                if index % 64 == 0:
                    await asyncio.sleep(0)
            await until(lambda: dialer.counters.get("bound_outbound_queue_max") > 0,
                        "the sender's queue to reach its bound")
            connection = acceptor.transport.channels[0].connection
            assert connection is not None and connection.protocol is not None
            reader = connection.protocol
            await until(lambda: reader.held is not None, "the inbox to refuse a payload")
            await asyncio.sleep(0.05)  # the loop runs on: nothing more is read
            assert inbox.received.qsize() == room
            assert reader.paused and not reader.reading
            assert len(reader.buffer) <= (1 << 18) + frame + 64, len(reader.buffer)
            assert not connection.writer.transport.is_closing()
            frames_in = acceptor.transport.channels[0].frames_in
            await asyncio.sleep(0.05)
            assert acceptor.transport.channels[0].frames_in == frames_in  # paused
            # Room again: it reads on, every frame in order, to the last one sent.
            numbers: list[int] = []
            while not numbers or numbers[-1] != 19_999:
                numbers.append(int.from_bytes((await receive(acceptor))[1][:4], "big"))
            assert numbers == sorted(numbers)
            assert numbers[: room] == list(range(room))
            dropped = channel.dropped
            assert len(numbers) == 20_000 - dropped
            assert not rejections(acceptor)

    run(scenario, loop)


def test_an_outbound_message_larger_than_a_frame_is_refused_locally() -> None:
    async def scenario() -> None:
        dialer = await make_node(0, {1: 1})
        async with closing(dialer):
            dialer.transport.send(1, bytes(PARAMS.frame_bytes_max))
            assert dialer.counters.get("rejected_outbound_oversized") == 1
            assert not dialer.transport.channels[1].queue

    run(scenario)


def test_handshake_parser_refuses_what_is_not_a_handshake() -> None:
    import msgpack

    for body, reason in [
        (b"\xc1", "bad_handshake"),
        (msgpack.packb(["replicaio", 1, "hello", 0, 1, b""]), "bad_version"),
        (msgpack.packb(["replicaio", 3, "hello", 0, 1, b""]), "bad_version"),
        (msgpack.packb(["other", 2, "hello"]), "bad_handshake"),
        (msgpack.packb(["replicaio", 2, "proof"]), "bad_handshake"),
        (msgpack.packb({"a": 1}), "bad_handshake"),
    ]:
        with pytest.raises(HandshakeRejected) as caught:
            parse_handshake(body, "proof", 1)
        assert caught.value.reason == reason


def test_frames_read_with_the_handshake_s_last_bytes_are_delivered_after_take_over() -> None:
    """The handshake reads with a ``StreamReader``, which may already hold the
    first frames (and the end of the stream) when the ``PeerReader`` takes the
    connection over: they are delivered first, in order, then the end. The
    reader takes them from the stream's private fields; a Python that keeps
    them elsewhere must fail this test, not lose the frames."""
    from replicaio.runtime.framing import FrameMac
    from replicaio.runtime.peer_reader import PeerReader

    key = secrets.token_bytes(32)
    mac = FrameMac(key)

    def frame(seq: int, payload: bytes) -> bytes:
        body = SEQUENCE.pack(seq) + payload
        body += mac.tag(body)
        return frame_header(len(body)) + body

    class Inbox:
        def __init__(self) -> None:
            self.taken: list[tuple[int, bytes]] = []

        def offer(self, peer: int, payload: bytes) -> bool:
            self.taken.append((peer, payload))
            return True

        def when_room(self, resume: Callable[[], None]) -> None:
            raise AssertionError("the inbox is never full here")

    class Traffic:
        frames_in = 0
        bytes_in = 0

    async def scenario() -> tuple[list[tuple[int, bytes]], str]:
        import socket

        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours)
        theirs.sendall(b"HELLO" + frame(1, b"first") + frame(2, b"second") + frame(3, b"th"))
        theirs.close()  # the end of the stream, too, before the take-over
        assert await reader.readexactly(5) == b"HELLO"  # the handshake
        buffered: Any = reader
        for _ in range(500):  # every byte and the end buffered (bounded wait)
            if buffered._eof:
                break
            await asyncio.sleep(0.01)
        assert buffered._eof and len(buffered._buffer) > 0
        inbox = Inbox()
        errors: list[Any] = []
        protocol = PeerReader(7, key, inbox, Traffic(), 1 << 20, errors.append)
        protocol.take_over(writer.transport, reader)  # type: ignore[arg-type]
        reason = await asyncio.wait_for(protocol.done, 5)
        writer.close()
        assert not errors
        return inbox.taken, reason

    taken, reason = asyncio.run(scenario())
    assert taken == [(7, b"first"), (7, b"second"), (7, b"th")]
    assert reason == "closed"
