cdef class KeyValueStateMachine:
    cdef public object _codec, data, errors, expires, expiry_heap, floor, now_ms, params
    cdef public object reading, revision, sizes, tombstones, used_bytes, versions, view_ms

