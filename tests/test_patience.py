"""``replicaio.core.patience``: the request timer's judgement PBFT and MinBFT share."""

from __future__ import annotations

from replicaio.core.patience import (
    PATIENCE_TIMEOUTS,
    PROGRESS_BATCHES,
    ViewBackoff,
    backoff_exponent,
    stop_waiting,
    suspected_kind,
)

KINDS = ("relayed", "forwarded")


def judge(waits: tuple[bool, bool], overtaken: tuple[bool, bool], outlasted: list[int],
          nothing_executed: bool) -> tuple[str | None, list[str]]:
    why: list[str] = []
    return suspected_kind(KINDS, waits, overtaken, outlasted, nothing_executed, why.append), why


def test_a_wait_while_nothing_executed_suspects_the_primary_at_once() -> None:
    outlasted = [0, 0]
    assert judge((True, False), (False, False), outlasted, True) == (
        "relayed", ["suspected_nothing_executed"])
    assert outlasted == [1, 0]


def test_a_queue_worked_through_is_not_held_against_the_primary_until_patience_runs_out() -> None:
    outlasted = [0, 0]
    for _ in range(PATIENCE_TIMEOUTS - 1):
        assert judge((False, True), (False, False), outlasted, False) == (None, [])
    assert judge((False, True), (False, False), outlasted, False) == (
        "forwarded", ["suspected_patience"])
    assert outlasted == [0, PATIENCE_TIMEOUTS]


def test_an_overtaken_wait_suspects_the_primary_and_every_waiting_kind_is_bumped() -> None:
    outlasted = [0, 2]
    assert judge((True, True), (False, True), outlasted, False) == (
        "forwarded", ["suspected_overtaken"])
    assert outlasted == [1, 3]


def test_nothing_waiting_is_no_suspicion() -> None:
    outlasted = [3, 3]
    assert judge((False, False), (True, True), outlasted, True) == (None, [])
    assert outlasted == [3, 3]


def test_a_younger_wait_executed_first_marks_the_oldest_overtaken() -> None:
    waits = {b"a": 1, b"b": 2, b"c": 3}
    assert stop_waiting(waits, b"b", None) == b"a"
    assert list(waits) == [b"a", b"c"]


def test_the_oldest_executed_or_an_unknown_one_leaves_the_overtaken_wait_as_it_was() -> None:
    waits = {b"a": 1, b"b": 2}
    assert stop_waiting(waits, b"a", b"x") == b"x"
    assert stop_waiting(waits, b"z", b"x") == b"x"
    assert list(waits) == [b"b"]


def test_a_timer_doubles_per_view_without_progress_and_a_view_that_executed_resets_it() -> None:
    assert backoff_exponent(5, 5, 6) == 0  # something executed in this view
    assert backoff_exponent(6, 5, 6) == 0  # the first view after one that executed
    assert backoff_exponent(8, 5, 6) == 2  # views 6 and 7 executed nothing
    assert backoff_exponent(40, 5, 6) == 6  # at most exponent_max


def test_a_view_keeps_the_doubling_it_was_entered_with_and_progress_takes_four_batches() -> None:
    """PBFT's and MinBFT's back-off (ADR 0040, 0046): fixed on entering a view,
    one doubling per view in a row without progress before it; four batches
    executed, or an idle backup's signal, make a view one with progress for the
    views after it; the doubling per primary replaced counts if larger."""
    backoff = ViewBackoff()
    backoff.init_backoff()
    backoff.enter_backoff(3, 6)  # views 1 and 2 without progress
    assert backoff.backoff_timeout_us(8, 0, 6) == 8 << 2
    for _ in range(PROGRESS_BATCHES - 1):
        backoff.executed_in_backoff(3)
    assert backoff.progress_view == 0  # three batches are not progress
    backoff.executed_in_backoff(3)
    assert backoff.progress_view == 3
    assert backoff.backoff_timeout_us(8, 0, 6) == 8 << 2  # the view keeps its doubling
    backoff.enter_backoff(4, 6)
    assert backoff.backoff_timeout_us(8, 0, 6) == 8  # the next one starts afresh
    assert backoff.backoff_timeout_us(8, 3, 6) == 8 << 3  # three primaries replaced
    assert backoff.backoff_timeout_us(8, 9, 6) == 8 << 6  # at most exponent_max
    backoff.executed_in_backoff(5)  # a batch of another view restarts the count
    assert backoff.executed_in_view == (5, 1)
    backoff.enter_backoff(9, 6)
    assert backoff.exponent == 5  # views 4-8 without progress
    backoff.idle_in_backoff(9)
    backoff.enter_backoff(10, 6)
    assert backoff.exponent == 0
    backoff.restarted_in_backoff(14, 6)  # restarted mid view change: 13 counts
    assert (backoff.progress_view, backoff.exponent) == (13, 0)
