cimport cython

from replicaio.core.codec cimport Codec
from replicaio.core.effects cimport Effects
from replicaio.core.node cimport Node
from replicaio.runtime.transport cimport Transport

cdef class Flight:
    cdef public list sends, outputs, completions
    cdef public tuple clean
    cdef public dict timers
    cdef public bint wrote
    cdef public object inputs, batch
    cdef public bint durable
    cdef public double sealed_at

cdef class NodeHost:
    cdef public object cluster, outgoing, rewrite_output, entry, node_id, params
    cdef public object frame_bytes_max
    cdef public Codec codec
    cdef public object counters, event_log_path, event_log, event_log_file, storage
    cdef public Node core
    cdef public bint trusted_wrote
    cdef public Transport transport
    cdef public object service, metrics, metrics_server, inbox
    cdef public long inbox_room
    cdef public object room_waiters, batch_waiter, sync_worker, pipeline, flights
    cdef public object release_waiter, failure
    cdef public list choices
    cdef public object random
    cdef public dict timer_tokens, timer_handles, timers_to_arm
    cdef public list deferred_sends
    cdef public long token
    cdef public object started_us
    cdef public dict stats
    cdef public object ready
    cdef public bint stopping
    cdef public object hops, loop

    cpdef put(self, item)
    cpdef free_room(self, count)
    @cython.locals(effects=Effects)
    cpdef step(self, Node core, event, list sends, list outputs, list early)
    @cython.locals(core=Node, wrote=bint)
    cpdef tuple step_batch(self, list batch, list sends, list early, list outputs, list completions)
    cpdef release_held(self, list sends, list outputs, list completions, tuple clean, synced, dict timers)
    cpdef serves_clients(self)
    cpdef durable_upto(self, batch)
    cpdef release_durable(self)
    cpdef pipeline_failed(self, error)
    cpdef release_flight(self, Flight flight)
    @cython.locals(transport=Transport)
    cpdef release_sends(self, list sends)
    cpdef defer_sends(self, list sends)
    cpdef send_deferred(self)
    cpdef arm_timers(self, synced, dict timers)
    cpdef release_replies(self, list outputs, list completions)
    cpdef release_outputs(self, list outputs)
    cpdef cancel_timer(self, timer_id)
    cpdef flush_event_log(self)
