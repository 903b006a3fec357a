"""Bounds and periods of the Redis front: the cluster file's ``[service]`` table.

:class:`RespParams` is validated once, when the cluster file is loaded
(``RespService.check_params``) and again when the service starts; a bad key or
value raises ``ClusterFileError`` naming it. See ``service`` for what each bound
protects.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from replicaio.assembly import kv_value_sizes
from replicaio.runtime.config import ClusterFileError
from replicaio.services.kv.resp import RespLimits
from replicaio.services.kv.state_machine import (
    BATCH_COMMANDS_MAX,
    VALUE_BYTES_MAX_DEFAULT,
    WATCH_KEYS_MAX,
)
from replicaio.services.kv.transactions import TransactionLimits
from replicaio.smr.params import SmrConstants

SMR_COMMAND_BYTES_MAX: Final = SmrConstants().command_bytes_max
TIMEOUTS_OPTIONAL: Final = frozenset({"idle_timeout_ms", "request_read_timeout_ms",
                                      "evict_idle_after_ms"})


@dataclass(frozen=True, slots=True)
class RespParams:
    """Bounds and periods of the Redis front (the cluster file's ``[service]``)."""

    # One bulk string of a request: above the store's largest value, so a value
    # just too large is parsed and refused by name (ERR value too large).
    bulk_bytes_max: int = VALUE_BYTES_MAX_DEFAULT + 64 * 1024
    array_items_max: int = 4096  # arguments of one command
    inline_bytes_max: int = 64 * 1024  # one inline (telnet-style) command line
    command_bytes_max: int = VALUE_BYTES_MAX_DEFAULT + 128 * 1024  # all arguments of one command
    pipeline_depth_max: int = 1024  # commands read from a connection, not yet answered
    pipeline_bytes_max: int = 1024 * 1024  # their bytes
    reply_bytes_max: int = 1024 * 1024  # replies written to a connection, not yet sent
    group_commands_max: int = 256  # client commands carried by one SMR request
    group_bytes_max: int = 60 * 1024  # their key-value commands, encoded
    transaction_commands_max: int = 1024  # commands queued after MULTI
    # their key-value commands, encoded (one of the store's largest values fits)
    transaction_bytes_max: int = VALUE_BYTES_MAX_DEFAULT + 64 * 1024
    watch_keys_max: int = 1024  # keys one connection watches
    retry_after_ms: int = 1000  # send a request again if unanswered this long
    retry_backoff_ms: int = 50  # wait before sending again after a passing refusal
    request_timeout_ms: int = 5000  # then -TRYAGAIN no quorum (a read), -UNKNOWN (a write)
    idle_timeout_ms: int = 300_000  # Redis's `timeout`: close an idle connection (0: never)
    request_read_timeout_ms: int = 10_000  # close one that sends half a command (0: never)
    # With every client slot taken, a new client evicts the connection idle the
    # longest, if idle at least this long (0: never evict, refuse the new client).
    evict_idle_after_ms: int = 1_000

    def validate(self, smr_command_bytes_max: int = SMR_COMMAND_BYTES_MAX) -> RespParams:
        """Raise ``ClusterFileError`` naming a bad bound; ``smr_command_bytes_max``
        is the protocol's (``values=`` raises it)."""
        for item in dataclasses.fields(self):
            if getattr(self, item.name) < (0 if item.name in TIMEOUTS_OPTIONAL else 1):
                minimum = "0 (never)" if item.name in TIMEOUTS_OPTIONAL else "1"
                raise ClusterFileError(f"service.{item.name}", f"must be >= {minimum}")
        if self.bulk_bytes_max > self.command_bytes_max:
            raise ClusterFileError("service.bulk_bytes_max", "must be <= command_bytes_max")
        if not self.group_commands_max <= min(self.pipeline_depth_max, BATCH_COMMANDS_MAX):
            raise ClusterFileError(
                "service.group_commands_max",
                f"must be <= pipeline_depth_max and <= {BATCH_COMMANDS_MAX}",
            )
        for name in ("group_bytes_max", "transaction_bytes_max"):
            if getattr(self, name) > smr_command_bytes_max:
                raise ClusterFileError(
                    f"service.{name}", f"must be <= {smr_command_bytes_max} (SMR's bound)"
                )
        if self.transaction_commands_max > BATCH_COMMANDS_MAX:
            raise ClusterFileError(
                "service.transaction_commands_max", f"must be <= {BATCH_COMMANDS_MAX}"
            )
        if self.watch_keys_max > WATCH_KEYS_MAX:
            raise ClusterFileError("service.watch_keys_max", f"must be <= {WATCH_KEYS_MAX}")
        if self.retry_after_ms > self.request_timeout_ms:
            raise ClusterFileError("service.retry_after_ms", "must be <= request_timeout_ms")
        return self

    def transaction_limits(self) -> TransactionLimits:
        return TransactionLimits(
            commands_max=self.transaction_commands_max,
            bytes_max=self.transaction_bytes_max,
            watch_keys_max=self.watch_keys_max,
        )

    def limits(self) -> RespLimits:
        return RespLimits(
            bulk_bytes_max=self.bulk_bytes_max,
            array_items_max=self.array_items_max,
            inline_bytes_max=self.inline_bytes_max,
            command_bytes_max=self.command_bytes_max,
        )


def parse_resp_params(table: Mapping[str, Any], protocol: str | None = None) -> RespParams:
    """``RespParams`` from the ``[service]`` table; ``ClusterFileError`` names a bad key.
    The bounds that hold one value default to what ``protocol``'s largest value
    needs (its ``values=``; 8 MiB by default)."""
    value_bytes_max, smr_command_bytes_max = kv_value_sizes(protocol)
    sized = {
        "bulk_bytes_max": value_bytes_max + 64 * 1024,
        "command_bytes_max": value_bytes_max + 128 * 1024,
        "transaction_bytes_max": value_bytes_max + 64 * 1024,
    }
    names = {item.name for item in dataclasses.fields(RespParams)}
    for name, found in table.items():
        if name not in names:
            raise ClusterFileError(
                f"service.{name}", f"unknown key; expected one of {', '.join(sorted(names))}"
            )
        if type(found) is not int:
            raise ClusterFileError(f"service.{name}", f"must be int, got {found!r}")
    return RespParams(**{**sized, **dict(table)}).validate(smr_command_bytes_max)

