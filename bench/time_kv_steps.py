"""What one core step of a live Raft KV node costs, by input, replayed in process.

The "leader's steps" and "follower's steps" hops of ``trace_kv_hops.py`` (each
about 110 us for a batch of one SET at one client) hold the host's work around
``Node.step`` and the step itself. This script separates the two: it runs the
cluster ``profile_kv_nodes.py`` runs (3 ``replicaio node`` processes, fsync on,
the Redis front, one client SETting 100-byte values for ``--seconds``) with each
node's event log on, stops it, then re-executes the leader's and one
follower's log in this process (``replicaio.trace.replay``'s way: a fresh core,
the recorded choices given back) and times every ``Node.step`` (plus the host's
``Codec.encode`` of its sends) on ``time.perf_counter_ns``, grouped by input:
a client request, a peer message by its type, a timer. It prints the median,
the 10th percentile and the count per group.

Hot and cold. Replayed back to back, a step runs on caches the previous step
left warm; on a live node each step follows a sleep of a millisecond or more
(one client: the node waits for the disk, the peers and the client between
its steps), during which the machine's other processes (three nodes and a
client on two cores, and other sessions) and the idle CPU evict them.
``TIME_KV_PAUSE=S`` sleeps S seconds before each timed step (what a live
node's step starts from); ``TIME_KV_PAUSE=-S`` spins S seconds instead (the
CPU kept busy, nothing of ours evicted but by the interpreter's own loop);
``TIME_KV_SPIN=S`` with a positive pause spins S seconds after the sleep (if
a step is slow only for the CPU's wake-up, that hides it; if for cold
caches, it does not). ``TIME_KV_SHADOW=1`` replays the same log on a second
core and steps it just before each timed step: the code, the types and the
module globals are warm again, the timed core's own objects are not (so the
cold cost splits into code and data).

``--profile`` replays under cProfile instead (run it with
``REPLICAIO_COMPILED=0`` to see the interpreted functions: compiled ones are
invisible to cProfile) and prints the top functions by self and cumulative
time, per group of inputs chosen by ``--only`` (``request``, a message type).

    .venv/bin/python bench/time_kv_steps.py --seconds 5
    REPLICAIO_COMPILED=0 .venv/bin/python bench/time_kv_steps.py --seconds 5 --profile \
        --only request --top 40
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from profile_kv_nodes import drive, leader_of  # noqa: E402

from replicaio.assembly import protocol_factory  # noqa: E402
from replicaio.cli import live_node_extras  # noqa: E402
from replicaio.core.codec import Codec  # noqa: E402
from replicaio.core.effects import Receive, Request, TimerFired  # noqa: E402
from replicaio.runtime.local import LocalCluster  # noqa: E402
from replicaio.trace.eventlog import STEP, decode_input, read_log  # noqa: E402
from replicaio.trace.replay import RecordedChoices, node_from_header  # noqa: E402

PAUSE_S = float(os.environ.get("TIME_KV_PAUSE", "0"))
SPIN_S = float(os.environ.get("TIME_KV_SPIN", "0"))
SHADOW = bool(os.environ.get("TIME_KV_SHADOW"))


def record(workdir: Path, seconds: float, clients: int,
           protocol_params: str = "") -> tuple[LocalCluster, int, int]:
    """Run the cluster with event logs; its leader and the SETs done."""
    sections: dict[str, dict[str, Any]] = {"host": {"fsync": True, "client_service": "resp"}}
    if protocol_params:  # e.g. notice_us=0
        sections["protocol.params"] = {
            key: int(value) for key, value in
            (item.split("=") for item in protocol_params.split(","))}
    cluster = LocalCluster(workdir, protocol="raft", nodes=3, sections=sections, metrics=True,
                           auth="hmac")
    cluster.start_all()
    try:
        leader = leader_of(cluster, "raft")
        port = int(cluster.cluster.nodes[leader].client.port)
        latencies = asyncio.run(drive(port, clients, seconds))
    finally:
        for process in cluster.processes.values():
            process.send_signal(signal.SIGTERM)
        for process in cluster.processes.values():
            process.wait(30)
    return cluster, leader, len(latencies)


def kind_of(event: Any, codec: Codec) -> str:
    if isinstance(event, Request):
        return "request"
    if isinstance(event, TimerFired):
        return "timer"
    if isinstance(event, Receive):
        message = event.message
        if isinstance(message, bytes | bytearray | memoryview):
            try:
                message = codec.decode(message)
            except Exception:  # (a frame the core drops: named as such)
                return "receive (undecodable)"
        inner = getattr(message, "message", None)  # an envelope (SMR over Raft)
        name = type(message).__name__
        if inner is not None and not isinstance(inner, bytes | int | str):
            name += "/" + type(inner).__name__
        return name
    return type(event).__name__


def replay_timed(cluster: LocalCluster, node_id: int, profile: cProfile.Profile | None,
                 only: str, repeat: int = 1) -> dict[str, list[int]]:
    path = cluster.event_log(node_id, 1)
    extras = live_node_extras(str(cluster.config_path))
    with open(path, "rb") as stream:
        header, records = read_log(stream)
        steps = [record for record in records if record[0] == STEP and record[2] == node_id]
    codec = Codec()
    choices = RecordedChoices()
    node = None
    shadow: Any = None  # TIME_KV_SHADOW: a second core replaying the same log
    shadow_choices = RecordedChoices()
    timings: dict[str, list[int]] = {}
    clock = time.perf_counter_ns
    for step in steps * repeat:
        _, _, _, _, event_record, recorded_choices, _ = step
        event = decode_input(event_record)
        if event_record[0] == "start":
            node = node_from_header(header, node_id, choices, protocol_factory, extras)
            if SHADOW:
                shadow = node_from_header(header, node_id, shadow_choices, protocol_factory,
                                          extras)
        assert node is not None
        choices.pending = deque(recorded_choices)
        kind = kind_of(event, codec)
        profiled = profile is not None and (not only or kind.startswith(only))
        if PAUSE_S > 0:
            time.sleep(PAUSE_S)
            if SPIN_S:
                until = time.perf_counter() + SPIN_S
                while time.perf_counter() < until:
                    pass
        elif PAUSE_S < 0:
            until = time.perf_counter() - PAUSE_S
            while time.perf_counter() < until:
                pass
        if shadow is not None:
            # The same step on a copy of the core first: the code, the types and
            # the module globals are warm again, the node's own objects are not.
            shadow_choices.pending = deque(recorded_choices)
            shadow_event = decode_input(event_record)
            shadow.step(shadow_event)
        began = clock()
        if profiled:
            assert profile is not None
            profile.enable()
        effects = node.step(event)
        for _, message in effects.sends:
            codec.encode(message)
        if profiled:
            assert profile is not None
            profile.disable()
        timings.setdefault(kind, []).append(clock() - began)
    return timings


def show(title: str, timings: dict[str, list[int]]) -> None:
    print(f"\n{title}: steps by input, us (median, p10, count)")
    for kind, values in sorted(timings.items(), key=lambda item: -len(item[1])):
        values.sort()
        print(f"  {kind:60s} {statistics.median(values) / 1000:8.1f} "
              f"{values[len(values) // 10] / 1000:8.1f} {len(values):7d}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--only", default="", help="profile only inputs whose group starts so")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--from", dest="source", default="",
                        help="replay the logs a --keep run left in this directory")
    parser.add_argument("--nodes", default="leader,follower")
    parser.add_argument("--protocol-params", default="", help="recorded with, e.g. notice_us=0")
    parser.add_argument("--repeat", type=int, default=1,
                        help="replay each log this many times (a fresh core each time)")
    args = parser.parse_args()
    from replicaio import compiled

    loaded = compiled.status()["loaded"]
    workdir = Path(args.source or tempfile.mkdtemp(prefix="time-kv-steps-"))
    try:
        if args.source:
            cluster = LocalCluster.__new__(LocalCluster)
            cluster.directory, cluster.config_path = workdir, workdir / "cluster.toml"
            leader = int((workdir / "leader").read_text())
        else:
            cluster, leader, ops = record(workdir, args.seconds, args.clients,
                                         args.protocol_params)
            (workdir / "leader").write_text(f"{leader}\n")
            print(f"{ops} SETs at {args.clients} client(s)")
        follower = (leader + 1) % 3
        print(f"load {os.getloadavg()[0]:.2f}; pause between steps {PAUSE_S} s; "
              f"compiled modules loaded: {len(loaded) if isinstance(loaded, list) else 0}")
        for title, node_id in (("leader", leader), ("follower", follower)):
            if title not in args.nodes.split(","):
                continue
            profile = cProfile.Profile() if args.profile else None
            timings = replay_timed(cluster, node_id, profile, args.only, args.repeat)
            show(f"{title} (node {node_id})", timings)
            if profile is not None and profile.getstats():
                stats = pstats.Stats(profile)
                print(f"  distinct functions called in the profiled steps: "
                      f"{len(stats.stats)}")  # type: ignore[attr-defined]
                stats.sort_stats("tottime").print_stats(args.top)
                stats.sort_stats("cumulative").print_stats(args.top)
    finally:
        if args.keep or args.source:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
