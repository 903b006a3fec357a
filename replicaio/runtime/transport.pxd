cimport cython

cdef class Connection:
    cdef public object peer, reader, writer, transport, outgoing_key, incoming_key
    cdef public object outgoing_mac
    cdef public long send_seq
    cdef public object task, protocol

cdef class PeerChannel:
    cdef public object peer, address, queue
    cdef public long queued_bytes
    cdef public object wakeup
    cdef public Connection connection, idle_writer, flushing
    cdef public long connections, frames_in, frames_out, bytes_in, bytes_out, dropped

cdef class Transport:
    cdef public object node_id, listen, authenticator, params, inbox, counters
    cdef public dict channels
    cdef public object server, tasks
    cdef public dict pending
    cdef public bint closing
    cdef public object warn, tls_acceptor, tls_dial, hops, loop
    cdef public list written

    @cython.locals(channel=PeerChannel, connection=Connection)
    cpdef send(self, peer, payload)
    @cython.locals(channel=PeerChannel, connection=Connection)
    cpdef send_many(self, list sends)
    cpdef claim(self, PeerChannel channel, Connection connection)
    cpdef write_frames(self, PeerChannel channel, Connection connection, list frames)
    @cython.locals(channel=PeerChannel, connection=Connection)
    cpdef flush_written(self)
    cpdef list take_frames(self, PeerChannel channel, Connection connection)
    cpdef bytes seal(self, Connection connection, payload)
