cdef class Slotted:
    pass
