"""The options of one simulated run, all drawn from its seed.

One seed determines everything (after TigerBeetle's VOPR swarm options):
the seed draws, within the fault kinds the user allowed, how slow and lossy
the network is, when partitions start and heal, which nodes crash and for
how long, how much unsynced data a crash keeps, which behaviour each
Byzantine node follows, and when clients make requests. Two runs with equal
options and seed are the same run.

Clocks. Each node's clock runs at its own rate, ``1 + clock_rates_ppm[i] /
10**6`` of true (virtual) time, and reads ``clock_offsets_us[i]`` ahead of it
(after TigerBeetle's simulated clocks): a timer of ``d`` microseconds set by
node ``i`` fires after ``d / rate`` of true time. Rates are drawn within
``clock_drift_ppm`` (``--clock-drift``, default ``CLOCK_DRIFT_PPM_DEFAULT``);
only the ``clock`` fault draws rates beyond it, for up to half the nodes
(from 10% to 2x fast, or up to 4x slow). Nodes read no clock, only timers, so
today only rates shape a run; offsets are drawn and recorded for components
that will.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from replicaio.core.errors import UsageError
from replicaio.sim.adversary import BASE_BEHAVIOURS, BEHAVIOURS, draw_extras

FAULT_KINDS = (
    "crash", "partition", "loss", "dup", "reorder", "clock", "disk", "sync", "degraded", "slow",
    "rewrite",
)
# Slow links (the "slow" kind): for a while, every message from one side to the
# rest arrives this much later than the network's latency (each delayed by a
# draw in [delay/2, delay]; a FIFO link stays FIFO, so what follows waits too):
# a congested or half-broken link, far slower than a timeout (an election, a
# request's retry), yet never lost. Half of them are drawn against a one-way
# partition, in the other direction over the same while: one side's messages
# are cut and the answers it still gets come late, so that what a node learns
# from a late answer may be older than what the others decided meanwhile.
SLOW_DELAYS_US = (50_000, 300_000, 1_500_000)
# Lost writes of records rewritten in place (the "rewrite" kind): on each node
# whose disk may fail, one lost_writes fault per fault window, drawn early in it
# and aimed (Crash.rewrite) right after the node's first step from then on that
# erases a durable record and writes it anew (a log suffix overwritten); the
# disk then loses that step's writes, so the records it replaced come back.
# Plain lost writes mostly take back appends (the log only gets shorter); a lost
# overwrite brings old contents back, which is what a disk that acknowledged a
# write it never made does to data updated in place.
REWRITE_DOWN_US_MAX = 100_000  # the node restarts within this (a process restarted)
# Group commit (the "sync" kind, docs/adr/0024): a sync takes time, drawn per
# sync with one of these means, while the node keeps stepping.
SYNC_US_MEANS = (200, 1_000, 5_000)
CLOCK_DRIFT_PPM_DEFAULT = 1_000  # rates drawn within +-0.1% unless told otherwise
CLOCK_OFFSET_US_MAX = 1_000_000_000
# The clock fault's rates beyond the bound: 10%, 30%, 2x fast; 10%, 30%, 2x, 4x slow.
CLOCK_FAULT_RATES_PPM = (100_000, 300_000, 1_000_000, -100_000, -300_000, -500_000, -750_000)
# Storage faults (the "disk" kind; after TigerBeetle's storage fault model), each a
# crash of the node with damage found at its restart, see docs/storage.md:
# * lost_writes: its last ``lose_synced`` synced writes are lost (a torn or lost
#   write of synced data, a flipped bit in the last records);
# * corrupt: a flipped bit in the middle of the log: the store cuts the log back
#   to the intact prefix before it (its last ``lose_synced`` synced writes are
#   lost; more than the store remembers, or 0: the whole log, as for a damaged
#   snapshot whose segments are gone);
# * misdirected: a write of synced data landed at the wrong place: where it was
#   meant to go holds stale bytes (the write is lost), and where it landed an
#   older record is overwritten, which the store finds (a record of the wrong
#   batch, or a bad checksum) and cuts the log before; ``lose_synced`` reaches
#   back to the overwritten record (1: it landed on no live record);
# * read_error: the next restart fails to read the disk and is retried later;
# * disk_full: a sync fails inside a step (no space), a prefix of it written.
DISK_FAULTS = ("lost_writes", "corrupt", "misdirected", "read_error", "disk_full")
DISK_FAULT_WEIGHTS = (6, 2, 2, 1, 1)
BYZANTINE_BEHAVIOURS = BASE_BEHAVIOURS  # one of these is drawn for every Byzantine node


def parse_faults(text: str | None) -> tuple[str, ...]:
    """``"crash,loss"`` -> ``("crash", "loss")``, with a clear error for unknown kinds."""
    if not text:
        return ()
    kinds = tuple(kind.strip() for kind in text.split(",") if kind.strip())
    for kind in kinds:
        if kind not in FAULT_KINDS:
            raise UsageError(f"unknown fault kind {kind!r}; choose from {', '.join(FAULT_KINDS)}")
    return kinds


def parse_adversary(text: str | None) -> tuple[str, ...] | None:
    """``"forge,replay"`` -> ``("forge", "replay")`` (every name a registered
    behaviour, see ``replicaio.sim.adversary``); ``None`` when not given."""
    if not text:
        return None
    names = tuple(name.strip() for name in text.replace("+", ",").split(",") if name.strip())
    for name in names:
        if name not in BEHAVIOURS:
            raise UsageError(
                f"unknown byzantine behaviour {name!r}; choose from {', '.join(BEHAVIOURS)}"
            )
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True, slots=True)
class Partition:
    """Links cut from ``start_us`` to ``end_us``: between the two sides, or one way."""

    start_us: int
    end_us: int
    side: tuple[int, ...]
    symmetric: bool


HELD_MAX = 64  # messages held for one crashed node (hold_across_restart)
HOLD_SPREAD_US = 1_000_000  # held messages arrive within this long after the restart
HEAVY_STEP_WRITES = 2
HEAVY_WAIT_US = 500_000
RARE_SEND_SHARE = 0.05  # a message kind below this share of a node's sends is rare
RARE_SENDS_MIN = 100  # ... once the node has sent this many messages
RARE_WAIT_US = 2_000_000  # an aimed crash that finds no rare send lands after this


@dataclass(frozen=True, slots=True)
class Slow:
    """Messages sent from ``side`` to the other nodes from ``start_us`` to
    ``end_us`` are delayed by ``delay_us / 2`` to ``delay_us`` more."""

    start_us: int
    end_us: int
    side: tuple[int, ...]
    delay_us: int


@dataclass(frozen=True, slots=True)
class Crash:
    """``node`` crashes at ``at_us`` and restarts ``down_us`` later; a crash that
    lands inside a step keeps the first ``keep_unsynced`` unsynced writes.

    ``heavy`` (mid-step crashes only) aims the crash: it lands in the node's
    first step from ``at_us`` on that writes at least ``HEAVY_STEP_WRITES``
    records (a delivery that collects, a snapshot, a log append), within
    ``HEAVY_WAIT_US`` (then in whatever step comes), and keeps
    ``keep_unsynced`` modulo that step's writes: always a strict prefix, so the
    step is cut in its middle. Plain mid-step crashes mostly land in steps
    that write nothing or one record, where no write order can be wrong.

    ``rare`` (mid-step crashes only; > 0) aims the crash elsewhere: right
    after the ``rare``-th step from ``at_us`` that sends a message of a kind
    making up less than ``RARE_SEND_SHARE`` of what the node sent so far (a
    read-index request, a vote, a fetch), with all its writes synced, or after
    ``RARE_WAIT_US``. The reply to that rare request then finds the node down
    or restarted: the schedules where replies get matched to the wrong
    incarnation's requests.

    ``unsynced`` (mid-step crashes under group commit, the ``sync`` kind; > 0)
    aims the crash at what group commit opens: it lands in the ``unsynced``-th
    step from ``at_us`` that sends before the sync (``sends_before_sync``)
    while writes of an earlier step are still unsynced, after those sends
    left, and keeps ``keep_unsynced`` modulo the unsynced writes (a strict
    prefix); or in whatever step comes after ``HEAVY_WAIT_US``. Messages that
    claimed to depend on nothing unsynced are out, and the writes are lost.

    ``rewrite`` (``lost_writes`` storage faults of the ``rewrite`` kind; > 0)
    aims the fault at data updated in place: the node goes down right after the
    ``rewrite``-th step from ``at_us`` that erases a durable record and writes
    the same key anew in one step (a log suffix overwritten), its sends out and
    its writes synced; the disk loses that step's writes and the
    ``lose_synced`` synced writes before them, so the records it replaced come
    back (the store reports the loss, as for every lost write). A fault whose
    node never rewrites before it crashes otherwise does nothing."""

    node: int
    at_us: int
    down_us: int
    mid_step: bool
    keep_unsynced: int
    disk: str = ""  # a storage fault with the crash: one of DISK_FAULTS, or none
    lose_synced: int = 0  # lost_writes: how many synced writes are lost
    heavy: bool = False  # aimed at a step that writes much (see above)
    rare: int = 0  # aimed just after the rare-th step that sends a rare kind (see above)
    unsynced: int = 0  # aimed at the unsynced-th early send during a sync (see above)
    rewrite: int = 0  # lost writes aimed just after the rewrite-th rewriting step (see above)


@dataclass(frozen=True, slots=True)
class SimOptions:
    """Everything that shapes one run. Build with :meth:`draw`."""

    seed: int
    nodes: int
    byzantine: tuple[int, ...]
    behaviours: tuple[str, ...]
    faults: tuple[str, ...]
    latency_min_us: int
    latency_mean_us: int
    reorder_us: int
    loss: float
    duplicate: float
    requests_per_node: int
    request_spacing_us: int
    safety_us: int
    liveness_us: int
    partitions: tuple[Partition, ...] = ()
    crashes: tuple[Crash, ...] = ()
    clock_drift_ppm: int = 0
    clock_rates_ppm: tuple[int, ...] = ()  # per node; empty: every clock exact
    clock_offsets_us: tuple[int, ...] = ()
    encode: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    # A message that reaches a crashed node is, with this probability, held
    # and delivered right after the node restarts (a peer's send queue that
    # flushes once the connection is back): replies to a request of the old
    # incarnation reach the new one. Safety phase only; at most HELD_MAX per node.
    hold_across_restart: float = 0.0
    # Group commit ("sync" kind): 0 syncs every writing step at once, as before;
    # above 0, a step's writes become durable only when a sync completes, on
    # average this long after the first write it covers (docs/adr/0024).
    sync_us_mean: int = 0
    # The "degraded" kind: correct nodes crashed when the network heals and kept
    # down through the liveness phase, so that liveness is demanded of a bare
    # quorum (as many faulty nodes as the fault model allows, Byzantine and
    # damaged disks included). Empty: every crashed node restarts at the heal.
    kept_down: tuple[int, ...] = ()
    # The "slow" kind (SLOW_DELAYS_US): windows of delayed links.
    slow: tuple[Slow, ...] = ()

    @classmethod
    def draw(
        cls,
        seed: int,
        nodes: int,
        byzantine: int = 0,
        faults: tuple[str, ...] = (),
        *,
        behaviour: str | None = None,
        requests_per_node: int | None = None,
        encode: bool = True,
        adversary: tuple[str, ...] | None = None,
        protocol: str | None = None,
        clock_drift_ppm: int = CLOCK_DRIFT_PPM_DEFAULT,
    ) -> SimOptions:
        """Draw the options of run ``seed`` within the allowed fault kinds.
        ``adversary`` (or the single ``behaviour``) forces every Byzantine
        node's behaviours; ``protocol`` lets the seed draw its own ones."""
        if byzantine < 0 or byzantine >= nodes:
            raise UsageError(f"--byzantine must be in [0, {nodes - 1}]")
        if behaviour is not None:
            adversary = parse_adversary(behaviour)
        forced = "+".join(parse_adversary(",".join(adversary)) or ()) if adversary else None
        rng = random.Random(f"replicaio-options:{seed}")
        order = list(range(nodes))
        rng.shuffle(order)
        faulty = tuple(sorted(order[:byzantine]))
        behaviours = draw_behaviours(rng, seed, len(faulty), forced, protocol)
        latency_min = rng.choice((100, 500, 1000))
        latency_mean = latency_min + rng.choice((200, 1000, 5000))
        reorder = rng.choice((0, 2000, 20000)) if "reorder" in faults else 0
        loss = rng.choice((0.01, 0.05, 0.2)) if "loss" in faults else 0.0
        duplicate = rng.choice((0.01, 0.05, 0.2)) if "dup" in faults else 0.0
        requests = requests_per_node if requests_per_node is not None else rng.randint(1, 6)
        spacing = rng.choice((1000, 10000, 50000))
        safety = max(200_000, requests * spacing * 2)
        correct = [node for node in range(nodes) if node not in faulty]
        partitions = draw_partitions(rng, nodes, safety) if "partition" in faults else ()
        crashes = draw_crashes(rng, correct, safety) if "crash" in faults else ()
        rates, offsets = draw_clocks(seed, nodes, clock_drift_ppm, beyond="clock" in faults)
        if "disk" in faults:
            # At most f nodes with faulty disks, Byzantine nodes included, for the
            # Byzantine bound n >= 3f + 1 of the broadcast family (a node that lost
            # writes abstains and counts as faulty; the KV harness draws its own,
            # for Raft's n >= 2f + 1): a quorum of intact disks remains.
            disks = draw_disk_nodes(seed, correct, (nodes - 1) // 3 - len(faulty))
            disk_rng = random.Random(f"replicaio-disk-faults:{seed}")
            crashes = tuple(sorted(
                crashes + draw_disk_faults(disk_rng, disks, safety),
                key=lambda crash: (crash.at_us, crash.node),
            ))
        if "rewrite" in faults:  # the same nodes as "disk" (their own stream)
            disks = draw_disk_nodes(seed, correct, (nodes - 1) // 3 - len(faulty))
            rewrite_rng = random.Random(f"replicaio-rewrite:{seed}")
            crashes = tuple(sorted(
                crashes + draw_rewrite_faults(rewrite_rng, disks, safety),
                key=lambda crash: (crash.at_us, crash.node),
            ))
        sync = 0
        if "sync" in faults:
            sync = draw_sync_us_mean(seed)
            crashes = aim_at_syncs(seed, crashes)
        slow: tuple[Slow, ...] = ()
        if "slow" in faults:
            slow = draw_slow(random.Random(f"replicaio-slow:{seed}"), nodes, safety, partitions)
        kept_down: tuple[int, ...] = ()
        if "degraded" in faults:  # the broadcast family's bound n >= 3f + 1
            kept_down = draw_kept_down(seed, correct, crashes, (nodes - 1) // 3 - len(faulty))
        return cls(
            seed=seed,
            nodes=nodes,
            byzantine=faulty,
            behaviours=behaviours,
            faults=faults,
            latency_min_us=latency_min,
            latency_mean_us=latency_mean,
            reorder_us=reorder,
            loss=loss,
            duplicate=duplicate,
            requests_per_node=requests,
            request_spacing_us=spacing,
            safety_us=safety,
            liveness_us=safety + 30_000_000,
            partitions=partitions,
            crashes=crashes,
            clock_drift_ppm=clock_drift_ppm,
            clock_rates_ppm=rates,
            clock_offsets_us=offsets,
            encode=encode,
            sync_us_mean=sync,
            kept_down=kept_down,
            slow=slow,
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain data, for the event log header, ``--json`` and ``--options``."""
        data = asdict(self)
        data["partitions"] = [asdict(partition) for partition in self.partitions]
        data["crashes"] = [crash_dict(crash) for crash in self.crashes]
        if not self.sync_us_mean:  # event log headers (and hashes) of runs without it unchanged
            del data["sync_us_mean"]
        if not self.kept_down:  # the same for the degraded kind
            del data["kept_down"]
        if self.slow:  # and for the slow kind
            data["slow"] = [asdict(window) for window in self.slow]
        else:
            del data["slow"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimOptions:
        """The options :meth:`as_dict` produced (e.g. a shrunk schedule), validated."""
        try:
            fields = dict(data)
            fields["byzantine"] = tuple(int(node) for node in fields["byzantine"])
            fields["behaviours"] = tuple(str(name) for name in fields["behaviours"])
            fields["faults"] = parse_faults(",".join(fields["faults"]))
            fields["partitions"] = tuple(
                Partition(
                    int(item["start_us"]), int(item["end_us"]),
                    tuple(int(node) for node in item["side"]), bool(item["symmetric"]),
                )
                for item in fields.get("partitions", ())
            )
            fields["crashes"] = tuple(
                Crash(
                    int(item["node"]), int(item["at_us"]), int(item["down_us"]),
                    bool(item["mid_step"]), int(item["keep_unsynced"]),
                    str(item.get("disk", "")), int(item.get("lose_synced", 0)),
                    bool(item.get("heavy", False)),
                    int(item.get("rare", 0)),
                    int(item.get("unsynced", 0)),
                    int(item.get("rewrite", 0)),
                )
                for item in fields.get("crashes", ())
            )
            fields["kept_down"] = tuple(int(node) for node in fields.get("kept_down", ()))
            fields["slow"] = tuple(
                Slow(int(item["start_us"]), int(item["end_us"]),
                     tuple(int(node) for node in item["side"]), int(item["delay_us"]))
                for item in fields.get("slow", ())
            )
            for name in ("clock_rates_ppm", "clock_offsets_us"):
                fields[name] = tuple(int(value) for value in fields.get(name, ()))
            options = cls(**fields)
            options.validate()
        except (KeyError, TypeError, ValueError) as error:
            raise UsageError(f"bad simulation options: {error!r}") from error
        return options

    def validate(self) -> None:
        """Raise :class:`UsageError` unless the options describe a possible run."""
        problems = []
        if self.nodes < 1:
            problems.append("nodes must be >= 1")
        if len(self.behaviours) != len(self.byzantine):
            problems.append("one behaviour per byzantine node")
        for mix in self.behaviours:
            for name in mix.split("+"):
                if name not in BEHAVIOURS:
                    problems.append(f"unknown behaviour {name!r}")
        if not 0 <= self.loss < 1 or not 0 <= self.duplicate < 1:
            problems.append("loss and duplicate are probabilities in [0, 1)")
        if not 0 <= self.hold_across_restart <= 1:
            problems.append("hold_across_restart is a probability in [0, 1]")
        if not 0 < self.latency_min_us < self.latency_mean_us:
            problems.append("need 0 < latency_min_us < latency_mean_us")
        for window in self.slow:
            if not (0 <= window.start_us < window.end_us and window.delay_us > 0
                    and window.side and all(0 <= node < self.nodes for node in window.side)):
                problems.append(f"bad slow window {window}")
        if self.sync_us_mean < 0:
            problems.append("sync_us_mean must be >= 0")
        if not 0 < self.safety_us < self.liveness_us:
            problems.append("need 0 < safety_us < liveness_us")
        for crash in self.crashes:
            if not 0 <= crash.node < self.nodes or crash.node in self.byzantine:
                problems.append(f"crash of node {crash.node}: not a correct node")
            if crash.disk and crash.disk not in DISK_FAULTS:
                problems.append(f"unknown disk fault {crash.disk!r}")
            if crash.rewrite < 0 or (crash.rewrite and crash.disk != "lost_writes"):
                problems.append(f"crash of node {crash.node}: a rewrite aim needs a "
                                "lost_writes fault")
        for node in self.kept_down:
            if not 0 <= node < self.nodes or node in self.byzantine:
                problems.append(f"node {node} kept down: not a correct node")
        if len(set(self.kept_down)) != len(self.kept_down):
            problems.append("a node kept down twice")
        for partition in self.partitions:
            if any(not 0 <= node < self.nodes for node in partition.side):
                problems.append(f"partition side {partition.side} names unknown nodes")
        problems += self.clock_problems()
        if problems:
            raise UsageError("bad simulation options: " + "; ".join(problems))

    def clock_problems(self) -> list[str]:
        problems = []
        if not 0 <= self.clock_drift_ppm < 1_000_000:
            problems.append("clock_drift_ppm must be in [0, 1000000)")
        for name in ("clock_rates_ppm", "clock_offsets_us"):
            if len(getattr(self, name)) not in (0, self.nodes):
                problems.append(f"{name} needs one value per node (or none)")
        for rate in self.clock_rates_ppm:
            if rate <= -1_000_000:
                problems.append(f"clock rate {rate} ppm: a clock must run forward")
            elif abs(rate) > self.clock_drift_ppm and "clock" not in self.faults:
                problems.append(
                    f"clock rate {rate} ppm beyond the drift bound {self.clock_drift_ppm} "
                    "without the clock fault"
                )
        return problems


def draw_clocks(
    seed: int, nodes: int, drift_ppm: int, *, beyond: bool
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per-node clock rates (ppm) within ``drift_ppm`` and offsets; with ``beyond``
    (the clock fault), up to half the nodes get a rate far beyond the bound.
    Their own random stream: drawing clocks changes no other option."""
    if not drift_ppm and not beyond:
        return (), ()
    rng = random.Random(f"replicaio-clocks:{seed}")
    rates = [rng.randint(-drift_ppm, drift_ppm) for _ in range(nodes)]
    offsets = tuple(rng.randrange(CLOCK_OFFSET_US_MAX) for _ in range(nodes))
    if beyond:
        for node in rng.sample(range(nodes), rng.randint(1, max(1, nodes // 2))):
            rates[node] = rng.choice(CLOCK_FAULT_RATES_PPM)
    return tuple(rates), offsets


def draw_sync_us_mean(seed: int) -> int:
    """The mean sync latency of run ``seed`` with group commit on. Its own random
    stream: switching the "sync" kind on changes no other option of the seed."""
    return random.Random(f"replicaio-sync:{seed}").choice(SYNC_US_MEANS)


# Under group commit, the share of crashes aimed at an early send during a
# sync (Crash.unsynced), and the most steps such an aimed crash waits for.
SYNC_AIMED_SHARE = 0.5
SYNC_AIM_MAX = 3


def aim_at_syncs(seed: int, crashes: tuple[Crash, ...]) -> tuple[Crash, ...]:
    """A share of ``crashes`` (storage faults excepted) aimed at group commit
    (``Crash.unsynced``), drawn from a stream of their own."""
    rng = random.Random(f"replicaio-sync-aims:{seed}")
    aimed = []
    for crash in crashes:
        if not crash.disk and not crash.rare and rng.random() < SYNC_AIMED_SHARE:
            crash = replace(crash, mid_step=True, heavy=False,
                            unsynced=rng.randint(1, SYNC_AIM_MAX))
        aimed.append(crash)
    return tuple(aimed)


def draw_behaviours(
    rng: random.Random, seed: int, count: int, forced: str | None, protocol: str | None
) -> tuple[str, ...]:
    """Each Byzantine node's mix: one base behaviour from the options stream
    (as before mixes existed, so older seeds keep their schedules), plus the
    weighted extras (forging, delaying, ...) from a stream of their own. The
    base is drawn even when the mix is ``forced``, so forcing the adversary
    leaves the rest of the run's schedule as the seed draws it."""
    # Equivocation is the behaviour that breaks weak protocols: draw it most.
    weights = [4 if name == "equivocate" else 2 for name in BYZANTINE_BEHAVIOURS]
    extras_rng = random.Random(f"replicaio-adversary-mix:{seed}")
    found = []
    for _ in range(count):
        base = rng.choices(BYZANTINE_BEHAVIOURS, weights)[0]
        extras = [name for name in draw_extras(extras_rng, protocol) if name != base]
        found.append(forced or "+".join([base, *extras]))
    return tuple(found)


def draw_partitions(rng: random.Random, nodes: int, safety_us: int) -> tuple[Partition, ...]:
    found = []
    for _ in range(rng.randint(1, 3)):
        start = rng.randrange(0, safety_us)
        end = min(safety_us, start + rng.randrange(10_000, safety_us // 2 + 10_001))
        size = rng.randint(1, max(1, nodes // 2))
        side = tuple(sorted(rng.sample(range(nodes), size)))
        found.append(Partition(start, end, side, symmetric=rng.random() < 0.7))
    return tuple(found)


def draw_slow(
    rng: random.Random, nodes: int, span_us: int, partitions: Sequence[Partition]
) -> tuple[Slow, ...]:
    """One or two slow windows within ``span_us`` (the "slow" kind): each
    against a one-way partition of ``partitions`` in the other direction over
    the same while, half the time when there is one, else anywhere."""
    found = []
    one_way = [cut for cut in partitions if not cut.symmetric]
    for _ in range(rng.randint(1, 2)):
        delay = rng.choice(SLOW_DELAYS_US)
        if one_way and rng.random() < 0.5:
            cut = rng.choice(one_way)
            rest = tuple(node for node in range(nodes) if node not in cut.side)
            if rest:
                found.append(Slow(cut.start_us, cut.end_us, rest, delay))
                continue
        start = rng.randrange(0, span_us)
        end = min(span_us, start + rng.randrange(10_000, span_us // 2 + 10_001))
        size = rng.randint(1, max(1, nodes // 2))
        found.append(Slow(start, max(end, start + 1), tuple(sorted(rng.sample(range(nodes), size))),
                          delay))
    return tuple(found)


def crash_dict(crash: Crash) -> dict[str, Any]:
    """``crash`` as plain data; ``rare`` and ``unsynced`` only when it is aimed
    that way, so the event log headers (and hashes) of runs without such crashes
    stay as they were."""
    data = asdict(crash)
    if not crash.rare:
        del data["rare"]
    if not crash.unsynced:
        del data["unsynced"]
    if not crash.rewrite:
        del data["rewrite"]
    return data


def draw_crashes(rng: random.Random, correct: list[int], safety_us: int) -> tuple[Crash, ...]:
    found = []
    for _ in range(rng.randint(1, 4)):
        node = rng.choice(correct)
        found.append(Crash(
            node=node,
            at_us=rng.randrange(0, safety_us),
            down_us=rng.randrange(1_000, safety_us // 2),
            mid_step=rng.random() < 0.5,
            keep_unsynced=rng.randint(0, 3),
        ))
    return tuple(sorted(found, key=lambda crash: (crash.at_us, crash.node)))


def draw_disk_nodes(seed: int, correct: list[int], disks_max: int) -> list[int]:
    """The nodes whose disks may fail in run ``seed``: at most ``disks_max`` of
    the correct ones (drawn from their own generator, so that switching the
    "disk" kind on leaves every other fault of the seed as it was)."""
    if disks_max < 1 or not correct:
        return []
    rng = random.Random(f"replicaio-disk-nodes:{seed}")
    return sorted(rng.sample(correct, rng.randint(1, min(disks_max, len(correct)))))


def draw_kept_down(
    seed: int, correct: list[int], crashes: tuple[Crash, ...], room: int
) -> tuple[int, ...]:
    """The correct nodes run ``seed`` keeps down through its liveness phase (the
    "degraded" kind): between 1 and ``room`` of them (``room``: the faults the
    model tolerates besides the Byzantine nodes), never a node with a faulty
    disk (it already counts as faulty). Drawn from a generator of their own, so
    that switching the kind on leaves every other fault of the seed as it was."""
    damaged = {crash.node for crash in crashes if crash.disk}
    room -= len(damaged)
    candidates = [node for node in correct if node not in damaged]
    if room < 1 or not candidates:
        return ()
    rng = random.Random(f"replicaio-degraded:{seed}")
    return tuple(sorted(rng.sample(candidates, rng.randint(1, min(room, len(candidates))))))


def draw_disk_faults(rng: random.Random, disks: list[int], safety_us: int) -> tuple[Crash, ...]:
    """Storage faults on the nodes ``disks`` within ``safety_us``."""
    if not disks:
        return ()
    found = []
    for _ in range(rng.randint(1, 4)):
        disk = rng.choices(DISK_FAULTS, DISK_FAULT_WEIGHTS)[0]
        found.append(Crash(
            node=rng.choice(disks),
            at_us=rng.randrange(0, safety_us),
            down_us=rng.randrange(1_000, safety_us // 2),
            mid_step=disk == "disk_full",
            keep_unsynced=rng.randint(0, 3),
            disk=disk,
            lose_synced=draw_lose_synced(rng, disk),
        ))
    return tuple(found)


def draw_rewrite_faults(
    rng: random.Random, disks: list[int], span_us: int
) -> tuple[Crash, ...]:
    """The "rewrite" kind within ``span_us``: a lost_writes fault on each of the
    nodes ``disks``, aimed at its first step that rewrites records
    (``Crash.rewrite``) from early in the span on (a rewrite is rare: the aim
    waits for one, unless another crash of the node comes first)."""
    found = []
    for node in disks:
        found.append(Crash(
            node=node,
            at_us=rng.randrange(0, max(1, span_us // 10)),
            down_us=rng.randrange(1_000, REWRITE_DOWN_US_MAX),
            mid_step=True,
            keep_unsynced=0,
            disk="lost_writes",
            lose_synced=0,  # the rewriting step's writes (Crash.rewrite)
            rewrite=1,
        ))
    return tuple(found)


def draw_lose_synced(rng: random.Random, disk: str) -> int:
    """How many synced writes the storage fault ``disk`` takes back (see DISK_FAULTS)."""
    if disk == "lost_writes":
        return rng.randint(1, 40)
    if disk == "corrupt":  # anywhere in the log; 0: the whole log
        return rng.choice((0, rng.randint(1, 400)))
    if disk == "misdirected":  # onto free space, or onto an older record
        return rng.choice((1, rng.randint(2, 200)))
    return 0
