"""A node that gives out what the codec refuses is reported, never a crashed run.

The simulator encodes every message a node sends (and, in its event log,
every output) with the real codec. Before, a node that emitted something the
codec refuses (a mutant of SMR answering ``Rejected(client, seq, None)``)
made ``EncodeError`` escape the simulator and stopped a mutation sweep; now
it is a ``bad-output`` violation attributed to the node, in runs with and
without an event log, replayable and shrinkable like any other.
"""

from __future__ import annotations

import io
from typing import Any

import pytest

from replicaio.assembly import protocol_factory
from replicaio.core.context import Context
from replicaio.core.node import NodeProtocol
from replicaio.sim.options import SimOptions
from replicaio.sim.shrink import shrink
from replicaio.sim.simulator import Simulator


class Garbage:
    """Not plain data: no codec encodes it."""


class GarbageFactory:
    """``beb``, but node 1 gives out garbage once it starts: a message to node 0
    (``what="send"``) or an output (``what="output"``)."""

    def __init__(self, what: str) -> None:
        self.base = protocol_factory("beb")
        self.name = self.base.name
        self.resilience = self.base.resilience
        self.what = what

    def __call__(self, context: Context) -> NodeProtocol:
        protocol = self.base(context)
        if context.id != 1:
            return protocol
        start = protocol.start
        what = self.what

        def start_then_garbage() -> None:
            start()
            if what == "send":
                context.link("garbage", body=object, durable=False).to(0, Garbage())
            else:
                context.output(Garbage())

        protocol.start = start_then_garbage  # type: ignore[method-assign]
        return protocol


def run(what: str, *, record: bool, sync: bool = False) -> Any:
    faults = ("crash", "sync") if sync else ()
    options = SimOptions.draw(3, 4, 0, faults)
    simulator = Simulator("beb", options, record=record, factory=GarbageFactory(what))
    return simulator.run()


@pytest.mark.parametrize("what", ["send", "output"])
@pytest.mark.parametrize("record", [True, False])
def test_an_unencodable_send_or_output_is_a_bad_output_violation(what: str, record: bool) -> None:
    result = run(what, record=record)
    assert [violation["property"] for violation in result.violations] == ["bad-output"]
    violation = result.violations[0]
    assert violation["node"] == 1
    assert "correct node 1" in violation["detail"]
    assert "Garbage" in violation["detail"]


def test_held_effects_released_after_a_sync_are_checked_too() -> None:
    """Under group commit a step's sends and outputs wait for the sync
    (``group_commit.finish_sync``): the same report, not an escaped error."""
    for what in ("send", "output"):
        result = run(what, record=False, sync=True)
        assert "bad-output" in {violation["property"] for violation in result.violations}


def test_a_bad_output_run_is_deterministic_and_shrinks() -> None:
    sinks = []
    for _ in range(2):
        sink = io.BytesIO()
        options = SimOptions.draw(3, 4, 0, ())
        Simulator("beb", options, log_sink=sink, factory=GarbageFactory("output")).run()
        sinks.append(sink.getvalue())
    assert sinks[0] == sinks[1]
    assert b"bad-output" in sinks[0]
    garbage = GarbageFactory("send")

    def failing(protocol: str, f: int | None, options: SimOptions, property_name: str) -> bool:
        result = Simulator(protocol, options, f=f, record=False, factory=garbage).run()
        return any(violation["property"] == property_name for violation in result.violations)

    options = SimOptions.draw(3, 4, 0, ("crash", "partition", "loss"))
    shrunk = shrink("beb", options, "bad-output", failing=failing)
    assert shrunk.property == "bad-output"
    assert not shrunk.options.crashes and not shrunk.options.partitions
