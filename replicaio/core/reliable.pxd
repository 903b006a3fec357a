cdef class ReliableLinks:
    cdef public object node
    cdef public dict sent
    cdef public list unacked, acks_pending, peer_incarnations
    cdef public object tick

    cpdef has_unacked(self)
    cpdef has_acks_pending(self)
