"""Live torture: real node processes in network namespaces, a nemesis, real clients.

``replicaio torture`` (:mod:`replicaio.torture.commands`) runs a replicated
key-value cluster with each node on its own "host" (a network namespace;
:mod:`~replicaio.torture.network`), injects the seed's faults on the real
network and processes (:mod:`~replicaio.torture.nemesis`), loads it with
redis-py clients recording a history (:mod:`~replicaio.torture.workload`),
heals, demands progress and checks the history linearizable
(:mod:`~replicaio.torture.run`); :mod:`~replicaio.torture.report` draws
throughput and latency over time. See ``docs/torture.md``.
"""
