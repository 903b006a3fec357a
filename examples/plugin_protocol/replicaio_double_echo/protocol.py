"""Authenticated double-echo broadcast (Cachin, Guerraoui, Rodrigues,
*Introduction to Reliable and Secure Distributed Programming*, Alg. 3.18;
Bracha 1987), written as a replicaio plug-in (docs/tutorial.md).

Fault model: at most f Byzantine nodes out of n >= 3f + 1, authenticated
links. Claims, for every instance: validity, no duplication, integrity,
consistency (no two correct nodes deliver different values) and totality (if
one correct node delivers, every correct node does).

The sender sends its value (SEND). A node echoes the first SEND it gets from
the sender (ECHO). It says READY for a value once more than (n + f) / 2 nodes
echoed it, or once f + 1 nodes said READY for it (then a correct node did). It
delivers once 2f + 1 nodes said READY. replicaio ships the same algorithm as
``bracha``: compare the two.
"""

from __future__ import annotations

from replicaio.core.context import Context
from replicaio.core.lines import first


def echo_quorum(n: int, f: int) -> int:
    """More than (n + f) / 2: two such quorums share a correct node."""
    return (n + f) // 2 + 1


async def double_echo(node: Context, sender: int, value: bytes | None = None) -> bytes:
    """One instance: the value ``sender`` broadcast, once this node delivers it."""
    n, f = node.n, node.f
    send, echo, ready = node.links("SEND", "ECHO", "READY")
    if value is not None:  # this node is the sender
        send.to_all(value)

    async def echo_the_send() -> None:
        echo.to_all(await send.from_peer(sender))

    async def ready_once_justified() -> None:
        # Either cause may come first: a choice point the host resolves.
        justified = await first(echo.quorum(echo_quorum(n, f)), ready.quorum(f + 1))
        ready.to_all(justified)

    async with node.scope() as scope:
        scope.spawn(echo_the_send())
        scope.spawn(ready_once_justified())
        delivered: bytes = await ready.quorum(2 * f + 1)
        return delivered
