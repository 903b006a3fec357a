"""Best-effort broadcast (Cachin, Guerraoui, Rodrigues, Alg. 3.1).

The sender sends its value to everyone; each node delivers what it receives
from the sender. With reliable links (the node core retransmits until
acknowledged) it claims: validity (a correct sender's value is delivered by
every correct node), no duplication, and no creation (integrity). It claims
nothing about agreement when the sender is faulty.
"""

from __future__ import annotations

from replicaio.core.context import Context


async def best_effort(node: Context, sender: int, value: bytes | None = None) -> bytes:
    """Best-effort broadcast of one value from ``sender``."""
    (send,) = node.links("SEND")
    if value is not None:
        send.to_all(value)
    delivered: bytes = await send.from_peer(sender)
    return delivered
