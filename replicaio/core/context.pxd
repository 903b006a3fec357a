cimport cython

from replicaio.core.generic cimport Slotted
from replicaio.core.lines cimport Line

cdef class Context:
    cdef public object child_handler, closed, group
    cdef public dict links_by_name
    cdef public object node, path
    cdef public object storage_prefix, streams, tasks

    cpdef link(self, name, body=*, durable=*)
    cpdef output(self, value)
    cpdef key(self, name)
    cpdef persist(self, name, value)
    cpdef erase(self, name)
    cpdef count(self, counter, by=*)


cdef class Link(Slotted):
    cdef public object accepts, certificates
    cdef public dict counts
    cdef public object durable
    cdef public dict from_lines
    cdef public object name, node, path
    cdef public object quorums
    cdef public list reached
    cdef public dict received, sent
    cdef public object storage_prefix_cached

    cpdef to_all(self, value)
    cpdef _send(self, destination, value)
    @cython.locals(line=Line, asked=Line)
    cpdef receive(self, source, value)
