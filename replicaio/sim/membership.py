"""The membership nemesis of the KV harness: operator requests aimed at the leader.

Protocol-neutral: what a protocol's outputs say about its leader and
configuration, and how an operator's request reads, come from the service's
:class:`~replicaio.assembly.Membership` in the assembly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from replicaio.assembly import Membership
from replicaio.core.config import ClusterConfig

if TYPE_CHECKING:
    from replicaio.sim.kv_harness import KvHarness


class MembershipNemesis:
    """Drives membership changes from the harness: watches who leads and the
    leader's configuration (through the service's :class:`~replicaio.assembly.Membership`,
    so no protocol is named here), and every tick asks the leader to add back a
    node outside the configuration, else to remove a voter (one at a time, from
    a full configuration) or to transfer leadership."""

    def __init__(self, config: ClusterConfig, ops: Membership) -> None:
        self.config = config
        self.ops = ops
        self.leader = -1
        self.term = -1
        self.voters: tuple[int, ...] = config.nodes
        self.learners: tuple[int, ...] = ()
        self.config_index = -1

    def observe(self, node: int, output: Any, time_us: int) -> None:
        leader = self.ops.leader_of(output)
        if leader is not None:
            term, who = leader
            if term > self.term:
                self.term, self.leader = term, who
            return
        configuration = self.ops.config_of(output)
        if configuration is not None and configuration[0] > self.config_index:
            self.config_index, self.voters, self.learners = configuration

    def __call__(self, harness: KvHarness) -> None:
        if self.leader < 0:
            return
        members = set(self.voters) | set(self.learners)
        outsiders = [node for node in self.config.nodes if node not in members]
        rng = harness.rng
        if outsiders:
            request = self.ops.request("add", outsiders[0])
        elif len(self.voters) > 1 and rng.random() < 0.3:
            others = [node for node in self.voters if node != self.leader]
            request = self.ops.request("transfer", rng.choice(others))
        elif len(self.voters) == self.config.n and self.config.n > 1:
            removable = self.removable(harness.disk_nodes)
            if not removable:
                return
            request = self.ops.request("remove", rng.choice(removable))
        else:
            return
        harness.figures.membership_requests += 1
        harness.require_api().request(self.leader, harness.codec.encode(request))

    def removable(self, disk_nodes: frozenset[int]) -> list[int]:
        """Voters whose removal leaves a configuration that tolerates its nodes
        with faulty disks (as an operator must: a configuration with more damaged
        voters than it tolerates is unavailable until repaired by hand)."""
        found = []
        for node in self.voters:
            remaining = [voter for voter in self.voters if voter != node]
            faulty = sum(1 for voter in remaining if voter in disk_nodes)
            if faulty <= (len(remaining) - 1) // 2:
                found.append(node)
        return found
