from replicaio.protocols.raft.raft cimport Raft

cdef class Membership:
    cdef dict __dict__
    cdef public Raft raft
    cdef public object identities_seen
