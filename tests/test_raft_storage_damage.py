"""Raft on storage that lost acknowledged writes (docs/raft.md, "A node whose
storage lost writes"; issue 9): the damaged node takes a new disk identity and
rejoins like a replaced disk (it neither votes nor counts until a leader has
caught it up and registered it); a leader re-probes a follower whose log went
back even when nothing reported it; the incarnation never goes back."""

from __future__ import annotations

from test_raft_cluster import Cluster

from replicaio.protocols.raft import FollowerLogRegressed


def replicated(cluster: Cluster, batches: int) -> None:
    for number in range(batches):
        cluster.submit(0, f"b{number}".encode())
    assert cluster.run(until=lambda: cluster.all_applied(f"b{batches - 1}".encode()))
    cluster.run(200_000)  # every follower has acknowledged everything


def test_a_follower_that_lost_acknowledged_entries_rejoins_before_it_counts() -> None:
    cluster = Cluster(3)
    cluster.start()
    cluster.elect(0)
    replicated(cluster, 5)
    identity = cluster.view(2).identity
    last = cluster.view(2).last_index
    cluster.crash(2, lose_synced=4)
    cluster.restart(2)
    view = cluster.view(2)
    assert view.last_index < last
    assert view.identity != identity
    assert view.recovering == 1
    assert cluster.node_counters(2)["raft_storage_damaged_rejoining"] == 1
    # It does not vote: a candidate without the lost entries gets no vote from it.
    assert not cluster.raft(2).membership.may_vote()
    assert cluster.run(until=lambda: cluster.view(2).recovering == 0, limit_us=5_000_000)
    cluster.submit(0, b"after")
    assert cluster.run(until=lambda: cluster.all_applied(b"after"))
    assert cluster.count("raft_voters_demoted_disk_replaced") == 1
    assert cluster.count("raft_learners_promoted") == 1
    cluster.assert_safe()


def test_a_leader_re_probes_a_follower_whose_log_went_back_unreported() -> None:
    # The storage could not tell (say, marks off and a cut at a batch boundary):
    # the follower restarts with a shorter log and its old identity. Before
    # issue 9 the leader ignored its rejections forever and it never caught up.
    cluster = Cluster(3)
    cluster.start()
    cluster.elect(0)
    replicated(cluster, 6)
    cluster.nodes[2] = None
    cluster.timer_tokens[2] = {}
    cluster.disks[2].crash(lose_synced=6, reported=False)
    cluster.restart(2)
    assert cluster.view(2).last_index < cluster.view(0).last_index
    cluster.submit(0, b"after")
    assert cluster.run(until=lambda: cluster.all_applied(b"after"), limit_us=3_000_000)
    assert cluster.node_counters(0)["raft_follower_log_regressed"] >= 1
    regressed = [out for _, node, out in cluster.outputs if isinstance(out, FollowerLogRegressed)]
    assert regressed and regressed[0].follower == 2
    assert regressed[0].last_index_hint < regressed[0].match_index
    # The checker sees what the node did not report: a log shorter than applied.
    assert {violation.property for violation in cluster.checker.violations} == {"durable_state"}


def test_the_incarnation_never_goes_back_when_the_log_does() -> None:
    cluster = Cluster(3)
    cluster.start()
    cluster.elect(0)
    seen = [cluster.nodes[1].incarnation]  # type: ignore[union-attr]
    for _ in range(3):
        cluster.crash(1)
        cluster.restart(1)
        seen.append(cluster.nodes[1].incarnation)  # type: ignore[union-attr]
    replicated(cluster, 2)
    cluster.crash(1, lose_synced=cluster.disks[1].synced_history_count)  # back to nothing
    assert cluster.disks[1].recover() == {}
    cluster.restart(1)
    seen.append(cluster.nodes[1].incarnation)  # type: ignore[union-attr]
    assert seen == sorted(set(seen)), seen
