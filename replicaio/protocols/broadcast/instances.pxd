from replicaio.core.context cimport Context

cdef class Instances:
    cdef public Context context
    cdef public object instance, window_max, retained_max, archived_max, vouch_link
    cdef public list low, delivered, active
    cdef public object next_seq, abstaining, step_effects
    cdef public object step_deliveries, catchup

    cpdef open(self, sender, seq, value, delivered=*)
    cpdef on_delivered(self, sender, seq, value)
    cpdef record(self, sender, seq, value)
    cpdef archive_low(self, sender)
    cpdef collect(self, sender)
    cpdef fresh_deliveries(self)
    cpdef move_watermark(self, sender, low)
    cpdef erase_below(self, sender, low)
    cpdef beyond_window(self, sender, seq)
    cpdef peer_may_open(self, sender)
