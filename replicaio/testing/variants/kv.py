"""Broken variants of the key-value store, there to prove the checkers bite.

:class:`NonAtomicExec` applies a transaction in two steps: its commands run and
answer as usual, but the writes of its second half only become visible three
applied commands later; meanwhile every replica serves reads (and runs other
commands) on a state that holds half of the transaction. The linearizability
checker's transaction model must reject the histories it produces
(``tests/test_kv_transactions_sim.py``).

:class:`LocalClockExpiry` expires keys by a clock of its own instead of the
log's stamps; the model's expiry (``putx``) must reject its histories
(``tests/test_kv_expiry_sim.py``).
"""

from __future__ import annotations

from collections.abc import Callable

from replicaio.core.codec import Codec, DecodeError
from replicaio.services.kv.state_machine import KeyValueStateMachine, KvParams
from replicaio.services.kv.values import Value

DELAY_APPLIES = 3  # applied commands before the second half of a transaction shows
_CODEC = Codec()


class NonAtomicExec(KeyValueStateMachine):
    """Shows the second half of each transaction's writes late (broken on purpose)."""

    def __init__(self, params: KvParams | None = None) -> None:
        super().__init__(params)
        # (applies left, key, value to show or None to delete), in order
        self.hidden: list[tuple[int, bytes, Value | None]] = []

    def apply(self, command: bytes) -> bytes:
        result = super().apply(command)
        due = [item for item in self.hidden if item[0] <= 1]
        self.hidden = [(left - 1, key, value) for left, key, value in self.hidden if left > 1]
        for _, key, value in due:
            self.force(key, value)
        return result

    def force(self, key: bytes, value: Value | None) -> None:
        """Set or delete ``key`` behind the store's back (keeping its tables whole)."""
        if value is None:
            self.data.pop(key, None)
            self.versions.pop(key, None)
            return
        self.data[key] = value
        self.revision += 1
        self.versions[key] = self.revision
        self.tombstones.pop(key, None)

    def _exec(
        self, arguments: tuple[object, ...], run: Callable[..., bytes]
    ) -> tuple[bytes, ...] | None:
        _, commands = arguments
        assert isinstance(commands, tuple)
        late = {key for key in map(_key_of, commands[len(commands) // 2 :]) if key is not None}
        before = {key: self.data.get(key) for key in late}
        results = super()._exec(arguments, run)
        for key in sorted(late):
            after = self.data.get(key)
            if after == before[key]:
                continue
            self.hidden.append((DELAY_APPLIES, key, after))
            self.force(key, before[key])
        return results


def _key_of(command: object) -> bytes | None:
    try:
        value = _CODEC.decode_value(command) if isinstance(command, bytes) else None
    except DecodeError:
        return None
    if isinstance(value, tuple) and len(value) >= 2 and isinstance(value[1], bytes):
        return value[1]
    return None


class LocalClockExpiry(KeyValueStateMachine):
    """Expires keys by a clock of its own (broken on purpose): it ignores the log's
    stamps and advances its time by 7 ms per applied command, so replicas that
    applied the same commands agree, but keys expire out of step with real time
    (too late under light load, too early under heavy load)."""

    def advance_clock(self, time_ms: int) -> None:
        return  # the stamps are ignored

    def apply(self, command: bytes) -> bytes:
        super().advance_clock(self.now_ms + 7)
        return super().apply(command)

    def read(self, command: bytes) -> bytes:
        self.reading, self.view_ms = True, self.now_ms
        try:
            return self._read(_strip_at(command), nested=False)
        finally:
            self.reading = False


def _strip_at(command: bytes) -> bytes:
    """The read inside an ``at`` (its clock is ignored too)."""
    try:
        value = _CODEC.decode_value(command)
    except DecodeError:
        return command
    if isinstance(value, tuple) and len(value) == 3 and value[0] == "at":
        inner = value[2]
        return inner if isinstance(inner, bytes) else command
    return command
