cdef class HistoryRecorder:
    cdef dict __dict__
    cdef public object _clock, _operations, _pending, _busy_clients, _retired_clients
    cdef public object _client_next


cpdef _is_time(value)
cpdef _type_name(value)
cpdef _validate_value(kind, value, expected)
cpdef _validate_output(kind, status, output)
cpdef _validate_times(status, call, returned)
cpdef validate_operation(op)
