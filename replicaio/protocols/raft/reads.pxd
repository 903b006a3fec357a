from replicaio.protocols.raft.lease cimport Lease
from replicaio.protocols.raft.raft cimport Raft

cdef class PendingRead:
    cdef public object index, line, read_id, round

cdef class Reads:
    cdef dict __dict__
    cdef public Raft raft
    cdef public object round, round_sent, confirmed, waiting_commit, queued, confirming, next_id
    cdef public Lease lease
