"""replicaio: compose practical distributed replication mechanisms.

Protocols are written as small deterministic components (``replicaio.core``),
tortured reproducibly in a simulator (``replicaio.sim``), replayed from event
logs (``replicaio.trace``) and checked against the properties they claim
(``replicaio.check``).
"""

__version__ = "0.1.0"

from replicaio import compiled as _compiled

# The hot modules compiled by ``./run setup``, when they match their source
# (replicaio/compiled.py); ``REPLICAIO_COMPILED=0`` imports everything as source.
_compiled.install()
