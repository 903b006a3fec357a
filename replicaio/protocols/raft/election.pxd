cdef class Election:
    cdef dict __dict__
    cdef public object raft, heard, heard_before, watching, granted, rejected, request
    cdef public object transfer_target

