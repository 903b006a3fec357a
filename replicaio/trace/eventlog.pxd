cdef class EventLogWriter:
    cdef public object buffer, buffered, digest, encode_into, pack, records_per_flush_max
    cdef public object sink

    cpdef write(self, record)
