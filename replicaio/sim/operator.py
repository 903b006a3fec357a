"""The simulated operator: it admits a new USIG epoch for a MinBFT replica
whose USIG state was lost, as a live operator does with ``replicaio kv
admit-usig`` (docs/minbft.md, *Recovery*; ADR 0026).

A replica that starts on damaged storage stays inert and outputs ``UsigLost``
(a live node logs it at warning, as an operator event). The operator reacts
after a delay drawn from the seed (``OPERATOR_DELAY_US_*``): it admits the
next epoch above every one it admitted and above the one the replica reports
(the cluster file's admission, signed with the operator's key: here the
simulation scheme's admission key, which no Byzantine strategy holds), then
restarts the node, which reads its admission at start. Only correct nodes'
reports are acted on: an operator admits a new USIG only after it verified
that the old one's state is gone (a replica that could obtain new epochs at
will could forget its commitments, which MinBFT's safety rests on).

A node of several MinBFT groups (``txn-minbft``) has a USIG per group, each
with its own epochs (ADR 0031): a group's replica reports its loss inside the
group's ``GroupOutput``, and the operator admits that group's next epoch only
(an admission naming the group), as ``replicaio kv admit-usig --group`` does;
the node is configured with a mapping group -> admission.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from replicaio.assembly import simulation_admission, usig_lost
from replicaio.core.codec import Codec, DecodeError
from replicaio.core.stream import GroupOutput
from replicaio.sim.options import Crash

if TYPE_CHECKING:
    from replicaio.sim.simulator import Simulator

OPERATOR_DELAY_US_MIN = 50_000
OPERATOR_DELAY_US_MAX = 2_000_000
OPERATOR_RESTART_DOWN_US = 1_000


class SimOperator:
    """Admits new USIG epochs (see the module docstring); deterministic per seed."""

    def __init__(self, simulator: Simulator, seed: int) -> None:
        self.simulator = simulator
        self.rng = random.Random(f"replicaio-operator:{seed}")
        # (node, group: None for a node's only MinBFT) -> the last epoch admitted
        self.epochs: dict[tuple[int, int | None], int] = {}
        self.pending: set[tuple[int, int | None]] = set()  # admissions on their way
        self.admissions = 0
        self.codec = Codec()

    def on_output(self, node_id: int, output: Any) -> None:
        group: int | None = None
        if type(output) is GroupOutput:
            group = output.group
            try:
                output = self.codec.decode(output.body)
            except DecodeError:
                return
        lost = usig_lost(output)
        if lost is None or lost[0] != node_id:
            return
        simulator = self.simulator
        key = (node_id, group)
        if node_id in simulator.options.byzantine or key in self.pending:
            return  # (a report repeated by a restart: one admission answers both)
        self.pending.add(key)
        epoch = max(self.epochs.get(key, 0), lost[1]) + 1
        self.epochs[key] = epoch
        delay = self.rng.randrange(OPERATOR_DELAY_US_MIN, OPERATOR_DELAY_US_MAX)
        from replicaio.sim.simulator import CALL

        simulator.push(simulator.now + delay, CALL, -1,
                       lambda: self.admit(node_id, epoch, group))

    def admit(self, node_id: int, epoch: int, group: int | None = None) -> None:
        """Write the admission into the node's configuration (of ``group``'s USIG
        on a node of several groups) and restart it."""
        simulator = self.simulator
        node = simulator.nodes[node_id]
        admission = simulation_admission(node_id, epoch, group)
        if group is None:
            node.usig_admission = admission
        else:
            admitted = dict(node.usig_admission) if isinstance(node.usig_admission, dict) else {}
            admitted[group] = admission
            node.usig_admission = admitted
        self.pending.discard((node_id, group))
        self.admissions += 1
        simulator.stats["operator_usig_admissions"] = self.admissions
        if node.up:
            crash = Crash(node_id, simulator.now, OPERATOR_RESTART_DOWN_US, False, 0)
            simulator.go_down(node, crash, keep_unsynced=0)
