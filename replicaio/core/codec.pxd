cdef class Codec:
    cdef public object _accepted, _canonical, _decode_typed, _decoder_version, _encode
    cdef public object _fast_bytes_max, _frame_bytes_max, _value_bounds, _value_tags, _values

    cpdef encode(self, message)
    cpdef tuple encode_checked(self, message)
    cpdef decode(self, data)
    cpdef encode_value(self, value)
    cpdef decode_value(self, data)
    cpdef _frame(self, wire)

cpdef _check_plain(value, budget, items_max)
cpdef _check_value(value, budget, items_max)
