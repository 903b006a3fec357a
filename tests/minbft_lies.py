"""The runs of the MinBFT tests in which one Byzantine replica of three tells
one lie (``test_minbft_new_view_gap.py``, ``test_minbft_fresh_anchor.py``,
``test_minbft_second_new_view.py``, ``test_minbft_decided_before_anchor.py``):
a run under the test's own cuts, and a swarm seed run with the lie forced."""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from replicaio.sim.kv_harness import KvWorkload, kv_options
from replicaio.sim.options import Partition
from replicaio.sim.simulator import SimResult, Simulator

# ``replicaio swarm minbft --nodes 3 --byzantine 1 --adversary LIE --faults ...``
SWARM_FAULTS: Final = ("crash", "partition", "loss", "dup", "reorder")


def run_cut(seed: int, adversary: tuple[str, ...], protocol: str, *, liar: int,
            partitions: tuple[Partition, ...]) -> SimResult:
    """Four KV clients (600 operations) of a MinBFT group of three under
    ``partitions`` and no other fault, run by ``protocol`` (``minbft``, maybe
    with parameters, or a broken variant); with ``adversary``, replica ``liar``
    is Byzantine and behaves so, without it every replica is correct."""
    options = kv_options(seed, 3, (), KvWorkload(ops=600, clients=4),
                         byzantine=1 if adversary else 0, adversary=adversary or None,
                         protocol="minbft")
    options = replace(options, byzantine=(liar,) if adversary else (), partitions=partitions)
    return Simulator(protocol, options, f=1, record=False).run()


def swarm_seed(seed: int, lie: tuple[str, ...], broken: str) -> tuple[SimResult, SimResult]:
    """The swarm's run of ``seed`` with ``lie`` forced: by the broken variant
    ``broken``, and by ``minbft``."""
    options = kv_options(seed, 3, SWARM_FAULTS, KvWorkload(nemesis_every_us=2_000_000),
                         byzantine=1, adversary=lie, protocol="minbft")
    return (Simulator(broken, options, f=1, record=False).run(),
            Simulator("minbft", options, f=1, record=False).run())


def properties(result: SimResult) -> set[str]:
    """The properties ``result`` violated."""
    return {violation["property"] for violation in result.violations}
