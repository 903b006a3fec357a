cdef class Node:
    cdef dict __dict__
    cdef public object child_handlers, codec, config, counters, effects, evidence_log
    cdef public object group_output_handlers, incarnation, local, local_stream, n, node_id
    cdef public object params, protocol, protocol_factory, reliable, request_rejection, root
    cdef public object routes, scheduler, signer, started, storage, storage_damaged
    cdef public object storage_keys, streams, tick_armed, timer_finishers, timer_next, timers
    cdef public object usig_admission, usig_scheme
