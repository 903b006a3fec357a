"""Catch-up: a node that fell behind takes delivered values attested by f + 1 peers.

Why it exists. :class:`~replicaio.protocols.broadcast.instances.Instances`
forgets an instance (its state, and the retransmissions it still owed) once
``retained_max`` newer instances of that sender are delivered. A correct node
that lags further (a long crash, a long partition, a lossy link while the
sender broadcasts quickly) would then wait for messages nobody sends any
more, and validity and totality would fail for it: the simulator's long
profile found exactly that (docs/simulation.md).

What it does. Every node keeps the *delivery records* (the delivered values)
of the ``archived_max`` most recently collected instances of each sender, on
top of the retained ones. A node that sees it is behind on a sender (an
undelivered instance at its watermark while later ones are delivered, or a
peer's message beyond its window) and stays so for a whole
``interval_us``, asks every peer: ``Fetch(sender, first)``. A peer answers
with ``Archived(sender, seq, value)`` for up to ``fetch_batch_max`` records it
holds from ``first`` on, and with ``Gone(sender, below)`` when it no longer
holds ``first``. The lagging node delivers ``(sender, seq)`` once ``f + 1``
distinct peers sent the same value. A protocol may also say which of its own
messages a delivery vouches for (``vouch_link``): in Bracha a correct node
delivers ``v`` only after it sent ``READY(v)``, so a peer's ``Archived(v)``
counts as its ``READY(v)`` in the lagging node's instance. That closes the
case where fewer than f + 1 correct nodes delivered before forgetting the
instance, while the READYs they sent were lost to a partition (found by the
long profile, seed 47).

Why f + 1 is safe. Among f + 1 distinct senders at least one is correct, and
a correct node only archives a value it delivered. So the value is one a
correct node delivered: with agreement (``bracha``, ``echo``) it is the only
value any correct node delivers for that instance, and with a correct sender
(integrity) it is the sender's value. A Byzantine peer's ``Archived`` alone
never delivers anything.

Guarantee and limit (fault model: at most f Byzantine nodes, crash-recovery
with durable storage, links that eventually deliver after healing). A correct
node that lags by fewer than ``retained_max + archived_max`` instances of a
sender catches up once f + 1 correct peers that delivered them are
reachable. A node that lags by more hears ``Gone``: it counts
``broadcast_catchup_gone`` and stays behind on that sender (validity and
totality do not hold for it), because nobody holds those values any more;
an application needing more keeps its own state and transfers it.

Bounds: votes are kept only for instances inside the node's window (at most
``n * window_max`` instances with one value per peer); a ``Fetch`` is
answered with at most ``fetch_batch_max`` records.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from replicaio.core.codec import Message, Meta
from replicaio.interfaces.broadcast import VALUE_BYTES_MAX

if TYPE_CHECKING:
    from replicaio.protocols.broadcast.instances import Instances

CATCHUP_INTERVAL_US = 200_000
FETCH_BATCH_MAX = 16


class Fetch(Message, tag="bcast.Fetch"):
    """Please send what you hold of ``sender``'s instances from ``first`` on."""

    sender: int
    first: int


class Archived(Message, tag="bcast.Archived"):
    """I delivered ``value`` as instance ``seq`` of ``sender``."""

    sender: int
    seq: int
    value: Annotated[bytes, Meta(max_length=VALUE_BYTES_MAX)]


class Gone(Message, tag="bcast.Gone"):
    """I no longer hold any of ``sender``'s instances below ``below``."""

    sender: int
    below: int


class CatchUp:
    """The catch-up side of one :class:`Instances`; see the module docstring."""

    def __init__(
        self,
        owner: Instances,
        *,
        interval_us: int = CATCHUP_INTERVAL_US,
        fetch_batch_max: int = FETCH_BATCH_MAX,
    ) -> None:
        self.owner = owner
        self.context = owner.context
        self.interval_us = interval_us
        self.fetch_batch_max = fetch_batch_max
        self.stream = self.context.stream(Fetch, Archived, Gone, handler=self.on_message)
        # (sender, seq) -> peer -> the value it attested
        self.votes: dict[tuple[int, int], dict[int, bytes]] = {}
        self.beyond_window: set[int] = set()  # senders a peer is ahead of us on
        self.suspects: set[int] = set()
        self.stuck_at: dict[int, int] = {}  # sender -> watermark at the last look
        self.watching = False

    # -- noticing that we are behind ----------------------------------------

    def first_missing(self, sender: int) -> int:
        """``sender``'s lowest instance this node has not delivered."""
        owner = self.owner
        delivered = owner.delivered[sender]
        seq = owner.low[sender]
        while seq in delivered:
            seq += 1
        return seq

    def behind(self, sender: int) -> bool:
        """An instance of ``sender`` is undelivered while a later one is
        delivered, or a peer already talks beyond our window."""
        if sender in self.beyond_window:
            return True
        owner = self.owner
        delivered = owner.delivered[sender]
        # Every key of ``delivered`` is a distinct seq >= low: the highest is
        # past the first missing one exactly when there is a gap, when fewer
        # keys than low..highest (first_missing's walk, without the walk).
        return bool(delivered) and max(delivered) - owner.low[sender] >= len(delivered)

    def suspect(self, sender: int, *, beyond_window: bool = False) -> None:
        """Evidence that this node may be behind on ``sender``: watch it."""
        if beyond_window:
            self.beyond_window.add(sender)
        if sender in self.suspects or not self.behind(sender):
            return
        self.suspects.add(sender)
        if not self.watching:
            self.watching = True
            self.context.spawn(self.watch(), "catchup")

    async def watch(self) -> None:
        """Every ``interval_us`` while some sender is suspect: ask for what a
        sender's watermark has been stuck at since the last look."""
        while self.suspects:
            await self.context.sleep(self.interval_us)
            for sender in sorted(self.suspects):
                self.owner.collect(sender)  # deliveries of earlier steps may go now
                if not self.behind(sender):
                    self.suspects.discard(sender)
                    self.stuck_at.pop(sender, None)
                    continue
                first = self.first_missing(sender)
                if self.stuck_at.get(sender) == first:
                    self.context.count("broadcast_catchup_fetches")
                    self.stream.send_all(Fetch(sender, first))
                self.stuck_at[sender] = first
        self.watching = False

    def advanced(self, sender: int) -> None:
        """``sender``'s watermark moved: forget votes below it (and the
        evidence of a peer beyond the old window: the window moved too)."""
        low = self.owner.low[sender]
        self.beyond_window.discard(sender)
        for key in [key for key in self.votes if key[0] == sender and key[1] < low]:
            del self.votes[key]

    # -- messages ------------------------------------------------------------

    def on_message(self, source: int, message: Any) -> None:
        if not 0 <= message.sender < self.context.n:
            self.context.count("ignored_catchup_bad_sender")
            return
        if type(message) is Fetch:
            self.on_fetch(source, message)
        elif type(message) is Archived:
            self.on_archived(source, message)
        else:
            self.on_gone(message)

    def on_fetch(self, source: int, fetch: Fetch) -> None:
        owner = self.owner
        sender = fetch.sender
        first = max(fetch.first, 0)
        archive_low = owner.archive_low(sender)
        if first < archive_low:
            self.context.count("broadcast_catchup_gone_sent")
            self.stream.send(source, Gone(sender, archive_low))
            first = archive_low
        served = 0
        for seq in range(first, first + self.fetch_batch_max):
            value = owner.archived_value(sender, seq)
            if value is not None:
                self.stream.send(source, Archived(sender, seq, value))
                served += 1
        self.context.count("broadcast_catchup_served", served)

    def on_archived(self, source: int, archived: Archived) -> None:
        owner = self.owner
        sender, seq = archived.sender, archived.seq
        low = owner.low[sender]
        if not low <= seq < low + owner.window_max or seq in owner.delivered[sender]:
            self.context.count("ignored_catchup_not_needed")
            return
        votes = self.votes.setdefault((sender, seq), {})
        if source in votes:
            self.context.count("ignored_catchup_repeated")
            return
        votes[source] = archived.value
        matching = sum(1 for value in votes.values() if value == archived.value)
        if matching >= self.context.f + 1:
            del self.votes[(sender, seq)]
            self.context.count("broadcast_catchup_delivered")
            owner.deliver_caught_up(sender, seq, archived.value)
        else:
            owner.vouch(sender, seq, source, archived.value)

    def on_gone(self, gone: Gone) -> None:
        if gone.below > self.owner.low[gone.sender]:
            # Only counted: one peer's word cannot skip anything, and a lag
            # beyond every archive cannot be repaired by this component.
            self.context.count("broadcast_catchup_gone")
