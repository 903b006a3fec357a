"""PBFT's own Byzantine behaviours, registered with the adversary (docs/adversary.md).

The generic behaviours (``equivocate``, ``forge``, ...) twist link messages or
mutate stream messages without a valid signature; these attack PBFT where it
is subtle, with messages the faulty replica *signs as itself* (it holds its
own key, never another replica's: :func:`replicaio.core.signing.simulation_signer`
of its own id). Each is drawn by the seed for ``pbft`` runs with its weight,
and forcible by name (``--adversary pbft-equivocate``):

* ``pbft_equivocate``: as primary, sends half of the backups a PRE-PREPARE for
  another batch (an earlier real one, or a null) at the same number;
* ``pbft_silent_primary``: sends no PRE-PREPARE and no NEW-VIEW (it still
  prepares, commits and checkpoints: only the primary's role goes quiet);
* ``pbft_censor``: as primary, replaces every batch of one client (the first
  seen) by a null request, re-signed: the other clients go on;
* ``pbft_invalid_batch``: as primary, proposes (to every backup alike, signed)
  batches no correct backup may prepare: a request with a forged
  authenticator, one claiming another client, more requests than the cluster's
  ``batch_requests_max``, or bytes that are no batch at all (section 4.2:
  backups accept a PRE-PREPARE only for valid requests);
* ``pbft_clock_ahead``: as primary, stamps every batch an hour ahead (signed;
  backups bound a stamp by their own clocks, ADR 0015, or keys would expire an
  hour early);
* ``pbft_wrong_digest``: PREPAREs and COMMITs for a digest nobody proposed;
* ``pbft_drop_prepared``: VIEW-CHANGEs with an empty P set (a lie by omission
  the signature cannot reveal: what the 2f+1 quorums are there for);
* ``pbft_inflate_prepared``: VIEW-CHANGEs whose P set claims batches that never
  prepared (forged certificates: other batches under real PREPAREs);
* ``pbft_forge_checkpoint``: CHECKPOINTs for wrong digests, and for numbers
  far ahead (a lone voice must not trigger a state transfer);
* ``pbft_replay_old``: re-sends its messages of views that ended, after the
  view changed (they must be ignored, not re-counted);
* ``pbft_bad_state``: answers state transfer with damaged manifests and chunks
  (each must be refused on arrival, and the transfer go on with another peer);
* ``pbft_stale_reads``: answers clients with a result it gave earlier (for
  reads: a stale value, what a lagging replica would say), never what it
  executed (the read-only optimisation's 2f+1 must outvote it);
* ``pbft_lag``: holds every message back for a long while and releases it late
  (a replica lagging on purpose; its old messages arrive in newer views);
* ``pbft_lagging_reads``: answers each unordered read (section 5.1.3) as the
  correct replica that executed least would answer it now: the adversary
  sees every replica's state (it runs the network), so its lie matches a
  lagging correct replica's honest answer, and together they are f+1 stale
  votes. 2f+1 outvote them; a client accepting f+1
  (``pbft-read-only-f-plus-1``) reads a value overwritten before it asked.
  Drawn for that variant's runs, forced by name for the others.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any

from msgspec.structs import replace

from replicaio.assembly import SERVICES, TRANSACTIONAL, pbft_wire, smr_replica_of
from replicaio.core.codec import Codec, DecodeError
from replicaio.core.context import group_domain
from replicaio.core.effects import Request
from replicaio.core.signing import simulation_signer
from replicaio.core.stream import GroupOutput
from replicaio.sim import adversary
from replicaio.sim.adversary import RunView, Sends, Strategy, per_group, register_behaviour
from replicaio.smr.api import AuthenticatedRequest, ClientRequest, Reply
from replicaio.smr.messages import Batch, SignedBatch

REMEMBERED_MAX = 64
HELD_MAX = 512
LAG_US = 1_500_000
wire: Any = pbft_wire()
# PBFT and its broken variants: their runs draw these behaviours too.
# The transactional clusters of PBFT groups too: each behaviour acts in every
# group of the faulty node (``PerGroup``).
PBFT_SERVICES = tuple(name for name, spec in SERVICES.items() if spec.family == "pbft")
PBFT_FAMILY = (*PBFT_SERVICES,
               *(name for name, spec in TRANSACTIONAL.items() if spec.ordering == "pbft"))
# Those whose simulated clients always read unordered (broken ones: plain
# ``pbft:reads=1`` runs keep the schedules their seeds had).
PBFT_READERS = tuple(name for name in PBFT_SERVICES if SERVICES[name].reads)


class PbftStrategy(Strategy):
    """A PBFT behaviour: signs what it changes with its own node's key, within
    its group's signing domain on a node of several groups (``group``, set by
    ``PerGroup``; ``context.group_domain``), as the group's replica signs: its
    re-signed messages verify in that group (and in no other)."""

    def __init__(self, node: int, n: int, rng: random.Random) -> None:
        super().__init__(node, n, rng)
        self.signer = simulation_signer(node, n)

    def signed(self, message: Any) -> Any:
        data = group_domain(self.group, wire.signed_bytes(message))
        return replace(message, signature=self.signer.sign(data))


class Equivocate(PbftStrategy):
    """Another batch at the same number for half of the backups."""

    def __init__(self, node: int, n: int, rng: random.Random) -> None:
        super().__init__(node, n, rng)
        self.lied_to = adversary.half_the_others(node, n, rng)
        self.batches: deque[bytes] = deque(maxlen=REMEMBERED_MAX)

    def rewrite(self, destination: int, message: Any) -> Sends:
        if type(message) is not wire.PrePrepare:
            return [(destination, message)]
        if message.batch and message.batch not in self.batches:
            self.batches.append(message.batch)
        if destination not in self.lied_to:
            return [(destination, message)]
        others = [batch for batch in self.batches if batch != message.batch]
        batch = self.rng.choice(others) if others and self.rng.random() < 0.7 else b""
        lie = replace(message, batch=batch, digest=wire.digest_of(batch))
        return [(destination, self.signed(lie))]


class SilentPrimary(PbftStrategy):
    def rewrite(self, destination: int, message: Any) -> Sends:
        if type(message) in (wire.PrePrepare, wire.NewView):
            return []
        return [(destination, message)]


class Censor(PbftStrategy):
    """Nulls every batch of one client (the first seen in a batch)."""

    def __init__(self, node: int, n: int, rng: random.Random) -> None:
        super().__init__(node, n, rng)
        self.victim: int | None = None
        self.codec = Codec(frame_bytes_max=1 << 24)

    def clients(self, batch: bytes) -> set[int]:
        try:
            decoded = self.codec.decode(batch)
        except DecodeError:
            return set()
        if type(decoded) is SignedBatch:
            return {carried.request.client for carried in decoded.requests}
        if type(decoded) is Batch:
            return {request.client for request in decoded.requests}
        return set()

    def rewrite(self, destination: int, message: Any) -> Sends:
        if type(message) is not wire.PrePrepare or not message.batch:
            return [(destination, message)]
        clients = self.clients(message.batch)
        if self.victim is None and clients:
            self.victim = min(clients)
        if self.victim in clients:
            null = replace(message, batch=b"", digest=wire.NULL_DIGEST)
            return [(destination, self.signed(null))]
        return [(destination, message)]


class InvalidBatch(PbftStrategy):
    """Turns every client batch it proposes into one that must not be ordered."""

    REQUESTS_OVER = 65  # above SmrConstants.batch_requests_max (64)

    def __init__(self, node: int, n: int, rng: random.Random) -> None:
        super().__init__(node, n, rng)
        self.codec = Codec(frame_bytes_max=1 << 24)
        self.lie: dict[tuple[int, int], Any] = {}  # (view, seq) -> the same lie for all
        self.made = 0  # lies made: each kind in turn

    def corrupt(self, batch: bytes) -> bytes | None:
        try:
            decoded = self.codec.decode(batch)
        except DecodeError:
            return None
        if type(decoded) is not SignedBatch or not decoded.requests:
            return None
        first = decoded.requests[0]
        kind = self.made % 4
        self.made += 1
        if kind == 0:  # a forged authenticator
            forged = replace(first, authenticator=bytes(len(first.authenticator) or 16))
            requests = (forged, *decoded.requests[1:])
        elif kind == 1:  # another client's request under this one's authenticator
            other = replace(first.request, client=first.request.client ^ 1)
            requests = (replace(first, request=other), *decoded.requests[1:])
        elif kind == 2:  # more requests than a batch may hold
            requests = (first,) * self.REQUESTS_OVER
        else:
            return b"\x01not a batch" + batch[:32]
        return self.codec.encode(replace(decoded, requests=requests))

    def rewrite(self, destination: int, message: Any) -> Sends:
        if type(message) is not wire.PrePrepare or not message.batch:
            return [(destination, message)]
        key = (message.view, message.seq)
        lie = self.lie.get(key)
        if lie is None:
            batch = self.corrupt(message.batch)
            if batch is None:
                return [(destination, message)]
            if len(self.lie) >= REMEMBERED_MAX:
                del self.lie[next(iter(self.lie))]
            lie = self.lie[key] = self.signed(
                replace(message, batch=batch, digest=wire.digest_of(batch))
            )
        return [(destination, lie)]


class ClockAhead(PbftStrategy):
    """Moves the time stamp of every batch it proposes ``AHEAD_MS`` forward."""

    AHEAD_MS = 3_600_000

    def __init__(self, node: int, n: int, rng: random.Random) -> None:
        super().__init__(node, n, rng)
        self.codec = Codec(frame_bytes_max=1 << 24)

    def rewrite(self, destination: int, message: Any) -> Sends:
        if type(message) is not wire.PrePrepare or not message.batch:
            return [(destination, message)]
        try:
            decoded = self.codec.decode(message.batch)
        except DecodeError:
            return [(destination, message)]
        if not isinstance(decoded, (Batch, SignedBatch)) or decoded.time_ms <= 0:
            return [(destination, message)]
        batch = self.codec.encode(replace(decoded, time_ms=decoded.time_ms + self.AHEAD_MS))
        lie = replace(message, batch=batch, digest=wire.digest_of(batch))
        return [(destination, self.signed(lie))]


class WrongDigest(PbftStrategy):
    def rewrite(self, destination: int, message: Any) -> Sends:
        if type(message) in (wire.Prepare, wire.Commit) and self.rng.random() < 0.7:
            wrong = replace(message, digest=wire.digest_of(message.digest + b"~"))
            return [(destination, self.signed(wrong))]
        return [(destination, message)]


class DropPrepared(PbftStrategy):
    def rewrite(self, destination: int, message: Any) -> Sends:
        if type(message) is wire.ViewChange and message.prepared:
            return [(destination, self.signed(replace(message, prepared=())))]
        return [(destination, message)]


class InflatePrepared(PbftStrategy):
    """Claims other batches under the real certificates' PREPAREs, and numbers
    that never prepared (the PREPAREs' signatures then do not match)."""

    def rewrite(self, destination: int, message: Any) -> Sends:
        if type(message) is not wire.ViewChange:
            return [(destination, message)]
        forged = []
        for proof in message.prepared:
            batch = proof.pre_prepare.batch + b"~"
            pre_prepare = replace(proof.pre_prepare, batch=batch, digest=wire.digest_of(batch))
            forged.append(replace(proof, pre_prepare=pre_prepare))
        if forged and len(forged) < 8:
            last = forged[-1]
            later = replace(last.pre_prepare, seq=last.pre_prepare.seq + 1)
            forged.append(replace(last, pre_prepare=later))
        return [(destination, self.signed(replace(message, prepared=tuple(forged))))]


class ForgeCheckpoint(PbftStrategy):
    def rewrite(self, destination: int, message: Any) -> Sends:
        if type(message) is not wire.Checkpoint:
            return [(destination, message)]
        wrong = replace(message, digest=wire.digest_of(message.digest + b"~"))
        ahead = replace(message, seq=message.seq * (2 + self.rng.randrange(4)))
        return [(destination, self.signed(wrong)), (destination, self.signed(ahead))]


class ReplayOld(PbftStrategy):
    """Keeps its signed messages; once the view moved on, re-sends old ones."""

    def __init__(self, node: int, n: int, rng: random.Random) -> None:
        super().__init__(node, n, rng)
        self.old: deque[Any] = deque(maxlen=REMEMBERED_MAX)
        self.view = 0

    def rewrite(self, destination: int, message: Any) -> Sends:
        view = getattr(message, "view", None)
        if type(view) is int:
            self.view = max(self.view, view)
            if len(self.old) < REMEMBERED_MAX or self.rng.random() < 0.1:
                self.old.append(message)
        return [(destination, message)]

    def attack(self, view: RunView) -> Sends:
        stale = [message for message in self.old if message.view < self.view]
        if not stale or self.rng.random() > 0.2:
            return []
        return [(self.peer(view), self.rng.choice(stale)) for _ in range(2)]


class StaleReads(PbftStrategy):
    """Every reply to a client carries a result this replica gave earlier (on a
    node of several groups too: its groups' replies, inside ``GroupOutput``)."""

    def __init__(self, node: int, n: int, rng: random.Random) -> None:
        super().__init__(node, n, rng)
        self.results: deque[bytes] = deque(maxlen=REMEMBERED_MAX)
        self.codec = Codec()

    def rewrite_output(self, output: Any) -> Any:
        if type(output) is GroupOutput:
            try:
                inner = self.codec.decode(output.body)
            except DecodeError:
                return output
            lie = self.rewrite_output(inner) if type(inner) is Reply else inner
            return output if lie is inner else replace(output, body=self.codec.encode(lie))
        if type(output) is not Reply:
            return output
        honest = output.result
        others = [result for result in self.results if result != honest]
        if honest not in self.results:
            self.results.append(honest)
        if not others:
            return output
        return replace(output, result=self.rng.choice(others))


class LaggingReads(PbftStrategy):
    """Answers every unordered read as the correct replica that executed least
    would: its state machine's answer to the same command, now."""

    def __init__(self, node: int, n: int, rng: random.Random) -> None:
        super().__init__(node, n, rng)
        self.codec = Codec()
        self.reads: dict[tuple[int, int], bytes] = {}  # (client, seq) -> command
        self.view: RunView | None = None

    def observe_input(self, event: Any) -> None:
        if type(event) is not Request or not isinstance(event.payload, bytes):
            return
        try:
            message = self.codec.decode(event.payload)
        except DecodeError:
            return
        request = message.request if type(message) is AuthenticatedRequest else message
        if type(request) is ClientRequest and request.unordered:
            if len(self.reads) >= REMEMBERED_MAX:
                del self.reads[next(iter(self.reads))]
            self.reads[(request.client, request.seq)] = request.command

    def attack(self, view: RunView) -> Sends:
        self.view = view
        return []

    def rewrite_output(self, output: Any) -> Any:
        if type(output) is not Reply:
            return output
        command = self.reads.pop((output.client, output.seq), None)
        lagging = self.lagging()
        if command is None or lagging is None:
            return output
        return replace(output, result=lagging.state_machine.read(command))

    def lagging(self) -> Any:
        """The SMR replica of the up correct replica that applied least."""
        view = self.view
        if view is None:
            return None
        replicas = [
            replica for replica in (
                smr_replica_of(core.protocol) for core in
                (view.cores[node] for node in view.correct) if core is not None
            ) if replica is not None
        ]
        return min(replicas, key=lambda replica: replica.applied, default=None)


class BadState(PbftStrategy):
    """Flips a byte in every state-transfer answer it sends."""

    def rewrite(self, destination: int, message: Any) -> Sends:
        if type(message) is not wire.StateReply or not message.data:
            return [(destination, message)]
        data = bytearray(message.data)
        data[self.rng.randrange(len(data))] ^= 0x01
        return [(destination, replace(message, data=bytes(data)))]


class Lag(PbftStrategy):
    """Everything leaves ``LAG_US`` late, at most ``HELD_MAX`` held."""

    def __init__(self, node: int, n: int, rng: random.Random) -> None:
        super().__init__(node, n, rng)
        self.held: deque[tuple[int, int, Any]] = deque()
        self.now = 0

    def rewrite(self, destination: int, message: Any) -> Sends:
        if len(self.held) >= HELD_MAX:
            return []
        self.held.append((self.now + LAG_US, destination, message))
        return []

    def attack(self, view: RunView) -> Sends:
        self.now = view.now
        out: Sends = []
        while self.held and self.held[0][0] <= view.now:
            _, destination, message = self.held.popleft()
            out.append((destination, message))
        return out


for _name, _factory, _summary, _weight in (
    ("pbft_equivocate", Equivocate, "as primary, another batch at one number for half", 0.3),
    ("pbft_silent_primary", SilentPrimary, "send no PRE-PREPARE and no NEW-VIEW", 0.2),
    ("pbft_censor", Censor, "as primary, null every batch of one client", 0.2),
    ("pbft_invalid_batch", InvalidBatch, "as primary, batches with forged or too many requests",
     0.2),
    ("pbft_clock_ahead", ClockAhead, "as primary, stamp batches an hour ahead", 0.1),
    ("pbft_wrong_digest", WrongDigest, "PREPARE and COMMIT for a wrong digest", 0.2),
    ("pbft_drop_prepared", DropPrepared, "VIEW-CHANGE with an empty P set", 0.3),
    ("pbft_inflate_prepared", InflatePrepared, "VIEW-CHANGE with forged prepared batches", 0.2),
    ("pbft_forge_checkpoint", ForgeCheckpoint, "CHECKPOINT for wrong digests and far numbers",
     0.2),
    ("pbft_replay_old", ReplayOld, "re-send messages of views that ended", 0.2),
    ("pbft_bad_state", BadState, "damaged state-transfer manifests and chunks", 0.1),
    ("pbft_lag", Lag, "hold every message back 1.5 s (a replica lagging on purpose)", 0.1),
    # Never drawn (weight 0: the seeds' schedules stay as they were), forced by name.
    ("pbft_stale_reads", StaleReads, "answer clients with results given earlier", 0.0),
):
    register_behaviour(_name, per_group(_factory), _summary, protocols=PBFT_FAMILY,
                       weight=_weight)
# Drawn for runs whose clients always read unordered, forcible in any run.
register_behaviour(
    "pbft_lagging_reads", LaggingReads,
    "answer unordered reads as the correct replica that executed least would",
    protocols=PBFT_READERS, weight=0.5,
)

