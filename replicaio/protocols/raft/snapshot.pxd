cdef class Snapshots:
    cdef dict __dict__
    cdef public object raft, receiving, buffer

