"""The gateway's transactions (issue 12): no false TRYAGAIN, simulated.

A client trusting no single node (``replicaio kv gateway``, ``TxnClient(replies=
f+1)``) sends its signed attempt to every node; every node drives it and the
outcome needs f+1 matching definite answers (``services.txn.outcomes``). A
late driver, whose ``begin`` finds the attempt committed by another, now
finishes it on the certified decision ``begin`` answers and answers the
commits' results (the participants' table); the gateway asks the undecided
nodes the same signed attempt again before it calls the outcome unknown, and
unknown is ``-UNKNOWN``, never ``-TRYAGAIN``. The simulator's gateway clients
(``txn-kv-pbft:gateway=1``) do what the gateway does; the variant
``txn-kv-pbft-gateway-tryagain`` (the code before) applies committed attempts
twice."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from replicaio.core.codec import Codec
from replicaio.runtime.kv import sharded
from replicaio.runtime.kv.params import RespParams
from replicaio.runtime.kv.sharded import unknown_outcome
from replicaio.services.kv.resp import RespError
from replicaio.services.txn.outcomes import NO_ANSWER, OutcomeVotes
from replicaio.services.txn.protocol import TxnResult
from replicaio.services.txn.store import TxnStore
from replicaio.sim.simulator import Simulator
from replicaio.sim.txn_harness import TxnWorkload, txn_options

codec = Codec()
BFT_FAULTS = ("crash", "loss", "dup", "reorder")


def result(outcome: str, reason: str = "", reads: Any = ()) -> TxnResult:
    return TxnResult(7, 3, outcome, reason, codec.encode_value(list(reads)))


# -- the rule: f+1 matching definite answers, the undecided asked again ---------


def test_undecided_answers_are_asked_again_before_unknown() -> None:
    votes = OutcomeVotes(7, 3, 2, range(4), reasks=1)
    votes.heard(0, result("committed", reads=[b"OK"]))
    votes.heard(1, result("unknown", "already_decided"))
    votes.heard(2, result("aborted", "busy"))  # undecided: never counts
    assert votes.matched() is None and not votes.complete()
    votes.heard(3, None)  # no answer in time
    assert votes.complete() and votes.matched() is None
    assert votes.reask() == [1, 2, 3]  # not node 0: its definite answer stands
    assert not votes.complete() and votes.silent() == [1, 2, 3]
    votes.heard(0, result("aborted", "lying"))  # a node's first definite word stands
    votes.heard(2, result("committed", reads=[b"OK"]))
    matched = votes.matched()
    assert matched is not None and (matched.outcome, matched.reads) == (
        "committed", codec.encode_value([b"OK"]))


def test_unknown_only_once_no_reask_is_left() -> None:
    votes = OutcomeVotes(7, 3, 2, range(4), reasks=1)
    for node in range(4):
        votes.heard(node, result("unknown", "no_decision"))
    assert votes.reask() == [0, 1, 2, 3]
    for node in range(4):
        votes.heard(node, None)
    assert votes.matched() is None and votes.reask() == []
    unknown = votes.unknown()
    assert unknown.outcome == "unknown" and NO_ANSWER in unknown.reason


def test_differing_results_never_match() -> None:
    """A Byzantine node's committed answer with other results is outvoted."""
    votes = OutcomeVotes(7, 3, 2, range(4))
    votes.heard(0, result("committed", reads=[b"1"]))
    votes.heard(1, result("committed", reads=[b"2"]))
    assert votes.matched() is None
    votes.heard(2, result("committed", reads=[b"2"]))
    matched = votes.matched()
    assert matched is not None and matched.reads == codec.encode_value([b"2"])


def test_an_unknown_outcome_is_not_tryagain() -> None:
    """A Redis client retries ``TRYAGAIN`` as a new attempt: never for an
    outcome that may have committed."""
    error = unknown_outcome(5, 9)
    assert error.text.startswith("UNKNOWN outcome of transaction 5:9 unknown")


def transact_with(monkeypatch: pytest.MonkeyPatch, answer: TxnResult | RespError,
                  read_only: bool) -> Any:
    """The front's answer to a transaction across groups whose one attempt ends
    with ``answer`` (``attempt`` stubbed: what the node's driver or the gateway's
    votes settled)."""
    async def attempt(*_: Any) -> TxnResult | RespError:
        return answer

    monkeypatch.setattr(sharded, "attempt", attempt)
    service: Any = SimpleNamespace(params=RespParams(), count=lambda name: None)
    connection: Any = SimpleNamespace(write_client=5, nonce=8)
    return asyncio.run(sharded.transact(service, connection, [["kv", b"get"]], read_only))


@pytest.mark.parametrize("answer", [
    unknown_outcome(5, 9, "no outcome in time; it may still commit"),  # the front's wait
    TxnResult(5, 9, "unknown", "no answers in time", b""),  # the votes settled nothing
    TxnResult(5, 9, "committed", "replies_lost", b""),
])
def test_an_unknown_outcome_of_only_reads_is_tryagain(
        monkeypatch: pytest.MonkeyPatch, answer: TxnResult | RespError) -> None:
    """A cross-group ``MGET`` (an attempt of reads) had no effect whatever its
    outcome: ``-TRYAGAIN``, as a single-group read's, so a client may send it again
    (found as the flaky gateway test: an ``MGET`` under load answered ``-UNKNOWN
    ... no outcome in time``); the same attempt with a write stays ``-UNKNOWN``."""
    read = transact_with(monkeypatch, answer, read_only=True)
    assert isinstance(read, RespError) and read.text.startswith("TRYAGAIN "), read
    assert read.text.endswith("(a read has no effect)")
    write = transact_with(monkeypatch, answer, read_only=False)
    assert isinstance(write, RespError) and write.text.startswith("UNKNOWN "), write


def test_a_read_only_attempt_refused_keeps_its_error(monkeypatch: pytest.MonkeyPatch) -> None:
    refused = RespError("ERR transaction refused by the node: overloaded")
    assert transact_with(monkeypatch, refused, read_only=True) == refused


# -- the coordinator answers a decided attempt's begin with its decision ------------


def test_begin_of_a_decided_attempt_answers_the_certified_decision() -> None:
    store = TxnStore()

    def run(*command: Any) -> Any:
        return codec.decode_value(store.apply(codec.encode_value(list(command))))

    assert run("begin", 1, 1, [0, 1]) == ("pending",)
    assert run("begin", 1, 1, [0, 1]) == ("pending",)  # a second driver, undecided yet
    run("decide", 1, 1, "commit")
    assert run("begin", 1, 1, [0, 1]) == run("decide", 1, 1, "abort") == (
        "committed", ("claim", "decision", 1, 1, "committed"))


# -- simulated: gateway clients, the late drivers, the variant -----------------------


def run(protocol: str, seed: int, adversary: tuple[str, ...] | None = None,
        **workload: Any) -> tuple[Any, Simulator]:
    options = txn_options(seed, 4, BFT_FAULTS, TxnWorkload(**workload), byzantine=1,
                          adversary=adversary)
    simulator = Simulator(protocol, options)
    return simulator.run(), simulator


def test_gateway_clients_late_drivers_answer_committed() -> None:
    """Every node drives every attempt; a late driver finishes it and answers the
    same results (``txn_finished_decided``), so the f+1 rule settles it."""
    for seed, adversary in ((1, ("txn_lying_driver",)), (2, ("txn_altering_driver",)),
                            (3, ("txn_replaying_driver",))):
        result_, _ = run("txn-kv-pbft:groups=3,gateway=1", seed, adversary)
        assert result_.ok, (seed, result_.violations)
        assert result_.counters.get("txn_finished_decided", 0) > 0, seed
        assert result_.stats["outcomes"].get("committed", 0) > 0, seed


def test_the_gateway_before_applied_committed_attempts_twice() -> None:
    """The variant (late driver ``unknown``, TRYAGAIN at once, the Redis client
    sending the commands again as a new attempt): elements appended twice."""
    result_, _ = run("txn-kv-pbft-gateway-tryagain:groups=3", 1, ("txn_lying_driver",))
    assert not result_.ok
    assert "duplicate-elements" in str(result_.violations)
    assert result_.stats["outcomes"].get("gateway_tryagain", 0) > 0
