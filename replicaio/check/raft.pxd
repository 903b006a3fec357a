cdef class RaftChecker:
    cdef dict __dict__
    cdef public object leaders, disks, votes, terms, applied_by, leader_logs, commits
    cdef public object commit_floor, applied, applications, reads, reads_tracked_max
    cdef public object reads_confirmed, violations, liveness_from, liveness_at_us, live

