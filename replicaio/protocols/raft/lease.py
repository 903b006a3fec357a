"""Lease reads (thesis 6.4.1): a leader answers reads locally while it holds a lease.

Off by default; on with ``RaftParams.read_lease``. Read-index (``reads.py``)
costs a heartbeat round per read; a lease read costs nothing, at the price
of an assumption read-index does not make: **clock rates differ by at most
``RaftParams.clock_drift_ppm_max``**. Beyond that bound a lease read may be
stale (the simulator's ``clock`` fault shows it).

How the lease is held. In lease mode every heartbeat starts a new read
round (as a read-index read would). Round ``r`` is *started* before any
message carrying it leaves, and its lease runs out ``lease_us`` of the
leader's clock later (a timer started with the round). Once a majority of
the voters answered round ``r`` (any answer in the leader's term), the
leader holds the lease until round ``r``'s timer fires. A read is then
answered at once at the commit index, provided the leader has committed its
term's no-op (as for read-index).

Why no other leader can commit in the meantime. A voter that answered
round ``r`` heard from the leader; it grants no vote (nor pre-vote) until a
whole election period of its own clock has passed without hearing from a
leader (``election.py``, leader stickiness; needs ``check_quorum``), so for
at least ``election_timeout_min_us`` of its clock after its answer, which
came after the round started. A new leader needs one of those voters. So it
is enough that ``lease_us`` of the leader's clock is at most
``election_timeout_min_us`` of the slowest-relative voter clock:

    lease_us = election_timeout_min_us * (1 - drift) / (1 + drift)

with ``drift = clock_drift_ppm_max / 10**6``. Two more holes are closed:

* a voter that restarts forgot when it last heard from a leader: in lease
  mode it grants no vote for ``election_timeout_min_us`` after it starts;
* a leadership transfer (``TimeoutNow``) tells a voter to campaign at once,
  bypassing stickiness: once a transfer starts, the leader serves no lease
  read for the rest of its term (read-index still works).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from replicaio.protocols.raft.messages import NO_NODE
from replicaio.protocols.raft.state import Role

if TYPE_CHECKING:
    from replicaio.protocols.raft.raft import Raft


class Lease:
    """The leader's read lease and a restarted voter's quiet period; see the
    module docstring. Inert unless ``RaftParams.read_lease``."""

    def __init__(self, raft: Raft) -> None:
        self.raft = raft
        self.enabled = raft.params.read_lease
        self.confirmed_round = 0  # the newest round a quorum answered, this term
        self.expired_round = 0  # the newest round whose lease time ran out
        self.transfer_term = -1  # a leadership transfer started in this term
        self.quiet = False  # restarted less than an election timeout ago

    # -- the leader's side --------------------------------------------------------------

    def on_become_leader(self) -> None:
        self.confirmed_round = 0
        self.expired_round = 0

    def on_round_started(self, round_: int) -> None:
        """Round ``round_`` begins (before any message carries it): its lease
        time starts now."""
        if not self.enabled:
            return
        scope = self.raft.role_scope
        assert scope is not None and self.raft.role is Role.LEADER
        scope.spawn(self.expire(round_), "raft.lease")

    async def expire(self, round_: int) -> None:
        await self.raft.context.sleep(self.raft.params.lease_us)
        if round_ > self.expired_round:
            self.expired_round = round_

    def on_confirmed(self, round_: int) -> None:
        """A majority of the voters answered every round up to ``round_``."""
        if round_ > self.confirmed_round:
            self.confirmed_round = round_

    def on_transfer(self) -> None:
        self.transfer_term = self.raft.hard.term

    def valid(self) -> bool:
        """Whether a read may be answered now, at the commit index, without a round."""
        raft = self.raft
        return (
            self.enabled
            and raft.role is Role.LEADER
            and self.transfer_term != raft.hard.term
            and raft.election.transfer_target == NO_NODE
            and raft.commit_index >= raft.term_start_index
            and self.confirmed_round > self.expired_round
        )

    # -- the voter's side ----------------------------------------------------------------

    def on_start(self) -> None:
        """A (re)started node grants no vote for an election timeout: it may have
        answered a leader's round just before it crashed."""
        if not self.enabled:
            return
        self.quiet = True
        self.raft.context.spawn(self.end_quiet(), "raft.lease.quiet")

    async def end_quiet(self) -> None:
        await self.raft.context.sleep(self.raft.params.election_timeout_min_us)
        self.quiet = False

    def holds_votes(self) -> bool:
        """Whether this voter must refuse votes now (besides leader stickiness)."""
        return self.quiet
