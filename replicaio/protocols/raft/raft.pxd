from replicaio.core.context cimport Context
from replicaio.core.scheduler cimport Scheduler
from replicaio.core.stream cimport Stream
from replicaio.protocols.raft.state cimport RaftLog

cdef class Raft:
    cdef public Context context
    cdef public object params, id, hard
    cdef public RaftLog log
    cdef public object identity, joiner, role, leader_id, commit_index, applied_index
    cdef public object term_start_index, handlers, role_scope
    cdef public Scheduler scheduler
    cdef public object started, applying, election, replication, snapshots, membership
    cdef public object reads
    cdef public Stream stream
    cdef public object dispatch

    cpdef count(self, counter, by=*)
    cpdef accept_leader(self, term, leader)
    cpdef advance_commit(self, index)
    cpdef apply(self)
