"""Consistent broadcast by echoes: "authenticated echo broadcast"
(Cachin, Guerraoui, Rodrigues, Alg. 3.16; Srikanth and Toueg 1987).

Tolerates f Byzantine nodes out of n > 3f over authenticated links. Claims:
validity (a correct sender's value is delivered by every correct node), no
duplication, integrity, and consistency (no two correct nodes deliver
different values). It does NOT claim totality: with a Byzantine sender some
correct nodes may deliver while others never do.
"""

from __future__ import annotations

from replicaio.core.config import intersecting_quorum
from replicaio.core.context import Context


async def consistent(node: Context, sender: int, value: bytes | None = None) -> bytes:
    """Consistent broadcast of one value from ``sender``; needs n > 3f."""
    send, echo = node.links("SEND", "ECHO")
    if value is not None:
        send.to_all(value)

    async def echo_the_send() -> None:
        echo.to_all(await send.from_peer(sender))

    # The echo outlives the delivery (spawned into the instance, not a local
    # scope): a node may deliver on others' echoes before the SEND reaches it,
    # and the remaining correct nodes still need its echo.
    node.spawn(echo_the_send())
    delivered: bytes = await echo.quorum(intersecting_quorum(node.n, node.f))
    return delivered
