from replicaio.core.codec cimport Codec

cdef class KeyValueStateMachine:
    cdef public Codec _codec
    cdef public object data, errors, expires, expiry_heap, floor, now_ms, params
    cdef public object reading, revision, sizes, tombstones, used_bytes, versions, view_ms

    cpdef version(self, key)
    cpdef now(self)
    cpdef _execute(self, op, key, arguments)
    cpdef _increment(self, key, delta)
    cpdef _bytes_argument(self, value)
    cpdef lookup(self, key)
    cpdef string(self, key)
    cpdef room(self, extra_bytes)
    cpdef touch(self, key, size=*)
    cpdef _remove(self, key)
    cpdef remove(self, key)
