"""PBFT's own behaviours inside the groups of ``txn-pbft`` (issue 12): a
behaviour that re-signs what it changes (an equivocating PRE-PREPARE, a
VIEW-CHANGE with its P set dropped, a forged CHECKPOINT) signs within its
group's signing domain (``context.group_domain``), as the group's replica on
that node signs, so its lies verify in that group. Before, it signed with the
raw node key, outside every group's domain: the groups refused its messages
as badly signed and the behaviour acted as a drop."""

from __future__ import annotations

from replicaio.core.context import group_domain
from replicaio.protocols.pbft.pbft import Pbft
from replicaio.services.txn.protocol import TxnNode
from replicaio.sim.simulator import SimResult, Simulator
from replicaio.sim.txn_harness import TxnWorkload, txn_options

FAULTS = ("crash", "partition", "loss", "dup", "reorder")


def run(protocol: str, seed: int, adversary: tuple[str, ...]) -> tuple[Simulator, SimResult]:
    options = txn_options(seed, 4, FAULTS, TxnWorkload(), byzantine=1, adversary=adversary,
                          protocol=protocol)
    simulator = Simulator(f"{protocol}:groups=3", options)
    return simulator, simulator.run()


def test_a_groups_copy_of_a_behaviour_signs_as_that_groups_replica() -> None:
    simulator, result = run("txn-pbft", 3, ("pbft_equivocate",))
    assert result.ok, result.violations
    faulty = simulator.options.byzantine[0]
    core = simulator.nodes[faulty].core
    assert core is not None
    strategy = simulator.nodes[faulty].strategy
    per_group = getattr(strategy, "groups", None) or strategy.parts[0].groups  # type: ignore[union-attr]
    data = b"pbft\x00anything"
    protocol = core.protocol
    assert isinstance(protocol, TxnNode)
    for group, behaviour in per_group.items():
        replica = protocol.groups.replicas[group].ordering
        assert isinstance(replica, Pbft)
        assert behaviour.group == group
        assert behaviour.signer.sign(group_domain(group, data)) == replica.context.sign(data)
    # Its lies are now seen for what they are: another batch at a number.
    assert result.counters.get("pbft_rejected_pre_prepare_conflicting", 0) > 0


def test_the_swarm_finds_a_commit_quorum_off_by_one_inside_a_group() -> None:
    """``replicaio swarm txn-pbft-commit-off-by-one --groups 3 --nodes 4
    --byzantine 1 --adversary pbft_drop_prepared --faults
    crash,partition,loss,dup,reorder --seeds 60``: 18 seeds break agreement,
    the first 1 and 4 (a VIEW-CHANGE without the P set, validly signed in its
    group, and 2f COMMITs commit a batch the next view replaces). With the
    raw-key signing before, seeds 14 and 33 of 40 failed only once the
    signing changed (the VIEW-CHANGE was refused); the forwards of ADR 0033
    then moved the schedules (14 passes since), so 4 is pinned."""
    _, broken = run("txn-pbft-commit-off-by-one", 4, ("pbft_drop_prepared",))
    assert {violation["property"] for violation in broken.violations} == {"agreement"}
    _, result = run("txn-pbft", 4, ("pbft_drop_prepared",))
    assert result.ok, result.violations


def test_a_refused_resolve_is_counted_not_raised() -> None:
    """``replicaio sim txn-pbft --nodes 4 --byzantine 1 --faults
    crash,partition,loss,dup,reorder --seed 273`` (found by pbft27's swarm): the
    coordinator group answered a participant's ``resolve`` with a certified
    ``[refused, ...]`` (an attempt of the lying driver it never began), and
    ``TxnNode.resolve`` looked the answer up among commit/abort/discard and raised
    ``KeyError('refused')`` inside the node. Now it is counted and asked again at
    the next lease expiry."""
    from replicaio.cli import main

    assert main(["sim", "txn-pbft", "--nodes", "4", "--byzantine", "1", "--faults",
                 ",".join(FAULTS), "--seed", "273"]) == 0
