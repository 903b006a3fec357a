cdef class Scope:
    cdef public object cancelled, name
    cdef public Scheduler scheduler
    cdef public object tasks

cdef class Scheduler:
    cdef public object choose_function, current, ready, steps
    cpdef run(self)
