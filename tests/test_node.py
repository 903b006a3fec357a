"""Tests of the host boundary (replicaio.core.node) with a tiny protocol: the effects
batch, Start discipline, bad input dropped and counted, one-shot link semantics,
durable links across a restart, reliable delivery (retransmission with back-off,
acks, bounds, Hello after a peer restart), and configuration validation."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from replicaio.core.codec import Message
from replicaio.core.config import ClusterConfig, Fault, Resilience
from replicaio.core.context import Context
from replicaio.core.effects import NO_EFFECTS, Effects, Receive, Request, Start, TimerFired
from replicaio.core.errors import ConfigError, UsageError
from replicaio.core.node import (
    INCARNATION_KEY,
    TICK_TIMER,
    Acks,
    Envelope,
    Hello,
    Node,
    NodeParams,
    hello_key,
)

N = 4
PATH = ("tiny",)
EXTRA = ("A", "B", "C", "D", "E")
QUORUM = 2


class Tiny:
    """Votes on a durable bytes link, notes on a volatile int link; delivers the
    first vote that QUORUM nodes sent."""

    name = "tiny"
    resilience = Resilience.BYZANTINE

    def __init__(self, context: Context) -> None:
        self.context = context.child(*PATH)
        self.vote = self.context.link("VOTE")
        self.note = self.context.link("NOTE", body=int, durable=False)
        self.extra = dict(zip(EXTRA, self.context.links(*EXTRA), strict=True))

    def start(self) -> None:
        async def deliver() -> None:
            value = await self.vote.quorum(QUORUM)
            self.context.output(("delivered", value))

        self.context.spawn(deliver(), "deliver")

    def on_request(self, payload: Any) -> str | None:
        kind, *arguments = payload
        if kind == "vote":
            self.vote.to_all(arguments[0])
        elif kind == "note":
            self.note.to(arguments[0], arguments[1])
        elif kind == "note_all":
            self.note.to_all(arguments[0])
        elif kind == "extra":
            self.extra[arguments[0]].to_all(arguments[1])
        elif kind == "extra_to":
            self.extra[arguments[0]].to(arguments[1], arguments[2])
        else:
            return "unknown_kind"
        return None


class Unexpected(Message, tag="test_node.Unexpected"):
    """A valid, registered message that no node core expects."""

    number: int


def apply(storage: dict[str, bytes], effects: Effects) -> None:
    """What a host does with ``persists`` (without the sync)."""
    for key, value in effects.persists:
        if value is None:
            storage.pop(key, None)
        else:
            storage[key] = value


def started(
    node_id: int = 0,
    params: NodeParams | None = None,
    storage: dict[str, bytes] | None = None,
) -> tuple[Node, Effects]:
    node = Node(node_id, ClusterConfig(N, 1), Tiny, params=params)
    effects = node.step(Start(dict(storage or {})))
    return node, effects


def protocol(node: Node) -> Tiny:
    assert isinstance(node.protocol, Tiny)
    return node.protocol


def envelope(body: Any, channel: str = "VOTE", path: tuple[int | str, ...] = PATH) -> Envelope:
    return Envelope(path, channel, body)


def ack_hellos(node: Node) -> None:
    for peer in range(1, N):
        node.step(Receive(peer, node.codec.encode(Acks((hello_key(1),)))))


def sends_to(effects: Effects, peer: int) -> list[Any]:
    return [sent for destination, sent in effects.sends if destination == peer]


# -- the effects batch ------------------------------------------------------------


def test_start_effects_persist_incarnation_then_hello_every_peer() -> None:
    node, effects = started()
    assert effects.persists == [(INCARNATION_KEY, node.codec.encode_value(1))]
    assert effects.sends == [(peer, Hello(1)) for peer in (1, 2, 3)]
    assert effects.timers_set == [(TICK_TIMER, NodeParams().tick_us)]
    assert effects.timers_cancelled == []
    assert effects.outputs == []
    assert node.incarnation == 1


def test_one_batch_lists_persists_sends_and_outputs() -> None:
    node, _ = started()
    node.step(Receive(2, node.codec.encode(envelope(b"v"))))
    effects = node.step(Request(("vote", b"v")))
    key = "stiny#link:VOTE:-1"
    assert effects.persists == [(key, node.codec.encode_value(b"v"))]
    assert node.storage[key] == node.codec.encode_value(b"v")
    # in peer order, never to itself: its own copy is delivered inside the step
    assert effects.sends == [(peer, envelope(b"v")) for peer in (1, 2, 3)]
    assert protocol(node).vote.received == {2: b"v", 0: b"v"}
    assert effects.outputs == [("delivered", b"v")]  # own vote + node 2's
    assert effects.timers_set == []  # the tick is already armed
    assert bool(effects)
    assert not Effects()


def test_a_step_that_does_nothing_returns_the_shared_sealed_batch() -> None:
    node, _ = started()
    effects = node.step(Receive(1, envelope(b"a")))  # one peer: no quorum, ack on the tick
    assert effects is NO_EFFECTS
    assert not effects and effects.outputs == [] and effects.sends == []
    with pytest.raises(TypeError, match="NO_EFFECTS"):
        effects.sends.append((1, b"x"))
    with pytest.raises(TypeError, match="NO_EFFECTS"):
        effects.outputs += ["x"]
    # the node's own batch served again: the next step's effects are its own
    effects = node.step(Receive(2, envelope(b"a")))
    assert effects is not NO_EFFECTS
    assert effects.outputs == [("delivered", b"a")]
    assert not NO_EFFECTS


def test_rejected_request_is_counted() -> None:
    node, _ = started()
    effects = node.step(Request(("dance",)))
    assert not effects
    assert node.counters == {"request_rejected_unknown_kind": 1}


@pytest.mark.parametrize(
    "event", [Receive(1, b""), TimerFired(TICK_TIMER), Request(("vote", b"v"))]
)
def test_start_must_come_first(event: Any) -> None:
    node = Node(0, ClusterConfig(N, 1), Tiny)
    with pytest.raises(AssertionError, match="input before Start"):
        node.step(event)


def test_a_second_start_on_the_same_node_is_a_bug() -> None:
    node, _ = started()
    with pytest.raises(AssertionError, match="one incarnation"):
        node.step(Start({}))


def test_unknown_input_is_a_bug() -> None:
    node, _ = started()
    with pytest.raises(AssertionError, match="unknown input"):
        node.step("not an input")  # type: ignore[arg-type]


# -- bad input is dropped and counted, never raised --------------------------------


def assert_dropped(node: Node, effects: Effects, source: int, counter: str) -> None:
    assert not effects
    assert node.counters == {counter: 1}
    if 0 <= source < N:
        assert not node.reliable.acks_pending[source]  # not acknowledged either
    assert protocol(node).vote.received == {}


@pytest.mark.parametrize("source", [-1, N, 10**6, 0])
def test_unknown_peer_or_own_id_as_source_is_rejected(source: int) -> None:
    node, _ = started()
    effects = node.step(Receive(source, node.codec.encode(envelope(b"v"))))
    assert_dropped(node, effects, source, "rejected_unknown_peer")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "malformed"),
        (b"\xc1", "malformed"),
        (msgpack.packb(["no-such-tag", 1]), "unknown_type"),
        (msgpack.packb(["Hello", 1, 2]), "arity"),
        (msgpack.packb(["Hello", "one"]), "field_type"),
        (msgpack.packb(["Envelope", [1.5], "VOTE", b"v"]), "field_type"),
        (msgpack.packb(["Acks", [[["tiny"], 7]]]), "field_type"),
    ],
)
def test_garbage_bytes_are_rejected_by_reason(data: bytes, reason: str) -> None:
    node, _ = started()
    effects = node.step(Receive(1, data))
    assert_dropped(node, effects, 1, f"rejected_decode_{reason}")


def test_garbage_as_bytearray_and_memoryview_is_decoded_too() -> None:
    node, _ = started()
    node.step(Receive(1, bytearray(b"\xc1")))
    node.step(Receive(1, memoryview(b"\xc1")))
    assert node.counters == {"rejected_decode_malformed": 2}


@pytest.mark.parametrize("decoded", [False, True])
def test_valid_message_of_an_unexpected_type_is_rejected(decoded: bool) -> None:
    node, _ = started()
    unexpected = Unexpected(7)
    data = unexpected if decoded else node.codec.encode(unexpected)
    effects = node.step(Receive(1, data))
    assert_dropped(node, effects, 1, "rejected_unexpected_message")


@pytest.mark.parametrize(
    ("path", "counter"),
    [
        (("nope",), "ignored_unknown_path"),
        (("tiny", 1), "ignored_unknown_path"),
        (tuple(range(NodeParams().path_length_max + 1)), "ignored_bad_path"),
    ],
)
def test_envelope_for_an_unknown_path_is_ignored(path: tuple[int | str, ...], counter: str) -> None:
    node, _ = started()
    effects = node.step(Receive(1, node.codec.encode(envelope(b"v", path=path))))
    assert_dropped(node, effects, 1, counter)


@pytest.mark.parametrize("path", [PATH, ()])
def test_envelope_for_an_unknown_channel_is_rejected(path: tuple[int | str, ...]) -> None:
    node, _ = started()
    effects = node.step(Receive(1, node.codec.encode(envelope(b"v", "NOPE", path))))
    assert_dropped(node, effects, 1, "rejected_unknown_channel")


@pytest.mark.parametrize(
    ("channel", "body"),
    [("VOTE", 5), ("VOTE", "text"), ("VOTE", None), ("NOTE", b"5"), ("NOTE", True), ("NOTE", 1.5)],
)
def test_body_of_the_wrong_type_is_rejected(channel: str, body: Any) -> None:
    node, _ = started()
    effects = node.step(Receive(1, node.codec.encode(envelope(body, channel=channel))))
    assert_dropped(node, effects, 1, "rejected_body_type")
    assert protocol(node).note.received == {}


class Loose:
    """Links with container bodies: what a peer sends must still be countable."""

    name = "loose"
    resilience = Resilience.BYZANTINE

    def __init__(self, context: Context) -> None:
        self.context = context.child(*PATH)
        self.any = self.context.link("ANY", body=Any)
        self.tuple = self.context.link("TUPLE", body=tuple)

    def start(self) -> None:
        pass

    def on_request(self, payload: Any) -> str | None:
        return None


@pytest.mark.parametrize(
    ("channel", "body"),
    [("ANY", {1: 2}), ("ANY", (1, {2: 3})), ("TUPLE", ({},)), ("TUPLE", b"x")],
)
def test_unhashable_body_from_a_peer_is_rejected_not_raised(channel: str, body: Any) -> None:
    node = Node(0, ClusterConfig(N, 1), Loose)
    node.step(Start({}))
    effects = node.step(Receive(1, node.codec.encode(envelope(body, channel=channel))))
    assert not effects
    assert node.counters == {"rejected_body_type": 1}
    loose = node.protocol
    assert isinstance(loose, Loose)
    assert loose.any.received == {}
    assert loose.tuple.received == {}
    # the peer's later, countable value is its first
    node.step(Receive(1, node.codec.encode(envelope((1, 2), channel=channel))))
    assert loose.context.links_by_name[channel].received == {1: (1, 2)}


def test_link_on_the_root_context_receives() -> None:
    class Root:
        name = "root"
        resilience = Resilience.BYZANTINE

        def __init__(self, context: Context) -> None:
            self.context = context
            self.link = context.link("X")

        def start(self) -> None:
            async def echo() -> None:
                self.context.output(await self.link.from_peer(1))

            self.context.spawn(echo())

        def on_request(self, payload: Any) -> str | None:
            self.link.to_all(payload)
            return None

    node = Node(0, ClusterConfig(N, 1), Root)
    node.step(Start({}))
    effects = node.step(Receive(1, node.codec.encode(Envelope((), "X", b"hi"))))
    assert effects.outputs == [b"hi"]
    assert node.counters == {}
    node.step(Request(b"mine"))
    assert node.counters == {}
    root = node.protocol
    assert isinstance(root, Root)
    assert root.link.received == {1: b"hi", 0: b"mine"}


# -- one-shot link semantics -----------------------------------------------------------


def test_first_value_from_a_peer_counts_and_is_acknowledged() -> None:
    node, _ = started()
    effects = node.step(Receive(1, node.codec.encode(envelope(b"a"))))
    link = protocol(node).vote
    assert not effects  # acknowledgements wait for the tick
    assert link.received == {1: b"a"}
    assert link.from_peer(1).value() == b"a"
    assert link.counts == {b"a": 1}
    assert (PATH, "VOTE") in node.reliable.acks_pending[1]
    effects = node.step(TimerFired(TICK_TIMER))
    assert sends_to(effects, 1) == [Acks(((PATH, "VOTE"),))]
    assert not node.reliable.acks_pending[1]


def test_identical_duplicate_is_counted_and_acknowledged_but_not_counted_twice() -> None:
    node, _ = started()
    node.step(Receive(1, node.codec.encode(envelope(b"a"))))
    node.step(TimerFired(TICK_TIMER))
    effects = node.step(Receive(1, envelope(b"a")))
    assert not effects.outputs  # one peer is not a quorum of 2
    assert node.counters == {"link_duplicate": 1}
    assert protocol(node).vote.counts == {b"a": 1}
    assert (PATH, "VOTE") in node.reliable.acks_pending[1]  # the ack may have been lost
    assert not node.evidence_log


def test_different_value_is_equivocation_kept_as_evidence() -> None:
    node, _ = started()
    node.step(Receive(1, envelope(b"a")))
    effects = node.step(Receive(1, envelope(b"b")))
    link = protocol(node).vote
    assert not effects.outputs
    assert node.counters == {"link_equivocation": 1}
    assert link.received == {1: b"a"}
    assert link.counts == {b"a": 1}
    assert list(node.evidence_log) == [(1, PATH, "VOTE", b"b")]
    # the equivocated value does not count towards a quorum
    effects = node.step(Receive(2, envelope(b"b")))
    assert effects.outputs == []
    effects = node.step(Receive(3, envelope(b"a")))
    assert effects.outputs == [("delivered", b"a")]


def test_evidence_is_bounded_by_evidence_max() -> None:
    params = NodeParams(evidence_max=3)
    node, _ = started(params=params)
    node.step(Receive(1, envelope(b"first")))
    values = [bytes([index]) for index in range(7)]
    for value in values:
        node.step(Receive(1, envelope(value)))
    assert node.counters["link_equivocation"] == len(values)
    assert len(node.evidence_log) == params.evidence_max
    assert [entry[3] for entry in node.evidence_log] == values[-3:]  # the newest


def test_second_send_with_a_different_value_is_suppressed() -> None:
    node, _ = started()
    node.step(Request(("vote", b"v")))
    effects = node.step(Request(("vote", b"w")))
    assert not effects
    assert node.counters == {"link_second_send": 1}
    effects = node.step(Request(("vote", b"v")))  # the same value again: a no-op
    assert not effects
    assert node.counters == {"link_second_send": 1}
    assert protocol(node).vote.sent_to_all == b"v"


def test_send_to_one_peer_is_once_per_peer() -> None:
    node, _ = started()
    effects = node.step(Request(("note", 2, 5)))
    assert effects.sends == [(2, envelope(5, channel="NOTE"))]
    assert effects.persists == []  # NOTE is not durable
    effects = node.step(Request(("note", 3, 6)))
    assert effects.sends == [(3, envelope(6, channel="NOTE"))]
    effects = node.step(Request(("note", 2, 7)))
    assert not effects
    assert node.counters == {"link_second_send": 1}


def test_send_to_all_after_send_to_one_peer_never_equivocates() -> None:
    node, _ = started()
    node.step(Request(("note", 2, 5)))
    effects = node.step(Request(("note", 2, 5)))
    assert not effects
    effects = node.step(Request(("note_all", 6)))
    # node 2 already has its one NOTE value: a second, different one would make
    # this correct node look like an equivocator
    assert effects.sends == [(1, envelope(6, channel="NOTE")), (3, envelope(6, channel="NOTE"))]
    assert node.counters == {"link_second_send": 1}
    retained = node.reliable.unacked[2][(PATH, "NOTE")].envelope
    assert isinstance(retained, Envelope) and retained.body == 5
    assert protocol(node).note.received == {0: 6}
    effects = node.step(Request(("note_all", 6)))
    assert not effects  # the others have it; node 2's conflict is counted again
    assert node.counters == {"link_second_send": 2}


def test_link_misuse_raises_usage_errors() -> None:
    node, _ = started()
    link = protocol(node).vote
    with pytest.raises(UsageError, match="no node 4"):
        link.to(N, b"v")
    with pytest.raises(UsageError, match="out of range"):
        link.quorum(0)
    with pytest.raises(UsageError, match="out of range"):
        link.quorum(N + 1)
    with pytest.raises(UsageError, match="body type"):
        protocol(node).context.link("BAD", body=list[int])


# -- durable links across a restart ------------------------------------------------------


def test_durable_link_persists_in_the_batch_of_its_send() -> None:
    node, _ = started()
    effects = node.step(Request(("vote", b"v")))
    keys = [key for key, _ in effects.persists]
    assert keys == ["stiny#link:VOTE:-1"]
    assert effects.sends  # same batch: the host syncs before it sends


def test_restart_restores_what_durable_links_sent_and_requeues_it() -> None:
    storage: dict[str, bytes] = {}
    node, effects = started()
    apply(storage, effects)
    apply(storage, node.step(Request(("vote", b"v"))))
    apply(storage, node.step(Request(("note", 1, 5))))  # volatile: not restored
    apply(storage, node.step(Receive(1, envelope(b"x"))))

    restarted = Node(0, ClusterConfig(N, 1), Tiny)
    effects = restarted.step(Start(dict(storage)))
    assert restarted.incarnation == 2
    assert effects.persists == [(INCARNATION_KEY, restarted.codec.encode_value(2))]
    link = protocol(restarted).vote
    assert link.sent_to_all == b"v"
    assert protocol(restarted).note.sent == {}
    for peer in (1, 2, 3):
        assert sends_to(effects, peer) == [envelope(b"v"), Hello(2)]
        assert (PATH, "VOTE") in restarted.reliable.unacked[peer]
    assert link.received == {0: b"v"}  # its own copy, delivered locally again
    # what it received before the crash is gone: peers re-send after the Hello
    assert 1 not in link.received
    effects = restarted.step(Request(("vote", b"w")))
    assert not effects  # no equivocation across a restart
    assert restarted.counters == {"link_second_send": 1}


def test_restart_restores_sends_to_single_peers() -> None:
    storage: dict[str, bytes] = {}
    node, effects = started()
    apply(storage, effects)
    apply(storage, node.step(Request(("extra", "A", b"a"))))
    apply(storage, node.step(Request(("extra_to", "B", 3, b"b3"))))
    restarted, effects = started(storage=storage)
    assert protocol(restarted).extra["A"].sent_to_all == b"a"
    assert protocol(restarted).extra["B"].sent == {3: b"b3"}
    assert sends_to(effects, 3) == [envelope(b"a", "A"), envelope(b"b3", "B"), Hello(2)]
    assert sends_to(effects, 1) == [envelope(b"a", "A"), Hello(2)]
    effects = restarted.step(Request(("extra_to", "B", 3, b"other")))
    assert not effects
    assert restarted.counters == {"link_second_send": 1}


# -- reliable delivery ------------------------------------------------------------------


def retransmission_ticks(node: Node, peer: int, ticks: int) -> list[int]:
    found = []
    for _ in range(ticks):
        effects = node.step(TimerFired(TICK_TIMER))
        if envelope(b"v") in sends_to(effects, peer):
            found.append(node.reliable.tick)
    return found


def test_unacked_message_is_retransmitted_with_exponential_backoff() -> None:
    params = NodeParams(retransmit_after_ticks=2, backoff_exponent_max=3)
    node, _ = started(params=params)
    ack_hellos(node)
    node.step(Request(("vote", b"v")))
    # first after retransmit_after_ticks + 1 ticks, then 2 * 2**attempt ticks,
    # the exponent capped at backoff_exponent_max
    assert retransmission_ticks(node, 1, 70) == [3, 7, 15, 31, 47, 63]
    assert node.counters["retransmissions"] == 6 * 3


def test_acks_stop_retransmission_to_that_peer_only() -> None:
    node, _ = started(params=NodeParams(retransmit_after_ticks=1))
    ack_hellos(node)
    node.step(Request(("vote", b"v")))
    node.step(Receive(1, node.codec.encode(Acks(((PATH, "VOTE"),)))))
    assert not node.reliable.unacked[1]
    ticks = retransmission_ticks(node, 1, 10)
    assert ticks == []
    node.step(Receive(2, Acks(((PATH, "VOTE"),))))
    node.step(Receive(3, Acks(((PATH, "VOTE"),))))
    assert not node.reliable.has_unacked()
    effects = node.step(TimerFired(TICK_TIMER))
    assert effects.timers_set == []  # nothing to do: the tick is not re-armed


def test_hello_is_retransmitted_until_acknowledged() -> None:
    node, _ = started(params=NodeParams(retransmit_after_ticks=1))
    for _ in range(2):
        effects = node.step(TimerFired(TICK_TIMER))
    assert effects.sends == [(peer, Hello(1)) for peer in (1, 2, 3)]
    ack_hellos(node)
    assert not node.reliable.has_unacked()


def test_tick_is_armed_once_while_needed() -> None:
    node, effects = started()
    assert effects.timers_set == [(TICK_TIMER, node.params.tick_us)]
    effects = node.step(Request(("vote", b"v")))
    assert effects.timers_set == []
    effects = node.step(TimerFired(TICK_TIMER))
    assert effects.timers_set == [(TICK_TIMER, node.params.tick_us)]


def test_acks_are_batched_up_to_acks_per_message_max() -> None:
    node, _ = started(params=NodeParams(acks_per_message_max=2))
    node.step(Receive(1, Hello(1)))
    for channel in EXTRA:
        node.step(Receive(1, envelope(b"x", channel=channel)))
    effects = node.step(TimerFired(TICK_TIMER))
    acks = [sent for sent in sends_to(effects, 1) if isinstance(sent, Acks)]
    expected = [hello_key(1)] + [(PATH, channel) for channel in EXTRA]
    assert [len(ack.items) for ack in acks] == [2, 2, 2]
    assert [item for ack in acks for item in ack.items] == expected
    assert not node.reliable.acks_pending[1]


def test_unacked_max_bound_is_reached_and_counted() -> None:
    node, _ = started(params=NodeParams(unacked_max=2))
    node.step(Request(("vote", b"v")))  # Hello + VOTE: full for every peer
    assert all(len(node.reliable.unacked[peer]) == 2 for peer in (1, 2, 3))
    effects = node.step(Request(("note", 1, 9)))
    assert effects.sends == [(1, envelope(9, channel="NOTE"))]  # still sent once
    assert node.counters == {"bound_unacked_max": 1}
    assert (PATH, "NOTE") not in node.reliable.unacked[1]
    assert len(node.reliable.unacked[1]) == 2


def test_hello_from_a_restarted_peer_resends_what_it_was_sent() -> None:
    node, _ = started()
    node.step(Request(("vote", b"v")))
    node.step(Request(("note", 1, 5)))
    node.step(Request(("note", 2, 6)))
    for peer in (1, 2, 3):
        node.step(Receive(peer, Acks(((PATH, "VOTE"), (PATH, "NOTE"), hello_key(1)))))
    assert not node.reliable.has_unacked()
    effects = node.step(Receive(1, node.codec.encode(Hello(1))))
    assert not effects  # a fresh node lost nothing
    assert hello_key(1) in node.reliable.acks_pending[1]
    effects = node.step(Receive(1, node.codec.encode(Hello(2))))
    assert effects.sends == [(1, envelope(b"v")), (1, envelope(5, channel="NOTE"))]
    assert node.counters == {"peer_restarts_seen": 1}
    assert set(node.reliable.unacked[1]) == {(PATH, "VOTE"), (PATH, "NOTE")}
    assert not node.reliable.unacked[2]
    effects = node.step(Receive(1, Hello(2)))
    assert not effects.sends
    assert node.counters["hello_stale"] == 1


def test_first_hello_of_a_later_incarnation_also_resends() -> None:
    node, _ = started()
    node.step(Request(("vote", b"v")))
    effects = node.step(Receive(3, Hello(5)))
    assert effects.sends == [(3, envelope(b"v"))]
    assert node.reliable.peer_incarnations[3] == 5


# -- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [
        "tick_us",
        "retransmit_after_ticks",
        "unacked_max",
        "acks_per_message_max",
        "evidence_max",
        "path_length_max",
    ],
)
def test_node_params_reject_non_positive_bounds(field: str) -> None:
    with pytest.raises(ConfigError, match=f"NodeParams.{field} must be >= 1"):
        NodeParams(**{field: 0}).validate()


@pytest.mark.parametrize("exponent", [-1, 17])
def test_node_params_reject_backoff_exponent_out_of_range(exponent: int) -> None:
    with pytest.raises(ConfigError, match="backoff_exponent_max must be in"):
        NodeParams(backoff_exponent_max=exponent).validate()


def test_node_params_accept_the_edges() -> None:
    params = NodeParams(backoff_exponent_max=0)
    assert params.validate() is params
    NodeParams(backoff_exponent_max=16).validate()


@pytest.mark.parametrize(
    ("config", "error"),
    [
        (ClusterConfig(0, 0), r"n must be in \[1, 1024\], got 0"),
        (ClusterConfig(1025, 0), r"n must be in \[1, 1024\], got 1025"),
        (ClusterConfig(4, -1), "f must be >= 0, got -1"),
        (ClusterConfig(3, 1), "byzantine resilience with f=1 needs n >= 4, got n=3"),
        (ClusterConfig(9, 3), "needs n >= 10, got n=9"),
        (ClusterConfig(2, 1, resilience=Resilience.CRASH), "crash resilience .* needs n >= 3"),
        (
            ClusterConfig(2, 1, resilience=Resilience.BYZANTINE_TRUSTED),
            "byzantine-trusted resilience with f=1 needs n >= 3",
        ),
        (ClusterConfig(7, 2, byzantine=(1, 1)), r"byzantine nodes listed twice: \(1, 1\)"),
        (ClusterConfig(4, 1, byzantine=(4,)), "byzantine node 4 is not in 0..3"),
        (ClusterConfig(4, 1, byzantine=(-1,)), "byzantine node -1 is not in 0..3"),
        (ClusterConfig(4, 1, byzantine=(0, 1)), "2 byzantine nodes exceed f=1"),
        (
            ClusterConfig(3, 1, byzantine=(0,), resilience=Resilience.CRASH),
            "crash protocols tolerate no byzantine nodes",
        ),
        (
            ClusterConfig(3, 1, byzantine=(0,), resilience=Resilience.ANY),
            "any protocols tolerate no byzantine nodes",
        ),
    ],
)
def test_cluster_config_rejects_bad_values(config: ClusterConfig, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        config.validate()
    with pytest.raises(ConfigError):
        Node(0, config, Tiny)


@pytest.mark.parametrize(
    "config",
    [
        ClusterConfig(4, 1),
        ClusterConfig(1, 0),
        ClusterConfig(1024, 0),
        ClusterConfig(7, 2, byzantine=(6, 0)),
        ClusterConfig(3, 1, resilience=Resilience.CRASH),
        ClusterConfig(3, 1, byzantine=(2,), resilience=Resilience.BYZANTINE_TRUSTED),
        ClusterConfig(1, 5, resilience=Resilience.ANY),
    ],
)
def test_cluster_config_accepts_usable_values(config: ClusterConfig) -> None:
    assert config.validate() is config
    assert config.nodes == tuple(range(config.n))


def test_cluster_config_fault_and_correct() -> None:
    config = ClusterConfig(7, 2, byzantine=(5, 1)).validate()
    assert config.correct == (0, 2, 3, 4, 6)
    assert config.fault(1) is Fault.BYZANTINE
    assert config.fault(0) is Fault.CORRECT


def test_node_id_outside_the_cluster_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"node id 4 not in 0\.\.3"):
        Node(N, ClusterConfig(N, 1), Tiny)
    with pytest.raises(ConfigError, match=r"NodeParams\.tick_us"):
        Node(0, ClusterConfig(N, 1), Tiny, params=NodeParams(tick_us=0))
