"""One torture run: build the testbed, start the cluster, load it, break it, heal, judge.

Phases (each bounded in time):

1. **build**: a :class:`~replicaio.torture.network.Testbed` (namespaces, veths,
   bridge, a tmpfs for the disk-full node), then the nodes, each in its own
   namespace; wait until a leader answers.
2. **faults**: redis-py clients run the whole time while the nemesis applies
   the seed's schedule (:mod:`replicaio.torture.nemesis`), healing each fault
   before the next; a node that dies by itself is recorded and restarted at
   the next heal.
3. **heal and demand progress**: every filter, qdisc, pause and filler is
   removed, dead nodes restarted, then a write through *every* node must
   succeed within ``progress_timeout_s``.
4. **judge**: the clients stop; every acknowledged key is read back; the
   whole history is checked linearizable (``check_budget_s``).

With ``byzantine`` (a BFT protocol only) one node, drawn from the seed or
named, runs the simulator's adversary behaviours on the real network for the
whole run, restarts included (``kv node --byzantine MIX``), on top of the
nemesis's faults. The workload, the progress demand and the read-back use the
correct nodes' fronts only (a Byzantine node's own clients have no guarantee),
and the report gives the Byzantine node's rewritten sends and the correct
nodes' counted rejections, the evidence that the behaviour ran and was refused.

The testbed is torn down in a ``finally``, whatever happened (an exception,
Ctrl-C, SIGTERM: both become :class:`KeyboardInterrupt` during the run and
are ignored during the teardown), and what it left behind, if anything, is a
failure of the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shlex
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import redis

from replicaio.check.history import dump_history
from replicaio.check.linearizability import LinearizabilityResult, check_linearizable
from replicaio.torture.cluster import NamespacedCluster
from replicaio.torture.cluster import byzantine as byzantine_tolerant
from replicaio.torture.nemesis import FAULT_KINDS, LEADER, PARTITION_KINDS, Fault, draw_schedule
from replicaio.torture.network import (
    Testbed,
    TortureError,
    choose_subnet,
    fill_disk,
    free_disk,
    missing_requirements,
)
from replicaio.torture.report import FaultEvent, timeline, write_plot, write_timeline
from replicaio.torture.workload import COUNTERS, REGISTERS, Workload, connect, leader_of

TMPFS_BYTES_DEFAULT = 256 << 20  # > 2 WAL segments (64 MiB each) and their snapshots
LEADER_TIMEOUT_S = 30.0
NODES_MAX = 15
DURATION_S_MAX = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class TortureOptions:
    protocol: str = "raft"
    nodes: int = 5
    duration_s: float = 120.0
    seed: int = 0
    clients: int = 10
    faults: tuple[str, ...] = FAULT_KINDS
    out: Path = Path("torture-runs")
    check_budget_s: float = 120.0
    progress_timeout_s: float = 30.0
    tmpfs_bytes: int = TMPFS_BYTES_DEFAULT
    tls: bool = False  # mutual TLS on the peer and client ports (certs init)
    byzantine: str = ""  # a behaviour mix (``a+b``), "seed" to draw one; "" none
    byzantine_node: int | None = None  # which node (None: drawn from the seed)

    def validate(self) -> TortureOptions:
        if not 1 <= self.nodes <= NODES_MAX:
            raise TortureError(f"--nodes must be in 1..{NODES_MAX}")
        if not 5 <= self.duration_s <= DURATION_S_MAX:
            raise TortureError("--duration must be between 5 s and a day")
        unknown = [kind for kind in self.faults if kind not in FAULT_KINDS]
        if unknown:
            raise TortureError(f"unknown fault kinds {unknown}; known: {', '.join(FAULT_KINDS)}")
        if self.byzantine or self.byzantine_node is not None:
            self.byzantine_plan()  # (raises on a bad mix or node)
        return self

    def byzantine_plan(self) -> dict[int, str]:
        """The Byzantine node and its behaviour mix (empty without ``byzantine``),
        a function of the options: the node and a drawn mix come from the seed."""
        if not self.byzantine:
            if self.byzantine_node is not None:
                raise TortureError("--byzantine-node needs --byzantine")
            return {}
        if not byzantine_tolerant(self.protocol):
            raise TortureError(f"--byzantine needs a Byzantine-tolerant protocol (pbft, "
                               f"minbft), not {self.protocol!r}")
        # PBFT's and MinBFT's own behaviours register when their modules load.
        import replicaio.sim.minbft_adversary
        import replicaio.sim.pbft_adversary  # noqa: F401
        from replicaio.sim.adversary import BASE_BEHAVIOURS, behaviour_names, draw_extras

        rng = random.Random(f"replicaio-torture-byzantine-{self.seed}")
        node = rng.randrange(self.nodes) if self.byzantine_node is None else self.byzantine_node
        if not 0 <= node < self.nodes:
            raise TortureError(f"--byzantine-node must be in 0..{self.nodes - 1}")
        allowed = behaviour_names(self.protocol)
        if self.byzantine == "seed":
            names = [rng.choice(BASE_BEHAVIOURS), *draw_extras(rng, self.protocol)]
        else:
            names = self.byzantine.split("+")
            unknown = [name for name in names if name not in allowed]
            if unknown:
                raise TortureError(f"behaviour {unknown[0]!r} is not one of {self.protocol}'s: "
                                   f"{', '.join(sorted(allowed))}")
        return {node: "+".join(names)}

    def rerun_command(self) -> str:
        words = ["replicaio", "torture", "--protocol", self.protocol, "--nodes", str(self.nodes),
                 "--duration", f"{self.duration_s:g}", "--seed", str(self.seed),
                 "--clients", str(self.clients)]
        if tuple(self.faults) != FAULT_KINDS:
            words += ["--faults", ",".join(self.faults)]
        if self.tls:
            words.append("--tls")
        if self.byzantine:
            words += ["--byzantine", self.byzantine]
            if self.byzantine_node is not None:
                words += ["--byzantine-node", str(self.byzantine_node)]
        return shlex.join(words)


@dataclass
class TortureResult:
    """What the run found; ``passed`` when ``problems`` is empty and the history is
    proved linearizable."""

    options: TortureOptions
    directory: Path
    tag: str = ""
    faults: list[FaultEvent] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    linearizability: LinearizabilityResult | None = None
    operations: int = 0
    ok: int = 0
    acknowledged: int = 0
    leftovers: list[str] = field(default_factory=list)
    healed_s: float | None = None  # when every fault was healed (seconds since the start)
    byzantine: dict[int, str] = field(default_factory=dict)  # node -> its behaviour mix
    # The Byzantine node's sends rewritten since its last start, and the correct
    # nodes' counted rejections and ignored messages (their metrics, at the end).
    byzantine_sends: float = 0.0
    rejections: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return (not self.problems and not self.leftovers and self.linearizability is not None
                and self.linearizability.linearizable is True)


@contextmanager
def interrupts_as_keyboard_interrupt() -> Iterator[Callable[[], None]]:
    """SIGINT and SIGTERM raise KeyboardInterrupt; the yielded function then makes
    both ignored (for the teardown). The handlers are restored on exit. SIGINT is
    set too, not left to Python's default: a process started with SIGINT ignored
    (a background job of a non-interactive shell, and so a test run in one) keeps
    it ignored, and Ctrl-C would not tear the testbed down."""
    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}

    def interrupt(number: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    def shield() -> None:
        for number in previous:
            signal.signal(number, signal.SIG_IGN)

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield shield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def run_torture(options: TortureOptions, say: Callable[[str], None] = print) -> TortureResult:
    """Run one torture (see the module docstring); raises :class:`TortureError` when the
    machine cannot run one, returns the result otherwise (teardown done)."""
    options.validate()
    reason = missing_requirements()
    if reason is not None:
        raise TortureError(reason)
    tag = f"{os.getpid() % 0x100000:05x}"
    directory = (options.out / f"seed-{options.seed}-{time.strftime('%Y%m%d-%H%M%S')}-{tag}"
                 ).resolve()
    directory.mkdir(parents=True, exist_ok=False)
    result = TortureResult(options, directory, tag, byzantine=options.byzantine_plan())
    testbed = Testbed(tag, options.nodes, choose_subnet(options.seed))
    say(f"torture: {options.nodes} {options.protocol} nodes in namespaces replicaio-{tag}-n*, "
        f"subnet {testbed.subnet}, seed {options.seed}, {options.duration_s:g} s"
        f"{', mutual TLS' if options.tls else ''}; out {directory}")
    for node, mix in result.byzantine.items():
        say(f"torture: node {node} is Byzantine ({mix}); clients use the other nodes")
    (directory / "testbed.json").write_text(json.dumps({
        "tag": tag, "namespaces": [testbed.namespace(n) for n in range(options.nodes)],
        "bridge": testbed.bridge_name(), "subnet": str(testbed.subnet)}, indent=1))
    cluster: NamespacedCluster | None = None
    workload: Workload | None = None
    with interrupts_as_keyboard_interrupt() as shield:
        try:
            testbed.create()
            cluster = NamespacedCluster(directory, testbed, options.protocol, tls=options.tls,
                                        byzantine_nodes=result.byzantine)
            workload = torture(options, testbed, cluster, result, say)
        except KeyboardInterrupt:
            result.problems.append("interrupted (Ctrl-C or SIGTERM)")
            say("torture: interrupted; tearing down")
        finally:
            shield()
            if workload is not None:
                workload.finish()
            if cluster is not None:
                cluster.close()
            result.leftovers = testbed.teardown()
    if result.leftovers:
        say(f"torture: TEARDOWN LEFT {result.leftovers}")
    return result


def torture(options: TortureOptions, testbed: Testbed, cluster: NamespacedCluster,
            result: TortureResult, say: Callable[[str], None]) -> Workload:
    """Phases 1 to 4 of the module docstring (the caller tears down)."""
    rng = random.Random(f"replicaio-torture-disk-{options.seed}")
    disk_node = rng.randrange(options.nodes) if "disk-full" in options.faults else None
    if disk_node is not None:
        testbed.mount_tmpfs(cluster.data_dir(disk_node), options.tmpfs_bytes)
    schedule = draw_schedule(options.seed, options.nodes, options.duration_s, options.faults,
                             disk_node)
    for node in range(cluster.n):
        cluster.start(node)
    failed = cluster.wait_ready(list(range(cluster.n)))
    if failed is not None:
        raise TortureError(failed)
    if wait_for_leader(cluster) is None:
        raise TortureError(f"no leader within {LEADER_TIMEOUT_S} s")
    workload = Workload(cluster.correct_endpoints(), options.clients, options.seed)
    origin = time.monotonic()
    workload.start()
    nemesis = Nemesis(testbed, cluster, options, origin, say)
    for fault in schedule:
        nemesis.run_fault(fault)
    sleep_until(origin + options.duration_s)
    nemesis.heal_everything()
    result.healed_s = nemesis.now()
    result.faults = nemesis.events
    result.problems += nemesis.problems
    say(f"torture: healed at {time.monotonic() - origin:.1f} s; demanding progress")
    result.problems += demand_progress(workload, cluster, options.progress_timeout_s)
    problems = workload.finish()
    result.problems += problems
    judge(options, workload, cluster, result, origin, say)
    return workload


def wait_for_leader(cluster: NamespacedCluster) -> int | None:
    """The leader once one is known; for a protocol that names none in ``INFO``
    (PBFT: its primary is not shown), -1 once a write through node 0 succeeds."""
    deadline = time.monotonic() + LEADER_TIMEOUT_S
    endpoints = cluster.endpoints()
    while time.monotonic() < deadline:
        leader = leader_of(endpoints)
        if leader is not None:
            return leader
        with contextlib.suppress(redis.RedisError, OSError):
            client = connect(cluster.correct_endpoints()[0])
            try:
                if client.set("torture:ready", "1") is True:
                    return -1
            finally:
                client.close()
        time.sleep(0.2)
    return None


def sleep_until(moment: float) -> None:
    remaining = moment - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


class Nemesis:
    """Applies and heals the faults of the schedule; records what it did."""

    def __init__(self, testbed: Testbed, cluster: NamespacedCluster, options: TortureOptions,
                 origin: float, say: Callable[[str], None]) -> None:
        self.testbed = testbed
        self.cluster = cluster
        self.options = options
        self.origin = origin
        self.say = say
        self.events: list[FaultEvent] = []
        self.problems: list[str] = []
        self.rng = random.Random(f"replicaio-torture-targets-{options.seed}")

    def now(self) -> float:
        return round(time.monotonic() - self.origin, 3)

    def run_fault(self, fault: Fault) -> None:
        sleep_until(self.origin + fault.start_s)
        targets = self.resolve(fault.nodes)
        started = self.now()
        description = self.apply(fault, targets)
        self.say(f"  {started:7.2f} s  {description}")
        sleep_until(self.origin + fault.end_s)
        self.heal(fault, targets)
        self.events.append(FaultEvent(fault.kind, description, started, self.now()))
        self.restart_the_dead()

    def resolve(self, nodes: tuple[int, ...]) -> tuple[int, ...]:
        if LEADER not in nodes:
            return nodes
        leader = leader_of(self.cluster.endpoints())
        return (leader if leader is not None else self.rng.randrange(self.cluster.n),)

    def apply(self, fault: Fault, targets: tuple[int, ...]) -> str:
        shown = ",".join(map(str, targets))
        if fault.kind in PARTITION_KINDS:
            for node, sources in fault.blocks(self.cluster.n).items():
                self.testbed.block(node, sources)
            return fault.describe()
        if fault.kind in ("netem", "slow"):
            assert fault.link is not None
            applied = ""
            for node in targets:
                applied = self.testbed.shape(node, fault.link)
            return f"{fault.kind} on node {shown}: {applied}"
        if fault.kind == "kill":
            for node in targets:
                self.cluster.kill(node)
            return f"kill -9 node {shown}"
        if fault.kind == "pause":
            for node in targets:
                self.cluster.pause(node)
            return f"SIGSTOP node {shown}"
        assert fault.kind == "disk-full"
        written = fill_disk(self.cluster.data_dir(targets[0]), self.options.tmpfs_bytes)
        return f"disk full on node {shown} ({written >> 20} MiB filler)"

    def heal(self, fault: Fault, targets: tuple[int, ...]) -> None:
        if fault.kind in PARTITION_KINDS:
            for node in range(self.cluster.n):
                self.testbed.unblock(node)
        elif fault.kind in ("netem", "slow"):
            for node in targets:
                self.testbed.clear_shape(node)
        elif fault.kind == "pause":
            for node in targets:
                self.cluster.resume(node)
        elif fault.kind == "disk-full":
            free_disk(self.cluster.data_dir(targets[0]))

    def restart_the_dead(self) -> None:
        """Restart every node that is not running; one that died by itself is noted."""
        for node in range(self.cluster.n):
            process = self.cluster.processes.get(node)
            if process is not None and process.poll() is not None:
                self.say(f"  {self.now():7.2f} s  node {node} had exited (status "
                         f"{process.returncode}): {self.cluster.tail(node, 2)}")
                self.events.append(FaultEvent("exit", f"node {node} exited by itself (status "
                                              f"{process.returncode})", self.now(), self.now()))
        restarted = self.cluster.restart_dead()
        if restarted:
            self.say(f"  {self.now():7.2f} s  restart node {','.join(map(str, restarted))}")

    def heal_everything(self) -> None:
        for node in range(self.cluster.n):
            self.testbed.unblock(node)
            self.testbed.clear_shape(node)
            self.cluster.resume(node)
            free_disk(self.cluster.data_dir(node))
        self.restart_the_dead()
        failed = self.cluster.wait_ready(list(range(self.cluster.n)))
        if failed is not None:
            self.problems.append(f"after healing: {failed}")


def demand_progress(workload: Workload, cluster: NamespacedCluster, timeout_s: float
                    ) -> list[str]:
    """A write through every correct node within ``timeout_s`` (recorded in the
    history). The nodes are tried in turn, so one that never answers cannot use up
    the others' time."""
    deadline = time.monotonic() + timeout_s
    endpoints = cluster.endpoints()
    waiting = cluster.correct_nodes()
    attempt = 0
    while waiting and time.monotonic() < deadline:
        attempt += 1
        for node in list(waiting):
            key, value = f"progress{node}", f"after-heal-{attempt}"
            actor = workload.new_client()
            with workload.lock:
                handle = workload.recorder.invoke(actor, "put", key, value)
            client = connect(endpoints[node])
            try:
                done = client.set(key, value) is True
                workload.complete(handle, "ok" if done else "info")
            except (redis.RedisError, OSError):
                done = False
                workload.complete(handle, "info")
            finally:
                client.close()
            if done:
                waiting.remove(node)
        if waiting:
            time.sleep(0.2)
    return [f"no progress: no write through node {node} within {timeout_s} s of healing"
            for node in waiting]


def judge(options: TortureOptions, workload: Workload, cluster: NamespacedCluster,
          result: TortureResult, origin: float, say: Callable[[str], None]) -> None:
    """Read back the acknowledged writes, check the history, write the artifacts."""
    acknowledged = dict(workload.acknowledged)
    read_back_s = time.monotonic() - origin  # the plot stops here: MGET batches are no load
    deadline = time.monotonic() + options.progress_timeout_s
    keys = [*sorted(acknowledged), *REGISTERS, *COUNTERS]
    found = workload.read_back(cluster.correct_endpoints()[0], keys, deadline)
    missing = [key for key, value in acknowledged.items() if found.get(key) != value]
    unread = [key for key in keys if key not in found]
    if unread:
        failures = workload.read_back_failures
        last = f"; last error: {failures[-1]}" if failures else ""
        result.problems.append(f"could not read back {len(unread)} keys within "
                               f"{options.progress_timeout_s} s ({len(failures)} failed MGET "
                               f"attempts{last})")
    lost = [key for key in missing if key in found]
    if lost:
        result.problems.append(f"{len(lost)} acknowledged writes lost, e.g. {lost[:5]}")
    result.acknowledged = len(acknowledged)
    operations = workload.operations()
    result.operations = len(operations)
    result.ok = sum(op.status == "ok" for op in operations)
    directory = result.directory
    dump_history(operations, directory / "history.jsonl")
    say(f"torture: {len(operations)} operations ({result.ok} ok), {len(acknowledged)} "
        f"acknowledged writes read back; checking linearizability")
    result.linearizability = check_linearizable(operations, time_budget_s=options.check_budget_s)
    if result.byzantine:
        count_byzantine_evidence(cluster, result)
    buckets = timeline(operations, origin)
    write_timeline(buckets, directory / "timeline.csv")
    (directory / "faults.json").write_text(json.dumps([asdict(e) for e in result.faults],
                                                      indent=1) + "\n")
    skipped = write_plot(buckets[:int(read_back_s)], result.faults, directory / "throughput.png",
                         f"replicaio torture: {options.nodes} {options.protocol} nodes, "
                         f"seed {options.seed}", result.healed_s)
    if skipped is not None:
        result.notes.append(skipped)


REJECTION_WORDS = ("rejected", "ignored", "invalid", "bad_", "conflict", "refused", "forged")


def count_byzantine_evidence(cluster: NamespacedCluster, result: TortureResult) -> None:
    """What the Byzantine node rewrote and what the correct nodes refused (their
    counters since their last start: a node restarted late counts less)."""
    for node in [*result.byzantine, *cluster.correct_nodes()]:
        events = cluster.events(node)
        if events is None:
            result.notes.append(f"node {node}'s metrics did not answer: its counters are "
                                "left out of the Byzantine evidence")
            continue
        if node in result.byzantine:
            result.byzantine_sends += events.get("byzantine_sends", 0.0)
            continue
        for name, value in events.items():
            if any(word in name for word in REJECTION_WORDS):
                result.rejections[name] = result.rejections.get(name, 0.0) + value


def summary(result: TortureResult) -> str:
    """The report printed at the end of ``replicaio torture``."""
    options = result.options
    lines = [f"torture of {options.nodes} {options.protocol} nodes, seed {options.seed}, "
             f"{options.duration_s:g} s, {options.clients} clients"]
    lines.append(f"faults ({len(result.faults)}):")
    for event in result.faults:
        healed = "-" if event.healed_s is None else f"{event.healed_s:.2f}"
        lines.append(f"  {event.started_s:8.2f} .. {healed:>8} s  {event.description}")
    lines.append(f"operations: {result.operations} ({result.ok} ok); acknowledged writes "
                 f"checked: {result.acknowledged}")
    for node, mix in result.byzantine.items():
        top = sorted(result.rejections.items(), key=lambda item: -item[1])[:6]
        shown = ", ".join(f"{name} {value:g}" for name, value in top) or "none"
        lines.append(f"byzantine: node {node} ({mix}) rewrote {result.byzantine_sends:g} sends; "
                     f"the correct nodes' rejection counters (every cause): {shown}")
    if result.linearizability is not None:
        lines.append(f"history: {result.linearizability.describe()}")
    for problem in result.problems:
        lines.append(f"PROBLEM: {problem}")
    for leftover in result.leftovers:
        lines.append(f"TEARDOWN LEFT: {leftover}")
    lines += [f"note: {note}" for note in result.notes]
    directory = result.directory
    lines.append(f"files: {directory}/history.jsonl, faults.json, timeline.csv, throughput.png, "
                 "node-*.log")
    lines.append("verdict: " + ("PASS" if result.passed else "FAIL"))
    if not result.passed:
        lines.append(f"rerun: {options.rerun_command()}")
    return "\n".join(lines)


def result_json(result: TortureResult) -> dict[str, Any]:
    verdict = None if result.linearizability is None else result.linearizability.linearizable
    return {
        "passed": result.passed, "linearizable": verdict, "problems": result.problems,
        "leftovers": result.leftovers, "operations": result.operations, "ok": result.ok,
        "acknowledged": result.acknowledged, "faults": [asdict(e) for e in result.faults],
        "byzantine": {str(node): mix for node, mix in result.byzantine.items()},
        "byzantine_sends": result.byzantine_sends, "rejections": result.rejections,
        "rerun": result.options.rerun_command(),
    }
