"""PBFT: Byzantine-fault-tolerant total order for state machine replication.

Papers: Castro and Liskov, *Practical Byzantine Fault Tolerance* (OSDI 1999),
section 4 (the algorithm with signatures) and 4.5.2 (liveness); *Practical
Byzantine Fault Tolerance and Proactive Recovery* (TOCS 2002), for status
messages and state transfer (5.2, 5.3.2). Byzantine faults: n >= 3f + 1
replicas, of which at most f behave arbitrarily; the others may also crash
and restart with what they wrote durably.

Guarantees (with at most f faulty replicas): no two correct replicas execute
different batches at one sequence number (safety, whatever the network does);
once the network delivers messages within a bound and the view-change timers
have grown past it, batches submitted at correct replicas are executed
(liveness, section 4.5.2).

Interface. :class:`Pbft` implements :class:`replicaio.interfaces.ordering.Ordering`:
SMR ``submit``s batches on every replica (a backup relays them to the
primary); every executed number reaches SMR once, in order, through
``on_commit`` (a null request of a view change, or a read barrier, as an
empty batch); SMR hands a snapshot at every multiple of K to ``compact``, the
checkpoint of section 4.3; a certified state fetched by state transfer
reaches SMR through ``on_snapshot``. ``read_barrier`` orders a barrier batch
of the replica's own and answers the number it executed at.

Which file owns which step:

* ``params.py``: :class:`PbftParams` (K, L, timeouts, every ``*_max``).
* ``messages.py``: the signed wire messages (what a signature covers), outputs.
* ``pbft.py``: :class:`Pbft`: shared state, the Ordering API, dispatch,
  execution in order, STATUS, durable records and recovery.
* ``normal.py``: section 4.2: PRE-PREPARE, PREPARE, COMMIT, the window, relaying
  to the primary, the backup's view-change timer, retransmission.
* ``checkpoint.py``: section 4.3: CHECKPOINT, certificates, stable
  checkpoints, garbage collection, disagreement reports.
* ``view_change.py``: sections 4.4 and 4.5.2: VIEW-CHANGE, NEW-VIEW, timers.
* ``state_transfer.py``: fetching a certified state (TOCS 5.3.2).

Messages are handled by plain ``on_<message>`` handlers guarded by
``ignore_<message>``/``invalid_*`` checks: a peer's bad message is dropped and
counted as ``pbft_rejected_<reason>``. See ``docs/pbft.md``.
"""

from __future__ import annotations

from replicaio.protocols.pbft.messages import (
    Checkpoint,
    CheckpointDisagreement,
    Commit,
    Executed,
    NewView,
    Prepare,
    PreparedProof,
    PrePrepare,
    Relay,
    StateInstalled,
    StateReply,
    StateRequest,
    Status,
    ViewChange,
    ViewChangeStarted,
    ViewStarted,
)
from replicaio.protocols.pbft.params import PbftParams
from replicaio.protocols.pbft.pbft import Pbft

__all__ = [
    "Checkpoint",
    "CheckpointDisagreement",
    "Commit",
    "Executed",
    "NewView",
    "Pbft",
    "PbftParams",
    "PrePrepare",
    "Prepare",
    "PreparedProof",
    "Relay",
    "StateInstalled",
    "StateReply",
    "StateRequest",
    "Status",
    "ViewChange",
    "ViewChangeStarted",
    "ViewStarted",
]
