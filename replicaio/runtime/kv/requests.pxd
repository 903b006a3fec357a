cdef class Retry:
    cdef public object delay

cdef class SessionExpired:
    pass

cdef class Waiter:
    cdef public object seq, future, on_outcome
