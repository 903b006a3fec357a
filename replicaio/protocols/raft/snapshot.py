"""Log compaction and snapshot installation (section 7, Figure 13).

* :meth:`Snapshots.compact` is SMR's ``Ordering.compact``: the state
  machine's snapshot up to an applied index is made durable and the entries
  it covers are erased, but for a trailing window of the latest ones (at most
  ``snapshot_trailing_entries_max`` entries and
  ``snapshot_trailing_bytes_max`` payload bytes, and no more bytes than the
  snapshot itself, etcd's ``SnapshotCatchUpEntries``): a follower a few batches behind (a lost
  AppendEntries under load) catches up by entries instead of by the whole
  snapshot. The write order is in ``state.py``.
* A leader whose peer needs entries that are compacted away switches that
  peer's progress to ``SNAPSHOT`` and sends the snapshot in chunks of at most
  ``snapshot_chunk_bytes_max`` bytes, one chunk in flight, re-sent once a
  whole heartbeat interval passed without an answer
  (:meth:`Snapshots.send_chunk`). The progress holds the snapshot it sends
  (immutable bytes: at most one snapshot per peer besides the log's): a
  later compaction does not restart a transfer in progress. Once it is
  installed, the follower catches up by entries, or by the next snapshot if
  the leader compacted past it meanwhile. Only a transfer the peer has
  acknowledged nothing of (it is down, or not answering) takes the latest
  snapshot when its first chunk is due again: re-sending the old one would
  cost as much, and a peer back after a long absence would otherwise install
  a stale snapshot and then need another.
* A follower assembles the chunks in memory (at most ``snapshot_bytes_max``
  bytes; a restart drops a partial transfer and the leader starts over) and,
  once complete, installs it: it keeps the log suffix if its log has the
  snapshot's last entry, else it discards the whole log (Figure 13, 6-7),
  then hands SMR the snapshot (``on_snapshot``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from replicaio.core.errors import UsageError
from replicaio.protocols.raft.messages import (
    InstallSnapshot,
    InstallSnapshotResponse,
    SnapshotInstalled,
    SnapshotTaken,
)
from replicaio.protocols.raft.replication import PROBE, SNAPSHOT, Progress, SentSnapshot
from replicaio.protocols.raft.state import Role

if TYPE_CHECKING:
    from replicaio.protocols.raft.raft import Raft


class Snapshots:
    """Compaction, and InstallSnapshot on both sides."""

    def __init__(self, raft: Raft) -> None:
        self.raft = raft
        # The follower's transfer in progress: (index, term) and the bytes so far.
        self.receiving: tuple[int, int] | None = None
        self.buffer = bytearray()

    # -- compaction (SMR's Ordering.compact) ---------------------------------------

    def compact(self, index: int, snapshot: bytes) -> None:
        raft = self.raft
        log = raft.log
        if index > raft.applied_index:
            raise UsageError(
                f"compact({index}) beyond the applied index {raft.applied_index}: a snapshot "
                "covers applied entries only"
            )
        if index <= log.snapshot_index:
            raft.count("raft_compact_not_newer")
            return
        log.compact(index, snapshot, self.trailing_base(index, len(snapshot)))
        raft.count("raft_compactions")
        raft.context.output(SnapshotTaken(raft.id, index, log.snapshot_term, len(snapshot)))

    def trailing_base(self, index: int, snapshot_bytes: int) -> int:
        """Where the log starts after compacting to ``index`` with a snapshot of
        ``snapshot_bytes``: the latest entries up to ``index`` stay, within the
        trailing window's bounds."""
        raft = self.raft
        log = raft.log
        params = raft.params
        entries_left = params.snapshot_trailing_entries_max
        # Entries beyond the snapshot's own size would cost a follower more
        # than the snapshot does: the window holds at most that many bytes.
        bytes_left = min(params.snapshot_trailing_bytes_max, snapshot_bytes)
        base = index
        while base > log.base_index and entries_left > 0:
            bytes_left -= len(log.entry(base).data)
            if bytes_left < 0:
                break
            entries_left -= 1
            base -= 1
        return base

    # -- leader -------------------------------------------------------------------

    def send_chunk(self, peer: int, progress: Progress) -> None:
        """Start a transfer of the latest snapshot, or go on with the one in
        progress (whatever the leader compacted since); send the next chunk,
        or send the outstanding one again once a whole heartbeat interval
        passed without an answer."""
        raft = self.raft
        log = raft.log
        tick = raft.replication.tick
        if progress.state != SNAPSHOT or progress.snapshot is None:
            progress.state = SNAPSHOT
            progress.inflight.clear()
            progress.snapshot = self.latest()
            progress.snapshot_offset = 0
            progress.snapshot_tick = None
            raft.count("raft_snapshots_sent")
        elif progress.snapshot_tick is not None:
            if progress.snapshot_tick >= tick - 1:
                return  # one chunk in flight, sent less than an interval ago
            if progress.snapshot_offset == 0 and progress.snapshot.index != log.snapshot_index:
                # The peer acknowledged nothing of it (down, or not answering):
                # sending it again costs as much as sending the latest one.
                progress.snapshot = self.latest()
                raft.count("raft_snapshot_transfers_renewed")
            else:
                raft.count("raft_snapshot_chunks_resent")
        snapshot = progress.snapshot
        data = snapshot.data
        offset = progress.snapshot_offset
        chunk = data[offset : offset + raft.params.snapshot_chunk_bytes_max]
        raft.send(
            peer,
            InstallSnapshot(
                raft.hard.term, raft.id, snapshot.index, snapshot.term, snapshot.digest,
                snapshot.config, len(data), offset, chunk, raft.reads.take_round(),
            ),
        )
        raft.count("raft_snapshot_chunks_sent")
        progress.snapshot_tick = tick
    def latest(self) -> SentSnapshot:
        log = self.raft.log
        return SentSnapshot(
            log.snapshot_index, log.snapshot_term, log.snapshot_digest, log.snapshot_config,
            log.snapshot_data,
        )

    def on_install_snapshot_response(
        self, source: int, response: InstallSnapshotResponse
    ) -> None:
        raft = self.raft
        replication = raft.replication
        progress = replication.leader_progress(
            source, response.term, response.round, response.identity
        )
        if progress is None or raft.role is not Role.LEADER:
            return
        if response.done:
            if response.last_included_index > raft.log.last_index:
                raft.count("raft_rejected_match_beyond_log")
                return
            # The follower's log now matches ours up to the snapshot.
            if progress.state == SNAPSHOT:
                progress.state = PROBE
                progress.probe_tick = None
                progress.snapshot = None
            replication.on_match(source, progress, response.last_included_index)
            progress.next_index = max(progress.next_index, progress.match_index + 1)
        elif (
            progress.state == SNAPSHOT
            and progress.snapshot is not None
            and response.last_included_index == progress.snapshot.index
            and 0 <= response.next_offset <= len(progress.snapshot.data)
        ):
            progress.snapshot_offset = response.next_offset
            progress.snapshot_tick = None
        else:
            raft.count("raft_ignored_stale_snapshot_response")
            return
        progress.wakeup.notify()

    # -- follower -----------------------------------------------------------------

    def ignore_install_snapshot(self, source: int, message: InstallSnapshot) -> str | None:
        raft = self.raft
        if message.leader != source:
            return "leader_not_sender"
        if message.last_included_index < 1 or message.last_included_term < 1:
            return "snapshot_index_out_of_range"
        if message.last_included_term > message.term:
            return "snapshot_term_above_term"
        if message.size > raft.params.snapshot_bytes_max:
            raft.count("bound_raft_snapshot_bytes_max")
            return "snapshot_too_large"
        if message.offset < 0 or message.offset + len(message.data) > message.size:
            return "snapshot_chunk_out_of_range"
        if not message.config.voters:
            return "snapshot_config_without_voters"
        return None

    def on_install_snapshot(self, source: int, message: InstallSnapshot) -> None:
        raft = self.raft
        reason = self.ignore_install_snapshot(source, message)
        if reason is not None:
            raft.count(f"raft_rejected_{reason}")
            return
        if message.term < raft.hard.term:
            self.reply(source, message, 0, done=False)
            return
        if not raft.accept_leader(message.term, source):
            return
        index, term = message.last_included_index, message.last_included_term
        if index <= raft.commit_index:
            # Already committed here, so already identical to the leader's.
            self.reply(source, message, message.size, done=True)
            return
        if self.receiving != (index, term) or message.offset == 0:
            self.receiving = (index, term)
            self.buffer = bytearray()
        if message.offset != len(self.buffer):
            self.reply(source, message, len(self.buffer), done=False)
            return
        self.buffer += message.data
        if len(self.buffer) < message.size:
            self.reply(source, message, len(self.buffer), done=False)
            return
        data = bytes(self.buffer)
        self.receiving = None
        self.buffer = bytearray()
        self.install(message, data)
        self.reply(source, message, message.size, done=True)

    def install(self, message: InstallSnapshot, data: bytes) -> None:
        raft = self.raft
        log = raft.log
        index, term = message.last_included_index, message.last_included_term
        config_before = (log.config_index, log.config)
        log.install_snapshot(index, term, message.digest, message.config, data)
        raft.on_snapshot_installed(index)
        raft.count("raft_snapshots_installed")
        raft.context.output(SnapshotInstalled(raft.id, index, term, message.digest))
        if (log.config_index, log.config) != config_before:
            raft.on_config_changed()

    def reply(self, source: int, message: InstallSnapshot, next_offset: int, *, done: bool) -> None:
        raft = self.raft
        raft.send(
            source,
            InstallSnapshotResponse(
                raft.hard.term, message.last_included_index, next_offset, done, message.round,
                raft.identity,
            ),
        )
