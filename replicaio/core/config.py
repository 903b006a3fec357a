"""Node identity, cluster configuration and fault models, validated up front.

Node ids are the integers ``0 .. n-1``. ``f`` is the number of faults the
protocol must tolerate; which relation between ``n`` and ``f`` is required
depends on the protocol's :class:`Resilience`, checked by :meth:`ClusterConfig.validate`
before any node starts (after etcd raft's ``Config.validate``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from replicaio.core.errors import ConfigError


class Fault(enum.Enum):
    """How a node may fail in a run."""

    CORRECT = "correct"  # may still crash and restart (crash-recovery) if faults allow
    BYZANTINE = "byzantine"  # arbitrary behaviour, driven by an adversary


class Resilience(enum.Enum):
    """The relation between n and f a protocol needs."""

    ANY = "any"  # f is not used (best-effort broadcast)
    CRASH = "crash"  # n >= 2f + 1
    BYZANTINE = "byzantine"  # n >= 3f + 1
    BYZANTINE_TRUSTED = "byzantine-trusted"  # n >= 2f + 1 with a trusted component (MinBFT)

    def nodes_min(self, f: int) -> int:
        """The least n that tolerates f faults."""
        if self is Resilience.ANY:
            return 1
        if self in (Resilience.CRASH, Resilience.BYZANTINE_TRUSTED):
            return 2 * f + 1
        return 3 * f + 1


def intersecting_quorum(n: int, f: int) -> int:
    """ceil((n + f + 1) / 2), the least size of which any two sets out of n
    replicas share f + 1 (so a correct one whichever f are faulty): the echo
    quorums of Bracha's and of consistent (echo) broadcast, PBFT's replica
    quorums (``Pbft.quorum``) and a Byzantine client's quorum of an
    unordered read and of a fast reader's write (``replicaio.smr.client``).
    With n = 3f+1 it is 2f + 1; with more replicas, more (n = 5, f = 1: 4)."""
    return (n + f + 2) // 2


NODES_MAX = 1024


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """Who is in the cluster, how many faults it tolerates, and who is faulty."""

    n: int
    f: int
    byzantine: tuple[int, ...] = ()
    resilience: Resilience = Resilience.BYZANTINE
    nodes: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(range(self.n)))

    def validate(self) -> ClusterConfig:
        """Raise :class:`ConfigError` with the fix unless the configuration is usable."""
        if not 1 <= self.n <= NODES_MAX:
            raise ConfigError(f"n must be in [1, {NODES_MAX}], got {self.n}")
        if self.f < 0:
            raise ConfigError(f"f must be >= 0, got {self.f}")
        need = self.resilience.nodes_min(self.f)
        if self.n < need:
            raise ConfigError(
                f"{self.resilience.value} resilience with f={self.f} needs n >= {need}, "
                f"got n={self.n}"
            )
        if len(set(self.byzantine)) != len(self.byzantine):
            raise ConfigError(f"byzantine nodes listed twice: {self.byzantine}")
        for node in self.byzantine:
            if node not in self.nodes:
                raise ConfigError(f"byzantine node {node} is not in 0..{self.n - 1}")
        if len(self.byzantine) > self.f:
            raise ConfigError(
                f"{len(self.byzantine)} byzantine nodes exceed f={self.f}: the protocol "
                "promises nothing then"
            )
        if self.byzantine and self.resilience in (Resilience.ANY, Resilience.CRASH):
            raise ConfigError(f"{self.resilience.value} protocols tolerate no byzantine nodes")
        return self

    def fault(self, node: int) -> Fault:
        """The fault model of ``node`` in this run."""
        return Fault.BYZANTINE if node in self.byzantine else Fault.CORRECT

    @property
    def correct(self) -> tuple[int, ...]:
        """Nodes that follow the protocol (they may still crash and recover)."""
        return tuple(node for node in self.nodes if node not in self.byzantine)
