cdef class SessionTable:
    cdef public object evictions, result_bytes, results_bytes_max, sessions, sessions_max

