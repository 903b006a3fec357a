from replicaio.core.generic cimport Slotted

cdef class Line(Slotted):
    cdef public object _is_set, _name, _value, scheduler, waiters
    cpdef set(self, value)

cdef class AnyOf:
    cdef public object lines
