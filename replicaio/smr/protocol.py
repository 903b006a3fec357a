"""SMR as a node protocol: an ordering protocol, a state machine and a replica, by name.

``SmrFactory`` is a ``replicaio.core.node.ProtocolFactory``: the assembly
(``replicaio.assembly``) maps a name such as ``raft`` to one, so the
node core, the simulator, replay and the CLI build a whole replicated service
by name. At every start of a node it builds, in this order:

1. the state machine (fresh: its state comes back from the snapshot);
2. the ordering protocol, on the child context ``(ordering_path,)``;
3. the :class:`~replicaio.smr.replica.Replica` on ``("smr",)``, which binds
   itself to the ordering protocol.

``start`` starts the replica, which starts the ordering protocol. A client's
``Request`` payload (a ``ClientRequest``, or its wire bytes) goes to the
replica; a payload the ordering protocol declares its own (an operator's
membership change, a leadership transfer) goes to the ordering protocol
instead (:class:`AdminRequests`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from replicaio.core.codec import DecodeError
from replicaio.core.config import ClusterConfig, Resilience
from replicaio.core.context import Context
from replicaio.core.errors import UsageError
from replicaio.core.node import Node
from replicaio.interfaces.durable import DurableCheck, DurableView
from replicaio.smr.api import Ordering, StateMachine
from replicaio.smr.auth import ED25519, KEYED, ClientAuthenticator, SignedClients
from replicaio.smr.params import SmrConstants, SmrParams
from replicaio.smr.replica import Replica


@runtime_checkable
class AdminRequests(Protocol):
    """Optional for an ordering protocol: operator requests it handles itself
    (the payload classes are named by ``SmrFactory(admin_types=...)``)."""

    def on_admin(self, payload: Any) -> str | None:
        """Handle an operator request; return a rejection reason or ``None``."""
        ...


class SmrProtocol:
    """The node protocol of a replicated service (``NodeProtocol``)."""

    def __init__(
        self,
        context: Context,
        ordering: Ordering,
        state_machine: StateMachine,
        params: SmrParams,
        authenticator: ClientAuthenticator | None = None,
        admin_types: tuple[type, ...] = (),
        constants: SmrConstants | None = None,
        replica_type: type[Replica] = Replica,
    ) -> None:
        self.ordering = ordering
        self.state_machine = state_machine
        self.replica = replica_type(
            context.child("smr"), ordering, state_machine, params, authenticator, constants
        )
        self.admin: AdminRequests | None = None
        self.admin_types = admin_types
        self.codec = context.node.codec
        if admin_types:
            if not isinstance(ordering, AdminRequests):
                raise UsageError(f"{type(ordering).__name__} takes no admin requests (on_admin)")
            self.admin = ordering

    def start(self) -> None:
        self.replica.start()

    def footprint(self) -> dict[str, int]:
        """What this node's SMR and ordering protocol hold now (checked against
        :meth:`SmrFactory.footprint_max` by the simulator)."""
        figures = self.replica.figures()
        measured = {f"smr_{name}": figures[name] for name in SMR_BOUNDED}
        own = getattr(self.ordering, "footprint", None)
        if own is not None:
            measured.update(own())
        return measured

    def audit(self) -> list[str]:
        """Derived state that disagrees with what it derives from (ADR 0069): the
        session table's, and the ordering protocol's if it audits itself
        (``Raft.audit``)."""
        problems = self.replica.sessions.audit()
        own = getattr(self.ordering, "audit", None)
        if own is not None:
            problems.extend(own())
        return problems

    def on_request(self, payload: Any) -> str | None:
        """A client's (or operator's) payload: a message object, or its wire bytes
        (what a live client sends, and what the event log records)."""
        if type(payload) is bytes:
            try:
                payload = self.codec.decode(payload)
            except DecodeError as error:
                self.replica.context.count(f"request_undecodable_{error.reason}")
                return "bad_request"
        admin = self.admin
        if admin is not None and type(payload) in self.admin_types:
            return admin.on_admin(payload)
        return self.replica.on_request(payload)


# Replica.figures() names held by a bound (SmrFactory.footprint_max).
SMR_BOUNDED = ("sessions", "pending", "waiting", "inflight", "reads_active", "applied_waiters")

OrderingFactory = Callable[[Context], Ordering]
# (output, the ordering protocol's live object, the view, its storage prefix)
OrderingDurableCheck = Callable[[Any, Any, DurableView, str], list[tuple[str, str]]]
StateMachineFactory = Callable[[], StateMachine]
AuthenticatorFactory = Callable[[Context, SmrParams], ClientAuthenticator]
BYZANTINE = (Resilience.BYZANTINE, Resilience.BYZANTINE_TRUSTED)


def signed_clients(context: Context, params: SmrParams) -> ClientAuthenticator:
    """The default authenticator of a Byzantine fault tolerant service: client
    signatures of the scheme the node's own signatures use (``ed25519`` on a live
    cluster with Ed25519 keys; the keyed-hash stand-in in the simulator and on
    ``hmac`` clusters); see ``replicaio.smr.auth``."""
    scheme = ED25519 if context.node.signer.name == "ed25519" else KEYED
    return SignedClients(
        context.node.codec, scheme, verified_max=params.verified_max, nodes=context.node.signer,
        group=context.group,
    )


class SmrFactory:
    """Builds :class:`SmrProtocol` at every start of a node; what a host is given.

    ``constants`` are the cluster constants (``replicaio.smr.params``): the
    assembly derives them from the protocol name's parameters only, which every
    node of a cluster shares. ``authenticator`` defaults to trusted clients for
    crash-fault services and to :func:`signed_clients` for Byzantine ones."""

    def __init__(
        self,
        name: str,
        resilience: Resilience,
        ordering: OrderingFactory,
        state_machine: StateMachineFactory,
        params: SmrParams | None = None,
        *,
        ordering_path: str = "order",
        authenticator: AuthenticatorFactory | None = None,
        admin_types: tuple[type, ...] = (),
        constants: SmrConstants | None = None,
        replica_type: type[Replica] = Replica,
        ordering_footprint_max: Callable[[ClusterConfig], Mapping[str, int]] | None = None,
        ordering_durable_checks: Mapping[type, OrderingDurableCheck] | None = None,
    ) -> None:
        self.name = name
        self.resilience = resilience
        self.ordering = ordering
        self.state_machine = state_machine
        self.constants = (constants or SmrConstants()).validate()
        self.params = (params or SmrParams()).validate(self.constants)
        self.ordering_path = ordering_path
        if authenticator is None and resilience in BYZANTINE:
            authenticator = signed_clients
        self.authenticator = authenticator
        self.admin_types = admin_types
        self.replica_type = replica_type  # a test-support variant may replace it
        self.ordering_footprint_max = ordering_footprint_max
        self.ordering_durable_checks = dict(ordering_durable_checks or {})

    def footprint_max(self, config: ClusterConfig) -> dict[str, int]:
        """What a node may hold whatever clients and peers send: SMR's own
        structures by its parameters, plus the ordering protocol's bounds."""
        params = self.params
        bounds = {
            "smr_sessions": self.constants.sessions_max,
            "smr_pending": params.pending_max,
            "smr_waiting": params.waiting_max,
            "smr_inflight": params.batches_inflight_max,
            "smr_reads_active": params.reads_pending_max,
            "smr_applied_waiters": params.reads_pending_max,
        }
        if self.ordering_footprint_max is not None:
            bounds.update(self.ordering_footprint_max(config))
        return bounds

    def durable_checks(self) -> dict[type, DurableCheck]:
        """The ordering protocol's god's-eye checks (``replicaio.interfaces.durable``),
        each given the ordering protocol's live object and its storage prefix."""
        prefix = Node.storage_key((self.ordering_path,), "")

        def bound(check: OrderingDurableCheck) -> DurableCheck:
            def run(node: int, output: Any, view: DurableView) -> list[tuple[str, str]]:
                protocol = view.protocol(node)
                if not isinstance(protocol, SmrProtocol):
                    return []  # down (it cannot be: it just gave out ``output``)
                return check(output, protocol.ordering, view, prefix)

            return run

        return {kind: bound(check) for kind, check in self.ordering_durable_checks.items()}

    def __call__(self, context: Context) -> SmrProtocol:
        state_machine = self.state_machine()
        ordering = self.ordering(context.child(self.ordering_path))
        authenticator = (
            self.authenticator(context, self.params) if self.authenticator is not None else None
        )
        return SmrProtocol(
            context,
            ordering,
            state_machine,
            self.params,
            authenticator,
            self.admin_types,
            self.constants,
            self.replica_type,
        )
