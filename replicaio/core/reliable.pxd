from replicaio.core.codec cimport Codec

cdef class ReliableLinks:
    cdef public object node
    cdef public dict sent
    cdef public list unacked, acks_pending, peer_incarnations
    cdef public object tick
    cdef public Codec codec
    cdef public object node_id, nodes, unacked_max, retransmit_after_ticks

    cpdef has_unacked(self)
    cpdef has_acks_pending(self)
