"""Reliable one-shot delivery between nodes: retransmission, acks, Hello resync.

The "perfect link" of the textbooks, for the crash-recovery model, below
every protocol (why here and not per protocol: ADR 0003). The node core
(:mod:`replicaio.core.node`) owns one :class:`ReliableLinks` and hands it
every link value a component sends, every acknowledgement and every Hello:

* every link message is retransmitted on the node's tick, with exponential
  back-off, until the destination acknowledges it; acknowledgements are
  batched per peer and flushed on the tick (:class:`Acks`);
* at each start a node announces its incarnation (:class:`Hello`, itself
  retransmitted until acknowledged); a peer that sees a new incarnation
  re-sends everything it still retains for that node, because the restarted
  node lost what it had received;
* what a component sent is retained until the protocol forgets the component
  (garbage collection after delivery), durably when its link is durable, and
  rebuilt from those records at a restart.

Guarantees, for messages between correct nodes: a message sent on a link is
delivered at least once to the destination's component (the router below
drops duplicates into one-shot links) as long as both nodes eventually stay
up and connected, and a restarted node receives again everything its peers
had sent it and still retain. Bounds: ``NodeParams.unacked_max`` retained
messages per peer (beyond it a message is sent once, not retained, and
``bound_unacked_max`` is counted), ``acks_per_message_max`` items per
:class:`Acks`. Nothing here reads a clock or does I/O: time is the tick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from replicaio.core.codec import Message, Meta, Name, Value
from replicaio.core.context import ALL, Link
from replicaio.core.effects import Path

if TYPE_CHECKING:
    from replicaio.core.node import Node

LINK_MARK = "#link:"


def hello_key(incarnation: int) -> tuple[tuple[int | str, ...], str]:
    """Hello's slot in acks. Keyed by incarnation: an ack still owed for a
    node's previous Hello must not cancel the retransmission of its new one."""
    return ((), f"hello:{incarnation}")


PATH_LENGTH_MAX = 64  # the wire bound; NodeParams.path_length_max is at most this
ACKS_PER_MESSAGE_MAX = 1 << 16  # the wire bound; NodeParams.acks_per_message_max likewise
WirePath = Annotated[tuple[int | Name, ...], Meta(max_length=PATH_LENGTH_MAX)]


class Envelope(Message, tag="Envelope"):
    """A one-shot link message: component path, channel name, body."""

    path: WirePath
    channel: Name
    body: Value


class Acks(Message, tag="Acks"):
    """Acknowledges link messages: (path, channel) pairs received from the addressee."""

    items: Annotated[tuple[tuple[WirePath, Name], ...], Meta(max_length=ACKS_PER_MESSAGE_MAX)]


class Hello(Message, tag="Hello"):
    """Announces that the sender (re)started; peers re-send what it may have lost."""

    incarnation: int


class Unacked(msgspec.Struct):
    """A retained message to one peer, awaiting acknowledgement (a struct: one
    is made per message sent to a peer, and a struct is built several times
    faster than a class with an ``__init__``)."""

    envelope: Envelope | Hello
    due_tick: int
    attempts: int = 0


class ReliableLinks:
    """The reliable-link state of one incarnation of a node; see the module docstring."""

    # Exactly the attributes its ``.pxd`` declares, in that order: compiled it has
    # no ``__dict__`` (a ``cpdef`` method's override check is then free, ADR 0041),
    # and interpreted it refuses an undeclared attribute just the same. Unsorted: the
    # adversary's probe reads them in this order (sim/adversary.py: attributes).
    __slots__ = (  # noqa: RUF023
        "node", "sent", "unacked", "acks_pending", "peer_incarnations", "tick", "codec",
        "node_id", "nodes", "unacked_max", "retransmit_after_ticks",
    )

    def __init__(self, node: Node) -> None:
        self.node = node
        nodes = node.config.nodes
        # path -> (channel, destination) -> envelope: what each component sent.
        self.sent: dict[Path, dict[tuple[str, int], Envelope]] = {}
        self.unacked: list[dict[tuple[Path, str], Unacked]] = [{} for _ in nodes]
        self.acks_pending: list[dict[tuple[Path, str], None]] = [{} for _ in nodes]
        self.peer_incarnations: list[int] = [0 for _ in nodes]
        self.tick = 0
        # The node's, read on every send (an incarnation's node never changes them).
        self.codec = node.codec
        self.node_id = node.node_id
        self.nodes = nodes
        self.unacked_max = node.params.unacked_max
        self.retransmit_after_ticks = node.params.retransmit_after_ticks

    def due_tick(self) -> int:
        # +1: a message sent just before a tick still waits full tick intervals.
        return self.tick + self.node.params.retransmit_after_ticks + 1

    # -- start -----------------------------------------------------------------

    def announce(self, incarnation: int) -> None:
        """Send (reliably: a restart nobody hears of would strand the node) a Hello."""
        node = self.node
        hello = Hello(incarnation)
        due = self.due_tick()
        for peer in node.config.nodes:
            if peer != node.node_id:
                self.unacked[peer][hello_key(incarnation)] = Unacked(hello, due)
                node.effects.sends.append((peer, hello))

    def restore_sent(self) -> None:
        """Rebuild what durable links had sent, and queue it for every peer again."""
        node = self.node
        storage = node.storage
        for key in sorted(storage):
            mark = key.find(LINK_MARK)
            if mark < 0:
                continue
            path = node.parse_path(key[:mark])
            channel, _, destination_text = key[mark + len(LINK_MARK) :].rpartition(":")
            destination = int(destination_text)
            body = node.codec.decode_value(storage[key])
            targets = node.config.nodes if destination == ALL else (destination,)
            envelope = Envelope(path, channel, body)
            for target in targets:
                self.remember_and_send(target, envelope)

    def restore_link(self, link: Link[Any]) -> None:
        """After a restart, a re-created link learns what it had sent (no resend:
        :meth:`restore_sent` already queued it)."""
        sent = self.sent.get(link.path)
        if not sent:
            return
        node_id = self.node.node_id
        values = {
            destination: envelope.body
            for (channel, destination), envelope in sent.items()
            if channel == link.name and destination != node_id
        }
        if not values:
            return
        bodies = list(values.values())
        if len(values) == self.node.config.n - 1 and all(body == bodies[0] for body in bodies):
            link.sent[ALL] = bodies[0]
        else:
            link.sent.update(values)

    # -- receiving -------------------------------------------------------------

    def acknowledge(self, source: int, path: Path, channel: str) -> None:
        """Owe ``source`` an acknowledgement of ``(path, channel)`` (sent on the tick)."""
        if source != self.node.node_id:
            self.acks_pending[source][(path, channel)] = None

    def on_acks(self, source: int, acks: Acks) -> None:
        unacked = self.unacked[source]
        for item in acks.items:
            unacked.pop(item, None)

    def on_hello(self, source: int, hello: Hello) -> None:
        node = self.node
        self.acks_pending[source][hello_key(hello.incarnation)] = None
        if hello.incarnation <= self.peer_incarnations[source]:
            node.count("hello_stale")
            return
        first_contact = self.peer_incarnations[source] == 0
        self.peer_incarnations[source] = hello.incarnation
        if first_contact and hello.incarnation == 1:
            return  # a fresh node has lost nothing
        node.count("peer_restarts_seen")
        sends = node.effects.sends
        for sent in self.sent.values():
            for (_, destination), envelope in sent.items():
                if destination == source:
                    self.retain(source, envelope)
                    sends.append((source, envelope))

    # -- sending ---------------------------------------------------------------

    def send(self, link: Link[Any], destination: int, body: Any, persist: bool) -> None:
        """Send a link value (called by :class:`Link`), durably first when asked."""
        node = self.node
        path = link.path
        channel = link.name
        if persist:
            prefix = link.storage_prefix_cached or link.storage_prefix()
            key = f"{prefix}link:{channel}:{destination}"
            node.persist(key, self.codec.encode_value(body))
        # One frozen message for every target: retained, sent and encoded once.
        envelope = Envelope(path, channel, body)
        sent = self.sent.get(path)
        if sent is None:
            sent = self.sent[path] = {}
        node_id = self.node_id
        sends = node.effects.sends
        unacked_by_peer = self.unacked
        unacked_max = self.unacked_max
        due = self.tick + self.retransmit_after_ticks + 1  # due_tick(), inlined
        retained_key = (path, channel)
        for target in self.nodes if destination == ALL else (destination,):
            sent[(channel, target)] = envelope
            if target == node_id:
                node.local.append(envelope)
                continue
            # What remember_and_send and retain do, inlined for the hot path.
            unacked = unacked_by_peer[target]
            if len(unacked) >= unacked_max:
                node.count("bound_unacked_max")
            else:
                unacked[retained_key] = Unacked(envelope, due)
            sends.append((target, envelope))

    def remember_and_send(self, destination: int, envelope: Envelope) -> None:
        sent = self.sent.get(envelope.path)
        if sent is None:
            sent = self.sent[envelope.path] = {}
        sent[(envelope.channel, destination)] = envelope
        node = self.node
        if destination == node.node_id:
            node.local.append(envelope)
            return
        self.retain(destination, envelope)
        node.effects.sends.append((destination, envelope))

    def retain(self, destination: int, envelope: Envelope) -> None:
        unacked = self.unacked[destination]
        if len(unacked) >= self.node.params.unacked_max:
            self.node.count("bound_unacked_max")
            return
        unacked[(envelope.path, envelope.channel)] = Unacked(envelope, self.due_tick())

    def forget(self, path: Path) -> None:
        """Drop what ``path`` sent: retained copies and their retransmissions."""
        sent = self.sent.pop(path, None)
        if sent:
            for channel, destination in sent:
                self.unacked[destination].pop((path, channel), None)

    # -- the tick --------------------------------------------------------------

    def has_unacked(self) -> bool:
        return any(self.unacked)

    def has_acks_pending(self) -> bool:
        return any(self.acks_pending)

    def on_tick(self) -> None:
        """Flush owed acknowledgements and retransmit what is due (with back-off)."""
        node = self.node
        params = node.params
        sends = node.effects.sends
        self.tick += 1
        batch = params.acks_per_message_max
        for peer, pending in enumerate(self.acks_pending):
            if not pending:
                continue
            items = list(pending)
            pending.clear()
            for offset in range(0, len(items), batch):
                sends.append((peer, Acks(tuple(items[offset : offset + batch]))))
        for peer, unacked in enumerate(self.unacked):
            for entry in unacked.values():
                if entry.due_tick > self.tick:
                    continue
                entry.attempts += 1
                exponent = min(entry.attempts, params.backoff_exponent_max)
                entry.due_tick = self.tick + params.retransmit_after_ticks * (1 << exponent)
                sends.append((peer, entry.envelope))
                node.count("retransmissions")
