"""Helpers for tests of a live cluster of node processes (``LocalCluster``).

:func:`core_counters` and :func:`runtime_counters` read a node's counters from
its metrics endpoint (the cluster must serve metrics): the protocol's
(``replicaio_core_events_total``) and the host's
(``replicaio_runtime_events_total``), by event name.
"""

from __future__ import annotations

import urllib.request

from replicaio.runtime.local import LocalCluster


def scraped_events(cluster: LocalCluster, node: int, family: str) -> dict[str, float]:
    """Node ``node``'s counters of ``replicaio_<family>_events_total``, by event."""
    address = cluster.cluster.nodes[node].metrics
    assert address is not None, "the cluster serves no metrics"
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as page:
        text = page.read().decode()
    prefix = f'replicaio_{family}_events_total{{event="'
    found = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            name, _, number = line[len(prefix):].partition('"} ')
            found[name] = float(number)
    return found


def core_counters(cluster: LocalCluster, node: int) -> dict[str, float]:
    """The node's core counters (``replicaio_core_events_total``)."""
    return scraped_events(cluster, node, "core")


def runtime_counters(cluster: LocalCluster, node: int) -> dict[str, float]:
    """The node's runtime counters (``replicaio_runtime_events_total``)."""
    return scraped_events(cluster, node, "runtime")
