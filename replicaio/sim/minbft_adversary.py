"""MinBFT's own Byzantine behaviours, registered with the adversary (docs/adversary.md).

A Byzantine MinBFT replica controls everything but its USIG (the hybrid fault
model, docs/minbft.md). These behaviours attack where MinBFT is subtle, and
they get UIs the only way the model allows: by asking the replica's own USIG
(:class:`UsigOracle`), which gives each request the next counter value and
writes it durably first (``RunView.trusted_write``: the same durability as
the replica's own requests, so a crash of the replica never lets it reuse a
value). A message changed without asking keeps a UI made for other bytes,
and every receiver drops it.

* ``minbft_equivocate``: as primary, sends half of the backups another batch
  at the same number, under a fresh UI (the USIG forces it onto another
  counter: the honest PREPARE leaves a gap they wait at, and the lie, once
  they take it in order, breaks the numbering: the view ends);
* ``minbft_withhold``: drops each UI message to one victim with probability
  1/2 (re-sent ones too): gaps the victim holds and asks for again;
* ``minbft_selective``: sends its UI messages to half of the peers only
  (re-sends included): the others are left behind, and resume or change views;
* ``minbft_forge_log``: VIEW-CHANGEs whose log drops its last entries (and
  NEW-VIEW-COMMITs and COMMITs alike), re-certified under a fresh UI: the
  counters are no longer contiguous and receivers refuse them;
* ``minbft_hide_before_anchor``: runs a core whose VIEW-CHANGE logs start
  right after its anchor CHECKPOINT, leaving out its commitments to numbers
  above the anchor that it certified before it (docs/minbft.md, *The
  pre-anchor hiding gap*): the counters stay contiguous, but its USIG's
  attestation at the anchor (``decided_from``) shows a certified
  NEW-VIEW-COMMIT hidden. Forcible by name only (weight 0);
* ``minbft_prepare_unseen_view``: before each VIEW-CHANGE, as the primary of
  an earlier view that no correct replica started, certifies PREPAREs of that
  view for the numbers its log shows above its anchor, each with another of
  those batches: the log is contiguous and every entry verifies, but the
  view has no NEW-VIEW certificate, so correct replicas refuse the
  VIEW-CHANGE (without the certificate, the variant
  ``minbft-new-view-uncertified``, the lies outrank executed batches:
  docs/minbft.md, *The NEW-VIEW choice*). Forcible by name only (weight 0);
* ``minbft_second_new_view``: as the primary of a view it starts, keeps its
  NEW-VIEW from a backup whose VIEW-CHANGE it did not use, then certifies a
  second NEW-VIEW of the view from that backup's VIEW-CHANGE and its own, a
  fresh CHECKPOINT to ``Resume`` the backup's stream past the first one, and
  its certified NEW-VIEW-COMMIT of the second: the resumed stream cannot tell
  it from a first one, the backup commits, and with n = 3 the two headers are
  both certified and executed (an agreement violation, open: docs/minbft.md,
  *A second NEW-VIEW of a view*). Forcible by name only (weight 0);
* ``minbft_fresh_anchor``: before each VIEW-CHANGE, certifies a CHECKPOINT of
  its stable checkpoint again and anchors there with an empty log, hiding
  what it certified before (docs/minbft.md, *The pre-anchor hiding gap*):
  its USIG attests the anchor is not the first CHECKPOINT of that number, so
  correct replicas refuse it (the variant ``minbft-anchor-unattested`` breaks
  agreement). Forcible by name only (weight 0);
* ``minbft_decided_before_anchor``: certifies its first CHECKPOINT only after
  its first certified NEW-VIEW-COMMIT and logs from there, hiding that
  commitment; keeps its own NEW-VIEW from the backups it did not use and
  offers them a ``Resume`` past it: its USIG's ``decided_from`` refuses the
  VIEW-CHANGE (the variant ``minbft-log-from-anchor`` breaks agreement).
  Forcible by name only (weight 0);
* ``minbft_claim_unfollowable``: as soon as a view starts, asks for the next
  one, saying it cannot follow (``ReqViewChange.unfollowable``), so correct
  primaries step down once their view ran one timeout: a faulty backup can end
  views that often, never faster (docs/minbft.md, *A backup that cannot
  follow*). Forcible by name only (weight 0).
"""

from __future__ import annotations

import random
from typing import Any

from msgspec.structs import replace

from replicaio.assembly import (
    SERVICES,
    TRANSACTIONAL,
    minbft_byzantine_code,
    minbft_of,
    minbft_wire,
)
from replicaio.sim import adversary
from replicaio.sim.adversary import RunView, Sends, Strategy, per_group, register_behaviour

wire: Any = minbft_wire()
# MinBFT, its broken variants, and the transactional clusters of MinBFT groups
# (each behaviour acts in every group of the faulty node: ``PerGroup``).
TXN_MINBFT_FAMILY = tuple(name for name, spec in TRANSACTIONAL.items()
                          if spec.ordering == "minbft")
MINBFT_FAMILY = (
    *(name for name, spec in SERVICES.items() if spec.family == "minbft"), *TXN_MINBFT_FAMILY)
LIES_MAX = 256
# The Byzantine replica's own code (replicaio/testing/variants/minbft_byzantine.py).
BYZANTINE_CODE = minbft_byzantine_code()
HidingMinbft = BYZANTINE_CODE["HidingMinbft"]
UnseenViewChanges = BYZANTINE_CODE["UnseenViewChanges"]
SecondNewViewChanges = BYZANTINE_CODE["SecondNewViewChanges"]
FreshAnchorViewChanges = BYZANTINE_CODE["FreshAnchorViewChanges"]
LateAnchorMinbft = BYZANTINE_CODE["LateAnchorMinbft"]
SECOND_NEW_VIEW_SENDS = 30  # times the second NEW-VIEW's messages go to a victim
SECOND_NEW_VIEW_EVERY = 16  # ... one time per this many steps of the faulty replica


class UsigOracle:
    """A Byzantine replica's access to its own USIG: any message, the next
    counter value, durably first; never a chosen value, never a certificate
    for another replica."""

    def __init__(self, node: int, owner: Strategy | None = None) -> None:
        self.node = node
        self.owner = owner  # whose ``group`` names the USIG (None: the node's only one)

    def minbft(self, view: RunView) -> Any | None:
        core = view.cores[self.node]
        group = None if self.owner is None else self.owner.group
        return None if core is None else minbft_of(core.protocol, group)

    def certify(self, view: RunView | None, message: Any) -> Any | None:
        """``message`` with a fresh UI of this replica's USIG (None if the
        replica is down or has not started)."""
        if view is None or view.trusted_write is None:
            return None
        core = view.cores[self.node]
        minbft = self.minbft(view)
        if core is None or minbft is None or minbft.usig is None:
            return None
        usig = minbft.usig
        ui = usig.create_ui(wire.certified_bytes(message))
        epoch, counter, digest, new_view_max, marks = usig.saved_values()
        value = core.codec.encode_value((epoch, counter, digest, new_view_max, *marks))
        view.trusted_write(self.node, minbft.context.key("usig"), value)
        return replace(message, ui=ui)

    def attest(self, view: RunView | None) -> Any | None:
        """The USIG's attestation of where its counter stands now (it consumes
        no value and says only the truth: the highest view of a NEW-VIEW it
        certified)."""
        if view is None:
            return None
        minbft = self.minbft(view)
        if minbft is None or minbft.usig is None:
            return None
        return minbft.usig.attest()


class MinbftStrategy(Strategy):
    def __init__(self, node: int, n: int, rng: random.Random) -> None:
        super().__init__(node, n, rng)
        self.oracle = UsigOracle(node, self)
        self.view: RunView | None = None

    def minbft(self, view: RunView) -> Any | None:
        """The node's MinBFT replica this behaviour acts in (of its ``group``
        on a node hosting several)."""
        return self.oracle.minbft(view)

    def attack(self, view: RunView) -> Sends:
        self.view = view
        return []

    def attach_live(self, view: Any) -> None:
        """Live, the host's view stands in for the simulator's: the UIs come
        from this node's own USIG, its counter written durably before any
        message carrying one leaves."""
        self.view = view


class Equivocate(MinbftStrategy):
    """Another batch at the same number, under a fresh UI, for half the backups."""

    def __init__(self, node: int, n: int, rng: random.Random) -> None:
        super().__init__(node, n, rng)
        self.lied_to = adversary.half_the_others(node, n, rng)
        self.batches: list[bytes] = []
        self.lies: dict[tuple[int, int], Any] = {}  # (view, seq) -> the lie told

    def rewrite(self, destination: int, message: Any) -> Sends:
        if type(message) is not wire.Prepare or destination not in self.lied_to:
            return [(destination, message)]
        if message.batch and message.batch not in self.batches:
            self.batches = [*self.batches[-31:], message.batch]
        key = (message.view, message.seq)
        lie = self.lies.get(key)
        if lie is None:
            others = [batch for batch in self.batches if batch != message.batch]
            batch = self.rng.choice(others) if others else b""
            lie = self.certify_lie(message, replace(
                message, batch=batch, digest=wire.digest_of(batch), ui=wire.EMPTY_UI))
            if lie is None:
                return [(destination, message)]
            if len(self.lies) >= LIES_MAX:
                self.lies.clear()
            self.lies[key] = lie
        return [(destination, lie)]

    def certify_lie(self, honest: Any, lie: Any) -> Any | None:
        """``lie`` (the other batch) with a UI: the next value of its USIG."""
        return self.oracle.certify(self.view, lie)


class BorrowedCounter(Equivocate):
    """``minbft_equivocate`` on a node hosting several MinBFT groups, with the
    lie certified at the honest PREPARE's own counter value by the USIG of
    another group: that USIG's counter is raised (UIs for junk) to just below
    the value, then gives it to the lie. The node owns every USIG it hosts (the
    hybrid model lets it ask any of them for anything), so one counter value of
    a group goes to two messages unless every group checks UIs for its own group
    (ADR 0031; the variant ``txn-minbft-group-unbound`` does not). Acts in groups
    only."""

    def certify_lie(self, honest: Any, lie: Any) -> Any | None:
        view = self.view
        ui = honest.ui
        if view is None or view.trusted_write is None or self.group is None:
            return None
        core = view.cores[self.node]
        replicas = getattr(getattr(core, "protocol", None), "groups", None)
        count = len(getattr(replicas, "replicas", ()))
        lenders: list[tuple[int, int]] = []  # (its counter, a group whose USIG can lend)
        for group in range(count):
            minbft = None if core is None else minbft_of(core.protocol, group)
            usig = None if minbft is None else minbft.usig
            if (group != self.group and usig is not None and usig.identity.epoch == ui.epoch
                    and ui.counter - BORROW_GAP_MAX <= usig.counter < ui.counter):
                lenders.append((usig.counter, group))
        if core is None or not lenders:
            return None
        lender: Any = minbft_of(core.protocol, max(lenders)[1])
        usig = lender.usig
        while usig.counter < ui.counter - 1:
            usig.create_ui(BORROWED_JUNK)
        borrowed = usig.create_ui(wire.certified_bytes(lie))
        assert borrowed.counter == ui.counter
        epoch, counter, digest, new_view_max, marks = usig.saved_values()
        value = core.codec.encode_value((epoch, counter, digest, new_view_max, *marks))
        view.trusted_write(self.node, lender.context.key("usig"), value)
        return replace(lie, ui=borrowed)


BORROW_GAP_MAX = 4096  # counter values a borrowed USIG skips for one lie, at most
BORROWED_JUNK = b"replicaio adversary: a counter value spent"


def certified(message: Any) -> bool:
    return type(message) in wire.UI_TYPES


class Withhold(MinbftStrategy):
    def __init__(self, node: int, n: int, rng: random.Random) -> None:
        super().__init__(node, n, rng)
        self.victim = rng.choice([peer for peer in range(n) if peer != node])

    def rewrite(self, destination: int, message: Any) -> Sends:
        if destination == self.victim and certified(message) and self.rng.random() < 0.5:
            return []
        return [(destination, message)]


class Selective(MinbftStrategy):
    def __init__(self, node: int, n: int, rng: random.Random) -> None:
        super().__init__(node, n, rng)
        self.told = adversary.half_the_others(node, n, rng)

    def rewrite(self, destination: int, message: Any) -> Sends:
        if certified(message) and destination not in self.told:
            return []
        return [(destination, message)]


class ForgeLog(MinbftStrategy):
    """VIEW-CHANGEs that hide their newest entries, re-certified."""

    def __init__(self, node: int, n: int, rng: random.Random) -> None:
        super().__init__(node, n, rng)
        self.forged: dict[int, Any] = {}  # view -> the forged VIEW-CHANGE

    def rewrite(self, destination: int, message: Any) -> Sends:
        if type(message) is not wire.ViewChange or not message.log:
            return [(destination, message)]
        forged = self.forged.get(message.view)
        if forged is None:
            hidden = 1 + self.rng.randrange(len(message.log))
            forged = self.oracle.certify(self.view, replace(
                message, log=message.log[:-hidden], ui=wire.EMPTY_UI))
            if forged is None:
                return [(destination, message)]
            if len(self.forged) >= LIES_MAX:
                self.forged.clear()
            self.forged[message.view] = forged
        return [(destination, forged)]


class HideBeforeAnchor(MinbftStrategy):
    """Swaps its core's code for ``HidingMinbft`` (a Byzantine replica
    controls everything but its USIG), again after every restart."""

    def attack(self, view: RunView) -> Sends:
        self.view = view
        minbft = self.minbft(view)
        if minbft is not None and not isinstance(minbft, HidingMinbft):
            hiding = HIDING_TYPES.get(type(minbft))
            if hiding is None:
                hiding = type("Hiding" + type(minbft).__name__, (HidingMinbft, type(minbft)), {})
                HIDING_TYPES[type(minbft)] = hiding
            minbft.__class__ = hiding
        return []


HIDING_TYPES: dict[type, type] = {}  # a core's Minbft type -> the hiding one


class SwapsViewChanges(MinbftStrategy):
    """Swaps its core's view-change code for ``view_changes_type`` (a subclass
    of MinBFT's ``ViewChanges`` written to lie) once its replica exists."""

    view_changes_type: type

    def attack(self, view: RunView) -> Sends:
        self.view = view
        minbft = self.minbft(view)
        if minbft is not None and not isinstance(minbft.view_changes, self.view_changes_type):
            minbft.view_changes.__class__ = self.view_changes_type
        return []


class PrepareUnseenView(SwapsViewChanges):
    """Swaps its core's view-change code for ``UnseenViewChanges`` (lies in
    VIEW-CHANGE logs about a view it never starts)."""

    view_changes_type = UnseenViewChanges


class SecondNewView(MinbftStrategy):
    """As the primary of a view it starts, keeps its NEW-VIEW from the backups
    whose VIEW-CHANGE it did not use (re-sends too); once such a victim's
    VIEW-CHANGE arrives, certifies (its own USIG, fresh counters) another
    CHECKPOINT of the stable checkpoint it had when the view change began,
    the NEW-VIEW its own and the victim's VIEW-CHANGEs give, and its certified
    NEW-VIEW-COMMIT of that one, and sends the victim a ``Resume`` to that
    CHECKPOINT (skipping the first NEW-VIEW), the second NEW-VIEW and the
    commitment. Swaps its core's view-change code for ``SecondNewViewChanges``."""

    def __init__(self, node: int, n: int, rng: random.Random) -> None:
        super().__init__(node, n, rng)
        self.victims: dict[int, frozenset[int]] = {}  # view -> kept from its NEW-VIEW
        self.told: dict[tuple[int, int], list[Any]] = {}  # (view, victim) -> the lie
        self.sent: dict[tuple[int, int], int] = {}
        self.steps = 0

    def rewrite(self, destination: int, message: Any) -> Sends:
        if type(message) is wire.NewView and message.header.replica == self.node:
            view = message.header.view
            victims = self.victims.get(view)
            if victims is None:
                used = {vc.replica for vc in message.view_changes}
                victims = frozenset(peer for peer in range(self.n)
                                    if peer != self.node and peer not in used)
                if len(self.victims) >= LIES_MAX:
                    self.victims.clear()
                self.victims[view] = victims
            if destination in victims:
                return []
        return [(destination, message)]

    def attack(self, view: RunView) -> Sends:
        self.view = view
        minbft = self.minbft(view)
        if minbft is None or minbft.usig is None:
            return []
        changes = minbft.view_changes
        if not isinstance(changes, SecondNewViewChanges):
            changes.__class__ = SecondNewViewChanges
            return []
        self.steps += 1
        sends: Sends = []
        for victim in sorted(self.victims.get(minbft.view, ())):
            key = (minbft.view, victim)
            told = self.told.get(key)
            if told is None:
                told = self.lie(view, changes, victim)
                if told is None:
                    continue
                if len(self.told) >= LIES_MAX:
                    self.told.clear()
                self.told[key] = told
            sent = self.sent.get(key, 0)
            if sent < SECOND_NEW_VIEW_SENDS and (sent == 0 or
                                                 self.steps % SECOND_NEW_VIEW_EVERY == 0):
                self.sent[key] = sent + 1
                sends.extend((victim, message) for message in told)
        return sends

    def lie(self, view: RunView, changes: Any, victim: int) -> list[Any] | None:
        anchor = getattr(changes, "start_anchor", None)
        unsigned = changes.second_new_view(victim)
        if anchor is None or unsigned is None:
            return None
        checkpoint, proof = anchor
        fresh = self.oracle.certify(view, replace(checkpoint, ui=wire.EMPTY_UI))
        attestation = None if fresh is None else self.oracle.attest(view)
        second = None if fresh is None else self.oracle.certify(view, unsigned)
        commit = None if second is None else self.oracle.certify(view, wire.NewViewCommit(
            second.header, second.ui, self.node, wire.EMPTY_UI, True))
        if fresh is None or second is None or commit is None:
            return None
        return [wire.Resume(fresh, proof, attestation), second, commit]


class FreshAnchor(SwapsViewChanges):
    """Swaps its core's view-change code for ``FreshAnchorViewChanges``: each
    VIEW-CHANGE anchored at a CHECKPOINT of its stable checkpoint certified
    again just before it, hiding everything it certified earlier."""

    view_changes_type = FreshAnchorViewChanges


class DecidedBeforeAnchor(MinbftStrategy):
    """Runs ``LateAnchorMinbft`` (with its checkpoint, normal-case and
    view-change parts): its first CHECKPOINT comes after its first certified
    NEW-VIEW-COMMIT and anchors VIEW-CHANGEs whose logs start after it. As the
    primary of a view it starts, keeps its NEW-VIEW from the backups whose
    VIEW-CHANGE it did not use, and once it has its anchor offers them a
    ``Resume`` there (past the NEW-VIEW their streams wait at)."""

    def __init__(self, node: int, n: int, rng: random.Random) -> None:
        super().__init__(node, n, rng)
        self.victims: set[int] = set()
        self.steps = 0

    def rewrite(self, destination: int, message: Any) -> Sends:
        if type(message) is wire.NewView and message.header.replica == self.node:
            used = {vc.replica for vc in message.view_changes}
            if destination not in used:
                self.victims.add(destination)
                return []
        return [(destination, message)]

    def attack(self, view: RunView) -> Sends:
        self.view = view
        minbft = self.minbft(view)
        if minbft is None or minbft.usig is None:
            return []
        if not isinstance(minbft, LateAnchorMinbft):
            late = LATE_TYPES.get(type(minbft))
            if late is None:
                late = type("Late" + type(minbft).__name__, (LateAnchorMinbft, type(minbft)), {})
                LATE_TYPES[type(minbft)] = late
            minbft.__class__ = late
            minbft.checkpoints.__class__ = BYZANTINE_CODE["LateCheckpoints"]
            minbft.normal.__class__ = BYZANTINE_CODE["SilentPrimary"]
            changes = type(minbft.view_changes)
            joining = LATE_TYPES.get(changes)
            if joining is None:
                joining = type("Joining" + changes.__name__,
                               (BYZANTINE_CODE["JoiningViewChanges"], changes), {})
                LATE_TYPES[changes] = joining
            minbft.view_changes.__class__ = joining
            return []
        self.steps += 1
        anchor = minbft.own_checkpoint
        if not minbft.decided or anchor is None or self.steps % SECOND_NEW_VIEW_EVERY:
            return []
        resume = wire.Resume(anchor, minbft.anchor_proof, minbft.anchor_attestation)
        return [(victim, resume) for victim in sorted(self.victims)]


LATE_TYPES: dict[type, type] = {}  # a core's Minbft type -> the late-anchor one


class ClaimUnfollowable(MinbftStrategy):
    """Every view it sees start, a signed REQ-VIEW-CHANGE for the next one,
    flagged unfollowable, to every peer."""

    def __init__(self, node: int, n: int, rng: random.Random) -> None:
        super().__init__(node, n, rng)
        self.claimed = -1  # the last view it claimed it cannot follow

    def attack(self, view: RunView) -> Sends:
        self.view = view
        minbft = self.minbft(view)
        if minbft is None or minbft.usig is None or not minbft.active \
                or minbft.view <= self.claimed:
            return []
        self.claimed = minbft.view
        unsigned = wire.ReqViewChange(minbft.view + 1, self.node, b"", True)
        signed = replace(unsigned, signature=minbft.sign(wire.signed_request(unsigned)))
        return [(peer, signed) for peer in range(self.n) if peer != self.node]


for _name, _factory, _summary, _weight in (
    ("minbft_equivocate", Equivocate,
     "as primary, another batch at one number for half, under a fresh UI", 0.3),
    ("minbft_withhold", Withhold, "drop half the UI messages to one victim", 0.2),
    ("minbft_selective", Selective, "UI messages to half of the peers only", 0.2),
    ("minbft_forge_log", ForgeLog, "VIEW-CHANGE logs with entries hidden, re-certified", 0.3),
    ("minbft_hide_before_anchor", HideBeforeAnchor,
     "VIEW-CHANGE logs from the anchor on, hiding earlier commitments above it", 0.0),
    ("minbft_prepare_unseen_view", PrepareUnseenView,
     "PREPAREs of an earlier view nobody started, in its VIEW-CHANGE logs", 0.0),
    ("minbft_second_new_view", SecondNewView,
     "as a new primary, a second NEW-VIEW of its view for a backup it resumes past the first",
     0.0),
    ("minbft_fresh_anchor", FreshAnchor,
     "VIEW-CHANGEs anchored at a fresh CHECKPOINT of an old number, hiding what came before",
     0.0),
    ("minbft_decided_before_anchor", DecidedBeforeAnchor,
     "its first CHECKPOINT after a certified NEW-VIEW-COMMIT, VIEW-CHANGE logs from there",
     0.0),
    ("minbft_claim_unfollowable", ClaimUnfollowable,
     "asks for the next view as soon as one starts, claiming it cannot follow", 0.0),
):
    register_behaviour(_name, per_group(_factory), _summary, protocols=MINBFT_FAMILY,
                       weight=_weight)
# Drawn for transactional clusters of MinBFT groups only (it needs two groups).
register_behaviour(
    "minbft_borrowed_counter", per_group(BorrowedCounter),
    "as a group's primary, another batch at one number for half, its UI at the same "
    "counter value from another group's USIG", protocols=TXN_MINBFT_FAMILY, weight=0.3)
