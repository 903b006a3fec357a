from replicaio.protocols.raft.raft cimport Raft

cdef class Election:
    cdef dict __dict__
    cdef public Raft raft
    cdef public object heard, heard_before, watching, granted, rejected, request
    cdef public object transfer_target
