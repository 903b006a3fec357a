cdef class Scope:
    cdef public object cancelled, name, scheduler, tasks

cdef class Scheduler:
    cdef public object choose_function, current, ready, steps
