from replicaio.core.codec cimport Codec
from replicaio.core.context cimport Context
from replicaio.core.stream cimport Stream
from replicaio.smr.sessions cimport SessionTable

cdef class Replica:
    cdef public Context context
    cdef public object ordering, state_machine, constants, params, authenticator, reply_all
    cdef public SessionTable sessions
    cdef public object applied, snapshot_index, checkpoint_index, checkpoint_bytes
    cdef public object log_bytes, pending, queued, waiting, inflight, inflight_requests
    cdef public object inflight_views, batch_next, reads_active, read_next, remote_reads
    cdef public object applied_waiters, kick, kicked, checkpoints
    cdef public Stream stream
    cdef public object clocked, has_views, hurry, relay_watch, clock_ms
    cdef public Codec codec
    cdef public object expiries, expiry_held, expiry_kick

    cpdef wake(self)
    cpdef well_formed(self, request)
    cpdef admit_write(self, request, carried)
    cpdef enqueue(self, request, carried, origin)
    cpdef dequeue(self, client, seq)
    cpdef owe_reply(self, client, seq)
    cpdef reply(self, client, seq, result)
    cpdef flush(self)
    cpdef stamp(self)
    cpdef expire(self, number)
    cpdef leave_window(self, number)
    cpdef batch_applied(self, number)
    cpdef decode_batch(self, data)
    cpdef execute(self, request, index)
    cpdef wake_readers(self)
    cpdef maybe_checkpoint(self, index)
    cpdef hand_over_checkpoints(self)
