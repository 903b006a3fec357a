"""Seed sweeps of Raft on the hand-controlled cluster: random partitions,
crashes (some inside a step, keeping a prefix of its writes), loss,
duplication, reordering, proposals, reads, compaction, membership changes
and leadership transfers; the checkers run on every output, then the
faults heal and a leader must commit new entries (liveness).

Reproduce one seed: ``pytest tests/test_raft_sweep.py -k 'chaos and [SEED]'``.
"""

from __future__ import annotations

import random

import pytest
from test_raft_cluster import FAST_PARAMS, Cluster

from replicaio.protocols.raft import RaftParams

LAST: dict[str, Cluster] = {}  # the last chaos cluster, for debugging

def registered_everywhere(cluster: Cluster) -> bool:
    """Every node is up, and the leader's committed configuration registers the
    disk each member has now: no earlier disk loss is still being repaired.
    (Raft tolerates f nodes down or re-admitting a new disk; a majority of
    blank disks would elect a blank leader, as no protocol can prevent.)"""
    leader = cluster.leader()
    if leader is None or len(cluster.up()) < cluster.n:
        return False
    view = cluster.view(leader)
    members = (*view.config.voters, *view.config.learners)
    current = all(identity == cluster.view(node).identity for node, identity in members)
    settled = not view.config.promoting and len(view.config.voters) >= 3
    return current and settled and view.commit_index >= cluster.raft(leader).log.config_index


def chaos(seed: int, n: int = 5, params: RaftParams = FAST_PARAMS, rounds: int = 80,
          membership: bool = True, wipes: bool = True) -> Cluster:
    rng = random.Random(f"raft-chaos:{seed}")
    cluster = Cluster(
        n, params, seed=seed, preferred=None, compact_every=rng.choice((0, 5, 20)),
        loss=rng.choice((0.0, 0.01, 0.1)), duplicate=rng.choice((0.0, 0.05)),
        jitter_us=rng.choice((0, 3_000, 20_000)), latency_us=rng.choice((500, 2_000)),
    )
    cluster.start()
    LAST["cluster"] = cluster
    down: dict[int, int] = {}  # node -> rounds until restart
    repairing = False  # a wiped disk is not yet re-admitted
    wiped: dict[int, None] = {}  # down with a new, empty disk: restart with join
    written = 0
    for _ in range(rounds):
        action = rng.random()
        up = cluster.up()
        if action < 0.35:
            target = rng.choice(up) if rng.random() < 0.3 else cluster.leader()
            if target is not None and target in up:
                for _ in range(rng.randrange(1, 20)):
                    if cluster.nodes[target] is None:
                        break  # it crashed inside one of these steps
                    written += 1
                    cluster.submit(target, f"w{written}".encode())
        elif action < 0.45:
            leader = cluster.leader()
            if leader is not None:
                cluster.request(leader, "read")
        elif action < 0.55:
            nodes = list(range(n))
            rng.shuffle(nodes)
            cut = rng.randrange(1, n)
            cluster.partition(tuple(nodes[:cut]), tuple(nodes[cut:]))
        elif action < 0.65:
            cluster.heal()
        elif action < 0.75 and len(down) < (n - 1) // 2 and len(up) > 1 and not repairing:
            # (while a lost disk is being repaired, no other crash)
            victim = rng.choice(up)
            if wipes and rng.random() < 0.2 and registered_everywhere(cluster):
                cluster.crash(victim)
                cluster.wipe(victim)
                wiped[victim] = None
                repairing = True
            elif rng.random() < 0.5:
                cluster.crash_in_next_step(victim, rng.randrange(0, 6))
            else:
                cluster.crash(victim, keep_unsynced=0)
            down[victim] = rng.randrange(1, 4)
        elif action < 0.85 and membership and not repairing:
            leader = cluster.leader()
            if leader is not None:
                target = rng.randrange(n)
                choice = rng.choice(("remove", "add", "add", "transfer"))
                cluster.admin(leader, choice, target)
        for node in list(down):
            if cluster.nodes[node] is None and node in cluster.mid_step_crash:
                continue
            down[node] -= 1
            if down[node] <= 0:
                del down[node]
                if cluster.nodes[node] is None:
                    cluster.restart(node, join=node in wiped)
                    wiped.pop(node, None)
        cluster.run(rng.randrange(2_000, 120_000))
        if repairing and not down and registered_everywhere(cluster):
            repairing = False
        # a pending mid-step crash that never found a step
        for node in list(cluster.mid_step_crash):
            if node not in down:
                del cluster.mid_step_crash[node]
        cluster.assert_safe()
    # Liveness: heal everything, restart the dead, keep proposing.
    cluster.heal()
    cluster.loss = cluster.duplicate = 0.0
    cluster.mid_step_crash.clear()
    for node in range(n):
        if cluster.nodes[node] is None:
            cluster.restart(node, join=node in wiped)
    cluster.checker.begin_liveness(cluster.now)
    for _ in range(60):
        leader = cluster.leader()
        if leader is not None:
            written += 1
            cluster.submit(leader, f"w{written}".encode())
        if cluster.run(100_000, until=None) and cluster.checker.settled():
            break
    cluster.assert_safe()
    assert cluster.checker.settled(), cluster.checker.finish(cluster.now)
    return cluster


@pytest.mark.parametrize("seed", range(40))
def test_chaos_sweep_keeps_safety_and_recovers(seed: int) -> None:
    chaos(seed)


@pytest.mark.parametrize("seed", range(10))
def test_chaos_sweep_three_nodes_without_membership(seed: int) -> None:
    chaos(1000 + seed, n=3, membership=False, wipes=False)
