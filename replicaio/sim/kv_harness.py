"""Simulated key-value clients for replicated services (Raft + KV), and their checks.

Theory of operation
-------------------
A :class:`KvHarness` is the simulator's harness (``replicaio.sim.harness``) for
a protocol that serves the KV store through SMR (``replicaio.smr``). It does
not hand the simulator a fixed list of requests: it *binds* to the run
(:class:`~replicaio.sim.harness.HarnessApi`) and acts during it, as closed-loop
clients do.

* **Clients** (``KvWorkload.clients`` of them) each run one operation at a
  time, drawn from a seeded mix of get, put, append, cas, delete and incr over
  a few string keys and counter keys, and transactions (``txn``: one ``exec``
  of several operations over their own keys, ``replicaio.sim.kv_transactions``).
  Values written are unique per write.
  Each operation is recorded in a :class:`~replicaio.check.history.HistoryRecorder`
  on the virtual clock: invoke, then ok / fail / info.
* **Attempts.** An operation is sent as a ``ClientRequest`` to the replica the
  client believes leads (first a seeded pick). A ``Redirect`` moves it to the
  hinted replica; ``Rejected`` (busy, read timeout) and silence for
  ``attempt_timeout_us`` move it to another replica. Every attempt of one
  operation keeps its ``(client, seq)``, so SMR executes it at most once.
  After ``attempts_max`` attempts or ``op_deadline_us`` the client gives up:
  ``fail`` if every attempt was refused (none can still execute), else
  ``info`` (unknown), and the client continues under a new client id.
* **Results** are decoded from the KV result format: ``ok`` with the history
  output, or ``fail`` for a typed KV error (the command ran and changed nothing).
* **Membership changes** (``membership_every_us``, Raft only) ask the believed
  leader to remove a voter or add a removed node back, or to transfer
  leadership, during the safety phase.
* **Liveness.** The safety phase is sized for the quota of ``ops`` operations
  (50 ms per operation per client); what it did not issue is dropped at the
  heal (``ops_unissued``). After the heal every client must complete at least
  one operation invoked after it, and the protocol's own checkers must be
  settled: the cluster has then settled.
* **Prompt** (ADR 0074). Then, after a quiet ``op_deadline_us``,
  ``prompt_waves`` waves of probes, every client invoking one operation at
  the same instant: each must be answered on its first attempt within
  ``attempt_timeout_us`` (``settled`` has the rule, ``miss`` the excusals, the
  paper's reasons). A wave begun while a BFT replica is in a view change is
  not held (``start_wave``). The run stops once the probes are answered.
* **Checks.** Every output goes to the protocol's own checkers (Raft's, from
  ``replicaio.check.raft``, as they happen) and to the client-level checks here
  (a reply for a request never sent, a ``stale_seq`` or ``bad_request`` for a
  well-formed current request). At the end the history is checked for
  linearizability (``replicaio.check.linearizability``).

Everything random is drawn from ``random.Random`` seeded by the run's seed, so a
run stays a pure function of its options.
"""

from __future__ import annotations

import functools
import math
import random
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import accumulate
from typing import Any, Protocol

import replicaio.sim.minbft_adversary  # registers MinBFT's behaviours
import replicaio.sim.pbft_adversary  # noqa: F401  (registers PBFT's behaviours)
from replicaio.check.broadcast import Violation
from replicaio.check.history import (
    APPEND,
    CAS,
    DELETE,
    GET,
    INCR,
    LRANGE,
    PUT,
    PUTX,
    RPUSH,
    TXN,
    HistoryRecorder,
    Operation,
    PendingOperation,
    decode_outputs,
    decode_transaction,
    encode_transaction,
)
from replicaio.check.history import transaction_key as key_of_transaction
from replicaio.check.linearizability import LinearizabilityResult, check_linearizable
from replicaio.core.codec import Codec
from replicaio.core.config import ClusterConfig, Resilience
from replicaio.core.errors import UsageError
from replicaio.services.kv.state_machine import KvOk, decode_result, encode_at, encode_command
from replicaio.sim.harness import HarnessApi
from replicaio.sim.kv_ops import PlannedOp, lrange_output, plan_typed
from replicaio.sim.kv_transactions import (
    draw_transaction,
    transaction_command,
    transaction_outputs,
)
from replicaio.sim.membership import MembershipNemesis, OperatorScript
from replicaio.sim.options import (
    CLOCK_DRIFT_PPM_DEFAULT,
    SYNC_AIM_MAX,
    SYNC_AIMED_SHARE,
    Crash,
    Partition,
    SimOptions,
    Slow,
    aim_at_syncs,
    draw_crashes,
    draw_disk_faults,
    draw_disk_nodes,
    draw_kept_down,
    draw_partitions,
    draw_rewrite_faults,
    draw_slow,
)
from replicaio.smr.api import ClientRequest, Redirect, Rejected, Reply
from replicaio.smr.auth import KeyedClientSigner, MacClientSigner
from replicaio.smr.client import (
    BYZANTINE,
    Accepted,
    FastQuorums,
    Refused,
    Votes,
    fast_quorums,
    reply_quorum,
)

EXTRA_KEY = "kv"  # SimOptions.extra[EXTRA_KEY] holds the workload

DEFAULT_MIX: tuple[tuple[str, int], ...] = (
    (GET, 30),
    (PUT, 20),
    (APPEND, 10),
    (CAS, 15),
    (DELETE, 5),
    (INCR, 20),
    (TXN, 10),
    (PUTX, 8),
    (RPUSH, 5),
    (LRANGE, 4),
)


@dataclass(frozen=True, slots=True)
class KvWorkload:
    """What the simulated clients do (all in the event log header, so replayable)."""

    clients: int = 5
    ops: int = 200  # operations in the quota (probes after the heal come on top)
    keys: int = 4  # string keys k0..
    counters: int = 2  # counter keys n0.. (incr, get, delete)
    attempt_timeout_us: int = 500_000
    op_deadline_us: int = 3_000_000
    attempts_max: int = 16
    think_us_max: int = 20_000
    backoff_us: int = 50_000
    read_via_log: float = 0.2  # share of gets sent as ordinary (logged) requests
    membership_every_us: int = 0  # 0: no membership changes
    fault_window_us: int = 1_000_000  # faults are drawn per window (smaller: more churn)
    nemesis_every_us: int = 0  # crash the believed leader (and maybe one more) this often
    client_ops_max: int = 0  # a client takes a new id after this many ops (0: never)
    mix: tuple[tuple[str, int], ...] = DEFAULT_MIX
    check_budget_s: float | None = 300.0
    # Waves of probes once the cluster has settled after the heal, every
    # operation in them held to ``prompt`` (KvHarness.settled; 0: no probes).
    prompt_waves: int = 5

    def validate(self) -> KvWorkload:
        """Raise :class:`UsageError` unless the workload is usable."""
        if self.clients < 1 or self.ops < 0 or self.keys < 1 or self.counters < 0:
            raise UsageError("--clients and keys must be >= 1, --ops >= 0")
        for name in (
            "attempt_timeout_us", "op_deadline_us", "attempts_max", "backoff_us", "fault_window_us"
        ):
            if getattr(self, name) < 1:
                raise UsageError(f"KvWorkload.{name} must be >= 1")
        if min(self.think_us_max, self.membership_every_us, self.nemesis_every_us,
               self.client_ops_max, self.prompt_waves) < 0:
            raise UsageError("think time and membership period must be >= 0")
        if not 0.0 <= self.read_via_log <= 1.0:
            raise UsageError("read_via_log is a share in [0, 1]")
        kinds = {kind for kind, weight in self.mix if weight > 0}
        if not kinds or not kinds <= {GET, PUT, APPEND, CAS, DELETE, INCR, TXN, PUTX, RPUSH,
                                      LRANGE}:
            raise UsageError(f"bad operation mix {self.mix!r}")
        if INCR in kinds and self.counters < 1:
            raise UsageError("incr needs at least one counter key")
        return self

    def as_extra(self) -> dict[str, Any]:
        """Plain data for ``SimOptions.extra``."""
        data = asdict(self)
        data["mix"] = [list(item) for item in self.mix]
        return data

    @classmethod
    def from_options(cls, options: SimOptions) -> KvWorkload:
        """The workload recorded in ``options.extra`` (defaults if none)."""
        data = dict(options.extra.get(EXTRA_KEY) or {})
        if "mix" in data:
            data["mix"] = tuple((str(kind), int(weight)) for kind, weight in data["mix"])
        return cls(**data).validate()


class OutputChecker(Protocol):
    """A protocol's checker fed with every node output (e.g. Raft's). It may also
    have ``begin_liveness(time_us)``, ``settled() -> bool``, ``excused() ->
    bool`` (liveness is beyond the fault model now: the clients' liveness is
    not demanded either) and ``summary() -> dict``; the harness calls them
    when present."""

    def on_output(self, node: int, output: Any, time_us: int) -> list[Violation]: ...

    def finish(self, time_us: int) -> list[Violation]: ...


# A new client id first registers its session (an empty command: SMR opens the
# session and runs nothing), so that no retry of a real operation can ever be
# mistaken for a first request after its session was evicted. Not recorded.
REGISTER = PlannedOp("register", "", None, None, False, b"")


@dataclass(slots=True)
class Client:
    """One closed-loop client slot (its id changes after an unknown outcome)."""

    slot: int
    client_id: int
    target: int
    seq: int = 0
    op: PlannedOp | None = None
    handle: PendingOperation | None = None
    attempts: int = 0
    refusals: int = 0
    token: int = 0
    started_us: int = 0
    ops_done: int = 0  # under the current id
    idle: bool = False
    ok_after_heal: bool = False
    votes: Votes | None = None  # answers to the current (client_id, seq), BFT only
    unordered: bool = False  # the current attempt is a read without ordering (5.1.3)
    probe: bool = False  # the current operation is a probe, held to ``prompt``
    probe_at_us: int = 0  # when the probe's wave began (its register included)
    probe_missed: bool = False  # the probe was found not prompt (reported once)
    probe_held: bool = False  # its wave began with the view stable (``start_wave``)
    # BFT reads: the results correct replicas answered the operation with (split: 2+)
    read_results: set[bytes] = field(default_factory=set)


@dataclass(slots=True)
class Figures:
    """What the clients saw."""

    invoked: int = 0
    ok: int = 0
    failed: int = 0
    unknown: int = 0
    attempts: int = 0
    redirects: int = 0
    rejections: int = 0
    timeouts: int = 0
    stale_outputs: int = 0
    membership_requests: int = 0
    nemesis_crashes: int = 0
    unissued: int = 0  # quota operations the safety phase had no time for
    byzantine_outputs: int = 0  # client outputs of Byzantine replicas (votes like any)
    unordered_fallbacks: int = 0  # unordered reads whose answers split: read again, ordered
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    probes: int = 0  # operations held to ``prompt``
    probes_excused: int = 0  # not prompt, for a Byzantine primary or target (``miss``)
    waves_unsettled: int = 0  # waves begun with a view change under way: not held
    probe_latency_max_us: int = 0


def weighted_choice(rng: random.Random, population: Sequence[Any], weights: Sequence[float]) -> Any:
    """``rng.choices(population, weights)[0]``: the very same draw (one
    ``rng.random()``, CPython's bisection over the cumulative weights), without
    the interpreted frames of ``random.choices`` (one per planned operation)."""
    cumulative = list(accumulate(weights))
    if len(cumulative) != len(population):
        raise ValueError("the number of weights does not match the population")
    total = cumulative[-1] + 0.0
    if total <= 0.0 or not math.isfinite(total):
        raise ValueError("the weights must add up to a finite number above zero")
    return population[bisect_right(cumulative, rng.random() * total, 0, len(cumulative) - 1)]


MixTable = tuple[tuple[tuple[str, int], ...], list[str], list[int], float, bool]


def mix_table(mix: tuple[tuple[str, int], ...]) -> MixTable:
    """What :meth:`KvHarness.plan` draws from, made once per mix: the mix, its
    kinds, their cumulative weights and total (``weighted_choice``'s, checked
    the same way), and whether the mix has ``PUTX`` (timed reads)."""
    kinds = [kind for kind, _ in mix]
    cumulative = list(accumulate(weight for _, weight in mix))
    if len(cumulative) != len(kinds):
        raise ValueError("the number of weights does not match the population")
    total = cumulative[-1] + 0.0
    if total <= 0.0 or not math.isfinite(total):
        raise ValueError("the weights must add up to a finite number above zero")
    return mix, kinds, cumulative, total, PUTX in kinds



def randbelow(rng: random.Random, n: int) -> int:
    """``rng.randrange(n)``: the very same draw (CPython's rejection sampling
    over ``getrandbits``), without ``randrange``'s interpreted frames."""
    if n <= 0:
        raise ValueError(f"empty range for randrange({n})")
    bits = n.bit_length()
    drawn = rng.getrandbits(bits)
    while drawn >= n:
        drawn = rng.getrandbits(bits)
    return drawn

class KvHarness:
    """Closed-loop KV clients, their history and checks; see the module docstring."""

    def __init__(
        self,
        config: ClusterConfig,
        checkers: list[OutputChecker] | None = None,
        membership: Callable[[KvHarness], None] | None = None,
        leader_hint: Callable[[], int] | None = None,
        *,
        client_macs: bool = False,
        fast_reads: bool = False,
        fast_quorums: Callable[[Resilience, int, int], FastQuorums] = fast_quorums,
        fronts: int = 0,
    ) -> None:
        self.config = config
        # ``fronts=K``: after the heal every attempt goes to one of K correct nodes
        # up, drawn at the heal, and only there (``on_heal``).
        self.fronts_wanted = fronts
        self.fronts: list[int] = []
        self.down: set[int] = set()  # kept down from the heal on (``degraded``)
        self.client_macs = client_macs  # BFT clients authenticate with MAC vectors
        # BFT clients read with the read-only optimisation (section 5.1.3)
        self.fast_reads = fast_reads and config.resilience in BYZANTINE
        self.checkers = list(checkers or [])
        self.membership = membership
        self.leader_hint = leader_hint
        self.nemesis_aims_at_syncs = False  # set at the start of a run with group commit
        self.api: HarnessApi | None = None
        self.workload = KvWorkload()
        self.plan_table: MixTable | None = None  # plan's table of workload.mix, made on first use
        self.rng = random.Random(0)
        self.disk_nodes: frozenset[int] = frozenset()  # nodes whose storage may fail
        self.recorder: HistoryRecorder | None = None
        self.clients: list[Client] = []
        self.by_id: dict[int, Client] = {}
        self.retired: set[int] = set()  # ids given up after an unknown outcome
        self.quota_left = 0
        self.healed = False
        self.healed_at = 0.0
        self.figures = Figures()
        self.violations: list[Violation] = []
        self.result: LinearizabilityResult | None = None
        self.last_values: dict[str, str | None] = {}
        self.write_next = 0
        self.leader_term = (-1, -1)  # (term, node) of the latest leader seen
        self.observers: list[Callable[[int, Any, int], None]] = []
        self.codec = Codec()
        # Clients of a Byzantine fault tolerant service sign their requests and
        # accept f+1 matching answers (replicaio.smr.client); of Raft, one.
        self.bft = config.resilience in BYZANTINE
        self.quorum = reply_quorum(config.resilience, config.f, config.n)
        # With unordered reads, a read completes on R matching answers and a
        # write on W, R + W >= n + f + 1 (2f+1 both of 3f+1; n and f+1 with
        # MinBFT's 2f+1): a read's quorum meets every completed write in a
        # correct replica that executed it. The service's rule (a broken
        # client's in ``replicaio.testing.variants``).
        quorums = fast_quorums(config.resilience, config.f, config.n)
        self.write_quorum = quorums.write if self.fast_reads else self.quorum
        self.quorum_unordered = quorums.read if self.fast_reads else self.quorum
        # (not declared in the .pxd: after the declared attributes, in their order)
        self.liveness_us = 0  # the run's end (options.liveness_us)
        # ``prompt`` (see ``settled``): when the cluster settled, when the probes
        # began, the waves still to run, the probes of the wave still open, and
        # every probe that was not prompt.
        self.settled_at: int | None = None
        self.probes_from: int | None = None
        self.waves_left = 0
        self.wave_open = 0
        self.prompt_missed: list[str] = []
        self.wave_primary = -1  # the primary of the stable view at the wave's start
        # The operator's requests once the probes are answered (``operator_settled``)
        self.operator: OperatorScript | None = None

    # -- the Harness protocol ----------------------------------------------------

    def bind(self, api: HarnessApi) -> None:
        self.api = api
        self.recorder = HistoryRecorder(api.now)

    def requests(self, options: SimOptions) -> list[tuple[int, int, Any]]:
        """Start the clients (nothing is scheduled up front: they act during the run)."""
        api = self.require_api()
        self.workload = KvWorkload.from_options(options)
        self.rng = random.Random(f"replicaio-kv-clients:{options.seed}")
        self.disk_nodes = frozenset(crash.node for crash in options.crashes if crash.disk)
        self.quota_left = self.workload.ops
        self.liveness_us = options.liveness_us
        recorder = self.require_recorder()
        for slot in range(self.workload.clients):
            client = Client(slot, recorder.new_client(), self.rng.randrange(self.config.n))
            self.clients.append(client)
            self.by_id[client.client_id] = client
            start = self.rng.randrange(self.workload.think_us_max + 1)
            api.call_at(start, functools.partial(self.next_op, client))
        if self.membership is not None and self.workload.membership_every_us:
            api.call_at(self.workload.membership_every_us, self.membership_tick)
        if self.workload.nemesis_every_us and "crash" in options.faults:
            self.nemesis_aims_at_syncs = options.sync_us_mean > 0
            api.call_at(self.workload.nemesis_every_us, self.nemesis_tick)
        api.call_at(options.safety_us + 1, self.on_heal)
        return []

    def on_output(self, node: int, output: Any, time_us: int) -> list[Violation]:
        kind = type(output)
        if kind is Reply or kind is Redirect or kind is Rejected:
            if node in self.config.byzantine:
                # A Byzantine replica's answers prove nothing alone: they are
                # votes among others (f+1 must match), never checked for integrity.
                self.figures.byzantine_outputs += 1
            self.on_client_output(node, output)
        else:
            for observer in self.observers:
                observer(node, output, time_us)
        found: list[Violation] = []
        if self.violations:
            found.extend(self.violations)
            self.violations.clear()
        for checker in self.checkers:
            found.extend(checker.on_output(node, output, time_us))
        return found

    def finish(self, time_us: int) -> list[Violation]:
        found: list[Violation] = []
        for checker in self.checkers:
            found.extend(checker.finish(time_us))
        result = self.check()
        if result.linearizable is False:
            found.append(Violation("linearizability", result.describe()[:4000], None, time_us))
        if self.prompt_missed:
            found.append(Violation(
                "prompt",
                f"{len(self.prompt_missed)} of {self.figures.probes} probes invoked after the "
                f"cluster settled (at {self.settled_at} us, probes from {self.probes_from} us) "
                f"not answered on their first attempt within {self.prompt_bound_us()} us: "
                + "; ".join(self.prompt_missed[:4]),
                None,
                time_us,
            ))
        operator = self.operator
        if operator is not None and operator.missed:
            found.append(Violation(
                "operator",
                "an operator's request of the settled cluster not carried out: "
                + "; ".join(operator.missed),
                None,
                time_us,
            ))
        if not self.settled() and not self.liveness_excused():
            busy = [c.client_id for c in self.clients if c.op is not None]
            waiting = [c.client_id for c in self.clients if not c.ok_after_heal]
            found.append(Violation(
                "liveness",
                f"after the heal: clients {busy[:8]} still in an operation, clients "
                f"{waiting[:8]} completed no operation invoked after the heal",
                None,
                time_us,
            ))
        return found

    def liveness_excused(self) -> bool:
        """Whether a checker says the faults went beyond what liveness needs."""
        for checker in self.checkers:
            excused = getattr(checker, "excused", None)
            if excused is not None and excused():
                return True
        return False

    def settled(self) -> bool:
        """Whether the run may stop: liveness met, then the probes answered.

        Liveness: every client completed an operation invoked after the heal,
        and every checker is settled. The cluster has then *settled*: a leader
        (a primary in a stable view) served every client after the faults
        ended. Then ``prompt``: after a quiet ``op_deadline_us`` (the clients'
        own bound on a whole operation: several election, view-change and
        request timeouts, time for a restarted node to catch up and for every
        retry of the faulty stretch to drain), ``prompt_waves`` waves of
        probes, every client invoking one operation at the same instant in
        each, and every probe must be answered on its first attempt, within
        the clients' ``attempt_timeout_us`` of the wave's start: no attempt
        timeout, no refusal (a request or read SMR timed out, a busy replica),
        no giving up. A ``Redirect`` to the leader (a hint) and an unordered
        read falling back to an ordered one (answers split by concurrent
        writes, section 5.1.3) are the protocol's own paths and allowed inside
        the bound. The fault model (no faults after the heal, a quorum of
        correct nodes up, message delays far below the bound) is what makes
        every correct protocol here answer in a few message delays: a probe
        that waits for a timeout is a request or read the protocol lost and
        the clients' retries hid. Not demanded when liveness is excused, nor
        when the stretch no longer fits in the run (``liveness_us``)."""
        if not self.healed:
            return False
        if self.liveness_excused():
            # Liveness is not demanded; the run goes on a while (a recovery
            # may still make it demanded again), then stops.
            return self.require_api().now() >= self.healed_at + EXCUSED_LIVENESS_US
        if self.probes_from is not None:
            if self.waves_left or self.wave_open:
                return False
            return self.operator_settled()
        if not all(client.op is None and client.ok_after_heal for client in self.clients):
            return False
        for checker in self.checkers:
            settled = getattr(checker, "settled", None)
            if settled is not None and not settled():
                return False
        return self.begin_settle()

    def prompt_bound_us(self) -> int:
        """How long a probe may take from its wave's start (see ``settled``)."""
        return self.workload.attempt_timeout_us

    def begin_settle(self) -> bool:
        """Liveness is met now: schedule the probes (``prompt``), or return that
        the run may stop (no probes wanted, or no room left for them)."""
        workload = self.workload
        if self.settled_at is not None or workload.prompt_waves == 0:
            return self.operator_settled()  # (settled_at set: the stretch did not fit)
        api = self.require_api()
        self.settled_at = now = api.now()
        start = now + workload.op_deadline_us
        waves = workload.prompt_waves
        if start + waves * (self.prompt_bound_us() + workload.think_us_max) >= self.liveness_us:
            return self.operator_settled()
        self.probes_from = start
        self.waves_left = waves
        api.call_at(start, self.start_wave)
        return False

    def operator_settled(self) -> bool:
        """Whether the operator's requests of the settled cluster are over
        (``operator``, ADR 0077: ``replicaio.sim.membership.OperatorScript``;
        only in runs with membership changes, after the probes)."""
        script = self.operator
        if script is None or not self.workload.membership_every_us:
            return True
        if not script.started:
            script.begin()
        return bool(script.finished)

    def start_wave(self) -> None:
        """Every client invokes a probe at this instant (a burst: reads queued
        behind a read round, writes waiting for the window). The wave is held
        to ``prompt`` only when the view is stable now (``view_stable``);
        else it is traffic that lets the view change finish (the paper's
        remedy needs requests to time out at the backups), and does not count,
        up to ``UNSETTLED_WAVES_PER_WAVE`` times the waves asked for."""
        assert self.wave_open == 0 and self.waves_left > 0
        figures = self.figures
        workload = self.workload
        now = self.require_api().now()
        if now + 2 * workload.op_deadline_us >= self.liveness_us or (
            figures.waves_unsettled > UNSETTLED_WAVES_PER_WAVE * workload.prompt_waves
        ):
            self.waves_left = 0  # no room left: the probes end here, not demanded
            return
        held = self.view_stable()
        self.wave_primary = self.primary()
        if held:
            self.waves_left -= 1
        else:
            figures.waves_unsettled += 1
        for client in self.clients:
            assert client.op is None, "a client still busy at a wave"
            client.probe = True
            client.probe_at_us = now
            client.probe_held = held
            client.probe_missed = not held
            client.read_results = set()
            client.idle = False
            self.wave_open += 1
            figures.probes += held
            if client.seq == 0:
                self.register(client)
            else:
                self.begin_op(client)

    def up(self) -> list[int]:
        """The correct nodes not kept down."""
        byzantine = self.config.byzantine
        return [node for node in self.config.nodes if node not in self.down
                and node not in byzantine]

    def primary(self) -> int:
        """The primary of the view every correct node up is active in, as a
        checker that knows views says (``primary(up)``), or -1."""
        for checker in self.checkers:
            primary = getattr(checker, "primary", None)
            if primary is not None:
                return int(primary(self.up()))
        return -1

    def view_stable(self) -> bool:
        """Whether every checker that knows views (``stable(up)``: PBFT's and
        MinBFT's) finds the correct nodes up active in one view."""
        up = self.up()
        for checker in self.checkers:
            stable = getattr(checker, "stable", None)
            if stable is not None and not stable(up):
                return False
        return True

    def end_probe(self, client: Client) -> None:
        """``client``'s probe is over: close the wave when it was the last."""
        client.probe = False
        client.idle = True
        self.wave_open -= 1
        if self.wave_open == 0 and self.waves_left > 0:
            api = self.require_api()
            api.call_at(api.now() + self.workload.think_us_max, self.start_wave)

    def miss(self, client: Client, why: str) -> None:
        """``client``'s probe was not prompt (once per probe)."""
        if not client.probe or client.probe_missed:
            return
        byzantine = self.config.byzantine
        if client.target in byzantine or self.wave_primary in byzantine or (
            self.primary() in byzantine
        ) or len(client.read_results) > 1:
            # A faulty primary, or a faulty replica the attempt went to alone, may
            # drop it: the client's retransmission to every replica, and the
            # backups' timers it starts, are the paper's remedy (PBFT 4.1, 4.4).
            # A read correct replicas answered differently (a concurrent write
            # between their read points) is read again once the retransmission
            # timer expires (5.1.3): with f replicas silent, the f+1 correct
            # ones must all match.
            client.probe_missed = True
            self.figures.probes_excused += 1
            return
        now = self.require_api().now()
        op = client.op
        kind = op.kind if op is not None else "?"
        self.prompt_missed.append(
            f"client {client.client_id} {kind} of the wave at {client.probe_at_us} us: "
            f"{why} at {now} us"
        )
        client.probe_missed = True

    def summary(self) -> dict[str, Any]:
        result = self.check()
        figures = self.figures
        found: dict[str, Any] = {}
        for checker in self.checkers:
            summary = getattr(checker, "summary", None)
            if summary is not None:
                found.update(summary())
        return found | {
            "linearizable": result.linearizable,
            "linearizability_seconds": round(result.seconds, 3),
            "ops_invoked": figures.invoked,
            "ops_completed": figures.ok,
            "ops_failed": figures.failed,
            "ops_unknown": figures.unknown,
            "ops_unissued": figures.unissued,
            "client_attempts": figures.attempts,
            "client_unordered_fallbacks": figures.unordered_fallbacks,
            "client_redirects": figures.redirects,
            "client_rejections": dict(sorted(figures.rejected_by_reason.items())),
            "client_timeouts": figures.timeouts,
            "client_ids_used": len(self.by_id) + len(self.retired),
            "membership_requests": figures.membership_requests,
            "nemesis_crashes": figures.nemesis_crashes,
            "prompt_probes": figures.probes,
            "prompt_probes_excused": figures.probes_excused,
            "prompt_waves_unsettled": figures.waves_unsettled,
            "prompt_latency_max_us": figures.probe_latency_max_us,
            **self.operator_summary(),
        }

    def operator_summary(self) -> dict[str, int]:
        """The operator's requests of the settled cluster (none: no figures)."""
        script = self.operator
        if script is None or not script.started:
            return {}
        return {
            "operator_done": script.done,
            "operator_skipped": int(script.skipped),
            "operator_missed": len(script.missed),
            "operator_latency_max_us": script.latency_max_us,
        }

    # -- history ---------------------------------------------------------------------

    def operations(self) -> list[Operation]:
        """The history so far (operations still in flight appear as ``info``)."""
        return self.require_recorder().operations()

    def check(self) -> LinearizabilityResult:
        """Linearizability of the history (computed once, at the end)."""
        if self.result is None:
            self.result = check_linearizable(
                self.operations(), time_budget_s=self.workload.check_budget_s
            )
        return self.result

    # -- one client's loop -------------------------------------------------------------

    def next_op(self, client: Client) -> None:
        assert client.op is None
        if self.quota_left > 0:
            self.quota_left -= 1
        elif not (self.healed and not client.ok_after_heal):
            client.idle = True
            return
        client.idle = False
        if client.seq == 0:
            self.register(client)
            return
        self.begin_op(client)

    def register(self, client: Client) -> None:
        client.seq = 1
        client.op = REGISTER
        client.handle = None
        client.attempts = client.refusals = 0
        client.unordered = False
        client.started_us = self.require_api().now()
        self.attempt(client)

    def begin_op(self, client: Client) -> None:
        op = self.plan()
        client.seq += 1
        client.op = op
        client.attempts = client.refusals = 0
        client.unordered = False
        client.started_us = self.require_api().now()
        client.handle = self.require_recorder().invoke(
            client.client_id, op.kind, op.key, op.value, op.expected
        )
        self.figures.invoked += 1
        self.attempt(client)

    def attempt(self, client: Client) -> None:
        api = self.require_api()
        op = client.op
        assert op is not None
        workload = self.workload
        if client.attempts >= workload.attempts_max or (
            api.now() - client.started_us >= workload.op_deadline_us
        ):
            self.give_up(client)
            return
        client.attempts += 1
        client.token += 1
        self.figures.attempts += 1
        command = op.command
        if op.read_only:  # a read runs at the client's clock (the front's, live)
            command = encode_at(api.now() // 1000, command)
        if client.unordered:
            # The unordered try failed (split answers, or a timeout): the read
            # again, ordered, under a new number, so that no unordered answer
            # still on its way counts towards it.
            client.unordered = False
            client.seq += 1
            client.votes = None
        elif self.fast_reads and op.read_only and client.attempts == 1 and not self.fronts:
            client.unordered = True  # (through a front a read is one replica's: ``front_read``)
        request = ClientRequest(client.client_id, client.seq, command, op.read_only,
                                client.unordered)
        if self.fronts and client.target not in self.fronts:
            client.target = self.rng.choice(self.fronts)
        if self.bft:
            self.send_signed(client, request)
        else:
            api.request(client.target, self.codec.encode(request))  # as a client sends it
        token = client.token
        api.call_at(api.now() + workload.attempt_timeout_us,
                    lambda: self.on_attempt_timeout(client, token))

    def send_signed(self, client: Client, request: ClientRequest) -> None:
        """BFT: the request signed, to the believed primary; to every replica for
        a retry (the primary may be faulty) and for a read (each replica answers
        from its own state after its read barrier)."""
        votes = client.votes
        if votes is None or votes.client != request.client or votes.seq != request.seq:
            quorum = (
                1 if self.front_read(client, request.read_only)
                else self.quorum_unordered if request.unordered
                else self.quorum if request.read_only else self.write_quorum
            )
            client.votes = Votes(request.client, request.seq, quorum, self.config.n)
        signer: KeyedClientSigner | MacClientSigner = (
            MacClientSigner(self.codec, request.client, self.config.n) if self.client_macs
            else KeyedClientSigner(self.codec, request.client)
        )
        data = self.codec.encode(signer.wrap(request))
        api = self.require_api()
        if (client.attempts > 1 or request.read_only) and not self.fronts:
            for node in self.config.nodes:
                api.request(node, data)
        else:
            api.request(client.target, data)

    def front_read(self, client: Client, read_only: bool) -> bool:
        """Whether ``client``'s request is a read through a front (``fronts=K``),
        answered by the front's replica alone. PBFT's client (OSDI 1999, 4.1;
        5.1.3 for reads) multicasts and gathers f+1 (2f+1 unordered) matching
        replies because it trusts no replica; through a front the client is
        the front's node (live: a Redis client on one node's port, whose
        in-node client takes its own replica's answer), a correct node here
        (``draw_fronts``), and only its replica ever sees the read (SMR
        serves a read at the replica it reached, after its read barrier;
        a write executes everywhere and every replica answers it). Until
        2026-12-08 such a read waited for f+1 answers only one replica would
        give: no read through a front ever completed (each gave up after
        ``op_deadline_us``; 0 of them on ``pbft:fronts=1`` seed 25), which
        is why ``prompt`` was not held there (ADR 0074). Only the front's
        answer counts (``on_client_output``): a Byzantine replica's made-up
        reply to a read it never got is not a vote."""
        return bool(self.fronts) and read_only and client.target in self.fronts

    def on_vote(self, node: int, client: Client, output: Reply | Rejected) -> None:
        """BFT: count ``output`` as ``node``'s vote; act once f+1 agree."""
        votes = client.votes
        if votes is None:
            return
        decision = votes.add(output, node)
        if isinstance(decision, Accepted):
            leader = output.leader if type(output) is Reply else -1
            self.complete(client, Reply(client.client_id, client.seq, decision.result,
                                        decision.replicas[0], leader))
        elif isinstance(decision, Refused):
            client.votes = None  # the next attempt is voted on afresh
            self.on_rejected(node, client, Rejected(client.client_id, client.seq,
                                                    decision.reason))
        elif client.unordered and votes.split():
            self.figures.unordered_fallbacks += 1
            self.retry_later(client, 0)  # ordered, at once

    def on_attempt_timeout(self, client: Client, token: int) -> None:
        if client.op is None or client.token != token:
            return  # answered, or a later attempt is running
        self.figures.timeouts += 1
        if client.probe:
            self.miss(client, f"attempt {client.attempts} (to node {client.target}) timed out")
        client.target = randbelow(self.rng, self.config.n)
        self.attempt(client)

    def retry_later(self, client: Client, delay_us: int) -> None:
        client.token += 1  # the running attempt's timeout no longer matters
        token = client.token
        api = self.require_api()

        def again() -> None:
            if client.op is not None and client.token == token:
                self.attempt(client)

        api.call_at(api.now() + delay_us, again)

    def on_client_output(self, node: int, output: Reply | Redirect | Rejected) -> None:
        client = self.by_id.get(output.client)
        correct = node not in self.config.byzantine
        if client is None:
            if output.client in self.retired or not correct:
                self.figures.stale_outputs += 1  # a late answer to a retired id
                return
            self.violations.append(Violation(
                "smr_reply_integrity", f"{output!r} for a client that never existed", node, None
            ))
            return
        if client.op is None or output.seq != client.seq:
            if output.seq > client.seq and correct:
                self.violations.append(Violation(
                    "smr_reply_integrity", f"{output!r}: seq never sent", node, None
                ))
            self.figures.stale_outputs += 1
            return
        if self.bft and not isinstance(output, Redirect):
            op = client.op
            if self.front_read(client, op.read_only) and node != client.target:
                self.figures.stale_outputs += 1  # (not the front's: see ``front_read``)
                return
            if correct and type(output) is Reply and client.probe and op.read_only:
                client.read_results.add(output.result)
            self.on_vote(node, client, output)
        elif type(output) is Reply:
            self.complete(client, output)
        elif type(output) is Redirect:
            self.figures.redirects += 1
            if not output.forwarded and not self.bft:
                # Crash faults: the attempt went to this replica only, and it never
                # left it. A refused forward may still run elsewhere; and under BFT a
                # retry went to every replica (the primary may take the copy this one
                # refused), and a faulty one may refuse what it relayed: one replica's
                # redirect proves nothing (seed 811 recorded an applied APPEND as failed).
                client.refusals += 1
            if 0 <= output.leader < self.config.n:  # a hint: never trusted blindly
                client.target = output.leader
                self.retry_later(client, 0)
            else:
                client.target = randbelow(self.rng, self.config.n)
                self.retry_later(client, self.workload.backoff_us)
        else:
            assert type(output) is Rejected
            self.on_rejected(node, client, output)

    def on_rejected(self, node: int, client: Client, rejected: Rejected) -> None:
        figures = self.figures
        figures.rejections += 1
        reasons = figures.rejected_by_reason
        reasons[rejected.reason] = reasons.get(rejected.reason, 0) + 1
        if client.probe and rejected.reason == "session_expired" and not client.probe_missed:
            # An evicted session is an answer, at once: the session table's bound
            # at work (Raft thesis 6.3); the client goes on under a new id.
            client.probe_missed = True
            figures.probes_excused += 1
        elif client.probe:
            self.miss(client, f"refused ({rejected.reason}) by node {node}")
        if rejected.reason == "session_expired":
            # The session was evicted: the operation may have run before. Unknown.
            self.give_up(client)
            return
        if rejected.reason in ("stale_seq", "bad_request", "too_large"):
            # Our clients never send such a request: SMR lost track of a session.
            self.violations.append(Violation(
                "smr_session", f"{rejected!r} for the client's current operation", node, None
            ))
            return
        if not self.bft:  # BFT: f+1 said busy, but the primary may hold a copy
            client.refusals += 1
        client.target = randbelow(self.rng, self.config.n)
        self.retry_later(client, self.workload.backoff_us)

    def complete(self, client: Client, reply: Reply) -> None:
        client.votes = None
        if 0 <= reply.leader < self.config.n and self.bft:
            client.target = reply.leader
        if client.op is REGISTER:
            client.op = None
            client.token += 1
            if not self.bft:
                client.target = reply.replica
            self.begin_op(client)
            return
        op = client.op
        handle = client.handle
        assert op is not None and handle is not None
        recorder = self.require_recorder()
        if op.kind == TXN:
            self.complete_transaction(client, op, handle, reply)
            return
        result = decode_result(reply.result)
        if isinstance(result, KvOk):
            recorded = recorder.ok(handle, self.output_of(op, result.value))
            self.figures.ok += 1
            if op.kind == GET:
                self.last_values[op.key] = recorded.output
            elif op.kind == PUT:
                self.last_values[op.key] = op.value
            if self.healed and recorded.call >= self.healed_at:
                client.ok_after_heal = True
        else:
            recorder.fail(handle)  # a typed KV error: executed, changed nothing
            self.figures.failed += 1
        if not self.bft:
            client.target = reply.replica
        self.finish_op(client)

    def complete_transaction(
        self, client: Client, op: PlannedOp, handle: PendingOperation, reply: Reply
    ) -> None:
        assert op.value is not None
        operations = list(decode_transaction(op.value))
        outputs = transaction_outputs(operations, reply.result)
        recorder = self.require_recorder()
        if outputs is None:  # not a result the store gives: its effect is unknown
            recorder.info(handle)
            self.figures.unknown += 1
            self.new_identity(client)
        else:
            recorded = recorder.ok(handle, outputs)
            self.figures.ok += 1
            for (kind, key, _, _), output in zip(operations, decode_outputs(outputs),
                                                 strict=True):
                if kind == GET:
                    self.last_values[key] = output
            if self.healed and recorded.call >= self.healed_at:
                client.ok_after_heal = True
        if not self.bft:
            client.target = reply.replica
        self.finish_op(client)

    def give_up(self, client: Client) -> None:
        if client.probe:
            self.miss(client, f"given up after {client.attempts} attempts")
        if client.op is REGISTER:  # nothing recorded; start over under a new id
            client.op = None
            client.token += 1
            self.new_identity(client)
            api = self.require_api()
            api.call_at(api.now() + self.workload.backoff_us, lambda: self.register(client))
            return
        handle = client.handle
        assert handle is not None
        recorder = self.require_recorder()
        if client.refusals >= client.attempts:
            recorder.fail(handle)  # every attempt was refused: none can still run
            self.figures.failed += 1
        else:
            recorder.info(handle)
            self.figures.unknown += 1
            self.new_identity(client)
        self.finish_op(client)

    def new_identity(self, client: Client) -> None:
        """Continue under a new client id (the old one never sends again)."""
        del self.by_id[client.client_id]
        self.retired.add(client.client_id)
        client.client_id = self.require_recorder().new_client()
        self.by_id[client.client_id] = client
        client.seq = 0
        client.ops_done = 0

    def finish_op(self, client: Client) -> None:
        client.op = None
        client.handle = None
        client.token += 1
        client.ops_done += 1
        if self.workload.client_ops_max and client.ops_done >= self.workload.client_ops_max:
            self.new_identity(client)  # a client process that comes and goes
        api = self.require_api()
        if client.probe:
            latency = api.now() - client.probe_at_us
            figures = self.figures
            if client.probe_held:
                figures.probe_latency_max_us = max(figures.probe_latency_max_us, latency)
            if latency > self.prompt_bound_us():
                self.miss(client, f"answered after {latency} us")
            self.end_probe(client)
            return
        delay = randbelow(self.rng, self.workload.think_us_max + 1)
        api.call_at(api.now() + delay, lambda: self.next_op(client))

    def on_heal(self) -> None:
        # What the safety phase did not issue is not issued: from now on each
        # client only has to complete one operation (liveness, not throughput).
        self.figures.unissued = self.quota_left
        self.quota_left = 0
        self.healed = True
        now = self.require_api().now()
        self.healed_at = float(now)
        for checker in self.checkers:
            begin = getattr(checker, "begin_liveness", None)
            if begin is not None:
                begin(now)
        if self.fronts_wanted:
            self.draw_fronts()
        for client in self.clients:
            if client.idle:
                self.next_op(client)

    def kept_down(self, node: int) -> None:
        """``node`` stays down from the heal on (the ``degraded`` kind): never a front."""
        self.down.add(node)

    def draw_fronts(self) -> None:
        """``fronts=K``: every client's attempts from now on go to one of K correct
        nodes up, and to no other, retries and reads included, as every client of
        a live cluster that connects to one node's Redis port: that node's
        replica is then the only one a request reaches, and it relays it to the
        primary. With ``degraded`` and the primary kept down, this is the shape
        of the stall of ADR 0033 (a backup's lone suspicion), which the default
        clients hide: under BFT they send a retry to every replica, so every
        backup times it. The requests are still signed by their clients (live,
        the front's node vouches for them): which replicas hold a request is
        what the stall is about."""
        up = [node for node in self.config.nodes
              if node not in self.down and node not in self.config.byzantine]
        self.fronts = sorted(self.rng.sample(up, min(self.fronts_wanted, len(up))))
        for client in self.clients:
            client.target = self.rng.choice(self.fronts)

    # -- the operations ------------------------------------------------------------------

    def plan(self) -> PlannedOp:
        """Draw the next operation (values written are unique per write)."""
        rng = self.rng
        workload = self.workload
        table = self.plan_table
        if table is None or table[0] is not workload.mix:
            table = self.plan_table = mix_table(workload.mix)
        _, kinds, cumulative, total, timed_reads = table
        # weighted_choice(rng, kinds, weights): the same draw, from the table
        kind = kinds[bisect_right(cumulative, rng.random() * total, 0, len(cumulative) - 1)]
        counter = kind == INCR or (
            kind in (GET, DELETE) and workload.counters and rng.random() < 0.3
        )
        timed = kind == PUTX or (kind in (GET, DELETE) and timed_reads and rng.random() < 0.3)
        if kind in (RPUSH, LRANGE):
            key = f"l{randbelow(rng, workload.keys)}"
        elif timed:
            key = f"x{randbelow(rng, workload.keys)}"  # (t0.. are the transactions' keys)
        elif counter:
            key = f"n{randbelow(rng, workload.counters)}"
        else:
            key = f"k{randbelow(rng, workload.keys)}"
        self.write_next += 1
        unique = f"w{self.write_next}"
        if kind == TXN:
            operations = draw_transaction(rng, self.last_values, unique)
            read_only = all(operation[0] == GET for operation in operations)
            return PlannedOp(
                TXN, key_of_transaction(operations), encode_transaction(operations), None,
                read_only and rng.random() >= workload.read_via_log,
                transaction_command(operations),
            )
        if kind == GET:
            read_only = rng.random() >= workload.read_via_log
            return PlannedOp(GET, key, None, None, read_only, encode_command(GET, key.encode()))
        if kind in (PUTX, RPUSH, LRANGE):
            now_us = self.require_api().now()
            return plan_typed(kind, key, unique, now_us, rng, workload.read_via_log)
        if kind == DELETE:
            return PlannedOp(DELETE, key, None, None, False, encode_command(DELETE, key.encode()))
        if kind == INCR:
            delta = rng.randint(-5, 20)
            command = encode_command(INCR, key.encode(), delta)
            return PlannedOp(INCR, key, str(delta), None, False, command)
        if kind == CAS:
            expected = self.last_values.get(key) if rng.random() < 0.7 else None
            command = encode_command(
                CAS, key.encode(), None if expected is None else expected.encode(), unique.encode()
            )
            return PlannedOp(CAS, key, unique, expected, False, command)
        assert kind in (PUT, APPEND)
        command = encode_command(kind, key.encode(), unique.encode())
        return PlannedOp(kind, key, unique, None, False, command)

    @staticmethod
    def output_of(op: PlannedOp, value: object) -> str | None:
        """The history's ``output`` for a KV ``ok`` payload."""
        if op.kind == GET:
            assert value is None or isinstance(value, bytes)
            return None if value is None else value.decode("utf-8", "replace")
        if op.kind == CAS:
            return "ok" if value is True else "fail"
        if op.kind in (INCR, RPUSH):
            assert isinstance(value, int)
            return str(value)
        if op.kind == LRANGE:
            return lrange_output(value)
        return None

    # -- membership (the protocol-specific part is a callable) ---------------------------

    def membership_tick(self) -> None:
        if self.healed or self.membership is None:
            return
        self.membership(self)
        api = self.require_api()
        api.call_at(api.now() + self.workload.membership_every_us, self.membership_tick)

    # -- the nemesis: crashes aimed at the leader ------------------------------------------

    def nemesis_tick(self) -> None:
        """Crash the believed leader (or, one time in five, any node), and half the
        time a second node briefly, inside a step (losing some unsynced writes),
        right after or during the election that follows: the elections and
        recoveries that random crash times rarely produce. Only in the safety
        phase, only with the ``crash`` fault."""
        if self.healed:
            return
        api = self.require_api()
        rng = self.rng
        leader = self.leader_hint() if self.leader_hint is not None else -1
        target = leader if leader >= 0 and rng.random() < 0.8 else rng.randrange(self.config.n)
        crash = Crash(target, api.now(), rng.randrange(5_000, 400_000), rng.random() < 0.5,
                      rng.randint(0, 3))
        if self.nemesis_aims_at_syncs and rng.random() < SYNC_AIMED_SHARE:
            # Under group commit: right after an early send while a sync is pending.
            crash = replace(crash, mid_step=True, unsynced=rng.randint(1, SYNC_AIM_MAX))
        api.crash(crash)
        self.figures.nemesis_crashes += 1
        if self.config.n > 1 and rng.random() < 0.5:
            other = rng.choice([node for node in self.config.nodes if node != target])
            # Right after the leader, or during the election that follows it.
            at = api.now() + rng.randrange(1_000, 700_000)
            crash = Crash(other, at, rng.randrange(1_000, 30_000), True, rng.randint(0, 3))
            api.call_at(at, functools.partial(self.nemesis_crash, crash))
        period = self.workload.nemesis_every_us
        api.call_at(api.now() + period // 2 + rng.randrange(period + 1), self.nemesis_tick)

    def nemesis_crash(self, crash: Crash) -> None:
        if not self.healed:
            self.require_api().crash(crash)
            self.figures.nemesis_crashes += 1

    # -- plumbing ------------------------------------------------------------------------

    def require_api(self) -> HarnessApi:
        assert self.api is not None, "KvHarness used before bind()"
        return self.api

    def require_recorder(self) -> HistoryRecorder:
        assert self.recorder is not None, "KvHarness used before bind()"
        return self.recorder


# Waves begun before the view is stable (``KvHarness.start_wave``) per wave asked
# for, at most: beyond, the probes end without a verdict.
UNSETTLED_WAVES_PER_WAVE = 4

# How long a run whose liveness is excused goes on after the heal.
EXCUSED_LIVENESS_US = 5_000_000


def kv_options(
    seed: int,
    nodes: int,
    faults: tuple[str, ...],
    workload: KvWorkload,
    *,
    encode: bool = True,
    safety_us: int | None = None,
    clock_drift_ppm: int = CLOCK_DRIFT_PPM_DEFAULT,
    byzantine: int = 0,
    adversary: tuple[str, ...] | None = None,
    protocol: str | None = None,
) -> SimOptions:
    """Options of a KV run: the usual seeded network and faults, over a safety
    phase long enough for the workload, with the workload in ``extra``.

    Partitions and crashes are drawn per ``workload.fault_window_us`` of the
    safety phase (each window as ``SimOptions.draw`` draws a whole run), so a
    long run sees leaders fail again and again rather than a few faults early."""
    workload.validate()
    base = SimOptions.draw(seed, nodes, byzantine, faults, requests_per_node=0, encode=encode,
                           clock_drift_ppm=clock_drift_ppm, adversary=adversary,
                           protocol=protocol)
    correct = [node for node in range(nodes) if node not in base.byzantine]
    rounds = -(-workload.ops // workload.clients)
    safety = safety_us if safety_us is not None else max(2_000_000, rounds * 50_000)
    rng = random.Random(f"replicaio-kv-options:{seed}")
    partitions: list[Partition] = []
    crashes: list[Crash] = []
    window = workload.fault_window_us
    # Faulty disks: a fixed set of nodes, faults drawn per window too.
    from replicaio.assembly import damaged_disks_max, faults_tolerated

    disks_max = damaged_disks_max(protocol, nodes, byzantine)
    disks = draw_disk_nodes(seed, correct, disks_max) if "disk" in faults else []
    disk_rng = random.Random(f"replicaio-kv-disk-faults:{seed}")
    # The "rewrite" kind: lost writes aimed at records rewritten in place, on the
    # same nodes, from a stream of its own (the other kinds' draws as they were).
    rewrite_disks = draw_disk_nodes(seed, correct, disks_max) if "rewrite" in faults else []
    rewrite_rng = random.Random(f"replicaio-kv-rewrite:{seed}")
    slow_rng = random.Random(f"replicaio-kv-slow:{seed}")
    slow: list[Slow] = []
    for start in range(0, safety, window):
        span = min(window, safety - start)
        if span < window // 2 or span < 4_000:
            break
        cuts: tuple[Partition, ...] = ()
        if "partition" in faults:
            cuts = draw_partitions(rng, nodes, span)
            partitions += [
                replace(cut, start_us=cut.start_us + start, end_us=cut.end_us + start)
                for cut in cuts
            ]
        if "slow" in faults:  # its own stream: the other kinds' draws as they were
            slow += [
                replace(window, start_us=window.start_us + start, end_us=window.end_us + start)
                for window in draw_slow(slow_rng, nodes, span, cuts)
            ]
        if "crash" in faults:
            crashes += [
                replace(crash, at_us=crash.at_us + start)
                for crash in draw_crashes(rng, correct, span)
            ]
        crashes += [
            replace(crash, at_us=crash.at_us + start)
            for crash in draw_disk_faults(disk_rng, disks, span)
        ]
        crashes += [
            replace(crash, at_us=crash.at_us + start)
            for crash in draw_rewrite_faults(rewrite_rng, rewrite_disks, span)
        ]
    if "sync" in faults:
        crashes = list(aim_at_syncs(seed, tuple(crashes)))
    kept_down: tuple[int, ...] = ()
    if "degraded" in faults:
        # A bare quorum after the heal: f faults in all, Byzantine nodes and
        # damaged disks included. Without membership changes, which could
        # leave the heal with a configuration of fewer voters than f counts on.
        workload = replace(workload, membership_every_us=0)
        kept_down = draw_kept_down(seed, correct, tuple(crashes),
                                   faults_tolerated(protocol, nodes) - byzantine)
    return replace(
        base,
        kept_down=kept_down,
        safety_us=safety,
        liveness_us=safety + 30_000_000,
        partitions=tuple(partitions),
        crashes=tuple(crashes),
        slow=tuple(slow),
        extra={**base.extra, EXTRA_KEY: workload.as_extra()},
    )


def kv_harness_for(protocol: str, config: ClusterConfig) -> KvHarness | None:
    """The KV harness of a replicated-service protocol name, or ``None``."""
    from replicaio.assembly import service_spec

    found = service_spec(protocol)
    if found is None:
        return None
    spec, parameters = found
    checkers = spec.checkers(config)
    if spec.membership is None:
        return KvHarness(config, checkers, client_macs=bool(parameters.get("macs", 0)),
                         fast_reads=spec.reads or bool(parameters.get("reads", 0)),
                         fast_quorums=spec.fast_quorums,
                         fronts=parameters.get("fronts", 0))
    nemesis = MembershipNemesis(config, spec.membership)
    harness = KvHarness(config, checkers, nemesis, leader_hint=lambda: nemesis.leader)
    harness.observers.append(nemesis.observe)
    harness.operator = OperatorScript(nemesis, harness)
    return harness
