"""Certified votes and decisions for transactions over BFT groups (issue 12).

A group of a Byzantine fault tolerant cluster moves only on another group's
certified word: ``decide commit`` needs every participant's prepared vote,
``commit``/``abort``/``discard`` the coordinator's decision, ``ack`` the
participant's outcome, each as f+1 signatures of distinct replicas of the
group that said it (``replicaio.smr.certified``). The store tests forge what
a Byzantine node can (its own signature, twice; another group's word; the
opposite decision) and check each is refused and changes nothing; the
simulations show one lying driver breaking atomicity on groups that check no
certificate and not on groups that do."""

from __future__ import annotations

from typing import Any

from replicaio.core.codec import Codec, Value
from replicaio.core.context import group_domain
from replicaio.core.signing import SIMULATION_SECRET, KeyedHashSigner
from replicaio.services.txn.store import (
    APPLIED,
    CLAIM,
    DECISION,
    DISCARDED,
    VOTE,
    TxnStore,
    unclaimed,
)
from replicaio.sim.simulator import Simulator
from replicaio.sim.txn_harness import TxnWorkload, txn_options
from replicaio.smr.certified import Certifier, attestation_bytes

N = 4
F = 1
codec = Codec()
signers = [KeyedHashSigner(node, SIMULATION_SECRET, N) for node in range(N)]
certifier = Certifier(signers[0].verify, lambda group: range(N), F + 1)
BFT_FAULTS = ("crash", "loss", "dup", "reorder")
LIAR = ("txn_lying_driver",)


def certificate(group: int, *claim: Any, nodes: tuple[int, ...] = (1, 2)) -> list[Any]:
    """``group``'s claim signed by ``nodes`` (f+1 distinct ones make it hold)."""
    encoded = codec.encode_value([CLAIM, *claim])
    data = attestation_bytes(group, encoded)
    return [group, encoded, [[node, signer(node).sign(data)] for node in nodes]]


def signer(node: int) -> KeyedHashSigner:
    return signers[node] if node < N else KeyedHashSigner(node, SIMULATION_SECRET, node + 1)


def as_tuple(value: Value, length: int) -> tuple[Value, ...]:
    """``value`` decoded from the wire: a tuple of ``length`` items."""
    assert isinstance(value, tuple) and len(value) == length, value
    return value


def certified_store(group: int) -> TxnStore:
    store = TxnStore()
    store.group = group
    store.certifier = certifier
    return store


def run(store: TxnStore, *command: Any) -> Any:
    return codec.decode_value(store.apply(codec.encode_value(list(command))))


def test_a_certificate_needs_f_plus_1_distinct_members_over_the_same_claim() -> None:
    claim = codec.encode_value([CLAIM, VOTE, 1, 1, 0, [0, 1]])
    good = codec.decode_value(codec.encode_value(certificate(1, VOTE, 1, 1, 0, [0, 1])))
    assert certifier.claim(good, 1) == claim
    assert certifier.claim(good, 2) is None  # another group's word
    twice = codec.decode_value(codec.encode_value(
        certificate(1, VOTE, 1, 1, 0, [0, 1], nodes=(3, 3))))
    assert certifier.claim(twice, 1) is None  # one node's word, however often
    outsider = codec.decode_value(codec.encode_value(
        certificate(1, VOTE, 1, 1, 0, [0, 1], nodes=(1, 7))))
    assert certifier.claim(outsider, 1) is None  # not a member of the group
    group, signed_claim, signed = as_tuple(good, 3)
    other = codec.encode_value([CLAIM, VOTE, 1, 2, 0, [0, 1]])
    assert certifier.claim((group, other, signed), 1) is None  # signatures of another claim
    first, second = (as_tuple(pair, 2) for pair in as_tuple(signed, 2))
    bad = (first, (second[0], b"\x00" * 32))
    assert certifier.claim((group, signed_claim, bad), 1) is None
    for junk in (None, (), (1,), (1, claim, None), (1, "text", ()), (1, claim, ((1,),)),
                 (1, claim, (("x", b""),)), [1, claim, []]):
        assert certifier.claim(junk, 1) is None  # never raises


def test_decide_commit_needs_every_participants_certified_vote() -> None:
    store = certified_store(0)
    participants = [0, 1]
    run(store, "begin", 5, 1, participants)
    votes = [certificate(group, VOTE, 5, 1, 0, participants) for group in participants]
    assert run(store, "decide", 5, 1, "commit") == ("refused", "uncertified")
    assert run(store, "decide", 5, 1, "commit", votes[:1]) == ("refused", "uncertified")
    forged = certificate(1, VOTE, 5, 1, 0, participants, nodes=(3, 3))
    assert run(store, "decide", 5, 1, "commit", [votes[0], forged]) == (
        "refused", "uncertified")
    elsewhere = certificate(1, VOTE, 5, 1, 2, participants)  # prepared for coordinator 2
    assert run(store, "decide", 5, 1, "commit", [votes[0], elsewhere]) == (
        "refused", "uncertified")
    fewer = certificate(1, VOTE, 5, 1, 0, [1])  # prepared as a one-group transaction
    assert run(store, "decide", 5, 1, "commit", [votes[0], fewer]) == (
        "refused", "uncertified")
    assert store.coordinated[(5, 1)].decision is None  # still pending: nothing moved
    assert run(store, "decide", 5, 1, "commit", votes) == (
        "committed", (CLAIM, DECISION, 5, 1, "committed"))
    assert store.counters["uncertified_vote"] >= 4
    # Abort is always safe before a decision: it needs no vote.
    run(store, "begin", 5, 2, participants)
    assert unclaimed(run(store, "decide", 5, 2, "abort")) == ("aborted",)


def test_a_participant_applies_only_its_coordinators_certified_decision() -> None:
    store = certified_store(1)
    assert unclaimed(run(store, "prepare", 5, 1, 0, [["add", b"a", 5]], [0, 1]))[0] == (
        "prepared")
    for proof in (None, certificate(0, DECISION, 5, 1, "aborted"),
                  certificate(2, DECISION, 5, 1, "committed"),  # not its coordinator
                  certificate(0, DECISION, 5, 2, "committed"),  # another attempt
                  certificate(0, DECISION, 5, 1, "committed", nodes=(2, 2))):
        assert run(store, "commit", 5, 1, proof) == ("refused", "uncertified")
    for proof in (None, certificate(0, DECISION, 5, 1, "committed")):
        assert run(store, "abort", 5, 1, proof) == ("refused", "uncertified")
    assert run(store, "discard", 5, 1, certificate(0, DISCARDED, 5, 1, 2)) == (
        "refused", "uncertified")  # stale for another participant, not this one
    assert set(store.locks) == {b"a"} and (5, 1) in store.prepared and not store.data
    assert run(store, "commit", 5, 1, certificate(0, DECISION, 5, 1, "committed")) == (
        "committed", (CLAIM, APPLIED, 5, 1, "committed"))
    assert store.data == {b"a": 5} and not store.locks
    # Refusing an attempt never prepared here is always safe: no certificate needed.
    assert unclaimed(run(store, "abort", 5, 9)) == ("aborted",)
    assert unclaimed(run(store, "prepare", 5, 9, 0, [["add", b"b", 1]], [1])) == (
        "refused", "finished")


def test_the_coordinator_forgets_only_on_certified_acknowledgements() -> None:
    store = certified_store(0)
    run(store, "begin", 5, 1, [0, 1])
    votes = [certificate(group, VOTE, 5, 1, 0, [0, 1]) for group in (0, 1)]
    run(store, "decide", 5, 1, "commit", votes)
    assert run(store, "ack", 5, 1, [0, 1]) == ("refused", "uncertified")
    wrong = [certificate(0, APPLIED, 5, 1, "aborted"), certificate(1, APPLIED, 5, 1, "committed")]
    run(store, "ack", 5, 1, [0, 1], wrong)
    assert store.coordinated[(5, 1)].acked == {1}  # group 0's claim was not the decision
    # A participant that holds nothing for the attempt may be forgotten too.
    run(store, "ack", 5, 1, [0], [certificate(0, APPLIED, 5, 1, "unknown")])
    assert store.coordinated[(5, 1)].acked == {0, 1}
    assert run(store, "resolve", 5, 1, 1) == ("discard", (CLAIM, DISCARDED, 5, 1, 1))


def bank_run(protocol: str, seed: int) -> Any:
    options = txn_options(seed, 4, BFT_FAULTS, TxnWorkload(workload="bank"),
                          byzantine=1, adversary=LIAR)
    return Simulator(f"{protocol}:groups=3", options).run()


def test_one_lying_driver_breaks_groups_that_take_no_certificates() -> None:
    """Before the fix (the variant keeps that code): one Byzantine node drives as a
    liar while three drive correctly, every group's PBFT ordering intact, and the
    bank total breaks on the pinned seed."""
    result = bank_run("txn-pbft-uncertified", 3)
    assert [v["property"] for v in result.violations] == ["bank"], result.violations
    assert "wrong-total" in result.violations[0]["detail"]


def test_certified_groups_hold_against_the_same_lying_driver() -> None:
    """After the fix, the same seed (and a few more) keeps the bank total, every
    lock is released, and correct drivers still commit."""
    for seed in (3, 4):
        result = bank_run("txn-pbft", seed)
        assert result.ok, (seed, result.violations)
        assert result.stats["outcomes"].get("committed", 0) > 0
        assert result.stats["outcomes"].get("byzantine_answers", 0) > 0, "the liar drove"


def test_certified_list_append_with_a_lying_driver_is_serializable() -> None:
    options = txn_options(7, 4, BFT_FAULTS, TxnWorkload(), byzantine=1, adversary=LIAR)
    result = Simulator("txn-pbft:groups=3", options).run()
    assert result.ok, result.violations
    assert result.stats["outcomes"].get("committed", 0) > 0


def test_a_groups_signature_does_not_verify_in_another_group() -> None:
    """Groups on a node share its key; a signature is made within the group's
    domain, so a replica's signed message cannot be replayed into another group."""
    data = b"pbft prepare 0 1 digest"
    in_group_0 = signers[2].sign(group_domain(0, data))
    assert signers[0].verify(2, group_domain(0, data), in_group_0)
    assert not signers[0].verify(2, group_domain(1, data), in_group_0)
    assert not signers[0].verify(2, group_domain(None, data), in_group_0)


def test_a_forger_cannot_replay_one_groups_pbft_messages_into_another() -> None:
    """Found by the first swarm with a Byzantine node on txn-pbft: before signatures
    were domain-separated by group, a forging node replayed group 0's signed PBFT
    messages (a prepared certificate) into group 1, whose correct replicas then
    disagreed (agreement at index 1)."""
    options = txn_options(11, 4, ("crash", "partition", "loss", "dup", "reorder"),
                          TxnWorkload(), byzantine=1, adversary=("silent", "forge"))
    result = Simulator("txn-pbft:groups=3", options).run()
    assert result.ok, result.violations


def test_attestations_beyond_the_certificate_are_late_not_misbehaviour() -> None:
    """Every replica attests every in-node call it executes, so with no Byzantine
    node the n-f-1 attestations beyond a certificate (and those of calls made
    without one) arrive when no call waits: counted as late. Before, they were
    all counted as ``attestation_unexpected``, which then said nothing."""
    options = txn_options(3, N, BFT_FAULTS, TxnWorkload())
    result = Simulator("txn-pbft:groups=3", options).run()
    assert result.ok, result.violations
    assert result.counters.get("attestation_late", 0) > 0
    assert result.counters.get("attestation_unexpected", 0) == 0
