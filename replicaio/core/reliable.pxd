cdef class ReliableLinks:
    cdef dict __dict__
    cdef public object node, sent, unacked, acks_pending, peer_incarnations, tick
