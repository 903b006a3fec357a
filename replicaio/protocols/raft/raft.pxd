from replicaio.protocols.raft.state cimport RaftLog

cdef class Raft:
    cdef dict __dict__
    cdef public object context, params, id, hard
    cdef public RaftLog log
    cdef public object identity, joiner, role, leader_id
    cdef public object commit_index, applied_index, term_start_index, handlers, role_scope
    cdef public object scheduler, started, applying, election, replication, snapshots
    cdef public object membership, reads, stream, dispatch

