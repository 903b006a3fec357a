cdef class Lease:
    cdef dict __dict__
    cdef public object raft, enabled, confirmed_round, expired_round, transfer_term, quiet

