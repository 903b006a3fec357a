cimport cython

from replicaio.core.generic cimport Slotted
from replicaio.core.lines cimport Line

cdef class Task(Slotted):
    cdef public Line _result
    cdef public object _return_value, _returned, cancel_pending, cancelled, coroutine, done
    cdef public object name, on_finish
    cdef public Scheduler scheduler
    cdef public Scope scope
    cdef public object waiting
    @cython.locals(scheduler=Scheduler, line=Line)
    cpdef step(self)

cdef class Scope:
    cdef public object cancelled, name
    cdef public Scheduler scheduler
    cdef public object tasks

cdef class Scheduler:
    cdef public object choose_function, current, ready, steps, turns
    @cython.locals(task=Task)
    cpdef run(self)
    cpdef turn(self)
