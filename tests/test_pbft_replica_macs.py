"""MAC authenticators between replicas (``pbft:replica_macs=1``, docs/adr/0025):
a COMMIT from its author counts on the authenticated channel without its
signature being checked; one relayed by a third replica is checked as before;
a COMMIT is checked before this replica shows it to another, and one whose
signature is bad is never shown. The swarm runs (docs/benchmarks.md) put the
option under every fault kind and the Byzantine adversary."""

from __future__ import annotations

from dataclasses import replace

from msgspec.structs import replace as replace_struct
from test_pbft_pitfalls import pbft_of, quiet_options

from replicaio.protocols.pbft.messages import Commit
from replicaio.protocols.pbft.pbft import Pbft
from replicaio.sim.simulator import SimResult, Simulator


def finished(protocol: str) -> tuple[Simulator, SimResult]:
    """A quiet run of a few requests, over: every replica active in view 0 (the
    run's counters are in the result; the cores count afresh from here)."""
    sim = Simulator(protocol, quiet_options(5, ops=20), f=1, record=False)
    result = sim.run()
    assert result.violations == []
    return sim, result


def signed_commit(author: Pbft, seq: int, digest: bytes) -> Commit:
    unsigned = Commit(author.view, seq, digest, author.id, b"")
    return replace_struct(unsigned, signature=author.sign(unsigned))


def counter(pbft: Pbft, name: str) -> int:
    return pbft.context.node.counters.get(name, 0)


def test_a_commit_from_its_author_counts_on_the_channel_and_a_relayed_one_is_checked() -> None:
    sim, result = finished("pbft:replica_macs=1")
    receiver, author = pbft_of(sim, 1), pbft_of(sim, 2)
    assert result.counters.get("pbft_commits_on_channel", 0) > 0  # the run used the option
    seq = receiver.high  # in the window, nothing there yet
    digest = b"d" * 32
    good = signed_commit(author, seq, digest)
    forged = replace_struct(good, signature=bytes(64))
    rejected = counter(receiver, "pbft_rejected_vote_bad_signature")
    receiver.normal.on_commit(3, forged)  # relayed by replica 3: checked, refused
    assert counter(receiver, "pbft_rejected_vote_bad_signature") == rejected + 1
    assert seq not in receiver.slots  # refused before a slot was made
    receiver.normal.on_commit(2, forged)  # from its author: its vote (the channel's MAC)
    slot = receiver.slots[seq]
    assert slot.commits[2] is forged
    assert counter(receiver, "pbft_rejected_vote_bad_signature") == rejected + 1
    # Never shown to a third replica: checked once, left out, not checked again.
    assert receiver.normal.forwardable_commits(slot, digest) == []
    assert counter(receiver, "pbft_rejected_commit_on_channel_bad_signature") == 1
    assert receiver.normal.forwardable_commits(slot, digest) == []
    assert counter(receiver, "pbft_rejected_commit_on_channel_bad_signature") == 1
    # A good one from its author is shown, after one check.
    other = signed_commit(pbft_of(sim, 3), seq, digest)
    receiver.normal.on_commit(3, other)
    assert receiver.normal.forwardable_commits(slot, digest) == [other]


def test_without_the_option_every_commit_is_checked() -> None:
    sim, result = finished("pbft:replica_macs=0")
    receiver, author = pbft_of(sim, 1), pbft_of(sim, 2)
    assert result.counters.get("pbft_commits_on_channel", 0) == 0
    seq = receiver.high
    forged = replace_struct(signed_commit(author, seq, b"d" * 32), signature=bytes(64))
    rejected = counter(receiver, "pbft_rejected_vote_bad_signature")
    receiver.normal.on_commit(2, forged)
    assert counter(receiver, "pbft_rejected_vote_bad_signature") == rejected + 1


def test_replica_macs_under_every_fault_and_a_byzantine_replica() -> None:
    from test_pbft_sim import options_for

    for seed in (1, 2, 3):
        result = Simulator("pbft:replica_macs=1", options_for(seed, 4, 1), f=1,
                           record=False).run()
        assert result.violations == [], (seed, result.violations[:2])
        assert result.stats["ops_completed"] > 0
    equivocating = Simulator(
        "pbft:replica_macs=1",
        replace(quiet_options(3), byzantine=(0,), behaviours=("pbft_equivocate",)),
        f=1, record=False,
    ).run()
    assert equivocating.violations == []
