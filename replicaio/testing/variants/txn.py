"""Deliberately broken variants of the transaction protocol, to prove the checkers bite.

``txn-unlock-early``: a participant releases its locks as soon as it has
prepared ("unlock before commit"), instead of at commit or abort; the effect
recorded at prepare is still applied at commit. Two transactions on one key
then prepare against the same state and the second commit overwrites the
first: lost appends and write skew, which the list-append checker names
(``incompatible-order``, ``G-single``, ``G2``) and the bank total exposes.

``txn-wait-unordered``: with bounded lock waiting, an attempt prepares in
every group at once and waits in each (the code before ordered locking): 64
clients on 3 keys hold some locks each while waiting for the others' and
starve; some commit nothing for the whole liveness phase (``liveness``).

``txn-pbft-uncertified``: PBFT groups that take votes, decisions and
acknowledgements on a node's word, without certificates (the code before
issue 12's fix, ``docs/transactions.md``): a node driving an attempt may order
``decide commit`` although a participant refused, ``commit`` where nothing was
decided, ``abort`` in a participant of a decided commit. Every group orders and
executes exactly what it is sent (its PBFT ordering is intact), so one
Byzantine node driving as a liar (the simulator's ``txn_lying_driver``,
``replicaio.sim.txn_adversary``) breaks atomicity: the bank total changes.

``txn-pbft-unsigned-requests``: PBFT groups that take certificates but
prepare whatever operations a driver sends (the code before client-signed
requests): a Byzantine node driving an attempt may change what its client
asked (``txn_altering_driver``: a credit raised, an element changed, one
group's part dropped), every certificate being genuine; the bank total breaks.

``txn-pbft-replayable``: PBFT groups that check signed requests but keep no
per-client nonce windows (the code before ADR 0030): once a group's bounded
tables forgot an attempt (``finished_max``, ``coordinated_max``; run with
``txn-pbft-replayable:remember=16`` so they do within a run), a Byzantine
node that kept the client's signed request drives it again
(``txn_replaying_driver``) and it executes a second time: an element appended
twice (``duplicate-elements``).

``txn-raft-first-group-repairs``: Raft groups where only group 0's replica
honours a damaged disk (``Start.damaged``); the node's other replicas lost the
same suffix of the one storage they share, yet keep their disk identity and
vote and count at once with the votes and entries they lost (a repair done for
the first group only). Under ``--faults ...,disk`` the swarm finds two leaders
of one term, or a restart below what the node had applied.

``txn-pbft-no-vouch``: PBFT groups whose replicas never send, in the current
view, a COMMIT for a batch they executed in an older one (the code before
2026-12-06). With disk faults, a damaged disk's replica withholds its votes,
so only 2f+1 replicas vote; one that lost the COMMITs of its view for a number
waits for ever, the others executed it and wait for nothing, and the group
stalls with a transaction's locks held (``locks_released``).

``txn-kv-pbft-gateway-tryagain``: the sharded Redis store over PBFT groups,
its simulated clients the gateway (``sim.txn_harness``: every attempt to every
node, f+1 matching outcomes) as it was before 2026-12-05: a late driver whose
``begin`` finds the attempt committed answers ``unknown already_decided`` (its
results come from the commits it did not see), the gateway asks nobody again
and answers ``TRYAGAIN``, and the Redis client sends the same commands again
as a new attempt: a committed attempt applies twice (an element appended
twice, ``duplicate-elements``).

``txn-pbft-late-unknown``: transactions over PBFT groups, its simulated
clients ``TxnClient(replies=f+1)`` as it was before 2026-12-06 (every attempt
to every node, f+1 matching outcomes, nobody asked again: ``reasks=0``), and
a driver that finds an attempt that reads committed by another driver (at
``begin``, or on votes it did not see) answers ``unknown already_decided``
instead of fetching its reads from the participants' commits: a committed
attempt reported unknown to its client (``txn_unknown_after_heal`` after the
heal; ``info`` before).

``txn-minbft-suspects-alone``: MinBFT groups whose backup, suspecting its
primary, only asks for a view change (the code before 2026-12-06,
``variants.minbft.SuspectsAlone``): with the primary kept down
(``degraded``) and every client through one node (``fronts=1``, single-key
attempts with ``--ops-max 1``), that node's replica is the only one waiting,
its request is not f+1, and the group stalls (liveness).
``txn-pbft-suspects-alone`` is the same over PBFT groups
(``variants.pbft.SuspectsAlone``): the lone VIEW-CHANGE is fewer than the f+1
the other backups join on.

``txn-minbft-vouch-unbound``: MinBFT groups whose nodes sign their vouch
for an in-node request over the request alone, and whose groups check every
node's vouch so (``UnboundVouchNode``, the code before the vouch was signed
in the group's signing domain). In-node client ids carry no group (a node's
sessions are per group), so a Byzantine node replays a correct node's vouched
request of one group into another, where the correct node's session has the
same client id; the group executes it at that (client, seq), and the correct
node's own next call there is answered with the replayed command's cached
result (``txn-minbft`` seed 50 under ``silent,forge``: an ``IndexError`` in a
correct node; ``tests/test_vouch_group_domain.py``).

``txn-pbft-drops-carried``: PBFT groups whose replica, having entered a view
below the NEW-VIEW's checkpoint (it fetched the state after), never takes the
NEW-VIEW's PRE-PREPAREs that were above its window at the entry
(``variants.pbft.DropsCarried``, the code before
``ViewChanges.accept_carried``). When that replica is the view's primary, it
takes no PRE-PREPARE from anyone else and never executes those numbers; with
a node kept down (``degraded``), no checkpoint above gets 2f+1 signatures, the
window fills and a transaction's lock is never released (``locks_released``).
Its nodes tick as ``txn-pbft-leader-ticks-only``'s do: the ticks of a stalled
clock would bring a view change, which repairs the group later (100 seeds of
the variant with them passed), so they are off to show the PBFT part alone.

``txn-pbft-leader-ticks-only``: transactions over PBFT groups where only the
node hosting a group's leader ticks its lease clock (``TxnNode.clock_stalled``
never true, the code before): a group whose primary is kept down and which has
nothing else to order (its one open transaction's driver died) has backups
that wait for nothing, so no view change comes, no lease runs out, and the
transaction's locks stay (``locks_released``).

``txn-pbft-vouch-commits-only``: PBFT groups whose replicas vouch for a batch
they executed in an older view (or before a restart) with a COMMIT of the
current view but no PREPARE (``variants.pbft.VouchesCommitsOnly``): a primary
whose backups restarted after executing a number holds its PRE-PREPARE and
their COMMITs but none of their PREPAREs, is never prepared there, and the
group stalls as above (its nodes tick as ``txn-pbft-leader-ticks-only``'s).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from replicaio.services.txn.kv_store import KvTxnStore
from replicaio.services.txn.outcomes import GatewayRule
from replicaio.services.txn.protocol import Plan, SignedTxnRequest, TxnFactory, TxnNode, TxnRequest
from replicaio.services.txn.store import PREPARED, TxnStore
from replicaio.smr.api import AuthenticatedRequest, ClientRequest
from replicaio.smr.auth import NodeClientSigner, SignedClients
from replicaio.testing.variants.minbft import MinbftGroupUnbound, MinbftSuspectsAlone
from replicaio.testing.variants.pbft import (
    PbftCommitOffByOne,
    PbftDropsCarried,
    PbftNoVouchForExecuted,
    PbftSuspectsAlone,
    PbftVouchesCommitsOnly,
)
from replicaio.testing.variants.raft import RaftOnlyFirstGroupRepairs


class UnlockEarlyStore(TxnStore):
    """Releases a transaction's locks right after preparing it."""

    def on_prepare(self, client: int, nonce: int, coordinator: int, ops: Any,
                   participants: Any = (), signed: Any = None) -> list[Any]:
        answer = super().on_prepare(client, nonce, coordinator, ops, participants, signed)
        txn = (client, nonce)
        record = self.prepared.get(txn)
        if answer[0] == PREPARED and record is not None:
            self.release(txn, record)
        return answer

    def on_commit(self, client: int, nonce: int, certificate: Any = None) -> list[Any]:
        record = self.prepared.get((client, nonce))
        if record is not None:  # take the locks back just to pass the effect check
            for key in record.keys:
                self.locks[key] = (client, nonce)
        return super().on_commit(client, nonce, certificate)


class UncertifiedNode(TxnNode):
    """Its groups take every vote, decision and acknowledgement uncertified."""

    def certifies(self, factory: TxnFactory) -> bool:
        return False


class UnorderedWaitNode(TxnNode):
    """Prepares in every participant at once even when it waits for locks."""

    async def prepare(self, request: TxnRequest, plan: Plan, participants: list[int],
                      coordinator: int, signed: SignedTxnRequest | None = None
                      ) -> list[tuple[tuple[Any, ...], Any] | None]:
        return await self.together(*(
            self.prepare_in(group, request, [op for _, op in plan[group]], coordinator,
                            participants, signed=signed)
            for group in participants))


class UnsignedRequestsNode(TxnNode):
    """Its groups take certificates but prepare operations unchecked against the
    client's signed request."""

    def checks_requests(self) -> bool:
        return False


class ReplayableNode(TxnNode):
    """Its groups check signed requests but refuse no copy of one they forgot."""

    def guards_replays(self) -> bool:
        return False


class LateUnknownNode(TxnNode):
    """A driver that finds its attempt committed by another answers ``unknown``
    (without the results of a key-value attempt's commits)."""

    async def finish_decided(self, request: TxnRequest, plan: Plan, participants: list[int],
                             coordinator: int, decision_proof: Any) -> None:
        self.answer_decided(request, plan)


class LateReadsUnknownNode(TxnNode):
    """A driver that finds an attempt that reads committed by another driver
    answers ``unknown`` (its reads were in votes it did not see)."""

    def reads_late(self, plan: Plan) -> bool:
        return False


class UnboundVouch(NodeClientSigner):
    """Signs a node's in-node request over the request alone, whatever group it
    is for (the code before the vouch was bound to its group's signing domain)."""

    def wrap(self, request: ClientRequest, group: int | None = None) -> AuthenticatedRequest:
        return super().wrap(request, None)


class UnboundVouchNode(TxnNode):
    """Its vouches for in-node requests are signed, and its groups check every
    node's vouches, without the group (``group_domain(None, ...)``): a vouch
    for a call into one group of a node verifies in every group of it."""

    def start(self) -> None:
        for replica in self.groups.replicas:
            authenticator = replica.replica.authenticator
            if isinstance(authenticator, SignedClients):
                authenticator.group = None
        super().start()
        caller = self.caller
        assert caller is not None
        caller.vouch = UnboundVouch(caller.vouch.codec, caller.vouch.signer)


class LeaderTicksOnlyNode(TxnNode):
    """Only the node hosting a group's leader ticks its lease clock, however long
    the clock stands still."""

    def clock_stalled(self, group: int, store: TxnStore) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class TxnVariant:
    summary: str
    node_type: type[TxnNode] = TxnNode
    store_type: type[TxnStore] = TxnStore
    ordering: str = "raft"
    # The ordering's class when a variant breaks the groups' ordering itself
    # (``None``: the ordering's own).
    ordering_type: type[Any] | None = None
    # The simulator's clients are gateways with this rule (``None``: as asked).
    gateway: GatewayRule | None = None


TXN_VARIANTS: dict[str, TxnVariant] = {
    "txn-unlock-early": TxnVariant(
        "a participant unlocks at prepare, before the commit", store_type=UnlockEarlyStore),
    "txn-wait-unordered": TxnVariant(
        "bounded lock waiting in every group at once (no lock order): clients starve "
        "under high contention (run with wait=400, 64 clients, 3 keys)",
        node_type=UnorderedWaitNode),
    "txn-pbft-uncertified": TxnVariant(
        "PBFT groups taking votes and decisions without certificates (one Byzantine "
        "driver breaks atomicity: run with --byzantine 1 --behaviour txn_lying_driver)",
        node_type=UncertifiedNode, ordering="pbft"),
    "txn-pbft-unsigned-requests": TxnVariant(
        "PBFT groups preparing operations a driver changed (certificates, but no check of "
        "the client's signed request: run with --byzantine 1 --adversary "
        "txn_altering_driver)", node_type=UnsignedRequestsNode, ordering="pbft"),
    "txn-pbft-replayable": TxnVariant(
        "PBFT groups without per-client nonce windows: a copy of a signed attempt they forgot "
        "executes again (run txn-pbft-replayable:remember=16 with --byzantine 1 --adversary "
        "txn_replaying_driver)", node_type=ReplayableNode, ordering="pbft"),
    "txn-minbft-group-unbound": TxnVariant(
        "MinBFT groups whose USIGs name no group: a UI one group's USIG gave on a node "
        "verifies in every group of that node (tests/test_txn_minbft.py)",
        ordering="minbft", ordering_type=MinbftGroupUnbound),
    "txn-minbft-vouch-unbound": TxnVariant(
        "MinBFT groups whose nodes vouch for in-node requests without the group: a "
        "Byzantine node replays a correct node's vouched request of one group into another, "
        "where the same (client, seq) answers the correct node's next call with the replayed "
        "command's result (run with --byzantine 1 --adversary silent,forge)",
        node_type=UnboundVouchNode, ordering="minbft"),
    "txn-raft-first-group-repairs": TxnVariant(
        "Raft groups where only group 0 honours a damaged disk: the node's other groups "
        "vote and count at once with the log and vote they lost (run with --faults "
        "...,disk)", ordering_type=RaftOnlyFirstGroupRepairs),
    "txn-pbft-no-vouch": TxnVariant(
        "PBFT groups whose replicas never vouch for a batch they executed in an older view: "
        "with a damaged disk's replica withholding, a group can stall with locks held (run "
        "with --nodes 4 --faults ...,disk)", ordering="pbft",
        ordering_type=PbftNoVouchForExecuted),
    "txn-pbft-vouch-commits-only": TxnVariant(
        "PBFT groups whose replicas vouch for a batch executed in an older view with a "
        "COMMIT only, never a PREPARE: a primary that lost its backups' PREPAREs stays "
        "stuck below them (run txn-pbft-vouch-commits-only:fronts=1 --ops-max 1 --nodes 4 "
        "--faults ...,degraded; only the leader's node ticks, as in "
        "txn-pbft-leader-ticks-only)", node_type=LeaderTicksOnlyNode, ordering="pbft",
        ordering_type=PbftVouchesCommitsOnly),
    "txn-pbft-drops-carried": TxnVariant(
        "PBFT groups whose replicas never take the PRE-PREPAREs of their view's NEW-VIEW "
        "that were above their window when they entered it: such a primary never executes "
        "them (run txn-pbft-drops-carried:fronts=1 --ops-max 1 --nodes 4 --faults "
        "...,degraded; only the leader's node ticks, as in txn-pbft-leader-ticks-only)",
        node_type=LeaderTicksOnlyNode, ordering="pbft", ordering_type=PbftDropsCarried),
    "txn-pbft-leader-ticks-only": TxnVariant(
        "transactions over PBFT groups where only the leader's node ticks a group's lease "
        "clock: an idle group whose primary is down never runs a lease out (run "
        "txn-pbft-leader-ticks-only:fronts=1 --ops-max 1 --nodes 4 --faults ...,degraded)",
        node_type=LeaderTicksOnlyNode, ordering="pbft"),
    "txn-minbft-suspects-alone": TxnVariant(
        "MinBFT groups whose backup suspecting the primary forwards nothing: with the "
        "primary down and clients through one node, the view change never gets f+1 (run "
        "txn-minbft-suspects-alone:fronts=1 --ops-max 1 --faults ...,degraded)",
        ordering="minbft", ordering_type=MinbftSuspectsAlone),
    "txn-pbft-suspects-alone": TxnVariant(
        "PBFT groups whose backup suspecting the primary forwards nothing: with the primary "
        "down and clients through one node, the others never join its VIEW-CHANGE (run "
        "txn-pbft-suspects-alone:fronts=1 --ops-max 1 --faults ...,degraded)",
        ordering="pbft", ordering_type=PbftSuspectsAlone),
    "txn-pbft-commit-off-by-one": TxnVariant(
        "PBFT groups committing on 2f COMMITs instead of 2f+1 (run with --nodes 4 "
        "--byzantine 1 --adversary pbft_equivocate: the group's equivocating primary, "
        "its lies signed in the group's domain, splits a number)", ordering="pbft",
        ordering_type=PbftCommitOffByOne),
    "txn-kv-pbft-gateway-tryagain": TxnVariant(
        "the gateway before 2026-12-05 over txn-kv-pbft: a late driver of a committed "
        "attempt answers unknown, the gateway TRYAGAIN, the Redis client sends it again as a "
        "new attempt (applied twice)", node_type=LateUnknownNode, store_type=KvTxnStore,
        ordering="pbft", gateway=GatewayRule(reasks=0, unknown_retried=True)),
    "txn-pbft-late-unknown": TxnVariant(
        "the f+1 Python client before 2026-12-06 over txn-pbft: a late driver of a "
        "committed attempt that reads answers unknown, and the client asks nobody again",
        node_type=LateReadsUnknownNode, ordering="pbft", gateway=GatewayRule(reasks=0)),
}
