cdef class AnyOf:
    cdef public object lines
