"""Simulated transaction clients for transactional clusters (``txn``), and their checks.

Theory of operation
-------------------
A :class:`TxnHarness` drives G Raft groups hosted on n nodes (every node one
replica of each group; ``replicaio.services.txn``) with closed-loop clients:

* **Workloads.** *list-append*: each transaction is 1 to ``ops_max``
  micro-operations over ``keys`` keys (spread over the groups by hash slot):
  appends of elements unique per key, and reads. *bank*: ``accounts``
  accounts funded once (a deposit guarded by ``check`` of version 0, so a
  retried deposit never doubles, and not part of the history), then
  transfers (``add -x``, ``add x``) and reads of every account.
* **Attempts.** Every attempt has a fresh id (client id, nonce) and goes to a
  seeded node, which drives it (``TxnRequest``). ``committed`` is recorded
  ``ok`` with its reads, ``aborted`` is ``fail`` (the client goes on; its
  next attempt has a new nonce), ``unknown`` or silence for
  ``attempt_timeout_us`` is ``info`` and the client continues under a new id.
* **txn-kv.** A sharded key-value cluster gets the same workloads as a
  Redis client's ``MULTI``/``EXEC`` across groups sends them
  (``txn_kv_ops``), with ``WATCH``: a list-append attempt also reads the
  versions of the keys it reads, and a third of a client's attempts check
  a version it read before (aborted ``version`` if the key changed since).
* **Gateway clients** (``txn-kv-pbft:gateway=1``, or a variant's rule): a
  client is what ``replicaio kv gateway`` is, with the same rule
  (``services.txn.outcomes``): its signed attempt goes to every node (after
  the heal, every correct one), every node's answer is taken at face value
  (a Byzantine driver's too), an outcome needs f+1 matching definite
  answers, and once every node asked answered (or ``attempt_timeout_us``
  passed) without one, the nodes without a definite answer are asked the
  same signed attempt again (``GatewayRule.reasks`` times); then ``unknown``
  (``info``). With ``unknown_retried`` (the variant
  ``txn-kv-pbft-gateway-tryagain``) an unknown outcome is TRYAGAIN and the
  client sends the same operations again as a new attempt, as a Redis
  client does.
* **Nemesis.** With the crash fault, about every ``nemesis_every_us`` during
  the safety phase the harness picks a transaction in flight and crashes
  the node that leads its *coordinator group* (learnt from the groups'
  leader outputs), half the time inside a step: a coordinator's leader
  crashed mid-transaction.
* **Checks.** Every group's Raft checkers see that group's outputs as they
  happen. At the end, the history goes to ``replicaio.check.transactions``:
  strict serializability (list-append) or the bank total. Liveness: after
  the heal every client completes a transaction invoked after it, and every
  replica of every group reports no lock held and no open coordinator
  record (``LockReport``): nothing stays locked once the leases run out (for
  PBFT groups: n - f replicas of each, see ``clean_quorum``). Then ``prompt``
  (ADR 0074, ``settled``): waves of transactions, each answered with a
  definite outcome on its one attempt within ``attempt_timeout_us``.

Everything random comes from ``random.Random`` seeded by the run's seed.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import replicaio.sim.txn_adversary  # noqa: F401  (registers the lying driver)
from replicaio.assembly import TransactionalSpec, raft_leader_of, transactional_spec
from replicaio.check.broadcast import Violation
from replicaio.check.transactions import (
    BANK,
    LIST_APPEND,
    TransactionCheckResult,
    TransactionRecorder,
    check_transactions,
)
from replicaio.check.transactions.history import ADD, APPEND, READ, Transaction
from replicaio.core.codec import Codec
from replicaio.core.config import ClusterConfig
from replicaio.core.errors import UsageError
from replicaio.core.stream import GroupOutput
from replicaio.services.txn.kv_store import KvTxnStore
from replicaio.services.txn.outcomes import GatewayRule, OutcomeVotes
from replicaio.services.txn.protocol import (
    ALREADY_DECIDED,
    LockReport,
    SignedTxnRequest,
    TxnRequest,
    TxnResult,
)
from replicaio.services.txn.slots import SlotMap
from replicaio.services.txn.store import CHECK, COMMITTED, request_bytes
from replicaio.sim.harness import HarnessApi
from replicaio.sim.kv_harness import KvWorkload, kv_options
from replicaio.sim.options import Crash, SimOptions
from replicaio.sim.txn_kv_ops import (
    COUNTERS,
    LISTS,
    ReplyError,
    read_of,
    to_kv,
    version_of,
    version_op,
)
from replicaio.smr.auth import SIMULATION_CLIENT_SECRET, client_key

EXTRA_KEY = "txn"


@dataclass(frozen=True, slots=True)
class TxnWorkload:
    workload: str = LIST_APPEND
    clients: int = 6
    transactions: int = 120
    keys: int = 6
    ops_max: int = 4
    accounts: int = 5
    balance: int = 10
    attempt_timeout_us: int = 1_500_000
    think_us_max: int = 30_000
    nemesis_every_us: int = 700_000
    # Waves of probes once the cluster has settled after the heal, every
    # transaction in them held to ``prompt`` (TxnHarness.settled; 0: none).
    prompt_waves: int = 3

    def validate(self) -> TxnWorkload:
        if self.workload not in (LIST_APPEND, BANK):
            raise UsageError(f"workload is {LIST_APPEND} or {BANK}")
        for name in self.__dataclass_fields__:
            if name != "workload" and getattr(self, name) < 0:
                raise UsageError(f"{name} must be >= 0")
        if self.clients < 1 or self.keys < 1 or self.ops_max < 1 or self.accounts < 2:
            raise UsageError("clients, keys, ops_max >= 1 and accounts >= 2")
        return self

    @classmethod
    def from_options(cls, options: SimOptions) -> TxnWorkload:
        return cls(**dict(options.extra.get(EXTRA_KEY) or {})).validate()


def txn_options(seed: int, nodes: int, faults: tuple[str, ...], workload: TxnWorkload,
                *, encode: bool = True, byzantine: int = 0,
                adversary: tuple[str, ...] | None = None,
                protocol: str | None = None) -> SimOptions:
    """The KV runs' seeded network and faults, sized for ``workload``; ``byzantine``
    nodes behave as ``adversary`` says, else as the seed draws for ``protocol``
    (BFT groups only; ``txn_adversary``'s lying driver is always in the mix)."""
    sizing = KvWorkload(clients=workload.clients, ops=workload.transactions)
    safety_us = max(4_000_000, workload.transactions * 200_000 // workload.clients)
    disks = protocol is not None and takes_disk_faults(protocol)
    kinds = tuple(kind for kind in faults if kind != "disk" or disks)
    options = kv_options(seed, nodes, kinds, sizing,
                         encode=encode, safety_us=safety_us, byzantine=byzantine,
                         adversary=adversary, protocol=protocol)
    return replace(options, extra={EXTRA_KEY: asdict(workload.validate())})


def takes_disk_faults(protocol: str) -> bool:
    """Whether transaction runs of ``protocol`` take disk faults: whenever its
    groups' ordering recovers what a damaged disk lost from its peers
    (``assembly.recovers_lost_state``). A node's groups share its storage, so a
    damaged disk damages every group's log on it, and each group's replica
    recovers its own: Raft rejoins like a replaced disk, PBFT withholds its
    votes until a stable checkpoint passes them, MinBFT goes inert until the
    operator admits a new USIG epoch for that group (``sim/operator.py``)."""
    from replicaio.assembly import recovers_lost_state

    return transactional_spec(protocol) is not None and recovers_lost_state(protocol)


@dataclass(slots=True)
class Client:
    client_id: int
    nonce: int = 0
    handle: int | None = None
    node: int = -1
    ops: list[tuple[str, str, Any]] = field(default_factory=list)
    ok_after_heal: bool = False
    timeout_token: int = 0
    # txn-kv, list-append: keys whose versions the attempt in flight reads (after
    # its operations; then its WATCH check, if any), and the versions read so far.
    version_reads: list[bytes] = field(default_factory=list)
    watching: bool = False
    versions: dict[bytes, int] = field(default_factory=dict)
    # Gateway clients: the attempt's encoded ops, its signed payload, its answers.
    sent_ops: bytes = b""
    payload: bytes = b""
    votes: OutcomeVotes | None = None
    # ``prompt``: the transaction in flight is a probe, its wave's start, and
    # whether it was found not prompt (reported once).
    probe: bool = False
    probe_at_us: int = 0
    probe_missed: bool = False


class TxnHarness:
    """See the module docstring."""

    def __init__(self, config: ClusterConfig, groups: int, spec: TransactionalSpec,
                 gateway: GatewayRule | None = None, fronts: int = 0) -> None:
        self.config = config
        # Gateway clients (see the module docstring): their rule, else ``None``.
        self.gateway = gateway
        self.slots = SlotMap.even(groups)
        self.checkers = [spec.checkers(config) for _ in range(groups)]
        # Replicas of a group that must end with nothing held: all of them for a
        # crash-tolerant ordering (followers catch up by heartbeats); n - f for a
        # BFT one, whose replica left behind in an idle group need not catch up
        # (its stale view holds no lock the group's log does).
        self.clean_quorum = (config.n if spec.ordering == "raft"
                             else config.n - config.f)
        self.correct = [node for node in range(config.n) if node not in config.byzantine]
        self.down: set[int] = set()  # kept down for good (the degraded kind)
        # ``fronts=K``: after the heal every attempt goes to one of K correct
        # nodes up (drawn at the heal), as when every client connects to one
        # node's Redis port; 0: any node, as before.
        self.fronts_wanted = fronts
        self.fronts: list[int] = []
        self.leaders: dict[int, tuple[int, int]] = {}  # group -> (term, node)
        self.reports: dict[tuple[int, int], LockReport] = {}
        self.codec = Codec()
        self.violations: list[Violation] = []
        self.history: TransactionCheckResult | None = None
        # A sharded key-value cluster (txn-kv) runs the workloads as key-value
        # commands (``txn_kv_ops``): LISTS or COUNTERS say how reads come back.
        self.key_value = issubclass(spec.store_type, KvTxnStore)
        # Clients of BFT groups sign their requests (the simulator's ``keyed``
        # scheme, as SMR's clients: ``smr.auth``), and the groups check them.
        self.signs = spec.ordering != "raft"
        self.reads = LISTS
        self.api: HarnessApi | None = None
        self.clients: list[Client] = []
        self.by_id: dict[int, Client] = {}
        self.next_client = 1
        self.issued = 0
        self.healed = False
        self.healed_at = 0.0
        self.funded = False
        self.crashes = 0
        self.outcomes: dict[str, int] = {}
        # ``prompt`` (see ``settled``), as KvHarness's.
        self.settled_at: int | None = None
        self.probes_from: int | None = None
        self.waves_left = 0
        self.wave_open = 0
        self.probes = 0
        self.probe_latency_max_us = 0
        self.prompt_missed: list[str] = []

    # -- set-up ------------------------------------------------------------------

    def bind(self, api: HarnessApi) -> None:
        self.api = api

    def requests(self, options: SimOptions) -> list[tuple[int, int, Any]]:
        assert self.api is not None
        self.options = options
        self.workload = TxnWorkload.from_options(options)
        self.reads = COUNTERS if self.workload.workload == BANK else LISTS
        self.rng = random.Random(f"replicaio-txn:{options.seed}")
        self.recorder = TransactionRecorder(lambda: float(self.api.now()) if self.api else 0.0)
        self.elements: dict[str, int] = {}
        for _ in range(self.workload.clients):
            self.clients.append(self.new_client())
        api = self.api
        api.call_at(options.safety_us + 1, self.on_heal)
        if self.workload.workload == BANK:
            self.fund(self.clients[0])
        else:
            self.start_clients()
        if "crash" in options.faults and self.workload.nemesis_every_us:
            api.call_at(self.workload.nemesis_every_us, self.nemesis)
        return []

    def new_client(self) -> Client:
        client = Client(self.next_client)
        self.next_client += 1
        self.by_id[client.client_id] = client
        return client

    def start_clients(self) -> None:
        assert self.api is not None
        for client in self.clients:
            self.next_transaction(client)

    # -- transactions --------------------------------------------------------------

    def fund(self, client: Client) -> None:
        ops: list[list[Any]] = []
        for account in range(self.workload.accounts):
            key = f"a{account}".encode()
            ops += [["check", key, 0], ["add", key, self.workload.balance]]
        self.send(client, ops, None)

    def draw(self) -> list[tuple[str, str, Any]]:
        rng, workload = self.rng, self.workload
        if workload.workload == BANK:
            if rng.random() < 0.3:
                return [(READ, f"a{a}", None) for a in range(workload.accounts)]
            source, target = rng.sample(range(workload.accounts), 2)
            amount = rng.randrange(1, 6)
            return [(ADD, f"a{source}", -amount), (ADD, f"a{target}", amount)]
        ops: list[tuple[str, str, Any]] = []
        for _ in range(rng.randrange(1, workload.ops_max + 1)):
            key = f"k{rng.randrange(workload.keys)}"
            if rng.random() < 0.5:
                element = self.elements.get(key, 0) + 1
                self.elements[key] = element
                ops.append((APPEND, key, element))
            else:
                ops.append((READ, key, None))
        return ops

    def begin(self, client: Client) -> None:
        assert self.api is not None
        if client.handle is not None or self.by_id.get(client.client_id) is not client:
            return
        if not self.healed and self.issued >= self.workload.transactions:
            return
        if self.healed and client.ok_after_heal and self.groups_settled():
            return  # (a client goes on while a group has committed nothing since the heal)
        self.issue(client)

    def issue(self, client: Client) -> None:
        """``client``'s next transaction, drawn and sent now."""
        self.issued += 1
        ops = self.draw()
        client.ops = ops
        handle = self.recorder.invoke(client.client_id, ops)
        self.send(client, [[kind, key.encode(), value] for kind, key, value in ops], handle)

    def send(self, client: Client, ops: list[list[Any]], handle: int | None) -> None:
        assert self.api is not None
        client.nonce += 1
        client.handle = handle
        client.node = self.rng.randrange(self.config.n)
        if self.healed and (client.node in self.config.byzantine or client.node in self.down):
            # Liveness asks correct drivers: a Byzantine one's answers prove nothing,
            # and a client that asked it in vain would move on to another node.
            client.node = self.rng.choice(self.correct)
        if self.fronts:
            client.node = self.rng.choice(self.fronts)
        client.timeout_token += 1
        token = client.timeout_token
        if self.key_value:
            watch = self.watch_ops(client, ops) if handle is not None else []
            ops = [to_kv(kind, key, value, self.reads) for kind, key, value in ops] + watch
        encoded = self.codec.encode_value(ops)
        if self.gateway is not None:
            self.send_to_all(client, encoded)
            return
        request = TxnRequest(client.client_id, client.nonce, encoded)
        self.api.request(client.node, self.codec.encode(
            self.signed(request) if self.signs else request))
        self.api.call_at(self.api.now() + self.workload.attempt_timeout_us,
                         lambda: self.on_timeout(client, token))

    # -- gateway clients ----------------------------------------------------------

    def send_to_all(self, client: Client, ops: bytes) -> None:
        """A gateway's attempt: signed, to every node (every correct one after the
        heal, as a client gives up on a node that never answers)."""
        assert self.api is not None and self.gateway is not None
        client.sent_ops = ops
        request = TxnRequest(client.client_id, client.nonce, ops)
        client.payload = self.codec.encode(self.signed(request))
        nodes = self.correct if self.healed else range(self.config.n)
        first = self.config.f + 1 if self.gateway.first_wave else None
        client.votes = OutcomeVotes(client.client_id, client.nonce, self.config.f + 1, nodes,
                                    self.gateway.reasks, first)
        self.ask(client, client.votes.asked)

    def ask(self, client: Client, nodes: list[int]) -> None:
        assert self.api is not None and client.votes is not None
        client.timeout_token += 1
        token = client.timeout_token
        for node in nodes:
            self.api.request(node, client.payload)
        # The first wave (f+1 nodes) gets a third of the time before the others are asked.
        wait_us = self.workload.attempt_timeout_us
        if len(client.votes.asked) < len(client.votes.nodes):
            wait_us //= 3
        self.api.call_at(self.api.now() + wait_us,
                         lambda: self.on_round_timeout(client, token))

    def on_round_timeout(self, client: Client, token: int) -> None:
        """No match in time: the nodes not asked yet are asked; else the silent
        ones count as answering nothing."""
        if token != client.timeout_token or client.votes is None:
            return
        wider = client.votes.widen()
        if wider:
            self.count("gateway_widened")
            self.ask(client, wider)
            return
        for node in client.votes.silent():
            client.votes.heard(node, None)
        self.settle(client)

    def on_gateway_answer(self, node: int, result: TxnResult) -> None:
        client = self.by_id.get(result.client)
        if client is None or result.nonce != client.nonce or client.votes is None:
            return  # an earlier attempt's late answer
        client.votes.heard(node, result)
        self.settle(client)

    def settle(self, client: Client) -> None:
        """The outcome once f+1 match; else, once every node asked answered, the
        undecided asked again, or (no re-ask left) unknown."""
        assert self.api is not None and self.gateway is not None
        votes = client.votes
        assert votes is not None
        outcome = votes.matched()
        if outcome is None and (votes.short() or votes.complete()):
            wider = votes.widen()  # the first wave cannot settle it: ask the others
            if wider:
                self.count("gateway_widened")
                self.ask(client, wider)
                return
        if outcome is None and not votes.complete():
            return
        if outcome is None:
            again = votes.reask()
            if again:
                self.count("gateway_reasks")
                client.timeout_token += 1
                token = client.timeout_token
                delay = self.rng.randrange(1, self.workload.think_us_max + 1)
                self.api.call_at(self.api.now() + delay,
                                 lambda: self.reask(client, token, again))
                return
            outcome = votes.unknown()
            self.unknown_decided(client, votes)
            if self.gateway.unknown_retried:
                # TRYAGAIN: the Redis client sends the same commands again, anew.
                self.count("gateway_tryagain")
                client.nonce += 1
                self.send_to_all(client, client.sent_ops)
                return
        client.votes = None
        self.on_result(outcome)

    def unknown_decided(self, client: Client, votes: OutcomeVotes) -> None:
        """A gateway client (``TxnClient(replies=f+1)``, the Redis gateway) must not
        be told ``unknown`` when f+1 correct nodes knew the attempt committed: each
        answered ``committed`` (with its reads: not ``replies_lost``), or
        ``unknown already_decided`` (its driver found the
        decision, certified, but answered without the reads: the rule before
        2026-12-06, kept as a variant; now it fetches them from the participants'
        commits). ``txn_unknown_decided``."""
        knew = sorted(node for node, answer in votes.answers.items()
                      if node not in self.config.byzantine and (
                          (answer.outcome == COMMITTED and not answer.reason)
                          or answer.reason == ALREADY_DECIDED))
        if len(knew) <= self.config.f:
            return
        heard = ", ".join(f"node {node}: {answer.outcome} {answer.reason}".strip()
                          for node, answer in sorted(votes.answers.items()))
        self.violations.append(Violation(
            "txn_unknown_decided",
            f"client {client.client_id} attempt {client.nonce}: correct nodes {knew} knew it "
            f"committed, the client was told unknown ({heard})"[:600],
            None, self.api.now() if self.api is not None else 0))

    def reask(self, client: Client, token: int, nodes: list[int]) -> None:
        if token == client.timeout_token and client.votes is not None:
            self.ask(client, nodes)

    def signed(self, request: TxnRequest) -> SignedTxnRequest:
        """``request`` with its client's signature (``keyed``: a keyed hash)."""
        data = request_bytes(self.codec, request.client, request.nonce, request.ops)
        key = client_key(SIMULATION_CLIENT_SECRET, request.client)
        return SignedTxnRequest(request, b"", hmac.digest(key, data, hashlib.sha256))

    def watch_ops(self, client: Client, ops: list[list[Any]]) -> list[list[Any]]:
        """txn-kv, list-append: the version reads and the WATCH check sent after
        ``ops`` (``txn_kv_ops``); none for the bank."""
        client.version_reads, client.watching = [], False
        if self.reads != LISTS:
            return []
        client.version_reads = list(dict.fromkeys(key for kind, key, _ in ops if kind == READ))
        extra = [version_op(key) for key in client.version_reads]
        if client.versions and self.rng.random() < 1 / 3:
            key = self.rng.choice(sorted(client.versions))
            extra.append([CHECK, key, client.versions[key]])
            client.watching = True
        return extra

    def on_timeout(self, client: Client, token: int) -> None:
        if token != client.timeout_token or self.by_id.get(client.client_id) is not client:
            return
        self.give_up(client)

    def give_up(self, client: Client) -> None:
        """Unknown outcome: ``info``; the client continues under a new id."""
        if client.handle is not None:
            self.recorder.info(client.handle)
        funding = client.handle is None and not self.funded
        self.count("info")
        del self.by_id[client.client_id]
        successor = self.new_client()
        self.clients[self.clients.index(client)] = successor
        if client.probe:
            self.miss(client, "no definite outcome (timed out or unknown)")
            successor.ok_after_heal = True  # it takes the slot's place in the waves
            self.end_probe(client)
        if funding:
            self.fund(successor)
        else:
            self.next_transaction(successor)

    def next_transaction(self, client: Client) -> None:
        assert self.api is not None
        delay = self.rng.randrange(1, self.workload.think_us_max + 1)
        self.api.call_at(self.api.now() + delay, lambda: self.begin(client))

    def on_result(self, result: TxnResult) -> None:
        client = self.by_id.get(result.client)
        if client is None or result.nonce != client.nonce:
            return  # an earlier attempt's late answer (it was recorded already)
        client.timeout_token += 1
        self.count(result.outcome)
        if result.outcome == "unknown":
            self.give_up(client)
            return
        handle, client.handle = client.handle, None
        if handle is None:  # the bank's deposit
            if result.outcome == "committed" or result.reason == "version":
                self.funded = True
                self.start_clients()
            else:
                self.fund(client)
            return
        if result.outcome == "committed":
            reads: Any = self.codec.decode_value(result.reads)  # one entry per op
            if self.key_value:
                reads = self.key_value_reads(client, reads)
                if reads is None:  # committed, but what it read was not heard
                    client.handle = handle
                    self.give_up(client)  # info; the client goes on under a new id
                    return
            recorded = []
            for (kind, key, value), read in zip(client.ops, reads, strict=True):
                recorded.append((kind, key, read if kind == READ else value))
            self.recorder.ok(handle, recorded)
            if self.healed and self.recorder.done[-1].call >= self.healed_at:
                client.ok_after_heal = True
        else:
            self.recorder.fail(handle)
        if client.probe:
            assert self.api is not None
            latency = self.api.now() - client.probe_at_us
            self.probe_latency_max_us = max(self.probe_latency_max_us, latency)
            if latency > self.workload.attempt_timeout_us:
                self.miss(client, f"{result.outcome} after {latency} us")
            self.end_probe(client)
        self.next_transaction(client)

    def key_value_reads(self, client: Client, replies: Any) -> list[Any] | None:
        """A committed txn-kv transaction's reads from its commands' replies
        (``None``: the replies were lost, ``replies_lost``); a reply no command
        gives is a violation (``txn_kv_reply``)."""
        expected = len(client.ops) + len(client.version_reads) + client.watching
        if not isinstance(replies, tuple) or len(replies) != expected:
            return None
        reads: list[Any] = []
        versions = replies[len(client.ops):len(client.ops) + len(client.version_reads)]
        try:
            for (kind, _, _), reply in zip(client.ops, replies, strict=False):
                reads.append(read_of(kind, reply, self.reads))
            for key, reply in zip(client.version_reads, versions, strict=True):
                client.versions[key] = version_of(reply)
        except ReplyError as error:
            if None in replies[:expected - client.watching]:
                return None
            self.violations.append(Violation("txn_kv_reply", str(error)))
            return None
        return reads

    # -- the coordinator group's leader crashed mid-transaction -----------------

    def nemesis(self) -> None:
        assert self.api is not None
        if self.healed:
            return
        busy = [c for c in self.clients if c.handle is not None and c.ops]
        if busy:
            client = self.rng.choice(busy)
            groups = sorted({self.slots.group_of(key.encode()) for _, key, _ in client.ops})
            coordinator = groups[(client.client_id + client.nonce) % len(groups)]
            leader = self.leaders.get(coordinator)
            if leader is not None and leader[1] not in self.config.byzantine:
                mid_step = self.rng.random() < 0.5
                down_us = self.rng.randrange(100_000, 600_000)
                self.api.crash(Crash(leader[1], self.api.now(), down_us, mid_step,
                                     self.rng.randrange(0, 4)))
                self.crashes += 1
        self.api.call_at(self.api.now() + self.workload.nemesis_every_us, self.nemesis)

    # -- outputs and checks -------------------------------------------------------

    def on_output(self, node: int, output: Any, time_us: int) -> list[Violation]:
        if type(output) is TxnResult:
            if self.gateway is not None:
                # A gateway cannot tell who is Byzantine: f+1 matching answers.
                self.on_gateway_answer(node, output)
                return []
            if node in self.config.byzantine:
                # A Byzantine driver's word proves nothing: the client learns no
                # outcome from it (info), as a client trusting one node would not.
                self.count("byzantine_answers")
                output = TxnResult(output.client, output.nonce, "unknown", "byzantine", b"")
            self.on_result(output)
            return []
        if type(output) is LockReport:
            self.reports[(node, output.group)] = output
            return []
        if type(output) is GroupOutput:
            value = self.codec.decode(output.body)
            leader = raft_leader_of(value)
            if leader is not None and leader >= self.leaders.get(output.group, (-1, -1)):
                self.leaders[output.group] = leader
            found = []
            for checker in self.checkers[output.group]:
                found += checker.on_output(node, value, time_us)
            return found
        return []

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def on_heal(self) -> None:
        assert self.api is not None
        self.healed = True
        self.healed_at = float(self.api.now())
        if self.fronts_wanted:
            self.fronts = sorted(self.rng.sample(
                self.correct, min(self.fronts_wanted, len(self.correct))))
        for checkers in self.checkers:
            for checker in checkers:
                begin = getattr(checker, "begin_liveness", None)
                if begin is not None:
                    begin(self.api.now())
        for client in self.clients:
            if client.handle is None and (self.funded or self.workload.workload != BANK):
                self.next_transaction(client)

    def held(self) -> list[str]:
        """Replicas still reporting locks or open records, for every group where
        fewer than ``clean_quorum`` replicas report none."""
        found = []
        alive = self.config.n - len(self.down)  # a node kept down reports nothing more
        needed = min(self.clean_quorum, alive)
        for group in range(self.slots.groups):
            reports = {node: report for (node, g), report in self.reports.items()
                       if g == group and node not in self.down}
            busy = [f"node {node} group {group}: {report.locks} locks, {report.prepared} "
                    f"prepared, {report.open_records} open records"
                    for node, report in sorted(reports.items())
                    if report.locks or report.prepared or report.open_records]
            if alive - len(busy) < needed:
                found += busy
        return found

    def kept_down(self, node: int) -> None:
        """``node`` stays down from the heal on (the ``degraded`` kind): clients
        stop asking it, and the locks it last reported are not demanded back."""
        self.down.add(node)
        self.correct = [other for other in self.correct if other != node]

    def settled(self) -> bool:
        """Whether the run may stop: liveness met (every client committed a
        transaction invoked after the heal, nothing held, every group's
        checkers settled), then the probes answered (``prompt``): after a quiet
        two ``attempt_timeout_us`` (every attempt of the faulty stretch over,
        its locks released: ``held`` is empty), ``prompt_waves``
        waves in which every client invokes a transaction at the same instant,
        each answered with a definite outcome (committed, or aborted: a lock
        conflict between the wave's own transactions is the protocol's answer)
        within ``attempt_timeout_us`` of its wave's start, on its one attempt
        (no timeout, no ``unknown``). Held to it the same way as the KV
        clients' probes (``KvHarness.settled``)."""
        if not self.healed or self.held():
            return False
        if self.probes_from is not None:
            return self.waves_left == 0 and self.wave_open == 0
        if not all(c.ok_after_heal and c.handle is None for c in self.clients):
            return False
        if not self.groups_settled():
            return False
        return self.begin_settle()

    def begin_settle(self) -> bool:
        """Liveness is met now: schedule the probes, or return that the run may
        stop (none wanted, or no room left for them before ``liveness_us``)."""
        workload = self.workload
        if self.settled_at is not None or workload.prompt_waves == 0 or self.signs:
            # (BFT groups are not held to it yet: their stable view and Byzantine
            # drivers have no rule here, ADR 0074)
            return True
        assert self.api is not None
        self.settled_at = now = self.api.now()
        start = now + 2 * workload.attempt_timeout_us
        waves = workload.prompt_waves
        end = start + waves * (workload.attempt_timeout_us + workload.think_us_max)
        if end >= self.options.liveness_us:
            return True
        self.probes_from = start
        self.waves_left = waves
        self.api.call_at(start, self.start_wave)
        return False

    def start_wave(self) -> None:
        """Every client invokes a transaction at this instant."""
        assert self.api is not None and self.wave_open == 0 and self.waves_left > 0
        self.waves_left -= 1
        now = self.api.now()
        for client in list(self.clients):
            assert client.handle is None, "a client still busy at a wave"
            client.probe = True
            client.probe_at_us = now
            client.probe_missed = False
            self.wave_open += 1
            self.probes += 1
            self.issue(client)

    def end_probe(self, client: Client) -> None:
        assert self.api is not None
        client.probe = False
        self.wave_open -= 1
        if self.wave_open == 0 and self.waves_left > 0:
            self.api.call_at(self.api.now() + self.workload.think_us_max, self.start_wave)

    def miss(self, client: Client, why: str) -> None:
        """``client``'s probe was not prompt (once per probe)."""
        if not client.probe or client.probe_missed:
            return
        client.probe_missed = True
        now = self.api.now() if self.api is not None else 0
        self.prompt_missed.append(
            f"client {client.client_id} (attempt {client.nonce}) of the wave at "
            f"{client.probe_at_us} us: {why} at {now} us")

    def groups_settled(self) -> bool:
        """Whether every group's checkers saw the progress they ask after the heal
        (Raft: an entry committed since). Clients keep transacting until then: with
        bounded waiting fewer attempts abort, and every client could commit once
        after the heal without touching a group that had no leader change to
        commit for (txn-kv seed 236)."""
        return all(getattr(checker, "settled", lambda: True)()
                   for checkers in self.checkers for checker in checkers)

    def transactions(self) -> list[Transaction]:
        return self.recorder.transactions()

    def finish(self, time_us: int) -> list[Violation]:
        found: list[Violation] = list(self.violations)
        for checkers in self.checkers:
            for checker in checkers:
                found += checker.finish(time_us)
        total = self.workload.accounts * self.workload.balance
        # A key-value group's transfer is INCR by the amount (what the Redis front
        # sends): nothing refuses an overdraft, so balances may go negative there;
        # every total must still hold.
        self.history = check_transactions(self.transactions(), bank_total=total,
                                          negative_allowed=self.key_value)
        if not self.history.valid:
            found.append(Violation(
                "strict_serializability" if self.workload.workload == LIST_APPEND else "bank",
                self.history.describe()[:4000], None, time_us))
        if self.prompt_missed:
            found.append(Violation(
                "prompt",
                f"{len(self.prompt_missed)} of {self.probes} probes invoked after the cluster "
                f"settled (at {self.settled_at} us, probes from {self.probes_from} us) without "
                f"a definite outcome within {self.workload.attempt_timeout_us} us: "
                + "; ".join(self.prompt_missed[:4]), None, time_us))
        if self.healed:
            held = self.held()
            if held:
                found.append(Violation("locks_released", "; ".join(held[:6]), None, time_us))
            waiting = [c.client_id for c in self.clients if not c.ok_after_heal]
            if waiting:
                found.append(Violation(
                    "liveness", f"after the heal clients {waiting[:8]} committed nothing",
                    None, time_us))
        return found

    def summary(self) -> dict[str, Any]:
        history = self.history
        return {
            "transactions": len(self.recorder.done),
            "outcomes": dict(sorted(self.outcomes.items())),
            "coordinator_leader_crashes": self.crashes,
            "prompt_probes": self.probes,
            "prompt_latency_max_us": self.probe_latency_max_us,
            "committed": history.committed if history else None,
            "edges": history.edges if history else None,
        }


def txn_harness_for(protocol: str, config: ClusterConfig) -> TxnHarness | None:
    found = transactional_spec(protocol)
    if found is None:
        return None
    spec, parameters = found
    from replicaio.assembly import TXN_GROUPS_DEFAULT

    gateway = spec.gateway or (
        GatewayRule(first_wave=parameters["gateway"] == 2) if parameters.get("gateway")
        else None)
    if gateway is not None and spec.ordering == "raft":
        raise UsageError("gateway clients need BFT groups (their attempts are signed)")
    return TxnHarness(config, parameters.get("groups", TXN_GROUPS_DEFAULT), spec, gateway,
                      parameters.get("fronts", 0))
