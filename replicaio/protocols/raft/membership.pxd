cdef class Membership:
    cdef dict __dict__
    cdef public object raft, identities_seen

