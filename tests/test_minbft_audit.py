"""MinBFT's self-audit (``replicaio.protocols.minbft.audit``, ADR 0071) and the
simulator's ``internal-consistency`` check built on it (ADR 0069).

Besides PBFT's window, log and checkpoint votes, a MinBFT replica keeps one
stream per peer (the next counter it takes, the messages held above a gap),
its own certified messages and the view change's commitments. Here: each kind
of inconsistency planted in a running replica is reported (and the replica
audits clean before and after); and a swarm finds the broken variants
``minbft-stream-stalls-after-view-change`` (a stream that takes a VIEW-CHANGE
without the messages held above it) and ``minbft-gc-keeps-stable-number``
(garbage collection off by one) by this check alone, every run of them
linearizable, while the correct protocol passes the same seeds.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from msgspec.structs import replace
from test_minbft_recovery import minbft_of, quiet, simulator
from test_minbft_variants import properties_violated
from test_pbft_audit import Undo, put, setting
from test_pbft_pitfalls import at

from replicaio.protocols.minbft.audit import audit_minbft
from replicaio.protocols.minbft.messages import Checkpoint, Commit, NewViewCommit
from replicaio.protocols.minbft.minbft import Minbft
from replicaio.protocols.minbft.normal import Slot
from replicaio.sim.kv_harness import KvWorkload, kv_options
from replicaio.sim.simulator import SimResult, Simulator


def own_commit(minbft: Minbft) -> Commit:
    return next(message for message, _ in minbft.own_log.values() if type(message) is Commit)


def deferred_now(minbft: Minbft) -> Commit | NewViewCommit:
    return replace(own_commit(minbft), view=minbft.view)


def anchor(minbft: Minbft) -> Checkpoint:
    assert minbft.own_checkpoint is not None
    return minbft.own_checkpoint


def committed_slot(minbft: Minbft) -> Slot:
    return next(slot for slot in minbft.slots.values() if slot.committed)


def taken(minbft: Minbft, votes: Callable[[Slot], dict[int, tuple[int, bytes, int]]]) -> Undo:
    """A slot at the top of the window that took a batch, with ``votes``."""
    slot = Slot(minbft.high)
    slot.take(minbft.view, b"d" * 32, b"", 1)
    slot.votes = votes(slot)
    return put(minbft.slots, slot.seq, slot)


def complete_uncommitted(minbft: Minbft) -> Undo:
    return taken(minbft, lambda slot: dict.fromkeys(
        range(minbft.quorum), (slot.view, slot.digest, slot.key)))


def foreign_commitment(minbft: Minbft) -> Undo:
    return taken(minbft, lambda slot: {1: (minbft.view + 1, slot.digest, slot.key)})


def committed_ahead(minbft: Minbft) -> Undo:
    slot = Slot(minbft.executed + 1)
    slot.take(minbft.view, b"d" * 32, b"", 1)
    slot.committed = True
    return put(minbft.slots, slot.seq, slot)


def gap_in_own_log(minbft: Minbft) -> Undo:
    counters = sorted(minbft.own_log)
    middle = counters[len(counters) // 2]
    entry = minbft.own_log.pop(middle)
    return lambda: minbft.own_log.__setitem__(middle, entry)


def swapped_own_log(minbft: Minbft) -> Undo:
    first, second = sorted(minbft.own_log)[-2:]
    log = minbft.own_log
    log[first], log[second] = log[second], log[first]

    def undo() -> None:
        log[first], log[second] = log[second], log[first]

    return undo


def held(minbft: Minbft, offset: int) -> Undo:
    stream = minbft.streams[0]
    message = own_commit(minbft)
    return put(stream.held, stream.next + offset, message)


def snapshots_served(minbft: Minbft) -> Undo:
    snapshots = minbft.checkpoints.snapshots
    interval = minbft.params.checkpoint_interval
    undos = [put(snapshots, minbft.stable_seq - interval * back, (b"", b""))
             for back in range(minbft.params.snapshots_served_max + 1)]

    def undo() -> None:
        for each in reversed(undos):
            each()

    return undo


# plant (on a backup, returns its undo) -> a phrase of the problem it must cause
PLANTS: dict[str, tuple[Callable[[Minbft], Undo], str]] = {
    "slot kept at h": (
        lambda minbft: put(minbft.slots, minbft.stable_seq, Slot(minbft.stable_seq)),
        "outside the window"),
    "executed ahead of the log": (
        lambda minbft: setting(minbft, "executed", minbft.executed + 5),
        "nothing committed"),
    "committed, not executed": (committed_ahead, "committed but not executed"),
    "committed without its batch": (
        lambda minbft: setting(committed_slot(minbft), "batch", None),
        "without its batch"),
    "complete, not committed": (complete_uncommitted, "matching commitments, not committed"),
    "a commitment of another view": (foreign_commitment, "of another view"),
    "held at the next counter": (lambda minbft: held(minbft, 0), "not above the next expected"),
    "held below the next counter": (lambda minbft: held(minbft, -1), "not above the next"),
    "held beyond the bound": (
        lambda minbft: setting(minbft.streams[0], "held", {
            minbft.streams[0].next + 1 + extra: own_commit(minbft)
            for extra in range(minbft.params.held_max + 1)}),
        "messages, above"),
    "stream not persisted": (
        lambda minbft: setting(minbft.streams[0], "dirty", True), "not persisted"),
    "stream's NEW-VIEW above its view": (
        lambda minbft: setting(minbft.streams[0], "nv_view", minbft.streams[0].view + 1),
        "above it"),
    "stream's CHECKPOINT off K": (
        lambda minbft: setting(minbft.streams[0], "last_checkpoint",
                               minbft.streams[0].last_checkpoint + 1),
        "not a multiple of K"),
    "a gap in the own log": (gap_in_own_log, "not every counter"),
    "own messages swapped": (swapped_own_log, "filed under another counter"),
    "own_last_checkpoint stale": (
        lambda minbft: setting(minbft, "own_last_checkpoint",
                               minbft.own_last_checkpoint + minbft.params.checkpoint_interval),
        "own_last_checkpoint"),
    "anchor above h": (
        lambda minbft: setting(minbft, "own_checkpoint", replace(
            anchor(minbft), seq=minbft.stable_seq + minbft.params.checkpoint_interval)),
        "the anchor"),
    "own CHECKPOINT kept at h": (
        lambda minbft: put(minbft.checkpoints.own, minbft.stable_seq, anchor(minbft)),
        "own CHECKPOINT of"),
    "a snapshot not executed": (
        lambda minbft: put(minbft.checkpoints.snapshots,
                           minbft.high + minbft.params.checkpoint_interval, (b"", b"")),
        "own snapshots"),
    "too many snapshots served": (snapshots_served, "snapshots kept at or below"),
    "checkpoint votes kept at h": (
        lambda minbft: put(minbft.checkpoints.votes, minbft.stable_seq, {}),
        "checkpoint votes kept"),
    "stable certificate short": (
        lambda minbft: setting(minbft, "stable_proof", ()), "certificate is not"),
    "a commitment deferred for the current view": (
        lambda minbft: put(minbft.deferred, 0, [deferred_now(minbft)]),
        "commitments deferred"),
    "a VIEW-CHANGE misfiled": (
        lambda minbft: put(minbft.view_changes.received, 0,
                           minbft.view_changes.build(minbft.view + 1)),
        "filed under another replica"),
}


@pytest.fixture(scope="module")
def planted() -> dict[str, tuple[list[str], list[str], list[str]]]:
    """One quiet run; at 0.5 s, past several stable checkpoints with batches in
    flight, each plant in turn on a backup: the audit before, with, and after."""
    sim = simulator(quiet(1))
    found: dict[str, tuple[list[str], list[str], list[str]]] = {}

    def plant_all() -> None:
        minbft = minbft_of(sim, 1)
        assert minbft is not None and minbft.stable_seq > 0 and minbft.active
        for name, (plant, _) in PLANTS.items():
            before = audit_minbft(minbft)
            undo = plant(minbft)
            during = audit_minbft(minbft)
            undo()
            found[name] = (before, during, audit_minbft(minbft))

    at(sim, 500_000, plant_all)
    result = sim.run()
    assert result.violations == []
    return found


@pytest.mark.parametrize("name", sorted(PLANTS))
def test_each_planted_inconsistency_is_reported(
    planted: dict[str, tuple[list[str], list[str], list[str]]], name: str,
) -> None:
    before, during, after = planted[name]
    assert before == [] and after == []
    assert any(PLANTS[name][1] in problem for problem in during), during


# Seeds of the default swarm (n = 3, one Byzantine replica, every fault kind;
# tests/test_minbft_variants.py): the stream's stall needs a VIEW-CHANGE that
# arrives after messages its author certified later (reordered or lost).
CAUGHT = {"minbft-stream-stalls-after-view-change": 6, "minbft-gc-keeps-stable-number": 1}


def default_swarm(protocol: str, seed: int) -> SimResult:
    options = kv_options(seed, 3, ("crash", "partition", "loss", "dup", "reorder"),
                         KvWorkload(nemesis_every_us=2_000_000), byzantine=1, adversary=None,
                         protocol="minbft")
    return Simulator(protocol, options, f=1, record=False).run()


@pytest.mark.parametrize("name", sorted(CAUGHT))
def test_the_swarm_finds_what_only_the_audit_sees(name: str) -> None:
    broken = default_swarm(name, CAUGHT[name])
    assert {violation["property"] for violation in broken.violations} == {"internal-consistency"}
    assert broken.stats.get("linearizable") is True
    assert properties_violated("minbft", CAUGHT[name]) == set()
