cdef class Node:
    cdef dict __dict__
    cdef public object node_id, config, n, params, codec, signer, usig_scheme, usig_admission
    cdef public object protocol_factory, scheduler, effects, counters, request_rejection
    cdef public object evidence_log, storage, storage_keys, incarnation, storage_damaged
    cdef public object started, routes, child_handlers, reliable, local, local_stream
    cdef public object streams, group_output_handlers, timers, timer_finishers, timer_next
    cdef public object tick_armed, protocol, root
