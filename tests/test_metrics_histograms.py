"""The lock-free loop histograms expose what prometheus_client's Histogram would."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.utils import floatToGoString

from replicaio.runtime.kv.service import LATENCY_BUCKETS
from replicaio.runtime.metrics import BATCH_BUCKETS, FSYNC_BUCKETS, LoopHistograms


def samples(registry: CollectorRegistry) -> list[str]:
    """The exposition's sample lines, without comments and ``_created`` samples."""
    return sorted(line for line in generate_latest(registry).decode().splitlines()
                  if line and not line.startswith("#") and "_created" not in line)


@pytest.mark.parametrize("buckets", [FSYNC_BUCKETS, BATCH_BUCKETS, tuple(LATENCY_BUCKETS)],
                         ids=["fsync", "batch", "latency"])
def test_the_same_samples_as_prometheus_client(buckets: tuple[float, ...]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopHistograms("x_seconds", "doc", buckets, ["command"], registry=ours)
    reference = Histogram("x_seconds", "doc", ["command"], buckets=buckets, registry=theirs)
    draw = random.Random(7)
    values = [float(bound) for bound in buckets]  # exactly on every bound
    values += [buckets[-1] * 2, -1.0, 0.0]  # above every bound, below every bound
    values += [draw.uniform(0, buckets[-1] * 1.5) for _ in range(500)]
    for index, value in enumerate(values):
        command = ("get", "set", "mset")[index % 3]
        loop.labels(command).observe(value)
        reference.labels(command).observe(value)
    assert samples(ours) == samples(theirs)


def test_a_family_without_labels_and_bad_arguments() -> None:
    registry = CollectorRegistry()
    family = LoopHistograms("y", "doc", (1, 2), registry=registry)
    child = family.labels()
    assert family.labels() is child
    child.observe(1.5)
    text = generate_latest(registry).decode()
    assert 'y_bucket{le="1.0"} 0.0' in text and 'y_bucket{le="2.0"} 1.0' in text
    assert 'y_bucket{le="+Inf"} 1.0' in text and "y_sum 1.5" in text
    with pytest.raises(ValueError, match="labels"):
        family.labels("extra")
    with pytest.raises(ValueError, match="distinct finite"):
        LoopHistograms("z", "doc", (1, 1))
    with pytest.raises(ValueError, match="distinct finite"):
        LoopHistograms("z", "doc", (1, float("inf")))


def test_bound_labels_are_written_as_prometheus_client_writes_them() -> None:
    for bound in (*FSYNC_BUCKETS, *BATCH_BUCKETS, *LATENCY_BUCKETS):
        assert repr(float(bound)) == floatToGoString(float(bound))
