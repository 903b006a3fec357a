cimport cython

from replicaio.core.lines cimport Line
from replicaio.core.scheduler cimport Scheduler
from replicaio.protocols.raft.membership cimport Membership
from replicaio.protocols.raft.raft cimport Raft

cdef class Signal:
    cdef public Line line
    cdef public object pending
    cdef public Scheduler scheduler
    cpdef notify(self)
    cpdef wait(self)

cdef class Progress:
    cdef public object acked_round, commit_due, heartbeat_due, hurry_index, identity
    cdef public object inflight, match_index, next_index, notice_due, probe_tick, recent_active
    cdef public object snapshot, snapshot_offset, snapshot_tick, state
    cdef public Signal wakeup

cdef class Replication:
    cdef public Raft raft
    cdef public object progress, peer_tasks, tick, synced_index, appended, committed
    cdef public object notice_wait

    @cython.locals(progress=Progress)
    cpdef send_to(self, peer, progress)
    @cython.locals(progress=Progress)
    cpdef end_notice_wait(self)
    @cython.locals(progress=Progress)
    cpdef answer_needed(self, progress)
    @cython.locals(progress=Progress, membership=Membership)
    cpdef on_match(self, peer, progress, match)
    @cython.locals(progress=Progress, membership=Membership)
    cpdef maybe_commit(self)
    cpdef self_match_index(self)
    cpdef may_commit_by_counting(self, index)
    @cython.locals(progress=Progress, membership=Membership)
    cpdef leader_progress(self, source, term, round_, identity)
    @cython.locals(progress=Progress)
    cpdef on_append_entries_response(self, source, response)
    @cython.locals(progress=Progress)
    cpdef may_send(self, progress)
    cpdef ignore_append_entries(self, source, message)
    cpdef accept(self, source, message, match)
