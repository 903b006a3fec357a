cdef class HistoryRecorder:
    cdef dict __dict__
    cdef public object _clock, _operations, _pending, _busy_clients, _retired_clients
    cdef public object _client_next

