from replicaio.core.generic cimport Slotted

cdef class Context:
    cdef public object child_handler, closed, group, links_by_name, node, path
    cdef public object storage_prefix, streams, tasks


cdef class Link(Slotted):
    cdef public object accepts, certificates, counts, durable, from_lines, name, node, path
    cdef public object quorums, reached, received, sent, storage_prefix_cached
