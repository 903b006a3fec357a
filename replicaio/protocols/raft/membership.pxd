from replicaio.protocols.raft.raft cimport Raft

cpdef unregistered(config)

cdef class Membership:
    cdef public Raft raft
    cdef public object identities_seen, cached_config, voter_ids, member_identities
    cdef public object quorum_size, peer_ids
    cpdef refresh(self)
    cpdef voters(self)
    cpdef is_voter(self, node)
    cpdef quorum(self)
    cpdef counts(self, node, identity)
    cpdef registered(self, node)
    cpdef observe_identity(self, node, identity)
    cpdef on_progress(self, node)
    cpdef on_commit(self)
