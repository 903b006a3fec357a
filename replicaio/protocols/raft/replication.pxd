cimport cython

from replicaio.core.scheduler cimport Scheduler
from replicaio.protocols.raft.raft cimport Raft

cdef class Signal:
    cdef public object line, pending
    cdef public Scheduler scheduler

cdef class Progress:
    cdef public object acked_round, commit_due, heartbeat_due, hurry_index, identity
    cdef public object inflight, match_index, next_index, notice_due, probe_tick, recent_active
    cdef public object snapshot, snapshot_offset, snapshot_tick, state, wakeup

cdef class Replication:
    cdef public Raft raft
    cdef public object progress, peer_tasks, tick, synced_index, appended, committed

    @cython.locals(progress=Progress)
    cpdef send_to(self, peer, progress)
    @cython.locals(progress=Progress)
    cpdef on_match(self, peer, progress, match)
