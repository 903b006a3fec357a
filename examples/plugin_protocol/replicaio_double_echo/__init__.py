"""A replicaio protocol plug-in: authenticated double-echo broadcast.

``double_echo_spec`` is what the entry point ``double-echo`` of the group
``replicaio.protocols`` (pyproject.toml) refers to: the instance function and
the properties the protocol claims, which the simulator's checkers hold it to.
"""

from __future__ import annotations

from replicaio.core.config import Resilience
from replicaio.protocols.broadcast import BroadcastSpec
from replicaio_double_echo.protocol import double_echo


def double_echo_spec() -> BroadcastSpec:
    """The protocol ``double-echo``, for replicaio's registry."""
    return BroadcastSpec(
        "double-echo",
        double_echo,
        Resilience.BYZANTINE,  # n >= 3f + 1, checked before any node starts
        agreement=True,  # no two correct nodes deliver different values
        totality=True,  # one correct node delivers: every correct node does
        summary="authenticated double-echo broadcast (plug-in), n >= 3f+1",
        vouch_link="READY",  # a delivery vouches for the node's READY (catch-up)
    )
