"""Catching up across views: committed certificates of an older view.

A replica that moved to a view the others never started (it suspected the
primary alone, or restarted into a view change) ignores the PREPAREs and
COMMITs of the view the others still run, and executes nothing until the next
stable checkpoint lets it fetch the state. Meanwhile it answers no client: a
client that needs more than f+1 replies (the read-only optimisation's writes
need 2f+1) may wait for it while a faulty replica lies.

What it can use is view-independent: a PRE-PREPARE signed by the primary of
its view with 2f+1 matching COMMITs of that view is a committed certificate
(Castro and Liskov, section 4.2: committed(m, v, n) holds, and by the safety
argument of 4.5 no other batch ever commits at n). A replica answers a STATUS
from one in a *later* view that executed less with the PRE-PREPAREs and
COMMITs it holds above that point (:meth:`LateCommits.send`); the receiver
keeps such older-view messages for numbers in its window it has not executed
(L numbers, two PRE-PREPAREs and 2n COMMITs each), and executes a
number once one of them is certified. It votes on nothing: this only learns
what is decided.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from replicaio.protocols.pbft.messages import Commit, PrePrepare, digest_of

if TYPE_CHECKING:
    from replicaio.protocols.pbft.pbft import Pbft

PRE_PREPARES_PER_NUMBER_MAX = 2
COMMITS_PER_NUMBER_FACTOR = 2  # COMMITs kept per number: this many times n


class Late:
    """Older-view messages for one number: PRE-PREPAREs by view, COMMITs by
    (replica, view)."""

    __slots__ = ("commits", "pre_prepares")

    def __init__(self) -> None:
        self.pre_prepares: dict[int, PrePrepare] = {}
        self.commits: dict[tuple[int, int], Commit] = {}


class LateCommits:
    """Committed certificates of older views (module docstring)."""

    def __init__(self, pbft: Pbft) -> None:
        self.pbft = pbft
        self.late: dict[int, Late] = {}  # seq -> what arrived for it

    def offer(self, message: PrePrepare | Commit) -> bool:
        """An older-view PRE-PREPARE or COMMIT; False if it is of no use here
        (the caller then drops it as before)."""
        pbft = self.pbft
        seq = message.seq
        if seq <= pbft.executed or not pbft.in_window(seq):
            return False
        slot = pbft.slots.get(seq)
        if slot is not None and slot.committed is not None:
            return False
        for done in [number for number in self.late if number <= pbft.executed]:
            del self.late[done]
        late = self.late.get(seq)
        if late is None:
            if len(self.late) >= pbft.params.log_size:
                pbft.count("bound_pbft_late_max")
                return False
            late = self.late[seq] = Late()
        if isinstance(message, PrePrepare):
            if not self.take_pre_prepare(late, message):
                return False
        else:
            if (message.replica, message.view) in late.commits:
                return True
            if not pbft.verify(message.replica, message):
                pbft.reject("late_commit_bad_signature")
                return True
            if len(late.commits) >= COMMITS_PER_NUMBER_FACTOR * pbft.n:
                # Keep those of views with a PRE-PREPARE here (a faulty replica
                # may sign COMMITs for every older view).
                late.commits = {
                    key: commit for key, commit in late.commits.items()
                    if key[1] in late.pre_prepares
                }
                if len(late.commits) >= COMMITS_PER_NUMBER_FACTOR * pbft.n:
                    pbft.count("bound_pbft_late_commits_max")
                    return True
            late.commits[(message.replica, message.view)] = message
        self.maybe_committed(seq, late)
        return True

    def take_pre_prepare(self, late: Late, pre_prepare: PrePrepare) -> bool:
        pbft = self.pbft
        if pre_prepare.view in late.pre_prepares:
            return True
        if len(pre_prepare.batch) > pbft.params.batch_bytes_max:
            return False
        if digest_of(pre_prepare.batch) != pre_prepare.digest:
            return False
        if not pbft.verify(pbft.primary(pre_prepare.view), pre_prepare):
            pbft.reject("late_pre_prepare_bad_signature")
            return True
        if len(late.pre_prepares) >= PRE_PREPARES_PER_NUMBER_MAX:
            del late.pre_prepares[min(late.pre_prepares)]
        late.pre_prepares[pre_prepare.view] = pre_prepare
        return True

    def maybe_committed(self, seq: int, late: Late) -> None:
        pbft = self.pbft
        for view, pre_prepare in late.pre_prepares.items():
            signers = {
                replica for (replica, commit_view), commit in late.commits.items()
                if commit_view == view and commit.digest == pre_prepare.digest
            }
            if len(signers) < pbft.quorum:
                continue
            del self.late[seq]
            slot = pbft.normal.slot(seq)
            if slot.committed is not None:
                return
            slot.committed = pre_prepare
            pbft.count("pbft_late_commits")
            # As a committed number of the current view: ``pp`` then ``cm``, so a
            # restart rebuilds the execution (the old view's record votes nothing).
            pbft.context.persist(f"pp{seq}", pbft.encode(pre_prepare))
            pbft.context.persist(f"cm{seq}", pre_prepare.digest)
            pbft.execute_ready()
            return

    def send(self, peer: int, their_executed: int) -> None:
        """A replica in a later view executed less: what this one holds above
        its point (PRE-PREPAREs and matching COMMITs), up to ``retransmit_max``."""
        pbft = self.pbft
        start = max(their_executed, pbft.stable_seq) + 1
        end = min(pbft.executed, start + pbft.params.retransmit_max - 1)
        for seq in range(start, end + 1):
            slot = pbft.slots.get(seq)
            if slot is None or slot.pre_prepare is None or slot.committed is None:
                continue
            pre_prepare = slot.pre_prepare
            commits = pbft.normal.forwardable_commits(slot, pre_prepare.digest)
            if len(commits) < pbft.quorum:
                continue
            pbft.send(peer, pre_prepare)
            for commit in commits:
                pbft.send(peer, commit)

    def footprint(self) -> int:
        return len(self.late)
