"""Broken variants of the broadcast family: a quorum below the bound.

Each is the protocol's one-instance function with one quorum lowered to
f + 1, so an equivocating Byzantine sender splits the correct nodes; the
broadcast checker must report agreement or totality.
"""

from __future__ import annotations

from replicaio.core.config import Resilience
from replicaio.core.context import Context
from replicaio.core.lines import first
from replicaio.protocols.broadcast import BroadcastSpec


async def bracha_weak_echo(node: Context, sender: int, value: bytes | None = None) -> bytes:
    """Bracha with READY after only f + 1 ECHOs (the bound is ceil((n + f + 1) / 2))."""
    f = node.f
    send, echo, ready = node.links("SEND", "ECHO", "READY")
    if value is not None:
        send.to_all(value)

    async def echo_the_send() -> None:
        echo.to_all(await send.from_peer(sender))

    async def ready_once_justified() -> None:
        justified = await first(echo.quorum(f + 1), ready.quorum(f + 1))
        ready.to_all(justified)

    async with node.scope() as scope:
        scope.spawn(echo_the_send())
        scope.spawn(ready_once_justified())
        delivered: bytes = await ready.quorum(2 * f + 1)
        return delivered


async def consistent_weak(node: Context, sender: int, value: bytes | None = None) -> bytes:
    """Consistent broadcast delivering on f + 1 echoes (the bound is more than (n + f) / 2)."""
    send, echo = node.links("SEND", "ECHO")
    if value is not None:
        send.to_all(value)

    async def echo_the_send() -> None:
        echo.to_all(await send.from_peer(sender))

    node.spawn(echo_the_send())
    delivered: bytes = await echo.quorum(node.f + 1)
    return delivered


BROADCAST_VARIANTS: dict[str, BroadcastSpec] = {
    spec.name: spec
    for spec in (
        BroadcastSpec(
            "bracha-weak-echo", bracha_weak_echo, Resilience.BYZANTINE, agreement=True,
            totality=True, broken=True,
            summary="BROKEN on purpose: Bracha with an echo quorum of f+1",
        ),
        BroadcastSpec(
            "echo-weak", consistent_weak, Resilience.BYZANTINE, agreement=True,
            totality=False, broken=True,
            summary="BROKEN on purpose: consistent broadcast delivering on f+1 echoes",
        ),
    )
}
