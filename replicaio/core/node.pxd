cimport cython

from replicaio.core.codec cimport Codec
from replicaio.core.context cimport Context, Link
from replicaio.core.effects cimport Effects
from replicaio.core.reliable cimport ReliableLinks
from replicaio.core.scheduler cimport Scheduler
from replicaio.core.stream cimport Stream

cdef class Node:
    cdef public object node_id, config, n, params
    cdef public Codec codec
    cdef public object signer, usig_scheme, usig_admission, protocol_factory
    cdef public Scheduler scheduler
    cdef public Effects effects
    cdef public dict counters
    cdef public object request_rejection, evidence_log
    cdef public dict storage, storage_keys
    cdef public object incarnation, storage_damaged, started
    cdef public dict routes, child_handlers
    cdef public ReliableLinks reliable
    cdef public object local, local_stream
    cdef public dict streams, group_output_handlers, timers, timer_finishers
    cdef public object timer_next, tick_armed, protocol
    cdef public Context root

    @cython.locals(effects=Effects, reliable=ReliableLinks)
    cpdef step(self, event)
    cpdef run(self)
    cpdef receive(self, source, data)
    @cython.locals(stream=Stream)
    cpdef route_stream(self, source, message, group=*)
    @cython.locals(context=Context, link=Link)
    cpdef dispatch(self, source, envelope)
    cpdef on_timer(self, timer_id)
    cpdef persist(self, key, value)
    cpdef count(self, counter, by=*)
