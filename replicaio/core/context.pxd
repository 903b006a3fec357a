from replicaio.core.generic cimport Slotted

cdef class Context:
    cdef public object child_handler, closed, group, links_by_name, node, path
    cdef public object storage_prefix, streams, tasks

    cpdef output(self, value)
    cpdef key(self, name)
    cpdef persist(self, name, value)
    cpdef erase(self, name)
    cpdef count(self, counter, by=*)


cdef class Link(Slotted):
    cdef public object accepts, certificates, counts, durable, from_lines, name, node, path
    cdef public object quorums, reached, received, sent, storage_prefix_cached
