cdef class RaftLog:
    cdef public object base_config, base_digest, base_index, base_term, config_indexes
    cdef public object context, digests, entries, snapshot_config, snapshot_data
    cdef public object snapshot_digest, snapshot_index, snapshot_pieces, snapshot_term

