"""Membership changes: single-server changes (thesis 4.1, 4.2), learners,
and refusing a voter whose disk was lost.

Configurations are log entries and take effect on every node as soon as
they are *appended* (not when committed); truncating one reverts to the
previous configuration. A leader changes the configuration one server at
a time, with the known safety fix (Ongaro, raft-dev, 2015): it proposes a
change only after it has committed an entry of its own term, and only when
no earlier change is uncommitted. Any two majorities of configurations
that differ by one voter overlap, so no joint consensus is needed.

Learners receive the log and never count (not for elections, commit,
read-index or check-quorum). ``add`` makes a node a learner marked
``promoting``; any leader promotes a ``promoting`` learner once it has
caught up (its match index reached the commit index and lags the leader's
log by at most ``promote_lag_entries_max`` entries), so a new voter never
slows commits while it fetches the log.

Lost disks. Every node draws a random *disk identity* at its first start
(``identity``, written before any other Raft state) and sends it in every
vote and replication answer. Configurations record ``(node, identity)``;
the first leader registers the identities it has heard (a configuration
entry that only fills unknown identities, so every quorum of the new
configuration is one of the old: it needs no one-at-a-time rule). A node
whose disk was wiped comes back with a new identity: its votes and
acknowledgements no longer count; the leader demotes it to a learner with
the new identity (one change), catches it up, and promotes it again (a
second change). So a node that lost the votes and entries it acknowledged
never counts toward a quorum until it holds the log again.

The node itself holds back too (:meth:`Membership.may_vote`): a node whose
configuration registers another disk for it neither votes nor campaigns,
and a node started with ``RaftParams.join`` on its new, empty disk (the
operator says it replaces a lost one, as etcd's ``--initial-cluster-state
existing``) neither votes nor campaigns until a configuration registers its
new disk as a voter. That covers nodes whose configuration is too old to
know the lost disk's identity: a blank disk cannot tell a first boot from a
replacement, so the operator must. A leader registers a peer's identity only
once the peer has caught up with the commit index. Limitation: a disk lost
and restarted *without* ``join`` before every node's log registers its
identity may still vote for a stale candidate. Hosts must resolve
``random`` choice points randomly in production for identities to differ.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from replicaio.protocols.raft.messages import (
    ADMIN_ACTIONS,
    NO_NODE,
    UNREGISTERED,
    Config,
    Entry,
    RaftAdmin,
)
from replicaio.protocols.raft.state import Role

if TYPE_CHECKING:
    from replicaio.protocols.raft.raft import Raft


def without(members: tuple[tuple[int, int], ...], node: int) -> tuple[tuple[int, int], ...]:
    return tuple(member for member in members if member[0] != node)


def with_member(
    members: tuple[tuple[int, int], ...], node: int, identity: int
) -> tuple[tuple[int, int], ...]:
    return tuple(sorted((*without(members, node), (node, identity))))


def unregistered(config: Config) -> bool:
    """Whether a member of ``config`` has no disk identity registered yet."""
    for members in (config.voters, config.learners):  # (no generator: compiled, per commit)
        for _, identity in members:
            if identity == UNREGISTERED:
                return True
    return False


class Membership:
    """The configuration as the node sees it, and the leader's changes."""

    # Exactly ``membership.pxd``'s declarations: no instance dict (ADR 0041, 0047).
    __slots__ = (  # noqa: RUF023
        "raft", "identities_seen", "cached_config", "voter_ids", "member_identities",
        "quorum_size", "peer_ids",
    )

    def __init__(self, raft: Raft) -> None:
        self.raft = raft
        self.identities_seen: dict[int, int] = {}  # node -> disk identity it last answered with
        # What the queries below derive from the log's latest configuration, for the
        # configuration object ``cached_config`` (ADR 0065): recomputed when the log's
        # ``config`` is another object (configurations are immutable), read as is
        # otherwise. The leader asks them a dozen times per client operation.
        self.cached_config: Config | None = None
        self.voter_ids: tuple[int, ...] = ()  # the voters, in the configuration's order
        self.member_identities: dict[int, int] = {}  # member -> registered identity
        self.quorum_size = 0
        self.peer_ids: tuple[int, ...] = ()  # every other member, in node order

    # -- the configuration in force ---------------------------------------------------

    @property
    def config(self) -> Config:
        return self.raft.log.config

    def refresh(self) -> None:
        """Derive the caches from the log's latest configuration, if it changed
        since they were last derived (an identity test: one load and a compare)."""
        config = self.raft.log.config
        if config is self.cached_config:
            return
        voters = config.voters
        self.voter_ids = tuple([node for node, _ in voters])
        identities: dict[int, int] = {}
        for member, identity in (*voters, *config.learners):
            if member not in identities:  # the first listed wins, voters before learners
                identities[member] = identity
        self.member_identities = identities
        self.quorum_size = len(voters) // 2 + 1
        me = self.raft.id
        self.peer_ids = tuple(
            sorted([node for node, _ in (*voters, *config.learners) if node != me])
        )
        self.cached_config = config

    def voters(self) -> tuple[int, ...]:
        self.refresh()
        return self.voter_ids

    def learners(self) -> tuple[int, ...]:
        return tuple(node for node, _ in self.config.learners)

    def is_voter(self, node: int) -> bool:
        self.refresh()
        return node in self.voter_ids

    def peers(self) -> tuple[int, ...]:
        """Every other member (voters and learners), in node order."""
        self.refresh()
        return self.peer_ids

    def quorum(self) -> int:
        """A majority of the voters."""
        self.refresh()
        return self.quorum_size

    def counts(self, node: int, identity: int) -> bool:
        """Whether ``node`` answering with disk ``identity`` counts as a voter."""
        self.refresh()
        if node not in self.voter_ids:
            return False
        registered = self.member_identities[node]
        return registered in (UNREGISTERED, identity)

    def may_campaign(self) -> bool:
        """A voter of the latest configuration may campaign; so may a voter of
        the previous one while the latest, which removes it, is uncommitted
        here (section 6: a server outside C_new may lead until C_new commits;
        otherwise a leader that appended its own removal and crashed could
        leave the others unable to elect anyone). Its disk must be admitted."""
        raft = self.raft
        log = raft.log
        eligible = self.is_voter(raft.id)
        if not eligible and log.config_index > raft.commit_index:
            previous = log.config_at(log.config_index - 1)
            eligible = any(member == raft.id for member, _ in previous.voters)
        return eligible and self.may_vote()

    def may_vote(self) -> bool:
        """Whether this node may vote or campaign, given its disk. A disk that a
        configuration registers for another identity replaced a lost one
        (its votes and acknowledgements were lost with it); a joining disk
        (``RaftParams.join``) waits until it is registered as a voter."""
        raft = self.raft
        if raft.joiner:
            return any(
                member == raft.id and registered == raft.identity
                for member, registered in self.config.voters
            )
        return self.registered(raft.id) in (None, UNREGISTERED, raft.identity)

    def registered(self, node: int) -> int | None:
        self.refresh()
        return self.member_identities.get(node)

    def on_config_changed(self) -> None:
        """The caches follow the log's configuration object (``refresh``)."""

    # -- identities -------------------------------------------------------------------

    def observe_identity(self, node: int, identity: int) -> None:
        """``node`` answered with disk ``identity``."""
        raft = self.raft
        if identity <= 0:
            return
        previous = self.identities_seen.get(node)
        self.identities_seen[node] = identity
        if raft.role is not Role.LEADER:
            return
        progress = raft.replication.progress.get(node)
        if progress is not None and progress.identity != identity:
            if progress.identity != UNREGISTERED:
                # A new disk: what the old one acknowledged is gone.
                raft.count("raft_disk_replaced_seen")
                progress.match_index = 0
                progress.become_probe(raft.log.last_index + 1)
                progress.inflight.clear()
            progress.identity = identity
        if previous != identity:
            self.maybe_next_change()

    # -- admin requests ---------------------------------------------------------------

    def on_admin(self, request: RaftAdmin) -> str | None:
        """Apply an operator's request on the leader; a rejection reason or None."""
        raft = self.raft
        if not isinstance(request, RaftAdmin) or request.action not in ADMIN_ACTIONS:
            return "bad_admin_request"
        node = request.node
        if not 0 <= node < raft.context.n:
            return "no_such_node"
        if raft.role is not Role.LEADER:
            return "not_leader"
        if request.action == "transfer":
            return raft.election.transfer(node)
        config = self.config
        member = self.registered(node) is not None
        if request.action in ("add", "add_learner"):
            if member:
                return "already_member"
            identity = self.identities_seen.get(node, UNREGISTERED)
            promoting = config.promoting
            if request.action == "add":
                promoting = tuple(sorted((*promoting, node)))
            new = Config(config.voters, with_member(config.learners, node, identity), promoting)
        elif request.action == "promote":
            if node not in self.learners():
                return "not_a_learner"
            if not self.caught_up(node):
                return "not_caught_up"
            new = self.promoted(config, node)
        else:
            if not member:
                return "not_a_member"
            if self.voters() == (node,):
                return "last_voter"
            promoting = tuple(other for other in config.promoting if other != node)
            new = Config(without(config.voters, node), without(config.learners, node), promoting)
        reason = self.can_change() or self.operation_in_progress(request)
        if reason is not None:
            return reason
        self.propose(new)
        return None

    def operation_in_progress(self, request: RaftAdmin) -> str | None:
        """An operator's change waits while a voter's lost disk is being repaired
        or a learner is being promoted (removing that learner cancels it):
        shrinking the voters meanwhile could leave too few intact disks to
        finish the repair, and an add is one operation, catch-up included."""
        config = self.config
        for node, registered in config.voters:
            seen = self.identities_seen.get(node, UNREGISTERED)
            if registered not in (UNREGISTERED, seen) and seen:
                return "disk_replacement_in_progress"
        if config.promoting and not (
            request.action == "remove" and request.node in config.promoting
        ):
            return "promotion_in_progress"
        return None

    # -- the leader's changes, one at a time --------------------------------------------

    def can_change(self) -> str | None:
        """Thesis 4.1 with the 2015 fix: a change only after an entry of the
        leader's term is committed, and only when no change is uncommitted."""
        raft = self.raft
        if raft.commit_index < raft.term_start_index:
            return "no_commit_in_term"
        if raft.log.config_index > raft.commit_index:
            return "change_in_progress"
        return None

    def propose(self, config: Config) -> None:
        raft = self.raft
        assert raft.role is Role.LEADER
        assert self.can_change() is None, "one change at a time, after a commit in the term"
        assert config.voters, "a configuration has voters"
        raft.count("raft_config_changes_proposed")
        raft.log.append([Entry(raft.hard.term, b"", config)])
        raft.replication.appended.notify()
        raft.on_config_changed()
        raft.replication.notify_all()
        raft.replication.maybe_commit()

    def caught_up(self, node: int) -> bool:
        raft = self.raft
        progress = raft.replication.progress.get(node)
        if progress is None or progress.identity == UNREGISTERED:
            return False
        lag = raft.log.last_index - progress.match_index
        return (
            progress.match_index >= raft.commit_index
            and lag <= raft.params.promote_lag_entries_max
        )

    def promoted(self, config: Config, node: int) -> Config:
        identity = self.raft.replication.progress[node].identity
        promoting = tuple(other for other in config.promoting if other != node)
        return Config(
            with_member(config.voters, node, identity), without(config.learners, node), promoting
        )

    def maybe_next_change(self) -> None:
        """The leader's own changes, most urgent first: demote a voter whose disk
        was replaced; register identities heard; promote a caught-up learner."""
        raft = self.raft
        if raft.role is not Role.LEADER or self.can_change() is not None:
            return
        config = self.config
        for node, registered in config.voters:
            seen = self.identities_seen.get(node, UNREGISTERED)
            if node != raft.id and registered not in (UNREGISTERED, seen) and seen:
                raft.count("raft_voters_demoted_disk_replaced")
                promoting = tuple(sorted({*config.promoting, node}))
                self.propose(
                    Config(
                        without(config.voters, node), with_member(config.learners, node, seen),
                        promoting,
                    )
                )
                return
        if unregistered(config):  # (else registration(config) is config: skip building it)
            registered_config = self.registration(config)
            if registered_config != config:
                raft.count("raft_identities_registered")
                self.propose(registered_config)
                return
        for node in config.promoting:
            if node in self.learners() and self.caught_up(node):
                raft.count("raft_learners_promoted")
                self.propose(self.promoted(config, node))
                return

    def registration(self, config: Config) -> Config:
        """``config`` with every unknown identity filled in that has been heard
        from a peer whose log has caught up with the commit index."""
        raft = self.raft
        seen = {raft.id: raft.identity}
        for node, progress in raft.replication.progress.items():
            if progress.identity != UNREGISTERED and progress.match_index >= raft.commit_index:
                seen[node] = progress.identity

        def fill(members: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
            return tuple(
                (node, seen.get(node, UNREGISTERED) if identity == UNREGISTERED else identity)
                for node, identity in members
            )

        return Config(fill(config.voters), fill(config.learners), config.promoting)

    # -- events ---------------------------------------------------------------------

    def on_become_leader(self) -> None:
        self.maybe_next_change()

    def on_progress(self, node: int) -> None:
        """A peer's match index grew: it may now be caught up enough to be
        promoted, or to have its disk identity registered."""
        if node in self.raft.log.config.promoting or self.registered(node) == UNREGISTERED:
            self.maybe_next_change()

    def on_commit(self) -> None:
        raft = self.raft
        if raft.role is not Role.LEADER:
            return
        if raft.log.config_index <= raft.commit_index and not self.is_voter(raft.id):
            # Thesis 4.2.2: a leader removed from the configuration steps down
            # once the change is committed.
            raft.count("raft_leader_removed_stepped_down")
            raft.become_follower(raft.hard.term, NO_NODE)
            return
        self.maybe_next_change()

    def on_step_down(self) -> None:
        """Nothing to drop: pending promotions live in the configuration."""
