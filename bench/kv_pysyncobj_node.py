"""One PySyncObj node for ``bench/bench_kv.py``, with its load driver inside.

Runs under the anchors virtualenv (``bench/.venv-anchors``), never the
project's. The parent talks to it over stdin/stdout, one JSON object per line:

    {"cmd": "status"}                      -> {"leader": bool, "has_quorum": bool, ...}
    {"cmd": "run", "clients": C, "warmup_s": W, "duration_s": D,
     "workload": "set" | "mixed" | "get", "keys": K, "value_bytes": V, "seed": S}
                                           -> {"ops": N, "latencies_us": [...], "errors": E, ...}
    {"cmd": "quit"}

How load is driven (this matters for fairness, see docs/benchmarks.md): the
closed loop runs inside this node's own process, which is what the issue's
orientation figure for PySyncObj describes. ``C`` requests are kept in flight:
each completion callback (called on PySyncObj's tick thread) records the
latency and submits the next request. A SET is ``@replicated set(key, value)``;
a GET is ``@replicated get(key)`` (through the log, so linearizable like
replicaio's read-index and etcd's default range). No client network hop, no
client encoding: this anchor is favoured.

PySyncObj runs with ``appendEntriesUseBatch=False`` (AppendEntries sent as soon as
a command is queued; with the default, batches leave every 100 ms and every
request takes ~100 ms).

Durability: with ``--journal`` the Raft log is PySyncObj's ``FileJournal``, an
mmap'ed file written on every append but never fsync'ed on the write path
(the OS writes it back when it likes): "journal on" is not "fsync on".
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated


class KeyValue(SyncObj):  # type: ignore[misc]
    def __init__(self, self_address: str, partners: list[str], conf: SyncObjConf) -> None:
        super().__init__(self_address, partners, conf)
        self.data: dict[bytes, bytes] = {}

    @replicated  # type: ignore[untyped-decorator]
    def set(self, key: bytes, value: bytes) -> None:
        self.data[key] = value

    @replicated  # type: ignore[untyped-decorator]
    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)


def number(request: dict[str, object], name: str, default: float | None = None) -> float:
    """The request's field *name* as an int or float (the bench's JSON request), checked."""
    value = request.get(name, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"request field {name!r} must be a number, got {value!r}")
    return value


def run(node: KeyValue, request: dict[str, object]) -> dict[str, object]:
    clients = int(number(request, "clients"))
    warmup_s = number(request, "warmup_s")
    duration_s = number(request, "duration_s")
    mixed = request["workload"] == "mixed"
    only_gets = request["workload"] == "get"
    keys = int(number(request, "keys"))
    value = b"v" * int(number(request, "value_bytes"))
    rng = random.Random(int(number(request, "seed", 1)))
    started = time.perf_counter()
    measure_from = started + warmup_s
    deadline = measure_from + duration_s
    latencies: list[float] = []
    errors = [0]
    inflight = [0]
    lock = threading.Lock()
    all_done = threading.Event()

    def submit() -> None:
        key = b"key:%d" % rng.randrange(keys)
        begun = time.perf_counter()

        def done(result: object, error: int) -> None:
            ended = time.perf_counter()
            if error != FAIL_REASON.SUCCESS:
                errors[0] += 1
            elif begun >= measure_from and ended <= deadline:
                latencies.append(ended - begun)
            if ended < deadline:
                submit()
            else:
                with lock:
                    inflight[0] -= 1
                    if inflight[0] == 0:
                        all_done.set()

        if only_gets or (mixed and rng.random() < 0.5):
            node.get(key, callback=done)
        else:
            node.set(key, value, callback=done)

    cpu_start = time.process_time()
    with lock:
        inflight[0] = clients
    for _ in range(clients):
        submit()
    time.sleep(max(0.0, measure_from - time.perf_counter()))
    cpu_measure = time.process_time()
    time.sleep(max(0.0, deadline - time.perf_counter()))
    cpu_end = time.process_time()
    all_done.wait(timeout=10.0)
    return {
        "ops": len(latencies),
        "window_s": duration_s,
        "latencies_us": sorted(round(latency * 1e6) for latency in latencies),
        "errors": errors[0],
        "unfinished": inflight[0],
        "cpu_s": round(cpu_end - cpu_measure, 3),
        "cpu_warmup_s": round(cpu_measure - cpu_start, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--self", required=True)
    parser.add_argument("--partners", required=True, help="comma-separated host:port")
    parser.add_argument("--journal", default=None, help="journal file (omit: in memory)")
    parser.add_argument("--dump", default=None, help="full dump file for log compaction")
    args = parser.parse_args()
    # appendEntriesUseBatch=False: the leader sends AppendEntries at once (woken through a
    # pipe) instead of every appendEntriesPeriod (100 ms), the "batching off" setting of the
    # issue's orientation figure; with the default every request waits ~100 ms.
    conf = SyncObjConf(journalFile=args.journal, fullDumpFile=args.dump,
                       appendEntriesUseBatch=False)
    node = KeyValue(args.self, args.partners.split(","), conf)
    print(json.dumps({"started": args.self}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request["cmd"] == "status":
            status = node.getStatus()
            answer = {"leader": bool(node._isLeader()),
                      "has_quorum": bool(status.get("has_quorum")),
                      "leader_address": str(status.get("leader")),
                      "commit_idx": status.get("commit_idx")}
        elif request["cmd"] == "run":
            answer = run(node, request)
        elif request["cmd"] == "quit":
            break
        else:
            answer = {"error": f"unknown command {request['cmd']!r}"}
        print(json.dumps(answer), flush=True)
    node.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
