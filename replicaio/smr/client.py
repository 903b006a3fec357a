"""What a client accepts: f+1 matching replies (Castro and Liskov, section 4.1).

One rule, shared by every client of a replicated service, so the simulator's
clients (``replicaio.sim.kv_harness``), the asyncio client library
(``replicaio.runtime.smr_client``) and the Redis gateway decide alike:

* with **crash faults** (Raft) one reply is enough: a replica never lies;
* with **Byzantine faults** (PBFT; n >= 3f+1) a result is accepted once f+1
  distinct replicas sent the same ``result`` for the same ``(client, seq)``:
  at least one of them is correct, and a correct replica answers only what its
  execution of the totally ordered requests gave. A **read-only** request
  answered without ordering (section 5.1.3) needs R matching replies and
  every write of a client reading so W, with R + W >= n + f + 1 (any read
  quorum then meets every write quorum in a correct replica that executed the
  write) and R + R >= n + f + 1 (reads never go back): ceil((n + f + 1) / 2)
  both where that is live (n >= 3f+1: 2f+1 of the paper's 3f+1), else R = n
  and W = f + 1 (MinBFT's n = 2f+1: writes stay live, a read with a silent
  replica goes through the log) (:func:`fast_quorums`; docs/pbft.md, *The
  read-only optimisation for any n*); without R alike the client sends the
  read again as an ordinary request;
* a **refusal** is the same kind of claim ("this was not executed", "your
  session expired") and needs as many matching ``Rejected`` reasons;
* each replica has one vote per request: a later answer from the same replica
  replaces its earlier one (a ``busy`` that became a result), so a Byzantine
  replica can never vote twice. Hints (``Reply.leader``, ``Reply.view``) are
  not part of the match; a client may follow them.

:class:`Votes` counts one request's answers; it is pure and deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

from replicaio.core.config import Resilience, intersecting_quorum
from replicaio.core.errors import UsageError
from replicaio.smr.api import Rejected, Reply

BYZANTINE = (Resilience.BYZANTINE, Resilience.BYZANTINE_TRUSTED)


@dataclass(frozen=True, slots=True)
class FastQuorums:
    """A client's quorums with the read-only optimisation: ``read`` matching
    answers accept an unordered read, ``write`` matching replies a write of a
    client reading so (an ordered read takes the ordinary f+1)."""

    read: int
    write: int


def fast_quorums(resilience: Resilience, f: int, n: int) -> FastQuorums:
    """The read and write quorums of a client reading without ordering, out of
    ``n`` replicas: 1 and 1 with crash faults; with Byzantine ones
    ceil((n + f + 1) / 2) both where that is at most the n - f correct
    replicas (n >= 3f + 1), else the asymmetric R = n, W = f + 1.

    Why: a write accepted on W matching replies ran at W - f correct replicas
    at least, so at most n - W correct ones, with f faulty ones, can answer a
    later read as if it had not run; a read accepted on R matching answers
    therefore reflects it when R > n - W + f, i.e. R + W >= n + f + 1. Two
    reads likewise (R + R >= n + f + 1: the second meets the first's correct
    voters in one, whose state only moved on), so R >= ceil((n + f + 1) / 2).
    Writes must stay live, W <= n - f, and reads need not (a read that finds
    fewer than R alike goes through the log). The symmetric choice is that
    least R: Castro and Liskov's 2f + 1 with n = 3f + 1 (section 5.1.3), more
    with more replicas (n = 6, f = 1: 2f + 1 = 3 matching answers may all come
    from replicas that had not run a write accepted on three replies, the
    faulty replica's among them). It is live only for n >= 3f + 1; below
    (MinBFT's n = 2f + 1: every replica for f = 1, n - 1 for f = 2) a fast
    reader's write would wait for more replies than the correct replicas
    give. There R = n and W = n + f + 1 - R = f + 1, the ordinary write
    quorum: a read then needs every replica alike (with one silent or lying,
    it falls back to the log), and a write needs f + 1 replies, one from a
    correct replica that ran it, which every read's quorum holds."""
    if f < 0:
        raise UsageError("f must be >= 0")
    if n < 1:
        raise UsageError("n must be >= 1")
    if resilience not in BYZANTINE:
        return FastQuorums(1, 1)
    symmetric = intersecting_quorum(n, f)
    if symmetric <= n - f:
        return FastQuorums(symmetric, symmetric)
    return FastQuorums(n, min(f + 1, n))


def reply_quorum(resilience: Resilience, f: int, n: int, *, read_only: bool = False) -> int:
    """How many matching answers out of ``n`` replicas a client needs: 1 with
    crash faults; f+1 with Byzantine ones; with ``read_only``, for an unordered
    read, :func:`fast_quorums`' ``read`` (ceil((n + f + 1) / 2) for n >= 3f+1,
    n below)."""
    if read_only:
        return fast_quorums(resilience, f, n).read
    if f < 0:
        raise UsageError("f must be >= 0")
    if n < 1:
        raise UsageError("n must be >= 1")
    if resilience not in BYZANTINE:
        return 1
    return f + 1


@dataclass(frozen=True, slots=True)
class Accepted:
    """The result f+1 (or the quorum of) replicas agree on, and who vouched."""

    result: bytes
    replicas: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Refused:
    """A refusal as many replicas agree on (``Rejected.reason``)."""

    reason: str
    replicas: tuple[int, ...]


Decision = Accepted | Refused


class Votes:
    """The answers to one ``(client, seq)``; see the module docstring."""

    __slots__ = ("client", "decision", "n", "quorum", "seq", "votes")

    def __init__(self, client: int, seq: int, quorum: int, n: int) -> None:
        if not 1 <= quorum <= n:
            raise UsageError(f"a reply quorum of {quorum} out of {n} replicas")
        self.client = client
        self.seq = seq
        self.quorum = quorum
        self.n = n
        self.votes: dict[int, tuple[str, bytes | str]] = {}  # replica -> its answer
        self.decision: Decision | None = None

    def add(self, answer: Reply | Rejected, replica: int) -> Decision | None:
        """Count ``answer`` from ``replica`` (who sent it, as the channel says:
        never ``Reply.replica``, which a liar fills in as it likes). Returns the
        decision once one is reached (and again for later answers)."""
        if self.decision is not None:
            return self.decision
        if answer.client != self.client or answer.seq != self.seq:
            return None
        if not 0 <= replica < self.n:
            return None
        if isinstance(answer, Reply):
            vote: tuple[str, bytes | str] = ("reply", answer.result)
        else:
            vote = ("rejected", answer.reason)
        self.votes[replica] = vote
        voters = tuple(sorted(peer for peer, other in self.votes.items() if other == vote))
        if len(voters) < self.quorum:
            return None
        kind, value = vote
        if kind == "reply":
            assert isinstance(value, bytes)
            self.decision = Accepted(value, voters)
        else:
            assert isinstance(value, str)
            self.decision = Refused(value, voters)
        return self.decision

    def split(self) -> bool:
        """Whether no answer can reach the quorum any more (every replica voted,
        or too few are left to make any answer reach it): for reads answered
        without ordering, the cue to retry through the log."""
        if self.decision is not None:
            return False
        counts: dict[tuple[str, bytes | str], int] = {}
        for vote in self.votes.values():
            counts[vote] = counts.get(vote, 0) + 1
        silent = self.n - len(self.votes)
        best = max(counts.values(), default=0)
        return best + silent < self.quorum
