"""Checkers for the broadcast family, holding each protocol to what it claims.

They watch node outputs from outside the nodes (``Accepted`` and
``Delivered``), as every host reports them, and verify:

* **integrity / no duplication** (all protocols): a correct node delivers
  each instance ``(sender, seq)`` at most once, across restarts (a
  ``recovered`` re-announcement of the same value after a restart is not a
  second delivery; one with a different value is);
* **integrity / no creation** (all protocols): if the sender is correct, a
  delivered value is the one it accepted for that instance;
* **agreement** (``bracha``, ``echo``): no two correct nodes deliver
  different values for one instance;
* **validity** (end of run, all protocols): every instance a correct sender
  accepted is delivered by every correct node;
* **totality** (end of run, ``bracha``): an instance delivered by one correct
  node is delivered by every correct node.

A node that outputs ``StorageLost`` (its storage lost writes, and it abstains
from then on) counts as faulty from that output on: what it delivered before
is still checked against the others, and it is no longer expected to deliver.

Safety properties are checked on every output; validity and totality are
liveness properties, checked by :meth:`BroadcastChecker.finish` once the
network has healed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from replicaio.interfaces.broadcast import Accepted, BroadcastClaims, Delivered, StorageLost


@dataclass(frozen=True, slots=True)
class Violation:
    """A property that did not hold, with where and when."""

    property: str
    detail: str
    node: int | None = None
    time_us: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "property": self.property,
            "detail": self.detail,
            "node": self.node,
            "time_us": self.time_us,
        }


class BroadcastChecker:
    """Checks one run of a broadcast protocol; see the module docstring."""

    def __init__(self, spec: BroadcastClaims, correct: tuple[int, ...]) -> None:
        self.spec = spec
        self.correct = frozenset(correct)
        self.accepted: dict[tuple[int, int], bytes] = {}
        # instance -> node -> value, for correct nodes only
        self.delivered: dict[tuple[int, int], dict[int, bytes]] = {}
        self.deliveries = 0
        self.violations: list[Violation] = []
        # instances some correct node has but not every correct node delivered yet
        self.unsettled: dict[tuple[int, int], None] = {}

    def on_output(self, node: int, output: Any, time_us: int) -> list[Violation]:
        """Check one output; returns (and keeps) any new violations."""
        if node not in self.correct:
            return []
        if type(output) is StorageLost:
            self.lost_storage(node)
            return []
        found: list[Violation] = []
        if type(output) is Accepted:
            key = (output.sender, output.seq)
            previous = self.accepted.get(key)
            if previous is not None and previous != output.value:
                found.append(
                    Violation(
                        "integrity",
                        f"instance {key} accepted twice with different values",
                        node,
                        time_us,
                    )
                )
            self.accepted[key] = output.value
            self.update_settled(key)
            for other, value in self.delivered.get(key, {}).items():
                if value != output.value:
                    found.append(
                        Violation(
                            "integrity",
                            f"node {other} delivered {value!r} for {key} before "
                            f"its correct sender accepted {output.value!r}",
                            other,
                            time_us,
                        )
                    )
        elif type(output) is Delivered:
            found = self.on_delivered(node, output, time_us)
        self.violations.extend(found)
        return found

    def on_delivered(self, node: int, output: Delivered, time_us: int) -> list[Violation]:
        found: list[Violation] = []
        key = (output.sender, output.seq)
        self.deliveries += 1
        by_node = self.delivered.setdefault(key, {})
        if node in by_node:
            if output.recovered and by_node[node] == output.value:
                self.deliveries -= 1
                return found  # re-announced after a restart: not a second delivery
            found.append(
                Violation(
                    "no-duplication",
                    f"instance {key} delivered twice",
                    node,
                    time_us,
                )
            )
        if output.sender in self.correct:
            accepted = self.accepted.get(key)
            if accepted is not None and accepted != output.value:
                found.append(
                    Violation(
                        "integrity",
                        f"instance {key}: delivered {output.value!r} but the correct "
                        f"sender accepted {accepted!r}",
                        node,
                        time_us,
                    )
                )
        if self.spec.agreement:
            for other, value in by_node.items():
                if value != output.value:
                    found.append(
                        Violation(
                            "agreement",
                            f"instance {key}: node {node} delivered {output.value!r}, "
                            f"node {other} delivered {value!r}",
                            node,
                            time_us,
                        )
                    )
                    break
        by_node.setdefault(node, output.value)
        self.update_settled(key)
        return found

    def lost_storage(self, node: int) -> None:
        """``node``'s storage lost writes: it abstains from now on and counts as
        faulty (what it delivered before stays checked against the others)."""
        self.correct = self.correct - {node}
        for key in list(self.unsettled):
            self.update_settled(key)

    def kept_down(self, node: int) -> None:
        """``node`` stays down from now on (the simulator's ``degraded`` fault
        kind): a crash for good, so it counts as faulty, as after lost storage."""
        self.lost_storage(node)

    def update_settled(self, key: tuple[int, int]) -> None:
        holders = self.correct.intersection(self.delivered.get(key, ()))
        expected = (key in self.accepted and key[0] in self.correct) or (
            self.spec.totality and bool(holders)
        )
        if expected and len(holders) < len(self.correct):
            self.unsettled[key] = None
        else:
            self.unsettled.pop(key, None)

    def settled(self) -> bool:
        """Whether every liveness obligation known so far is met."""
        return not self.unsettled

    def finish(self, time_us: int) -> list[Violation]:
        """Check validity (and totality where claimed) once the run has settled."""
        found: list[Violation] = []
        for key in sorted(self.accepted):
            if key[0] not in self.correct:
                continue
            missing = sorted(self.correct - set(self.delivered.get(key, {})))
            if missing:
                found.append(
                    Violation(
                        "validity",
                        f"instance {key} of a correct sender not delivered by "
                        f"correct nodes {missing}",
                        None,
                        time_us,
                    )
                )
        if self.spec.totality:
            for key in sorted(self.delivered):
                missing = sorted(self.correct - set(self.delivered[key]))
                holders = self.correct.intersection(self.delivered[key])
                # (an instance a still-correct sender accepted is validity's)
                if missing and holders and (key not in self.accepted or key[0] not in self.correct):
                    found.append(
                        Violation(
                            "totality",
                            f"instance {key} delivered by some correct nodes but not by {missing}",
                            None,
                            time_us,
                        )
                    )
        self.violations.extend(found)
        return found
