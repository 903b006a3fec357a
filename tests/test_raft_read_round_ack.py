"""A follower answers a read round before its flush (ADR 0070, docs/raft.md "Reads").

The answer to an AppendEntries claims a match, so it leaves only once the
entries it carries are durable; a read round that rides on entries then waited
for the follower's flush. The follower also sends a ``ReadRoundAck`` marked to
leave before the sync, at the first message of a new round, when its answer
would wait for a flush and its term and vote are durable. The leader counts it
for the round and never toward a match.

Broken on purpose: ``raft-early-round-answer-with-match`` sends the whole
acknowledgement (the match) early instead; the swarm with group commit catches
it on a pinned seed, and the correct protocol passes the same seed.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_raft_cluster import Cluster
from test_raft_reads import confirmed

from replicaio.cli import main
from replicaio.protocols.raft import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    ReadRoundAck,
)
from replicaio.sim.kv_harness import KvWorkload, kv_options
from replicaio.sim.simulator import Simulator

# Two heartbeats (FAST_PARAMS) and a little: a turn of the follower's durability
# timer that began before the last append, and a whole quiet one after it.
QUIET_US = 20_010


def settled_follower() -> Cluster:
    """Node 0 leads and is then down; node 1 follows it (term durable), and the
    tests hand it node 0's AppendEntries by hand."""
    cluster = Cluster(3)
    cluster.start()
    cluster.elect(0)
    cluster.submit(0, b"w0")
    assert cluster.run(until=lambda: cluster.all_applied(b"w0"))
    cluster.crash(0)
    return cluster


def append(cluster: Cluster, follower: int, round_: int, *, entries: int = 1,
           term: int | None = None) -> AppendEntries:
    """Node 0's next AppendEntries to ``follower``, at the end of its log."""
    view = cluster.view(follower)
    term = view.term if term is None else term
    return AppendEntries(
        term, 0, view.last_index, view.last_term,
        tuple(Entry(term, b"e%d" % index) for index in range(entries)),
        view.commit_index, round_,
    )


def early(cluster: Cluster, since: int) -> list[Any]:
    return [message for _, _, message in cluster.sent_before_sync[since:]]


def test_a_round_riding_on_entries_is_answered_before_the_flush_once_the_term_is_durable() -> None:
    cluster = settled_follower()
    # First round seen with entries: whether the term and vote are durable is not
    # known yet (learned a heartbeat later, from a timer armed after this step's
    # sync), so only the usual answer goes.
    mark = len(cluster.sent_before_sync)
    sent = cluster.inject(0, 1, append(cluster, 1, 1))
    assert [type(message) for message in sent] == [AppendEntriesResponse]
    assert early(cluster, mark) == []
    cluster.run(QUIET_US)  # a heartbeat without appends: they and the term are durable
    # A new round without entries and nothing left unsynced: the answer is as
    # quick, no ack.
    sent = cluster.inject(0, 1, append(cluster, 1, 2, entries=0))
    assert [type(message) for message in sent] == [AppendEntriesResponse]
    # The next round with entries: a ReadRoundAck before the sync, then the answer.
    mark = len(cluster.sent_before_sync)
    sent = cluster.inject(0, 1, append(cluster, 1, 3))
    term = cluster.view(1).term
    assert sent[0] == ReadRoundAck(term, 3, cluster.view(1).identity)
    assert type(sent[1]) is AppendEntriesResponse and sent[1].round == 3
    assert early(cluster, mark) == [sent[0]]  # only the ack leaves before the sync
    assert cluster.node_counters(1)["raft_read_rounds_answered_early"] == 1
    # The same round again (more entries): answered already, no second ack.
    sent = cluster.inject(0, 1, append(cluster, 1, 3))
    assert [type(message) for message in sent] == [AppendEntriesResponse]
    # A new round without entries while appends may not be durable yet: acked
    # early (its answer would wait for their flush).
    sent = cluster.inject(0, 1, append(cluster, 1, 4, entries=0))
    assert [type(message) for message in sent] == [ReadRoundAck, AppendEntriesResponse]
    assert cluster.node_counters(1)["raft_read_rounds_answered_early"] == 2


def test_no_early_answer_in_a_term_not_yet_durable() -> None:
    """A message of a newer term makes the follower adopt it in that step: the
    term is not durable before the sync, so nothing is said early in it; once
    the sync is known, the next round is."""
    cluster = settled_follower()
    cluster.inject(0, 1, append(cluster, 1, 1))
    cluster.run(QUIET_US)  # term and vote known durable
    newer = cluster.view(1).term + 1
    mark = len(cluster.sent_before_sync)
    sent = cluster.inject(0, 1, append(cluster, 1, 1, term=newer))
    assert cluster.view(1).term == newer
    assert [type(message) for message in sent] == [AppendEntriesResponse]
    assert early(cluster, mark) == []
    cluster.run(QUIET_US)
    sent = cluster.inject(0, 1, append(cluster, 1, 2, term=newer))
    assert sent[0] == ReadRoundAck(newer, 2, cluster.view(1).identity)


def test_the_leader_counts_an_early_answer_for_the_round_and_never_as_a_match() -> None:
    cluster = Cluster(3)
    cluster.start()
    cluster.elect(0)
    assert cluster.run(until=lambda: cluster.committed_in_term(0))
    # The followers' usual answers are lost: only a ReadRoundAck can confirm.
    cluster.drop = lambda source, destination, message: type(message) is AppendEntriesResponse
    cluster.submit(0, b"w1")
    cluster.request(0, "read")
    cluster.run(50)
    assert confirmed(cluster, 0) == [-1]
    leader = cluster.raft(0)
    progress = leader.replication.progress[1]
    match, commit = progress.match_index, leader.commit_index
    ack = ReadRoundAck(leader.hard.term, leader.reads.round, cluster.view(1).identity)
    cluster.inject(1, 0, ack)
    assert confirmed(cluster, 0) == [commit]
    assert progress.acked_round == leader.reads.round
    assert progress.match_index == match  # w1 is not acknowledged by it
    assert leader.commit_index == commit
    # An ack of an older term is ignored; one of a newer term deposes the leader.
    stale = ReadRoundAck(leader.hard.term - 1, leader.reads.round + 1, ack.identity)
    before = cluster.node_counters(0).get("raft_ignored_stale_response", 0)
    cluster.inject(1, 0, stale)
    assert cluster.node_counters(0)["raft_ignored_stale_response"] == before + 1
    cluster.inject(1, 0, ReadRoundAck(leader.hard.term + 1, 0, ack.identity))
    assert cluster.view(0).term == ack.term + 1 and 0 not in cluster.leaders()


def test_a_simulated_kv_run_answers_rounds_early_and_stays_clean() -> None:
    faults = ("crash", "partition", "loss", "dup", "reorder", "sync")
    answered = 0
    for seed in (1, 2, 3):
        result = Simulator("raft", kv_options(seed, 3, faults, KvWorkload()), f=1,
                           record=False).run()
        assert result.ok, result.violations
        answered += result.counters.get("raft_read_rounds_answered_early", 0)
    assert answered > 0


# `replicaio swarm raft-early-round-answer-with-match --nodes 3 --faults crash,sync
# --seeds 200` fails seed 14 only (leader_completeness); with every other fault kind
# as well (crash,partition,loss,dup,reorder,sync) none of 200.
CAUGHT_ARGS = ("--nodes", "3", "--faults", "crash,sync", "--seed", "14")


def sim_json(capsys: pytest.CaptureFixture[str], protocol: str, *args: str) -> dict[str, Any]:
    main(["sim", protocol, *args, "--json"])
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    return report


def test_an_early_answer_counted_as_a_match_is_caught(
    capsys: pytest.CaptureFixture[str],
) -> None:
    broken = sim_json(capsys, "raft-early-round-answer-with-match", *CAUGHT_ARGS)
    # The commit that counted the early answer, at the step that decides it
    # (check40; before, its consequence, leader_completeness, once a crash
    # during the follower's sync lost the entry).
    assert [v["property"] for v in broken["violations"]] == ["commit_durable_quorum"]
    correct = sim_json(capsys, "raft", *CAUGHT_ARGS)
    assert correct["violations"] == []
    assert correct["counters"]["raft_read_rounds_answered_early"] > 0
