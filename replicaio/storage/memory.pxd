cdef class MemoryStorage:
    cdef public object _closed, _damage_pending
    cdef public dict _durable
    cdef public object _epoch, _history
    cdef public list _pending
    cdef public object _unsynced_writes_max, crashes, damage, syncs, writes

    cpdef write_and_sync(self, writes)
    cpdef _apply(self, count, remember=*)
    cpdef _check_open(self)
