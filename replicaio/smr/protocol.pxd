cdef class SmrProtocol:
    cdef dict __dict__
    cdef public object ordering, state_machine, replica, admin, admin_types, codec

