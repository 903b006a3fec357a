"""Replay one node from an event log and verify it does exactly the same.

For every step record of the node, in order, the input is fed to a fresh
core (a new one at each ``start``, as the host did), the recorded choice
outcomes are given back at the same choice points, and the effects are
compared with the recorded ones. The first difference is reported: which
step, which part, what was expected and what came out.

The log's header names the protocol; the caller gives the function that
turns that name into a factory (``replicaio.assembly.protocol_factory``):
``trace`` depends on ``core`` only and knows no protocol.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from replicaio.core.codec import Codec
from replicaio.core.config import ClusterConfig
from replicaio.core.node import Node, NodeParams, ProtocolFactory
from replicaio.trace.eventlog import (
    STEP,
    EventLogError,
    decode_input,
    encode_effects,
    read_log,
)

EFFECT_PARTS = ("persists", "sends", "timers_cancelled", "timers_set", "outputs")

FactoryFor = Callable[[str], ProtocolFactory]
# What a node needs beyond its protocol, read from the log's header: a live
# node's signer, USIG scheme and USIG admission (keyword arguments of Node).
NodeExtras = Callable[[dict[str, Any], int], dict[str, Any]]


@dataclass(slots=True)
class ReplayResult:
    """What replaying one node found."""

    node: int
    steps: int = 0
    incarnations: int = 0
    matched: bool = True
    divergence: dict[str, Any] | None = None
    counters: dict[str, int] = field(default_factory=dict)


class Divergence(Exception):
    """A replayed node made a different choice than the one recorded."""


class RecordedChoices:
    """Gives back recorded choice outcomes, checking label and arity."""

    def __init__(self) -> None:
        self.pending: deque[list[Any]] = deque()

    def __call__(self, label: str, count: int) -> int:
        if not self.pending:
            raise Divergence(f"unrecorded choice point {label!r} among {count}")
        recorded_label, recorded_count, index = self.pending.popleft()
        if recorded_label != label or recorded_count != count:
            raise Divergence(
                f"choice {label!r} among {count}, recorded {recorded_label!r} among "
                f"{recorded_count}"
            )
        return int(index)


def node_from_header(
    header: dict[str, Any], node_id: int, choose: Any, factory_for: FactoryFor,
    extras: NodeExtras | None = None,
) -> Node:
    """A fresh core for ``node_id`` configured as the logged run was (with
    ``extras``' keys and trusted component for a live node's log)."""
    factory = factory_for(str(header["protocol"]))
    config = ClusterConfig(
        n=int(header["n"]),
        f=int(header["f"]),
        byzantine=tuple(header.get("byzantine", ())),
        resilience=factory.resilience,
    )
    params = NodeParams(**header.get("params", {}))
    more = extras(header, node_id) if extras is not None else {}
    return Node(node_id, config, factory, choose=choose, params=params, **more)


def replay(stream: IO[bytes], node_id: int, factory_for: FactoryFor,
           extras: NodeExtras | None = None) -> ReplayResult:
    """Re-execute ``node_id`` from the log in ``stream``, building its cores with
    ``factory_for(protocol name)`` and, for a live node, ``extras(header,
    node_id)`` (its signer and USIG: what it signs must come out the same, and
    Ed25519 signatures are deterministic); see the module docstring."""
    header, records = read_log(stream)
    if not 0 <= node_id < int(header["n"]):
        raise EventLogError(f"node {node_id} is not in this run of {header['n']} nodes")
    codec = Codec()
    result = ReplayResult(node=node_id)
    choices = RecordedChoices()
    node: Node | None = None
    for record in records:
        if record[0] != STEP or record[2] != node_id:
            continue
        _, time_us, _, incarnation, event_record, recorded_choices, recorded = record
        event = decode_input(event_record)
        if event_record[0] == "start":
            node = node_from_header(header, node_id, choices, factory_for, extras)
            result.incarnations += 1
        if node is None:
            raise EventLogError(f"node {node_id} has a step before its start")
        choices.pending = deque(recorded_choices)
        where = {"step": result.steps, "time_us": time_us, "incarnation": incarnation}
        try:
            effects = node.step(event)
        except Divergence as error:
            return diverged(result, where, "choices", "recorded choices", str(error))
        if choices.pending:
            return diverged(result, where, "choices", recorded_choices, "fewer choices made")
        produced = encode_effects(codec, effects)
        for part, expected, actual in zip(EFFECT_PARTS, recorded, produced, strict=True):
            if expected != actual:
                return diverged(result, where, part, expected, actual)
        result.steps += 1
        result.counters = dict(node.counters)
    return result


def diverged(
    result: ReplayResult, where: dict[str, Any], part: str, expected: Any, actual: Any
) -> ReplayResult:
    result.matched = False
    result.divergence = {**where, "part": part, "expected": expected, "actual": actual}
    return result
