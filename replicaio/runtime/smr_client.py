"""An asyncio client library for replicated services: f+1 matching replies, signed requests.

:class:`SmrClient` talks to every replica of a cluster over its RESP port
(the ``REPLICAIO.SUBMIT`` and ``REPLICAIO.AWAIT`` commands,
``replicaio.runtime.kv.relay``) and decides as every client of the framework
does (``replicaio.smr.client.Votes``): a result once f+1 replicas (as their
connections identify them) sent the same one, a refusal likewise; one reply
for a crash-fault cluster. One :meth:`SmrClient.attempt` sends a signed
request to the replica believed to be the primary (the leader hint of the
last decision) and asks the others for their answer; a *multicast* attempt
sends it to every replica (a faulty or changed primary: backups relay it).

:class:`SmrSession` is one client: its own key (Ed25519 on a cluster whose
nodes use Ed25519, so its client id is derived from its public key; else the
keyed-hash scheme of ``hmac`` clusters), a registered session and numbered
requests, each retried with the same ``(client, seq)`` (at most once
execution) until decided or ``timeout_s`` passes::

    client = SmrClient(load_cluster_file("cluster.toml"), fast_reads=True)
    session = client.session()
    result = await session.execute(encode_command("incr", b"n", 1))
    value = await session.read(encode_command("get", b"n"))

:meth:`SmrSession.read` runs a read-only command. With ``fast_reads`` (the
read-only optimisation, Castro and Liskov, TOCS 2002, section 5.1.3; Byzantine
fault tolerant clusters only) it goes first *unordered* to every replica, which
answers at once from its current (executed, committed) state, and is accepted
on R matching answers (ceil((n + f + 1) / 2) for n >= 3f+1: 2f+1 of the
paper's 3f+1 replicas, 4 of 5 or 6 with f = 1; every replica below, MinBFT's
2f+1: ``replicaio.smr.client.fast_quorums``); on
answers that can no longer reach it, or none within
``READ_UNORDERED_TIMEOUT_S``, it runs through the log like any request, under a
new number (so that no unordered answer still on its way counts towards it).
Every write of the client then needs W matching replies, R + W >= n + f + 1
(as many as R for n >= 3f+1, the ordinary f+1 with R = n): a read's quorum and
a completed write's share f+1 replicas, one of them correct and past the
write. The guarantee holds only if *every* client that writes to what fast
readers read uses that quorum for its writes (an f+1 writer's write may be
completed at a single correct replica, and a read's quorum can miss it): give
the whole deployment ``fast_reads``, or none of it. Without
``fast_reads``, and on a crash-fault cluster, a read is ordered like a write.

The Redis gateway (``replicaio.runtime.gateway``) is this library under the
node's Redis front. Bounds: ``CONNECTIONS_PER_REPLICA_MAX`` idle connections
per replica; every wait bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Final

from replicaio.core.codec import Codec, DecodeError
from replicaio.core.errors import UsageError
from replicaio.runtime.config import Address, ClusterFile
from replicaio.runtime.counters import Counters
from replicaio.smr.api import ClientRequest, Rejected, Reply
from replicaio.smr.auth import ClientSigner, Ed25519ClientSigner, KeyedClientSigner
from replicaio.smr.client import BYZANTINE, Accepted, Refused, Votes, fast_quorums, reply_quorum

logger = logging.getLogger("replicaio.smr_client")

CONNECTIONS_PER_REPLICA_MAX: Final = 64
REPLY_LINE_BYTES_MAX: Final = 64
ANSWER_BYTES_MAX: Final = 1 << 27
ATTEMPT_TIMEOUT_S: Final = 2.5
MULTICAST_AFTER_S: Final = 1.0
# An unordered read undecided this long goes through the log: replicas answer
# it at once, so only a down or slow replica (or a split) makes it wait.
READ_UNORDERED_TIMEOUT_S: Final = 0.5
Decision = Accepted | Refused


class SmrRefused(Exception):
    """f+1 replicas refused the request (``reason``); it was not executed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SmrTimeout(Exception):
    """No decision within the session's timeout: a write's outcome is unknown."""


class ReplicaError(Exception):
    """A replica's connection failed or answered something that is not a RESP reply."""


class ReplicaConnection:
    """One RESP connection to a replica, one command at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def command(self, *argv: bytes) -> bytes | None:
        """One command; its bulk answer, or ``None`` for an error (``-TRYAGAIN``...)."""
        parts = [b"*%d\r\n" % len(argv)]
        for argument in argv:
            parts.append(b"$%d\r\n%s\r\n" % (len(argument), argument))
        self.writer.write(b"".join(parts))
        await self.writer.drain()
        line = await self.reader.readuntil(b"\r\n")
        if len(line) > REPLY_LINE_BYTES_MAX + 2 and not line.startswith(b"-"):
            raise ReplicaError("reply line too long")
        if line.startswith(b"-"):
            return None  # TRYAGAIN, or an error: no vote
        if not line.startswith(b"$"):
            raise ReplicaError(f"unexpected reply {line[:32]!r}")
        try:
            length = int(line[1:-2])
        except ValueError:
            raise ReplicaError("bad bulk length") from None
        if not 0 <= length <= ANSWER_BYTES_MAX:
            raise ReplicaError("bulk answer out of bounds")
        data = await self.reader.readexactly(length + 2)
        return data[:-2]

    def close(self) -> None:
        self.writer.close()


class ReplicaPool:
    """Connections to one replica: idle ones kept (bounded), more made on demand."""

    def __init__(self, address: Address, counters: Counters) -> None:
        self.address = address
        self.counters = counters
        self.idle: list[ReplicaConnection] = []

    async def command(self, argv: tuple[bytes, ...], timeout_s: float) -> bytes | None:
        connection = self.idle.pop() if self.idle else None
        try:
            if connection is None:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.address.host, self.address.port), timeout_s
                )
                connection = ReplicaConnection(reader, writer)
            answer = await asyncio.wait_for(connection.command(*argv), timeout_s)
        except (OSError, TimeoutError, ReplicaError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError) as error:
            self.counters.count("smr_client_replica_errors")
            logger.debug("replica %s: %s", self.address, error)
            if connection is not None:
                connection.close()
            return None
        except asyncio.CancelledError:
            # Decided without this replica's answer: its connection is mid-command
            # (an answer may still come), so it is closed, never reused or left open.
            if connection is not None:
                connection.close()
            raise
        if len(self.idle) < CONNECTIONS_PER_REPLICA_MAX:
            self.idle.append(connection)
        else:
            connection.close()
        return answer

    def close(self) -> None:
        for connection in self.idle:
            connection.close()
        self.idle.clear()


class SmrClient:
    """Signed requests to every replica of a cluster, decided by vote (module docstring)."""

    def __init__(
        self, cluster: ClusterFile, counters: Counters | None = None, *, fast_reads: bool = False
    ) -> None:
        self.cluster = cluster
        self.codec = Codec()
        self.counters = counters or Counters()
        config = cluster.cluster_config()
        self.n = config.n
        # The read-only optimisation (module docstring): unordered reads on R
        # matching answers, writes then on W, R + W >= n + f + 1.
        self.fast_reads = fast_reads and config.resilience in BYZANTINE
        quorums = fast_quorums(config.resilience, config.f, config.n)
        self.read_quorum = quorums.read
        self.quorum = (
            quorums.write if self.fast_reads
            else reply_quorum(config.resilience, config.f, config.n)
        )
        self.ed25519 = cluster.auth == "ed25519"
        self.pools = [ReplicaPool(entry.client, self.counters) for entry in cluster.nodes]
        self.primary = 0  # the leader hint of the last decision

    def new_signer(self) -> ClientSigner:
        """A fresh client identity (a new key, hence a new client id)."""
        if self.ed25519:
            return Ed25519ClientSigner(self.codec, os.urandom(32))
        return KeyedClientSigner(self.codec, int.from_bytes(os.urandom(8), "big") >> 2)

    def session(self) -> SmrSession:
        return SmrSession(self)

    async def attempt(
        self, signer: ClientSigner, request: ClientRequest, multicast: bool, timeout_s: float,
        quorum: int | None = None, group: int | None = None,
    ) -> Decision | None:
        """Send ``request`` (signed by ``signer``) once; the decision, or ``None`` if
        no answer reached the quorum (``self.quorum`` unless given) within
        ``timeout_s``, or every replica answered and none can reach it. On a
        sharded cluster, ``group`` is the group it goes to (``relay``)."""
        payload = self.codec.encode(signer.wrap(request))
        votes = Votes(request.client, request.seq, quorum or self.quorum, self.n)
        where = () if group is None else (b"%d" % group,)
        submit = (b"REPLICAIO.SUBMIT", payload, *where)
        wait = (b"REPLICAIO.AWAIT", b"%d" % request.client, b"%d" % request.seq, *where)
        primary = self.primary

        async def ask(replica: int) -> tuple[int, bytes | None]:
            argv = submit if multicast or replica == primary else wait
            return replica, await self.pools[replica].command(argv, timeout_s)

        pending = {asyncio.ensure_future(ask(replica)) for replica in range(self.n)}
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for finished in done:
                    replica, answer = finished.result()
                    decision = self.count_vote(votes, replica, answer)
                    if decision is not None:
                        return decision
                if votes.split():
                    return None  # the answers differ: no quorum any more
            return None
        finally:
            for task in pending:
                task.cancel()

    async def read_unordered(
        self, signer: ClientSigner, seq: int, command: bytes,
        timeout_s: float = READ_UNORDERED_TIMEOUT_S, group: int | None = None,
    ) -> Accepted | None:
        """The read-only optimisation's first try: the read-only ``command`` as
        ``(signer's client, seq)``, unordered, to every replica; the result once
        ``read_quorum`` of them (2f+1 of 3f+1, all of 2f+1) answered alike from their current
        state, else ``None`` (the
        caller orders it, under another number)."""
        if not self.fast_reads:
            raise UsageError("unordered reads need fast_reads, on a Byzantine fault tolerant "
                             "cluster")
        request = ClientRequest(signer.client, seq, command, True, True)
        decision = await self.attempt(signer, request, True, timeout_s, self.read_quorum,
                                      group)
        return decision if isinstance(decision, Accepted) else None

    def count_vote(self, votes: Votes, replica: int, answer: bytes | None) -> Decision | None:
        if answer is None:
            return None
        try:
            decoded = self.codec.decode(answer)
        except DecodeError:
            self.counters.count("smr_client_answer_undecodable")
            return None
        if type(decoded) is not Reply and type(decoded) is not Rejected:
            self.counters.count("smr_client_answer_unexpected")
            return None
        decision = votes.add(decoded, replica)
        if type(decoded) is Reply and 0 <= decoded.leader < self.n and decision is not None:
            self.primary = decoded.leader  # a hint only: a wrong one costs a multicast
        return decision

    def close(self) -> None:
        for pool in self.pools:
            pool.close()


class SmrSession:
    """One client of a replicated service: its key, its session, its numbered requests."""

    def __init__(self, client: SmrClient, timeout_s: float = 10.0) -> None:
        self.client = client
        self.timeout_s = timeout_s
        self.signer = client.new_signer()
        self.seq = 0
        self.registered = False

    async def execute(self, command: bytes) -> bytes:
        """Run ``command`` (at most once) and return its result, once f+1 replicas
        agree (``read_quorum`` with ``fast_reads``); :class:`SmrRefused` or
        :class:`SmrTimeout` otherwise."""
        await self.register()
        return await self.request(command)

    async def register(self) -> None:
        """Open the session (its first request, number 1, runs nothing): a
        replica refuses a later number of a client it has no session of
        (``session_expired``: its session may have been evicted)."""
        if not self.registered:
            await self.request(b"")
            self.registered = True

    async def read(self, command: bytes) -> bytes:
        """Run the read-only ``command`` and return its result: with the
        client's ``fast_reads``, unordered first (``read_quorum`` matching answers), else
        or then ordered as :meth:`execute` runs it (module docstring). A command
        that is not read-only gets the service's refusal as its result (the KV
        store's ``not_read_only``) if it went unordered: send writes with
        :meth:`execute`."""
        client = self.client
        if client.fast_reads:
            await self.register()  # numbers after the first need a session
            self.seq += 1  # unordered: this number is never executed
            client.counters.count("smr_client_reads_unordered")
            decision = await client.read_unordered(self.signer, self.seq, command)
            if decision is not None:
                return decision.result
            client.counters.count("smr_client_reads_unordered_fallbacks")
        return await self.execute(command)

    async def request(self, command: bytes) -> bytes:
        self.seq += 1
        request = ClientRequest(self.signer.client, self.seq, command, False)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        multicast = False
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise SmrTimeout(f"no decision within {self.timeout_s} s")
            wait = min(remaining, ATTEMPT_TIMEOUT_S if multicast else MULTICAST_AFTER_S)
            decision = await self.client.attempt(self.signer, request, multicast, wait)
            if isinstance(decision, Accepted):
                return decision.result
            if isinstance(decision, Refused):
                if decision.reason in ("busy", "read_timeout"):
                    await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))
                    continue
                raise SmrRefused(decision.reason)
            multicast = True
