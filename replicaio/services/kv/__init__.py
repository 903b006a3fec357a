"""The replicated key-value store: a deterministic state machine under SMR."""

from replicaio.services.kv.state_machine import (
    ERROR_CODES,
    OPERATIONS,
    KeyValueStateMachine,
    KvError,
    KvOk,
    KvParams,
    KvResult,
    KvSnapshotError,
    decode_result,
    encode_command,
)

__all__ = [
    "ERROR_CODES",
    "OPERATIONS",
    "KeyValueStateMachine",
    "KvError",
    "KvOk",
    "KvParams",
    "KvResult",
    "KvSnapshotError",
    "decode_result",
    "encode_command",
]
