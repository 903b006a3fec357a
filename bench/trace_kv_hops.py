"""Where one SET's time goes at one client, hop by hop, on a live 3-node Raft KV.

Starts the cluster ``bench_kv.py`` starts (3 ``replicaio node`` processes,
fsync on, the Redis front) with ``REPLICAIO_HOP_TRACE`` set, so every node
stamps the moments a request passes through it (``replicaio.runtime.hoptrace``;
off by default). One RESP client then sends ``--sets`` SETs one after the other
(after ``--warmup`` more), stamping each send and each reply on the same
monotonic clock. The nodes are stopped cleanly (they write their stamps), and
the script follows each SET through the stamps:

    client -> leader front -> leader batch -> its steps (SMR, Raft append) ->
    AppendEntries written -> follower reads it -> follower batch -> steps ->
    sync handed to the thread -> thread starts -> log write + fdatasync ->
    mark fdatasync -> loop back -> ack written -> leader reads it -> commit
    batch -> its steps (commit, apply) -> reply written -> client

taking the follower whose acknowledgement reached the leader first (the one on
the critical path), and prints the median, 90th and 99th percentile and the
maximum of every hop in microseconds, the leader's own sync beside it, and how
often the leader's own sync rather than the follower's acknowledgement was the later of the two.
Hops telescope: on a SET where every stamp was found, the critical path's hops
sum to the client's round trip. Then, for the slowest 1 % of SETs, the hop
furthest above its own median in each (what makes the tail), and every node's
garbage collections (stamped through ``gc.callbacks``): how many, how many
longer than 1 ms, and how many of the slowest SETs one of them overlapped.

    .venv/bin/python bench/trace_kv_hops.py --sets 2000
    .venv/bin/python bench/trace_kv_hops.py --sets 2000 --variant 'default:' \
        --variant 'sendsfirst:host.replies_first=false' --json

With several ``--variant`` s it starts one cluster per variant and the client
sends its SETs to each in turn, so every variant is measured under the same
load (this machine's load moves one-client latency by 2x between runs), and
prints the medians side by side.

Tracing costs a few microseconds per stamp (about 30 stamps per SET over the
three nodes); the round trip it reports is a little slower than an untraced one.
"""

from __future__ import annotations

import argparse
import atexit
import bisect
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_kv import (  # noqa: E402
    PROCESSES,
    ReplicaioSystem,
    RespClient,
    Settings,
    fsync_probe,
    parse_variant,
    run_async,
)

from replicaio.runtime import hoptrace  # noqa: E402
from replicaio.runtime.hoptrace import (  # noqa: E402
    BATCH,
    COMMAND,
    FRAME_IN,
    FRAME_OUT,
    GC_END,
    GC_START,
    LOG_FLUSHED,
    MARKED,
    PEER_UNIT,
    RELEASED,
    REPLY,
    STEPPED,
    SYNC_BACK,
    SYNC_CALL,
    SYNC_IN,
)

Events = dict[int, tuple[list[int], list[int]]]  # kind -> (times, args), by time


def load(path: Path) -> Events:
    by_kind: dict[int, list[tuple[int, int]]] = {}
    with open(path, encoding="ascii") as lines:
        for line in lines:
            if line.startswith("#"):
                continue
            at, kind, arg = (int(word) for word in line.split())
            by_kind.setdefault(kind, []).append((at, arg))
    events: Events = {}
    for kind, pairs in by_kind.items():
        pairs.sort()
        events[kind] = ([at for at, _ in pairs], [arg for _, arg in pairs])
    return events


class Missing(Exception):
    """A stamp the SET should have left was not found (a retry, a stop, a drop)."""


def first(events: Events, kind: int, after: int, before: int,
          match: Callable[[int], bool] | None = None) -> tuple[int, int]:
    """The first stamp of ``kind`` in [after, before] whose argument matches."""
    times, args = events.get(kind, ([], []))
    index = bisect.bisect_left(times, after)
    while index < len(times) and times[index] <= before:
        if match is None or match(args[index]):
            return times[index], args[index]
        index += 1
    raise Missing(hoptrace.NAMES[kind])


def last(events: Events, kind: int, after: int, before: int) -> int:
    times, _ = events.get(kind, ([], []))
    index = bisect.bisect_right(times, before) - 1
    if index < 0 or times[index] < after:
        raise Missing(hoptrace.NAMES[kind])
    return times[index]


def size_is(body: int) -> Callable[[int], bool]:
    """A test of an event's argument: a frame whose body has *body* bytes."""
    return lambda arg: arg % PEER_UNIT == body


def peer_is(peer: int) -> Callable[[int], bool]:
    return lambda arg: arg // PEER_UNIT == peer


CRITICAL = (
    ("client's SET -> leader's front parsed it", "sent", "command"),
    ("front -> leader's batch took it (dispatch task, submit, inbox)", "command", "batch"),
    ("leader's steps (SMR, Raft append, encode)", "batch", "stepped"),
    ("steps done -> AppendEntries to that follower about to be written", "stepped", "ae_out"),
    ("AppendEntries on the wire -> follower read it", "ae_out", "f_in"),
    ("follower read -> its batch took it", "f_in", "f_batch"),
    ("follower's steps", "f_batch", "f_stepped"),
    ("follower's steps -> sync handed to the thread", "f_stepped", "f_sync_call"),
    ("follower: hand-off -> the sync thread runs", "f_sync_call", "f_sync_in"),
    ("follower: log write + fdatasync", "f_sync_in", "f_log"),
    ("follower: the mark's fdatasync", "f_log", "f_mark"),
    ("follower: thread done -> the loop resumes", "f_mark", "f_back"),
    ("follower: loop resumed -> ack about to be written", "f_back", "f_ack"),
    ("ack on the wire -> leader read it", "f_ack", "ack_in"),
    ("leader read ack -> the commit batch starts", "ack_in", "commit_batch"),
    ("leader's commit steps (commit, apply)", "commit_batch", "commit_stepped"),
    ("commit steps -> reply about to be written (notices first)", "commit_stepped", "reply"),
    ("reply about to be written -> client read it", "reply", "received"),
)
LEADER_SYNC = (
    ("leader: steps done -> sync handed to the thread", "stepped", "sync_call"),
    ("leader: hand-off -> the sync thread runs", "sync_call", "sync_in"),
    ("leader: log write + fdatasync", "sync_in", "log"),
    ("leader: the mark's fdatasync", "log", "mark"),
    ("leader: thread done -> the loop resumes", "mark", "back"),
    ("leader: loop resumed -> batch released", "back", "released"),
)


def marked(events: Events, flushed: int, before: int) -> int:
    """When the mark after the log flush at ``flushed`` returned; with marks off
    (``[host] mark_syncs = false``: no mark follows a flush), the flush itself."""
    try:
        return first(events, MARKED, flushed, before)[0]
    except Missing:
        return flushed


# On a SET whose leader released its own sync after the first acknowledgement
# arrived, the critical path runs through that sync and then this hop.
LEADER_LATER_HOP = ("leader's own sync released -> the commit batch starts", "released",
                    "commit_batch")


def follow(client: tuple[int, int], leader: int, nodes: dict[int, Events]) -> dict[str, int]:
    """Every stamp of one SET on the critical path (see the module docstring)."""
    sent, received = client
    lead = nodes[leader]
    at: dict[str, int] = {"sent": sent, "received": received}
    at["command"], _ = first(lead, COMMAND, sent, received)
    at["batch"], _ = first(lead, BATCH, at["command"], received,
                           lambda arg: (arg // 1000) % 1000 > 0)
    at["stepped"], _ = first(lead, STEPPED, at["batch"], received)
    at["sync_call"], _ = first(lead, SYNC_CALL, at["stepped"], received)
    at["sync_in"], _ = first(lead, SYNC_IN, at["sync_call"], received)
    at["log"], _ = first(lead, LOG_FLUSHED, at["sync_in"], received)
    at["mark"] = marked(lead, at["log"], received)
    at["back"], _ = first(lead, SYNC_BACK, at["mark"], received)
    at["released"], _ = first(lead, RELEASED, at["back"], received)
    best: dict[str, int] | None = None
    for follower, events in nodes.items():
        if follower == leader:
            continue
        path: dict[str, int] = {}
        try:
            path["ae_out"], size = first(lead, FRAME_OUT, at["stepped"], received,
                                         peer_is(follower))
            body = size % PEER_UNIT - 4
            try:
                path["f_in"], _ = first(events, FRAME_IN, path["ae_out"], received,
                                        size_is(body))
            except Missing:
                path["f_in"], _ = first(events, FRAME_IN, path["ae_out"], received,
                                        peer_is(leader))
            path["f_batch"], _ = first(events, BATCH, path["f_in"], received)
            path["f_stepped"], _ = first(events, STEPPED, path["f_batch"], received)
            path["f_sync_call"], _ = first(events, SYNC_CALL, path["f_stepped"], received)
            path["f_sync_in"], _ = first(events, SYNC_IN, path["f_sync_call"], received)
            path["f_log"], _ = first(events, LOG_FLUSHED, path["f_sync_in"], received)
            path["f_mark"] = marked(events, path["f_log"], received)
            path["f_back"], _ = first(events, SYNC_BACK, path["f_mark"], received)
            path["f_ack"], _ = first(events, FRAME_OUT, path["f_back"], received,
                                     peer_is(leader))
            path["ack_in"], _ = first(lead, FRAME_IN, path["f_ack"], received,
                                      peer_is(follower))
        except Missing:
            continue
        if best is None or path["ack_in"] < best["ack_in"]:
            best = path
    if best is None:
        raise Missing("a follower's path")
    at.update(best)
    at["reply"], _ = first(lead, REPLY, max(at["ack_in"], at["released"]), received)
    at["commit_batch"] = last(lead, BATCH, at["ack_in"], at["reply"])
    at["commit_stepped"], _ = first(lead, STEPPED, at["commit_batch"], at["reply"])
    at["leader_later"] = int(at["released"] > at["ack_in"])
    return at


def quantile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def spread(values: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values), 1),
            "p90": round(quantile(values, 0.9), 1),
            "p99": round(quantile(values, 0.99), 1),
            "max": round(max(values), 1),
            "mean": round(statistics.fmean(values), 1)}


def gc_pauses(events: Events) -> list[tuple[int, int, int]]:
    """(start ns, end ns, generation) of every collection a node stamped."""
    starts, generations = events.get(GC_START, ([], []))
    ends, _ = events.get(GC_END, ([], []))
    pauses = []
    for start, generation in zip(starts, generations, strict=False):
        index = bisect.bisect_left(ends, start)
        if index < len(ends):
            pauses.append((start, ends[index], generation))
    return pauses


def gc_summary(pauses: list[tuple[int, int, int]], window_s: float) -> dict[str, Any]:
    """How many collections of each generation, how many longer than 1 ms, the
    longest, and their total per second of the run."""
    by_generation: dict[str, dict[str, Any]] = {}
    for generation in (0, 1, 2):
        spans = [(end - start) / 1e6 for start, end, gen in pauses if gen == generation]
        by_generation[f"gen{generation}"] = {
            "count": len(spans), "over_1ms": sum(1 for span in spans if span > 1.0),
            "max_ms": round(max(spans, default=0.0), 2),
            "total_ms": round(sum(spans), 1)}
    total_ms = sum((end - start) / 1e6 for start, end, _ in pauses)
    return {"collections": len(pauses), "ms_per_s": round(total_ms / max(window_s, 1e-9), 2),
            **by_generation}


def overlap_ms(pauses: list[tuple[int, int, int]], starts: list[int], begin: int,
               end: int) -> float:
    """Milliseconds of ``pauses`` (sorted by start; ``starts`` their starts) inside
    [begin, end]."""
    total = 0
    index = max(0, bisect.bisect_left(starts, begin) - 1)
    while index < len(pauses) and pauses[index][0] <= end:
        start, stop, _ = pauses[index]
        total += max(0, min(stop, end) - max(start, begin))
        index += 1
    return total / 1e6


def table(paths: list[dict[str, int]]) -> dict[str, Any]:
    if not paths:
        raise SystemExit("trace_kv_hops: no SET could be followed through the stamps")
    def row(name: str, start: str, end: str) -> dict[str, Any]:
        spans = [(path[end] - path[start]) / 1000 for path in paths]
        figures = spread(spans)
        return {"hop": name, "p50_us": figures["p50"], "p90_us": figures["p90"],
                "p99_us": figures["p99"], "max_us": figures["max"],
                "mean_us": figures["mean"]}

    critical = [row(*hop) for hop in CRITICAL]
    leader = [row(*hop) for hop in LEADER_SYNC]
    trips = [(path["received"] - path["sent"]) / 1000 for path in paths]
    # The slowest 1 % (at least 5): which hop of the path that was critical for
    # each (the follower's acknowledgement, or the leader's own sync when that
    # released later) exceeded its own median the most.
    medians = {name: hop["p50_us"] for (name, _, _), hop in zip(
        CRITICAL + LEADER_SYNC, critical + leader, strict=True)}
    later = [path for path in paths if path["leader_later"]]
    if later:
        medians[LEADER_LATER_HOP[0]] = statistics.median(
            (path["commit_batch"] - path["released"]) / 1000 for path in later)
    slow_count = max(5, len(paths) // 100)
    slowest = sorted(paths, key=lambda path: path["received"] - path["sent"])[-slow_count:]
    blame: dict[str, dict[str, float]] = {}
    for path in slowest:
        hops = (CRITICAL[:3] + LEADER_SYNC + (LEADER_LATER_HOP,) + CRITICAL[-3:]
                if path["leader_later"] else CRITICAL)
        worst, name = max(((path[end] - path[start]) / 1000 - medians[name], name)
                          for name, start, end in hops)
        entry = blame.setdefault(name, {"sets": 0, "excess_us": 0.0})
        entry["sets"] += 1
        entry["excess_us"] += worst
    worst_hops: list[dict[str, Any]] = [
        {"hop": name, "sets": int(entry["sets"]),
         "mean_excess_us": round(entry["excess_us"] / entry["sets"], 1)}
        for name, entry in sorted(blame.items(), key=lambda item: -item[1]["sets"])]
    return {
        "sets_followed": len(paths),
        "round_trip_us": spread(trips),
        "critical_path": critical,
        "sum_of_medians_us": round(sum(hop["p50_us"] for hop in critical), 1),
        "leader_sync": leader,
        "leader_sync_later_than_first_ack": round(
            sum(path["leader_later"] for path in paths) / len(paths), 3),
        "slowest": {"sets": slow_count,
                    "round_trip_from_us": round(
                        (slowest[0]["received"] - slowest[0]["sent"]) / 1000, 1),
                    "leader_sync_later": sum(path["leader_later"] for path in slowest),
                    "worst_hops": worst_hops},
    }


def print_table(report: dict[str, Any]) -> None:
    trip = report["round_trip_us"]
    print(f"\n{report['sets_followed']} SETs followed; client round trip p50 "
          f"{trip['p50']} us, p90 {trip['p90']} us, p99 {trip['p99']} us, max {trip['max']} us, "
          f"mean {trip['mean']} us")
    print("\n| hop (critical path) | p50 us | p90 us | p99 us | max us | mean us |\n"
          "| --- | --- | --- | --- | --- | --- |")
    for hop in report["critical_path"]:
        print(f"| {hop['hop']} | {hop['p50_us']} | {hop['p90_us']} | {hop['p99_us']} | "
              f"{hop['max_us']} | {hop['mean_us']} |")
    print(f"| sum of the medians | {report['sum_of_medians_us']} | | | | |")
    print("\n| the leader's own sync, beside it | p50 us | p90 us | p99 us | max us | mean us |\n"
          "| --- | --- | --- | --- | --- | --- |")
    for hop in report["leader_sync"]:
        print(f"| {hop['hop']} | {hop['p50_us']} | {hop['p90_us']} | {hop['p99_us']} | "
              f"{hop['max_us']} | {hop['mean_us']} |")
    print(f"\nthe leader's own sync released after the first ack arrived in "
          f"{report['leader_sync_later_than_first_ack'] * 100:.1f} % of SETs")
    slowest = report["slowest"]
    print(f"\nthe {slowest['sets']} slowest SETs (round trip >= "
          f"{slowest['round_trip_from_us']} us; the leader's own sync critical in "
          f"{slowest['leader_sync_later']}): the hop of the critical path furthest above "
          f"its median")
    print("\n| hop | SETs | mean excess us |\n| --- | --- | --- |")
    for row in slowest["worst_hops"]:
        print(f"| {row['hop']} | {row['sets']} | {row['mean_excess_us']} |")
    gc_report = report.get("gc")
    if gc_report:
        print("\n| node: garbage collections | all | gen0 | gen1 | gen2 | > 1 ms | longest ms "
              "| ms per s |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
        for node, summary in gc_report["nodes"].items():
            over = sum(summary[f"gen{g}"]["over_1ms"] for g in (0, 1, 2))
            longest = max(summary[f"gen{g}"]["max_ms"] for g in (0, 1, 2))
            print(f"| {node} | {summary['collections']} | {summary['gen0']['count']} | "
                  f"{summary['gen1']['count']} | {summary['gen2']['count']} | {over} | "
                  f"{longest} | {summary['ms_per_s']} |")
        print(f"\nSETs a collection on some node overlapped: {gc_report['sets_overlapped']} "
              f"of {report['sets_followed']}; of the slowest {slowest['sets']}: "
              f"{gc_report['slowest_overlapped']} (mean {gc_report['slowest_overlap_ms']} ms "
              f"of collection inside each)")


async def drive(ports: list[int], warmup: int, sets: int,
                value: bytes) -> list[list[tuple[int, int]]]:
    """One client per cluster, one SET at a time, the clusters in turn (so that
    several variants see the same machine load)."""
    clients = [await RespClient.connect(port) for port in ports]
    stamps: list[list[tuple[int, int]]] = [[] for _ in ports]
    try:
        for index in range(warmup + sets):
            key = b"key:%d" % (index % 1000)
            for client, mine in zip(clients, stamps, strict=True):
                sent = time.monotonic_ns()
                await client.set(key, value)
                if index >= warmup:
                    mine.append((sent, time.monotonic_ns()))
    finally:
        for client in clients:
            await client.close()
    return stamps


def analyse(stamps: list[tuple[int, int]], leader: int, hops_dir: Path,
            nodes_count: int) -> dict[str, Any]:
    nodes = {node: load(hops_dir / f"node{node}.hops") for node in range(nodes_count)}
    paths: list[dict[str, int]] = []
    reasons: dict[str, int] = {}
    for stamp in stamps:
        try:
            paths.append(follow(stamp, leader, nodes))
        except Missing as error:
            reasons[str(error)] = reasons.get(str(error), 0) + 1
    if not paths:
        raise SystemExit(f"trace_kv_hops: no SET could be followed through the stamps of "
                         f"{hops_dir}; missing: {reasons}")
    report = table(paths)
    report.update({"sets": len(stamps), "not_followed": sum(reasons.values()),
                   "not_followed_at": reasons, "leader": leader})
    window_s = (stamps[-1][1] - stamps[0][0]) / 1e9 if stamps else 0.0
    pauses = {node: [pause for pause in gc_pauses(events)
                     if stamps and stamps[0][0] <= pause[0] <= stamps[-1][1]]
              for node, events in nodes.items()}
    if any(pauses.values()):
        starts = {node: [pause[0] for pause in mine] for node, mine in pauses.items()}

        def inside(path: dict[str, int]) -> float:
            return sum(overlap_ms(pauses[node], starts[node], path["sent"], path["received"])
                       for node in pauses)

        slow_count = report["slowest"]["sets"]
        slowest = sorted(paths, key=lambda path: path["received"] - path["sent"])[-slow_count:]
        slow_overlaps = [inside(path) for path in slowest]
        report["gc"] = {
            "nodes": {f"node {node}" + (" (leader)" if node == leader else ""):
                      gc_summary(mine, window_s) for node, mine in pauses.items()},
            "sets_overlapped": sum(1 for path in paths if inside(path) > 0),
            "slowest_overlapped": sum(1 for ms in slow_overlaps if ms > 0),
            "slowest_overlap_ms": round(statistics.fmean(slow_overlaps), 2),
        }
    return report


def print_side_by_side(reports: list[dict[str, Any]]) -> None:
    names = [report["variant"] or "default" for report in reports]
    print("\n| hop (critical path), p50 us | " + " | ".join(names) + " |")
    print("| --- |" + " --- |" * len(reports))
    for index, hop in enumerate(reports[0]["critical_path"]):
        print(f"| {hop['hop']} | "
              + " | ".join(str(report["critical_path"][index]["p50_us"]) for report in reports)
              + " |")
    for key in ("p50", "p90", "p99", "max", "mean"):
        print(f"| **client round trip, {key}** | "
              + " | ".join(str(report["round_trip_us"][key]) for report in reports) + " |")
    for index, hop in enumerate(reports[0]["leader_sync"]):
        print(f"| {hop['hop']} | "
              + " | ".join(str(report["leader_sync"][index]["p50_us"]) for report in reports)
              + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME:node.X=N,protocol.X=N,host.X=N (as bench_kv.py's "
                             "--variant); repeat it to run several clusters side by side, "
                             "the client's SETs going to each in turn; 'default:' for none")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the run directory")
    args = parser.parse_args(argv)
    variants = args.variant or ["default:"]
    workdir = Path(tempfile.mkdtemp(prefix="replicaio-hops-"))
    atexit.register(PROCESSES.stop_all)
    load_before = os.getloadavg()
    probe = fsync_probe(workdir)
    systems: list[tuple[str, ReplicaioSystem, Path]] = []
    try:
        for index, variant in enumerate(variants):
            spec = variant if ":" in variant else f"v{index}:{variant}"
            label, node_params, protocol_params, host_params = parse_variant(spec)
            settings = Settings(workdir=workdir, warmup_s=0, duration_s=0, keys=1000,
                                value_bytes=args.value_bytes, front="resp",
                                node_params=node_params, protocol_params=protocol_params,
                                install=False)
            hops_dir = workdir / f"hops{index}"
            os.environ[hoptrace.ENV] = str(hops_dir)  # the nodes started now inherit it
            system = ReplicaioSystem(settings, label=label, host_params=host_params)
            systems.append((spec, system, hops_dir))
            system.start()
        del os.environ[hoptrace.ENV]
        stamps = run_async(drive([system.client_port() for _, system, _ in systems],
                                 args.warmup, args.sets, b"v" * args.value_bytes))
        leaders = [system.leader for _, system, _ in systems]
    finally:
        for _, system, _ in systems:
            system.stop()
    reports = []
    for (spec, system, hops_dir), mine, leader in zip(systems, stamps, leaders, strict=True):
        report = analyse(mine, leader, hops_dir, system.nodes)
        report["variant"] = spec
        reports.append(report)
        if args.keep:
            with open(hops_dir / "client.stamps", "w", encoding="ascii") as out:
                out.writelines(f"{sent} {received}\n" for sent, received in mine)
            (hops_dir / "leader").write_text(f"{leader}\n")
    conditions = {
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()], "fsync_probe": probe,
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
    }
    if args.json:
        print(json.dumps({"conditions": conditions, "reports": reports}, indent=2))
    else:
        print(conditions["uptime"])
        print(f"load before {conditions['load_before']}; disk probe (4 KiB append + "
              f"fdatasync): {probe}")
        for report in reports:
            print(f"\n== {report['variant']}: leader node {report['leader']}; "
                  f"{report['not_followed']} of {report['sets']} SETs not followed "
                  f"{report['not_followed_at'] or ''}")
            print_table(report)
        if len(reports) > 1:
            print_side_by_side(reports)
    if args.keep:
        print(f"kept {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
