"""What a client trusting no single node makes of several nodes' answers to one attempt.

A client of a Byzantine fault tolerant transactional cluster (``TxnClient(...,
replies=f + 1)``, the Redis gateway ``runtime.gateway``, the simulator's
gateway clients ``sim.txn_harness``) sends its signed attempt to several nodes;
each drives it, and the groups' records make the drivers converge on one
decision. An outcome counts once ``replies`` nodes gave the same *definite*
answer (:func:`match_outcome`): ``committed`` with the same reads (a key-value
attempt: the same command results), or ``aborted`` for any reason but an
undecided one (``busy``: a node may answer it with nothing decided).

**Undecided is not aborted.** A collection may end without a match although
the attempt committed: drivers that gave up (``unknown no_decision``, no answer
in time) or that found it decided by another driver without its reads.
:class:`OutcomeVotes` then asks the nodes that answered nothing definite for
the *same* signed attempt again (same nonce: the groups' nonce windows let it
run at most once; a node that drives it again finds the decision at ``begin``
and finishes it), at most ``reasks`` times; only then is the outcome
``unknown``, which a client must report as "it may have committed", never as
"try again" (the Redis gateway answers ``-UNKNOWN``, not ``-TRYAGAIN``: a
Redis client retries a TRYAGAIN as a new attempt, and a committed transfer
would apply twice).

**Fewer drivers.** With ``first``, an attempt goes to ``replies`` nodes first
and to the others once those cannot give ``replies`` matching definite
answers (:meth:`OutcomeVotes.short`: a disagreement, an undecided answer)
or do not in time (the caller's timer): a Byzantine node among the first
may lie or stay silent, and then more are asked (:meth:`OutcomeVotes.widen`).

Pure: no I/O, clock or randomness; the caller sends, times out and feeds answers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from replicaio.services.txn.protocol import TxnResult
from replicaio.services.txn.store import ABORTED, COMMITTED

# An abort a node may answer without any decision of the attempt (its drivers
# are all busy, or the coordinator's table is full): another node may still
# commit it, so it never counts towards ``replies`` matching aborts.
UNDECIDED_ABORTS: Final = frozenset({"busy"})
# Times a collection without a match asks the undecided nodes again.
REASKS_MAX: Final = 2
NO_ANSWER: Final = "no_answer"


def definite(answer: TxnResult) -> bool:
    """Whether ``answer`` says how the attempt ended (committed, or aborted for a
    reason that implies a decision)."""
    return answer.outcome == COMMITTED or (
        answer.outcome == ABORTED and answer.reason not in UNDECIDED_ABORTS)


def match_outcome(answers: list[TxnResult], replies: int, complete: bool, client: int,
                  nonce: int) -> TxnResult | None:
    """The outcome ``replies`` nodes' ``answers`` (one per node) agree on:
    ``committed`` with the same reads, or ``aborted`` for any reason but an
    undecided one (``UNDECIDED_ABORTS``); once the answers are ``complete``
    (every node asked answered) without such a match, ``unknown``; else ``None``
    (wait). The f+1 client's rule, the gateway's too (``runtime.gateway``)."""
    if replies == 1:
        return answers[0] if answers else None
    same = Counter((answer.outcome, answer.reads if answer.outcome == COMMITTED else b"")
                   for answer in answers if definite(answer))
    for (outcome, reads), count in same.items():
        if count >= replies:
            reasons = Counter(a.reason for a in answers if a.outcome == outcome)
            return TxnResult(client, nonce, outcome, reasons.most_common(1)[0][0], reads)
    if complete and answers:
        seen = ", ".join(f"{a.outcome} {a.reason}".strip() for a in answers)
        return TxnResult(client, nonce, "unknown",
                         f"no {replies} matching answers: {seen}"[:200], b"")
    return None


class OutcomeVotes:
    """One attempt's answers from the nodes asked, until ``replies`` match; asks
    the undecided ones again at most ``reasks`` times (see the module docstring)."""

    def __init__(self, client: int, nonce: int, replies: int, nodes: Iterable[int],
                 reasks: int = REASKS_MAX, first: int | None = None) -> None:
        """``nodes``: those that may be asked; with ``first``, only that many of
        them at first (from the attempt's nonce on, so attempts spread), the
        others once those cannot settle it (:meth:`widen`)."""
        assert replies >= 1 and reasks >= 0
        self.client = client
        self.nonce = nonce
        self.replies = replies
        self.nodes = sorted(set(nodes))
        count = len(self.nodes) if first is None else max(replies, min(first, len(self.nodes)))
        start = nonce % len(self.nodes) if self.nodes else 0
        rotated = self.nodes[start:] + self.nodes[:start]
        self.asked = sorted(rotated[:count])
        self.reasks_left = reasks
        self.answers: dict[int, TxnResult] = {}  # node -> its latest answer

    def heard(self, node: int, answer: TxnResult | None) -> None:
        """``node``'s answer (``None``: none came in time, or not one); a node's
        first definite answer stands, and a node not asked is ignored."""
        if node not in self.asked:
            return
        previous = self.answers.get(node)
        if previous is not None and definite(previous):
            return
        self.answers[node] = answer if answer is not None else TxnResult(
            self.client, self.nonce, "unknown", NO_ANSWER, b"")

    def complete(self) -> bool:
        """Whether every node asked answered (this round)."""
        return len(self.answers) >= len(self.asked)

    def silent(self) -> list[int]:
        """The nodes asked that have not answered this round."""
        return [node for node in self.asked if node not in self.answers]

    def matched(self) -> TxnResult | None:
        """The definite outcome ``replies`` nodes agree on, or ``None`` (not yet)."""
        definite_answers = [answer for answer in self.answers.values() if definite(answer)]
        if self.replies == 1:  # (match_outcome takes any first answer then)
            return definite_answers[0] if definite_answers else None
        return match_outcome(definite_answers, self.replies, False, self.client, self.nonce)

    def short(self) -> bool:
        """Whether the nodes asked can no longer give ``replies`` matching definite
        answers (those silent so far included): time to :meth:`widen`."""
        same = Counter((a.outcome, a.reads if a.outcome == COMMITTED else b"")
                       for a in self.answers.values() if definite(a))
        best = max(same.values(), default=0)
        return best + len(self.silent()) < self.replies

    def widen(self) -> list[int]:
        """The nodes not asked yet, now asked (``[]``: every node was): when the
        first ones cannot settle it (:meth:`short`) or do not in time (a
        Byzantine node among them may lie, or stay silent)."""
        wider = [node for node in self.nodes if node not in self.asked]
        self.asked = list(self.nodes)
        return wider

    def reask(self) -> list[int]:
        """Once every node asked answered without a match: the nodes to ask the same
        signed attempt again (those without a definite answer), forgetting their
        undecided answers; ``[]`` when no re-ask is left (the outcome is then
        :meth:`unknown`)."""
        if not self.reasks_left:
            return []
        again = [node for node in self.asked
                 if node not in self.answers or not definite(self.answers[node])]
        if not again:
            return []
        self.reasks_left -= 1
        for node in again:
            self.answers.pop(node, None)
        return again

    def unknown(self) -> TxnResult:
        """The outcome once nothing matched and no re-ask is left: ``unknown``, with
        what was heard."""
        found = match_outcome(list(self.answers.values()), max(self.replies, 2), True,
                              self.client, self.nonce)
        if found is not None and found.outcome == "unknown":
            return found
        return TxnResult(self.client, self.nonce, "unknown", "no answers in time", b"")


@dataclass(frozen=True, slots=True)
class GatewayRule:
    """How a client asking every node (the Redis gateway; the simulator's gateway
    clients) settles an attempt: the undecided nodes asked again ``reasks``
    times; an unknown outcome reported as such (``-UNKNOWN``), or, with
    ``unknown_retried`` (the rule before 2026-12-05, kept for the variant), as
    ``TRYAGAIN``, which a Redis client sends again as a *new* attempt. With
    ``first_wave``, an attempt goes to f+1 nodes first and to the others only
    once those cannot settle it or do not in time (``OutcomeVotes.widen``)."""

    reasks: int = REASKS_MAX
    unknown_retried: bool = False
    first_wave: bool = False
