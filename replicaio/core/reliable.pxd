cimport cython

from replicaio.core.codec cimport Codec

cdef class ReliableLinks:
    cdef public object node
    cdef public dict sent
    cdef public list unacked, acks_pending, peer_incarnations
    cdef public object tick
    cdef public Codec codec
    cdef public object node_id, nodes, unacked_max, retransmit_after_ticks

    @cython.locals(unacked=dict)
    cpdef on_acks(self, source, acks)
    @cython.locals(sent=dict, unacked=dict, unacked_by_peer=list)
    cpdef send(self, link, destination, body, persist)
    @cython.locals(sent=dict)
    cpdef forget(self, path)
    cpdef has_unacked(self)
    cpdef has_acks_pending(self)
    @cython.locals(pending=dict, unacked=dict)
    cpdef on_tick(self)
