"""A replica whose USIG state may be lost: a new USIG admitted by the operator,
votes withheld until the replica recovered (docs/minbft.md, *Recovery*; ADR 0026).

MinBFT's USIG promises that no counter value goes to two messages. Its counter
lives in the replica's storage (``usig``), so storage that lost synced writes
(``Start.damaged``: a lost tail, a log cut back to its intact prefix; issue 9)
may have rolled it back: resuming would give released values again, which is
equivocation, and n = 2f+1 does not survive that (Gupta et al., EuroSys 2023).
So a replica never resumes a USIG after such damage. It starts *inert*
(``usig_lost``, written in the start step, before anything is sent): no
message, no USIG; it outputs :class:`UsigLost` (an operator event) and waits
for the operator.

The operator admits a new USIG epoch for it (a :class:`UsigAdmission` signed
with the operator's key, in the cluster configuration: the replica cannot admit
itself, since a replica that could start epochs at will could say one thing
under each). With an admission above every epoch the replica knows it used, it
starts a new USIG under that epoch (counter 0) and forgets whatever was tied to
the old one: its own certified messages, the anchor, the slots. Its peers
switch its stream to the new epoch when its STATUS shows the admission (from
then on they drop the old epoch's messages), and its PREPAREs and COMMITs count
only for views its new stream enters by a VIEW-CHANGE or NEW-VIEW, from the
peer's view at the switch on (``PeerStream.switch_epoch``).

Its commitments under the old epoch are gone from its memory, and with n = 2f+1
a commit quorum and a view-change quorum meet in one replica: it must not be
that one. So it *withholds* (``recovering``, durable, written before the new
USIG is): no PREPARE, COMMIT, VIEW-CHANGE, NEW-VIEW or NEW-VIEW-COMMIT, until
its stable checkpoint reaches a *target*. It still executes what f+1 others
commit, certifies CHECKPOINTs, fetches certified state and follows views.

The target: the highest ``executed`` in the first STATUS of *every* peer sent
after that peer switched to the new epoch (``Status.epochs``: so never a
report from before the damage), rounded up to a checkpoint, plus the window L.
Why every peer and not f+1: every COMMIT the replica sent lay at most L above
its stable checkpoint s at that time, and s was certified by f+1 CHECKPOINTs;
with Byzantine and amnesic replicas together at most f, one of the f other
signers is correct and intact and had executed s before the damage, but which
one is unknown. A faulty peer can only raise the target (a longer wait) or
withhold its report (the replica stays withholding, one of the f faulty: the
others are enough). Safety needs Byzantine + amnesic <= f; beyond it the
cluster may stop, and the checkers excuse liveness then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from replicaio.core.codec import Message, Meta
from replicaio.core.effects import notice_advising
from replicaio.protocols.minbft.messages import Status
from replicaio.protocols.minbft.usig import (
    EPOCH_MAX,
    ContextUsigStore,
    Usig,
    UsigAdmission,
    UsigId,
    valid_admission,
)
from replicaio.protocols.pbft.messages import VotesWithheld

if TYPE_CHECKING:
    from replicaio.protocols.minbft.minbft import Minbft

RECOVERING_KEY = "recovering"
USIG_LOST_KEY = "usig_lost"
# Records tied to the USIG epoch they were made under: forgotten with it.
EPOCH_RECORD_PREFIXES = ("own", "pp", "vt", "cm", "nvc")
EPOCH_RECORDS = ("anchor", "lp", "nv", "nvv")


@notice_advising(
    "replica {replica} found its storage damaged: its USIG counter may have gone back, so it "
    "sends nothing (it could otherwise certify two messages with one counter value); the "
    "cluster goes on without it. To bring it back, an operator admits a new USIG epoch "
    "above {epoch}: replicaio kv admit-usig --cluster FILE --node {replica}, then restart "
    "it (docs/minbft.md, Recovery of a lost USIG)")
class UsigLost(Message, tag="minbft.UsigLost"):
    """Output: ``replica`` found its storage damaged (its USIG counter may have
    gone back) and sends nothing until the operator admits a USIG epoch above
    ``epoch``."""

    replica: Annotated[int, Meta(ge=0)]
    epoch: Annotated[int, Meta(ge=0, le=EPOCH_MAX)]


class Recovery:
    """Which USIG a replica starts with, whether it withholds, and when it stops."""

    def __init__(self, minbft: Minbft) -> None:
        self.minbft = minbft
        self.lost = False  # inert: the USIG state may be lost, no admission yet
        self.lost_epoch = 0
        self.recovering = False
        self.admission: UsigAdmission | None = None  # of the epoch in use
        self.reported: dict[int, int] = {}  # peer -> ``executed`` of its first fresh STATUS
        self.target_seq: int | None = None

    # -- start -------------------------------------------------------------------------

    def configured_admission(self) -> UsigAdmission | None:
        """The operator's admission handed to this node, if valid and its own."""
        minbft = self.minbft
        admission = minbft.context.usig_admission
        if admission is None:
            return None
        if not isinstance(admission, UsigAdmission) or not valid_admission(admission) \
                or admission.replica != minbft.id \
                or not minbft.scheme.check_admission(admission, minbft.group):
            minbft.count("minbft_usig_admission_invalid")
            return None
        return admission

    def open_usig(self) -> Usig | None:
        """The USIG to start with (None: inert, see the module docstring). Called
        in the start step, before anything is sent."""
        minbft = self.minbft
        context = minbft.context
        store = ContextUsigStore(context.load, context.persist)
        stored = store.load()
        admission = self.configured_admission()
        lost = context.load(USIG_LOST_KEY)
        used = max(-1 if stored is None else stored[0], -1 if lost is None else int(lost))
        if context.node.storage_damaged:
            # The usig record may have gone back, and with it the knowledge of
            # which admission was used already: only a later one will do.
            used = max(used, 0, -1 if admission is None else admission.epoch)
            self.go_inert(used)
            return None
        if admission is not None and admission.epoch > used:
            return self.new_epoch(store, admission)
        if lost is not None:
            self.go_inert(used)
            return None
        if admission is not None and stored is not None and admission.epoch == stored[0]:
            self.admission = admission
        if context.load(RECOVERING_KEY) is not None:
            self.recovering = True  # a restart before it recovered
        return minbft.usig_type.open(minbft.scheme, minbft.id, store, minbft.fresh_epoch,
                                     minbft.group)

    def go_inert(self, epoch: int) -> None:
        minbft = self.minbft
        self.lost, self.lost_epoch = True, epoch
        minbft.context.persist(USIG_LOST_KEY, epoch)
        minbft.count("minbft_usig_lost")

    def new_epoch(self, store: ContextUsigStore, admission: UsigAdmission) -> Usig:
        """Start the admitted USIG: withhold first (durably), then forget what
        the old epoch made, then the new counter; each prefix restarts."""
        minbft = self.minbft
        context = minbft.context
        context.persist(RECOVERING_KEY, admission.epoch)
        for prefix in EPOCH_RECORD_PREFIXES:
            for name in list(context.stored_names(prefix)):
                if name[len(prefix):].isdigit():
                    context.erase(name)
        for name in EPOCH_RECORDS:
            context.erase(name)
        store.save(admission.epoch, 0, b"")
        context.erase(USIG_LOST_KEY)
        self.recovering = True
        self.admission = admission
        minbft.count("minbft_usig_new_epoch")
        return minbft.usig_type(minbft.scheme, UsigId(minbft.id, admission.epoch, minbft.group),
                                store, 0)

    def on_start(self) -> None:
        """Tell the host (and the checkers) what this start found."""
        minbft = self.minbft
        if self.lost:
            minbft.context.output(UsigLost(minbft.id, self.lost_epoch))
        if self.lost or self.recovering:
            minbft.context.output(VotesWithheld(minbft.id, True))

    # -- withholding -----------------------------------------------------------------------

    @property
    def withholding(self) -> bool:
        return self.recovering or self.lost

    def on_status(self, source: int, status: Status) -> None:
        """A peer's STATUS: its ``executed`` counts once it took our new epoch."""
        minbft = self.minbft
        if not self.recovering or self.target_seq is not None or source in self.reported:
            return
        epochs = status.epochs
        usig = minbft.usig
        if usig is None or len(epochs) != minbft.n or epochs[minbft.id] != usig.id().epoch:
            return
        self.reported[source] = status.executed
        self.maybe_recovered()

    def target(self) -> int | None:
        minbft = self.minbft
        if self.target_seq is None and len(self.reported) >= minbft.n - 1:
            interval = minbft.params.checkpoint_interval
            highest = max(self.reported.values())
            self.target_seq = -(-highest // interval) * interval + minbft.params.log_size
            self.reported.clear()
            minbft.count("minbft_recovery_target_set")
        return self.target_seq

    def maybe_recovered(self) -> None:
        """Called when the stable checkpoint moves or a fresh STATUS arrives."""
        minbft = self.minbft
        if not self.recovering:
            return
        target = self.target()
        if target is None or minbft.stable_seq < target:
            return
        self.recovering = False
        self.target_seq = None
        minbft.context.erase(RECOVERING_KEY)
        minbft.count("minbft_recovered_usig")
        minbft.context.output(VotesWithheld(minbft.id, False))
        minbft.on_recovered()

    def withheld(self, what: str) -> bool:
        """Whether to withhold a ``what`` (counted when so)."""
        if self.withholding:
            self.minbft.count(f"minbft_withheld_{what}")
            return True
        return False
