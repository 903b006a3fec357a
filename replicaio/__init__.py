"""replicaio: compose practical distributed replication mechanisms.

Protocols are written as small deterministic components (``replicaio.core``),
tortured reproducibly in a simulator (``replicaio.sim``), replayed from event
logs (``replicaio.trace``) and checked against the properties they claim
(``replicaio.check``).
"""

__version__ = "0.1.0"
