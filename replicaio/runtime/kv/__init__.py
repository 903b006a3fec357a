"""The key-value store on the live runtime: its Redis (RESP) front and the ``kv`` commands.

* :mod:`replicaio.runtime.kv.service` — ``RespService``, the client service
  ``resp`` (``[host] client_service = "resp"``): Redis clients talk to a node;
* :mod:`replicaio.runtime.kv.commands` — ``replicaio kv up|down|node``.

The store itself (state machine, RESP parsing, the Redis command table) is
deterministic and lives in :mod:`replicaio.services.kv`; this front needs the
runtime's asyncio host, so it sits in the runtime layer, above the services
(``docs/architecture.md``).
"""
