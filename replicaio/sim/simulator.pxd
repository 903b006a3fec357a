cdef class Simulator:
    cdef dict __dict__
    cdef public object choose_override, strategies, protocol, options, factory, config
    cdef public object params, codec, harness, rng, hold_rng, sync_rng, heap, requests_due
    cdef public object request_next, sequence, now, liveness, kept_down, nodes, operator
    cdef public object view, footprint_max, partitions, clock_ppm, link_clock, latency_rate
    cdef public object count_kinds, log, stats, violations

cdef class SimulatorApi:
    cdef public object simulator
