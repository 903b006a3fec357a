"""Bracha's reliable broadcast (Bracha 1987; Cachin, Guerraoui, Rodrigues,
*Introduction to Reliable and Secure Distributed Programming*, Alg. 3.18).

Tolerates f Byzantine nodes out of n >= 3f + 1 over authenticated links.
Claims, for every instance: validity (a correct sender's value is delivered
by every correct node), no duplication, integrity (with a correct sender,
only its value is delivered), consistency (no two correct nodes deliver
different values) and totality (if one correct node delivers, all do).

The instance below is the whole protocol, the paper's three rules as one
task that waits for whichever of their conditions it does not yet hold:
ECHO the sender's SEND; READY a value once ceil((n + f + 1) / 2) ECHOs or
f + 1 READYs carry it; deliver once 2f + 1 READYs carry one. When both
causes for READY hold (with different values, from a Byzantine sender),
which one counts is a choice point. The rules are checked in that order at
every wake-up, so a node READYs before it delivers (2f + 1 READYs hold f + 1);
delivering ends the instance: an ECHO not yet sent is no longer needed (f + 1
correct nodes have sent READY, enough to make every correct node READY).
Multi-instance operation, retransmission and restart are the business of
:mod:`replicaio.protocols.broadcast.instances` and the node core.

One task, not one per rule (sim32, ADR 0056): the three rules as three tasks
cost two more tasks, a scope and their coroutines per instance and node,
about a tenth of a simulated run's instructions; the rules and their
quorums are the same.
"""

from __future__ import annotations

from typing import Any

from replicaio.core.config import intersecting_quorum
from replicaio.core.context import Context
from replicaio.core.lines import AnyOf, Line, first_set


async def bracha(node: Context, sender: int, value: bytes | None = None) -> bytes:
    """Reliable broadcast of one value from ``sender``; needs n >= 3f + 1."""
    n, f = node.n, node.f
    send, echo, ready = node.links("SEND", "ECHO", "READY")
    if value is not None:
        send.to_all(value)
    the_send: Line[bytes] | None = send.from_peer(sender)  # None once echoed
    echoes: Line[bytes] = echo.quorum(intersecting_quorum(n, f))
    readies: Line[bytes] | None = ready.quorum(f + 1)  # None once READY is sent
    delivery: Line[bytes] = ready.quorum(2 * f + 1)
    while True:
        if the_send is not None and the_send.ready:
            echo.to_all(the_send.value())
            the_send = None
        if readies is not None and (echoes.ready or readies.ready):
            ready.to_all(first_set(echoes, readies))
            readies = None
        if delivery.ready:  # its 2f + 1 READYs hold f + 1: READY was sent above
            delivered: bytes = delivery.value()
            return delivered
        # What the rules not yet taken wait for: the SEND until echoed, either
        # cause for READY until sent, then the delivery's READYs.
        waited: tuple[Line[Any], ...] = (echoes, readies) if readies is not None else (delivery,)
        if the_send is not None:
            await AnyOf((the_send, *waited))
        elif readies is None:
            await delivery
        else:
            await AnyOf(waited)
