"""A signed attempt cannot be executed twice, even once the groups forgot it (issue 12).

A Byzantine node that saw a client's signed attempt may send it again at any
time. While a group remembers it (a coordinator record, a participant's
outcome) the copy is recognised; those tables are bounded, so groups that check
signed requests also keep per-client nonce windows (``services/txn/nonces.py``,
ADR 0030): the coordinator refuses to begin, and a participant to prepare, an
attempt it began or prepared before. The store tests make the tables forget
and send the copy; the simulations show a replaying driver breaking groups
without the windows (a variant keeps that code) and not groups with them."""

from __future__ import annotations

import random
from typing import Any

from test_txn_signed_requests import SLOTS, codec, sign

from replicaio.services.txn.nonces import NonceWindows, WindowParams
from replicaio.services.txn.store import StoreParams, TxnStore, coordinator_of, unclaimed
from replicaio.sim.simulator import Simulator
from replicaio.sim.txn_harness import TxnWorkload, txn_options
from replicaio.smr.auth import KEYED, SignedClients

TRANSFER = [["add", b"b", -1], ["add", b"a", 1]]  # group 0, then group 1
REPLAYING = ("txn_replaying_driver",)
# Small tables, so that groups forget attempts within a run (protocol parameter).
FORGETFUL = "groups=3,remember=16"


def guarding_store(group: int, params: StoreParams) -> TxnStore:
    store = TxnStore(params)
    store.group = group
    store.slots = SLOTS
    store.requests = SignedClients(codec, KEYED).verify
    store.guards_replays = True
    return store


def command(store: TxnStore, *value: Any) -> Any:
    return unclaimed(codec.decode_value(store.apply(codec.encode_value(list(value)))))


def run_transfer(store: TxnStore, client: int, nonce: int) -> None:
    """``(client, nonce)``'s part in group 0, prepared and committed."""
    coordinator = coordinator_of(client, nonce, (0, 1))
    answer = command(store, "prepare", client, nonce, coordinator, [TRANSFER[0]], [0, 1],
                     sign(client, nonce, TRANSFER))
    assert answer[0] == "prepared", answer
    assert command(store, "commit", client, nonce)[0] == "committed"


def test_a_participant_refuses_a_copy_of_an_attempt_it_forgot() -> None:
    store = guarding_store(0, StoreParams(finished_max=1))
    store.data[b"b"] = 10
    run_transfer(store, 5, 1)
    run_transfer(store, 6, 1)  # the outcome of (5, 1) is forgotten now
    assert (5, 1) not in store.finished
    coordinator = coordinator_of(5, 1, (0, 1))
    copy = command(store, "prepare", 5, 1, coordinator, [TRANSFER[0]], [0, 1],
                   sign(5, 1, TRANSFER))
    assert copy == ("refused", "replayed")
    assert store.data[b"b"] == 8 and not store.locks
    assert store.counters["refused_replayed"] == 1
    run_transfer(store, 5, 2)  # the client's next attempt runs
    # The windows travel with snapshots (and so with state transfer).
    restored = guarding_store(0, store.params)
    restored.restore(store.snapshot())
    restored.finished.clear()  # forgotten there too
    assert command(restored, "prepare", 5, 2, coordinator_of(5, 2, (0, 1)), [TRANSFER[0]],
                   [0, 1], sign(5, 2, TRANSFER)) == ("refused", "replayed")


def test_a_coordinator_refuses_to_begin_again_what_it_forgot() -> None:
    client, nonce = 5, 1
    group = coordinator_of(client, nonce, (0, 1))
    store = guarding_store(group, StoreParams(coordinated_max=1))
    signed = sign(client, nonce, TRANSFER)
    assert command(store, "begin", client, nonce, [0, 1], signed) == ("pending",)
    assert command(store, "decide", client, nonce, "abort")[0] == "aborted"
    # Every participant acknowledged: the record may go, and goes for the next one.
    store.coordinated[(client, nonce)].acked.update({0, 1})
    other = next(n for n in range(2, 9) if coordinator_of(7, n, (0, 1)) == group)
    assert command(store, "begin", 7, other, [0, 1], sign(7, other, TRANSFER)) == ("pending",)
    assert (client, nonce) not in store.coordinated
    assert command(store, "begin", client, nonce, [0, 1], signed) == ("refused", "replayed")
    assert store.counters["refused_begin_replayed"] == 1


def test_a_begin_needs_the_signed_request_and_the_coordinator_it_names() -> None:
    """So a copy cannot be begun in a group whose window never saw it, nor can a
    driver move a client's window with nonces the client never signed."""
    client, nonce = 5, 1
    group = coordinator_of(client, nonce, (0, 1))
    elsewhere = guarding_store(1 - group, StoreParams())
    assert command(elsewhere, "begin", client, nonce, [0, 1], sign(client, nonce, TRANSFER)
                   ) == ("refused", "altered")
    store = guarding_store(group, StoreParams())
    assert command(store, "begin", client, nonce, [0, 1]) == ("refused", "unsigned")
    assert command(store, "begin", client, nonce + 100, [0, 1],
                   sign(client, nonce, TRANSFER)) == ("refused", "unsigned")
    assert not store.coordinated and not store.begun.windows


def test_an_evicted_client_is_still_refused_its_old_attempts() -> None:
    store = guarding_store(0, StoreParams(nonce_clients_max=1))
    store.data[b"b"] = 10
    run_transfer(store, 5, 1)
    store.finished.clear()  # forgotten
    run_transfer(store, 6, 1)  # evicts client 5's window: its highest nonce is its floor
    assert 5 not in store.prepares.windows and store.prepares.evictions == 1
    assert command(store, "prepare", 5, 1, coordinator_of(5, 1, (0, 1)), [TRANSFER[0]],
                   [0, 1], sign(5, 1, TRANSFER)) == ("refused", "replayed")
    run_transfer(store, 5, 2)  # its next nonce is above the floor


def test_nonce_windows_accept_each_nonce_once_in_any_order() -> None:
    """Against a model (every nonce ever accepted), with evictions, floors and
    snapshots: never a nonce twice; out of order within the window, always."""
    for seed in range(20):
        rng = random.Random(seed)
        windows = NonceWindows(WindowParams(clients_max=3, window=8, buckets=2))
        accepted: set[tuple[int, int]] = set()
        for step in range(2000):
            client, nonce = rng.randrange(6), rng.randrange(60)
            fresh = windows.fresh(client, nonce)
            assert not (fresh and (client, nonce) in accepted), (seed, client, nonce)
            if fresh:
                windows.accept(client, nonce)
                accepted.add((client, nonce))
            if step == 1000:
                restored = NonceWindows(windows.params)
                restored.restore(windows.snapshot())
                windows = restored
            assert len(windows) <= 3 and len(windows.floors) <= 2
    windows = NonceWindows()
    for nonce in (5, 3, 4, 1, 0, 2):
        assert windows.fresh(7, nonce)
        windows.accept(7, nonce)
    assert not any(windows.fresh(7, nonce) for nonce in range(6))
    assert windows.fresh(7, 6)


def replaying_run(protocol: str, seed: int) -> Any:
    options = txn_options(seed, 4, ("loss", "dup", "reorder"),
                          TxnWorkload(transactions=300), byzantine=1, adversary=REPLAYING)
    return Simulator(f"{protocol}:{FORGETFUL}", options).run()


def test_a_replaying_driver_breaks_groups_without_nonce_windows() -> None:
    """The variant checks signatures but keeps no windows: once the groups forgot
    a committed attempt, the copy a Byzantine node drives again commits again and
    its element is appended twice (pinned seed)."""
    # 3 -> 1 when PBFT's defaults became one batch in flight and COMMITs on the
    # channel (other schedules); the real groups pass seed 1 too.
    result = replaying_run("txn-pbft-replayable", 1)
    assert [v["property"] for v in result.violations] == ["strict_serializability"], (
        result.violations)
    assert "duplicate-elements" in result.violations[0]["detail"]


def test_groups_with_nonce_windows_hold_against_the_same_replaying_driver() -> None:
    for seed in (3, 4):
        result = replaying_run("txn-pbft", seed)
        assert result.ok, (seed, result.violations)
        assert result.counters.get("txn_requests_replayed", 0) > 0, "the replayer drove"
        assert result.stats["outcomes"].get("committed", 0) > 0
