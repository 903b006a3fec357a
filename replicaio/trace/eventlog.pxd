cimport cython

from replicaio.core.effects cimport Effects

cdef class EventLogWriter:
    cdef public object buffer, buffered, digest, encode_into, pack, records_per_flush_max
    cdef public object sink

    cpdef write(self, record)

@cython.locals(effects=Effects)
cpdef pack_effects(codec, effects, sent=*)
