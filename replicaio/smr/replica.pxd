cdef class Replica:
    cdef dict __dict__
    cdef public object context, ordering, state_machine, constants, params, authenticator
    cdef public object reply_all, sessions, applied, snapshot_index, checkpoint_index
    cdef public object checkpoint_bytes, log_bytes, pending, queued, waiting, inflight
    cdef public object inflight_requests, inflight_views, batch_next, reads_active, read_next
    cdef public object remote_reads, applied_waiters, kick, kicked, checkpoints, stream
    cdef public object clocked, has_views, clock_ms, codec

