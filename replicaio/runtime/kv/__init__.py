"""The key-value store on the live runtime: its Redis (RESP) front and the ``kv`` commands.

* :mod:`replicaio.runtime.kv.service` — ``RespService``, the client service
  ``resp`` (``[host] client_service = "resp"``): Redis clients talk to a node;
  its parts: :mod:`~replicaio.runtime.kv.params` (the ``[service]`` bounds),
  :mod:`~replicaio.runtime.kv.connection` (one client's state and the group of
  commands sent as one SMR request), :mod:`~replicaio.runtime.kv.requests` (SMR
  client ids and request outcomes);
* :mod:`replicaio.runtime.kv.commands` — ``replicaio kv up|down|node``.

The store itself (state machine, RESP parsing, the Redis command table) is
deterministic and lives in :mod:`replicaio.services.kv`; this front needs the
runtime's asyncio host, so it sits in the runtime layer, above the services
(``docs/architecture.md``).
"""
