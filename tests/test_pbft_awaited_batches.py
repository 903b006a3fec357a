"""A PBFT backup keeps its own batches whose requests SMR relayed to the
primary (``awaited_batches``, to forward on suspicion) only while one of
their requests is awaited: the bound ``relayed_max`` is hit, and
``bound_pbft_awaited_batches_max`` counted, only when a batch whose requests
still wait is dropped. Before 2026-12-06 nothing was dropped on execution,
so with every client through one backup's front nearly every batch counted
the bound (941 of 1549 relayed batches on this run) and the counter said
nothing."""

from __future__ import annotations

from replicaio.sim.simulator import Simulator
from replicaio.sim.txn_harness import TxnWorkload, txn_options


def test_batches_whose_requests_executed_do_not_count_the_bound() -> None:
    options = txn_options(2, 4, (), TxnWorkload(clients=24, transactions=200, think_us_max=1),
                          protocol="txn-pbft")
    result = Simulator("txn-pbft:fronts=1", options, f=1).run()
    assert result.ok, result.violations[:2]
    assert result.counters.get("smr_forwarded", 0) > 4 * 64  # relayed_max, many times
    assert result.counters.get("bound_pbft_awaited_batches_max", 0) == 0
