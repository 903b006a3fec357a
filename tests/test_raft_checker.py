"""The Raft checkers on their own, fed with hand-made outputs: each property
holds on a correct history and fails on a broken one, whichever order the
outputs arrive in."""

from __future__ import annotations

from typing import Any

from replicaio.check.raft import RaftChecker
from replicaio.protocols.raft import (
    Applied,
    BecameLeader,
    LeaderCommitted,
    ReadConfirmed,
    ReadRequested,
    Restarted,
    SnapshotInstalled,
    Voted,
)

D1, D2 = b"\x01" * 8, b"\x02" * 8


def feed(*outputs: Any) -> set[str]:
    checker = RaftChecker()
    for output in outputs:
        checker.on_output(getattr(output, "node", 0), output, 0)
    return {violation.property for violation in checker.violations}


def leader(node: int, term: int, runs: tuple[tuple[int, int], ...], last: int,
           snapshot: tuple[int, int] = (0, 0)) -> BecameLeader:
    return BecameLeader(node, term, snapshot[0], snapshot[1], last, runs)


def test_election_safety() -> None:
    assert feed(leader(0, 3, (), 0), leader(0, 3, (), 0), leader(1, 4, (), 0)) == set()
    assert feed(leader(0, 3, (), 0), leader(1, 3, (), 0)) == {"election_safety"}


def test_leader_completeness_in_either_order() -> None:
    committed = LeaderCommitted(0, 2, 5, 2)
    good = leader(1, 3, ((1, 1), (4, 2)), 6)
    missing = leader(1, 3, ((1, 1),), 4)
    other_term = leader(1, 3, ((1, 1), (5, 3)), 6)
    in_snapshot = leader(1, 3, ((7, 2),), 8, snapshot=(6, 2))
    earlier_leader = leader(1, 2, ((1, 1),), 3)  # term 2 itself: not bound by term 2's commits
    assert feed(committed, good, in_snapshot, earlier_leader) == set()
    assert feed(committed, missing) == {"leader_completeness"}
    assert feed(other_term, committed) == {"leader_completeness"}


def test_log_matching_and_state_machine_safety() -> None:
    assert feed(Applied(0, 5, 2, D1), Applied(1, 5, 2, D1)) == set()
    assert feed(Applied(0, 5, 2, D1), Applied(1, 5, 2, D2)) == {"log_matching"}
    assert feed(Applied(0, 5, 2, D1), Applied(1, 5, 3, D2)) == {"state_machine_safety"}
    assert feed(Applied(0, 5, 2, D1), SnapshotInstalled(1, 5, 2, D1)) == set()
    assert feed(SnapshotInstalled(1, 5, 2, D2), Applied(0, 5, 2, D1)) == {"log_matching"}


def test_reads_must_cover_what_was_committed_before_they_were_asked() -> None:
    assert feed(LeaderCommitted(0, 1, 10, 1), ReadRequested(0, 7, 1),
                ReadConfirmed(0, 7, 10)) == set()
    assert feed(ReadRequested(0, 7, 1), LeaderCommitted(0, 1, 10, 1),
                ReadConfirmed(0, 7, 9)) == set()  # committed after the read was asked
    assert feed(LeaderCommitted(0, 1, 10, 1), ReadRequested(1, 7, 1),
                ReadConfirmed(1, 7, 9)) == {"linearizable_read"}


def test_reads_tracked_are_bounded() -> None:
    checker = RaftChecker(reads_tracked_max=3)
    for read in range(10):
        checker.on_output(0, ReadRequested(0, read, 1), 0)
    assert len(checker.reads) == 3


def test_one_vote_per_term_per_disk() -> None:
    assert feed(Voted(2, 5, 0), Voted(2, 5, 0), Voted(2, 6, 1)) == set()
    assert feed(Voted(2, 5, 0), Voted(2, 5, 1)) == {"one_vote_per_term"}
    new_disk = (Restarted(2, 11, 5, -1, 0, 4), Restarted(2, 22, 0, -1, 0, 0))
    assert feed(new_disk[0], Voted(2, 5, 0), new_disk[1], Voted(2, 5, 1)) == set()


def test_durable_state_across_restarts_on_one_disk() -> None:
    base = (Restarted(2, 11, 0, -1, 0, 0), Voted(2, 5, 0), Applied(2, 4, 5, D1))
    assert feed(*base, Restarted(2, 11, 5, 0, 0, 4)) == set()
    assert feed(*base, Restarted(2, 11, 5, -1, 0, 4)) == {"durable_state"}  # vote lost
    assert feed(*base, Restarted(2, 11, 4, -1, 0, 4)) == {"durable_state"}  # term lost
    assert feed(*base, Restarted(2, 11, 5, 0, 0, 3)) == {"durable_state"}  # entry lost
    assert feed(*base, Restarted(2, 99, 0, -1, 0, 0)) == set()  # a new disk promises nothing


def test_the_commit_rule() -> None:
    assert feed(LeaderCommitted(0, 3, 7, 3)) == set()
    assert feed(LeaderCommitted(0, 3, 7, 2)) == {"commit_rule"}


def test_liveness_after_the_heal() -> None:
    checker = RaftChecker()
    checker.on_output(0, LeaderCommitted(0, 1, 4, 1), 10)
    checker.begin_liveness(100)
    assert not checker.settled()
    assert [v.property for v in checker.finish(5_000)] == ["liveness"]
    checker = RaftChecker()
    checker.begin_liveness(100)
    checker.on_output(0, LeaderCommitted(0, 2, 1, 2), 200)
    assert checker.settled()
    assert checker.finish(5_000) == []
    assert checker.summary()["raft_commit_index_max"] == 1
