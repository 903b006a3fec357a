"""The transaction planner of the Redis front (``services/kv/transactions.py``) on
its own: any sequence of commands never raises, keeps the queue and the watches
within their bounds, and follows Redis's state rules; EXEC's reply is built from
the real store's exec result."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from test_kv_service_resp import FakeSession

from replicaio.services.kv.redis_plan import Local
from replicaio.services.kv.resp import NULL_ARRAY, OK, PONG, QUEUED, RespError
from replicaio.services.kv.state_machine import KeyValueStateMachine
from replicaio.services.kv.transactions import (
    EXECABORT,
    Exec,
    Transaction,
    TransactionLimits,
    Watch,
    plan_transaction,
)

LIMITS = TransactionLimits(commands_max=4, bytes_max=200, watch_keys_max=3)


WORDS = st.sampled_from([b"MULTI", b"EXEC", b"DISCARD", b"WATCH", b"UNWATCH", b"SET", b"GET",
                         b"INCR", b"PING", b"CLIENT", b"FROB", b"RESET", b"QUIT", b"HELLO"])
ARGS = st.lists(st.sampled_from([b"k", b"j", b"1", b"x" * 90, b"ID"]), max_size=3)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(WORDS, ARGS), max_size=30))
def test_any_command_sequence_is_planned_within_bounds(
    commands: list[tuple[bytes, list[bytes]]],
) -> None:
    transaction = Transaction()
    kv = KeyValueStateMachine()
    for word, arguments in commands:
        was_active = transaction.active
        step = plan_transaction(transaction, FakeSession(), [word, *arguments], LIMITS)
        assert len(transaction.queued) <= LIMITS.commands_max
        assert transaction.queued_bytes <= LIMITS.bytes_max
        assert len(transaction.watches) <= LIMITS.watch_keys_max
        if isinstance(step, Watch):
            assert not transaction.active
            reply = step.finish(transaction, kv.read(step.command))
            assert reply == OK and len(transaction.watches) <= LIMITS.watch_keys_max
        elif isinstance(step, Exec):
            assert was_active and not transaction.active and not transaction.watches
            reply = step.finish(kv.apply(step.command))
            assert reply is NULL_ARRAY or isinstance(reply, list)
        elif isinstance(step, Local) and step.reply == QUEUED:
            assert transaction.active
        elif step is None:
            assert not transaction.active or word in (b"QUIT", b"RESET")


def plan_all(transaction: Transaction, *commands: list[bytes]) -> list[object]:
    found: list[object] = []
    for argv in commands:
        step = plan_transaction(transaction, FakeSession(), argv, LIMITS)
        found.append(step.reply if isinstance(step, Local) else step)
    return found


def test_redis_state_rules() -> None:
    transaction = Transaction()
    assert plan_all(transaction, [b"EXEC"], [b"DISCARD"]) == [
        RespError("ERR EXEC without MULTI"), RespError("ERR DISCARD without MULTI")]
    assert plan_all(transaction, [b"MULTI"], [b"MULTI"], [b"WATCH", b"k"]) == [
        OK, RespError("ERR MULTI calls can not be nested"),
        RespError("ERR WATCH inside MULTI is not allowed")]
    assert not transaction.dirty  # those two leave the transaction clean
    replies = plan_all(transaction, [b"SET", b"k", b"1"], [b"FROB"], [b"EXEC"])
    assert replies[0] == QUEUED and isinstance(replies[1], RespError)
    assert replies[2] == EXECABORT and not transaction.active
    # The queue bound: one more is refused, and EXEC aborts.
    replies = plan_all(transaction, [b"MULTI"], *([[b"INCR", b"n"]] * 5), [b"EXEC"])
    assert replies[1:5] == [QUEUED] * 4
    assert isinstance(replies[5], RespError) and "transaction_commands_max" in replies[5].text
    assert replies[6] == EXECABORT
    # A run-time error (a bad argument) is queued and becomes its element of the reply.
    replies = plan_all(transaction, [b"MULTI"], [b"INCRBY", b"k", b"x"], [b"PING"], [b"EXEC"])
    assert replies[1:3] == [QUEUED, QUEUED]
    exec_reply = replies[3]
    assert isinstance(exec_reply, list) and len(exec_reply) == 2, exec_reply
    error, pong = exec_reply
    assert isinstance(error, RespError) and "not an integer" in error.text and pong == PONG
