"""A broken client authenticator: what ADR 0028's proposer rule must not become.

ADR 0028 lets a backup take the requests a proposal's own author vouches for
(its in-node clients', ``replicaio.smr.auth.node_client_id``) on the signed
proposal alone: the author holds its own key and could sign them anyway.
:class:`TrustEveryVouched` takes *every* node-vouched request of a proposal
without its signature, whichever node the request names: a Byzantine primary
can then put requests "from" another node's in-node clients into its batches
(act under their sessions, write for them) and correct backups prepare them.
``tests/test_vouched_by_proposer.py`` shows the real rule refusing what this
one lets through. The simulator's clients sign with their own keys (not
node-vouched), so the swarm does not reach this check: the test is its guard.
"""

from __future__ import annotations

from replicaio.smr.api import AuthenticatedRequest
from replicaio.smr.auth import NODE_KEY_BYTES, NODE_KEY_PREFIX, SignedClients


class TrustEveryVouched(SignedClients):
    """Every node-vouched request in a proposal taken unchecked (broken)."""

    def check_proposed(self, carried: AuthenticatedRequest, proposer: int) -> bool:
        key = carried.key
        if len(key) == NODE_KEY_BYTES and key.startswith(NODE_KEY_PREFIX):
            return True
        return self.check(carried)
