"""Client authentication: the one place SMR checks who sent a request.

With crash-fault protocols (Raft) clients are trusted and a request is taken
as it comes (:class:`TrustedClients`). With Byzantine protocols (PBFT,
MinBFT) a request arrives wrapped with a signature or a MAC vector, and SMR
checks it *before* batching: a forged request never reaches the ordering
protocol. The check is an interface, so the simulator can use a fast
deterministic stand-in and the live runtime real cryptography (see
``docs/adr/0005-smr-ordering-interface.md``).
"""

from __future__ import annotations

from typing import Any, Protocol

from replicaio.smr.api import ClientRequest


class ClientAuthenticator(Protocol):
    """Turns a client's payload into a request SMR may execute.

    Called by the replica for every ``Request`` input, synchronously, in the
    step; must be deterministic (same payload, same answer). Returns the
    request, or a stable rejection reason (``"unauthenticated"``,
    ``"bad_request"``...) used as a counter label. When the payload is
    recognisably a request whose authenticator is wrong, return the reason
    and let :meth:`claimed` name it, so the client hears ``Rejected``.
    """

    def authenticate(self, payload: Any) -> ClientRequest | str:
        """The authenticated request inside ``payload``, or why it is refused."""
        ...

    def claimed(self, payload: Any) -> ClientRequest | None:
        """The request ``payload`` claims to carry (unverified), if it has one."""
        ...


class TrustedClients:
    """Crash-fault model: clients are who they say they are."""

    def authenticate(self, payload: Any) -> ClientRequest | str:
        if type(payload) is not ClientRequest:
            return "bad_request"
        return payload

    def claimed(self, payload: Any) -> ClientRequest | None:
        return payload if type(payload) is ClientRequest else None
