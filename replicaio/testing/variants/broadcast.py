"""Broken variants of the broadcast family.

A quorum below the bound: the protocol's one-instance function with one
quorum lowered to f + 1, so an equivocating Byzantine sender splits the
correct nodes; the broadcast checker must report agreement or totality.

Planted in the multi-instance runner (an :class:`Instances` subclass), for
the adversary's two rules (docs/adversary.md):

* ``bracha-opens-own``: the escaped bug of issue 7: a peer's message for this
  node's own next instance opens it early, without a value; the owner's later
  ``broadcast()`` runs a second copy and both deliver, so the "instance
  delivered twice" assertion fails inside ``Node.step`` (``node-raised``);
* ``bracha-unwindowed``: no window: a peer's message for *any* sequence
  number opens an instance, so a Byzantine peer makes a correct node hold
  ever more of them (``bounded-memory``, under ``--adversary flood``);
* ``bracha-watermark-last``: the other escaped bug of issue 7: collection
  erases the delivered records before it saves the advanced watermark, so a
  crash inside a collecting step restarts with the old watermark and no
  record, and a peer's re-send delivers the instance again
  (``no-duplication``; the crash-prefix mode, ``replicaio.sim.prefixes``, with
  the archive off as before the fix);
* ``bracha-collects-fresh``: collection passes an instance delivered in the
  same step, so a crash keeping the step's new watermark but not its output
  loses that delivery (the long profile's crashes aimed at heavy steps);
* ``bracha-trust-damaged-disk``: ignores ``Start.damaged`` and goes on after
  its storage lost writes, as before issue 9: it delivers again what it had
  delivered (``no-duplication``, under ``--faults crash,disk``).
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar, cast

from replicaio.core.config import Resilience, intersecting_quorum
from replicaio.core.context import Context, Link
from replicaio.core.lines import AnyOf, Line
from replicaio.core.scheduler import Task
from replicaio.protocols.broadcast import BroadcastSpec, Instances
from replicaio.protocols.broadcast.bracha import bracha
from replicaio.protocols.broadcast.echo import consistent
from replicaio.testing.variants.instances import CollectsFreshInstances, WatermarkLastInstances

T = TypeVar("T")


async def bracha_weak_echo(node: Context, sender: int, value: bytes | None = None) -> bytes:
    """Bracha's own one task (``bracha.bracha``, ADR 0056) with READY after only
    f + 1 ECHOs (the bound is ceil((n + f + 1) / 2)): the shipped code, handed a
    node whose ECHO link answers every quorum with one of f + 1."""
    return await bracha(cast(Context, WeakEchoNode(node)), sender, value)


class WeakEchoNode:
    """``node`` as ``bracha-weak-echo`` and ``echo-weak`` show it to the shipped
    instance function: the same links and tasks, but the ECHO quorum it asks for
    is f + 1 ECHOs (the planted bug)."""

    def __init__(self, node: Context) -> None:
        self.node = node
        self.n = node.n
        self.f = node.f

    def links(self, *names: str) -> tuple[Link[Any] | WeakQuorum, ...]:
        return tuple(WeakQuorum(link, self.f + 1) if link.name == "ECHO" else link
                     for link in self.node.links(*names))

    def spawn(self, coroutine: Coroutine[Any, Any, T], name: str = "") -> Task[T]:
        return self.node.spawn(coroutine, name)


class WeakQuorum:
    """A link whose every quorum is ``size`` peers, whatever count is asked."""

    def __init__(self, link: Link[Any], size: int) -> None:
        self.link = link
        self.size = size

    def to_all(self, value: Any) -> None:
        self.link.to_all(value)

    def quorum(self, count: int) -> Line[Any]:
        return self.link.quorum(self.size)


async def bracha_spins(node: Context, sender: int, value: bytes | None = None) -> bytes:
    """Bracha's one task (``bracha.bracha``) with the f + 1 READY rule dropped from
    its condition but its line still awaited: once f + 1 READYs arrive before
    enough ECHOs, the await returns at once and the loop spins inside one step
    (the core's livelock bound must fail it: ``node-raised``, not a hung run)."""
    n, f = node.n, node.f
    send, echo, ready = node.links("SEND", "ECHO", "READY")
    if value is not None:
        send.to_all(value)
    the_send: Line[bytes] | None = send.from_peer(sender)
    echoes: Line[bytes] = echo.quorum(intersecting_quorum(n, f))
    readies: Line[bytes] | None = ready.quorum(f + 1)
    delivery: Line[bytes] = ready.quorum(2 * f + 1)
    while True:
        if the_send is not None and the_send.ready:
            echo.to_all(the_send.value())
            the_send = None
        if readies is not None and echoes.ready:  # the bug: "or readies.ready" dropped
            ready.to_all(echoes.value())
            readies = None
        if delivery.ready:
            delivered: bytes = delivery.value()
            return delivered
        waited: tuple[Line[Any], ...] = (echoes, readies) if readies is not None else (delivery,)
        if the_send is not None:
            await AnyOf((the_send, *waited))
        else:
            await AnyOf(waited)


async def consistent_weak(node: Context, sender: int, value: bytes | None = None) -> bytes:
    """Consistent broadcast (``echo.consistent``, the shipped function) delivering
    on f + 1 echoes (the bound is more than (n + f) / 2): handed a node whose
    ECHO link answers every quorum with one of f + 1."""
    return await consistent(cast(Context, WeakEchoNode(node)), sender, value)


class OpensOwnInstances(Instances):
    """BROKEN on purpose: opens this node's own instances on a peer's message
    (``Instances.on_unknown`` as shipped, but for its own-instance decision)."""

    def peer_may_open(self, sender: int) -> bool:
        return True


class TrustDamagedDisk(Instances):
    """BROKEN on purpose: takes part as usual after its storage lost writes."""

    def lost_writes(self) -> bool:
        return False


class Unwindowed(Instances):
    """BROKEN on purpose: opens an instance for any sequence number above ``low``
    (``Instances.on_unknown`` as shipped, but for its window check)."""

    def beyond_window(self, sender: int, seq: int) -> bool:
        return False


BROADCAST_VARIANTS: dict[str, BroadcastSpec] = {
    spec.name: spec
    for spec in (
        BroadcastSpec(
            "bracha-weak-echo", bracha_weak_echo, Resilience.BYZANTINE, agreement=True,
            totality=True, broken=True,
            summary="BROKEN on purpose: Bracha with an echo quorum of f+1",
        ),
        BroadcastSpec(
            "bracha-spins", bracha_spins, Resilience.BYZANTINE, agreement=True,
            totality=True, broken=True,
            summary="BROKEN on purpose: Bracha's loop spins once f+1 READYs come before "
            "its ECHO quorum",
        ),
        BroadcastSpec(
            "echo-weak", consistent_weak, Resilience.BYZANTINE, agreement=True,
            totality=False, broken=True,
            summary="BROKEN on purpose: consistent broadcast delivering on f+1 echoes",
        ),
        BroadcastSpec(
            "bracha-opens-own", bracha, Resilience.BYZANTINE, agreement=True, totality=True,
            broken=True, runner=OpensOwnInstances, vouch_link="READY",
            summary="BROKEN on purpose: a peer's message opens this node's own next instance",
        ),
        BroadcastSpec(
            "bracha-unwindowed", bracha, Resilience.BYZANTINE, agreement=True, totality=True,
            broken=True, runner=Unwindowed, window_max=16, retained_max=8,
            vouch_link="READY",
            summary="BROKEN on purpose: instances open beyond the window (unbounded)",
        ),
        BroadcastSpec(
            "bracha-trust-damaged-disk", bracha, Resilience.BYZANTINE, agreement=True,
            totality=True, broken=True, runner=TrustDamagedDisk, vouch_link="READY",
            summary="BROKEN on purpose: goes on as usual after its storage lost writes",
        ),
        BroadcastSpec(
            "bracha-watermark-last", bracha, Resilience.BYZANTINE, agreement=True,
            totality=True, broken=True, runner=WatermarkLastInstances, vouch_link="READY",
            window_max=4, retained_max=2, archived_max=0,
            summary="BROKEN on purpose: collection erases before it saves the watermark",
        ),
        BroadcastSpec(
            "bracha-collects-fresh", bracha, Resilience.BYZANTINE, agreement=True,
            totality=True, broken=True, runner=CollectsFreshInstances, vouch_link="READY",
            summary="BROKEN on purpose: collection passes an instance delivered in the "
            "same step",
        ),
    )
}
