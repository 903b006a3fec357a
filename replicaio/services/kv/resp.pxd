cdef class RespParser:
    cdef public object limits, buffer, position, arguments, items_left, bulk_length, command_bytes

    cpdef feed(self, data)
    cpdef buffered(self)
    cpdef in_command(self)
    cpdef next_command(self)
    cpdef whole_multibulk(self)
    cpdef start_multibulk(self)
    cpdef continue_multibulk(self)
    cpdef bulk_length_of(self, line)
    cpdef length_line(self)
    cpdef compact(self)
