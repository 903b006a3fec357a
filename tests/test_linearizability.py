"""Tests of the history format and the linearizability checker.

Hand-written histories pin the tricky cases; Hypothesis checks that every
timing-perturbed sequential execution is accepted and that the optimized
checker agrees with a brute-force one (every permutation of every choice of
``info`` operations) on small random histories, using a key-value model
written independently here.
"""

from __future__ import annotations

import heapq
import itertools
import json
import random
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replicaio.check import linearizability
from replicaio.check.history import (
    HistoryError,
    HistoryRecorder,
    Operation,
    dump_history,
    load_history,
    operation_to_json,
    validate_history,
)
from replicaio.check.linearizability import (
    EXIT_INVALID_HISTORY,
    EXIT_LINEARIZABLE,
    EXIT_NOT_LINEARIZABLE,
    KeyValueModel,
    check_linearizable,
    explanation,
    main_check_history,
)
from replicaio.check.linearizability import search as search_module

# ---------------------------------------------------------------- helpers


class _Ids:
    next = 0


def op(
    kind: str,
    key: str = "k",
    value: str | None = None,
    output: str | None = None,
    call: float = 0,
    ret: float | None = 1,
    status: str = "ok",
    expected: str | None = None,
    client: int | None = None,
) -> Operation:
    """An operation with a fresh client id unless one is given."""
    if client is None:
        client = _Ids.next
        _Ids.next += 1
    if status == "info":
        ret = None
    return Operation(client, kind, key, value, expected, output, call, ret, status)


def put(
    value: str, call: float, ret: float | None, key: str = "k", status: str = "ok"
) -> Operation:
    return op("put", key, value, None, call, ret, status)


def get(output: str | None, call: float, ret: float, key: str = "k") -> Operation:
    return op("get", key, None, output, call, ret)


def verdict(ops: Sequence[Operation]) -> bool | None:
    return check_linearizable(ops).linearizable


# ------------------------------------------------------- hand-written cases


def test_empty_history_is_linearizable() -> None:
    result = check_linearizable([])
    assert result.linearizable is True
    assert result.per_key == {}


def test_read_of_initial_absent_value() -> None:
    assert verdict([get(None, 0, 1)]) is True
    assert verdict([get("x", 0, 1)]) is False


def test_stale_read_after_completed_write_is_not_linearizable() -> None:
    history = [put("x", 0, 1), put("y", 2, 3), get("x", 4, 5)]
    result = check_linearizable(history)
    assert result.linearizable is False
    explanation = result.explanation
    assert explanation is not None
    assert explanation.key == "k"
    assert explanation.culprit == history[2]
    assert explanation.operations == 3
    assert explanation.minimal
    assert explanation.culprit_states == ("'y'",)
    assert set(explanation.window) == set(history)
    assert "cannot linearize" in result.describe()


def test_read_concurrent_with_write_may_see_either_value() -> None:
    assert verdict([put("x", 0, 1), put("y", 2, 5), get("x", 3, 4)]) is True
    assert verdict([put("x", 0, 1), put("y", 2, 5), get("y", 3, 4)]) is True


def test_equal_times_count_as_concurrent() -> None:
    assert verdict([put("x", 0, 1), get(None, 1, 2)]) is True
    assert verdict([put("x", 0, 1), get(None, 1.5, 2)]) is False


def test_read_of_a_value_never_written() -> None:
    assert verdict([put("x", 0, 1), put("y", 0, 1), get("z", 0, 2)]) is False


def test_lost_increment() -> None:
    lost = [
        op("incr", value="1", output="1", call=0, ret=3),
        op("incr", value="1", output="1", call=1, ret=2),
    ]
    assert verdict(lost) is False
    both = [
        op("incr", value="1", output="2", call=0, ret=3),
        op("incr", value="1", output="1", call=1, ret=2),
    ]
    assert verdict(both) is True


def test_lost_append() -> None:
    appends = [op("append", value="a", call=0, ret=2), op("append", value="b", call=0, ret=2)]
    assert verdict([*appends, get("ab", 3, 4)]) is True
    assert verdict([*appends, get("ba", 3, 4)]) is True
    assert verdict([*appends, get("a", 3, 4)]) is False
    assert verdict([*appends, get("b", 3, 4)]) is False


def test_concurrent_writes_seen_in_either_order_by_overlapping_reads() -> None:
    writes = [put("x", 0, 10), put("y", 0, 10)]
    # One reader sees y then x, another sees x while its read overlaps: W(y) R W(x) R R.
    reads = [get("y", 1, 4), get("x", 2, 5), get("x", 6, 7), get("x", 11, 12)]
    assert verdict(writes + reads) is True
    mirrored = [get("x", 1, 4), get("y", 2, 5), get("y", 6, 7), get("y", 11, 12)]
    assert verdict(writes + mirrored) is True


def test_concurrent_writes_seen_in_opposite_orders_by_sequential_reads() -> None:
    writes = [put("x", 0, 10), put("y", 0, 10)]
    reader_a = [get("x", 1, 2), get("y", 3, 4)]  # x before y
    reader_b = [get("y", 5, 6), get("x", 7, 8)]  # y before x: needs a third write
    assert verdict(writes + reader_a + reader_b) is False
    # After both writes completed, the value is fixed.
    assert verdict([*writes, get("x", 11, 12), get("y", 13, 14)]) is False


def test_info_write_observed_later_is_linearizable() -> None:
    assert verdict([put("x", 0, None, status="info"), get("x", 5, 6)]) is True


def test_info_write_never_observed_is_linearizable() -> None:
    history = [put("x", 0, None, status="info"), get(None, 5, 6), put("y", 7, 8), get("y", 9, 10)]
    assert verdict(history) is True


def test_info_write_cannot_take_effect_before_its_call() -> None:
    assert verdict([get("x", 0, 1), put("x", 2, None, status="info")]) is False


def test_info_write_observed_then_unobserved_is_not_linearizable() -> None:
    history = [put("x", 0, None, status="info"), get("x", 1, 2), get(None, 3, 4)]
    assert verdict(history) is False
    with_write = [put("y", 0, 1), put("x", 0, None, status="info"), get("x", 2, 3), get("y", 4, 5)]
    assert verdict(with_write) is False


def test_unknown_write_spent_in_a_failed_branch_stays_available() -> None:
    # The search first tries info "x" then info "w" before the cas, which fails later;
    # "w", cas, put y, "x", get x works. A failed branch with more optional operations
    # linearized must not prune one with fewer.
    history = [
        put("x", 0, None, status="info"),
        put("w", 0.5, None, status="info"),
        op("cas", value="x", expected="w", output="ok", call=1, ret=2),
        put("y", 3, 4),
        get("x", 5, 6),
    ]
    assert verdict(history) is True


def test_unknown_write_needed_only_to_fail_a_cas() -> None:
    # Nobody reads "z" back, but without it the cas would have succeeded.
    history = [put("e", 0, 1), put("z", 0.5, None, status="info")]
    failed_cas = op("cas", value="n", expected="e", output="fail", call=2, ret=3)
    assert verdict([*history, failed_cas]) is True
    assert verdict([*history, failed_cas, get("e", 4, 5)]) is False
    assert verdict([*history, failed_cas, put("q", 4, 5), get("q", 6, 7)]) is True
    assert verdict([history[0], failed_cas]) is False


def test_unread_unknown_write_of_a_number_may_explain_an_increment() -> None:
    # Nobody reads "5" back, but the increment's output reveals it.
    assert verdict([put("5", 0, None, status="info"), op("incr", value="1", output="6")]) is True


def test_identical_unknown_operations_may_all_take_effect() -> None:
    twins = [op("incr", "n", "1", None, 0, None, "info") for _ in range(3)]
    assert verdict([*twins, get("3", 5, 6, key="n")]) is True
    assert verdict([*twins, get("4", 5, 6, key="n")]) is False
    appends = [op("append", "k", "a", None, 0, None, "info") for _ in range(2)]
    assert verdict([*appends, get("aa", 5, 6), get("aa", 7, 8)]) is True


def test_negative_increments_are_not_counters() -> None:
    # Values can go down: an observed 5 does not rule out a later 4.
    history = [
        op("incr", "n", "5", "5", 0, 1),
        op("incr", "n", "-1", None, 0, None, "info"),
        get("5", 2, 3, key="n"),
        get("4", 4, 5, key="n"),
    ]
    assert verdict(history) is True


def test_failed_operations_did_not_happen() -> None:
    assert verdict([put("x", 0, 1, status="fail"), get("x", 2, 3)]) is False
    assert verdict([put("x", 0, 1, status="fail"), get(None, 2, 3)]) is True


def test_cas_semantics() -> None:
    def cas(expected: str | None, new: str, output: str, call: float, ret: float) -> Operation:
        return op("cas", value=new, expected=expected, output=output, call=call, ret=ret)

    assert verdict([cas(None, "a", "ok", 0, 1), get("a", 2, 3)]) is True  # expects absent
    assert verdict([put("a", 0, 1), cas("a", "b", "ok", 2, 3), get("b", 4, 5)]) is True
    assert verdict([put("a", 0, 1), cas("z", "b", "fail", 2, 3), get("a", 4, 5)]) is True
    assert verdict([put("a", 0, 1), cas("z", "b", "ok", 2, 3)]) is False  # claimed success
    assert verdict([put("a", 0, 1), cas("a", "b", "fail", 2, 3)]) is False  # claimed failure
    assert verdict([put("a", 0, 1), cas("a", "b", "fail", 2, 3), get("b", 4, 5)]) is False
    # Two cas from the same value cannot both succeed.
    assert verdict([put("a", 0, 1), cas("a", "b", "ok", 2, 5), cas("a", "c", "ok", 2, 5)]) is False
    assert verdict([put("a", 0, 1), cas("a", "b", "ok", 2, 5), cas("b", "c", "ok", 2, 5)]) is True
    unknown = op("cas", value="b", expected="a", call=2, status="info")
    assert verdict([put("a", 0, 1), unknown, get("b", 6, 7)]) is True
    assert verdict([put("z", 0, 1), unknown, get("b", 6, 7)]) is False  # could not succeed


def test_delete_append_incr_semantics() -> None:
    assert verdict([put("a", 0, 1), op("delete", call=2, ret=3), get(None, 4, 5)]) is True
    assert verdict([op("append", value="a", call=0, ret=1), get("a", 2, 3)]) is True
    assert verdict([op("incr", value="5", output="5", call=0, ret=1), get("5", 2, 3)]) is True
    assert verdict([put("7", 0, 1), op("incr", value="-2", output="5", call=2, ret=3)]) is True
    assert verdict([put("x", 0, 1), op("incr", value="1", output="1", call=2, ret=3)]) is False
    unknown_incr = op("incr", value="1", call=0, status="info")
    assert verdict([unknown_incr, get("1", 2, 3)]) is True


def test_keys_are_independent_and_reported_per_key() -> None:
    history = [put("x", 0, 1, key="a"), get("x", 2, 3, key="a"), get("x", 2, 3, key="b")]
    result = check_linearizable(history)
    assert result.linearizable is False
    assert result.per_key["a"].linearizable is True
    assert result.per_key["b"].linearizable is False
    assert result.explanation is not None
    assert result.explanation.key == "b"


class _SingleRegisterModel(KeyValueModel):
    """Keys ignored: one register for the whole history (tests the ``partition`` hook)."""

    def partition(self, ops: Sequence[Operation]) -> dict[str, list[Operation]]:
        return {"*": list(ops)}


def test_model_protocol_partition_hook() -> None:
    history = [put("x", 0, 1, key="a"), put("y", 2, 3, key="b"), get("x", 4, 5, key="a")]
    assert verdict(history) is True
    assert check_linearizable(history, model=_SingleRegisterModel()).linearizable is False


def test_budget_exhaustion_answers_none_never_a_guess() -> None:
    appends = [op("append", value=chr(ord("a") + i), call=0, ret=100) for i in range(14)]
    impossible = [*appends, get("z" * 14, 101, 102)]
    result = check_linearizable(impossible, time_budget_s=0.05)
    assert result.linearizable is None
    assert result.per_key["k"].linearizable is None
    assert "budget" in result.reason
    assert check_linearizable([get(None, 0, 1)], time_budget_s=60).linearizable is True
    with pytest.raises(ValueError):
        check_linearizable([], time_budget_s=-1)


def test_checker_validates_operations() -> None:
    with pytest.raises(HistoryError, match="operation 0: return 0 is before call 1"):
        check_linearizable([put("x", 1, 0)])


def test_long_history_of_a_correct_register_checks_quickly() -> None:
    history = simulate_register(operations=3000, clients=10, keys=5, seed=1)
    result = check_linearizable(history, time_budget_s=20)
    assert result.linearizable is True
    assert result.seconds < 20


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_unknown_appends_do_not_blow_up_the_search(seed: int) -> None:
    # Hot keys with appends and timeouts: before latent operations were confined to
    # the failing cas they may explain, seed 0 took 2.5 million configurations.
    history = simulate_register(operations=2000, clients=8, keys=3, seed=seed)
    result = check_linearizable(history, time_budget_s=20)
    assert result.linearizable is True
    for part in result.per_key.values():
        assert part.configurations <= 10 * part.operations


@pytest.mark.parametrize("final_read", ["10", "53"])
def test_unknown_increments_of_a_hot_counter_do_not_blow_up_the_search(final_read: str) -> None:
    # 120 pending unknown increments of three sizes, then 50 known ones: a search that
    # overshoots (or meets the stale final read "10") used to try every combination of
    # the pending increments (41 ** 3 of them) at every backtracking point.
    unknown = [op("incr", "n", delta, None, 0, None, "info") for delta in "123" * 40]
    known = [op("incr", "n", "1", str(i + 1), 1.0 + 2 * i, 2.0 + 2 * i) for i in range(50)]
    history = [*unknown, *known, get(final_read, 200, 201, key="n")]
    result = check_linearizable(history, time_budget_s=20)
    assert result.linearizable is (final_read == "53")  # 53: one unknown +3 took effect
    assert result.per_key["n"].configurations <= 20 * len(history)


def test_stale_read_planted_in_long_history_is_found_and_explained() -> None:
    history = simulate_register(operations=2000, clients=8, keys=3, seed=2)
    last = max(o.return_ for o in history if o.return_ is not None)
    stale = [put("old", last + 1, last + 2, key="key0"), put("new", last + 3, last + 4, key="key0")]
    history += [*stale, get("old", last + 5, last + 6, key="key0")]
    result = check_linearizable(history, time_budget_s=20)
    assert result.linearizable is False
    assert result.explanation is not None
    assert result.explanation.culprit == history[-1]
    assert len(result.explanation.window) <= 2 + 8 + 8


def test_covering_states_of_the_key_value_model() -> None:
    model = KeyValueModel()
    reads = [get("ab", 0, 1), op("cas", value="q", expected="c", output="fail", call=0, ret=1)]
    states = model.covering_states(reads)
    assert states is not None
    assert states[0] is None
    assert set(states[1:-1]) == {"ab", "c"}
    assert states[-1] not in ("a", "ab", "c") and not "ab".startswith(states[-1] or "-")
    with_append = model.covering_states([*reads, op("append", value="b", call=0, ret=1)])
    assert with_append is not None
    assert set(with_append[1:-1]) == {"", "a", "ab", "c"}
    assert model.covering_states([op("incr", value="1", output="1")]) is None


def squeezed_search(per_operation: int = 3) -> mock._patch[int]:
    """Pause searches early (a correct history needs 1 to 3 configurations per
    operation), so window proofs are tried before the search goes on."""
    return mock.patch.multiple(
        linearizability,
        CONFIGURATIONS_BEFORE_WINDOWS=0,
        CONFIGURATIONS_PER_OPERATION_BEFORE_WINDOWS=per_operation,
    )


def refuted(window: list[Operation]) -> bool:
    """Whether the window has no linearization from any initial state."""
    model = KeyValueModel()
    return explanation.refuted_from_every_state(window, model, None, window[-1], set())


def test_window_refutation_considers_every_initial_state() -> None:
    assert refuted([put("fresh", 0, 1), get("stale", 2, 3)])
    assert not refuted([get("x", 0, 1), get("x", 2, 3)])  # only reads: not a counter from "x"
    assert not refuted([get(None, 0, 1)])  # from absent
    assert not refuted([op("append", value="b", call=0, ret=1), get("ab", 2, 3)])  # from "a"
    cas_none = op("cas", value="b", expected=None, output="fail", call=0, ret=1)
    cas_a = op("cas", value="c", expected="a", output="fail", call=2, ret=3)
    assert not refuted([cas_none, cas_a])  # from any other value
    assert refuted([cas_none, get(None, 2, 3)])


def window_proofs(history: Sequence[Operation]) -> list[linearizability.Explanation]:
    """Every window proof the checker could find, at every point of every key."""
    model = KeyValueModel()
    proofs = []
    for key, part in model.partition(history).items():
        searchable = search_module.searchable_operations(part, model)
        search = search_module.Search(searchable, model)
        for position in range(len(search.by_return)):
            proof = explanation.prove_by_window(key, searchable, model, search, position, None)
            if proof is not None:
                proofs.append(proof)
    return proofs


def test_windows_keep_unknown_operations_called_before_them() -> None:
    history = [put("y", 0, None, status="info"), put("z", 1, 2), put("q", 3, 4), get("y", 5, 6)]
    assert verdict(history) is True
    assert window_proofs(history) == []


def test_windows_free_operations_still_running_at_their_end() -> None:
    late_read = get("y", 3, 20)
    history = [put("z", 0, 2), put("q", 2.5, 10), late_read, put("y", 11, 12)]
    assert verdict(history) is True
    assert window_proofs(history) == []


def test_violation_in_long_history_is_proved_by_a_small_window() -> None:
    history = simulate_register(operations=2000, clients=8, keys=3, seed=2)
    last = max(o.return_ for o in history if o.return_ is not None)
    planted = [
        put("fresh", last + 1, last + 2, key="key0"),
        get("stale", last + 3, last + 4, key="key0"),
    ]
    with squeezed_search():
        result = check_linearizable([*history, *planted], time_budget_s=20)
    assert result.linearizable is False
    explanation = result.explanation
    assert explanation is not None
    assert explanation.start is not None
    assert explanation.culprit == planted[1]
    assert set(planted) <= set(explanation.window)
    assert len(explanation.window) <= 20
    assert "from any state" in explanation.describe()


def test_benchmark_script_runs() -> None:
    script = Path(__file__).resolve().parent.parent / "bench" / "bench_linearizability.py"
    completed = subprocess.run(
        [sys.executable, str(script), "--sizes", "300", "--repeat", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "300 ops" in completed.stdout
    assert "planted violation found and explained" in completed.stdout


# ------------------------------------------------------------ history format


def _record(**changes: object) -> str:
    record: dict[str, object] = {
        "client": 1,
        "op": "put",
        "key": "k",
        "value": "x",
        "expected": None,
        "output": None,
        "call": 1.0,
        "return": 2.0,
        "status": "ok",
    }
    for name, value in changes.items():
        if value is _DROP:
            del record[name]
        else:
            record[name] = value
    return json.dumps(record)


_DROP = object()


def test_load_dump_round_trip(tmp_path: Path) -> None:
    history = [
        put("x", 0, 1),
        op("cas", value="b", expected=None, output="fail", call=1.5, ret=2.5),
        op("incr", value="3", output="3", call=3, ret=4),
        put("y", 5, None, status="info"),
        op("delete", call=6, ret=7, status="fail"),
    ]
    path = tmp_path / "history.jsonl"
    dump_history(history, path)
    assert load_history(path) == history
    assert load_history(str(path)) == history
    assert load_history(path.read_text().splitlines()) == history
    assert operation_to_json(history[0]).startswith('{"client": ')


def test_load_accepts_integer_incr_and_blank_lines() -> None:
    lines = ["", _record(op="incr", value=2, output="007"), "  "]
    (loaded,) = load_history(lines)
    assert loaded.value == "2"
    assert loaded.output == "7"


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (_record(**{"return": _DROP}), "missing field 'return'"),
        (_record(extra=1), "unknown field 'extra'"),
        (_record(client="1"), "client must be an integer"),
        (_record(client=True), "client must be an integer"),
        (_record(op="scan"), "unknown op 'scan'"),
        (_record(key=3), "key must be a string"),
        (_record(status="maybe"), "unknown status 'maybe'"),
        (_record(call="1"), "call must be a finite number"),
        (_record(**{"return": 0.5}), "return 0.5 is before call 1.0"),
        (_record(**{"return": None}), "a ok operation needs a return time"),
        (_record(status="fail", **{"return": None}), "a fail operation needs a return time"),
        (_record(value=None), "put needs a string value"),
        (_record(op="get", value="x"), "get takes no value"),
        (_record(op="get", value=None, output=5), "get output must be a string or null"),
        (_record(expected="a"), "only cas takes 'expected'"),
        (_record(op="cas", expected=1), "cas expected must be a string or null"),
        (_record(op="cas", output="yes"), "cas output must be 'ok' or 'fail'"),
        (_record(op="incr", value="one"), "incr needs a decimal integer delta"),
        (_record(op="incr", value="1", output=None), "incr output must be the new value"),
        (_record(output="x"), "put has no output"),
        (_record(status="info", output="x"), "a info operation has no output"),
        ('{"client": 1, "call": NaN}', "not valid JSON"),
        ("[1, 2]", "a record must be a JSON object"),
        ("{not json", "not valid JSON"),
    ],
)
def test_load_rejects_malformed_records_with_line_number(record: str, reason: str) -> None:
    with pytest.raises(HistoryError) as error:
        load_history([_record(), record])
    assert error.value.line == 2
    assert reason in error.value.reason
    assert str(error.value).startswith("line 2: ")


def test_load_rejects_overlapping_operations_of_one_client() -> None:
    lines = [_record(), _record(call=1.5, **{"return": 3.0})]
    with pytest.raises(HistoryError, match="line 2: client 1 overlaps"):
        load_history(lines)


def test_load_rejects_operation_after_info_of_same_client() -> None:
    lines = [_record(status="info", **{"return": None}), _record(call=5.0, **{"return": 6.0})]
    with pytest.raises(HistoryError, match="line 2: client 1 issued an operation after its info"):
        load_history(lines)
    validate_history(load_history(lines[:1]))


def test_info_may_record_when_the_client_gave_up() -> None:
    (loaded,) = load_history([_record(status="info", **{"return": 9.0})])
    assert loaded.return_ == 9.0
    assert verdict([loaded, get("x", 20, 21)]) is True


def test_recorder_produces_valid_history(tmp_path: Path) -> None:
    now = iter(range(100))
    recorder = HistoryRecorder(lambda: float(next(now)))
    first, second = recorder.new_client(), recorder.new_client()
    assert first != second
    write = recorder.invoke(first, "put", "k", "x")
    read = recorder.invoke(second, "get", "k")
    recorder.ok(write)
    assert recorder.ok(read, "x").output == "x"
    counter = recorder.invoke(first, "incr", "n", 2)
    assert recorder.ok(counter, 2).output == "2"
    lost = recorder.invoke(second, "put", "k", "y")
    recorder.info(lost)
    third = recorder.new_client()
    assert third not in (first, second)
    rejected = recorder.invoke(third, "cas", "k", "z", expected="q")
    recorder.fail(rejected)
    in_flight = recorder.invoke(first, "delete", "k")
    history = recorder.operations()
    assert [o.status for o in history] == ["ok", "ok", "ok", "info", "fail", "info"]
    assert history[-1] == replace(history[-1], op="delete", return_=None)
    validate_history(history)
    recorder.ok(in_flight)
    path = tmp_path / "h.jsonl"
    recorder.dump(path)
    assert load_history(path) == recorder.operations()
    assert check_linearizable(recorder.operations()).linearizable is True


def test_recorder_rejects_misuse() -> None:
    recorder = HistoryRecorder(lambda: 0.0)
    handle = recorder.invoke(0, "put", "k", "x")
    with pytest.raises(HistoryError, match="already has an operation in flight"):
        recorder.invoke(0, "get", "k")
    with pytest.raises(HistoryError, match="put has no output"):
        recorder.ok(handle, "x")
    recorder.info(handle)
    with pytest.raises(HistoryError, match="not pending"):
        recorder.ok(handle)
    with pytest.raises(HistoryError, match="continue under a new id"):
        recorder.invoke(0, "get", "k")
    with pytest.raises(HistoryError, match="get takes no value"):
        recorder.invoke(1, "get", "k", "x")


def test_main_check_history_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad, broken = tmp_path / "good", tmp_path / "bad", tmp_path / "broken"
    dump_history([put("x", 0, 1), get("x", 2, 3)], good)
    dump_history([put("x", 0, 1), get("y", 2, 3)], bad)
    broken.write_text(_record() + "\n" + _record(op="nope") + "\n")
    assert main_check_history(good) == EXIT_LINEARIZABLE
    assert "linearizable" in capsys.readouterr().out
    assert main_check_history(bad) == EXIT_NOT_LINEARIZABLE
    assert "cannot linearize" in capsys.readouterr().out
    assert main_check_history(broken) == EXIT_INVALID_HISTORY
    assert "line 2: unknown op 'nope'" in capsys.readouterr().err
    assert main_check_history(tmp_path / "missing") == EXIT_INVALID_HISTORY


# ---------------------------------------------- independent model, brute force


def reference_apply(state: dict[str, str], o: Operation) -> tuple[bool, str | None]:
    """Apply ``o`` to ``state`` (mutating it) if it can take effect; (possible, output).

    Written apart from ``KeyValueModel`` on purpose. An ``info`` operation
    with a precondition that does not hold counts as not having happened.
    """
    current = state.get(o.key)
    if o.op == "get":
        return True, current
    if o.op == "put":
        assert o.value is not None
        state[o.key] = o.value
        return True, None
    if o.op == "delete":
        state.pop(o.key, None)
        return True, None
    if o.op == "append":
        state[o.key] = (current or "") + (o.value or "")
        return True, None
    if o.op == "cas":
        if current != o.expected:
            return o.status == "ok", "fail"
        assert o.value is not None
        state[o.key] = o.value
        return True, "ok"
    assert o.op == "incr"
    try:
        number = int(current or "0")
    except ValueError:
        return False, None
    if current is not None and not current.lstrip("-").isdigit():
        return False, None
    state[o.key] = str(number + int(o.value or "0"))
    return True, state[o.key]


def legal_sequence(order: Sequence[Operation]) -> bool:
    state: dict[str, str] = {}
    for o in order:
        possible, output = reference_apply(state, o)
        if not possible:
            return False
        if o.status == "ok" and o.op in ("get", "cas", "incr") and output != o.output:
            return False
    return True


def respects_real_time(order: Sequence[Operation]) -> bool:
    for i, earlier in enumerate(order):
        for later in order[i + 1 :]:
            if later.status == "ok" and later.return_ is not None and later.return_ < earlier.call:
                return False
    return True


def brute_force_linearizable(ops: Sequence[Operation]) -> bool:
    """Try every subset of info operations and every order of everything chosen."""
    required = [o for o in ops if o.status == "ok"]
    optional = [o for o in ops if o.status == "info"]
    for size in range(len(optional) + 1):
        for chosen in itertools.combinations(optional, size):
            for order in itertools.permutations(required + list(chosen)):
                if respects_real_time(order) and legal_sequence(order):
                    return True
    return False


def cut_prefix(ops: Sequence[Operation], cut: float) -> list[Operation]:
    """The history as of time ``cut`` (later calls dropped, running ones unknown)."""
    prefix = []
    for o in ops:
        if o.call > cut or o.status == "fail":
            continue
        if o.status == "ok" and o.return_ is not None and o.return_ > cut:
            o = replace(o, status="info", output=None, return_=None)
        prefix.append(o)
    return prefix


# ------------------------------------------------------------- strategies

KINDS = ("get", "get", "put", "put", "append", "cas", "delete", "incr")
VALUES = ("1", "2", "x")


@st.composite
def random_operation(draw: st.DrawFn, client: int) -> Operation:
    """An operation whose fields are well formed but whose output may be anything."""
    kind = draw(st.sampled_from(KINDS))
    key = draw(st.sampled_from(("a", "b")))
    status = draw(st.sampled_from(("ok", "ok", "ok", "ok", "info", "fail")))
    value = expected = output = None
    if kind in ("put", "append", "cas"):
        # "z" is never read back by arbitrary histories: info writes of it are latent.
        value = draw(st.sampled_from((*VALUES, "z")))
    if kind == "incr":
        value = draw(st.sampled_from(("1", "2")))
    if kind == "cas":
        expected = draw(st.sampled_from((None, *VALUES)))
    if status == "ok":
        if kind == "get":
            output = draw(st.sampled_from((None, *VALUES, "12", "xx")))
        elif kind == "cas":
            output = draw(st.sampled_from(("ok", "fail")))
        elif kind == "incr":
            output = draw(st.sampled_from(("1", "2", "3")))
    call = draw(st.integers(0, 12))
    ret = None if status == "info" else call + draw(st.integers(0, 6))
    return Operation(client, kind, key, value, expected, output, call, ret, status)


@st.composite
def arbitrary_histories(draw: st.DrawFn, size_max: int = 7) -> list[Operation]:
    size = draw(st.integers(1, size_max))
    return [draw(random_operation(client)) for client in range(size)]


@st.composite
def perturbed_sequential_histories(draw: st.DrawFn, size_max: int = 12) -> list[Operation]:
    """A sequential run on the reference model, stretched into overlapping intervals.

    Each operation keeps its linearization point inside its interval, so the
    result is linearizable by construction; some operations become ``info``
    (output forgotten), and ``info``/``fail`` operations that never took
    effect are mixed in.
    """
    size = draw(st.integers(1, size_max))
    state: dict[str, str] = {}
    history: list[Operation] = []
    for position in range(size):
        template = draw(random_operation(position))
        point = position * 4
        call = point - draw(st.integers(0, 9))
        ret = point + draw(st.integers(0, 9))
        if template.status == "fail":  # never happened
            history.append(replace(template, call=call, return_=ret, output=None))
            continue
        happens = template.status == "ok" or draw(st.booleans())
        if not happens:
            history.append(replace(template, call=call, return_=None, output=None))
            continue
        as_ok = replace(template, status="ok", call=call, return_=ret)
        possible, output = reference_apply(state, as_ok)
        if not possible:  # e.g. incr of "x": the server would have rejected it
            history.append(replace(as_ok, status="fail", output=None))
            continue
        if as_ok.op not in ("get", "cas", "incr"):
            output = None
        if template.status == "info":
            history.append(replace(as_ok, status="info", return_=None, output=None))
        else:
            history.append(replace(as_ok, output=output))
    return history


@st.composite
def near_miss_histories(draw: st.DrawFn) -> list[Operation]:
    """A correct small history with one output or one interval changed (often broken)."""
    history = draw(perturbed_sequential_histories(size_max=7))
    index = draw(st.integers(0, len(history) - 1))
    victim = history[index]
    if draw(st.booleans()) and victim.status == "ok" and victim.op in ("get", "cas", "incr"):
        choices = {
            "get": (None, *VALUES, "12"),
            "cas": ("ok", "fail"),
            "incr": ("1", "2", "3", "4"),
        }
        victim = replace(victim, output=draw(st.sampled_from(choices[victim.op])))
    else:
        shift = draw(st.integers(-12, 12))
        victim = replace(
            victim,
            call=victim.call + shift,
            return_=None if victim.return_ is None else victim.return_ + shift,
        )
    history[index] = victim
    return history


@st.composite
def latent_heavy_histories(draw: st.DrawFn) -> list[Operation]:
    """One key, many unknown writes nobody reads back, and failing cas that may need them."""
    size = draw(st.integers(2, 7))
    history = []
    for client in range(size):
        call = draw(st.integers(0, 10))
        ret = call + draw(st.integers(0, 5))
        shape = draw(st.sampled_from(("unknown write", "cas", "cas", "write", "get")))
        if shape == "unknown write":
            kind = draw(st.sampled_from(("put", "append")))
            history.append(Operation(client, kind, "k", "z", None, None, call, None, "info"))
        elif shape == "cas":
            expected = draw(st.sampled_from((None, "x", "y")))
            output = draw(st.sampled_from(("ok", "fail")))
            new = draw(st.sampled_from(("x", "y")))
            history.append(Operation(client, "cas", "k", new, expected, output, call, ret, "ok"))
        elif shape == "write":
            kind = draw(st.sampled_from(("put", "append", "delete")))
            value = None if kind == "delete" else draw(st.sampled_from(("x", "y")))
            history.append(Operation(client, kind, "k", value, None, None, call, ret, "ok"))
        else:
            read: str | None = draw(st.sampled_from((None, "x", "y", "xy")))
            history.append(Operation(client, "get", "k", None, None, read, call, ret, "ok"))
    return history


@st.composite
def counter_histories(draw: st.DrawFn) -> list[Operation]:
    """One counter key (get and non-negative incr only), some increments unknown."""
    size = draw(st.integers(1, 7))
    history = []
    for client in range(size):
        call = draw(st.integers(0, 10))
        ret = call + draw(st.integers(0, 5))
        status = draw(st.sampled_from(("ok", "ok", "ok", "info")))
        if draw(st.booleans()):
            output = draw(st.sampled_from((None, "0", "1", "2", "3", "4")))
            if status == "info":
                continue  # an unknown read is dropped anyway
            history.append(Operation(client, "get", "n", None, None, output, call, ret, "ok"))
        else:
            delta = draw(st.sampled_from(("0", "1", "2", "2", "-1")))
            output = draw(st.sampled_from(("1", "2", "3", "4"))) if status == "ok" else None
            finished = ret if status == "ok" else None
            history.append(
                Operation(client, "incr", "n", delta, None, output, call, finished, status)
            )
    return history


QUICK = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@QUICK
@given(perturbed_sequential_histories())
def test_perturbed_sequential_executions_are_linearizable(history: list[Operation]) -> None:
    assert verdict(history) is True


@QUICK
@given(
    st.one_of(
        arbitrary_histories(),
        near_miss_histories(),
        latent_heavy_histories(),
        counter_histories(),
    )
)
def test_checker_agrees_with_brute_force(history: list[Operation]) -> None:
    result = check_linearizable(history)
    assert result.linearizable is brute_force_linearizable(history)
    if result.linearizable:
        return
    explanation = result.explanation
    assert explanation is not None
    assert explanation.minimal
    key_history = [o for o in history if o.key == explanation.key]
    assert explanation.culprit in key_history
    cut = explanation.culprit.return_
    assert cut is not None
    assert not brute_force_linearizable(cut_prefix(key_history, cut))
    earlier = [o.return_ for o in key_history if o.status == "ok" and o.return_ is not None]
    earlier_cuts = [t for t in earlier if t < cut]
    if earlier_cuts:
        assert brute_force_linearizable(cut_prefix(key_history, max(earlier_cuts)))


@QUICK
@given(st.one_of(arbitrary_histories(), near_miss_histories(), latent_heavy_histories()))
def test_window_proofs_are_sound(history: list[Operation]) -> None:
    for proof in window_proofs(history):
        assert not brute_force_linearizable([o for o in history if o.key == proof.key])


@QUICK
@given(st.one_of(arbitrary_histories(), near_miss_histories(), counter_histories()))
def test_paused_search_with_window_proofs_agrees_with_brute_force(history: list[Operation]) -> None:
    with squeezed_search(per_operation=1):
        assert verdict(history) is brute_force_linearizable(history)


# --------------------------------------------- a simulated correct register


def simulate_register(operations: int, clients: int, keys: int, seed: int) -> list[Operation]:
    """Concurrent clients against an atomic store: each operation takes effect at a
    random instant inside its interval; some time out (info) and then take effect
    later or never, while the client carries on under a new id."""
    rng = random.Random(seed)
    store: dict[str, str] = {}
    events: list[tuple[float, int, str, int]] = []  # (time, sequence, what, slot or op)
    pending: list[Operation] = []  # by invocation index
    outputs: dict[int, str | None] = {}
    history: list[Operation] = []
    client_ids = list(range(clients))
    sequence = itertools.count()
    for slot in range(clients):
        heapq.heappush(events, (rng.random(), next(sequence), "invoke", slot))
    invoked = 0
    while events:
        now, _, what, target = heapq.heappop(events)
        if what == "invoke":
            if invoked == operations:
                continue
            key = f"key{rng.randrange(keys)}"
            kind = rng.choice(("get", "get", "put", "cas", "append"))
            value = f"v{invoked}" if kind in ("put", "append", "cas") else None
            expected = None
            if kind == "cas":
                expected = store.get(key) if rng.random() < 0.5 else "nope"
            pending.append(
                Operation(client_ids[target], kind, key, value, expected, None, now, None, "ok")
            )
            effect, end = now + rng.expovariate(1.0), 0.0
            end = effect + rng.expovariate(1.0)
            if rng.random() < 0.03:  # timeout: unknown outcome, client continues as a new id
                if rng.random() < 0.5:
                    heapq.heappush(events, (effect + 5.0, next(sequence), "effect", invoked))
                history.append(replace(pending[invoked], status="info"))
                client_ids[target] = max(client_ids) + 1
            else:
                heapq.heappush(events, (effect, next(sequence), "effect", invoked))
                heapq.heappush(events, (end, next(sequence), "return", invoked))
            heapq.heappush(events, (end + rng.random() * 0.1, next(sequence), "invoke", target))
            invoked += 1
        elif what == "effect":
            _, outputs[target] = reference_apply(store, pending[target])
        else:
            o = pending[target]
            output = outputs[target] if o.op in ("get", "cas") else None
            history.append(replace(o, output=output, return_=now))
    return history
