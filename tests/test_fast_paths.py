"""The simulator's and the node core's fast paths against naive recomputation.

Each optimised structure of the hot path (the per-path index of durable keys,
...) is checked after every step of fault-heavy simulated runs against what a
naive scan of the node's state says it must be.
"""

from __future__ import annotations

import heapq
from typing import Any

import pytest

from replicaio.core.effects import Receive
from replicaio.core.node import Node
from replicaio.sim.options import SimOptions, parse_faults
from replicaio.sim.simulator import REQUEST, SimNode, Simulator


def naive_storage_keys(node: Node) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for key in node.storage:
        grouped.setdefault(key[: key.find("#") + 1], []).append(key)
    return grouped


def check_node(node: Node) -> None:
    assert {prefix: list(keys) for prefix, keys in node.storage_keys.items()} == (
        naive_storage_keys(node)
    )


class CheckedSimulator(Simulator):
    """Checks every live core after each of its steps."""

    def step(self, node: SimNode, event: Any, data: bytes | None = None) -> None:
        super().step(node, event, data)
        if node.core is not None:
            check_node(node.core)


@pytest.mark.parametrize("seed", range(1, 9))
def test_fast_paths_match_naive_state_under_faults(seed: int) -> None:
    faults = parse_faults("crash,partition,loss,dup,reorder")
    options = SimOptions.draw(seed, 4, 1, faults, requests_per_node=20)
    result = CheckedSimulator("bracha", options).run()
    assert result.ok, result.violations


def test_log_sink_holds_exactly_the_hashed_bytes_whatever_the_flush_size() -> None:
    import hashlib
    import io

    import msgpack

    from replicaio.trace.eventlog import EventLogWriter

    faults = parse_faults("crash,loss,dup")
    options = SimOptions.draw(3, 4, 1, faults, requests_per_node=5)
    sink = io.BytesIO()
    result = Simulator("bracha", options, log_sink=sink).run()
    data = sink.getvalue()
    assert hashlib.sha256(data).hexdigest() == result.log_sha256
    # Re-pack every record one by one, and with other flush sizes: same bytes.
    records = list(msgpack.Unpacker(io.BytesIO(data), raw=False, strict_map_key=False))
    one_by_one = b"".join(msgpack.packb(record, use_bin_type=True) for record in records)
    assert one_by_one == data
    for flush_size in (1, 7, 1000):
        other = io.BytesIO()
        writer = EventLogWriter(records[0], other, records_per_flush_max=flush_size)
        for record in records[1:]:
            writer.write(record)
        assert writer.hexdigest() == result.log_sha256
        assert other.getvalue() == data


def test_pack_effects_packs_like_encode_effects() -> None:
    import msgpack

    from replicaio.core.codec import Codec
    from replicaio.core.effects import Effects
    from replicaio.core.node import Envelope
    from replicaio.protocols.broadcast import Delivered
    from replicaio.trace.eventlog import encode_effects, pack_effects

    codec = Codec()
    envelope = Envelope(("bcast", 1, 2), "ECHO", b"v")
    batches = [
        Effects(),
        Effects(persists=[("k#a", b"1"), ("k#b", None)]),
        Effects(sends=[(1, envelope), (2, envelope)], timers_set=[(0, 20000)]),
        Effects(timers_cancelled=[3], outputs=[Delivered(1, 2, b"v")]),
    ]
    for effects in batches:
        expected = msgpack.packb(encode_effects(codec, effects), use_bin_type=True)
        assert msgpack.packb(pack_effects(codec, effects), use_bin_type=True) == expected


def test_run_restores_the_collector_thresholds() -> None:
    import gc

    from replicaio.sim.simulator import GC_YOUNG_ALLOCATIONS, young_collections_every

    before = gc.get_threshold()
    seen: list[tuple[int, ...]] = []

    class Watching(Simulator):
        def run_events(self) -> None:
            seen.append(gc.get_threshold())
            super().run_events()

    options = SimOptions.draw(1, 4, requests_per_node=1)
    assert Watching("bracha", options).run().ok
    assert seen[0][0] == max(before[0], GC_YOUNG_ALLOCATIONS)
    assert gc.get_threshold() == before
    with pytest.raises(RuntimeError), young_collections_every(GC_YOUNG_ALLOCATIONS + 1):
        raise RuntimeError("a bug in a run")
    assert gc.get_threshold() == before


def _plain_records() -> Any:
    from hypothesis import strategies as st

    scalars = (
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
        | st.text() | st.binary()
    )
    integers = st.integers(-(2**63), 2**64 - 1)
    keys = st.text() | integers | st.tuples(integers, st.text())
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
        | st.dictionaries(keys, inner, max_size=4),
        max_leaves=12,
    )


def test_log_writer_writes_what_msgpack_packs() -> None:
    """The writer appends with msgspec (falling back to msgpack for what msgspec
    refuses, such as tuple map keys); msgpack's bytes define the format."""
    import hashlib
    import io

    import msgpack
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from replicaio.trace.eventlog import EventLogWriter

    @settings(max_examples=300, deadline=None)
    @given(st.lists(_plain_records(), max_size=6))
    def check(records: list[Any]) -> None:
        sink = io.BytesIO()
        writer = EventLogWriter({"protocol": "x"}, sink, records_per_flush_max=3)
        for record in records:
            writer.write(record)
        expected = msgpack.packb(
            {"format": "replicaio-eventlog", "version": 2, "protocol": "x"}, use_bin_type=True
        ) + b"".join(msgpack.packb(record, use_bin_type=True) for record in records)
        assert writer.hexdigest() == hashlib.sha256(expected).hexdigest()
        assert sink.getvalue() == expected

    check()


def test_log_writer_refuses_what_msgpack_refuses() -> None:
    import io

    import msgpack

    from replicaio.trace.eventlog import EventLogWriter

    sink = io.BytesIO()
    writer = EventLogWriter({}, sink)
    with pytest.raises(TypeError):
        writer.write([1, object()])
    with pytest.raises(OverflowError):
        writer.write([2**64])
    writer.write([1])
    writer.flush()
    # Nothing of the refused records stayed in the buffer.
    header = {"format": "replicaio-eventlog", "version": 2}
    assert sink.getvalue() == msgpack.packb(header) + msgpack.packb([1])


class AllRequestsOnTheHeap(Simulator):
    """Every harness request on the heap from the start, as before sim24."""

    def next_request_due(self) -> None:
        while self.requests_due:
            heapq.heappush(self.heap, self.requests_due.pop())
        self.request_next = None


class HeapWatched(Simulator):
    """Records the most harness requests the heap held at once."""

    most = 0

    def step(self, node: SimNode, event: Any, data: bytes | None = None) -> None:
        waiting = sum(1 for entry in self.heap if entry[2] == REQUEST)
        self.most = max(self.most, waiting)
        super().step(node, event, data)


@pytest.mark.parametrize("seed", range(1, 5))
def test_requests_fed_to_the_heap_one_at_a_time_run_the_same_events(seed: int) -> None:
    faults = parse_faults("crash,partition,loss,dup,reorder")
    options = SimOptions.draw(seed, 4, 1, faults, requests_per_node=30)
    lazy = HeapWatched("bracha", options, record=True)
    result = lazy.run()
    assert result.ok, result.violations
    assert lazy.most == 1  # the next one only (the simulator's own API adds none here)
    assert AllRequestsOnTheHeap("bracha", options, record=True).run().log_sha256 == (
        result.log_sha256
    )


class FramesWatched(Simulator):
    """Checks what each receiver steps on: a correct node the sender's decode
    of the frame the log records, a Byzantine node (its adversary observes its
    inputs) the frame's bytes."""

    decoded = 0
    raw = 0

    def step(self, node: SimNode, event: Any, data: bytes | None = None) -> None:
        if isinstance(event, Receive):
            if data is not None:
                assert node.strategy is None
                assert type(event.message) is not bytes
                peer = self.codec.decode(data)
                assert type(event.message) is type(peer)
                assert repr(event.message) == repr(peer)
                self.decoded += 1
            elif node.strategy is not None and type(event.message) is bytes:
                self.raw += 1
        super().step(node, event, data)


@pytest.mark.parametrize(("seed", "faults"), [(1, ""), (2, "crash,partition,loss,dup,reorder")])
def test_receivers_step_on_the_decode_of_the_frame_the_log_records(
    seed: int, faults: str
) -> None:
    options = SimOptions.draw(seed, 4, 1, parse_faults(faults), requests_per_node=10)
    watched = FramesWatched("bracha", options, record=True)
    result = watched.run()
    assert result.ok, result.violations
    assert watched.decoded > 100
    assert watched.raw > 10
    # The same run, every receiver decoding the bytes itself, logs the same events.
    assert BytesOnly("bracha", options, record=True).run().log_sha256 == result.log_sha256


class BytesOnly(Simulator):
    """Steps every receiver on the frame's bytes (the receiver decodes them)."""

    def step(self, node: SimNode, event: Any, data: bytes | None = None) -> None:
        if data is not None:
            event = Receive(event.source, data)
        super().step(node, event)
