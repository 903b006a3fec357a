"""The broadcast interface: what every broadcast protocol outputs, and what it claims.

Every protocol of the broadcast family (``replicaio.protocols.broadcast``)
outputs :class:`Accepted` and :class:`Delivered`; the checkers
(``replicaio.check.broadcast``), the hosts and clients read them from here,
without importing a protocol. :class:`BroadcastClaims` is the part of a
protocol's description the checkers hold it to.
"""

from __future__ import annotations

from typing import Annotated, Protocol

from replicaio.core.codec import Message, Meta

VALUE_BYTES_MAX = 1 << 20  # a broadcast value, at most (the wire bound)


class Delivered(Message, tag="Delivered"):
    """Output: ``value`` was delivered as instance ``seq`` of ``sender``.

    ``recovered`` marks a re-announcement after a restart: the delivery record
    was durable but the node may have crashed before the output left. An
    application keeping a durable cursor skips those it has seen; deliveries
    are thereby exactly-once per ``(sender, seq)`` for it.
    """

    sender: int
    seq: int
    value: Annotated[bytes, Meta(max_length=VALUE_BYTES_MAX)]
    recovered: bool = False


class Accepted(Message, tag="Accepted"):
    """Output: this node durably accepted ``value`` for broadcast as its instance ``seq``."""

    sender: int
    seq: int
    value: Annotated[bytes, Meta(max_length=VALUE_BYTES_MAX)]


class StorageLost(Message, tag="StorageLost"):
    """Output: this node's storage lost writes it may have acted on (``Start.damaged``),
    so it no longer takes part: it sends nothing new, delivers nothing and
    accepts no broadcast, for good (see ``replicaio.protocols.broadcast.instances``).
    From here on it counts as a faulty node, against the protocol's f."""

    incarnation: int


class BroadcastClaims(Protocol):
    """The properties a broadcast protocol claims beyond integrity, no
    duplication and validity (which every one of them claims)."""

    @property
    def name(self) -> str: ...

    @property
    def agreement(self) -> bool:
        """No two correct nodes deliver different values for one instance."""
        ...

    @property
    def totality(self) -> bool:
        """If a correct node delivers an instance, every correct node does."""
        ...
