cdef class MemoryStorage:
    cdef public object _closed, _damage_pending, _durable, _epoch, _history, _pending
    cdef public object _unsynced_writes_max, crashes, damage, syncs, writes

    cpdef write_and_sync(self, writes)
