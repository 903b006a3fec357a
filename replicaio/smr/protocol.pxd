from replicaio.core.codec cimport Codec
from replicaio.smr.replica cimport Replica

cdef class SmrProtocol:
    cdef dict __dict__
    cdef public object ordering, state_machine
    cdef public Replica replica
    cdef public object admin, admin_types
    cdef public Codec codec
