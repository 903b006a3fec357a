"""A Hypothesis state machine holding ``Link`` receive semantics to a naive model.

Peers send values on one link of a node (through ``Node.step``, as a host would);
between receipts, the protocol asks for ``quorum(k)`` and ``from_peer(p)``. The
model: the first value from each peer counts once; repeats are duplicates or
equivocations and never count; ``quorum(k)`` yields the first value that k
distinct peers sent (whenever it was asked for); ``from_peer(p)`` yields p's
first value; ``certificate(k, key)`` yields the first key that k distinct
peers' first values share, with exactly those k peers and their values.
"""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from replicaio.core.config import ClusterConfig
from replicaio.core.context import Certificate, Context, Link
from replicaio.core.effects import Receive, Start
from replicaio.core.lines import Line
from replicaio.core.node import Envelope, Node

N = 7
ME = 0
VALUES = (b"a", b"b", b"c")


class OneLink:
    name = "one-link"
    resilience = ClusterConfig(N, 2).resilience

    def __init__(self, context: Context) -> None:
        self.link = context.child("x").link("L")

    def start(self) -> None:
        pass

    def on_request(self, payload: Any) -> str | None:
        return "no_requests"


class LinkMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.node = Node(ME, ClusterConfig(N, 2), OneLink)
        self.node.step(Start({}))
        assert isinstance(self.node.protocol, OneLink)
        self.link: Link[bytes] = self.node.protocol.link
        # the model
        self.first: dict[int, bytes] = {}
        self.supporters: dict[bytes, int] = {}
        self.reached: list[bytes] = []  # reached[k - 1]: first value with k supporters
        self.duplicates = 0
        self.equivocations = 0
        self.rejected = 0
        self.quorums: list[tuple[int, Line[bytes]]] = []
        self.from_peers: list[tuple[int, Line[bytes]]] = []
        self.certificates: list[tuple[int, bool, Line[Certificate[bytes]]]] = []
        self.arrivals: list[tuple[int, bytes]] = []  # first values, in arrival order

    @rule(peer=st.integers(0, N - 1), value=st.sampled_from(VALUES))
    def receive(self, peer: int, value: bytes) -> None:
        effects = self.node.step(Receive(peer, Envelope(("x",), "L", value)))
        assert not effects.sends
        if peer == ME:
            self.rejected += 1
        elif peer not in self.first:
            self.first[peer] = value
            self.arrivals.append((peer, value))
            count = self.supporters.get(value, 0) + 1
            self.supporters[value] = count
            if count > len(self.reached):
                self.reached.append(value)
        elif self.first[peer] == value:
            self.duplicates += 1
        else:
            self.equivocations += 1

    @rule(count=st.integers(1, N))
    def ask_quorum(self, count: int) -> None:
        self.quorums.append((count, self.link.quorum(count)))

    @rule(peer=st.integers(1, N - 1))
    def ask_from_peer(self, peer: int) -> None:
        line = self.link.from_peer(peer)
        assert line is self.link.from_peer(peer)  # one line per peer
        self.from_peers.append((peer, line))

    @invariant()
    def quorums_yield_the_first_value_to_reach_their_count(self) -> None:
        for count, line in self.quorums:
            if count <= len(self.reached):
                assert line.ready, f"quorum({count}) not set though {self.reached}"
                assert line.value() == self.reached[count - 1], (count, self.reached)
            else:
                assert not line.ready

    @rule(count=st.integers(1, N), grouped=st.booleans())
    def ask_certificate(self, count: int, grouped: bool) -> None:
        key = group_key if grouped else None
        self.certificates.append((count, grouped, self.link.certificate(count, key)))

    @invariant()
    def certificates_carry_the_first_key_to_reach_their_count(self) -> None:
        for count, grouped, line in self.certificates:
            expected = expected_certificate(self.arrivals, count, grouped)
            assert line.ready == (expected is not None)
            if expected is not None:
                assert line.value() == expected

    @invariant()
    def from_peer_yields_the_first_value(self) -> None:
        for peer, line in self.from_peers:
            assert line.ready == (peer in self.first)
            if line.ready:
                assert line.value() == self.first[peer]

    @invariant()
    def every_peer_counts_once(self) -> None:
        assert self.link.received == self.first
        assert self.link.counts == self.supporters
        assert sum(self.link.counts.values()) == len(self.first)
        counters = self.node.counters
        assert counters.get("link_duplicate", 0) == self.duplicates
        assert counters.get("link_equivocation", 0) == self.equivocations
        assert counters.get("rejected_unknown_peer", 0) == self.rejected
        assert len(self.node.evidence_log) == min(self.equivocations, self.node.params.evidence_max)


def group_key(value: bytes) -> str:
    return "ab" if value in (b"a", b"b") else "c"


def expected_certificate(
    arrivals: list[tuple[int, bytes]], count: int, grouped: bool
) -> Certificate[bytes] | None:
    """The naive model: replay first values in arrival order until a key has ``count``."""
    groups: dict[object, list[int]] = {}
    values = dict(arrivals)
    for peer, value in arrivals:
        key = group_key(value) if grouped else value
        groups.setdefault(key, []).append(peer)
        if len(groups[key]) == count:
            senders = tuple(sorted(groups[key]))
            return Certificate(key, senders, tuple(values[p] for p in senders))
    return None


LinkMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestLinkReceive = LinkMachine.TestCase
