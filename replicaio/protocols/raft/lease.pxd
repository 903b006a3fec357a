from replicaio.protocols.raft.raft cimport Raft

cdef class Lease:
    cdef dict __dict__
    cdef public Raft raft
    cdef public object enabled, confirmed_round, expired_round, transfer_term, quiet
