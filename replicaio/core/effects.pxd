cdef class Effects:
    cdef public object persists, sends, timers_cancelled, timers_set, outputs
    cdef public object sends_before_sync
