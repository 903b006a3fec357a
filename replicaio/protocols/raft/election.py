"""Leader election (section 5.2), pre-vote and check-quorum (thesis 9.6),
the election restriction (5.4.1) and leadership transfer (thesis 3.10).

Timers are role tasks: a follower that is a voter runs :meth:`Election.watch_leader`,
a (pre-)candidate :meth:`Election.election_round`, a leader
:meth:`Election.check_quorum_loop` (and :meth:`Election.transfer_deadline`
while handing over). Leaving the role cancels them with its scope.

Time is virtual and not readable, so "heard from the leader within the
election timeout" is kept as flags per timeout period: ``heard`` (this
period) and ``heard_before`` (the previous one). A follower campaigns after
a whole randomized period without hearing from a leader or granting a vote,
so between one and two timeouts after the last contact; a voter holds to a
leader (ignores vote requests, the thesis' "leader stickiness") while it
heard from one in this period or the last. A learner or a server outside the
configuration runs no timer (it idles), so it cannot tell how long ago it
heard from a leader: it holds to none. Its vote still counts wherever a
candidate's configuration names it (a server removed or re-added whose log
lags); when it held to the last leader it heard, with no timer to let that
lapse, it ignored every vote request forever, and where the others needed its
vote no leader was elected again (found by the simulator's ``slow`` fault
kind: ``swarm raft --faults partition,slow,sync``, seed 1690).
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from replicaio.protocols.raft.messages import (
    NO_NODE,
    BecameLeader,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
    Voted,
)
from replicaio.protocols.raft.state import Role

if TYPE_CHECKING:
    from replicaio.protocols.raft.raft import Raft


class Election:
    """Votes, campaigns, and the leader's quorum check; see the module docstring."""

    def __init__(self, raft: Raft) -> None:
        self.raft = raft
        self.heard = False
        self.heard_before = False
        self.watching = False  # a watch_leader task runs (this node is a voting follower)
        self.granted: dict[int, None] = {}
        self.rejected: dict[int, None] = {}
        self.request = RequestVote(0, raft.id, 0, 0, False, False)  # the campaign's request
        self.transfer_target = NO_NODE

    def timeout_us(self) -> int:
        """A randomized election timeout (section 5.2), drawn as a recorded choice."""
        params = self.raft.params
        return params.election_timeout_min_us + self.raft.context.random_below(
            params.election_timeout_range_us
        )

    def in_lease(self) -> bool:
        """Whether this node holds to a leader it heard from recently, and so
        ignores vote requests (thesis 4.2.3; needs check-quorum so that a
        leader that lost its quorum steps down and frees its followers)."""
        raft = self.raft
        if raft.reads.lease.holds_votes():
            return True  # restarted recently, with lease reads on (lease.py)
        if not raft.params.check_quorum:
            return False
        if raft.role is Role.LEADER:
            return True
        # Only a follower that runs watch_leader knows its lease (module docstring).
        return self.watching and raft.leader_id != NO_NODE and (self.heard or self.heard_before)

    # -- follower -------------------------------------------------------------------

    def follower_tasks(self) -> list[Coroutine[Any, Any, None]]:
        self.watching = self.raft.membership.may_campaign()
        return [self.watch_leader()] if self.watching else []

    async def watch_leader(self) -> None:
        """Figure 2, followers: "If election timeout elapses without receiving
        AppendEntries from current leader or granting vote: convert to candidate"."""
        raft = self.raft
        self.heard = True  # a new follower gives its leader a whole period
        while True:
            self.heard_before, self.heard = self.heard, False
            await raft.context.sleep(self.timeout_us())
            if not self.heard:
                break
        raft.count("raft_election_timeouts")
        self.watching = False
        self.campaign(transfer=False)

    # -- candidate ------------------------------------------------------------------

    def campaign(self, *, transfer: bool) -> None:
        """Start a pre-vote, or (after it, without pre-vote, or on TimeoutNow)
        an election: term + 1, vote for self, RequestVote to every voter."""
        raft = self.raft
        if not raft.membership.may_campaign():
            raft.count("raft_campaign_not_allowed")
            return
        # A campaigner follows no one, so it holds no leader lease.
        raft.leader_id = NO_NODE
        self.heard = self.heard_before = False
        if raft.params.pre_vote and not transfer:
            raft.start_role(Role.PRE_CANDIDATE, [self.election_round()])
            raft.count("raft_pre_votes_started")
            self.request_votes(pre=True, transfer=False)
            return
        self.start_election(transfer=transfer)

    def start_election(self, *, transfer: bool) -> None:
        """Figure 2, candidates: increment currentTerm, vote for self, reset
        the election timer, send RequestVote to all other servers."""
        raft = self.raft
        raft.hard.save(raft.hard.term + 1, raft.id)
        raft.context.output(Voted(raft.id, raft.hard.term, raft.id))
        raft.leader_id = NO_NODE
        raft.start_role(Role.CANDIDATE, [self.election_round()])
        raft.count("raft_elections_started")
        self.request_votes(pre=False, transfer=transfer)

    async def election_round(self) -> None:
        """Re-send the request to voters that have not answered, every heartbeat
        (requests are datagrams); an election that neither wins nor loses within
        its randomized timeout starts over."""
        raft = self.raft
        remaining = self.timeout_us()
        while remaining > 0:
            wait = min(remaining, raft.params.heartbeat_us)
            await raft.context.sleep(wait)
            remaining -= wait
            if remaining > 0:
                self.send_requests(resend=True)
        raft.count("raft_election_rounds_timed_out")
        self.campaign(transfer=False)

    def request_votes(self, *, pre: bool, transfer: bool) -> None:
        raft = self.raft
        log = raft.log
        self.granted = {}
        self.rejected = {}
        if raft.membership.counts(raft.id, raft.identity):
            self.granted[raft.id] = None
        term = raft.hard.term + 1 if pre else raft.hard.term
        self.request = RequestVote(term, raft.id, log.last_index, log.last_term, pre, transfer)
        self.send_requests(resend=False)
        self.tally(pre)

    def send_requests(self, *, resend: bool) -> None:
        raft = self.raft
        for peer in raft.membership.voters():
            if peer != raft.id and peer not in self.granted and peer not in self.rejected:
                raft.send(peer, self.request)
                if resend:
                    raft.count("raft_vote_requests_resent")

    def on_request_vote_response(self, source: int, response: RequestVoteResponse) -> None:
        raft = self.raft
        raft.membership.observe_identity(source, response.identity)
        if response.pre:
            if response.term > raft.hard.term and not response.granted:
                raft.become_follower(response.term, NO_NODE)
                return
            if raft.role is not Role.PRE_CANDIDATE or (
                response.granted and response.term != raft.hard.term + 1
            ):
                raft.count("raft_ignored_stale_vote")
                return
        else:
            if response.term > raft.hard.term:
                raft.become_follower(response.term, NO_NODE)
                return
            if raft.role is not Role.CANDIDATE or response.term != raft.hard.term:
                raft.count("raft_ignored_stale_vote")
                return
        if not raft.membership.counts(source, response.identity):
            raft.count("raft_ignored_vote_not_counted")
            return
        (self.granted if response.granted else self.rejected)[source] = None
        self.tally(response.pre)

    def tally(self, pre: bool) -> None:
        """Section 5.2: a majority of the voters' votes wins (a pre-vote majority
        starts the real election)."""
        raft = self.raft
        quorum = raft.membership.quorum()
        if len(self.granted) >= quorum:
            if pre:
                self.start_election(transfer=False)
            else:
                self.become_leader()
        elif len(self.rejected) >= quorum:
            raft.count("raft_elections_lost")
            raft.become_follower(raft.hard.term, NO_NODE)

    def become_leader(self) -> None:
        raft = self.raft
        log = raft.log
        assert raft.hard.voted_for == raft.id, "a leader voted for itself in its term"
        raft.leader_id = raft.id
        raft.count("raft_elections_won")
        raft.context.output(
            BecameLeader(
                raft.id, raft.hard.term, log.base_index, log.base_term,
                log.last_index, log.runs(),
            )
        )
        self.transfer_target = NO_NODE
        raft.replication.become_leader()

    # -- voter ----------------------------------------------------------------------

    def ignore_request_vote(self, source: int, request: RequestVote) -> str | None:
        if request.candidate != source:
            return "candidate_not_sender"
        if request.term < 0 or request.last_log_index < 0 or request.last_log_term < 0:
            return "negative"
        if request.last_log_term > request.term:
            return "log_term_above_term"
        return None

    def on_request_vote(self, source: int, request: RequestVote) -> None:
        """Figure 2, RequestVote receiver, with pre-vote and leader stickiness."""
        raft = self.raft
        reason = self.ignore_request_vote(source, request)
        if reason is not None:
            raft.count(f"raft_rejected_{reason}")
            return
        if request.term > raft.hard.term and not request.transfer and self.in_lease():
            raft.count("raft_ignored_vote_in_lease")
            return
        log = raft.log
        up_to_date = log.is_up_to_date(request.last_log_index, request.last_log_term)
        if not raft.membership.may_vote():
            # This disk replaced a lost one and is not re-admitted yet.
            raft.count("raft_vote_refused_disk_not_admitted")
            up_to_date = False
        if request.pre:
            # Grant what a real vote would get, but change nothing (thesis 9.6).
            granted = request.term > raft.hard.term and up_to_date
            term = request.term if granted else raft.hard.term
            raft.send(source, RequestVoteResponse(term, granted, True, raft.identity))
            return
        if request.term > raft.hard.term:
            raft.become_follower(request.term, NO_NODE)
        granted = (
            request.term == raft.hard.term
            and raft.hard.voted_for in (NO_NODE, source)
            and up_to_date
        )
        if granted:
            raft.hard.save(raft.hard.term, source)
            self.heard = True  # granting a vote resets the election timer
            raft.context.output(Voted(raft.id, raft.hard.term, source))
        raft.send(source, RequestVoteResponse(raft.hard.term, granted, False, raft.identity))

    # -- leader: check-quorum and transfer ----------------------------------------------

    def leader_tasks(self) -> list[Coroutine[Any, Any, None]]:
        return [self.check_quorum_loop()] if self.raft.params.check_quorum else []

    async def check_quorum_loop(self) -> None:
        """A leader that has not heard from a quorum of voters for an election
        timeout steps down (thesis 6.2): a leader isolated in a minority stops
        serving reads and accepting writes."""
        raft = self.raft
        while True:
            raft.replication.clear_recent_activity()
            await raft.context.sleep(raft.params.election_timeout_min_us)
            if not raft.replication.quorum_recently_active():
                raft.count("raft_check_quorum_stepped_down")
                raft.become_follower(raft.hard.term, NO_NODE)
                return

    def transfer(self, target: int) -> str | None:
        """Thesis 3.10: stop taking proposals, bring ``target`` up to date, then
        tell it to campaign at once (TimeoutNow)."""
        raft = self.raft
        if target == raft.id:
            return "already_leader"
        if not raft.membership.is_voter(target):
            return "not_a_voter"
        if self.transfer_target != NO_NODE:
            return "transfer_in_progress"
        self.transfer_target = target
        raft.reads.lease.on_transfer()
        assert raft.role_scope is not None
        raft.role_scope.spawn(self.transfer_deadline(target), "raft.transfer")
        raft.count("raft_transfers_started")
        self.maybe_timeout_now(target)
        return None

    async def transfer_deadline(self, target: int) -> None:
        await self.raft.context.sleep(self.raft.params.election_timeout_max_us)
        if self.transfer_target == target:
            self.raft.count("raft_transfers_aborted")
            self.transfer_target = NO_NODE

    def maybe_timeout_now(self, peer: int) -> None:
        """Send TimeoutNow once the transfer target's log matches ours."""
        raft = self.raft
        if self.transfer_target != peer:
            return
        if raft.replication.match_index(peer) == raft.log.last_index:
            raft.send(peer, TimeoutNow(raft.hard.term, raft.id))
            raft.count("raft_timeout_now_sent")

    def on_timeout_now(self, source: int, message: TimeoutNow) -> None:
        raft = self.raft
        if message.leader != source:
            raft.count("raft_rejected_leader_not_sender")
            return
        if message.term != raft.hard.term or raft.leader_id != source:
            raft.count("raft_ignored_stale_timeout_now")
            return
        raft.count("raft_timeout_now_received")
        self.campaign(transfer=True)

    def on_step_down(self) -> None:
        self.transfer_target = NO_NODE
