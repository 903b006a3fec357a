cdef class Context:
    cdef public object child_handler, closed, group, links_by_name, node, path
    cdef public object storage_prefix, streams, tasks

