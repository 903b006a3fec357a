"""``REPLICAIO.ADMIN action node``: an operator's membership request through the Redis front.

``replicaio ctl member add|remove|promote`` and ``ctl move-leader`` send this
command to the node that leads. The front turns it into the replicated
service's own operator request (``assembly.Membership.request``: Raft's
``RaftAdmin``) and submits it to its node, which hands it to the ordering
protocol (``SmrProtocol.on_request`` routes admin payloads); the reply is
``+OK`` once the leader accepted it (the change then commits through the log;
``ctl status``/``member list`` show it), or the protocol's refusal
(``-ERR refused: not_leader``, ``already_member``, ``not_caught_up``...).
Anyone who can reach a client port can send it, like every other command:
the client port has no authentication (docs/kv.md).
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from replicaio.assembly import service_spec
from replicaio.services.kv.resp import OK, Reply, RespError

ADMIN_COMMAND: Final = b"replicaio.admin"
ACTIONS: Final = ("add", "add_learner", "promote", "remove", "transfer")


async def run_admin(host: Any, argv: list[bytes]) -> Reply:
    """Submit the membership request ``argv`` names; its outcome as a Redis reply."""
    if len(argv) != 3:
        return RespError("ERR usage: REPLICAIO.ADMIN add|add_learner|promote|remove|transfer "
                         "NODE")
    action = argv[1].lower().decode("utf-8", "replace")
    if action not in ACTIONS or not argv[2].isdigit():
        return RespError(f"ERR unknown admin action or node: {action!r} {argv[2][:20]!r}")
    cluster = getattr(host, "cluster", None)
    found = service_spec(str(getattr(cluster, "protocol", "")))
    membership = None if found is None else found[0].membership
    if membership is None:
        return RespError("ERR this service has no membership changes")
    payload = host.codec.encode(membership.request(action, int(argv[2])))  # type: ignore[arg-type]
    outcome: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

    def on_done(reason: str | None) -> None:
        if not outcome.done():
            outcome.set_result(reason)

    await host.submit(payload, on_done)
    reason = await outcome
    return OK if reason is None else RespError(f"ERR refused: {reason}")
