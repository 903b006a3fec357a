"""A node's vouch for an in-node request is bound to the group it is for.

In-node client ids carry no group (a node's sessions are per group), so a vouch
signed over the request alone verified in every group of the node. Found by the
swarm (``replicaio sim txn-minbft --nodes 3 --byzantine 1 --f 1 --faults
crash,partition,loss,dup,reorder --seed 50``, the Byzantine node's behaviours
``silent+forge``): the forger replayed node 1's vouched ``ack`` of group 2 into
group 1, where node 1's session had the same client id; group 1 executed it at
that (client, seq), and node 1's own next call there, a ``prepare`` at the same
seq, was answered with the ack's cached ``('ok',)``: the correct node raised
``IndexError`` reading it as a vote. The vouch is now signed within the group's
signing domain (``group_domain``), as a group's replica signs its messages.
"""

from __future__ import annotations

from test_smr import CODEC, write

from replicaio.core.signing import simulation_signer
from replicaio.sim.simulator import Simulator
from replicaio.sim.txn_harness import TxnWorkload, txn_options
from replicaio.smr.auth import KEYED, NodeClientSigner, SignedClients, node_client_id

N = 3


def test_a_vouch_for_one_group_verifies_in_that_group_only() -> None:
    request = write(node_client_id(1, 1, 1), 6, "put", b"k", b"v")
    signer = NodeClientSigner(CODEC, simulation_signer(1, N))
    checks = {group: SignedClients(CODEC, KEYED, nodes=simulation_signer(0, N), group=group)
              for group in (None, 1, 2)}
    for signed_for in (None, 1, 2):
        carried = signer.wrap(request, signed_for)
        for group, clients in checks.items():
            assert clients.check(carried) == (group == signed_for), (signed_for, group)


def test_the_swarm_seed_that_replayed_a_vouch_across_groups_passes() -> None:
    options = txn_options(50, N, ("crash", "partition", "loss", "dup", "reorder"),
                          TxnWorkload(), byzantine=1, adversary=("silent", "forge"),
                          protocol="txn-minbft")
    result = Simulator("txn-minbft", options, f=1).run()
    assert result.ok, result.violations


def test_the_swarm_catches_the_unbound_vouch_on_the_seed_it_found() -> None:
    """The old behaviour, the variant ``txn-minbft-vouch-unbound`` (vouches
    signed and checked without the group): the same run raises in a correct
    node, as the swarm found it (``replicaio swarm txn-minbft-vouch-unbound
    --nodes 3 --f 1 --byzantine 1 --adversary silent,forge --faults
    crash,partition,loss,dup,reorder``)."""
    options = txn_options(50, N, ("crash", "partition", "loss", "dup", "reorder"),
                          TxnWorkload(), byzantine=1, adversary=("silent", "forge"),
                          protocol="txn-minbft")
    broken = Simulator("txn-minbft-vouch-unbound", options, f=1, record=False).run()
    assert "node-raised" in {violation["property"] for violation in broken.violations}
