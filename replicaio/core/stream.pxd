cdef class Stream:
    cdef public object context, group, handler, inbox, inbox_max, name, types, waiting

    cpdef deliver(self, source, message)
