"""What a connection's SMR request may come back as, and the client ids it uses.

Each connection has its own SMR client ids, unique across the cluster and across
restarts (:func:`smr_client_id`); a request is answered by the node's outputs
(a reply, a refusal, a redirection) settling the connection's :class:`Waiter`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

from replicaio.services.kv.resp import RespError
from replicaio.smr.auth import NODE_CLIENT_INCARNATION_BITS, node_client_id

CLIENT_BITS: Final = 30  # SMR client ids per incarnation of a node
NODE_BITS: Final = 10  # NODES_MAX = 1024
CLIENT_IDS_MAX: Final = 1 << CLIENT_BITS
# Refusals after which the same request may be sent again (it was not executed).
RETRYABLE: Final = frozenset({"busy", "read_timeout", "no_quorum", "not_leader"})
# A write whose outcome is unknown is ``-UNKNOWN``, never ``-TRYAGAIN``: a Redis
# client (redis-py's cluster client, redis-cli's scripts) takes TRYAGAIN as
# "nothing happened" and sends the write again as a new one, so an INCR whose
# answer was lost would apply twice. A read refused for the same reasons had no
# effect and stays TRYAGAIN. (The transactions across groups answer -UNKNOWN
# alike: ``sharded.unknown_outcome``.)
EXPIRED_ERROR: Final = RespError(
    "UNKNOWN session expired: this node's session for the connection was evicted "
    "(the write may have taken effect)"
)
NOT_REGISTERED_ERROR: Final = RespError(
    "TRYAGAIN no session: the connection's session could not be registered in time "
    "(nothing was applied)"
)
READ_EXPIRED_ERROR: Final = RespError(
    "TRYAGAIN session expired: this node's session for the connection was evicted "
    "(a read has no effect)"
)


def smr_client_id(incarnation: int, node_id: int, number: int) -> int:
    """A client id no other connection of the cluster ever had: the node's
    incarnation grows at every start, so a restarted node never reuses one. It is
    one the node may vouch for (``replicaio.smr.auth.node_client_id``): on a
    Byzantine fault tolerant cluster the front signs its requests as the node."""
    assert 0 <= node_id < 1 << NODE_BITS
    assert 0 <= number < CLIENT_IDS_MAX
    return node_client_id(incarnation % (1 << NODE_CLIENT_INCARNATION_BITS), node_id, number)



class Retry:
    """Outcome: send the same request again (after ``delay``)."""

    __slots__ = ("delay",)

    def __init__(self, delay: bool) -> None:
        self.delay = delay


RETRY_NOW: Final = Retry(False)
RETRY_LATER: Final = Retry(True)


class SessionExpired:
    """Outcome: SMR had no session for the client (evicted) and did not run it."""

    __slots__ = ()


SESSION_EXPIRED: Final = SessionExpired()
Outcome = bytes | Retry | RespError | SessionExpired


class Waiter:
    """The one request a connection has in SMR: its outcome settles ``future`` (a
    task awaits it) or goes to ``on_outcome`` at once (no task: the front's
    common path, ``service.Flight``). (A plain class: a dataclass's ``__init__``
    is interpreted even where this module is compiled, and one is made per
    request.)"""

    __slots__ = ("future", "on_outcome", "seq")

    def __init__(self, seq: int, future: asyncio.Future[Outcome] | None = None,
                 on_outcome: Callable[[Outcome], None] | None = None) -> None:
        self.seq = seq
        self.future = future
        self.on_outcome = on_outcome

    def settle(self, outcome: Outcome) -> None:
        if self.on_outcome is not None:
            self.on_outcome(outcome)
        elif self.future is not None:
            settle(self.future, outcome)


def settle(future: asyncio.Future[Outcome], outcome: Outcome) -> None:
    if not future.done():
        future.set_result(outcome)

