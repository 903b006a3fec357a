"""``commit_durable_quorum``: at a leader's commit, a majority of its voters
durably holds the entry (``replicaio.protocols.raft.durable``), read from
records laid out as Raft writes them (``state.py``).

The swarm side (the mutant and the variants it catches, thousands of seeds of
correct Raft) is in tests/test_raft_mutants.py, tests/test_group_commit.py and
docs/simulation.md, "Mutation sweeps".
"""

from __future__ import annotations

from replicaio.core.codec import Codec
from replicaio.core.node import Node
from replicaio.protocols.raft.durable import COMMIT_DURABLE_QUORUM, commit_not_durable, holds
from replicaio.protocols.raft.messages import UNREGISTERED, Config, LeaderCommitted
from replicaio.protocols.raft.state import config_to_plain, entry_name

CODEC = Codec()
PREFIX = Node.storage_key(("raft",), "")
THREE = Config(((0, 10), (1, 11), (2, 12)), ())


def disk(identity: int, entries: dict[int, int], snapshot: tuple[int, int] | None = None
         ) -> dict[str, bytes]:
    """Raft's records of one disk: its identity, entries (index -> term), a snapshot."""
    records = {PREFIX + "identity": CODEC.encode_value((identity, False))}
    for index, term in entries.items():
        records[PREFIX + entry_name(index)] = CODEC.encode_value((term, b"x", None))
    if snapshot is not None:
        index, term = snapshot
        records[PREFIX + "snapshot"] = CODEC.encode_value(
            (index, term, bytes(8), config_to_plain(THREE), b"state"))
    return records


def verdict(disks: list[dict[str, bytes]], config: Config = THREE,
            replaced: Config | None = None, lost: tuple[int, ...] = ()) -> str | None:
    output = LeaderCommitted(node=1, term=3, index=7, entry_term=3)
    return commit_not_durable(output, config, replaced, disks.__getitem__, PREFIX, CODEC, lost)


def test_an_entry_is_held_as_an_entry_of_its_term_or_inside_a_snapshot() -> None:
    assert holds(disk(10, {7: 3}), PREFIX, CODEC, 7, 3)
    assert not holds(disk(10, {7: 2}), PREFIX, CODEC, 7, 3)  # another term's entry
    assert not holds(disk(10, {6: 3}), PREFIX, CODEC, 7, 3)
    assert holds(disk(10, {}, snapshot=(7, 3)), PREFIX, CODEC, 7, 3)
    assert not holds(disk(10, {}, snapshot=(7, 2)), PREFIX, CODEC, 7, 3)
    assert holds(disk(10, {}, snapshot=(9, 3)), PREFIX, CODEC, 7, 3)  # a later snapshot covers it
    assert not holds(disk(10, {}, snapshot=(5, 3)), PREFIX, CODEC, 7, 3)


def test_a_majority_of_the_voters_must_hold_it() -> None:
    assert verdict([disk(10, {7: 3}), disk(11, {7: 3}), disk(12, {})]) is None
    problem = verdict([disk(10, {6: 3}), disk(11, {7: 3}), disk(12, {})])
    assert problem is not None and "only voters [1] of [0, 1, 2]" in problem
    assert COMMIT_DURABLE_QUORUM == "commit_durable_quorum"


def test_learners_never_count() -> None:
    config = Config(((1, 11), (2, 12)), ((0, 10),))
    assert verdict([disk(10, {7: 3}), disk(11, {7: 3}), disk(12, {})], config) is not None
    assert verdict([disk(10, {}), disk(11, {7: 3}), disk(12, {7: 3})], config) is None


def test_a_disk_other_than_the_registered_one_does_not_count() -> None:
    """Node 0's disk was replaced (identity 20): its copy is not the registered
    disk's; an unregistered slot accepts any disk."""
    assert verdict([disk(20, {7: 3}), disk(11, {7: 3}), disk(12, {7: 3})]) is None
    assert verdict([disk(20, {7: 3}), disk(11, {7: 3}), disk(12, {})]) is not None
    unregistered = Config(((0, UNREGISTERED), (1, 11), (2, 12)), ())
    assert verdict([disk(20, {7: 3}), disk(11, {7: 3}), disk(12, {})], unregistered) is None


def test_a_configuration_appended_after_the_index_leaves_the_one_it_replaced_valid() -> None:
    """A single-server change appended after the committed index: a majority
    of either configuration will do (their majorities overlap)."""
    four = Config(((0, 10), (1, 11), (2, 12), (3, 13)), ())
    disks = [disk(10, {7: 3}), disk(11, {7: 3}), disk(12, {}), disk(13, {})]
    assert verdict(disks, four) is not None
    assert verdict(disks, four, replaced=THREE) is None


def test_a_disk_that_lost_synced_writes_is_given_the_benefit_of_the_doubt() -> None:
    disks = [disk(10, {}), disk(11, {7: 3}), disk(12, {})]
    assert verdict(disks) is not None
    assert verdict(disks, lost=(0,)) is None
