"""The membership nemesis of the KV harness: operator requests aimed at the leader.

Protocol-neutral: what a protocol's outputs say about its leader and
configuration, and how an operator's request reads, come from the service's
:class:`~replicaio.assembly.Membership` in the assembly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from replicaio.assembly import Membership, MembershipAction
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
        # node -> the configuration its latest output announced (index, voters, learners)
        self.node_configs: dict[int, tuple[int, tuple[int, ...], tuple[int, ...]]] = {}

    def observe(self, node: int, output: Any, time_us: int) -> None:
        leader = self.ops.leader_of(output)
        if leader is not None:
            term, who = leader
            if term > self.term:
                self.term, self.leader = term, who
            return
        configuration = self.ops.config_of(output)
        if configuration is None:
            return
        self.node_configs[node] = configuration
        if configuration[0] > self.config_index:
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


# What the operator asks of a settled cluster, in order (``OperatorScript``).
ADD: MembershipAction = "add"
REMOVE: MembershipAction = "remove"
TRANSFER: MembershipAction = "transfer"
OPERATOR_POLL_US = 10_000  # how often the script looks at the outputs seen


class OperatorScript:
    """Operator requests a healthy cluster must carry out: the property
    ``operator`` (ADR 0077).

    The membership nemesis asks for changes only while faults are drawn, and
    nothing ever looked at whether one happened: a leader refusing every
    transfer, or never proposing a change it accepted, passed every swarm. Once
    the cluster has settled after the heal (``KvHarness.settled``: every client
    served, the checkers settled, the ``prompt`` waves answered) the operator
    asks the leader, one request at a time:

    1. to add back every node outside the configuration or still a learner
       (thesis 4.2.1: a new server joins as a non-voting member and is promoted
       once caught up: one request, two changes here);
    2. to hand leadership to another voter up (thesis 3.10);
    3. to remove a voter that is not the leader (one whose removal keeps a
       majority of the remaining voters up, with no more faulty disks than
       they tolerate), then to add it back.

    Each request is done when its effect is seen: the target leads a later
    term; every correct node up that is a voter of the new configuration has
    appended it (the voters without the removed node, or with the added node
    among them). A refused request (a change still in progress, no commit yet
    in a new leader's term, a transfer under way) is asked again every
    ``attempt_timeout_us``, of the leader as it is then known; a request not
    done within ``op_deadline_us`` (the clients' own bound on an operation:
    several election timeouts, a learner's catch-up by snapshot) is a
    violation. With no faults left and a majority up,
    Raft carries out each of these in a few round trips (section 6 of the
    paper; the leader aborts a transfer it could not finish within an election
    timeout, and the operator asks again).

    Not demanded when the stretch would not fit before the run's end (counted:
    ``operator_skipped``)."""

    def __init__(self, nemesis: MembershipNemesis, harness: KvHarness) -> None:
        self.nemesis = nemesis
        self.harness = harness
        self.started = False
        self.finished = False
        self.steps: list[tuple[MembershipAction, int]] = []  # (action, node), the current first
        self.step_began = 0
        self.step_term = -1  # the leader's term when a transfer was asked
        self.asked_at = -1
        self.asked = 0
        self.missed: list[str] = []
        self.done = 0
        self.skipped = False
        self.latency_max_us = 0

    def begin(self) -> bool:
        """Start the script now (the cluster settled); False if it is not run."""
        harness = self.harness
        api = harness.require_api()
        workload = harness.workload
        self.started = True
        now = api.now()
        nemesis = self.nemesis
        members = set(self.leader_config()[1])
        up = harness.up()
        joining = [node for node in nemesis.config.nodes if node not in members and node in up]
        if now + (len(joining) + 3) * workload.op_deadline_us >= harness.liveness_us:
            self.skipped = True
            self.finished = True
            return False
        self.steps = [(ADD, node) for node in joining]
        self.steps.append((TRANSFER, -1))  # the target is drawn when it is asked
        self.steps.append((REMOVE, -1))
        self.next_step(now)
        api.call_at(now + OPERATOR_POLL_US, self.poll)
        return True

    def next_step(self, now: int) -> None:
        self.step_began = now
        self.asked_at = -1
        self.asked = 0

    def poll(self) -> None:
        """Look at the outputs seen: the current request done, overdue, or to
        be asked (again)."""
        if self.finished:
            return
        harness = self.harness
        api = harness.require_api()
        now = api.now()
        workload = harness.workload
        action, node = self.steps[0]
        if node >= 0 and self.asked and self.is_done(action, node):
            self.done += 1
            self.latency_max_us = max(self.latency_max_us, now - self.step_began)
            self.steps.pop(0)
            if action == REMOVE:
                self.steps.insert(0, (ADD, node))
            if not self.steps:
                self.finished = True
                return
            self.next_step(now)
            action, node = self.steps[0]
        if now - self.step_began > workload.op_deadline_us:
            what = f"{action} {node}" if node >= 0 else action
            self.missed.append(
                f"{what} asked at {self.step_began} us ({self.asked} times) not done within "
                f"{workload.op_deadline_us} us (leader then: node {self.nemesis.leader}, term "
                f"{self.nemesis.term}; voters {list(self.nemesis.voters)})"
            )
            self.finished = True
            return
        if self.asked_at < 0 or now - self.asked_at >= workload.attempt_timeout_us:
            self.ask(now)
        api.call_at(now + OPERATOR_POLL_US, self.poll)

    def ask(self, now: int) -> None:
        nemesis = self.nemesis
        harness = self.harness
        action, node = self.steps[0]
        leader = nemesis.leader
        if leader < 0 or leader not in harness.up():
            return  # no leader known up yet: look again at the next poll
        if node < 0:
            node = self.draw(action, leader)
            if node < 0:
                self.steps.pop(0)  # nothing to ask: no candidate (too few voters up)
                if not self.steps:
                    self.finished = True
                return
            self.steps[0] = (action, node)
        if action == TRANSFER and not self.asked:
            self.step_term = nemesis.term
        self.asked += 1
        self.asked_at = now
        harness.figures.membership_requests += 1
        api = harness.require_api()
        api.request(leader, harness.codec.encode(nemesis.ops.request(action, node)))

    def draw(self, action: MembershipAction, leader: int) -> int:
        """The node a transfer or a removal names: the lowest-numbered voter up
        other than the leader (a removal: one that leaves a configuration able
        to work, see the class docstring); -1 if none."""
        up = set(self.harness.up())
        voters = self.leader_config()[1]
        for node in voters:
            if node == leader or node not in up:
                continue
            if action == TRANSFER:
                return node
            remaining = [voter for voter in voters if voter != node]
            faulty = sum(1 for voter in remaining if voter in self.harness.disk_nodes)
            if sum(1 for voter in remaining if voter in up) > len(remaining) // 2 and (
                faulty <= (len(remaining) - 1) // 2
            ):
                return node
        return -1

    def leader_config(self) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        """The configuration the leader known now announced last (its own,
        not the highest index seen anywhere: a change a deposed leader appended
        may have been truncated since); the nemesis's if it announced none."""
        nemesis = self.nemesis
        known = nemesis.node_configs.get(nemesis.leader)
        if known is None:
            return nemesis.config_index, nemesis.voters, nemesis.learners
        return known

    def is_done(self, action: MembershipAction, node: int) -> bool:
        nemesis = self.nemesis
        if action == TRANSFER:
            return nemesis.leader == node and nemesis.term > self.step_term
        seen = nemesis.node_configs
        _, leader_voters, leader_learners = self.leader_config()
        voters = set(leader_voters)
        if action == ADD:
            if node not in voters:
                return False
        elif node in voters or node in leader_learners:
            return False
        for member in self.harness.up():
            if member not in voters:
                continue
            known = seen.get(member)
            if known is None:
                return False
            _, member_voters, member_learners = known
            if action == ADD and node not in member_voters:
                return False
            if action == REMOVE and (node in member_voters or node in member_learners):
                return False
        return True
