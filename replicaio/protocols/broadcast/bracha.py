"""Bracha's reliable broadcast (Bracha 1987; Cachin, Guerraoui, Rodrigues,
*Introduction to Reliable and Secure Distributed Programming*, Alg. 3.18).

Tolerates f Byzantine nodes out of n >= 3f + 1 over authenticated links.
Claims, for every instance: validity (a correct sender's value is delivered
by every correct node), no duplication, integrity (with a correct sender,
only its value is delivered), consistency (no two correct nodes deliver
different values) and totality (if one correct node delivers, all do).

The instance below is the whole protocol. The two causes for READY run
concurrently because they depend on different data; which fires first when
both are possible is a choice point. Leaving the scope cancels whatever is
still waiting. Multi-instance operation, retransmission and restart are the
business of :mod:`replicaio.protocols.broadcast.instances` and the node core.
"""

from __future__ import annotations

from replicaio.core.config import intersecting_quorum
from replicaio.core.context import Context, Link
from replicaio.core.lines import first


async def bracha(node: Context, sender: int, value: bytes | None = None) -> bytes:
    """Reliable broadcast of one value from ``sender``; needs n >= 3f + 1."""
    n, f = node.n, node.f
    send, echo, ready = node.links("SEND", "ECHO", "READY")
    if value is not None:
        send.to_all(value)
    async with node.scope() as scope:
        scope.spawn(echo_the_send(send, echo, sender))
        scope.spawn(ready_once_justified(echo, ready, n, f))
        delivered: bytes = await ready.quorum(2 * f + 1)
        return delivered


# The two tasks of an instance, at module level rather than nested in
# ``bracha``: compiled (ADR 0034), a nested function shares the coroutine's
# closure, which holds the function in turn, so every finished instance was a
# reference cycle (its links, lines, scope and context) left for the cyclic
# collector: 17 % of a compiled run's CPU, none interpreted (sim23).


async def echo_the_send(send: Link[bytes], echo: Link[bytes], sender: int) -> None:
    echo.to_all(await send.from_peer(sender))


async def ready_once_justified(echo: Link[bytes], ready: Link[bytes], n: int, f: int) -> None:
    justified = await first(echo.quorum(intersecting_quorum(n, f)), ready.quorum(f + 1))
    ready.to_all(justified)
