"""Many broadcast instances at once: senders, sequence numbers, windows, GC.

A one-instance broadcast (``bracha``, ``echo``, ``beb``) is an ``async``
function ``instance(context, sender, value) -> delivered value``. This
component runs many of them: every node may broadcast, each sender numbers
its instances 0, 1, 2, ..., and each instance ``(sender, seq)`` lives at the
child path ``(sender, seq)`` of this component.

* Instances are created lazily: by a local broadcast request, or by the first
  message that arrives for them, if ``seq`` is inside the sender's window
  ``[low, low + window_max)``. Messages beyond the window are not
  acknowledged, so the sender retransmits them once the window has moved
  (backpressure); messages for delivered or collected instances are
  acknowledged and dropped.
* A delivery is recorded durably, so it is never delivered twice, even across
  restarts. The instance itself stays open after delivery: tasks it spawned
  into its own context (not into an ``async with`` scope) keep running, because
  others may count on them (consistent broadcast's ECHO). What it sent stays
  retained so that a restarted peer can still catch up. The oldest delivered
  instances beyond ``retained_max`` per sender are closed and forgotten, and
  the sender's ``low`` watermark advances over them; their delivery records
  (the values) stay archived for ``archived_max`` more instances.
* A node that fell behind further than that catches up from the archives:
  a delivered value attested by f + 1 peers (:mod:`.catchup`).
* After a restart the component rebuilds itself from durable state: the
  watermarks, the delivered records, and the instances in progress (those
  whose links had sent something), which are resumed.
* **A node whose storage lost writes** (``Start.damaged``: a lost tail, a
  flipped bit, a misdirected write) may have forgotten any of the latest: a
  delivery record (it would deliver again), what its links sent (it could
  ECHO or READY a different value than before, or, as a sender, reuse a
  sequence number for a new value), a watermark. It cannot tell which, so it
  **abstains for good** (durably, key ``abstain``, written in the start step
  before the damage is cleared): it opens no instance, sends nothing new,
  delivers nothing (not even its surviving records again), takes no
  broadcast request (``storage_lost``), and outputs :class:`StorageLost`.
  What it still retains of its own past sends is retransmitted: those are
  true. It thus behaves like a crashed node, and counts against f with the
  Byzantine ones (the simulator gives faulty disks to at most f minus the
  Byzantine nodes); the checkers stop holding it to validity and totality.
  Rejoining would need a fresh identity (not built).

Outputs (the broadcast interface, :mod:`replicaio.interfaces.broadcast`):
one :class:`Accepted` per broadcast request taken (durable: the value is on
disk before the output leaves), one :class:`Delivered` per delivery, after its
record is durable.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from replicaio.core.context import Context, Ignore
from replicaio.core.effects import Path
from replicaio.core.errors import ConfigError
from replicaio.interfaces.broadcast import VALUE_BYTES_MAX, Accepted, Delivered, StorageLost
from replicaio.protocols.broadcast.catchup import CatchUp

InstanceFunction = Callable[[Context, int, Any], Coroutine[Any, Any, Any]]
ABSTAIN_KEY = "abstain"  # durable: this node lost writes and no longer takes part


class Instances:
    """Runs sequence-numbered instances of a one-shot broadcast for every sender."""

    # Exactly the attributes its ``.pxd`` declares, in that order: compiled it has no
    # dict, so its ``cpdef`` methods are C calls without an override check (ADR 0041);
    # a variant (a subclass, ``replicaio.testing.variants``) has a dict of its own.
    __slots__ = (  # noqa: RUF023
        "context", "instance", "window_max", "retained_max", "archived_max", "vouch_link",
        "low", "delivered", "active", "next_seq", "abstaining", "step_effects",
        "step_deliveries", "catchup",
    )

    def __init__(
        self,
        context: Context,
        instance: InstanceFunction,
        *,
        window_max: int = 64,
        retained_max: int = 32,
        archived_max: int = 96,
        vouch_link: str | None = None,
    ) -> None:
        if window_max < 1 or retained_max < 0 or archived_max < 0:
            raise ConfigError(
                "window_max must be >= 1, retained_max and archived_max >= 0"
            )
        if retained_max >= window_max:
            # Deliveries live in [low, low + window_max): with retained_max >=
            # window_max, collection never starts, low never moves, and every
            # sender stalls for good after window_max instances.
            raise ConfigError(
                f"retained_max ({retained_max}) must be < window_max ({window_max})"
            )
        self.context = context
        self.instance = instance
        self.window_max = window_max
        self.retained_max = retained_max
        self.archived_max = archived_max
        self.vouch_link = vouch_link
        n = context.n
        self.low = [0] * n  # every seq below low[s] is delivered and forgotten
        self.delivered: list[dict[int, None]] = [{} for _ in range(n)]  # seq >= low
        self.active: list[dict[int, Context]] = [{} for _ in range(n)]
        self.next_seq = 0
        self.abstaining = False  # the storage lost writes: see the module docstring
        # Deliveries of the step in progress (keyed by its effects object): their
        # outputs leave only if the step completes, so collection must not pass them.
        self.step_effects: object = None
        self.step_deliveries: set[tuple[int, int]] = set()
        context.on_unknown_child(self.on_unknown)
        self.catchup = CatchUp(self)

    # -- start and restart ---------------------------------------------------

    def start(self) -> None:
        """Rebuild from durable state and resume the instances in progress."""
        context = self.context
        if self.lost_writes():
            self.abstain()
            return
        for sender in range(context.n):
            self.low[sender] = int(context.load(f"low:{sender}") or 0)
        recovered = []
        for name in context.stored_names("delivered:"):
            _, sender_text, seq_text = name.split(":")
            recovered.append((int(sender_text), int(seq_text), name))
        # numeric order: each sender's deliveries are re-announced by sequence number
        for sender, seq, name in sorted(recovered):
            if seq < self.archive_low(sender):
                # a crash during collection, after the watermark was saved
                self.context.erase(name)
            elif seq < self.low[sender]:
                pass  # archived: kept for peers that fell behind (catch-up)
            else:
                self.delivered[sender][seq] = None
                value = context.load(name)
                context.output(Delivered(sender, seq, value, recovered=True))
        prefix_length = len(context.path)
        in_progress: list[tuple[int, int]] = []
        stale: list[tuple[int, int]] = []  # sent below the watermark: collected
        for path in context.node.reliable.sent:
            if path[:prefix_length] != context.path or len(path) != prefix_length + 2:
                continue
            found_sender = path[prefix_length]
            found_seq = path[prefix_length + 1]
            assert isinstance(found_sender, int)
            assert isinstance(found_seq, int)
            delivered = self.delivered[found_sender]
            if found_seq < self.low[found_sender]:
                stale.append((found_sender, found_seq))
            elif found_seq not in delivered:
                in_progress.append((found_sender, found_seq))
        for sender, seq in sorted(stale):
            context.child(sender, seq).forget()
        mine = [seq for sender, seq in in_progress if sender == context.id]
        mine += list(self.delivered[context.id])
        self.next_seq = max([self.low[context.id]] + [seq + 1 for seq in mine])
        for sender, seq in sorted(in_progress):
            self.open(sender, seq, None)
        # Delivered but retained instances run again, already delivered: what
        # they owe the others (an ECHO not yet sent) must survive the crash.
        for sender in range(context.n):
            for seq in sorted(self.delivered[sender]):
                self.open(sender, seq, None, delivered=True)
            self.catchup.suspect(sender)

    def lost_writes(self) -> bool:
        """Whether this node's storage lost writes, now or at an earlier start."""
        return self.context.node.storage_damaged or self.context.load(ABSTAIN_KEY) is not None

    def abstain(self) -> None:
        """Take no further part (see the module docstring); durable in this step."""
        context = self.context
        self.abstaining = True
        if context.load(ABSTAIN_KEY) is None:
            context.persist(ABSTAIN_KEY, 1)
            context.count("broadcast_storage_lost_abstaining")
        context.output(StorageLost(context.node.incarnation))

    # -- requests and lazily created instances -------------------------------

    def broadcast(self, value: Any) -> str | None:
        """Start broadcasting ``value`` as this node's next instance, or say why not."""
        if not isinstance(value, bytes):
            return "not_bytes"
        if len(value) > VALUE_BYTES_MAX:
            return "too_large"
        if self.abstaining:
            return "storage_lost"
        me = self.context.id
        seq = self.next_seq
        if seq >= self.low[me] + self.window_max:
            self.collect(me)  # what an earlier step delivered may go now
        if seq >= self.low[me] + self.window_max:
            return "window_full"
        self.next_seq += 1
        self.open(me, seq, value)
        self.context.output(Accepted(me, seq, value))
        return None

    def on_unknown(self, rest: Path) -> Context | Ignore:
        if len(rest) != 2:
            return Ignore("bad_instance_path", acknowledge=False)
        sender, seq = rest
        if self.abstaining:
            return Ignore("storage_lost", acknowledge=True)
        if type(sender) is not int or type(seq) is not int or not 0 <= sender < self.context.n:
            return Ignore("bad_instance_path", acknowledge=False)
        if seq < self.low[sender] or seq in self.delivered[sender]:
            return Ignore("instance_delivered", acknowledge=True)
        if self.beyond_window(sender, seq):
            self.catchup.suspect(sender, beyond_window=True)
            return Ignore("instance_beyond_window", acknowledge=False)
        if not self.peer_may_open(sender):
            return Ignore("own_instance_not_opened", acknowledge=False)
        return self.open(sender, seq, None)

    # The two decisions of ``on_unknown`` that a broken variant overrides, each alone
    # (``replicaio.testing.variants.broadcast``): called only for a message of an
    # instance not open here, so they cost nothing on the path of open instances.

    def beyond_window(self, sender: int, seq: int) -> bool:
        """Whether ``seq`` lies beyond ``sender``'s window ``[low, low + window_max)``
        even after collecting what earlier steps delivered; its message is then not
        acknowledged, so the sender retransmits it once the window has moved."""
        if seq >= self.low[sender] + self.window_max:
            self.collect(sender)  # what an earlier step delivered may go now
        return seq >= self.low[sender] + self.window_max

    def peer_may_open(self, sender: int) -> bool:
        """Whether a peer's message may open an instance of ``sender``: not of this
        node. Only this node opens its own instances (by a request, or at restart
        from what it sent); a peer's message for one it has not opened is a
        Byzantine peer's or a stale one: opening it early, without a value, would
        run a second copy once the request comes."""
        return sender != self.context.id

    def open(self, sender: int, seq: int, value: Any, *, delivered: bool = False) -> Context:
        instance_context = self.context.child(sender, seq)
        if not delivered:
            self.active[sender][seq] = instance_context
        instance_context.spawn(
            self.run(instance_context, sender, seq, value, delivered), f"instance{sender}.{seq}"
        )
        return instance_context

    async def run(
        self, instance_context: Context, sender: int, seq: int, value: Any, delivered: bool
    ) -> None:
        result = await self.instance(instance_context, sender, value)
        if not delivered:
            self.on_delivered(sender, seq, result)

    # -- delivery and garbage collection -------------------------------------

    def on_delivered(self, sender: int, seq: int, value: Any) -> None:
        """Record and output a delivery. The instance stays open (its remaining
        tasks keep their obligations to others) until it is collected."""
        assert seq >= self.low[sender]
        assert seq not in self.delivered[sender], "instance delivered twice"
        del self.active[sender][seq]
        self.record(sender, seq, value)

    def deliver_caught_up(self, sender: int, seq: int, value: Any) -> None:
        """Deliver ``value`` for ``(sender, seq)`` on f + 1 peers' word
        (:mod:`.catchup`); the instance, if open here, stops: its task must not
        deliver a second time."""
        assert self.low[sender] <= seq < self.low[sender] + self.window_max
        assert seq not in self.delivered[sender], "instance delivered twice"
        if self.abstaining:
            return
        instance_context = self.active[sender].pop(seq, None)
        if instance_context is not None:
            instance_context.close()
        self.record(sender, seq, value)

    def vouch(self, sender: int, seq: int, peer: int, value: bytes) -> None:
        """``peer`` says it delivered ``value`` for ``(sender, seq)``: where the
        protocol names the message a delivery vouches for (``vouch_link``),
        count it as that message from ``peer`` in the instance."""
        if self.vouch_link is None or self.abstaining:
            return
        instance_context = self.active[sender].get(seq)
        if instance_context is None:
            if sender == self.context.id:
                return  # only this node opens its own instances
            instance_context = self.open(sender, seq, None)
        instance_context.link(self.vouch_link).receive(peer, value)

    def record(self, sender: int, seq: int, value: Any) -> None:
        """The delivery record is durable before the output leaves."""
        self.delivered[sender][seq] = None
        effects = self.context.node.effects
        if effects is not self.step_effects:
            self.step_effects = effects
            self.step_deliveries = set()
        self.step_deliveries.add((sender, seq))
        self.context.persist(f"delivered:{sender}:{seq}", value)
        self.context.output(Delivered(sender, seq, value))
        self.collect(sender)
        self.catchup.suspect(sender)

    def archive_low(self, sender: int) -> int:
        """The lowest instance of ``sender`` whose delivery record is kept."""
        return max(0, self.low[sender] - self.archived_max)

    def archived_value(self, sender: int, seq: int) -> Any:
        """The delivered value of ``(sender, seq)`` if its record is kept, else ``None``."""
        if seq < self.archive_low(sender):
            return None
        if seq >= self.low[sender] and seq not in self.delivered[sender]:
            return None
        return self.context.load(f"delivered:{sender}:{seq}")

    def collect(self, sender: int) -> None:
        """Forget the oldest delivered instances beyond ``retained_max``."""
        delivered = self.delivered[sender]
        low = self.low[sender]
        fresh = self.fresh_deliveries()
        while (
            len(delivered) - (low - self.low[sender]) > self.retained_max
            and low in delivered
            and (sender, low) not in fresh
        ):
            low += 1
        if low == self.low[sender]:
            return
        self.move_watermark(sender, low)

    def fresh_deliveries(self) -> Any:
        """The ``(sender, seq)`` delivered in this very step, which collection
        never passes: a crash inside the step may keep the new watermark and
        lose the output, and below the watermark a delivery is not announced
        again at restart (long profile, aimed crash, seed 130). (A seam:
        ``replicaio.testing.variants`` plants collection past them.)"""
        if self.step_effects is self.context.node.effects:
            return self.step_deliveries
        return ()

    def move_watermark(self, sender: int, low: int) -> None:
        """Collect ``sender``'s instances below ``low``, in this write order: the
        watermark is durable before anything below it is erased, so a crash
        keeping any prefix of this step's writes restarts with the new
        watermark (and ``start`` erases what is left below it) or with the old
        one and every record intact. Never a collected instance without its
        record, which a peer's retransmission would deliver again. (A seam:
        ``replicaio.testing.variants`` plants the other order here.)"""
        self.context.persist(f"low:{sender}", low)
        self.erase_below(sender, low)

    def erase_below(self, sender: int, low: int) -> None:
        """Forget ``sender``'s instances below ``low`` and erase the records that
        fall out of the archive; the watermark in memory becomes ``low``."""
        self.context.count("broadcast_instances_collected", low - self.low[sender])
        delivered = self.delivered[sender]
        old_archive_low = self.archive_low(sender)
        for seq in range(self.low[sender], low):
            self.context.child(sender, seq).forget()
            del delivered[seq]
        self.low[sender] = low
        for seq in range(old_archive_low, self.archive_low(sender)):
            self.context.erase(f"delivered:{sender}:{seq}")
        self.catchup.advanced(sender)
