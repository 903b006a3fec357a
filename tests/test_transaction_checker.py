"""The transaction-history checker on hand-made histories: each anomaly caught
and named with its transactions, valid histories accepted (Elle's list-append,
the bank invariant), the JSON-lines format and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from replicaio.check.history import HistoryError
from replicaio.check.transactions import (
    EXIT_ANOMALIES,
    EXIT_INVALID_HISTORY,
    EXIT_VALID,
    Transaction,
    TransactionRecorder,
    check_transactions,
    dump_transactions,
    load_transactions,
)
from replicaio.check.transactions.history import transaction_from_record
from replicaio.cli import main


def txn(client: int, ops: list[list[Any]], call: float, ret: float | None,
        status: str = "ok") -> dict[str, Any]:
    return {"client": client, "ops": ops, "call": call, "return": ret, "status": status}


def history(*records: dict[str, Any]) -> list[Transaction]:
    return [transaction_from_record(record, index) for index, record in enumerate(records)]


def names(*records: dict[str, Any], strict: bool = True) -> list[str]:
    return check_transactions(history(*records), strict=strict).names()


def test_a_valid_history_is_accepted() -> None:
    result = check_transactions(history(
        txn(0, [["append", "x", 1], ["append", "y", 1]], 0, 1),
        txn(1, [["r", "x", [1]], ["append", "x", 2]], 2, 3),
        txn(2, [["r", "y", [1]], ["r", "x", [1]]], 2.5, 3.5),  # before T1's append: concurrent
        txn(0, [["r", "x", [1, 2]], ["r", "y", [1]]], 4, 5),
        txn(3, [["append", "z", 7]], 0, None, "info"),  # never seen: may not have happened
        txn(4, [["append", "z", 8]], 0, 1, "fail"),
    ))
    assert result.valid, result.describe()
    assert result.edges["ww"] == 1 and result.edges["wr"] >= 2 and result.edges["rw"] >= 1
    assert "VALID" in result.describe()


def test_g0_write_cycle() -> None:
    result = check_transactions(history(
        txn(0, [["append", "x", 1], ["append", "y", 1]], 0, 2),
        txn(1, [["append", "x", 2], ["append", "y", 2]], 0, 2),
        txn(2, [["r", "x", [1, 2]], ["r", "y", [2, 1]]], 3, 4),
    ))
    assert result.names() == ["G0"]
    (anomaly,) = result.anomalies
    assert set(anomaly.transactions) == {0, 1}
    assert "G0: T0 -> T1 -> T0" in result.describe() or "G0: T1 -> T0 -> T1" in result.describe()


def test_g1a_aborted_read() -> None:
    assert "G1a" in names(
        txn(0, [["append", "x", 1]], 0, 1, "fail"),
        txn(1, [["r", "x", [1]]], 2, 3),
    )


def test_g1b_intermediate_read() -> None:
    result = check_transactions(history(
        txn(0, [["append", "x", 1], ["append", "x", 2]], 0, 3),
        txn(1, [["r", "x", [1]]], 1, 2),
    ))
    assert "G1b" in result.names()
    assert any(a.name == "G1b" and a.transactions == (0, 1) for a in result.anomalies)


def test_g1c_circular_information_flow() -> None:
    assert names(
        txn(0, [["append", "x", 1], ["r", "y", [2]]], 0, 2),
        txn(1, [["append", "y", 2], ["r", "x", [1]]], 0, 2),
    ) == ["G1c"]


def test_g_single_read_skew() -> None:
    result = check_transactions(history(
        txn(0, [["append", "x", 1], ["append", "y", 1]], 0, 1),
        txn(1, [["append", "x", 2], ["append", "y", 2]], 2, 4),
        txn(2, [["r", "x", [1]], ["r", "y", [1, 2]]], 2, 4),
        txn(3, [["r", "x", [1, 2]]], 5, 6),
    ))
    assert result.names() == ["G-single"]
    assert "-rw-> T1" in result.describe() and "-wr-> T2" in result.describe()


def test_g2_write_skew() -> None:
    assert names(
        txn(0, [["r", "x", None], ["append", "y", 1]], 0, 2),
        txn(1, [["r", "y", None], ["append", "x", 2]], 0, 2),
        txn(2, [["r", "x", [2]], ["r", "y", [1]]], 3, 4),
    ) == ["G2"]


def test_stale_read_is_not_strict_but_serializable() -> None:
    records = (
        txn(0, [["append", "x", 1]], 0, 1),
        txn(1, [["r", "x", []]], 2, 3),  # called after T0 returned, yet misses it
        txn(2, [["r", "x", [1]]], 4, 5),
    )
    assert names(*records) == ["G-single-realtime"]
    assert names(*records, strict=False) == []


def test_incompatible_orders_and_garbage() -> None:
    found = names(
        txn(0, [["append", "x", 1]], 0, 1),
        txn(1, [["append", "x", 2]], 0, 1),
        txn(2, [["r", "x", [1, 2]]], 2, 3),
        txn(3, [["r", "x", [2, 1, 9]]], 2, 3),
    )
    assert "incompatible-order" in found and "garbage-read" in found


def test_internal_and_duplicates() -> None:
    found = names(
        txn(0, [["append", "x", 1], ["r", "x", [3]]], 0, 1),
        txn(1, [["r", "y", [4, 4]]], 0, 1),
        txn(2, [["append", "y", 4]], 0, 1, "info"),
    )
    assert "internal" in found and "duplicate-elements" in found


def test_info_transaction_seen_counts_as_committed() -> None:
    result = check_transactions(history(
        txn(0, [["append", "x", 1], ["append", "y", 1]], 0, None, "info"),
        txn(1, [["r", "x", [1]], ["r", "y", []]], 5, 6),  # half of an atomic write
    ))
    assert result.names() == ["G-single"], result.describe()


def test_bank_total() -> None:
    records = (
        txn(0, [["add", "a", -3], ["add", "b", 3]], 0, 1),
        txn(1, [["r", "a", 7], ["r", "b", 13]], 2, 3),
        txn(2, [["r", "a", 7], ["r", "b", 10]], 2, 3),  # saw one side of a transfer
        txn(3, [["r", "a", -1]], 2, 3),
    )
    result = check_transactions(history(*records), bank_total=20)
    assert result.names() == ["negative-balance", "wrong-total"]
    assert [a.transactions for a in result.anomalies if a.name == "wrong-total"] == [(2,)]
    assert check_transactions(history(*records[:2]), bank_total=20).valid
    with pytest.raises(HistoryError, match="not a transfer"):
        check_transactions(history(txn(0, [["add", "a", 5]], 0, 1)), bank_total=20)


def test_format_round_trip_and_validation(tmp_path: Path) -> None:
    clock = iter(range(100))
    recorder = TransactionRecorder(lambda: float(next(clock)))
    first = recorder.invoke(0, [("append", "x", 1), ("r", "x", None)])
    recorder.ok(first, [("append", "x", 1), ("r", "x", (1,))])
    second = recorder.invoke(1, [("r", "x", None)])
    path = tmp_path / "h.jsonl"
    dump_transactions(recorder.transactions(), path)
    loaded = load_transactions(path)
    assert [t.status for t in loaded] == ["ok", "info"] and second == 1
    assert loaded[0].ops[1] == ("r", "x", (1,))
    for bad, reason in (
        ({"client": 0, "ops": [], "call": 0, "return": 1, "status": "ok"}, "ops is a list"),
        ({"client": 0, "ops": [["put", "x", 1]], "call": 0, "return": 1, "status": "ok"},
         "kind"),
        ({"client": 0, "ops": [["r", "x", [1]]], "call": 0, "return": None, "status": "info"},
         "unknown"),
        ({"client": 0, "ops": [["r", "x", None]], "call": 2, "return": 1, "status": "ok"},
         "before call"),
    ):
        path.write_text(json.dumps(bad) + "\n")
        with pytest.raises(HistoryError, match=reason):
            load_transactions(path)
    path.write_text("\n".join(json.dumps(r) for r in (
        txn(0, [["append", "x", 1]], 0, 5), txn(0, [["append", "x", 2]], 1, 2))) + "\n")
    with pytest.raises(HistoryError, match="overlaps"):
        load_transactions(path)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad, bank = tmp_path / "good.jsonl", tmp_path / "bad.jsonl", tmp_path / "bank.jsonl"
    good.write_text(json.dumps(txn(0, [["append", "x", 1], ["r", "x", [1]]], 0, 1)) + "\n")
    bad.write_text("\n".join(json.dumps(r) for r in (
        txn(0, [["r", "x", None], ["append", "y", 1]], 0, 2),
        txn(1, [["r", "y", None], ["append", "x", 2]], 0, 2),
        txn(2, [["r", "x", [2]], ["r", "y", [1]]], 3, 4))) + "\n")
    bank.write_text(json.dumps(txn(0, [["r", "a", 1], ["r", "b", 2]], 0, 1)) + "\n")
    assert main(["check-transactions", str(good)]) == EXIT_VALID
    assert main(["check-transactions", str(bad)]) == EXIT_ANOMALIES
    assert "G2" in capsys.readouterr().out
    assert main(["check-transactions", str(bank), "--bank-total", "3"]) == EXIT_VALID
    assert main(["check-transactions", str(bank), "--bank-total", "4"]) == EXIT_ANOMALIES
    assert main(["check-transactions", str(bank)]) == EXIT_INVALID_HISTORY
    assert main(["check-transactions", str(tmp_path / "missing")]) == EXIT_INVALID_HISTORY
