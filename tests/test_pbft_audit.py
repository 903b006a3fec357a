"""PBFT's self-audit (``replicaio.protocols.pbft.audit``, ADR 0071) and the
simulator's ``internal-consistency`` check built on it (ADR 0069).

A replica keeps its log per number, its prepared certificates, CHECKPOINT
votes and snapshots, the stable checkpoint and the view-change state, each
changed by several paths; a path that forgets one mostly changes nothing a
client sees. Here: each kind of inconsistency planted in a running replica is
reported (and the replica audits clean before and after); and a swarm finds
the broken variant ``pbft-gc-keeps-stable-number`` (garbage collection off by
one) by this check alone, every run of it linearizable, while the correct
protocol passes the same seed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from msgspec.structs import replace
from test_pbft_pitfalls import at, pbft_of, quiet_options, simulator
from test_pbft_variants import ALL_FAULTS

from replicaio.protocols.pbft.audit import audit_pbft
from replicaio.protocols.pbft.messages import Checkpoint
from replicaio.protocols.pbft.normal import Slot
from replicaio.protocols.pbft.pbft import Pbft
from replicaio.sim.kv_harness import KvWorkload, kv_options
from replicaio.sim.simulator import SimResult, Simulator

Undo = Callable[[], None]
K = TypeVar("K")
V = TypeVar("V")


def put(table: dict[K, V], key: K, value: V) -> Undo:
    """``table[key] = value``; the undo restores what was there."""
    had = key in table
    old = table.get(key)
    table[key] = value

    def undo() -> None:
        if had:
            table[key] = old  # type: ignore[assignment]
        else:
            del table[key]

    return undo


def setting(target: object, name: str, value: object) -> Undo:
    old = getattr(target, name)
    setattr(target, name, value)
    return lambda: setattr(target, name, old)


def prepared_slot(pbft: Pbft) -> Slot:
    return next(slot for _, slot in sorted(pbft.slots.items()) if slot.prepared and slot.prepares)


def committed_pre_prepare(pbft: Pbft) -> Any:
    return next(slot.committed for slot in pbft.slots.values() if slot.committed is not None)


def certified_unstable(pbft: Pbft) -> Undo:
    seq = pbft.stable_seq + pbft.params.checkpoint_interval
    votes = {replica: Checkpoint(seq, b"d" * 32, replica, b"") for replica in range(pbft.quorum)}
    undo_votes = put(pbft.checkpoints.votes, seq, votes)
    undo_snapshot = put(pbft.checkpoints.snapshots, seq, (b"d" * 32, b""))

    def undo() -> None:
        undo_snapshot()
        undo_votes()

    return undo


def foreign_prepare(pbft: Pbft) -> Undo:
    slot = prepared_slot(pbft)
    replica, prepare = next(iter(slot.prepares.items()))
    return put(slot.prepares, replica, replace(prepare, view=pbft.view + 1))


# plant (on a backup, returns its undo) -> a phrase of the problem it must cause
BACKUP_PLANTS: dict[str, tuple[Callable[[Pbft], Undo], str]] = {
    "slot kept at h": (
        lambda pbft: put(pbft.slots, pbft.stable_seq, Slot(pbft.stable_seq)),
        "outside the window"),
    "slot above H": (
        lambda pbft: put(pbft.slots, pbft.high + 1, Slot(pbft.high + 1)),
        "outside the window"),
    "slot misfiled": (
        lambda pbft: put(pbft.slots, pbft.executed + 2, Slot(pbft.executed + 3)),
        "filed under another number"),
    "prepared certificate kept at h": (
        lambda pbft: put(pbft.prepared_proofs, pbft.stable_seq,
                         next(iter(pbft.prepared_proofs.values()))),
        "prepared certificates"),
    "prepared certificate short of 2f": (
        lambda pbft: put(pbft.prepared_proofs, prepared_slot(pbft).seq,
                         replace(pbft.prepared_proofs[prepared_slot(pbft).seq], prepares=())),
        "is not one"),
    "executed ahead of the log": (
        lambda pbft: setting(pbft, "executed", pbft.executed + 5), "nothing committed"),
    "committed, not executed": (
        lambda pbft: put(pbft.slots, pbft.executed + 1, committed_slot(pbft)),
        "committed but not executed"),
    "h not a multiple of K": (
        lambda pbft: setting(pbft, "stable_seq", pbft.stable_seq + 1), "not a multiple of K"),
    "stable certificate short": (
        lambda pbft: setting(pbft, "stable_proof", pbft.stable_proof[:1]), "certificate is not"),
    "checkpoint votes kept at h": (
        lambda pbft: put(pbft.checkpoints.votes, pbft.stable_seq, {}),
        "checkpoint votes kept"),
    "far vote within the window": (
        lambda pbft: put(pbft.checkpoints.far, 1, pbft.stable_proof[0]),
        "far checkpoint vote"),
    "certified checkpoint not stable": (certified_unstable, "not stable"),
    "own snapshot kept at h": (
        lambda pbft: put(pbft.checkpoints.snapshots, pbft.stable_seq, (b"", b"")),
        "own snapshots"),
    "prepared without its certificate": (
        lambda pbft: put(pbft.prepared_proofs, prepared_slot(pbft).seq,
                         next(proof for seq, proof in pbft.prepared_proofs.items()
                              if seq != prepared_slot(pbft).seq)),
        "prepared without its prepared certificate"),
    "PREPARE of another view": (foreign_prepare, "holds a PREPARE of another"),
    "own VIEW-CHANGE while active": (
        lambda pbft: setting(pbft.view_changes, "own", pbft.view_changes.build(pbft.view + 1)),
        "VIEW-CHANGEs for it held"),
    "changing views with the old view's votes": (
        lambda pbft: setting(pbft, "active", False), "holds messages of a view"),
}
PRIMARY_PLANTS: dict[str, tuple[Callable[[Pbft], Undo], str]] = {
    "the primary numbers again": (
        lambda pbft: setting(pbft.normal, "seq_next", pbft.stable_seq + 1),
        "the primary would number"),
}


def committed_slot(pbft: Pbft) -> Slot:
    slot = Slot(pbft.executed + 1)
    slot.committed = committed_pre_prepare(pbft)
    return slot


@pytest.fixture(scope="module")
def planted() -> dict[str, tuple[list[str], list[str], list[str]]]:
    """One quiet run; at 1 s, past several stable checkpoints, each plant in
    turn on a backup (or the primary): the audit before, with, and after it."""
    sim = simulator(quiet_options(1))
    found: dict[str, tuple[list[str], list[str], list[str]]] = {}

    def plant_all() -> None:
        for node, plants in ((1, BACKUP_PLANTS), (0, PRIMARY_PLANTS)):
            pbft = pbft_of(sim, node)
            assert pbft.stable_seq > 0 and pbft.active and pbft.view == 0
            for name, (plant, _) in plants.items():
                before = audit_pbft(pbft)
                undo = plant(pbft)
                during = audit_pbft(pbft)
                undo()
                found[name] = (before, during, audit_pbft(pbft))

    at(sim, 1_000_000, plant_all)
    result = sim.run()
    assert result.violations == []
    return found


@pytest.mark.parametrize("name", sorted({**BACKUP_PLANTS, **PRIMARY_PLANTS}))
def test_each_planted_inconsistency_is_reported(
    planted: dict[str, tuple[list[str], list[str], list[str]]], name: str,
) -> None:
    before, during, after = planted[name]
    phrase = {**BACKUP_PLANTS, **PRIMARY_PLANTS}[name][1]
    assert before == [] and after == []
    assert any(phrase in problem for problem in during), during


# The default swarm (n = 4, one Byzantine replica, every fault kind): the first
# stable checkpoint leaves the leak, the next audit reports it.
GC_SEED = 1


def default_swarm(protocol: str, seed: int) -> SimResult:
    options = kv_options(seed, 4, ALL_FAULTS, KvWorkload(nemesis_every_us=2_000_000),
                         byzantine=1, adversary=None, protocol="pbft")
    return Simulator(protocol, options, f=1, record=False).run()


def test_the_swarm_finds_a_garbage_collection_off_by_one_that_no_other_checker_sees() -> None:
    broken = default_swarm("pbft-gc-keeps-stable-number", GC_SEED)
    assert {violation["property"] for violation in broken.violations} == {"internal-consistency"}
    assert "outside the window" in str(broken.violations[0]["detail"])
    assert broken.stats.get("linearizable") is True
    correct = default_swarm("pbft", GC_SEED)
    assert correct.violations == []
    assert correct.stats.get("linearizable") is True
