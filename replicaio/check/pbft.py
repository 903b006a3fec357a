"""Checkers for PBFT's properties, fed with the replicas' outputs as a host sees them.

With at most f Byzantine replicas, PBFT promises (Castro and Liskov, OSDI
1999, section 4.5):

* **agreement** (safety): no two correct replicas execute different batches
  at one sequence number (``Executed``; a correct replica restarting and
  executing a number again must execute the same batch);
* **certified state**: a correct replica installs by state transfer only the
  state correct replicas certified (``StateInstalled``: two correct replicas
  never install different digests at one checkpoint);
* **deterministic execution**: a correct replica never finds its checkpoint
  digest outvoted by 2f+1 others (``CheckpointDisagreement``; our state
  machines are deterministic, so a report from a correct replica is a bug:
  reported, not ignored);
* **liveness** (after :meth:`PbftChecker.begin_liveness`): some correct
  replica executes a number beyond what any had executed when the faults
  healed, within the host's bound; excused (:meth:`PbftChecker.excused`) while
  the Byzantine replicas and those withholding their votes after storage
  damage (``VotesWithheld``) are more than f: too many faults may stop the
  cluster, never make it answer wrongly (issue 9).

Byzantine replicas' outputs are not held to anything (their cores may be fed
with their own lies). Memory: one digest per executed number and per
installed checkpoint.
"""

from __future__ import annotations

from typing import Any

from replicaio.check.broadcast import Violation
from replicaio.protocols.pbft.messages import (
    CheckpointDisagreement,
    Executed,
    StateInstalled,
    ViewChangeStarted,
    ViewStarted,
    VotesWithheld,
)


class PbftChecker:
    """Agreement, certified state, determinism and liveness; see the module docstring."""

    def __init__(self, byzantine: tuple[int, ...] = (), f: int | None = None) -> None:
        self.byzantine = frozenset(byzantine)
        self.f = len(self.byzantine) if f is None else f
        self.withheld: set[int] = set()  # correct replicas withholding their votes
        self.executed: dict[int, tuple[bytes, int]] = {}  # seq -> (digest, first node)
        self.installed: dict[int, tuple[bytes, int]] = {}
        self.executed_max = 0
        self.healed_at: int | None = None
        self.executed_at_heal = 0
        self.views_max = 0
        self.state_transfers = 0
        # node -> (view, primary, or -1 while changing to the view): what its
        # latest ViewStarted / ViewChangeStarted said
        self.view_of: dict[int, tuple[int, int]] = {}
        # node -> the highest number it executed or installed (state transfer)
        self.executed_by: dict[int, int] = {}

    def on_output(self, node: int, output: Any, time_us: int) -> list[Violation]:
        if node in self.byzantine:
            return []
        kind = type(output)
        if kind is Executed:
            return self.on_executed(node, output, time_us)
        if kind is VotesWithheld:
            if output.withheld:
                self.withheld.add(node)
            else:
                self.withheld.discard(node)
            return []
        if kind is ViewStarted:
            self.view_of[node] = (output.view, output.primary)
        elif kind is ViewChangeStarted:
            self.view_of[node] = (output.view, -1)
        if kind is StateInstalled:
            self.state_transfers += 1
            if output.seq > self.executed_by.get(node, 0):
                self.executed_by[node] = output.seq
            return self.agree(self.installed, "state-transfer", node, output.seq,
                              output.digest, time_us)
        if kind is CheckpointDisagreement:
            return [Violation(
                "checkpoint-determinism",
                f"node {node}: its state at {output.seq} has digest {output.own.hex()[:16]}, "
                f"2f+1 replicas certified {output.certified.hex()[:16]}",
                node, time_us,
            )]
        view = getattr(output, "view", None)
        if type(view) is int and view > self.views_max:
            self.views_max = view
        return []

    def on_executed(self, node: int, output: Executed, time_us: int) -> list[Violation]:
        seq = output.seq
        if seq > self.executed_max:
            self.executed_max = seq
        if seq > self.executed_by.get(node, 0):
            self.executed_by[node] = seq
        return self.agree(self.executed, "agreement", node, output.seq, output.digest, time_us)

    @staticmethod
    def agree(
        table: dict[int, tuple[bytes, int]], name: str, node: int, seq: int, digest: bytes,
        time_us: int,
    ) -> list[Violation]:
        known = table.get(seq)
        if known is None:
            table[seq] = (digest, node)
            return []
        if known[0] == digest:
            return []
        return [Violation(
            name,
            f"node {node} has {digest.hex()[:16]} at {seq}, node {known[1]} had "
            f"{known[0].hex()[:16]}",
            node, time_us,
        )]

    def begin_liveness(self, time_us: int) -> None:
        self.healed_at = time_us
        self.executed_at_heal = self.executed_max

    def settled(self) -> bool:
        return self.healed_at is not None and self.executed_max > self.executed_at_heal

    def stable(self, up: list[int]) -> bool:
        """Whether the correct replicas ``up`` are all active in one view (none
        in a view change; each started a view since its last start) and have
        all executed as far as any correct replica (none behind: with f
        replicas down or silent, a quorum needs every correct one, and one
        behind holds the stable checkpoint, so the window, back). A
        replica that suspects its primary alone leaves the view and takes no
        part in it any more, and its peers join it only on f+1 VIEW-CHANGEs or
        their own timeouts (OSDI 1999, section 4.4): until then a quorum of the
        view may lack it, and a request waits for a timeout. The host holds
        requests to ``prompt`` only once the view is stable."""
        if not up:
            return True
        executed = {self.executed_by.get(node, 0) for node in up if node not in self.byzantine}
        return self.primary(up) >= 0 and len(executed) <= 1

    def primary(self, up: list[int]) -> int:
        """The primary of the view the correct replicas ``up`` are all active
        in, or -1 when they are not (see ``stable``)."""
        states = {self.view_of.get(node, (-1, -1)) for node in up if node not in self.byzantine}
        if len(states) != 1:
            return -1
        ((_, primary),) = states
        return primary

    def excused(self) -> bool:
        """Whether liveness is beyond the fault model now: more than f replicas
        Byzantine or withholding their votes after storage damage."""
        return len(self.byzantine) + len(self.withheld) > self.f

    def finish(self, time_us: int) -> list[Violation]:
        if self.healed_at is None or self.settled() or self.excused():
            return []
        return [Violation(
            "liveness",
            f"no correct replica executed past {self.executed_at_heal} after the heal",
            None, time_us,
        )]

    def summary(self) -> dict[str, Any]:
        return {
            "pbft_executed_max": self.executed_max,
            "pbft_view_max": self.views_max,
            "pbft_state_transfers": self.state_transfers,
            "pbft_withholding_at_end": len(self.withheld),
        }
