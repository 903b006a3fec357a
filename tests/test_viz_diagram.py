"""The space-time diagram's model (replicaio/trace/diagram.py): what it reads off a
log and what it infers (matching, loss, duplicates, reordering, forgery, downtime,
partitions, the violation's chain). The page itself: tests/test_viz_html.py."""

from __future__ import annotations

import io
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack
import pytest

import replicaio.assembly  # noqa: F401 (registers every message class: fields get names)
from replicaio.cli import main
from replicaio.trace.diagram import (
    DUPLICATE,
    FORGED,
    KIND_RECEIVE,
    LOST,
    LOST_REASONS,
    REORDERED,
    build_diagram,
    load_log,
)
from replicaio.trace.eventlog import STEP, EventLogWriter, read_log


def frame(*fields: Any) -> bytes:
    packed: bytes = msgpack.packb(["Hello", *fields], use_bin_type=True)  # (msgpack: untyped)
    return packed


def step(log: EventLogWriter, time_us: int, node: int, event: list[Any],
         sends: Sequence[tuple[int, bytes]] = ()) -> None:
    log.step(time_us, node, 1, event, [], [[], [list(send) for send in sends], [], [], []])


def model_of(write: Any, header: dict[str, Any] | None = None) -> dict[str, Any]:
    sink = io.BytesIO()
    log = EventLogWriter({"protocol": "bracha", "n": 3, "f": 0, "byzantine": [2], "seed": 0,
                          "params": {}, "options": {}, **(header or {})}, sink)
    write(log)
    log.flush()
    sink.seek(0)
    return build_diagram([load_log(sink, "handmade")])


def messages(model: dict[str, Any]) -> list[dict[str, Any]]:
    columns = model["messages"]
    return [{name: column[index] for name, column in columns.items()}
            for index in range(len(columns["t0"]))]


def test_a_retransmission_gets_the_delivery_once_a_later_message_overtook_the_first() -> None:
    a, b = frame(1), frame(2)

    def write(log: EventLogWriter) -> None:
        step(log, 0, 0, ["start", {}], [(1, a)])
        step(log, 0, 1, ["start", {}])
        step(log, 50, 0, ["request", b"x"], [(1, b)])
        step(log, 80, 1, ["receive", 0, b])
        step(log, 100, 0, ["timer", 0], [(1, a)])
        step(log, 150, 1, ["receive", 0, a])

    found = messages(model_of(write))
    assert [(m["t0"], m["t1"]) for m in found] == [(0, -1), (50, 80), (100, 150)]
    assert found[0]["flags"] == LOST
    assert LOST_REASONS[found[0]["reason"]] == "lost"
    assert found[2]["flags"] == 0


def test_without_such_evidence_a_link_is_taken_as_fifo() -> None:
    a = frame(1)

    def write(log: EventLogWriter) -> None:
        step(log, 0, 0, ["start", {}], [(1, a)])
        step(log, 0, 1, ["start", {}])
        step(log, 100, 0, ["timer", 0], [(1, a)])
        step(log, 150, 1, ["receive", 0, a])

    found = messages(model_of(write))
    assert [(m["t0"], m["t1"], m["flags"]) for m in found] == [(0, 150, 0), (100, -1, LOST)]


def test_a_second_delivery_of_one_send_is_a_duplicate() -> None:
    b = frame(2)

    def write(log: EventLogWriter) -> None:
        step(log, 0, 0, ["start", {}], [(1, b)])
        step(log, 0, 1, ["start", {}])
        step(log, 40, 1, ["receive", 0, b])
        step(log, 55, 1, ["receive", 0, b])

    found = messages(model_of(write))
    assert len(found) == 2
    assert found[0]["flags"] == 0 and found[0]["t1"] == 40
    assert found[1]["flags"] == DUPLICATE
    assert (found[1]["t0"], found[1]["t1"], found[1]["send"]) == (0, 55, found[0]["send"])


def test_an_overtaken_message_is_marked_reordered() -> None:
    c, d = frame(3), frame(4)

    def write(log: EventLogWriter) -> None:
        step(log, 0, 1, ["start", {}])
        step(log, 10, 0, ["request", b"x"], [(1, c)])
        step(log, 20, 0, ["request", b"y"], [(1, d)])
        step(log, 30, 1, ["receive", 0, d])
        step(log, 40, 1, ["receive", 0, c])

    found = messages(model_of(write))
    assert [m["flags"] for m in found] == [REORDERED, 0]


def test_a_delivery_nobody_sent_from_a_byzantine_node_is_forged() -> None:
    def write(log: EventLogWriter) -> None:
        step(log, 0, 2, ["start", {}])
        step(log, 5, 0, ["start", {}])
        step(log, 30, 0, ["receive", 2, b"\xc1garbage"])

    model = model_of(write)
    (found,) = messages(model)
    assert found["flags"] == FORGED
    assert found["send"] == 0  # the Byzantine node's latest step before the delivery
    assert model["types"][found["type"]] == "(undecodable)"


def test_a_message_to_a_down_node_or_across_a_partition_says_so() -> None:
    e, f = frame(5), frame(6)
    cut = {"start_us": 50, "end_us": 500, "side": [0], "symmetric": True}

    def write(log: EventLogWriter) -> None:
        step(log, 0, 0, ["start", {}])
        step(log, 0, 1, ["start", {}])
        log.note(10, 1, "crash", {"keep_unsynced": 0})
        step(log, 20, 0, ["request", b"x"], [(1, e)])
        step(log, 30, 1, ["start", {}])
        step(log, 60, 0, ["request", b"y"], [(1, f)])
        step(log, 900_000, 1, ["timer", 0])

    model = model_of(write, {"options": {"partitions": [cut]}})
    reasons = [LOST_REASONS[m["reason"]] for m in messages(model)]
    assert reasons == ["receiver down", "partitioned"]
    assert model["downs"] == [[1, 10, 30, "crash"]]
    assert model["partitions"] == [[50, 500, [0], True]]


def test_the_model_accounts_for_every_step_send_and_receive_of_a_real_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    log = tmp_path / "run.log"
    main(["sim", "bracha", "--nodes", "4", "--byzantine", "1", "--faults",
          "crash,partition,loss,dup,reorder", "--seed", "3", "--log", str(log), "--json"])
    capsys.readouterr()
    with log.open("rb") as stream:
        _, records = read_log(stream)
        steps = [record for record in records if record[0] == STEP]
    with log.open("rb") as stream:
        model = build_diagram([load_log(stream, "run.log")])
    events, columns = model["events"], model["messages"]
    assert len(events["t"]) == len(steps)
    for index, record in enumerate(steps):
        assert (events["t"][index], events["node"][index]) == (record[1], record[2])
        sends = record[6][1]
        first, count = events["sendFirst"][index], events["sendCount"][index]
        assert count == len(sends)
        for offset, (destination, _) in enumerate(sends):
            assert columns["send"][first + offset] == index
            assert columns["dst"][first + offset] == destination
        if record[4][0] == "receive":
            message = events["ref"][index]
            assert events["kind"][index] == KIND_RECEIVE
            assert columns["recv"][message] == index
            assert columns["src"][message] == record[4][1]
            assert columns["dst"][message] == record[2]
    # every delivery is one arrow; every arrow ends at most once
    receiving = [recv for recv in columns["recv"] if recv >= 0]
    assert len(receiving) == len(set(receiving)) == sum(
        1 for record in steps if record[4][0] == "receive")
    assert model["downs"] and model["partitions"]
    assert any(flags & LOST for flags in columns["flags"])


def test_a_violation_points_at_its_step_and_the_chain_that_led_to_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    log = tmp_path / "broken.log"
    status = main(["sim", "echo-weak", "--nodes", "4", "--byzantine", "1", "--seed", "1",
                   "--log", str(log), "--json"])
    capsys.readouterr()
    assert status == 1
    with log.open("rb") as stream:
        model = build_diagram([load_log(stream, "broken.log")])
    (violation,) = model["violations"]
    assert violation["property"] == "agreement"
    events, columns = model["events"], model["messages"]
    event = violation["event"]
    assert events["node"][event] == violation["node"]
    assert events["t"][event] == violation["time_us"]
    delivered = [model["payloads"][p]["type"] for p in model["details"][str(event)]["outputs"]]
    assert "Delivered" in delivered
    chain = violation["chain"]
    assert chain[0] == event
    for later, earlier in itertools.pairwise(chain):
        assert events["t"][earlier] <= events["t"][later]
        if events["kind"][later] == KIND_RECEIVE:
            assert columns["send"][events["ref"][later]] == earlier
    first = chain[-1]
    assert events["kind"][first] in (0, 3)  # a start or a request began it
