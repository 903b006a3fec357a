"""The interfaces protocols implement, below both the protocols and their users.

* :mod:`replicaio.interfaces.ordering` — a total-order protocol under SMR
  (``Ordering``, ``OrderingHandlers``, ``Committed``, ``NotLeader``);
* :mod:`replicaio.interfaces.broadcast` — the outputs of the broadcast family
  (``Accepted``, ``Delivered``) and what a broadcast claims.

A protocol implements one of these without importing its users (``smr``,
``check``, the hosts); its users rely on it without naming the protocol. The
layer order is in ``docs/architecture.md``.
"""
