"""Client sessions: at-most-once execution, bounded, part of every snapshot.

A client numbers its requests and keeps at most one outstanding; a retry
reuses the number. The table keeps, per client, the last sequence number
executed and its result (Raft thesis, section 6.3). Applying request
``(client, seq)``:

* ``seq > last``: a new request; execute it, remember ``(seq, result)``;
* ``seq == last``: a retry of the last one; answer the remembered result,
  execute nothing;
* ``seq < last``: older than what the client already moved past; nothing is
  executed and nothing is answered (the client no longer waits for it).

The table is bounded by ``sessions_max`` sessions and ``results_bytes_max``
bytes of remembered results. When a new client arrives at a full table, the
session used least recently (by applied order) is evicted; when the results
add up to more than ``results_bytes_max``, the least recently used sessions are
evicted until they fit or only the newest is left (so the table holds at most
``max(results_bytes_max, one result)`` bytes of results, which bounds a
replica's memory and its snapshots whatever its clients read). The
policy depends only on the order of applied requests, which every replica
shares, so every replica evicts the same sessions at the same index; the
table, in that order, is part of snapshots. Evictions are counted
(``smr_sessions_evicted``).

An evicted session must not turn a retry into a second execution. A request
with ``seq > 1`` from a client without a session therefore runs nothing and is
answered ``Rejected("session_expired")`` (the client records the operation's
outcome as unknown and continues under a new id). A client's first request
(``seq == 1``) cannot be told apart from a retry after eviction, so clients
that need the full guarantee *register*: their first request has an empty
command, which opens the session and runs nothing (retrying it is harmless).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from replicaio.core.errors import UsageError

SessionRecord = tuple[int, int, bytes, int]  # client, last_seq, result, last_index


@dataclass(slots=True)
class Session:
    """The last request a client had executed, its result, and when (batch index)."""

    last_seq: int
    result: bytes
    last_index: int


class SessionTable:
    """Per-client last sequence number and result, least recently used first."""

    __slots__ = ("evictions", "result_bytes", "results_bytes_max", "sessions", "sessions_max")

    def __init__(self, sessions_max: int, results_bytes_max: int = 1 << 62) -> None:
        if sessions_max < 1:
            raise UsageError("sessions_max must be >= 1")
        if results_bytes_max < 1:
            raise UsageError("results_bytes_max must be >= 1")
        self.sessions_max = sessions_max
        self.results_bytes_max = results_bytes_max
        # Insertion order is recency order: the first entry is evicted first.
        self.sessions: dict[int, Session] = {}
        self.result_bytes = 0  # the remembered results' bytes, in all
        self.evictions = 0

    def __len__(self) -> int:
        return len(self.sessions)

    def __iter__(self) -> Iterator[int]:
        return iter(self.sessions)

    def lookup(self, client: int) -> Session | None:
        """The session of ``client``, if the table has one (does not touch recency)."""
        return self.sessions.get(client)

    def record(self, client: int, seq: int, result: bytes, index: int) -> None:
        """``client`` executed ``seq`` with ``result`` in batch ``index``."""
        sessions = self.sessions
        previous = sessions.pop(client, None)
        assert previous is None or seq > previous.last_seq, "a session only moves forward"
        assert previous is None or index >= previous.last_index
        if previous is not None:
            self.result_bytes -= len(previous.result)
        if previous is None and len(sessions) >= self.sessions_max:
            self._evict_oldest()
        sessions[client] = Session(seq, result, index)
        self.result_bytes += len(result)
        while self.result_bytes > self.results_bytes_max and len(sessions) > 1:
            self._evict_oldest()
        assert len(sessions) <= self.sessions_max

    def _evict_oldest(self) -> None:
        oldest = next(iter(self.sessions))
        self.result_bytes -= len(self.sessions.pop(oldest).result)
        self.evictions += 1

    def audit(self) -> list[str]:
        """Where the table disagrees with itself: ``result_bytes`` against its
        results' bytes recounted, and the two bounds (the simulator's
        ``internal-consistency`` check, ADR 0069)."""
        problems: list[str] = []
        recounted = sum(len(session.result) for session in self.sessions.values())
        if self.result_bytes != recounted:
            problems.append(
                f"sessions' result_bytes {self.result_bytes} != their results' {recounted}"
            )
        if len(self.sessions) > self.sessions_max:
            problems.append(f"{len(self.sessions)} sessions, over sessions_max")
        if recounted > self.results_bytes_max and len(self.sessions) > 1:
            problems.append(f"{recounted} bytes of session results, over the bound")
        return problems

    def records(self) -> list[SessionRecord]:
        """The table as plain records, in eviction order (for snapshots)."""
        return [
            (client, session.last_seq, session.result, session.last_index)
            for client, session in self.sessions.items()
        ]

    def replace(self, records: list[SessionRecord]) -> None:
        """Replace the table by ``records`` (from :meth:`records`, possibly of
        another replica); raises ``UsageError`` if they do not fit."""
        if len(records) > self.sessions_max:
            raise UsageError(
                f"snapshot holds {len(records)} sessions, over sessions_max={self.sessions_max}"
            )
        sessions: dict[int, Session] = {}
        result_bytes = 0
        for client, last_seq, result, last_index in records:
            if client in sessions:
                raise UsageError(f"snapshot holds client {client} twice")
            sessions[client] = Session(last_seq, result, last_index)
            result_bytes += len(result)
        if result_bytes > self.results_bytes_max and len(sessions) > 1:
            raise UsageError(
                f"snapshot holds {result_bytes} bytes of session results, over "
                f"results_bytes_max={self.results_bytes_max}"
            )
        self.sessions = sessions
        self.result_bytes = result_bytes
