cdef class KvHarness:
    cdef dict __dict__
    cdef public object config, fronts_wanted, fronts, down, client_macs, fast_reads, checkers
    cdef public object membership, leader_hint, nemesis_aims_at_syncs, api, workload, rng
    cdef public object disk_nodes, recorder, clients, by_id, retired, quota_left, healed
    cdef public object healed_at, figures, violations, result, last_values, write_next
    cdef public object leader_term, observers, codec, bft, quorum, write_quorum
    cdef public object quorum_unordered

