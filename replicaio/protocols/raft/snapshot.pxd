from replicaio.protocols.raft.raft cimport Raft

cdef class Snapshots:
    cdef dict __dict__
    cdef public Raft raft
    cdef public object receiving, buffer
