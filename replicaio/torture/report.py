"""What a torture run shows: throughput and latency over time, the faults, a plot.

:func:`timeline` buckets the client history by second (of the run's own
clock, 0 = when the clients started): operations completed ``ok``, ``fail``
and ``info``, and the 50th and 99th percentile latency of the ``ok`` ones.
:func:`write_plot` draws it as a PNG with every fault as a shaded interval
(matplotlib, the ``torture`` extra; without it the plot is skipped and said so).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from replicaio.check.history import Operation

BUCKETS_MAX = 100_000


@dataclass(frozen=True, slots=True)
class FaultEvent:
    """A fault as it happened: seconds since the clients started."""

    kind: str
    description: str
    started_s: float
    healed_s: float | None


@dataclass(frozen=True, slots=True)
class Bucket:
    second: int
    ok: int
    fail: int
    info: int
    latency_ms_p50: float | None
    latency_ms_p99: float | None


def percentile(values: Sequence[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def timeline(operations: Sequence[Operation], origin: float) -> list[Bucket]:
    """Per-second counts and latencies (see the module docstring)."""
    ends: dict[int, list[Operation]] = {}
    for op in operations:
        end = op.return_ if op.return_ is not None else op.call
        second = max(0, int(end - origin))
        if second < BUCKETS_MAX:
            ends.setdefault(second, []).append(op)
    last = max(ends, default=-1)
    buckets = []
    for second in range(last + 1):
        ops = ends.get(second, [])
        latencies = [1000 * (op.return_ - op.call) for op in ops
                     if op.status == "ok" and op.return_ is not None]
        buckets.append(Bucket(
            second,
            sum(op.status == "ok" for op in ops),
            sum(op.status == "fail" for op in ops),
            sum(op.status == "info" for op in ops),
            percentile(latencies, 0.5),
            percentile(latencies, 0.99),
        ))
    return buckets


def write_timeline(buckets: Sequence[Bucket], path: Path) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["second", "ok", "fail", "info", "latency_ms_p50", "latency_ms_p99"])
        for bucket in buckets:
            writer.writerow([bucket.second, bucket.ok, bucket.fail, bucket.info,
                             milliseconds(bucket.latency_ms_p50),
                             milliseconds(bucket.latency_ms_p99)])


def milliseconds(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def write_plot(buckets: Sequence[Bucket], faults: Sequence[FaultEvent], path: Path,
               title: str, healed_s: float | None = None) -> str | None:
    """Draw throughput and latency over time; ``None``, or why no plot was drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as pyplot
    except ImportError:
        return "matplotlib is not installed (pip install 'replicaio[torture]'): no plot"
    figure, (top, bottom) = pyplot.subplots(2, 1, sharex=True, figsize=(11, 6))
    seconds = [bucket.second for bucket in buckets]
    top.plot(seconds, [bucket.ok for bucket in buckets], label="ok/s", color="tab:green")
    top.plot(seconds, [bucket.info + bucket.fail for bucket in buckets],
             label="info+fail/s", color="tab:red", linewidth=0.8)
    top.set_ylabel("operations per second")
    top.legend(loc="upper right")
    for name, attribute, color in (("p50", "latency_ms_p50", "tab:blue"),
                                   ("p99", "latency_ms_p99", "tab:purple")):
        points = [(bucket.second, getattr(bucket, attribute)) for bucket in buckets
                  if getattr(bucket, attribute) is not None]
        bottom.plot([p[0] for p in points], [p[1] for p in points], label=name, color=color)
    bottom.set_yscale("log")
    bottom.set_ylabel("latency of ok operations (ms)")
    bottom.set_xlabel("seconds since the clients started")
    bottom.legend(loc="upper right")
    colors = {"kill": "tab:red", "pause": "tab:orange", "netem": "tab:olive",
              "slow": "tab:cyan", "disk-full": "tab:brown"}
    end = seconds[-1] if seconds else 0
    for fault in faults:
        color = colors.get(fault.kind, "tab:gray")
        healed = fault.healed_s if fault.healed_s is not None else end
        for axis in (top, bottom):
            axis.axvspan(fault.started_s, healed, color=color, alpha=0.15)
        top.annotate(fault.kind, (fault.started_s, 1), xycoords=("data", "axes fraction"),
                     fontsize=7, rotation=90, va="top")
    if healed_s is not None:  # after it: progress demanded, then the read-back
        for axis in (top, bottom):
            axis.axvline(healed_s, color="black", linestyle="--", linewidth=0.8)
        top.annotate("healed", (healed_s, 1), xycoords=("data", "axes fraction"), fontsize=7,
                     rotation=90, va="top")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    pyplot.close(figure)
    return None
