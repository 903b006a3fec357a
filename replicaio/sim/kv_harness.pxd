from replicaio.check.history cimport HistoryRecorder
from replicaio.core.codec cimport Codec

cdef class KvHarness:
    cdef dict __dict__
    cdef public object config, fronts_wanted, fronts, down, client_macs, fast_reads
    cdef public object checkers, membership, leader_hint, nemesis_aims_at_syncs, api
    cdef public object workload, plan_table, rng, disk_nodes
    cdef public HistoryRecorder recorder
    cdef public object clients, by_id, retired, quota_left, healed, healed_at, figures
    cdef public object violations, result, last_values, write_next, leader_term, observers
    cdef public Codec codec
    cdef public object bft, quorum, write_quorum, quorum_unordered
