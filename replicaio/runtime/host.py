"""The live node host: one node's deterministic core on asyncio, TCP and disk.

The host owns the world around one :class:`~replicaio.core.node.Node`: its
:class:`~replicaio.storage.file.FileStorage`, the peer :class:`Transport`,
the client service, timers and metrics. It feeds the core inputs and
executes the effects in the order ``replicaio.core.effects`` documents.

Batching and group commit. Inputs (peer messages, client requests, timer
expiries) wait in one inbox. The batch loop takes every input that is ready
(at most ``batch_inputs_max``) and steps the core once per input, in arrival
order. Each step's writes go to the store at once (buffered, not yet
durable); its sends, timers and outputs are held back. After the last step
of the batch the host calls ``FileStorage.sync()`` ONCE (in a worker thread,
so sockets keep being read meanwhile) and only when it returns releases, in
step order: the sends to the transport, the timers (cancellations were
applied at once, they have no outside effect), the outputs to the client
service, and the request completions. So every message and output leaves
after every write of its own step and of all earlier steps is durable: the
documented order, with one fsync per batch however many steps it holds.

Two kinds of effects leave before the sync, because they depend on no write
that is not durable yet (ADR 0021): the sends a step marks
``sends_before_sync`` (a Raft leader's AppendEntries, thesis 10.2.1), and
everything (sends, outputs, completions) of the steps that come before the
batch's first writing step: every earlier batch was synced before it was
released. Peer messages and timers are stepped before client requests in a
batch, so that prefix holds the acknowledgements, commits and replies that
new requests would otherwise hold back behind their fsync. Timers are armed
only after the sync (a timer of delay 0 tells the core its writes are durable).

Pipelined (``[host] pipeline`` = N > 1, fsync on; ADR 0037): the batch's
writes are sealed (``FileStorage.seal``) and handed to two disk threads
(``replicaio.runtime.durability``: the log's write and flush in batch order,
then the superblock mark of the latest flushed batch), and the loop steps the
next batch at once unless N batches are unreleased. Batches are released
strictly in order, each once durable, with their timers armed then. Early:
``sends_before_sync`` sends at once (they depend on no unsynced write, of any
batch); the clean prefix only if no earlier batch is unreleased, since it may
depend on that batch's writes. ``pipeline = 1`` is the code path above.

Choice points are resolved by the production default, the first alternative,
and recorded. With an event log, every step is written as the simulator
writes it (``replicaio.trace.eventlog``): ``replicaio replay FILE --node I``
re-executes a live node exactly like a simulated one. The log is flushed to
the OS before the batch is released, so whatever left the node is in it.

Timers: one ``loop.call_later`` per armed timer id; expiry puts
``(timer, id, token)`` in the inbox, and a token that no longer matches (the
timer was cancelled or re-armed meanwhile) is dropped and counted
``timers_stale`` instead of reaching the core.

The inbox is a deque and one future the batch loop waits on only when the
inbox is empty (an input put into a non-empty inbox wakes nothing); room is
counted by hand rather than with a semaphore. Peer payloads come in
synchronously from the transport's readers (:meth:`NodeHost.offer`), client
requests through :meth:`NodeHost.submit` (awaits room) or
:meth:`NodeHost.try_submit` (``False`` when full).

Bounds: ``inbox_max`` inputs from peers and clients wait at most (beyond it a
peer's reader pauses reading and a client's ``submit`` waits, counted
``bound_inbox_max``: TCP backpressure; they are served in arrival order as
room frees),
``batch_inputs_max`` per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import importlib
import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any, TypeVar

from replicaio.assembly import protocol_factory, recovers_lost_state
from replicaio.core.codec import FRAME_BYTES_MAX_DEFAULT, Codec
from replicaio.core.effects import (
    CLOCK_CHOICE,
    NOTICE_ADVICE,
    NOTICE_TYPES,
    OPERATOR_EVENTS,
    Input,
    Receive,
    Request,
    TimerFired,
)
from replicaio.core.node import Node
from replicaio.runtime import hoptrace
from replicaio.runtime.client import ClientService, OnDone, service_factory
from replicaio.runtime.config import Address, ClusterFile
from replicaio.runtime.counters import Counters
from replicaio.runtime.durability import DurabilityPipeline
from replicaio.runtime.logs import FIELDS, log, monotonic_us, wall_minus_monotonic_us
from replicaio.runtime.metrics import NodeMetrics
from replicaio.runtime.tls import TlsAcceptor
from replicaio.runtime.transport import Transport
from replicaio.storage.base import after_start, start_input
from replicaio.storage.file import FileStorage
from replicaio.trace.eventlog import Choice, EventLogWriter, encode_effects, encode_input

RECEIVE, TIMER, REQUEST, STOP = range(4)
T = TypeVar("T")
# A live Byzantine node's behaviour: (destination, honest message) -> what leaves.
Outgoing = Callable[[int, Any], "list[tuple[int, Any]]"]

logger = logging.getLogger("replicaio.host")



@dataclasses.dataclass(slots=True)
class LiveView:
    """What a live Byzantine behaviour may use of its own node (see
    ``Host.attach_live_view``): the simulator's ``RunView`` offers the same
    two fields."""

    cores: list[Node | None]
    trusted_write: Callable[[int, str, bytes], None]

class SyncWorker:
    """The thread that runs a host's batch syncs (with fsync on), one at a time.

    Cheaper than ``asyncio.to_thread`` per batch (no executor work item, no
    chained futures, no context copy): the loop puts the job on a queue and
    awaits a plain future, which the thread settles through
    ``call_soon_threadsafe``. The host has at most one sync in flight."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.jobs: queue.SimpleQueue[tuple[Callable[[], None], asyncio.Future[None]] | None] = (
            queue.SimpleQueue())
        self.thread = threading.Thread(target=self.run, name="replicaio-sync", daemon=True)
        self.thread.start()

    def run(self) -> None:
        jobs, loop = self.jobs, self.loop
        while True:
            job = jobs.get()
            if job is None:
                return
            function, future = job
            try:
                function()
            except BaseException as error:  # handed to the awaiting batch loop
                loop.call_soon_threadsafe(fail, future, error)
            else:
                loop.call_soon_threadsafe(succeed, future)

    def submit(self, function: Callable[[], None]) -> asyncio.Future[None]:
        future = self.loop.create_future()
        self.jobs.put((function, future))
        return future

    def close(self) -> None:
        """Let the thread finish its job (if any) and end."""
        self.jobs.put(None)
        self.thread.join(5.0)


class Flight:
    """A stepped batch of a pipelined host, not yet released (ADR 0037): what it
    holds back until it is durable and every earlier batch was released. (A
    plain class: a dataclass's ``__init__`` is generated source, interpreted
    even where this module is compiled, and one is made per batch.)"""

    # host.pxd's declarations, in their order (ADR 0067).
    __slots__ = ("sends", "outputs", "completions", "clean", "timers", "wrote", "inputs",  # noqa: RUF023
                 "batch", "durable", "sealed_at")

    def __init__(
        self, sends: list[tuple[int, bytes]], outputs: list[Any],
        completions: list[tuple[int, OnDone, str | None]], clean: tuple[int, int, int],
        timers: dict[int, int], wrote: bool, inputs: int,
    ) -> None:
        self.sends = sends
        self.outputs = outputs
        self.completions = completions
        self.clean = clean  # what of the above left already (the clean prefix)
        self.timers = timers  # timer id -> delay, armed at the release
        self.wrote = wrote
        self.inputs = inputs
        self.batch = 0  # the storage batch it waits for (0: none)
        self.durable = False
        self.sealed_at = 0.0


class DueNow:
    """The handle of a timer of delay 0, put in the inbox as it is armed:
    cancelling it does nothing (its token no longer matching drops it)."""

    __slots__ = ()

    def cancel(self) -> None:
        pass


DUE_NOW = DueNow()


def succeed(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def fail(future: asyncio.Future[None], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class ListenError(OSError):
    """One of the node's ports cannot be listened on (in use, or not an address of
    this host): says which port, and why."""

    def __init__(self, what: str, address: Address, error: OSError) -> None:
        super().__init__(error.errno, error.strerror)
        self.message = f"cannot listen on the {what} port {address}: {error.strerror or error}"

    def __str__(self) -> str:
        return self.message


async def listening(what: str, address: Address, start: Awaitable[T]) -> T:
    """``await start``, with an :class:`OSError` said as a :class:`ListenError`."""
    try:
        return await start
    except OSError as error:
        raise ListenError(what, address, error) from error


def output_fields(output: Any) -> dict[str, Any]:
    """The fields of an output message, for a log line."""
    names = getattr(type(output), "__struct_fields__", None)
    if names is None:
        names = [field.name for field in dataclasses.fields(output)]
    return {name: getattr(output, name) for name in names}


class NodeHost:
    """Runs node ``node_id`` of ``cluster``; see the module docstring."""

    # host.pxd's declarations, in their order: compiled, an extension type with
    # no instance dict (ADR 0067); a subclass (a test's, a bench's) has a dict of
    # its own and may override any method, ``cpdef`` ones included.
    __slots__ = (  # noqa: RUF023
        "cluster", "outgoing", "rewrite_output", "entry", "node_id", "params",
        "frame_bytes_max", "codec", "counters", "event_log_path", "event_log",
        "event_log_file", "storage", "core", "trusted_wrote", "transport", "service",
        "metrics", "metrics_server", "inbox", "inbox_room", "room_waiters", "batch_waiter",
        "sync_worker", "pipeline", "flights", "release_waiter", "failure", "choices",
        "random", "timer_tokens", "timer_handles", "timers_to_arm", "deferred_sends",
        "token", "started_us", "stats", "ready", "stopping", "hops", "loop",
    )

    # The disk threads of a pipelined host (a test swaps in a broken one:
    # ``replicaio.testing.host_variants``, on a subclass or its instance).
    # (Unannotated: compiled, a class attribute of an extension type; mypy infers
    # ``type[DurabilityPipeline]``.)
    durability_pipeline = DurabilityPipeline

    def __init__(
        self,
        cluster: ClusterFile,
        node_id: int,
        *,
        event_log: str | Path | None = None,
        outgoing: Outgoing | None = None,
    ) -> None:
        self.cluster = cluster
        # A live Byzantine replica (tests, demos): what actually leaves for whom
        # instead of each honest message (``replicaio node --byzantine``).
        self.outgoing = outgoing
        # ... and what it tells clients (a behaviour's ``rewrite_output``, when
        # ``outgoing`` is a behaviour's ``rewrite``; replicaio.sim.adversary).
        behaviour = getattr(outgoing, "__self__", None)
        self.rewrite_output: Callable[[Any], Any] | None = getattr(
            behaviour, "rewrite_output", None
        )
        self.entry = cluster.node(node_id)
        self.node_id = node_id
        self.params = cluster.host
        # One codec frame per peer frame (less its header and tag): larger than
        # the codec's default where the protocol's values= asks for it.
        self.frame_bytes_max = max(FRAME_BYTES_MAX_DEFAULT,
                                   cluster.transport.frame_bytes_max - 1024)
        self.codec = Codec(frame_bytes_max=self.frame_bytes_max)
        self.counters = Counters()
        self.event_log_path = Path(event_log) if event_log is not None else None
        self.event_log: EventLogWriter | None = None
        self.event_log_file: IO[bytes] | None = None
        self.storage: FileStorage | None = None
        self.core: Node | None = None
        self.trusted_wrote = False  # a live Byzantine behaviour wrote its USIG state
        self.transport: Transport | None = None
        self.service: ClientService | None = None
        self.metrics = NodeMetrics(self)
        self.metrics_server: asyncio.Server | None = None
        # The inbox (module docstring): inputs, the room left for peers' and
        # clients' inputs, who waits for room (a client's future, a paused peer
        # reader's resume) and the batch loop's waiter while it is empty.
        self.inbox: deque[tuple[Any, ...]] = deque()
        self.inbox_room = self.params.inbox_max
        self.room_waiters: deque[asyncio.Future[None] | Callable[[], None]] = deque()
        self.batch_waiter: asyncio.Future[None] | None = None
        self.sync_worker: SyncWorker | None = None
        # The pipelined host (``[host] pipeline`` > 1, fsync on; ADR 0037): batches
        # stepped and not yet released, oldest first, and the threads that make
        # them durable; the batch loop's waiter while it waits for a release.
        self.pipeline: DurabilityPipeline | None = None
        self.flights: deque[Flight] = deque()
        self.release_waiter: asyncio.Future[None] | None = None
        self.failure: BaseException | None = None
        self.choices: list[Choice] = []
        self.random = random.SystemRandom()
        self.timer_tokens: dict[int, int] = {}
        self.timer_handles: dict[int, asyncio.TimerHandle | DueNow] = {}
        self.timers_to_arm: dict[int, int] = {}
        # A batch's sends released after its replies (``replies_first``), until the
        # next turn of the loop or the next release of sends, whichever comes first.
        self.deferred_sends: list[tuple[int, bytes]] = []
        self.token = 0
        self.started_us = monotonic_us()
        self.stats = {"steps": 0, "batches": 0, "syncs": 0, "outputs": 0, "messages_out": 0,
                      "messages_in": 0}
        self.ready = asyncio.Event()
        self.stopping = False
        # Opt-in hop stamps (REPLICAIO_HOP_TRACE; replicaio.runtime.hoptrace), else None.
        self.hops = hoptrace.from_environment(node_id)
        # The loop, taken once at start: ``asyncio.get_running_loop`` checks the
        # process id (a system call) each time it is asked (ADR 0053).
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self, on_ready: Callable[[NodeHost], None] | None = None) -> None:
        """Start, serve until :meth:`stop`, then shut down cleanly."""
        try:
            await self.start()
            if on_ready is not None:
                on_ready(self)
            await self.batch_loop()
        except Exception:
            # A bug (a failed assertion in the core) or a failed sync: stop loudly.
            logger.exception("node failed", extra={FIELDS: {"steps": self.stats["steps"]}})
            raise
        finally:
            await self.shutdown()

    async def start(self) -> None:
        cluster = self.cluster
        self.loop = loop = asyncio.get_running_loop()
        # A log damaged in its middle is cut back to its intact prefix (reported, and
        # recovered from the peers) if the protocol can do that and the cluster
        # tolerates a node that does not count until then; else it is refused.
        repair = cluster.f >= 1 and recovers_lost_state(cluster.protocol)
        self.storage = FileStorage(
            self.entry.data_dir, fsync=self.params.fsync, repair=repair,
            preallocate_bytes=self.params.preallocate_bytes,
            mark_syncs=self.params.mark_syncs, marks_in_log=self.params.marks_in_log,
            wal_bytes_compact_threshold=self.params.wal_compact_bytes,
        )
        if self.params.fsync:
            self.sync_worker = SyncWorker(loop)
            if self.params.pipeline > 1:
                self.pipeline = self.durability_pipeline(
                    loop, self.storage, mark=self.params.mark_syncs,
                    on_durable=self.durable_upto, on_error=self.pipeline_failed,
                    mark_inline=self.params.mark_inline,
                )
        if self.hops is not None:
            self.hops.trace_storage(self.storage)
            self.hops.trace_gc()
        config = cluster.cluster_config()
        factory = protocol_factory(cluster.protocol)
        # A live Byzantine node whose behaviour acts from inside the node (a
        # transaction driver that lies or alters, ``Strategy.core_factory``) is
        # built from the behaviour's factory; its event log then replays only
        # with that behaviour (tests and demos).
        behaviour = getattr(self.outgoing, "__self__", None)
        core_factory = getattr(behaviour, "core_factory", None)
        if callable(core_factory):
            factory = core_factory(factory)
        self.core = Node(
            self.node_id,
            config,
            factory,
            choose=self.choose,
            params=cluster.node_params,
            codec=Codec(frame_bytes_max=self.frame_bytes_max),
            signer=cluster.signer(self.node_id),
            usig_scheme=cluster.usig_scheme(self.node_id),
            usig_admission=cluster.usig_admission(self.node_id),
        )
        self.attach_live_view()
        if self.event_log_path is not None:
            self.open_event_log()
        peers = {entry.id: entry.peer for entry in cluster.nodes if entry.id != self.node_id}
        tls = cluster.tls_config(self.node_id)
        self.transport = Transport(
            self.node_id,
            self.entry.peer,
            peers,
            cluster.authenticator(self.node_id),
            cluster.transport,
            self,
            self.counters,
            tls=tls if tls is not None and tls.peer else None,
        )
        self.transport.hops = self.hops
        await listening("peer", self.entry.peer, self.transport.start())
        # The service listens first so that it sees the outputs of the start
        # (re-announced deliveries); requests wait in the inbox until it is done.
        service = service_factory(self.params.client_service)()
        if tls is not None and tls.client:
            service.tls = TlsAcceptor(tls, self.counters, nodes_only=False)
        await listening(f"client ({self.params.client_service})", self.entry.client,
                        service.start(self, self.entry.client, self.params))
        self.service = service
        if self.entry.metrics is not None:  # before the start: a busy port stops it early
            self.metrics_server = await listening(
                "metrics", self.entry.metrics, self.metrics.serve(self.entry.metrics)
            )
        await self.start_core(self.storage)
        self.ready.set()
        log(logger, logging.INFO, "node started", protocol=cluster.protocol, n=cluster.n,
            f=cluster.f, incarnation=self.core.incarnation, peer=str(self.entry.peer),
            client=str(self.entry.client), metrics=str(self.entry.metrics),
            data_dir=str(self.entry.data_dir), auth=cluster.auth,
            tls=("off" if tls is None else
                 "+".join(name for name in ("peer", "client") if getattr(tls, name)) or "off"))

    async def start_core(self, storage: FileStorage) -> None:
        """Step ``Start``. Damage the storage found is logged and handed to the
        core; once the core's reaction is durable (the start batch synced), the
        new incarnation is made the storage's epoch and the damage cleared, both
        before any message of the incarnation leaves."""
        damage = storage.damage
        if damage is not None:
            log(logger, logging.WARNING, "storage lost writes it may have acknowledged; "
                "this node recovers them from its peers before it votes or counts",
                kind=damage.kind, detail=damage.detail, bytes_discarded=damage.bytes_discarded)

        def before_release() -> None:
            assert self.core is not None
            after_start(storage, self.core.incarnation)

        await self.process([(None, start_input(storage))], before_release=before_release)

    def open_event_log(self) -> None:
        assert self.event_log_path is not None and self.core is not None
        self.event_log_file = open(self.event_log_path, "wb")  # noqa: SIM115 (closed at shutdown)
        params = self.cluster.node_params
        wall_offset, wall_error = wall_minus_monotonic_us()
        self.event_log = EventLogWriter(
            {
                "protocol": self.cluster.protocol,
                "n": self.cluster.n,
                "f": self.cluster.f,
                "byzantine": [],
                "seed": 0,
                "params": {name: getattr(params, name) for name in params.__dataclass_fields__},
                # Step times count from started_us; this is that instant on the
                # wall clock, so logs of several nodes merge by time (trace/diagram.py).
                # The clocks are paired tightly: a delivery drawn before its send
                # (an error above the ~0.1 ms a message takes) would not match it.
                "options": {"host": "live", "node": self.node_id,
                            "started_unix_us": wall_offset + self.started_us,
                            "clock_error_us": wall_error,
                            **self.usig_header()},
            },
            self.event_log_file,
        )

    def usig_header(self) -> dict[str, Any]:
        """The USIG epoch this run was admitted with (ADR 0026), for the event
        log: ``replay --cluster`` must not take a later admission from the
        cluster file."""
        entry = self.cluster.node(self.node_id)
        if self.cluster.usig is None:
            return {}
        if entry.usig_groups:  # a node of several MinBFT groups (ADR 0031)
            return {"usig_groups": [[group, epoch, certificate.hex()]
                                    for group, epoch, certificate in entry.usig_groups]}
        if entry.usig_admission is None:
            return {}
        return {"usig_epoch": entry.usig_epoch, "usig_admission": entry.usig_admission.hex()}

    def flush_event_log(self) -> None:
        """Hand every record to the OS (before the batch is released)."""
        if self.event_log is None or self.event_log_file is None:
            return
        flush = getattr(self.event_log, "flush", None)  # a buffering writer holds records
        if flush is not None:
            flush()
        self.event_log_file.flush()

    def stop(self) -> None:
        """Ask the batch loop to finish its batch and stop (signal-handler safe)."""
        if not self.stopping:
            self.stopping = True
            self.put((STOP,))

    async def shutdown(self) -> None:
        for timer in self.timer_handles.values():
            timer.cancel()
        self.timer_handles.clear()
        if self.service is not None:
            await self.service.close()
        if self.transport is not None:
            await self.transport.close()
        if self.metrics_server is not None:
            self.metrics_server.close()
        if self.sync_worker is not None:
            self.sync_worker.close()
        if self.pipeline is not None:
            self.pipeline.close()  # what was submitted is written (not released)
        if self.storage is not None:
            self.storage.close()  # every batch was synced before its release
        if self.event_log_file is not None:
            self.flush_event_log()
            self.event_log_file.close()
        if self.hops is not None:
            self.hops.untrace_gc()
            self.hops.write()
        log(logger, logging.INFO, "node stopped", steps=self.stats["steps"])

    # -- inputs ------------------------------------------------------------------------------

    def put(self, item: tuple[Any, ...]) -> None:
        """Into the inbox (room already counted, or not counted: timers, stop);
        wakes the batch loop if it waits."""
        self.inbox.append(item)
        waiter = self.batch_waiter
        if waiter is not None:
            self.batch_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def offer(self, peer: int, payload: bytes) -> bool:
        """The transport's readers: an authenticated payload from ``peer``;
        ``False`` (not taken) when the inbox is full: the reader then waits for
        :meth:`when_room`."""
        if self.inbox_room <= 0:
            self.counters.count("bound_inbox_max")
            return False
        self.inbox_room -= 1
        self.put((RECEIVE, peer, payload))
        return True

    def when_room(self, resume: Callable[[], None]) -> None:
        """Call ``resume`` (a paused peer reader's) when the inbox has room, in
        turn with every other input waiting for room."""
        self.room_waiters.append(resume)

    def try_submit(self, payload: Any, on_done: OnDone | None = None) -> bool:
        """A client request if the inbox has room (``False`` otherwise: nothing
        was taken); ``on_done`` is called as for :meth:`submit`."""
        if self.inbox_room <= 0:
            self.counters.count("bound_inbox_max")
            return False
        self.inbox_room -= 1
        self.put((REQUEST, payload, on_done))
        if self.hops is not None:
            self.hops.stamp(hoptrace.SUBMIT)
        return True

    async def submit(self, payload: Any, on_done: OnDone | None = None) -> None:
        """A client request (called by the client service); waits for inbox room."""
        if self.try_submit(payload, on_done):
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.room_waiters.append(granted)
        try:
            await granted  # resolved with one unit of room set aside for this request
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.free_room(1)  # granted, then cancelled before it could use it
            else:
                with contextlib.suppress(ValueError):
                    self.room_waiters.remove(granted)
            raise
        self.put((REQUEST, payload, on_done))
        if self.hops is not None:
            self.hops.stamp(hoptrace.SUBMIT)

    def free_room(self, count: int) -> None:
        """``count`` inputs left the inbox: serve who waits for room, in turn (a
        client's request is granted one unit; a peer reader delivers what it
        can and waits again if the room runs out)."""
        self.inbox_room += count
        waiters = self.room_waiters
        while waiters and self.inbox_room > 0:
            waiter = waiters.popleft()
            if isinstance(waiter, asyncio.Future):
                if not waiter.done():  # (a cancelled submit)
                    self.inbox_room -= 1
                    waiter.set_result(None)
            else:
                waiter()

    def timer_fired(self, timer_id: int, token: int) -> None:
        self.put((TIMER, timer_id, token))

    def choose(self, label: str, count: int) -> int:
        """Resolve a choice point, recorded for replay. ``random`` choice points
        (``ctx.random_below``: Raft's election timeouts and disk identities) are
        drawn from the operating system's entropy, so nodes do not all draw the
        same value; ``clock_ms`` ones read the wall clock; every other choice
        takes the first alternative."""
        if label == "random":
            index = self.random.randrange(count)
        elif label == CLOCK_CHOICE:  # the wall clock, in ms (SMR's batch time stamps)
            index = min(max(0, time.time_ns() // 1_000_000), count - 1)
        else:
            index = 0
        self.choices.append((label, count, index))
        return index

    # -- the batch loop ----------------------------------------------------------------------

    async def batch_loop(self) -> None:
        inbox = self.inbox
        loop = self.loop = asyncio.get_running_loop()
        batch_max = self.params.batch_inputs_max
        hops = self.hops
        pipelined = self.pipeline is not None
        while True:
            if self.failure is not None:
                raise self.failure
            if not inbox:
                waiter = loop.create_future()
                self.batch_waiter = waiter
                await waiter
            if len(inbox) <= batch_max:  # (the common case: all of it)
                items = list(inbox)
                inbox.clear()
            else:
                items = [inbox.popleft() for _ in range(batch_max)]
            if hops is not None:
                kinds = [item[0] for item in items]
                hops.stamp(hoptrace.BATCH, kinds.count(RECEIVE) + 1000 * kinds.count(REQUEST)
                           + 1_000_000 * kinds.count(TIMER))
            batch: list[tuple[OnDone | None, Input]] = []
            requests: list[tuple[OnDone | None, Input]] = []  # stepped after the rest
            stop = False
            freed = 0
            for item in items:
                kind = item[0]
                if kind == RECEIVE:
                    freed += 1
                    batch.append((None, Receive(item[1], item[2])))
                elif kind == REQUEST:
                    freed += 1
                    requests.append((item[2], Request(item[1])))
                elif kind == TIMER:
                    if self.timer_tokens.get(item[1]) != item[2]:
                        self.counters.count("timers_stale")
                        continue
                    del self.timer_tokens[item[1]]
                    del self.timer_handles[item[1]]
                    batch.append((None, TimerFired(item[1])))
                else:
                    stop = True
            if freed:
                self.free_room(freed)
            batch += requests
            if batch:
                if pipelined:
                    await self.process_pipelined(batch)
                else:
                    await self.process(batch)
            if stop:
                while self.flights:  # every stepped batch released before the stop
                    await self.wait_release()
                return

    async def process(
        self,
        batch: list[tuple[OnDone | None, Input]],
        *,
        before_release: Callable[[], None] | None = None,
    ) -> None:
        """Step every input, sync once, then release the effects in step order
        (``before_release`` runs between the two). What depends on no unsynced
        write leaves before the sync (see the module docstring)."""
        storage = self.storage
        assert storage is not None
        sends: list[tuple[int, bytes]] = []
        early: list[tuple[int, bytes]] = []  # sends_before_sync of the writing steps
        outputs: list[Any] = []
        # (outputs released before it, callback, rejection): completions keep step order.
        completions: list[tuple[int, OnDone, str | None]] = []
        wrote, clean = self.step_batch(batch, sends, early, outputs, completions)
        hops = self.hops
        if hops is not None:
            hops.stamp(hoptrace.STEPPED, int(wrote))
        if wrote and before_release is None and (clean != (0, 0, 0) or early):
            self.flush_event_log()
            self.release_sends(sends[: clean[0]] + early)
            self.release_replies(outputs[: clean[1]], completions[: clean[2]])
            if hops is not None:
                hops.stamp(hoptrace.EARLY)
        else:
            clean = (0, 0, 0)
            sends += early  # nothing left early: they go with the rest
        if wrote:
            await self.sync(storage)
        if before_release is not None:
            before_release()
        self.release_held(sends, outputs, completions, clean, wrote, self.timers_to_arm)
        self.metrics.batch_inputs.observe(len(batch))
        if hops is not None:
            hops.stamp(hoptrace.RELEASED)

    def step_batch(
        self, batch: list[tuple[OnDone | None, Input]], sends: list[tuple[int, bytes]],
        early: list[tuple[int, bytes]], outputs: list[Any],
        completions: list[tuple[int, OnDone, str | None]],
    ) -> tuple[bool, tuple[int, int, int]]:
        """Step every input of ``batch``; whether one wrote, and the clean prefix:
        how many sends, outputs and completions the steps before the first
        writing step made."""
        core = self.core
        assert core is not None
        wrote = False
        clean = (0, 0, 0)
        for on_done, event in batch:
            if self.step(core, event, sends, outputs, early):
                wrote = True
            if isinstance(event, Request) and on_done is not None:
                completions.append((len(outputs), on_done, core.request_rejection))
            if not wrote:
                clean = (len(sends), len(outputs), len(completions))
        return wrote, clean

    def release_held(
        self, sends: list[tuple[int, bytes]], outputs: list[Any],
        completions: list[tuple[int, OnDone, str | None]], clean: tuple[int, int, int],
        synced: bool, timers: dict[int, int],
    ) -> None:
        """Release what a batch held back (all but its ``clean`` prefix, which
        left already) once it is durable, and arm its timers. (Each release is
        called only when it has something to do: many batches, those of client
        requests queued for the next SMR batch, release nothing.)"""
        if self.event_log is not None:
            self.flush_event_log()
        sent, shown, completed = clean
        held = len(sends) > sent
        if sent:
            sends = sends[sent:]
        if len(outputs) <= shown and len(completions) <= completed:
            # No replies (most batches: an acknowledgement that commits nothing, a
            # follower's append, a request queued for the next SMR batch).
            if held or self.deferred_sends:
                self.release_sends(sends)
            if timers:
                self.arm_timers(synced, timers)
            self.stats["batches"] += 1
            return
        replies = outputs[shown:] if shown else outputs
        if shown:
            done = [(index - shown, on_done, reason)
                    for index, on_done, reason in completions[completed:]]
        else:
            done = completions[completed:] if completed else completions
        if held and self.params.replies_first and (done or self.serves_clients()):
            # The replies first: the sends leave once the client tasks woken by
            # them have run (their writes would wake the peers' processes first).
            self.release_replies(replies, done)
            self.defer_sends(sends)
            if timers:
                self.arm_timers(synced, timers)
        else:
            if held or self.deferred_sends:
                self.release_sends(sends)
            if timers:
                self.arm_timers(synced, timers)
            self.release_replies(replies, done)
        self.stats["batches"] += 1

    def serves_clients(self) -> bool:
        """Whether a client is connected to this node's front: else replies can wake
        no client's task, and putting them before the batch's sends (``replies_first``)
        would only hold the sends back a turn of the loop: a follower's
        acknowledgement behind the replies of its applied entries, which its front
        drops (every SET's critical path at one client, on the leader)."""
        service = self.service
        return service is None or service.connections() > 0

    async def process_pipelined(self, batch: list[tuple[OnDone | None, Input]]) -> None:
        """Step every input, seal the batch's writes and hand them to the disk
        threads, and return once fewer than ``[host] pipeline`` batches are
        unreleased: the next batch is stepped while this one is made durable.
        Batches are released strictly in order, each once it is durable
        (:meth:`durable_upto`). What leaves before that (ADR 0037): the sends
        marked ``sends_before_sync``, at once (they depend on no unsynced write,
        of this batch or an earlier one); and, if no earlier batch is
        unreleased, the effects of the steps before the batch's first write,
        as :meth:`process` does (with an earlier batch unreleased they may depend
        on its writes: they wait for its release)."""
        storage, pipeline = self.storage, self.pipeline
        assert storage is not None and pipeline is not None
        sends: list[tuple[int, bytes]] = []
        early: list[tuple[int, bytes]] = []
        outputs: list[Any] = []
        completions: list[tuple[int, OnDone, str | None]] = []
        timers: dict[int, int] = {}
        self.timers_to_arm = timers  # this batch's, armed at its release
        wrote, clean = self.step_batch(batch, sends, early, outputs, completions)
        self.timers_to_arm = {}
        hops = self.hops
        if hops is not None:
            hops.stamp(hoptrace.STEPPED, int(wrote))
        if not wrote:
            clean = (0, 0, 0)
            if early and self.flights:
                # At once, as in a writing batch (ADR 0070): they depend on no
                # unsynced write of any batch (a follower's early answer to a read
                # round, behind an earlier batch's flush otherwise).
                self.flush_event_log()
                self.release_sends(early)
            else:
                sends += early  # nothing unreleased before: they go now with the rest
        elif self.flights:
            clean = (0, 0, 0)  # may depend on an unreleased batch's writes
            if early:
                self.flush_event_log()
                self.release_sends(early)
        elif clean != (0, 0, 0) or early:
            self.flush_event_log()
            self.release_sends(sends[: clean[0]] + early)
            self.release_replies(outputs[: clean[1]], completions[: clean[2]])
            if hops is not None:
                hops.stamp(hoptrace.EARLY)
        flight = Flight(sends, outputs, completions, clean, timers, wrote, len(batch))
        sealed = storage.seal() if wrote else None
        if sealed is None:
            flight.durable = True
        else:
            flight.batch = sealed.batch
            flight.sealed_at = time.perf_counter()
            if hops is not None:
                hops.stamp(hoptrace.SYNC_CALL)
            pipeline.submit(sealed)
        self.flights.append(flight)
        self.release_durable()
        while len(self.flights) >= self.params.pipeline:
            await self.wait_release()

    async def wait_release(self) -> None:
        """Until the oldest unreleased batch was released (or the disk failed)."""
        if self.failure is not None:
            raise self.failure
        loop = self.loop or asyncio.get_running_loop()
        waiter = loop.create_future()
        self.release_waiter = waiter
        await waiter

    def durable_upto(self, batch: int) -> None:
        """The disk threads: every storage batch up to ``batch`` is durable (a
        callback of the loop: a failure here stops the batch loop)."""
        try:
            for flight in self.flights:
                if flight.batch > batch:
                    break
                flight.durable = True
            self.release_durable()
        except BaseException as error:
            self.pipeline_failed(error)
            raise

    def release_durable(self) -> None:
        """Release the oldest batches while they are durable, in order."""
        flights = self.flights
        if not flights or not flights[0].durable:
            return
        while flights and flights[0].durable:
            self.release_flight(flights.popleft())
        waiter = self.release_waiter
        if waiter is not None:
            self.release_waiter = None
            succeed(waiter)

    def pipeline_failed(self, error: BaseException) -> None:
        """A disk thread failed (the store closed itself): stop the batch loop with
        ``error``; nothing stepped after the last durable batch is released."""
        if self.failure is None:
            self.failure = error
        for waiter in (self.release_waiter, self.batch_waiter):
            if waiter is not None:
                fail(waiter, error)
        self.release_waiter = self.batch_waiter = None

    def release_flight(self, flight: Flight) -> None:
        """What :meth:`process` does after the sync, for one pipelined batch."""
        hops = self.hops
        if flight.batch:
            if hops is not None:
                hops.stamp(hoptrace.SYNC_BACK)
            self.metrics.fsync_seconds.observe(time.perf_counter() - flight.sealed_at)
            self.stats["syncs"] += 1
        self.release_held(flight.sends, flight.outputs, flight.completions, flight.clean,
                          flight.wrote, flight.timers)
        self.metrics.batch_inputs.observe(flight.inputs)
        if hops is not None:
            hops.stamp(hoptrace.RELEASED)

    def step(
        self, core: Node, event: Input, sends: list[tuple[int, bytes]], outputs: list[Any],
        early: list[tuple[int, bytes]],
    ) -> bool:
        """One core step; applies its writes (unsynced) and holds back the rest:
        the sends it marks ``sends_before_sync`` go to ``early``, the others to
        ``sends``."""
        storage = self.storage
        assert storage is not None
        if self.choices:  # (most steps choose nothing: their empty list serves the next)
            self.choices = []
        effects = core.step(event)
        self.stats["steps"] += 1
        persists = effects.persists
        for key, value in persists:
            if value is None:
                storage.delete(key)
            else:
                storage.put(key, value)
        sent = effects.sends
        encoded: list[bytes] = []
        if sent:  # (a client request queued for the next batch sends nothing)
            # Not decoded again here: the peers decode and check it (ADR 0066)
            encode = self.codec.encode_unchecked
            encoded = [encode(message) for _, message in sent]
            marked = effects.sends_before_sync
            if self.outgoing is not None:
                self.rewrite_sends(sent, sends)
            elif marked:
                for position, ((destination, _), data) in enumerate(
                    zip(sent, encoded, strict=True)
                ):
                    (early if position in marked else sends).append((destination, data))
            else:
                sends.extend([  # (a list: a cpdef method holds no generator, ADR 0047)
                    (destination, data)
                    for (destination, _), data in zip(sent, encoded, strict=True)
                ])
        cancelled = effects.timers_cancelled
        if cancelled:
            for timer_id in cancelled:
                self.cancel_timer(timer_id)
        armed = effects.timers_set
        if armed:
            timers_to_arm = self.timers_to_arm
            handles = self.timer_handles
            tokens = self.timer_tokens
            flights = self.flights
            for timer_id, delay_us in armed:
                # Re-armed: the earlier arming (running, or waiting for an earlier
                # batch's release) must not fire after this step. (cancel_timer,
                # inline: the popped key goes to the end, as the order of arming.)
                timers_to_arm.pop(timer_id, None)
                for flight in flights:
                    flight.timers.pop(timer_id, None)
                handle = handles.pop(timer_id, None)
                tokens.pop(timer_id, None)
                if handle is not None:
                    handle.cancel()
                timers_to_arm[timer_id] = delay_us
        if effects.outputs:
            outputs.extend(effects.outputs)
        if self.event_log is not None:
            self.event_log.step(
                monotonic_us() - self.started_us,
                self.node_id,
                core.incarnation,
                encode_input(self.codec, event),
                self.choices,
                encode_effects(self.codec, effects, encoded),
            )
            self.choices = []  # the record holds this step's list
        if self.trusted_wrote:
            self.trusted_wrote = False
            return True
        return bool(persists)

    def attach_live_view(self) -> None:
        """A live Byzantine behaviour that needs its node's trusted component
        (MinBFT's, which mint UIs through their own USIG: the hybrid model lets
        a Byzantine replica ask its USIG for any message) gets what the
        simulator's view would give it: this node's core, and a durable write
        for the component's state. The write goes into the current step's
        writes, so the counter is synced before any message carrying its UI
        leaves (``trusted_wrote`` makes the step count as writing)."""
        behaviour = getattr(self.outgoing, "__self__", None)
        attach = getattr(behaviour, "attach_live", None)
        if attach is None:
            return
        cores: list[Node | None] = [None] * self.cluster.n
        cores[self.node_id] = self.core
        attach(LiveView(cores, self.trusted_write))

    def trusted_write(self, node: int, key: str, value: bytes) -> None:
        assert node == self.node_id and self.storage is not None
        self.storage.put(key, value)
        self.trusted_wrote = True

    def rewrite_sends(
        self, honest: list[tuple[int, Any]], sends: list[tuple[int, bytes]]
    ) -> None:
        """A Byzantine node: what its behaviour sends instead of ``honest`` (the
        event log keeps the honest effects: replay re-executes the core)."""
        outgoing = self.outgoing
        assert outgoing is not None
        n = self.cluster.n
        for destination, message in honest:
            for target, rewritten in outgoing(destination, message):
                if target == self.node_id or not 0 <= target < n:
                    continue
                data = rewritten if isinstance(rewritten, bytes) else self.codec.encode(rewritten)
                sends.append((target, data))
                self.counters.count("byzantine_sends")

    async def sync(self, storage: FileStorage) -> None:
        started = time.perf_counter()
        hops = self.hops
        worker = self.sync_worker
        if hops is not None:
            hops.stamp(hoptrace.SYNC_CALL)
            if worker is not None:
                await worker.submit(storage.sync)
            else:
                storage.sync()
            hops.stamp(hoptrace.SYNC_BACK)
        elif worker is not None:
            await worker.submit(storage.sync)
        else:
            storage.sync()  # no fsync: a write(2), cheaper than a thread hop
        self.metrics.fsync_seconds.observe(time.perf_counter() - started)
        self.stats["syncs"] += 1

    def release_sends(self, sends: list[tuple[int, bytes]]) -> None:
        if self.deferred_sends:
            self.send_deferred()  # an earlier batch's sends go first
        transport = self.transport
        assert transport is not None
        if sends:
            transport.send_many(sends)  # a peer's frames in one write where they can
        self.stats["messages_out"] += len(sends)

    def defer_sends(self, sends: list[tuple[int, bytes]]) -> None:
        """Release ``sends`` at the next turn of the loop (before any later send)."""
        if not self.deferred_sends:
            loop = self.loop or asyncio.get_running_loop()
            loop.call_soon(self.send_deferred)
        self.deferred_sends += sends

    def send_deferred(self) -> None:
        sends, self.deferred_sends = self.deferred_sends, []
        if sends:
            self.release_sends(sends)

    def arm_timers(self, synced: bool, timers: dict[int, int]) -> None:
        """Arm the batch's timers: only after its sync (``replicaio.core.effects``).
        A timer of delay 0 (a core learning that its writes are durable) goes into
        the inbox at once, behind what already waits there, rather than through
        the loop's next turn: a Raft leader's own durability then shares a batch
        with the acknowledgements that arrived during its sync, and it commits
        there instead of in a batch of its own. Only after a sync (``synced``),
        which let the loop run: a core that arms delay-0 timers without writing
        cannot keep the batch loop from yielding."""
        loop = self.loop or asyncio.get_running_loop()
        for timer_id, delay_us in timers.items():
            self.token += 1
            self.timer_tokens[timer_id] = self.token
            if delay_us <= 0 and synced:
                self.put((TIMER, timer_id, self.token))
                self.timer_handles[timer_id] = DUE_NOW
            else:
                self.timer_handles[timer_id] = loop.call_later(
                    delay_us / 1_000_000, self.timer_fired, timer_id, self.token
                )
        timers.clear()

    def release_replies(
        self, outputs: list[Any], completions: list[tuple[int, OnDone, str | None]]
    ) -> None:
        """Outputs to the client service and request completions, in step order
        (a completion's position counts the outputs released before it)."""
        self.stats["outputs"] += len(outputs)
        if not completions:  # (a follower's replies, a commit's without a request)
            if outputs:
                self.release_outputs(outputs)
            return
        released = 0
        for position, on_done, reason in completions:
            self.release_outputs(outputs[released:position])
            released = position
            on_done(reason)
        self.release_outputs(outputs[released:])

    def release_outputs(self, outputs: list[Any]) -> None:
        for output in outputs:
            kind = type(output)
            if kind in NOTICE_TYPES:
                fields = output_fields(output)
                advice = NOTICE_ADVICE.get(kind)
                if advice is not None:
                    fields["advice"] = advice.format(**fields)
                log(logger, logging.WARNING, kind.__name__, **fields)
            elif kind in OPERATOR_EVENTS:
                log(logger, logging.INFO, OPERATOR_EVENTS[kind], event=kind.__name__,
                    **output_fields(output))
        if outputs and self.service is not None:
            rewrite = self.rewrite_output
            if rewrite is not None:
                honest = outputs
                outputs = [rewrite(output) for output in honest]
                lies = sum([1 for said, did in zip(outputs, honest, strict=True) if said != did])
                if lies:
                    self.counters.count("byzantine_outputs", lies)
            if self.service.expects_outputs():  # (no client of this node waits: all dropped)
                self.service.on_outputs(outputs)

    def cancel_timer(self, timer_id: int) -> None:
        """Cancel ``timer_id`` wherever it is: set earlier in this batch, set in an
        unreleased batch (pipelined), or running."""
        self.timers_to_arm.pop(timer_id, None)
        for flight in self.flights:
            flight.timers.pop(timer_id, None)
        handle = self.timer_handles.pop(timer_id, None)
        self.timer_tokens.pop(timer_id, None)
        if handle is not None:
            handle.cancel()

    # -- introspection -----------------------------------------------------------------------

    def inbox_depth(self) -> int:
        return len(self.inbox)


def run_node(
    cluster: ClusterFile,
    node_id: int,
    *,
    event_log: str | Path | None = None,
    loop: str = "auto",
    outgoing: Outgoing | None = None,
) -> None:
    """Run one node until SIGTERM or SIGINT (the ``replicaio node`` command)."""
    import signal

    young = cluster.host.gc_young
    if young:  # the whole process's (so here, not in NodeHost: tests run several)
        gc.set_threshold(young, *gc.get_threshold()[1:])

    def serving(host: NodeHost) -> None:
        # What start-up made lives as long as the node: no collection scans it again.
        gc.freeze()

    async def main() -> None:
        host = NodeHost(cluster, node_id, event_log=event_log, outgoing=outgoing)
        running = asyncio.get_running_loop()
        for number in (signal.SIGTERM, signal.SIGINT):
            running.add_signal_handler(number, host.stop)
        await host.run(serving)

    run_event_loop(main(), loop)


def run_event_loop(coroutine: Any, loop: str = "auto") -> None:
    """Run ``coroutine`` on uvloop when asked or available (``auto``), else asyncio."""
    if loop not in ("auto", "asyncio", "uvloop"):
        raise ValueError(f"loop must be auto, asyncio or uvloop, got {loop!r}")
    if loop != "asyncio":
        try:
            # A default dependency on Linux only: imported by name so that type
            # checking and other platforms do not need it.
            uvloop = importlib.import_module("uvloop")
        except ImportError:
            if loop == "uvloop":
                raise
        else:
            logger.info("event loop: uvloop %s", getattr(uvloop, "__version__", "?"))
            uvloop.run(coroutine)
            return
    logger.info("event loop: asyncio")
    asyncio.run(coroutine)
