"""The SMR replica: sessions, batching, forwarding, reads, snapshots, over any Ordering.

Theory of operation
-------------------
A :class:`Replica` sits between clients and an ordering protocol
(``replicaio.smr.api.Ordering``: Raft now, PBFT and MinBFT next) on one node.
It is the protocol-neutral half of state machine replication (Schneider,
"Implementing fault-tolerant services using the state machine approach",
1990; Raft thesis chapter 6 for sessions and reads):

1. **Admission** (:meth:`on_request`, the node protocol's ``on_request``): the
   payload is authenticated (``replicaio.smr.auth``), checked (ids, sizes), and
   answered at once when it is the client's last executed request (cached
   result) or older (``stale_seq``). Otherwise it joins ``pending`` (bounded:
   ``busy`` beyond ``pending_max``) and the replica remembers that it owes
   this client a reply (``waiting``).
2. **Batching** (:meth:`flush`, run by the housekeeper task after the step's
   inputs): pending requests are cut into batches of at most
   ``batch_requests_max`` requests and ``batch_bytes_max`` bytes and
   submitted while fewer than ``batches_inflight_max`` own batches are in
   flight; the window is the backpressure, and it is what makes batches grow
   under load. An in-flight batch not applied within ``batch_timeout_us`` is
   presumed lost (leadership changed: :meth:`expiry_loop`, one task per
   replica over the batches' timers) and frees its slot; so does, at once,
   an own batch submitted in an older view or term once the window is full
   (its fate is the new view's: committed through the view change or lost,
   and a request ordered twice executes once), or a replica with one batch in
   flight would wait out the timeout after every view change. If the state machine
   keeps time (``api.Clocked``), each batch is stamped with the host's clock
   (the ``clock_ms`` choice point), never below an earlier stamp; on apply,
   every replica advances the state machine to the stamp before its requests.
3. **Not the leader**: when ``submit`` answers ``NotLeader``, the replica
   forwards its clients' requests to the leader over a stream (``Forward``), or
   answers ``Redirect`` when forwarding is off or no leader is known. A
   forwarded request is never forwarded again: the receiver refuses it
   (``ForwardRefused``) and the origin tells its client. The reply to a
   forwarded request comes from the origin's own apply (below), so a leader
   never answers another replica's client.
4. **Apply** (:meth:`on_commit`, called by the ordering protocol once per
   index, in order): every request of the batch goes through the session
   table (``replicaio.smr.sessions``): new requests execute on the state
   machine, retries get the remembered result, so a request executes at most
   once whatever the retries, forwards and leader changes. The replica that
   owes a client a reply outputs ``Reply``. Every replica applies everything.
5. **Reads** (``read_only`` requests) skip the log: ``read_barrier()`` gives an
   index (Raft's read-index), the read waits until that index is applied and
   runs ``StateMachine.read``. A non-leader asks the leader for the index
   (``ReadIndexRequest``) and serves the read from its own state (thesis 6.4).
6. **Snapshots**: after applying every index that is a multiple of
   ``snapshot_interval`` (the same indices on every replica) the replica
   snapshots the state machine and the session table (:func:`encode_snapshot`,
   versioned; equal states give equal bytes) and hands it to
   ``Ordering.compact`` from the housekeeper; ``on_snapshot`` restores one
   (restart, state transfer) and answers any owed reply it covers.

SMR keeps no durable state of its own: everything is rebuilt from the ordering
protocol's snapshot and committed batches at restart. What the ordering must
guarantee and how PBFT and MinBFT plug in: ``docs/adr/0005-smr-ordering-interface.md``.
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import Any, TypeVar

from replicaio.core.codec import Codec, DecodeError, EncodeError
from replicaio.core.config import Resilience
from replicaio.core.context import Context
from replicaio.core.effects import CLOCK_CHOICE
from replicaio.core.errors import UsageError
from replicaio.core.lines import Line, first
from replicaio.core.stream import Stream
from replicaio.smr.api import (
    AuthenticatedRequest,
    ClientRequest,
    Clocked,
    Committed,
    Hurry,
    NotLeader,
    Ordering,
    Redirect,
    Rejected,
    RelayWatch,
    Reply,
    StateMachine,
    Views,
)
from replicaio.smr.auth import ClientAuthenticator, TrustedClients
from replicaio.smr.messages import (
    Applied,
    Batch,
    Forward,
    ForwardRefused,
    ReadIndexReply,
    ReadIndexRequest,
    SignedBatch,
    SignedForward,
)
from replicaio.smr.params import (
    AUTHENTICATED_OVERHEAD_BYTES,
    BATCH_OVERHEAD_BYTES,
    REQUEST_OVERHEAD_BYTES,
    SNAPSHOT_DEFERRALS_MAX,
    SmrConstants,
    SmrParams,
)
from replicaio.smr.sessions import SessionRecord, SessionTable

T = TypeVar("T")

SNAPSHOT_FORMAT = "replicaio.smr"
SNAPSHOT_VERSION = 1
# Read numbers are (incarnation << READ_NUMBER_BITS) | a counter of this incarnation.
READ_NUMBER_BITS = 32
CLOCK_MS_MAX = 1 << 47  # a clock_ms choice point's alternatives: beyond any wall clock


class SmrSnapshotError(UsageError):
    """Snapshot bytes that :func:`encode_snapshot` did not produce."""


def encode_snapshot(
    codec: Codec, index: int, application: bytes, sessions: list[SessionRecord]
) -> bytes:
    """``["replicaio.smr", 1, index, application snapshot, [[client, seq, result, index]...]]``."""
    return codec.encode_value([SNAPSHOT_FORMAT, SNAPSHOT_VERSION, index, application, sessions])


def decode_snapshot(codec: Codec, data: bytes) -> tuple[int, bytes, list[SessionRecord]]:
    """``(index, application snapshot, sessions)``; :class:`SmrSnapshotError` if malformed."""
    try:
        value = codec.decode_value(data)
    except DecodeError as error:
        raise SmrSnapshotError(f"unreadable SMR snapshot: {error}") from None
    if not (isinstance(value, tuple) and len(value) == 5 and value[0] == SNAPSHOT_FORMAT):
        raise SmrSnapshotError("not an SMR snapshot")
    _, version, index, application, raw_sessions = value
    if version != SNAPSHOT_VERSION:
        raise SmrSnapshotError(f"SMR snapshot version {version!r} is not supported")
    if type(index) is not int or index < 0 or not isinstance(application, bytes):
        raise SmrSnapshotError("SMR snapshot index or application state malformed")
    if not isinstance(raw_sessions, tuple):
        raise SmrSnapshotError("SMR snapshot sessions malformed")
    sessions: list[SessionRecord] = []
    for record in raw_sessions:
        if not (
            isinstance(record, tuple)
            and len(record) == 4
            and type(record[0]) is int
            and type(record[1]) is int
            and isinstance(record[2], bytes)
            and type(record[3]) is int
        ):
            raise SmrSnapshotError(f"SMR snapshot session malformed: {record!r}"[:200])
        sessions.append((record[0], record[1], record[2], record[3]))
    return index, application, sessions


def batch_digest(batch: bytes) -> bytes:
    """An 8-byte fingerprint of a batch (for ``Applied`` and state-machine-safety checks)."""
    return hashlib.blake2b(batch, digest_size=8).digest()


async def before(line: Line[T], timeout: Line[None], label: str) -> T | None:
    """The value of ``line``, or ``None`` if ``timeout`` comes first (a choice point
    when both are there)."""
    either: tuple[Line[Any], ...] = (line, timeout)
    value: T | None = await first(*either, label=label)
    return value


# The request, what travels with it (its authenticator; None for trusted
# clients), and the replica whose client sent it.
Pending = tuple[ClientRequest, AuthenticatedRequest | None, int]
BYZANTINE = (Resilience.BYZANTINE, Resilience.BYZANTINE_TRUSTED)


def request_size(request: ClientRequest, carried: AuthenticatedRequest | None) -> int:
    """An upper bound of what ``request`` takes in an encoded batch."""
    size = len(request.command) + REQUEST_OVERHEAD_BYTES
    if carried is not None:
        size += len(carried.key) + len(carried.authenticator) + AUTHENTICATED_OVERHEAD_BYTES
    return size


class Replica:
    """One replica's SMR; implements ``OrderingHandlers``. See the module docstring."""

    # Exactly the attributes ``replica.pxd`` declares, in its order: no instance
    # dict, so the compiled class's ``cpdef`` methods are C calls without an
    # override check (ADR 0041, 0047); a variant (a subclass) has a dict of its own.
    __slots__ = (  # noqa: RUF023
        "context", "ordering", "state_machine", "constants", "params", "authenticator",
        "reply_all", "sessions", "applied", "snapshot_index", "checkpoint_index",
        "checkpoint_bytes", "log_bytes", "pending", "queued", "waiting", "inflight",
        "inflight_requests", "inflight_views", "batch_next", "reads_active", "read_next",
        "remote_reads", "applied_waiters", "kick", "kicked", "checkpoints", "stream",
        "clocked", "has_views", "hurry", "relay_watch", "clock_ms", "codec", "expiries",
        "expiry_held", "expiry_kick",
    )

    def __init__(
        self,
        context: Context,
        ordering: Ordering,
        state_machine: StateMachine,
        params: SmrParams | None = None,
        authenticator: ClientAuthenticator | None = None,
        constants: SmrConstants | None = None,
    ) -> None:
        self.context = context
        self.ordering = ordering
        self.state_machine = state_machine
        self.constants = (constants or SmrConstants()).validate()
        self.params = (params or SmrParams()).validate(self.constants)
        self.authenticator: ClientAuthenticator = authenticator or TrustedClients()
        # Byzantine fault tolerant services: every replica answers every request
        # it executes (clients wait for f+1 matching replies).
        self.reply_all = context.config.resilience in BYZANTINE
        self.sessions = SessionTable(
            self.constants.sessions_max, self.constants.session_results_bytes_max
        )
        self.applied = 0  # index of the last applied batch
        self.snapshot_index = 0  # index of the last snapshot taken or restored
        # Snapshots sized by bytes (SmrConstants.snapshot_log_bytes_min): the last
        # one taken or restored, its size, and the batch bytes applied since.
        self.checkpoint_index = 0
        self.checkpoint_bytes = 0
        self.log_bytes = 0
        self.pending: deque[Pending] = deque()
        # client -> seq of its request pending here or in one of our in-flight
        # batches: a copy (a multicast, a retry, a relay) is not batched again.
        self.queued: dict[int, int] = {}
        self.waiting: dict[int, int] = {}  # client -> seq this replica owes a reply for
        # own batch number -> the id of its expiry timer (-1 while submit runs)
        self.inflight: dict[int, int] = {}
        self.inflight_requests: dict[int, tuple[tuple[int, int], ...]] = {}
        self.inflight_views: dict[int, int] = {}  # own batch number -> view at submit
        self.batch_next = 0
        self.reads_active = 0
        self.read_next = 0  # low bits of the next read number; see next_read_number
        # read number -> (the replica asked, the line its answer sets)
        self.remote_reads: dict[int, tuple[int, Line[tuple[int, int]]]] = {}
        self.applied_waiters: dict[int, Line[None]] = {}
        self.kick: Line[None] | None = None
        self.kicked = False
        self.checkpoints: deque[tuple[int, bytes]] = deque()  # taken, not yet handed over
        self.stream: Stream | None = None
        # Time stamps (only for a Clocked state machine): at least every stamp
        # applied or cut here, so stamps never go back in the log.
        self.clocked = isinstance(state_machine, Clocked)
        self.has_views = isinstance(ordering, Views)
        # An ordering that may hold commit news back learns whose client waits.
        self.hurry: Hurry | None = ordering if isinstance(ordering, Hurry) else None
        # A BFT backup times what it relays to the primary: told which requests.
        self.relay_watch: RelayWatch | None = (
            ordering if isinstance(ordering, RelayWatch) else None)
        self.clock_ms = 0
        # One codec for batches and snapshots (each codec holds a packer buffer);
        # a batch's size is checked apart.
        self.codec = Codec(frame_bytes_max=1 << 40, items_max=self.constants.items_max)
        # Own batches with an expiry timer, in submission order (number, timer id,
        # the timer's line); entries no longer in flight are dropped lazily.
        self.expiries: deque[tuple[int, int, Line[None]]] = deque()
        # The batch whose timer the expiry task waits on (-1: none); its timer
        # stays armed when it leaves the window (the task's wake-up), others' go.
        self.expiry_held = -1
        self.expiry_kick: Line[None] | None = None  # the expiry task waits for a batch
        ordering.bind(self)

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Open the replica-to-replica stream, start housekeeping, then the ordering
        protocol (which may hand back a snapshot and committed batches at once)."""
        self.stream = self.context.stream(
            Forward,
            SignedForward,
            ForwardRefused,
            ReadIndexRequest,
            ReadIndexReply,
            handler=self.on_message,
        )
        self.context.spawn(self.housekeeper(), "smr.housekeeper")
        self.context.spawn(self.expiry_loop(), "smr.expiry")
        self.ordering.start()

    async def housekeeper(self) -> None:
        """After each burst of inputs: take a snapshot if due, then submit batches.
        Deferred to a task so the ordering protocol is never re-entered from its
        own ``on_commit`` callback. Woken (:meth:`wake`) by what gives it work:
        an admitted or forwarded request, an expired batch, a restored
        snapshot, and a commit only when requests are pending (a freed window
        slot) or a snapshot waits to be handed over (ADR 0073); a commit with
        neither, a follower's and a one-client leader's usual case, costs no
        task step."""
        while True:
            if not self.kicked:
                kick: Line[None] = Line(self.context.node.scheduler, "smr.kick")
                self.kick = kick
                await kick
            self.kick = None
            self.kicked = False
            self.hand_over_checkpoints()
            self.flush()

    def wake(self) -> None:
        """Ask the housekeeper to run (once more) in this step."""
        self.kicked = True
        kick = self.kick
        if kick is not None and not kick.ready:
            kick.set(None)

    # -- admission -----------------------------------------------------------------

    def on_request(self, payload: Any) -> str | None:
        """A client's payload (the node's ``Request`` input). Returns the rejection
        reason (the node counts ``request_rejected_<reason>``) or ``None``."""
        admitted = self.authenticator.authenticate(payload)
        if isinstance(admitted, str):
            claimed = self.authenticator.claimed(payload)
            if claimed is not None and self.well_formed(claimed) is None:
                self.context.output(Rejected(claimed.client, claimed.seq, admitted))
            return admitted
        request, carried = admitted
        reason = self.well_formed(request)
        if reason is not None:
            if type(request.client) is int and type(request.seq) is int:
                self.context.output(Rejected(request.client, request.seq, reason))
            return reason
        self.context.count("smr_requests")
        if BATCH_OVERHEAD_BYTES + request_size(request, carried) > self.constants.batch_bytes_max:
            self.context.output(Rejected(request.client, request.seq, "too_large"))
            return "too_large"
        if request.read_only:
            return self.start_read(request)
        return self.admit_write(request, carried)

    def well_formed(self, request: ClientRequest) -> str | None:
        """Why ``request`` is unusable (``bad_request``, ``too_large``), or ``None``."""
        # (each field read once: a message's field is a generic attribute look-up)
        client, seq = request.client, request.seq
        if type(client) is not int or type(seq) is not int:
            return "bad_request"
        if client < 0 or seq < 1:
            return "bad_request"
        command, read_only = request.command, request.read_only
        if type(command) is not bytes or type(read_only) is not bool:
            return "bad_request"
        unordered = request.unordered
        if type(unordered) is not bool or (unordered and not read_only):
            return "bad_request"
        if len(command) > self.constants.command_bytes_max:
            return "too_large"
        return None

    def admit_write(
        self, request: ClientRequest, carried: AuthenticatedRequest | None
    ) -> str | None:
        session = self.sessions.lookup(request.client)
        if session is not None and request.seq <= session.last_seq:
            if request.seq == session.last_seq:
                self.context.count("smr_replies_cached")
                self.reply(request.client, request.seq, session.result)
                return None
            self.context.output(Rejected(request.client, request.seq, "stale_seq"))
            return "stale_seq"
        if self.queued.get(request.client) == request.seq:
            # Already on its way here (a client's retry or multicast, a relay):
            # ordered once; its reply is owed all the same.
            self.context.count("smr_requests_queued_again")
            self.owe_reply(request.client, request.seq)
            return None
        if len(self.pending) >= self.params.pending_max:
            self.context.count("bound_smr_pending_max")
            self.context.output(Rejected(request.client, request.seq, "busy"))
            return "busy"
        self.owe_reply(request.client, request.seq)
        self.enqueue(request, carried, self.context.id)
        self.wake()
        return None

    def enqueue(
        self, request: ClientRequest, carried: AuthenticatedRequest | None, origin: int
    ) -> None:
        self.pending.append((request, carried, origin))
        self.queued[request.client] = request.seq

    def dequeue(self, client: int, seq: int) -> None:
        """``(client, seq)`` left this replica's queue (applied, lost or relayed)."""
        if self.queued.get(client) == seq:
            del self.queued[client]

    def owe_reply(self, client: int, seq: int) -> None:
        waiting = self.waiting
        waiting.pop(client, None)
        if len(waiting) >= self.params.waiting_max:
            # The oldest client has long timed out; its reply would go nowhere.
            del waiting[next(iter(waiting))]
            self.context.count("bound_smr_waiting_max")
        waiting[client] = seq

    def reply(self, client: int, seq: int, result: bytes) -> None:
        ordering = self.ordering
        # (not isinstance: a runtime-checkable Protocol costs microseconds per reply)
        view: int = getattr(ordering, "view_hint", -1) if self.has_views else -1
        leader = ordering.leader_hint
        self.context.output(Reply(client, seq, result, self.context.id, leader, view))

    # -- batching --------------------------------------------------------------------

    def flush(self) -> None:
        """Submit pending requests as batches while the in-flight window allows."""
        params = self.params
        constants = self.constants
        pending = self.pending
        if pending and len(self.inflight) >= params.batches_inflight_max and self.has_views:
            self.release_older_views()
        while pending and len(self.inflight) < params.batches_inflight_max:
            if self.inflight and len(pending) < params.batch_fill_min:
                break  # a batch is in flight: let this one fill (it goes when that one lands)
            taken: list[Pending] = []
            size = BATCH_OVERHEAD_BYTES
            while pending and len(taken) < constants.batch_requests_max:
                request, carried, _ = pending[0]
                size_next = request_size(request, carried)
                if taken and size + size_next > constants.batch_bytes_max:
                    break
                taken.append(pending.popleft())
                size += size_next
            self.submit(taken)

    def release_older_views(self) -> None:
        """Free the window of own batches submitted in an older view or term."""
        view: int = getattr(self.ordering, "view_hint", -1)
        for number, submitted in tuple(self.inflight_views.items()):
            if submitted == view:
                continue
            self.leave_window(number)
            del self.inflight_views[number]
            for client, seq in self.inflight_requests.pop(number, ()):
                self.dequeue(client, seq)
            self.context.count("smr_batches_released_view_changed")

    def submit(self, taken: list[Pending]) -> None:
        assert taken
        number = self.batch_next
        self.batch_next += 1
        batch: Batch | SignedBatch
        node = self.context.node
        # (loops, not generators: a one-client batch of one request paid a frame
        # per generator and per item, ADR 0064)
        identities: list[tuple[int, int]] = []
        if self.authenticator.carries:
            entries: list[AuthenticatedRequest] = []
            for request, entry, _ in taken:
                identities.append((request.client, request.seq))
                if entry is not None:
                    entries.append(entry)
            assert len(entries) == len(taken), "an unauthenticated request was queued"
            batch = SignedBatch(
                self.context.id, node.incarnation, number, tuple(entries), self.stamp()
            )
        else:
            requests: list[ClientRequest] = []
            for request, _, _ in taken:
                requests.append(request)
                identities.append((request.client, request.seq))
            batch = Batch(self.context.id, node.incarnation, number, tuple(requests), self.stamp())
        try:
            data = self.codec.encode(batch)
        except EncodeError as error:  # the size estimate is an upper bound: a bug
            raise AssertionError(f"{len(taken)} requests do not encode: {error}") from error
        assert len(data) <= self.constants.batch_bytes_max, "the batch size estimate is a bound"
        # In flight before submit: an ordering may commit within the call.
        self.inflight[number] = -1
        self.inflight_requests[number] = tuple(identities)
        outcome = self.ordering.submit(data)
        if isinstance(outcome, NotLeader):
            del self.inflight[number]
            self.inflight_views.pop(number, None)
            for client, seq in self.inflight_requests.pop(number):
                self.dequeue(client, seq)
            self.context.count("smr_submit_not_leader")
            self.on_not_leader(taken, outcome.leader)
            return
        assert outcome is None
        hurry = self.hurry
        if hurry is not None:
            me = self.context.id
            told: set[int] = set()  # (the set the comprehension built, in its order)
            for _, _, origin in taken:
                if origin != me:
                    told.add(origin)
            for origin in told:
                hurry.hurry(origin)  # it relayed a client's write: tell it the commit at once
        self.context.count("smr_batches_submitted")
        self.context.count("smr_requests_submitted", len(taken))
        if number in self.inflight:
            if self.has_views:
                self.inflight_views[number] = getattr(self.ordering, "view_hint", -1)
            timer_id, line = self.context.timer(self.params.batch_timeout_us)
            self.inflight[number] = timer_id
            self.expiries.append((number, timer_id, line))
            kick = self.expiry_kick
            if kick is not None and not kick.ready:
                kick.set(None)

    def stamp(self) -> int:
        """The time stamp of a batch cut now: the host's clock (a choice point),
        never below an earlier stamp; 0 if the state machine keeps no time."""
        if not self.clocked:
            return 0
        reading = self.context.choose(CLOCK_CHOICE, CLOCK_MS_MAX)
        self.clock_ms = max(self.clock_ms, reading)
        return self.clock_ms

    async def expiry_loop(self) -> None:
        """The replica's one expiry task (not one per batch, ADR 0068). Each own
        batch in flight has a timer of ``batch_timeout_us``, armed at its
        submission; the timers fire in submission order, and the task waits on
        the oldest in-flight batch's. When it fires the batch, if still in
        flight, is presumed lost (:meth:`expire`); when a batch leaves the
        window its timer is withdrawn, except the one the task waits on, which
        fires all the same and finds it gone. So each batch still in flight
        expires exactly ``batch_timeout_us`` after its submission."""
        expiries = self.expiries
        inflight = self.inflight
        while True:
            while expiries and expiries[0][0] not in inflight:
                expiries.popleft()  # left the window: its timer was withdrawn
            if not expiries:
                kick: Line[None] = Line(self.context.node.scheduler, "smr.expiry")
                self.expiry_kick = kick
                await kick
                self.expiry_kick = None
                continue
            number, _, line = expiries[0]
            self.expiry_held = number
            await line
            self.expiry_held = -1
            expiries.popleft()
            if number in inflight:
                self.expire(number)

    def expire(self, number: int) -> None:
        """Own batch ``number`` was not applied within ``batch_timeout_us``:
        presumed lost, it frees its slot and its requests may be batched again."""
        self.context.count("smr_batches_presumed_lost")
        del self.inflight[number]
        self.inflight_views.pop(number, None)
        for client, seq in self.inflight_requests.pop(number, ()):
            self.dequeue(client, seq)
        self.wake()

    def leave_window(self, number: int) -> None:
        """Own batch ``number`` leaves the window before its timeout (applied or
        released): its timer goes, unless the expiry task waits on it."""
        timer_id = self.inflight.pop(number, -1)
        if timer_id >= 0 and number != self.expiry_held:
            self.context.node.end_timer(timer_id)

    def batch_applied(self, number: int) -> None:
        """One of this incarnation's batches committed: it leaves the window."""
        self.leave_window(number)
        self.inflight_views.pop(number, None)
        for client, seq in self.inflight_requests.pop(number, ()):
            self.dequeue(client, seq)

    def on_not_leader(self, taken: list[Pending], leader: int) -> None:
        """Forward our clients' requests to ``leader`` (or redirect them); refuse
        requests other replicas forwarded to us. A BFT ordering that times what
        it relays (``RelayWatch``) is told the forwarded ones, and only those."""
        me = self.context.id
        stream = self.stream
        assert stream is not None
        forward: list[Pending] = []
        for request, carried, origin in taken:
            if origin != me:
                refused = ForwardRefused(request.client, request.seq, "not_leader", leader)
                stream.send(origin, refused)
                self.context.count("smr_forward_refused")
            elif self.params.forward and 0 <= leader < self.context.n and leader != me:
                forward.append((request, carried, origin))
            else:
                self.redirect(request.client, request.seq, leader)
        if not forward:
            return
        if self.authenticator.carries:
            relayed = tuple(carried for _, carried, _ in forward if carried is not None)
            stream.send(leader, SignedForward(relayed))
        else:
            stream.send(leader, Forward(tuple(request for request, _, _ in forward)))
        self.context.count("smr_forwarded", len(forward))
        watch = self.relay_watch
        if watch is not None:  # (only these: the refused and redirected ones it never relayed)
            watch.watch_relayed(tuple((request.client, request.seq) for request, _, _ in forward))

    def redirect(self, client: int, seq: int, leader: int, *, forwarded: bool = False) -> None:
        if self.waiting.get(client) == seq:
            del self.waiting[client]
        self.context.count("smr_redirects")
        hint = leader if leader != self.context.id else -1
        self.context.output(Redirect(client, seq, hint, forwarded))

    # -- between replicas ----------------------------------------------------------------

    def on_message(self, source: int, message: Any) -> None:
        """Stream handler: forwarded requests, refusals, read indices."""
        if type(message) is Forward or type(message) is SignedForward:
            self.on_forward(source, message)
        elif type(message) is ForwardRefused:
            self.on_forward_refused(message)
        elif type(message) is ReadIndexRequest:
            self.on_read_index_request(source, message)
        else:
            assert type(message) is ReadIndexReply
            self.on_read_index_reply(source, message)

    def on_forward(self, source: int, forward: Forward | SignedForward) -> None:
        """Requests another replica relays: checked like a client's, queued once."""
        for item in forward.requests:
            if type(item) is AuthenticatedRequest:
                if not (self.authenticator.carries and self.authenticator.check(item)):
                    self.context.count("smr_forward_unauthenticated")  # a faulty peer's doing
                    continue
                self.take_forwarded(source, item.request, item)
            elif self.authenticator.carries:
                self.context.count("smr_forward_unauthenticated")
            else:
                assert type(item) is ClientRequest
                self.take_forwarded(source, item, None)
        self.wake()

    def take_forwarded(
        self, source: int, request: ClientRequest, carried: AuthenticatedRequest | None
    ) -> None:
        stream = self.stream
        assert stream is not None
        if self.well_formed(request) is not None or request.read_only:
            self.context.count("smr_forward_malformed")  # a faulty peer's doing
            return
        session = self.sessions.lookup(request.client)
        if self.queued.get(request.client) == request.seq or (
            session is not None and request.seq <= session.last_seq
        ):
            self.context.count("smr_forward_duplicate")  # ordered once already
            return
        if len(self.pending) >= self.params.pending_max:
            self.context.count("bound_smr_pending_max")
            stream.send(source, ForwardRefused(request.client, request.seq, "busy", -1))
            return
        self.enqueue(request, carried, source)

    def on_forward_refused(self, refused: ForwardRefused) -> None:
        if self.waiting.get(refused.client) != refused.seq:
            return  # already answered, or the client moved on
        # Not Rejected: another copy of the Forward (duplicated or delayed by
        # the network) may still be taken by a leader, so the request may run.
        leader = refused.leader if refused.reason == "not_leader" else -1
        if not 0 <= leader < self.context.n:
            leader = -1  # a faulty peer's hint (ids out of range): none
        self.redirect(refused.client, refused.seq, leader, forwarded=True)

    # -- apply -----------------------------------------------------------------------------

    def on_commit(self, committed: Committed) -> None:
        """``OrderingHandlers.on_commit``: apply batch ``index`` (exactly once, in order)."""
        # (each field read once: a message's field is a generic attribute look-up)
        index, data = committed.index, committed.batch
        assert index == self.applied + 1, (
            f"commit {index} after applied {self.applied}: the ordering skipped"
        )
        batch: Batch | SignedBatch | None = None
        if data:  # empty: the protocol's own entry (a no-op, a config)
            batch = self.decode_batch(data)
            if batch is None:
                # Every correct replica decodes the same bytes the same way, so
                # skipping is deterministic; only a faulty proposer orders such bytes.
                self.context.count("smr_batch_undecodable")
        if batch is not None and self.clocked and batch.time_ms > 0:
            self.clock_ms = max(self.clock_ms, batch.time_ms)
            self.state_machine.advance_clock(batch.time_ms)  # type: ignore[attr-defined]
        if type(batch) is SignedBatch:
            recheck = self.authenticator.rechecks
            for carried in batch.requests:
                if recheck and not self.authenticator.check_committed(carried):
                    self.context.count("smr_request_unauthenticated_in_batch")
                    continue
                self.execute(carried.request, index)
        elif type(batch) is Batch:
            for request in batch.requests:
                self.execute(request, index)
        if batch is not None:
            node = self.context.node
            if batch.replica == node.node_id and batch.incarnation == node.incarnation:
                self.batch_applied(batch.number)
        self.applied = index
        self.context.count("smr_batches_applied")
        self.log_bytes += len(data)
        self.maybe_checkpoint(index)
        if self.params.emit_applied:
            self.context.output(Applied(index, batch_digest(data)))
        self.wake_readers()
        if self.pending or self.checkpoints:
            # Only with work for it (ADR 0073): a follower and a one-client
            # leader have none after most commits, and each wake is a task step.
            self.wake()

    def decode_batch(self, data: bytes) -> Batch | SignedBatch | None:
        """The batch in ``data``, of the kind this cluster orders (``SignedBatch``
        when clients authenticate), within the cluster constants; else ``None``."""
        if len(data) > self.constants.batch_bytes_max:
            return None
        kind: type[Batch] | type[SignedBatch] = (
            SignedBatch if self.authenticator.carries else Batch
        )
        try:
            batch: Batch | SignedBatch = self.codec.decode_as(data, kind)
        except DecodeError:
            return None
        if len(batch.requests) > self.constants.batch_requests_max:
            return None
        return batch

    def validate_batch(self, batch: bytes, proposer: int | None = None) -> bool:
        """``OrderingHandlers.validate_batch``: a proposed batch decodes within the
        cluster constants and every request in it is authentic and well formed
        (``proposer``'s own in-node clients' requests on its word, ADR 0028)."""
        decoded = self.decode_batch(batch)
        if decoded is None:
            self.context.count("smr_validate_undecodable")
            return False
        if self.clocked and decoded.time_ms > 0:
            # Castro and Liskov 4.6 (non-determinism): the primary chooses the time,
            # backups check it against their own clocks. Only ahead is bounded:
            # applying never moves the store's clock back (ADR 0015).
            reading = self.context.choose(CLOCK_CHOICE, CLOCK_MS_MAX)
            if decoded.time_ms > reading + self.params.stamp_ahead_ms_max:
                self.context.count("smr_validate_stamp_ahead")
                return False
        if type(decoded) is SignedBatch:
            for carried in decoded.requests:
                if self.well_formed(carried.request) is not None:
                    self.context.count("smr_validate_malformed")
                    return False
                authentic = (
                    self.authenticator.check(carried) if proposer is None
                    else self.authenticator.check_proposed(carried, proposer)
                )
                if not authentic:
                    self.context.count("smr_validate_unauthenticated")
                    return False
        return True

    def requests_of(self, batch: bytes) -> tuple[tuple[int, int], ...]:
        """``OrderingHandlers.requests_of``: who asked for what in ``batch``."""
        decoded = self.decode_batch(batch)
        if decoded is None:
            return ()
        if type(decoded) is SignedBatch:
            return tuple((item.request.client, item.request.seq) for item in decoded.requests)
        assert type(decoded) is Batch
        return tuple((request.client, request.seq) for request in decoded.requests)

    def execute(self, request: ClientRequest, index: int) -> None:
        """One request through the session table: at most once, whatever the retries."""
        client, seq = request.client, request.seq
        if self.well_formed(request) is not None:
            self.context.count("smr_request_malformed_in_batch")
            return
        session = self.sessions.lookup(client)
        if session is not None and seq <= session.last_seq:
            self.context.count("smr_duplicates")
            if seq < session.last_seq:
                return
            result = session.result
        elif session is None and seq > 1:
            # The client had a session (it is past its first request) that was
            # evicted: its request may already have run. Never run it again.
            self.context.count("smr_session_expired")
            owed = self.waiting.get(client) == seq
            if owed:
                del self.waiting[client]
            if owed or self.reply_all:
                self.context.output(Rejected(client, seq, "session_expired"))
            return
        else:
            evictions = self.sessions.evictions
            if request.command:
                result = self.state_machine.apply(request.command)
                self.context.count("smr_requests_applied")
            else:
                # Registration: an empty command opens a session and runs nothing,
                # so a retried registration is harmless (Raft thesis, 6.3).
                result = b""
                self.context.count("smr_sessions_registered")
            self.sessions.record(client, seq, result, index)
            if self.sessions.evictions != evictions:
                self.context.count("smr_sessions_evicted")
        if self.waiting.get(client) == seq:
            del self.waiting[client]
            self.reply(client, seq, result)
        elif self.reply_all:
            self.reply(client, seq, result)

    # -- reads ---------------------------------------------------------------------------------

    def start_read(self, request: ClientRequest) -> str | None:
        if request.unordered and self.reply_all:
            # Section 5.1.3: answered from the current (executed, committed)
            # state; the client needs 2f+1 matching answers. A crash-fault
            # service's client takes one answer: there it is read as ordered.
            self.context.count("smr_reads_unordered")
            self.reply(request.client, request.seq, self.state_machine.read(request.command))
            return None
        if self.reads_active >= self.params.reads_pending_max:
            self.context.count("bound_smr_reads_pending_max")
            self.context.output(Rejected(request.client, request.seq, "busy"))
            return "busy"
        barrier = self.ordering.read_barrier()
        if isinstance(barrier, Line):
            self.spawn_read(self.serve_read(request, barrier))
            return None
        leader = barrier.leader
        if not (self.params.forward and 0 <= leader < self.context.n and leader != self.context.id):
            self.redirect(request.client, request.seq, leader)
            return None
        number = self.next_read_number()
        remote: Line[tuple[int, int]] = Line(self.context.node.scheduler, f"smr.read{number}")
        self.remote_reads[number] = (leader, remote)
        stream = self.stream
        assert stream is not None
        stream.send(leader, ReadIndexRequest(number))
        self.context.count("smr_read_index_asked")
        self.spawn_read(self.serve_remote_read(request, number, remote))
        return None

    def next_read_number(self) -> int:
        """A read number never used before by this node, in any incarnation (the
        incarnation is durable and grows at every start): a reply delayed across a
        restart then matches no read of the new incarnation."""
        number = (self.context.node.incarnation << READ_NUMBER_BITS) | self.read_next
        self.read_next = (self.read_next + 1) % (1 << READ_NUMBER_BITS)
        return number

    def on_read_index_reply(self, source: int, message: ReadIndexReply) -> None:
        """A read index from the replica this node asked; anything else is dropped."""
        found = self.remote_reads.get(message.number)
        if found is None or found[1].ready:
            self.context.count("smr_read_index_reply_stale")
            return
        asked, line = found
        if source != asked:
            self.context.count("smr_read_index_reply_wrong_source")
            return
        line.set((message.index, message.leader))

    def spawn_read(self, coroutine: Any) -> None:
        self.reads_active += 1
        task = self.context.spawn(coroutine, "smr.read")
        task.on_finish.append(self.read_finished)

    def read_finished(self) -> None:
        self.reads_active -= 1
        assert self.reads_active >= 0

    async def serve_read(self, request: ClientRequest, barrier: Line[int]) -> None:
        timeout = self.context.sleep(self.params.read_timeout_us)
        index = await before(barrier, timeout, "smr.read")
        if index is None:
            self.context.output(Rejected(request.client, request.seq, "read_timeout"))
            return
        await self.read_at(request, index, timeout)

    async def serve_remote_read(
        self, request: ClientRequest, number: int, remote: Line[tuple[int, int]]
    ) -> None:
        try:
            timeout = self.context.sleep(self.params.read_timeout_us)
            answer = await before(remote, timeout, "smr.read")
            if answer is None:
                self.context.output(Rejected(request.client, request.seq, "read_timeout"))
                return
            index, leader = answer
            if index < 0:
                self.redirect(request.client, request.seq, leader)
                return
            await self.read_at(request, index, timeout)
        finally:
            del self.remote_reads[number]

    async def read_at(self, request: ClientRequest, index: int, timeout: Line[None]) -> None:
        """Serve ``request`` once batch ``index`` is applied (or refuse at the timeout)."""
        if index > self.applied:
            applied = self.applied_line(index)
            await before(applied, timeout, "smr.read_applied")
            if index > self.applied:
                if not applied.waiters:  # nobody else waits for it: do not keep it
                    self.applied_waiters.pop(index, None)
                self.context.output(Rejected(request.client, request.seq, "read_timeout"))
                return
        self.context.count("smr_reads_served")
        self.reply(request.client, request.seq, self.state_machine.read(request.command))

    def applied_line(self, index: int) -> Line[None]:
        line = self.applied_waiters.get(index)
        if line is None:
            line = Line(self.context.node.scheduler, f"smr.applied{index}")
            self.applied_waiters[index] = line
        return line

    def wake_readers(self) -> None:
        waiters = self.applied_waiters
        if not waiters:
            return
        for index in [index for index in waiters if index <= self.applied]:
            waiters.pop(index).set(None)

    def on_read_index_request(self, source: int, request: ReadIndexRequest) -> None:
        """Another replica's client reads: confirm we may serve a read, give the index."""
        stream = self.stream
        assert stream is not None
        barrier = self.ordering.read_barrier()
        if not isinstance(barrier, Line):
            stream.send(source, ReadIndexReply(request.number, -1, barrier.leader))
            return
        if self.reads_active >= self.params.reads_pending_max:
            self.context.count("bound_smr_reads_pending_max")
            stream.send(source, ReadIndexReply(request.number, -1, -1))
            return
        self.spawn_read(self.answer_read_index(source, request.number, barrier))

    async def answer_read_index(self, source: int, number: int, barrier: Line[int]) -> None:
        timeout = self.context.sleep(self.params.read_timeout_us)
        index = await before(barrier, timeout, "smr.read")
        stream = self.stream
        assert stream is not None
        if index is None:
            stream.send(source, ReadIndexReply(number, -1, -1))
        else:
            if self.hurry is not None:
                self.hurry.hurry(source)  # its client waits for it to apply up to index
            stream.send(source, ReadIndexReply(number, index, self.context.id))

    # -- snapshots -------------------------------------------------------------------------------

    def maybe_checkpoint(self, index: int) -> None:
        """Snapshot at every multiple of ``snapshot_interval``: the same indices on
        every replica, so BFT protocols can certify equal snapshots (ADR 0005)."""
        interval = self.constants.snapshot_interval
        if interval == 0 or index % interval != 0:
            return
        floor = self.constants.snapshot_log_bytes_min
        if (
            floor
            and self.log_bytes < max(floor, self.checkpoint_bytes)
            and index - self.checkpoint_index <= interval * SNAPSHOT_DEFERRALS_MAX
        ):
            self.context.count("smr_snapshots_deferred")  # (a function of the log alone)
            return
        data = encode_snapshot(
            self.codec, index, self.state_machine.snapshot(), self.sessions.records()
        )
        self.checkpoint_index, self.checkpoint_bytes, self.log_bytes = index, len(data), 0
        checkpoints = self.checkpoints
        if len(checkpoints) >= self.params.checkpoints_pending_max:
            checkpoints.popleft()
            self.context.count("bound_smr_checkpoints_pending_max")
        checkpoints.append((index, data))
        self.context.count("smr_snapshots")

    def hand_over_checkpoints(self) -> None:
        """Give every snapshot taken since the last time to the ordering protocol, in
        index order (outside its callbacks): a BFT protocol certifies each one."""
        checkpoints = self.checkpoints
        while checkpoints:
            index, data = checkpoints.popleft()
            # (a checkpoint a restored snapshot superseded is dropped by on_snapshot)
            assert index > self.snapshot_index, (
                f"checkpoint {index} after snapshot {self.snapshot_index}"
            )
            self.snapshot_index = index
            self.ordering.compact(index, data)

    def on_snapshot(self, index: int, snapshot: bytes) -> None:
        """``OrderingHandlers.on_snapshot``: replace the state by ``snapshot`` (covering
        every batch up to ``index``), then answer the owed replies it settles."""
        snapshot_index, application, records = decode_snapshot(self.codec, snapshot)
        assert snapshot_index == index, f"snapshot of {snapshot_index} handed as {index}"
        assert index >= self.applied, f"snapshot {index} behind applied {self.applied}"
        self.state_machine.restore(application)
        self.sessions.replace(records)
        self.applied = index
        self.snapshot_index = index
        self.checkpoint_index, self.checkpoint_bytes, self.log_bytes = index, len(snapshot), 0
        while self.checkpoints and self.checkpoints[0][0] <= index:
            self.checkpoints.popleft()
        self.context.count("smr_snapshots_restored")
        for client, seq in list(self.waiting.items()):
            session = self.sessions.lookup(client)
            if session is not None and session.last_seq >= seq:
                del self.waiting[client]
                if session.last_seq == seq:
                    self.reply(client, seq, session.result)
        self.wake_readers()
        self.wake()

    # -- figures -------------------------------------------------------------------------------

    def figures(self) -> dict[str, int]:
        """Sizes of every bounded structure (for benchmarks and memory checks)."""
        return {
            "applied": self.applied,
            "snapshot_index": self.snapshot_index,
            "sessions": len(self.sessions),
            "pending": len(self.pending),
            "waiting": len(self.waiting),
            "inflight": len(self.inflight),
            "queued": len(self.queued),
            "checkpoints": len(self.checkpoints),
            "reads_active": self.reads_active,
            "applied_waiters": len(self.applied_waiters),
        }
