"""The commit index told by an unanswered ``CommitNotice``
(``RaftParams.commit_notice``): what it saves, and the AppendEntries
consistency check it keeps (``raft-notice-unchecked`` drops the check)."""

from __future__ import annotations

import dataclasses

import pytest
from test_raft_cluster import FAST_PARAMS, Cluster
from test_smr import read, value_of, write

from replicaio.assembly import protocol_factory
from replicaio.core.errors import ConfigError
from replicaio.core.lines import Line
from replicaio.core.node import ProtocolFactory
from replicaio.protocols.raft import (
    AppendEntries,
    AppendEntriesResponse,
    CommitNotice,
    Entry,
    LeaderCommitted,
    Raft,
    RaftParams,
)
from replicaio.smr.api import Reply
from replicaio.smr.protocol import SmrProtocol
from replicaio.testing.variants.raft import RAFT_VARIANTS

NOTICE = dataclasses.replace(FAST_PARAMS, commit_notice=True)
# Heartbeats rarer than a commit round, so that none falls inside one.
SLOW_HEARTBEAT = dataclasses.replace(
    FAST_PARAMS, heartbeat_us=40_000, election_timeout_min_us=200_000,
    election_timeout_max_us=400_000,
)


def committed_one_batch(*, notice: bool) -> Cluster:
    cluster = Cluster(3, dataclasses.replace(SLOW_HEARTBEAT, commit_notice=notice))
    cluster.start()
    cluster.elect(0)
    assert cluster.run(until=cluster.caught_up)
    cluster.sent.clear()
    cluster.submit(0, b"a")
    assert cluster.run(until=lambda: cluster.all_applied(b"a"))
    return cluster


def test_a_commit_reaches_idle_followers_by_one_unanswered_notice_each() -> None:
    """One batch, no heartbeat meanwhile: the entries, their acknowledgements,
    then one notice per follower and nothing back; followers apply at once."""
    cluster = committed_one_batch(notice=True)
    assert [d for _, d, _ in cluster.messages(CommitNotice, 0)] == [1, 2]
    assert len(cluster.messages(AppendEntries, 0)) == 2
    assert len(cluster.messages(AppendEntriesResponse)) == 2
    cluster.assert_safe()


def test_without_notices_the_commit_costs_a_second_acknowledged_round() -> None:
    cluster = committed_one_batch(notice=False)
    assert cluster.messages(CommitNotice) == []
    assert len(cluster.messages(AppendEntries, 0)) == 4
    assert len(cluster.messages(AppendEntriesResponse)) == 4
    cluster.assert_safe()


@pytest.mark.parametrize("raft_type", [Raft, RAFT_VARIANTS["raft-notice-unchecked"].raft_type])
def test_a_notice_commits_only_where_the_followers_log_matches_the_leaders(
    raft_type: type[Raft],
) -> None:
    """Follower 2, cut off, holds two entries of term 2 that nobody else has
    (a leader of term 2 that reached only it); then a leader of a later
    term, whose log differs from there, tells it commit index ``last + 2``
    at ``prev_log_index`` ``last + 2`` of its own term. The follower's entry
    there is of term 2: the check fails, nothing is committed. The variant
    commits up to its own last entry and applies what the others never
    apply: they commit ``b`` at ``last + 1`` and state machine safety breaks.
    (A hand-made history; the swarms reach it with the ``rewrite`` fault kind,
    a lost overwrite bringing the stale entries back: tests/test_raft_mutants.py.)"""
    cluster = Cluster(3, NOTICE, raft_type=raft_type)
    cluster.start()
    cluster.elect(0)
    cluster.submit(0, b"a")
    assert cluster.run(until=lambda: cluster.all_applied(b"a"))
    last = cluster.view(2).last_index
    cluster.isolate(2)
    cluster.inject(1, 2, AppendEntries(
        2, 1, last, 1, (Entry(2, b"stale-1"), Entry(2, b"stale-2")), 0, 0,
    ))
    assert cluster.view(2).last_index == last + 2
    assert cluster.inject(0, 2, CommitNotice(3, 0, last + 2, 3, last + 2)) == []
    cluster.submit(0, b"b")
    assert cluster.run(until=lambda: cluster.all_applied(b"b", [0, 1]))
    properties = {violation.property for violation in cluster.checker.violations}
    if raft_type is Raft:
        assert cluster.view(2).commit_index == last
        assert cluster.node_counters(2).get("raft_ignored_commit_notice_mismatch") == 1
        assert properties == set()
    else:
        assert cluster.view(2).commit_index == last + 2
        assert "state_machine_safety" in properties, cluster.checker.violations


HELD_US = 5_000  # five network latencies


def test_a_held_notice_goes_alone_only_when_no_entries_carried_the_commit() -> None:
    """``commit_notice_delay_us``: the commit of ``a`` waits for entries; ``b``
    follows within the delay and its AppendEntries tell the followers that
    ``a`` is committed (they apply it without a notice), which ends that
    delay early (no timer step that would find nothing to tell); nothing
    follows ``b``, so its commit goes by one notice per follower once a delay
    begun at ``b``'s commit is over."""
    params = dataclasses.replace(SLOW_HEARTBEAT, commit_notice_delay_us=HELD_US)
    cluster = Cluster(3, params)
    cluster.start()
    cluster.elect(0)
    assert cluster.run(until=cluster.caught_up)
    cluster.sent.clear()
    cluster.submit(0, b"a")
    assert cluster.run(until=lambda: cluster.all_applied(b"a", [0]))
    committed_a = cluster.now
    cluster.submit(0, b"b")
    assert cluster.run(until=lambda: cluster.all_applied(b"a"))
    assert cluster.messages(CommitNotice) == []
    assert cluster.now - committed_a < HELD_US
    assert cluster.run(until=lambda: cluster.all_applied(b"b", [0]))
    committed_b = cluster.now
    assert cluster.run(until=lambda: cluster.all_applied(b"b"))
    # (the delay counts from the first commit left untold since every follower
    # heard one: b's, as b's entries told a's and ended a's delay)
    assert HELD_US <= cluster.now - committed_b <= HELD_US + 2 * cluster.latency_us
    assert [d for _, d, _ in cluster.messages(CommitNotice, 0)] == [1, 2]
    assert len(cluster.messages(AppendEntries, 0)) == 4  # a and b, to each follower
    cluster.assert_safe()


def test_a_notice_at_once_costs_one_frame_per_follower_per_commit() -> None:
    """The same history with no delay: four notices, the followers apply ``a``
    before ``b`` is sent."""
    cluster = Cluster(3, dataclasses.replace(SLOW_HEARTBEAT, commit_notice_delay_us=0))
    cluster.start()
    cluster.elect(0)
    assert cluster.run(until=cluster.caught_up)
    cluster.sent.clear()
    cluster.submit(0, b"a")
    assert cluster.run(until=lambda: cluster.all_applied(b"a", [0]))
    cluster.submit(0, b"b")
    assert cluster.run(until=lambda: cluster.all_applied(b"b"))
    assert sorted(d for _, d, _ in cluster.messages(CommitNotice, 0)) == [1, 1, 2, 2]
    cluster.assert_safe()


@pytest.mark.parametrize("delay_us", [-1, 40_000])
def test_a_notice_delay_outside_zero_to_a_heartbeat_is_refused(delay_us: int) -> None:
    with pytest.raises(ConfigError, match="commit_notice_delay_us"):
        dataclasses.replace(SLOW_HEARTBEAT, commit_notice_delay_us=delay_us).validate()
    assert RaftParams().commit_notice_delay_us == 1_000  # ADR 0044


# -- hurry: a notice held for entries goes at once where a client waits ----------


class SmrCluster(Cluster):
    """The hand-driven cluster with SMR and the key-value store over Raft, as
    the service ``name`` builds them (``replicaio.assembly``)."""

    def __init__(self, name: str) -> None:
        super().__init__(3, RaftParams())  # the service's Raft periods: the default ones
        self.service = protocol_factory(name)

    def node_factory(self, *, join: bool) -> ProtocolFactory:
        assert not join
        return self.service

    def raft(self, node: int) -> Raft:
        core = self.nodes[node]
        assert core is not None and isinstance(core.protocol, SmrProtocol)
        ordering = core.protocol.ordering
        assert isinstance(ordering, Raft)
        return ordering

    def replies(self, node: int) -> list[tuple[int, Reply]]:
        return [(at, output) for at, source, output in self.outputs
                if source == node and isinstance(output, Reply)]

    def committed_at(self, index: int) -> int:
        """When the leader committed ``index``."""
        return min(at for at, _, output in self.outputs
                   if isinstance(output, LeaderCommitted) and output.index >= index)

    def settle(self) -> None:
        """Elected, caught up, every held commit told."""
        self.elect(0)
        assert self.run(until=self.caught_up)
        self.run(for_us=2 * HELD_US)
        self.sent.clear()


def test_a_write_through_a_follower_is_told_its_commit_at_once_the_idle_follower_later() -> None:
    """Notices held ``HELD_US``: follower 2 relays its client's write to the
    leader, whose SMR names 2 as waiting (``Hurry``). The commit reaches 2 by a
    notice at once and its client has the reply about one latency after the
    commit; follower 1, where nobody waits, still hears of it only after the
    delay. Without the hurry, 2's reply would wait out the delay too."""
    cluster = SmrCluster(f"raft:notice_us={HELD_US}")
    cluster.start()
    cluster.settle()
    cluster.request(2, write(7, 1, "put", b"k", b"v"))
    assert cluster.run(until=lambda: bool(cluster.replies(2)), limit_us=HELD_US * 4)
    [(replied_at, reply)] = cluster.replies(2)
    assert (reply.client, reply.seq, reply.replica) == (7, 1, 2)
    committed_at = cluster.committed_at(cluster.view(0).last_index)
    assert replied_at - committed_at <= 2 * cluster.latency_us < HELD_US
    assert [d for _, d, _ in cluster.messages(CommitNotice, 0)] == [2]
    assert cluster.run(until=lambda: cluster.view(1).commit_index == cluster.view(0).commit_index)
    assert cluster.now - committed_at >= HELD_US
    cluster.assert_safe()


def test_a_lease_read_through_a_follower_is_told_the_commit_with_its_read_index() -> None:
    """A write through the leader, then at once a read through follower 2:
    the leader's lease answers the read index at once, and the commit of the
    write, held for entries, goes to 2 with it, so the read is served within
    a few latencies instead of after the delay."""
    cluster = SmrCluster(f"raft:lease=1,notice_us={HELD_US}")
    cluster.start()
    cluster.settle()
    cluster.request(0, write(7, 1, "put", b"k", b"v"))
    assert cluster.run(until=lambda: bool(cluster.replies(0)), limit_us=HELD_US * 4)
    assert cluster.view(2).commit_index < cluster.view(0).commit_index  # held
    asked_at = cluster.now
    cluster.request(2, read(8, 1, b"k"))
    assert cluster.run(until=lambda: bool(cluster.replies(2)), limit_us=HELD_US * 4)
    [(replied_at, reply)] = cluster.replies(2)
    assert value_of(reply) == b"v"
    assert cluster.node_counters(0).get("raft_reads_lease", 0) == 1
    assert replied_at - asked_at <= 3 * cluster.latency_us < HELD_US
    cluster.assert_safe()


# -- heartbeats that need no answer (docs/raft.md) --------------------------------------------

# check-quorum every 60 ms, heartbeats every 10 ms: six heartbeats per interval
IDLE = dataclasses.replace(FAST_PARAMS, election_timeout_min_us=60_000)


def idle_cluster(params: RaftParams) -> Cluster:
    cluster = Cluster(3, params)
    cluster.start()
    cluster.elect(0)
    cluster.submit(0, b"a")
    assert cluster.run(until=lambda: cluster.all_applied(b"a"))
    cluster.sent.clear()
    return cluster


def heartbeats_to(cluster: Cluster, peer: int) -> tuple[int, int]:
    """(entry-less AppendEntries, CommitNotices) the leader sent ``peer``."""
    answered = [m for _, d, m in cluster.messages(AppendEntries, 0) if d == peer and not m.entries]
    return len(answered), len([d for _, d, _ in cluster.messages(CommitNotice, 0) if d == peer])


def test_an_idle_followers_heartbeats_go_unanswered_but_one_per_check_quorum_interval() -> None:
    """Every entry acknowledged, no read waiting: a heartbeat's answer could
    change nothing but check-quorum's activity, so only the first heartbeat of
    each check-quorum interval is an AppendEntries; the rest are notices. The
    leader keeps its leadership (its quorum answered in every interval)."""
    cluster = idle_cluster(IDLE)
    cluster.run(600_000)
    for peer in (1, 2):
        answered, unanswered = heartbeats_to(cluster, peer)
        assert 8 <= answered <= 12, (answered, unanswered)  # 600 ms / 60 ms
        assert unanswered >= 4 * answered, (answered, unanswered)
    assert len(cluster.messages(AppendEntriesResponse)) == len(
        [m for _, _, m in cluster.messages(AppendEntries, 0)]
    )
    assert cluster.leaders() == [0]
    assert cluster.count("raft_check_quorum_stepped_down") == 0
    cluster.assert_safe()


def test_without_check_quorum_every_heartbeat_is_answered() -> None:
    cluster = idle_cluster(dataclasses.replace(IDLE, check_quorum=False))
    cluster.run(600_000)
    for peer in (1, 2):
        answered, unanswered = heartbeats_to(cluster, peer)
        assert answered >= 55 and unanswered == 0, (answered, unanswered)
    cluster.assert_safe()


def test_a_read_round_is_always_an_answered_heartbeat() -> None:
    """A read on an idle leader starts a round: it goes to every follower as
    an AppendEntries (the answers confirm it), not as an unanswered notice,
    however recently check-quorum heard from them."""
    cluster = idle_cluster(IDLE)
    cluster.run(15_000)  # into the interval: the followers are recently active
    cluster.sent.clear()
    cluster.request(0, "read")
    assert cluster.run(until=lambda: all(
        isinstance(read, Line) and read.ready for read in cluster.protocol(0).reads
    ))
    rounds = [m.round for _, _, m in cluster.messages(AppendEntries, 0)]
    assert len(rounds) == 2 and rounds[0] == rounds[1] > 0
    assert cluster.messages(CommitNotice, 0) == []
    cluster.assert_safe()


def test_a_follower_with_an_unacknowledged_entry_gets_an_answered_heartbeat() -> None:
    """Follower 2's acknowledgement of ``b`` is lost: its next heartbeat is an
    AppendEntries, whose answer tells the leader its match."""
    cluster = idle_cluster(IDLE)
    cluster.run(15_000)
    drop_from_2 = cluster.transmit

    def transmit(source: int, destination: int, message: object) -> None:
        if source == 2 and isinstance(message, AppendEntriesResponse):
            return  # the acknowledgement is lost
        drop_from_2(source, destination, message)

    cluster.transmit = transmit  # type: ignore[method-assign]
    cluster.sent.clear()
    cluster.submit(0, b"b")
    assert cluster.run(until=lambda: cluster.all_applied(b"b", [0, 1]))
    cluster.transmit = drop_from_2  # type: ignore[method-assign]
    cluster.run(12_000)  # the next heartbeat
    to_2 = [m for _, d, m in cluster.messages(AppendEntries, 0) if d == 2 and not m.entries]
    assert to_2, cluster.messages(CommitNotice, 0)
    assert cluster.raft(0).replication.match_index(2) == cluster.view(0).last_index
    cluster.assert_safe()
