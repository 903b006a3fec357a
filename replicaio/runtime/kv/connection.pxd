cdef class Command:
    cdef public object argv, received, size

cdef class EndOfInput:
    cdef public object error

cdef class Connection:
    cdef public object service, transport, parser, connection_id, read_client, read_seq
    cdef public object write_client, write_seq, group_seqs, nonce, protocol, name, closing
    cdef public object transaction, finished, items, unanswered, unanswered_bytes, busy
    cdef public object pumping, eof, lost, ended, reading_paused, writing_paused, writable
    cdef public object waiting, active, command_started, timed_out, opened, last_command

    cpdef reply_backlog(self)
    cpdef write(self, data, answered)

cdef class Group:
    cdef public object target, members, commands, size, replies, read_only

cdef class Flight:
    cdef public object service, group, connection, members, client, seq, command, read_only
    cdef public object deadline, over, waiter

cdef class RetryTimers:
    cdef public object loop, delay, queue, handle
