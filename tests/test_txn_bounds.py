"""Every table of the transaction protocol has a named bound that clients and drivers
cannot push it past (the footprint the conformance kit and every simulated run hold a
node to: ``TxnFactory.footprint_max``)."""

from __future__ import annotations

from typing import Any

from replicaio.assembly import protocol_factory
from replicaio.core.codec import Codec
from replicaio.core.config import ClusterConfig, Resilience
from replicaio.services.kv.state_machine import encode_redis
from replicaio.services.txn.kv_store import KvTxnStore
from replicaio.services.txn.protocol import TxnFactory
from replicaio.services.txn.store import StoreParams, TxnStore, unclaimed

codec = Codec()
SMALL = StoreParams(prepared_max=3, finished_max=4, coordinated_max=3, prepare_keys_max=4)


def run(store: TxnStore, *command: Any) -> Any:
    """The store's answer without what it claims (tests/test_txn_certificates.py)."""
    return unclaimed(codec.decode_value(store.apply(codec.encode_value(list(command)))))


def within(store: TxnStore) -> None:
    bounds = store.footprint_max()
    for name, value in store.footprint().items():
        assert value <= bounds[name], (name, value, bounds[name])


def test_coordinator_records_stay_within_coordinated_max() -> None:
    """Begins, decides and resolves of unknown attempts (a flood of late or forged
    ones) never grow the coordinator's table past ``coordinated_max``: an unknown
    attempt is presumed aborted only when a finished record can make room; until
    then ``resolve`` answers pending (asked again) and ``decide`` busy."""
    store = TxnStore(SMALL)
    for nonce in range(1, 4):
        assert run(store, "begin", 1, nonce, [0, 1]) == ("pending",)
    assert run(store, "begin", 1, 9, [0]) == ("refused", "busy")
    for nonce in range(10, 40):
        assert run(store, "resolve", 2, nonce, 0) == ("pending",)
        assert run(store, "decide", 2, nonce, "commit") == ("refused", "busy")
        within(store)
    assert len(store.coordinated) == 3 and (2, 10) not in store.coordinated
    # One attempt decided and acknowledged by all: its record makes room, once.
    assert run(store, "decide", 1, 1, "abort") == ("aborted",)
    run(store, "ack", 1, 1, [0, 1])
    assert run(store, "resolve", 2, 10, 0) == ("aborted",)  # presumed, and recorded
    assert len(store.coordinated) == 3 and store.coordinated[(2, 10)].decision == "aborted"
    # (a presumed abort has no participant to wait for: it makes room in turn)
    assert run(store, "resolve", 2, 11, 0) == ("aborted",)
    assert len(store.coordinated) == 3 and (2, 10) not in store.coordinated
    assert run(store, "decide", 2, 12, "commit") == ("aborted",)
    within(store)


def test_participant_tables_stay_within_their_bounds() -> None:
    store = TxnStore(SMALL)
    for nonce in range(1, 30):
        answer = run(store, "prepare", 1, nonce, 0, [["append", f"k{nonce}".encode(), 1]])
        assert answer[0] == ("prepared" if nonce <= 3 else "refused"), (nonce, answer)
        within(store)
    assert len(store.prepared) == 3 and len(store.locks) == 3
    for nonce in range(1, 4):
        run(store, "commit", 1, nonce)
    for nonce in range(100, 130):  # outcomes: the oldest forgotten past finished_max
        run(store, "abort", 1, nonce)
        within(store)
    assert len(store.finished) == 4 and not store.locks
    # A prepare may not lock more than prepare_keys_max keys, whatever its ops.
    ops = [["r", f"x{index}".encode(), None] for index in range(5)]
    assert run(store, "prepare", 1, 200, 0, ops)[0] == "error"
    assert not store.locks and not store.prepared


def test_a_key_value_command_naming_many_keys_cannot_lock_past_the_bound() -> None:
    store = KvTxnStore(SMALL)
    keys = [f"s{index}".encode() for index in range(6)]
    command = encode_redis("sunion", *keys)
    assert run(store, "prepare", 1, 1, 0, [["kv", keys[0], command]])[0] == "error"
    assert not store.locks and not store.commands
    assert run(store, "prepare", 1, 2, 0, [["kv", keys[0], encode_redis("sunion", *keys[:4])]]
               )[0] == "prepared"
    within(store)
    assert store.footprint()["txn_kv_commands"] == 1


def test_every_transactional_protocol_declares_its_footprint() -> None:
    for name, resilience in (("txn:groups=3", Resilience.CRASH),
                             ("txn-kv:groups=2", Resilience.CRASH),
                             ("txn-pbft", Resilience.BYZANTINE)):
        factory = protocol_factory(name)
        n = 4 if resilience is Resilience.BYZANTINE else 3
        config = ClusterConfig(n, 1, resilience=resilience)
        assert isinstance(factory, TxnFactory)
        bounds = factory.footprint_max(config)
        for table in ("txn_drivers", "txn_in_flight", "txn_callers", "txn_locks",
                      "txn_prepared", "txn_finished", "txn_coordinated", "smr_sessions",
                      "tasks", "timers", "storage_keys"):
            assert bounds[table] > 0, (name, table)
        assert ("txn_kv_commands" in bounds) == name.startswith("txn-kv")
