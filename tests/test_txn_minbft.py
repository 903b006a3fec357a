"""MinBFT participant groups for transactions: one USIG per (node, group) (ADR 0031).

A node of ``txn-minbft`` hosts a MinBFT replica of every group, each with its
own USIG counter in its group's storage slice. A UI covering only ``(replica,
epoch, counter, digest)`` would let a Byzantine node certify two messages of one
group under one counter value (one from each group's counter): the
equivocation the USIG exists to prevent. Each group's USIG names its group in
what it certifies, and each group checks UIs (and admissions of a new epoch)
for its own group. The unit tests show a UI or an admission of group A refused
in group B for every scheme; the simulations show a Byzantine node presenting
its group-0 USIG's UIs in group 1 refused and counted, and the variant whose
USIGs name no group (``txn-minbft-group-unbound``) taking every one of them.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import struct
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from msgspec.structs import replace

from replicaio.core.codec import Codec
from replicaio.core.stream import GroupDatagram
from replicaio.protocols.minbft.messages import certified_bytes
from replicaio.protocols.minbft.usig import (
    UI,
    ContextUsigStore,
    Ed25519KeyedUsigScheme,
    Ed25519UsigScheme,
    HmacUsigScheme,
    Usig,
    UsigId,
    UsigScheme,
    message_digest,
    sign_admission,
    simulation_scheme,
    verify_attestation,
    verify_ui,
)
from replicaio.sim.adversary import RunView, Sends, Strategy
from replicaio.sim.simulator import Simulator
from replicaio.sim.txn_harness import TxnWorkload, txn_options

FAULTS = ("crash", "loss", "dup", "reorder")
SOURCE_GROUP, TARGET_GROUP = 0, 1


def memory_store() -> ContextUsigStore:
    """The shipped store of a USIG's counter, over a dict instead of a node's storage."""
    records: dict[str, Any] = {}
    return ContextUsigStore(records.get, records.__setitem__)


def schemes() -> list[tuple[UsigScheme, UsigScheme]]:
    """(the certifying replica 1's scheme, a verifier's) for every scheme."""
    private = bytes(range(32))
    public = Ed25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()
    hmac_scheme = HmacUsigScheme(b"a shared usig secret")
    ed = Ed25519UsigScheme(b"an ed25519 usig seed")
    keyed = Ed25519KeyedUsigScheme(1, private, {1: public})
    return [(hmac_scheme, hmac_scheme), (ed, ed), (keyed, keyed)]


@pytest.mark.parametrize("pair", schemes(), ids=["hmac", "ed25519", "ed25519-keyed"])
def test_a_ui_of_one_groups_usig_verifies_in_no_other_group(pair: Any) -> None:
    """Replica 1's USIGs of groups 0 and 1 give counter 1 to two different
    messages; each UI verifies for its own group only (and neither as the
    node's only MinBFT, group None), so no counter value serves twice in a group."""
    certifier, verifier = pair
    usigs = {group: Usig.open(certifier, 1, memory_store(), lambda: 0, group)
             for group in (None, 0, 1)}
    uis = {group: usig.create_ui(b"m" if group == 0 else b"n") for group, usig in usigs.items()}
    assert {ui.counter for ui in uis.values()} == {1}
    assert verify_ui(verifier, b"m", uis[0], UsigId(1, 0, 0))
    assert verify_ui(verifier, b"n", uis[1], UsigId(1, 0, 1))
    assert not verify_ui(verifier, b"m", uis[0], UsigId(1, 0, 1))  # group 0's, in group 1
    assert not verify_ui(verifier, b"m", uis[0], UsigId(1, 0, None))
    assert not verify_ui(verifier, b"n", uis[None], UsigId(1, 0, 0))
    assert verify_ui(verifier, b"n", uis[None], UsigId(1, 0))
    # Attestations are bound to the group too.
    attestation = usigs[0].attest()
    assert attestation is not None
    assert verify_attestation(verifier, attestation, UsigId(1, 0, 0))
    assert not verify_attestation(verifier, attestation, UsigId(1, 0, 1))
    assert not verify_attestation(verifier, attestation, UsigId(1, 0))
    # Junk groups never verify (and never raise).
    forged = UI(0, 1, uis[0].certificate)
    for junk in (-1, 1 << 32, "0", 0.0):
        assert not verify_ui(verifier, b"m", forged, UsigId(1, 0, junk))  # type: ignore[arg-type]


def test_the_single_group_bytes_are_unchanged() -> None:
    """A node's only MinBFT (group None) certifies exactly as before groups were
    bound (ADR 0013's bytes), so single-group runs keep their event-log hashes."""
    scheme = simulation_scheme()
    usig = Usig.open(scheme, 2, memory_store(), lambda: 0)
    ui = usig.create_ui(b"hello")
    key = hmac.digest(b"replicaio simulation usig secret v1", b"replicaio usig v1 hmac",
                      hashlib.sha256)
    expected = hmac.digest(key, b"replicaio usig v1" + struct.pack(">QQQ", 2, 0, 1)
                           + message_digest(b"hello"), hashlib.sha256)
    assert ui.certificate == expected


def test_an_admission_opens_an_epoch_in_its_own_group_only() -> None:
    """ADR 0026's admission, per group: the operator admits epoch e of replica r
    in group g; the same certificate admits nothing in another group."""
    hmac_scheme = HmacUsigScheme(b"a shared usig secret")
    admission = hmac_scheme.admit(1, 3, group=2)
    assert hmac_scheme.check_admission(admission, 2)
    assert not hmac_scheme.check_admission(admission, 1)
    assert not hmac_scheme.check_admission(admission)
    assert not hmac_scheme.check_admission(hmac_scheme.admit(1, 3), 2)
    assert not hmac_scheme.check_admission(admission, -1)
    operator = bytes(range(1, 33))
    operator_public = Ed25519PrivateKey.from_private_bytes(operator).public_key()
    node_key = bytes(range(32))
    public = Ed25519PrivateKey.from_private_bytes(node_key).public_key().public_bytes_raw()
    keyed = Ed25519KeyedUsigScheme(1, node_key, {1: public},
                                   operator_public.public_bytes_raw())
    signed = sign_admission(operator, 1, 3, group=0)
    assert keyed.check_admission(signed, 0)
    assert not keyed.check_admission(signed, 1)
    assert not keyed.check_admission(signed)
    assert keyed.check_admission(sign_admission(operator, 1, 3))


class OtherGroupsUis(Strategy):
    """A Byzantine node presents, in group ``TARGET_GROUP``, the UIs its group
    ``SOURCE_GROUP`` USIG gives for the same counter values and messages: every
    UI-certified message it sends in the target group is certified again under
    the source group's USIG identity (as the node's own source-group USIG would
    certify it at that counter). Everything else passes as it is."""

    def __init__(self, node: int, n: int, rng: random.Random) -> None:
        super().__init__(node, n, rng)
        self.codec = Codec()
        self.scheme = simulation_scheme()
        self.view: RunView | None = None
        self.replaced = 0

    def attack(self, view: RunView) -> Sends:
        self.view = view
        return []

    def source_identity(self) -> UsigId | None:
        core = None if self.view is None else self.view.cores[self.node]
        groups = getattr(getattr(core, "protocol", None), "groups", None)
        if groups is None:
            return None
        usig = getattr(groups.replicas[SOURCE_GROUP].ordering, "usig", None)
        return None if usig is None else usig.identity

    def rewrite(self, destination: int, message: Any) -> Sends:
        if type(message) is not GroupDatagram or message.group != TARGET_GROUP:
            return [(destination, message)]
        body = self.codec.decode(message.body)
        ui = getattr(body, "ui", None)
        identity = self.source_identity()
        if type(ui) is not UI or identity is None or identity.epoch != ui.epoch:
            return [(destination, message)]
        digest = message_digest(certified_bytes(body))
        certificate = self.scheme.certify(identity, ui.counter, digest)
        self.replaced += 1
        forged = replace(body, ui=replace(ui, certificate=certificate))  # type: ignore[type-var]
        return [(destination, GroupDatagram(TARGET_GROUP, self.codec.encode(forged)))]


def cross_group_run(protocol: str, seed: int) -> tuple[Any, OtherGroupsUis]:
    options = txn_options(seed, 3, FAULTS, TxnWorkload(), byzantine=1, adversary=("silent",))
    node = options.byzantine[0]
    strategy = OtherGroupsUis(node, 3, random.Random(seed))
    result = Simulator(f"{protocol}:groups=3", options, f=1,
                       strategies={node: strategy}).run()
    return result, strategy


def test_a_ui_of_another_group_is_refused_and_counted() -> None:
    """Every UI the Byzantine node made under its group-0 USIG and sent in group
    1 is refused (``minbft_rejected_stream_bad_ui``); the cluster holds every
    property (the node is one of the f faulty in group 1) and commits."""
    result, strategy = cross_group_run("txn-minbft", 1)
    assert result.ok, result.violations
    assert strategy.replaced > 0
    assert result.counters.get("minbft_rejected_stream_bad_ui", 0) > 0
    assert result.stats["outcomes"].get("committed", 0) > 0


def test_usigs_that_name_no_group_take_another_groups_ui() -> None:
    """The variant (the code before ADR 0031): the node's USIGs of groups 0 and
    1 certify as one identity, so the same UIs pass in group 1: none refused.
    With two counters under one identity, the node could give two messages of
    group 1 the same counter value, one from each counter."""
    result, strategy = cross_group_run("txn-minbft-group-unbound", 1)
    assert strategy.replaced > 0
    assert result.counters.get("minbft_rejected_stream_bad_ui", 0) == 0


SWARM_FAULTS = ("crash", "partition", "loss", "dup", "reorder")


def swarm_run(seed: int) -> Any:
    """``replicaio sim txn-minbft:groups=3 --nodes 3 --byzantine 1 --faults
    crash,partition,loss,dup,reorder --seed SEED``, as the swarm draws it."""
    options = txn_options(seed, 3, SWARM_FAULTS, TxnWorkload(), byzantine=1,
                          protocol="txn-minbft")
    return Simulator("txn-minbft:groups=3", options, f=1).run()


def test_a_primary_that_cannot_execute_its_own_prepares_gets_its_view_ended() -> None:
    """Found by the first txn-minbft swarm (10 of 300 seeds, this one first):
    group 2's primary restarted and resumed its backups' streams, so their
    COMMITs no longer counted at it and its own PREPAREs never executed there;
    its request to end the view was one, not f+1, and its backups had nothing
    pending (a node's in-node calls go to its own replica), so the group's
    ticks stopped and a prepared transaction held its lock for good
    (locks_released). The backups now join their primary's request."""
    result = swarm_run(33)
    assert result.ok, result.violations
    assert result.counters.get("minbft_primary_gave_up", 0) > 0


def test_a_lying_driver_on_a_vote_prepared_before_does_not_raise() -> None:
    """Swarm seed 51: the Byzantine node's lying driver read the values of a
    vote prepared before under the attempt's id (fewer than its plan reads)
    and raised StopIteration inside its coroutine."""
    result = swarm_run(51)
    assert result.ok, result.violations


def test_a_commit_applied_first_by_the_resolver_gives_no_claim_as_replies() -> None:
    """``txn-kv-minbft`` swarm seed 88: the resolver applied a commit before its
    driver's own ``commit`` arrived, which then answered ``[committed, claim]``;
    the driver took the claim's items for the commands' replies and answered
    its client ``'claim'`` as a reply (txn_kv_reply). Now: ``replies_lost``
    (fixed on main at the same time, for every ordering)."""
    options = txn_options(88, 3, SWARM_FAULTS, TxnWorkload(), byzantine=1,
                          protocol="txn-kv-minbft")
    result = Simulator("txn-kv-minbft:groups=3", options, f=1).run()
    assert result.ok, result.violations


def forced_run(protocol: str, seed: int, adversary: tuple[str, ...] | None) -> Any:
    options = txn_options(seed, 3, SWARM_FAULTS, TxnWorkload(), byzantine=1,
                          adversary=adversary, protocol=protocol)
    return options, Simulator(f"{protocol}:groups=3", options, f=1).run()


def test_minbft_behaviours_act_in_every_group_of_a_node() -> None:
    """MinBFT's own behaviours act inside each group a faulty node hosts
    (``PerGroup``: its group's MinBFT replica and USIG, its group's stream
    messages). ``minbft_borrowed_counter`` certifies a PREPARE's lie at the
    PREPARE's own counter value with another group's USIG: every group checks
    UIs for its own group, so the lies are refused and the run holds; the
    variant whose USIGs name no group takes them and two correct replicas
    execute different batches at one number."""
    _, result = forced_run("txn-minbft", 2, ("minbft_borrowed_counter",))
    assert result.ok, result.violations
    assert result.counters.get("minbft_rejected_stream_bad_ui", 0) > 0
    _, broken = forced_run("txn-minbft-group-unbound", 2, ("minbft_borrowed_counter",))
    assert {violation["property"] for violation in broken.violations} == {"agreement"}


def test_the_swarm_finds_usigs_that_name_no_group() -> None:
    """``replicaio swarm txn-minbft-group-unbound --groups 3 --nodes 3 --byzantine 1
    --f 1 --faults crash,partition,loss,dup,reorder``: seed 39 draws
    ``replay+delay+minbft_selective+minbft_borrowed_counter+txn_lying_driver``
    (no generic forging) and breaks agreement; the correct code holds on it."""
    options, broken = forced_run("txn-minbft-group-unbound", 39, None)
    assert "minbft_borrowed_counter" in options.behaviours[0].split("+")
    assert "agreement" in {violation["property"] for violation in broken.violations}
    _, result = forced_run("txn-minbft", 39, None)
    assert result.ok, result.violations


def test_the_operator_admits_a_lost_usig_per_group() -> None:
    """``replicaio sim txn-minbft:groups=3 --nodes 3 --faults
    crash,partition,loss,dup,reorder,disk --seed 2``: a damaged disk makes each
    of the node's MinBFT replicas inert (its group's USIG may have gone back);
    each reports it in its group's output, and the simulated operator admits
    that group's next epoch only (an admission naming the group, ADR 0031), as
    ``kv admit-usig --group`` does live. The groups start their new epochs,
    recover, and the run holds every property."""
    options = txn_options(2, 3, (*SWARM_FAULTS, "disk"), TxnWorkload(), protocol="txn-minbft")
    simulator = Simulator("txn-minbft:groups=3", options, f=1)
    result = simulator.run()
    assert result.ok, result.violations
    assert result.stats["disk_faults"] > 0
    admitted = simulator.operator.epochs
    assert admitted and all(group is not None for _, group in admitted)
    assert result.stats["operator_usig_admissions"] >= len(admitted)
    assert result.counters.get("minbft_usig_new_epoch", 0) > 0
    assert result.counters.get("minbft_recovered_usig", 0) > 0
    assert result.counters.get("minbft_usig_admission_invalid", 0) == 0
