"""The Redis front on a sharded cluster: commands to their group, transactions across groups.

Theory of operation
-------------------
On a cluster of G groups (``replicaio kv up --groups G``, protocol ``txn-kv``;
``docs/transactions.md``) every node hosts a replica of every group and every
key lives in one group by hash slot (the node protocol's ``SlotMap``). The
front (``service.RespService``) plans commands as on one group; this module
decides where each goes:

* a command, or a pipeline of commands, whose keys all live in one group goes
  to that group as one SMR request (a ``GroupRequest``), under the
  connection's session *in that group* (``Connection.group_seqs``);
* a command that expands into several key-value commands on several groups
  (``MGET``, ``MSET``, ``DEL``, ``EXISTS`` of keys here and there), and an
  ``EXEC`` whose commands or ``WATCH`` es touch several groups, run as **one
  transaction across groups** (``TxnRequest`` to this node's transaction
  protocol): every group locks the keys, checks the watched versions, and
  the commands run at commit, atomically; a watched key that changed answers
  the null array, as Redis. Redis Cluster answers such a command
  ``CROSSSLOT``; this one commits. An attempt aborted by a lock conflict
  (no-wait locking, ADR 0009) is retried with a fresh id after a short random
  pause until ``request_timeout_ms``;
* one command whose own keys span groups (``RENAME a b``, ``SMOVE``,
  ``SINTERSTORE``... with keys in two groups) cannot be split and is refused
  ``CROSSSLOT``; keep such keys in one group with a ``{hash tag}``;
* ``DBSIZE``, ``KEYS``, ``FLUSHDB``, ``FLUSHALL`` run in every group in turn
  and add up (not atomic across groups); ``SCAN`` is refused.

A group refuses a command on a key locked by a transaction in flight
(``kv_store.LOCKED_RESULT``); the front sends it again after
``retry_backoff_ms`` until ``request_timeout_ms``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from replicaio.core.codec import Codec, DecodeError
from replicaio.services.kv.resp import RespError
from replicaio.services.kv.state_machine import encode_command
from replicaio.services.txn.kv_store import KV, LOCKED_RESULT, encoded_command_keys
from replicaio.services.txn.protocol import SignedTxnRequest, TxnRequest, TxnResult
from replicaio.services.txn.slots import SlotMap
from replicaio.services.txn.store import ABORTED, CHECK, COMMITTED, request_bytes

if TYPE_CHECKING:
    from replicaio.runtime.kv.connection import Connection
    from replicaio.runtime.kv.service import RespService

RETRY_REASONS: Final = frozenset({"locked", "busy", "lease"})
FAN_OUT: Final = frozenset({"dbsize", "keys", "flushdb", "flushall"})
CROSSSLOT: Final = RespError(
    "CROSSSLOT Keys in request don't hash to the same group (one command's keys must "
    "live in one group; use a {hash tag})")
_CODEC: Final = Codec(frame_bytes_max=1 << 26)

Target = int | tuple[int, ...] | None  # one group; several (a transaction); keyless


def slots_of(service: RespService) -> SlotMap | None:
    """The slot map of the node protocol under ``service``, if it is sharded (a
    gateway's host has the cluster's own: ``replicaio.runtime.gateway``)."""
    own = getattr(service.host, "slots", None)
    if isinstance(own, SlotMap):
        return own
    protocol = getattr(getattr(service.host, "core", None), "protocol", None)
    slots = getattr(protocol, "slots", None)
    return slots if isinstance(slots, SlotMap) and hasattr(protocol, "groups") else None


def command_groups(slots: SlotMap, command: bytes) -> set[int] | None:
    keys = encoded_command_keys(command)
    return None if keys is None else {slots.group_of(key) for key in keys}


def target(slots: SlotMap, commands: Sequence[bytes]) -> Target | RespError:
    """Where ``commands`` go: one group, several groups, ``None`` (keyless), or
    CROSSSLOT (one command's keys span groups)."""
    found: set[int] = set()
    for command in commands:
        groups = command_groups(slots, command)
        if groups is None:
            return None
        if len(groups) > 1:
            return CROSSSLOT
        found |= groups
    if len(found) <= 1:
        return min(found, default=0)
    return tuple(sorted(found))


def transaction_ops(slots: SlotMap, commands: Sequence[bytes],
                    watches: Sequence[tuple[bytes, int]]) -> list[list[Any]] | RespError:
    """The micro-operations of a transaction across groups: each command, named by
    one of its keys; each watched key's version check."""
    ops: list[list[Any]] = []
    for command in commands:
        keys = encoded_command_keys(command)
        if keys is None:
            return RespError("ERR a keyless command (DBSIZE, KEYS, SCAN, FLUSHALL) cannot "
                             "run in a transaction across groups")
        if len({slots.group_of(key) for key in keys}) > 1:
            return CROSSSLOT
        ops.append([KV, keys[0], command])
    ops.extend([CHECK, key, version] for key, version in watches)
    return ops


async def call_group(service: RespService, connection: Connection, command: bytes,
                     read_only: bool, group: int) -> bytes | RespError:
    """``command`` in ``group``, sent again while a transaction holds its keys."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + service.params.request_timeout_ms / 1000
    while True:
        outcome = await service.call(connection, command, read_only, group)
        if outcome != LOCKED_RESULT:
            return outcome
        service.count("kv_locked_retries")
        if loop.time() >= deadline:
            return RespError("TRYAGAIN keys locked by a transaction across groups; nothing "
                             "was applied")
        await asyncio.sleep(service.params.retry_backoff_ms / 1000 * (0.5 + random.random()))


async def transact(service: RespService, connection: Connection, ops: list[list[Any]],
                   read_only: bool) -> list[bytes] | RespError | None:
    """Run ``ops`` as one transaction across groups: the results of its ``kv``
    operations in order, ``None`` if a watched key changed, or an error. An
    attempt of only reads (``read_only``: ``MGET``, an ``EXEC`` of reads) whose
    outcome is unknown answers ``-TRYAGAIN``, as a single-group read does: it
    has no effect, so the client may send it again; a write answers
    ``-UNKNOWN``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + service.params.request_timeout_ms / 1000
    encoded = _CODEC.encode_value(ops)
    while True:
        connection.nonce += 1
        result = await attempt(service, connection.write_client, connection.nonce, encoded,
                               max(0.0, deadline - loop.time()))
        if isinstance(result, RespError):
            return read_again(result) if read_only else result
        service.count("kv_transactions_across_groups")
        if result.outcome == COMMITTED:
            if result.reason and read_only:
                return read_again(unknown_outcome(connection.write_client, connection.nonce,
                                                  "its replies were not heard"))
            if result.reason:  # replies_lost: it committed, we cannot say with what
                # Not ERR: a Redis client takes an EXEC error for "nothing applied"
                # and may send the transaction again (twice applied).
                service.count("kv_transactions_replies_lost")
                return RespError(f"UNKNOWN transaction {connection.write_client}:"
                                 f"{connection.nonce} committed, but its replies were not "
                                 "heard (do not send it again)")
            replies: Any = _CODEC.decode_value(result.reads)
            assert isinstance(replies, tuple)
            return [reply for reply, op in zip(replies, ops, strict=True) if op[0] == KV]
        if result.outcome == ABORTED and result.reason == "version":
            return None
        if result.outcome != ABORTED or result.reason not in RETRY_REASONS:
            if result.outcome == ABORTED:
                return RespError(f"ERR transaction aborted: {result.reason}; nothing applied")
            # Not TRYAGAIN: a Redis client takes that as "nothing happened" and
            # sends the transaction again as a new one (twice applied if it committed).
            unknown = unknown_outcome(connection.write_client, connection.nonce)
            return read_again(unknown) if read_only else unknown
        service.count("kv_transactions_retried")
        if loop.time() >= deadline:
            return RespError("TRYAGAIN transaction kept meeting locked keys; nothing applied")
        await asyncio.sleep(service.params.retry_backoff_ms / 1000 * (0.5 + random.random()))


def unknown_outcome(client: int, nonce: int, why: str = "it may have committed") -> RespError:
    """The error of an attempt whose outcome is unknown: ``-UNKNOWN``, never
    ``TRYAGAIN`` (which tells a Redis client that nothing happened)."""
    return RespError(f"UNKNOWN outcome of transaction {client}:{nonce} unknown ({why})")


def read_again(error: RespError) -> RespError:
    """A read-only attempt's ``-UNKNOWN`` as ``-TRYAGAIN`` (it had no effect, whatever
    its outcome); any other error as it is."""
    if not error.text.startswith("UNKNOWN "):
        return error
    return RespError("TRYAGAIN " + error.text[len("UNKNOWN "):] + " (a read has no effect)")


async def attempt(service: RespService, client: int, nonce: int, ops: bytes,
                  timeout_s: float) -> TxnResult | RespError:
    """One attempt ``(client, nonce)``, driven by this node; its outcome."""
    host = service.host
    assert host is not None
    future = service.expect_transaction(client, nonce)
    try:
        def on_done(reason: str | None) -> None:
            if reason is not None and not future.done():
                future.set_result(RespError(f"ERR transaction refused by the node: {reason}"))

        request = TxnRequest(client, nonce, ops)
        vouch = service.vouch
        # On BFT groups (txn-kv-pbft) the groups prepare only signed attempts: the
        # front's client ids are its node's, so the node signs (the trusted
        # shortcut, as for the front's SMR requests: ADR 0028, scheme ``node``).
        payload: TxnRequest | SignedTxnRequest = request if vouch is None else SignedTxnRequest(
            request, vouch.key, vouch.signer.sign(request_bytes(_CODEC, client, nonce, ops)))
        await host.submit(host.codec.encode(payload), on_done)
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            service.count("kv_no_quorum")
            return unknown_outcome(client, nonce, "no outcome in time; it may still commit")
    finally:
        service.transactions.pop(client, None)


def exec_parts(command: bytes) -> tuple[list[tuple[bytes, int]], list[bytes]] | None:
    """The watches and commands of an encoded ``exec``."""
    try:
        value: Any = _CODEC.decode_value(command)
    except DecodeError:
        return None
    if not (isinstance(value, tuple) and len(value) == 3 and value[0] == "exec"):
        return None
    return [(key, version) for key, version in value[1]], list(value[2])


def exec_result(results: list[bytes] | None) -> bytes:
    """An ``exec`` result (``state_machine.decode_exec_result`` reads it)."""
    return _CODEC.encode_value(["ok", None if results is None else results])


def batch_result(results: list[bytes]) -> bytes:
    return _CODEC.encode_value(["ok", results])


def version_command(key: bytes) -> bytes:
    return encode_command("version", key)


def fan_out_name(command: bytes) -> str | None:
    """The name of a keyless command that runs in every group, or ``None``."""
    try:
        value = _CODEC.decode_value(command)
    except DecodeError:
        return None
    if isinstance(value, tuple) and len(value) == 3 and value[0] == "redis" \
            and value[1] in FAN_OUT:
        return str(value[1])
    return None


def combine(name: str, results: list[bytes]) -> bytes:
    """The results of a fanned-out keyless command, added up into one."""
    payloads: list[Any] = []
    for raw in results:
        value = _CODEC.decode_value(raw)
        if not (isinstance(value, tuple) and value and value[0] == "ok"):
            return raw  # the first error stands
        payloads.append(value[1])
    if name == "dbsize":
        return _CODEC.encode_value(["ok", sum(payloads)])
    if name == "keys":
        return _CODEC.encode_value(["ok", [key for found in payloads for key in found]])
    return results[0]
