"""Benchmark of the linearizability checker on realistic key-value histories.

Simulates concurrent clients against a correct atomic store: each operation
takes effect at one instant inside its [call, return] interval, latencies
are random; some requests are rejected (``fail``, no effect), some time out
(``info``: the client gives up and continues under a new id, the operation
takes effect later, or never). Registers see get/put/append/cas/delete,
counters get/incr. Then times ``check_linearizable`` on the result, and on
the same history with one stale read planted at the end (detection plus
explanation).

    .venv/bin/python bench/bench_linearizability.py                 # 1k, 10k, 100k
    .venv/bin/python bench/bench_linearizability.py --sizes 10000 --keys 10 --clients 20
    .venv/bin/python bench/bench_linearizability.py --sizes 10000 --profile

Deterministic for a given ``--seed``.
"""

from __future__ import annotations

import argparse
import cProfile
import heapq
import itertools
import platform
import pstats
import random
import sys
import time
from dataclasses import dataclass, replace

from replicaio.check.history import Operation
from replicaio.check.linearizability import LinearizabilityResult, check_linearizable


@dataclass(frozen=True, slots=True)
class Workload:
    operations: int
    clients: int
    keys: int
    counters: int  # how many of the keys are counters (incr/get)
    timeout_rate: float  # per operation: the client gives up, outcome unknown
    reject_rate: float  # per operation: the store refuses it (fail, no effect)
    latency_mean: float  # mean of each of the request and response delays
    seed: int


def _apply(store: dict[str, str], op: Operation) -> tuple[bool, str | None]:
    """Execute ``op`` atomically on ``store``: (it succeeded, its output)."""
    current = store.get(op.key)
    if op.op == "get":
        return True, current
    if op.op == "put":
        assert op.value is not None
        store[op.key] = op.value
        return True, None
    if op.op == "delete":
        store.pop(op.key, None)
        return True, None
    if op.op == "append":
        store[op.key] = (current or "") + (op.value or "")
        return True, None
    if op.op == "cas":
        if current != op.expected:
            return True, "fail"
        assert op.value is not None
        store[op.key] = op.value
        return True, "ok"
    assert op.op == "incr"
    if current is not None and not current.lstrip("-").isdigit():
        return False, None  # the store answers an error: status fail
    store[op.key] = str(int(current or "0") + int(op.value or "0"))
    return True, store[op.key]


Request = tuple[str, str, str | None, str | None]
"""(kind, key, value, expected) of a request."""


def _choose(rng: random.Random, workload: Workload, store: dict[str, str], serial: int) -> Request:
    """The next request of a client, drawn from the workload's mix."""
    index = rng.randrange(workload.keys)
    key = f"counter{index}" if index < workload.counters else f"key{index}"
    if index < workload.counters:
        kind = "incr" if rng.random() < 0.6 else "get"
        return kind, key, (str(rng.randint(1, 3)) if kind == "incr" else None), None
    roll = rng.random()
    value = f"v{serial}"
    if roll < 0.50:
        return "get", key, None, None
    if roll < 0.70:
        return "put", key, value, None
    if roll < 0.75:
        return "append", key, value, None
    if roll < 0.97:
        # Mostly read-modify-write from the value seen now (may be stale at execution).
        expected = store.get(key) if rng.random() < 0.7 else f"v{rng.randrange(serial + 1)}"
        return "cas", key, value, expected
    return "delete", key, None, None


def simulate(workload: Workload) -> list[Operation]:
    """A history of ``workload.operations`` operations of a correct atomic store."""
    rng = random.Random(workload.seed)
    store: dict[str, str] = {}
    queue: list[tuple[float, int, str, int]] = []  # (time, tie, event, slot or operation)
    invoked: list[Operation] = []
    outputs: dict[int, str | None] = {}
    errors: set[int] = set()  # operations the store refused when they took effect
    history: list[Operation] = []
    client_of_slot = list(range(workload.clients))
    next_client = workload.clients
    tie = itertools.count()
    for slot in range(workload.clients):
        heapq.heappush(queue, (rng.random(), next(tie), "invoke", slot))
    mean = workload.latency_mean
    while queue:
        now, _, event, target = heapq.heappop(queue)
        if event == "invoke":
            serial = len(invoked)
            if serial == workload.operations:
                continue
            kind, key, value, expected = _choose(rng, workload, store, serial)
            op = Operation(
                client_of_slot[target], kind, key, value, expected, None, now, None, "ok"
            )
            invoked.append(op)
            effect = now + rng.expovariate(1 / mean)
            done = effect + rng.expovariate(1 / mean)
            roll = rng.random()
            if roll < workload.reject_rate:
                history.append(replace(op, return_=done, status="fail"))
            elif roll < workload.reject_rate + workload.timeout_rate:
                if rng.random() < 0.5:  # it does happen, possibly long after the client gave up
                    late = effect + rng.expovariate(1 / (20 * mean))
                    heapq.heappush(queue, (late, next(tie), "effect", serial))
                history.append(replace(op, status="info"))
                client_of_slot[target] = next_client
                next_client += 1
                done = now + 10 * mean  # the client's timeout
            else:
                heapq.heappush(queue, (effect, next(tie), "effect", serial))
                heapq.heappush(queue, (done, next(tie), "return", serial))
            think = rng.expovariate(1 / (mean / 4))
            heapq.heappush(queue, (done + think, next(tie), "invoke", target))
        elif event == "effect":
            succeeded, outputs[target] = _apply(store, invoked[target])
            if not succeeded:
                errors.add(target)
        else:
            op = invoked[target]
            output = outputs[target]
            if target in errors:
                history.append(replace(op, return_=now, status="fail"))
            else:
                shown = output if op.op in ("get", "cas", "incr") else None
                history.append(replace(op, output=shown, return_=now))
    return history


def plant_stale_read(history: list[Operation]) -> list[Operation]:
    """The history plus a write and a read, after everything, that misses the write."""
    key = next(op.key for op in history if op.key.startswith("key"))
    end = max(op.return_ or op.call for op in history)
    client = max(op.client for op in history) + 1
    write = Operation(client, "put", key, "fresh", None, None, end + 1, end + 2, "ok")
    read = Operation(client, "get", key, None, None, "stale", end + 3, end + 4, "ok")
    return [*history, write, read]


def _timed_check(history: list[Operation], repeat: int) -> tuple[LinearizabilityResult, float]:
    """The result of the fastest of ``repeat`` checks and its CPU seconds (wall is in it)."""
    best: tuple[LinearizabilityResult, float] | None = None
    for _ in range(repeat):
        cpu_started = time.process_time()
        result = check_linearizable(history)
        cpu = time.process_time() - cpu_started
        if best is None or result.seconds < best[0].seconds:
            best = (result, cpu)
    assert best is not None
    return best


def _run(workload: Workload, repeat: int, profile: bool) -> None:
    started = time.perf_counter()
    history = simulate(workload)
    generated = time.perf_counter() - started
    statuses = {s: sum(op.status == s for op in history) for s in ("ok", "info", "fail")}
    result, cpu = _timed_check(history, repeat)
    assert result.linearizable is True, result.describe()
    slowest = max(result.per_key.values(), key=lambda part: part.seconds)
    configurations = sum(part.configurations for part in result.per_key.values())
    broken, broken_cpu = _timed_check(plant_stale_read(history), 1)
    assert broken.linearizable is False
    assert broken.explanation is not None
    proof = "prefix" if broken.explanation.start is None else "window"
    print(
        f"{workload.operations:>7} ops {workload.clients:>3} clients {workload.keys:>4} keys | "
        f"ok/info/fail {statuses['ok']}/{statuses['info']}/{statuses['fail']} | "
        f"check {result.seconds:7.3f} s wall {cpu:7.3f} s cpu "
        f"({workload.operations / result.seconds:7.0f} ops/s) | "
        f"slowest key {slowest.seconds:.3f} s ({slowest.operations} ops) | "
        f"{configurations} configurations | "
        f"planted violation found and explained {broken.seconds:.3f} s wall "
        f"{broken_cpu:.3f} s cpu ({proof}) | "
        f"generation {generated:.2f} s"
    )
    if profile:
        profiler = cProfile.Profile()
        profiler.runcall(check_linearizable, history)
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(12)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,10000,100000", help="comma-separated op counts")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--keys", type=int, default=50)
    parser.add_argument("--counters", type=int, default=5, help="keys that are counters")
    parser.add_argument("--timeout-rate", type=float, default=0.02)
    parser.add_argument("--reject-rate", type=float, default=0.01)
    parser.add_argument("--latency-mean", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="checks per size; the best counts")
    parser.add_argument("--profile", action="store_true", help="cProfile the check, print the top")
    arguments = parser.parse_args()
    print(
        f"python {platform.python_version()} on {platform.machine()}, seed {arguments.seed}, "
        f"timeout rate {arguments.timeout_rate}, reject rate {arguments.reject_rate}, "
        f"{arguments.counters} counter keys, best of {arguments.repeat}"
    )
    for size in (int(text) for text in arguments.sizes.split(",")):
        workload = Workload(
            operations=size,
            clients=arguments.clients,
            keys=arguments.keys,
            counters=min(arguments.counters, arguments.keys),
            timeout_rate=arguments.timeout_rate,
            reject_rate=arguments.reject_rate,
            latency_mean=arguments.latency_mean,
            seed=arguments.seed,
        )
        _run(workload, arguments.repeat, arguments.profile)


if __name__ == "__main__":
    main()
