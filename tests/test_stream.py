"""Streams: typed unreliable datagrams routed by message class."""

from __future__ import annotations

from typing import Any

import pytest

from replicaio.core.codec import Codec, Message
from replicaio.core.config import ClusterConfig, Resilience
from replicaio.core.context import Context
from replicaio.core.effects import Receive, Request, Start
from replicaio.core.errors import UsageError
from replicaio.core.node import Node, NodeParams


class Ping(Message, tag="test.Ping"):
    number: int


class Pong(Message, tag="test.Pong"):
    number: int


class PingPong:
    """Answers every Ping with a Pong; a task collects Pongs from the inbox."""

    name = "pingpong"
    resilience = Resilience.CRASH

    def __init__(self, context: Context) -> None:
        self.context = context
        self.pongs: list[tuple[int, int]] = []
        self.pings = context.stream(Ping, handler=self.on_ping)
        self.pong_stream = context.stream(Pong, inbox_max=2)

    def on_ping(self, source: int, ping: Any) -> None:
        self.pong_stream.send(source, Pong(ping.number))

    def start(self) -> None:
        self.context.spawn(self.collect())

    async def collect(self) -> None:
        while True:
            source, pong = await self.pong_stream.receive()
            self.pongs.append((source, pong.number))

    def on_request(self, payload: Any) -> str | None:
        self.pings.send(int(payload), Ping(7))
        return None


def make(node_id: int = 0) -> tuple[Node, PingPong]:
    node = Node(node_id, ClusterConfig(n=3, f=1, resilience=Resilience.CRASH), PingPong,
                params=NodeParams())
    node.step(Start({}))
    assert isinstance(node.protocol, PingPong)
    return node, node.protocol


def test_handler_answers_and_sends_are_plain_effects() -> None:
    node, _ = make(0)
    effects = node.step(Receive(1, Codec().encode(Ping(3))))
    assert effects.sends == [(1, Pong(3))]
    assert not effects.persists
    retained = node.reliable.unacked[1]
    assert not any(key for key in retained if not key[1].startswith("hello"))  # not retained


def test_self_send_is_delivered_within_the_step() -> None:
    node, protocol = make(0)
    node.step(Request(0))
    assert protocol.pongs == [(0, 7)]


def test_inbox_bound_drops_newest_and_counts() -> None:
    node, protocol = make(0)
    protocol.pongs.clear()
    node.step(Receive(1, Pong(1)))
    assert protocol.pongs == [(1, 1)]
    # three arrivals before the collector runs again: the third exceeds inbox_max=2
    for number in (2, 3, 4):
        protocol.pong_stream.deliver(1, Pong(number))
    node.run()
    assert node.counters["bound_stream_inbox_max"] == 1
    assert protocol.pongs == [(1, 1), (1, 2), (1, 3)]


def test_unknown_message_class_is_rejected_and_counted() -> None:
    node, _ = make(0)

    class Stranger(Message, tag="test.Stranger"):
        number: int

    node.step(Receive(2, Codec().encode(Stranger(1))))
    assert node.counters["rejected_unexpected_message"] == 1


def test_misuse_raises_usage_errors() -> None:
    _node, protocol = make(0)
    with pytest.raises(UsageError):
        protocol.pings.send(0, Pong(1))
    with pytest.raises(UsageError):
        protocol.pings.send(9, Ping(1))
    with pytest.raises(UsageError):
        protocol.context.stream(Ping)  # Ping already has an owner
    with pytest.raises(UsageError):
        protocol.pings.receive()
