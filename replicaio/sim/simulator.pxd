cimport cython

from replicaio.core.codec cimport Codec
from replicaio.core.effects cimport Effects
from replicaio.core.node cimport Node
from replicaio.storage.memory cimport MemoryStorage
from replicaio.trace.eventlog cimport EventLogWriter, pack_effects

cdef class Frame:
    cdef public object data, message

cdef class SimNode:
    cdef public object node_id
    cdef public MemoryStorage storage
    cdef public object chooser_rng, strategy
    cdef public Node core
    cdef public object incarnation, timers, choices, pending_crash, held, read_errors
    cdef public object usig_admission, counters, sent_kinds, sent_total, rare_steps, waiting
    cdef public object timers_to_arm, sync_token

cdef class Simulator:
    cdef dict __dict__
    cdef public object choose_override, strategies, protocol, options, factory, config
    cdef public object params
    cdef public Codec codec
    cdef public object harness, rng, hold_rng, sync_rng, heap, requests_due, request_next
    cdef public object sequence, now, liveness, kept_down, nodes, operator, view
    cdef public object footprint_max, partitions, clock_ppm, link_clock, latency_rate
    cdef public object count_kinds, aim_rewrites
    cdef public EventLogWriter log
    cdef public object stats, violations

    @cython.locals(node=SimNode)
    cpdef run_events(self)
    @cython.locals(node=SimNode, frame=Frame)
    cpdef receive(self, node, source, payload)
    @cython.locals(node=SimNode, core=Node, effects=Effects)
    cpdef step(self, node, event, data=*)
    @cython.locals(node=SimNode)
    cpdef arm_timer(self, node, timer_id, delay)
    @cython.locals(node=SimNode, effects=Effects)
    cpdef send_all(self, node, effects, log=*)
    cpdef send_plain(self, source, sends, wire, encoded, recent)
    @cython.locals(node=SimNode)
    cpdef release_outputs(self, node, outputs)

cdef class SimulatorApi:
    cdef public Simulator simulator
