"""ADR 0028: a proposal's author vouches for its own in-node clients' requests.

A backup validating a PBFT PRE-PREPARE takes the requests its primary vouches
for (``node_client_id`` of the primary, key ``node_key(primary)``) on the
PRE-PREPARE's signature, without checking their own; every other request,
including one vouched for by another node, is checked as before. Node-vouched
requests are not checked again at execution (a correct replica validated the
batch); client-signed ones are. The broken variant that trusts every
node-vouched request lets a Byzantine primary act for another node's clients.
"""

from __future__ import annotations

from test_smr import CODEC, write
from test_smr_bft import bft_cluster

from replicaio.core.signing import simulation_signer
from replicaio.smr.api import AuthenticatedRequest, ClientRequest
from replicaio.smr.auth import (
    KEYED,
    KeyedClientSigner,
    NodeClientSigner,
    SignedClients,
    node_client_id,
    node_key,
)
from replicaio.smr.messages import SignedBatch
from replicaio.testing.variants.smr_auth import TrustEveryVouched

N = 4


def vouched(node: int, seq: int, value: bytes) -> AuthenticatedRequest:
    """A request of ``node``'s in-node client, signed by ``node``."""
    client = node_client_id(1, node, 5)
    return NodeClientSigner(CODEC, simulation_signer(node, N)).wrap(
        write(client, seq, "put", b"k", value))


def forged(node: int, seq: int, value: bytes) -> AuthenticatedRequest:
    """The same, with a signature ``node`` never made (a primary's invention)."""
    request = vouched(node, seq, value)
    return AuthenticatedRequest(request.request, request.key, bytes(32))


def authenticator(backup: int) -> SignedClients:
    return SignedClients(CODEC, KEYED, nodes=simulation_signer(backup, N))


def test_the_proposer_vouches_for_its_own_clients_only() -> None:
    checks = authenticator(1)
    # Signed by its node: valid however it arrives.
    assert checks.check(vouched(2, 1, b"v"))
    assert checks.check_proposed(vouched(2, 1, b"v"), 0)
    # Unsigned (a bad signature) but vouched for by the proposer itself: taken on
    # the proposal's signature, since the proposer could have signed it anyway...
    assert not checks.check(forged(0, 1, b"v"))
    assert checks.check_proposed(forged(0, 1, b"v"), 0)
    # ...but never for another node's clients, nor a key that names another node.
    assert not checks.check_proposed(forged(2, 1, b"v"), 0)
    request = forged(0, 1, b"v")
    renamed = AuthenticatedRequest(request.request, node_key(2), request.authenticator)
    assert not checks.check_proposed(renamed, 0)
    other_client = AuthenticatedRequest(
        ClientRequest(node_client_id(1, 2, 5), 1, request.request.command, False),
        node_key(0), request.authenticator)
    assert not checks.check_proposed(other_client, 0)
    # A client-signed request is checked whoever proposes it.
    keyed = KeyedClientSigner(CODEC, 7).wrap(write(7, 1, "put", b"k", b"v"))
    assert checks.check_proposed(keyed, 0)
    bad = AuthenticatedRequest(keyed.request, b"", bytes(32))
    assert not checks.check_proposed(bad, 0)


def test_the_broken_variant_lets_a_primary_act_for_another_nodes_clients() -> None:
    broken = TrustEveryVouched(CODEC, KEYED, nodes=simulation_signer(1, N))
    assert broken.check_proposed(forged(2, 1, b"v"), 0)  # what the real rule refuses
    assert not authenticator(1).check_proposed(forged(2, 1, b"v"), 0)


def test_a_backup_validates_a_batch_against_its_proposer() -> None:
    cluster = bft_cluster(mode="manual")
    replica = cluster.protocol(1).replica
    own = CODEC.encode(SignedBatch(0, 1, 0, (forged(0, 2, b"own"),)))
    assert replica.validate_batch(own, 0)
    assert not replica.validate_batch(own, 3)  # proposed by another: checked, refused
    assert not replica.validate_batch(own)  # no proposer (a relay): checked, refused
    theirs = CODEC.encode(SignedBatch(0, 1, 0, (forged(2, 2, b"theirs"),)))
    assert not replica.validate_batch(theirs, 0)
    assert cluster.counter(1, "smr_validate_unauthenticated") == 3


def test_node_vouched_requests_are_not_checked_again_at_execution() -> None:
    checks = authenticator(3)
    assert checks.check_committed(forged(0, 1, b"v"))  # validated before it committed
    keyed = KeyedClientSigner(CODEC, 7).wrap(write(7, 1, "put", b"k", b"v"))
    assert checks.check_committed(keyed)
    assert not checks.check_committed(AuthenticatedRequest(keyed.request, b"", bytes(32)))
