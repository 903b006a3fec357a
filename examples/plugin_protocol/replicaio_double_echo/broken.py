"""A planted bug, kept apart from the protocol (a test-support module): READY
after only f + 1 ECHOs instead of more than (n + f) / 2. An equivocating
Byzantine sender then gets two values READY at different correct nodes, and
the checkers must report agreement (or totality)."""

from __future__ import annotations

from replicaio.core.config import Resilience
from replicaio.core.context import Context
from replicaio.core.lines import first
from replicaio.protocols.broadcast import BroadcastSpec


async def double_echo_weak(node: Context, sender: int, value: bytes | None = None) -> bytes:
    """``double_echo`` with the ECHO quorum lowered to f + 1 (BROKEN on purpose)."""
    f = node.f
    send, echo, ready = node.links("SEND", "ECHO", "READY")
    if value is not None:
        send.to_all(value)

    async def echo_the_send() -> None:
        echo.to_all(await send.from_peer(sender))

    async def ready_once_justified() -> None:
        justified = await first(echo.quorum(f + 1), ready.quorum(f + 1))  # the bug
        ready.to_all(justified)

    async with node.scope() as scope:
        scope.spawn(echo_the_send())
        scope.spawn(ready_once_justified())
        delivered: bytes = await ready.quorum(2 * f + 1)
        return delivered


def weak_spec() -> BroadcastSpec:
    """The protocol ``double-echo-weak``: claims what ``double-echo`` claims."""
    return BroadcastSpec(
        "double-echo-weak", double_echo_weak, Resilience.BYZANTINE,
        agreement=True, totality=True, broken=True, vouch_link="READY",
        summary="BROKEN on purpose: double-echo with READY after f+1 ECHOs",
    )
