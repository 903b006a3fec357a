cdef class ReliableLinks:
    cdef public object node, sent, unacked, acks_pending, peer_incarnations, tick

    cpdef has_unacked(self)
    cpdef has_acks_pending(self)
