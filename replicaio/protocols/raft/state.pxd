from replicaio.core.context cimport Context

cpdef entry_name(index)
cpdef chain_digest(previous, entry)
cpdef config_to_plain(config)
cpdef entry_to_plain(entry)

cdef class RaftLog:
    cdef public object base_config, base_digest, base_index, base_term, config, config_index
    cdef public object config_indexes
    cdef public Context context
    cdef public object digests, entries, last_index, snapshot_config, snapshot_data
    cdef public object snapshot_digest, snapshot_index, snapshot_pieces, snapshot_term
    cdef public object piece_bytes
    cpdef term_at(self, index)
    cpdef slice(self, start, count_max, bytes_max)
    cpdef append(self, entries)
