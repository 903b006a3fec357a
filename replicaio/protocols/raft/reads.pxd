cdef class PendingRead:
    cdef public object index, line, read_id, round

cdef class Reads:
    cdef dict __dict__
    cdef public object raft, round, round_sent, waiting_commit, confirming, next_id, lease

