"""The USIG's contract (replicaio/protocols/minbft/usig.py), for both schemes:
unique, monotonic, sequential from 1, unforgeable, and durable: a counter is
on disk before its UI is released, so no crash (a cut step keeps a prefix of
its writes and releases none of its messages) lets it issue a value twice."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from msgspec.structs import replace

from replicaio.core.errors import ConfigError
from replicaio.core.signing import SIMULATION_SECRET
from replicaio.protocols.minbft.usig import (
    ATTESTATION_LABEL,
    CHECKPOINT_LABEL,
    DECIDED_LABEL,
    NEW_VIEW_LABEL,
    UI,
    USIG_SIMULATION_SECRET,
    Ed25519KeyedUsigScheme,
    Ed25519UsigScheme,
    HmacUsigScheme,
    Usig,
    UsigId,
    UsigScheme,
    UsigStore,
    message_digest,
    simulation_scheme,
    verify_attestation,
    verify_ui,
    verify_ui_digest,
)
from replicaio.runtime.crypto import generate_ed25519_key
from replicaio.storage.memory import MemoryStorage

SCHEMES: dict[str, Callable[[], UsigScheme]] = {
    "hmac": lambda: HmacUsigScheme(b"s" * 32),
    "ed25519": lambda: Ed25519UsigScheme(b"s" * 32),
    "simulation": simulation_scheme,
}


class DictStore:
    def __init__(self) -> None:
        self.value: tuple[int, int, bytes] | None = None
        self.saves = 0

    def load(self) -> tuple[int, int, bytes] | None:
        return self.value

    def load_new_view_max(self) -> int:
        return getattr(self, "new_view_max", 0)

    def load_marks(self) -> tuple[int, ...]:
        marks: tuple[int, ...] = getattr(self, "marks", ())
        return marks

    def save(self, epoch: int, counter: int, digest: bytes, new_view_max: int = 0,
             marks: tuple[int, ...] = ()) -> None:
        self.value = (epoch, counter, digest)
        self.new_view_max = new_view_max
        self.marks = marks
        self.saves += 1


def new_usig(scheme: UsigScheme, replica: int = 0, store: UsigStore | None = None) -> Usig:
    return Usig.open(scheme, replica, store or DictStore(), lambda: 0)


@pytest.fixture(params=sorted(SCHEMES))
def scheme(request: pytest.FixtureRequest) -> UsigScheme:
    return SCHEMES[request.param]()


def test_counters_are_sequential_from_one_and_verify(scheme: UsigScheme) -> None:
    usig = new_usig(scheme, replica=2)
    uis = [usig.create_ui(f"m{i}".encode()) for i in range(20)]
    assert [ui.counter for ui in uis] == list(range(1, 21))
    for i, ui in enumerate(uis):
        assert usig.verify_ui(f"m{i}".encode(), ui, usig.id())
    assert usig.id() == UsigId(2, 0)


def new_view_bytes(view: int) -> bytes:
    return NEW_VIEW_LABEL + struct.pack(">Q", view) + b"header"


def test_the_attestation_states_the_highest_new_view_view_and_survives_a_restart(
    scheme: UsigScheme,
) -> None:
    store = DictStore()
    usig = new_usig(scheme, replica=1, store=store)
    assert usig.attest() is None  # no value given out yet
    usig.create_ui(b"minbft\x00a")
    first = usig.attest()
    assert first is not None and (first.counter, first.new_view_max) == (1, 0)
    usig.create_ui(new_view_bytes(7))
    usig.create_ui(new_view_bytes(4))  # a lower view later: the highest stays
    usig.create_ui(b"minbft\x00b")
    attestation = usig.attest()
    assert attestation is not None
    assert (attestation.counter, attestation.new_view_max) == (4, 7)
    assert verify_attestation(scheme, attestation, usig.id())
    assert usig.counter == 4  # attesting takes no value
    for forged in (replace(attestation, new_view_max=3), replace(attestation, counter=3),
                   replace(attestation, epoch=1)):
        assert not verify_attestation(scheme, forged, usig.id())
    assert not verify_attestation(scheme, attestation, UsigId(0, 0))
    reopened = Usig.open(scheme, 1, store, lambda: 0)
    again = reopened.attest()
    assert again is not None and again.new_view_max == 7


def checkpoint_bytes(seq: int) -> bytes:
    return CHECKPOINT_LABEL + struct.pack(">Q", seq) + b"checkpoint"


def decided_bytes(last: int) -> bytes:
    return DECIDED_LABEL + struct.pack(">Q", last) + b"new-view-commit"


def test_the_attestation_marks_the_first_checkpoint_of_a_number_and_open_decisions(
    scheme: UsigScheme,
) -> None:
    """``checkpoint_at``: the counter of the CHECKPOINT that raised the highest
    number (one of an old number certified again is not it); ``decided_from``:
    the first certified NEW-VIEW-COMMIT deciding above every CHECKPOINT before
    it, until a CHECKPOINT reaches every number decided (docs/minbft.md, *The
    pre-anchor hiding gap*)."""
    store = DictStore()
    usig = new_usig(scheme, replica=1, store=store)

    def marks() -> tuple[int, int]:
        attestation = usig.attest()
        assert attestation is not None
        assert verify_attestation(scheme, attestation, usig.id())
        return attestation.checkpoint_at, attestation.decided_from

    usig.create_ui(checkpoint_bytes(16))  # 1
    assert marks() == (1, 0)
    usig.create_ui(decided_bytes(40))  # 2: decides above 16
    usig.create_ui(checkpoint_bytes(32))  # 3: first of 32, 40 still open
    assert marks() == (3, 2)
    usig.create_ui(decided_bytes(36))  # 4: the first open one stays
    usig.create_ui(checkpoint_bytes(32))  # 5: 32 again: not the first
    assert marks() == (3, 2)
    usig.create_ui(checkpoint_bytes(48))  # 6: covers 40
    assert marks() == (6, 0)
    usig.create_ui(decided_bytes(48))  # 7: decides nothing above 48
    assert marks() == (6, 0)
    usig.create_ui(decided_bytes(60))  # 8
    attestation = usig.attest()
    assert attestation is not None and (attestation.checkpoint_at,
                                        attestation.decided_from) == (6, 8)
    for forged in (replace(attestation, checkpoint_at=8), replace(attestation, decided_from=0)):
        assert not verify_attestation(scheme, forged, usig.id())
    reopened = Usig.open(scheme, 1, store, lambda: 0)
    again = reopened.attest()
    assert again is not None and (again.checkpoint_at, again.decided_from) == (6, 8)


def test_an_attestation_and_a_ui_never_pass_for_each_other(scheme: UsigScheme) -> None:
    usig = new_usig(scheme)
    usig.create_ui(b"minbft\x00a")
    # A faulty host has its USIG certify the bytes an attestation covers...
    forged_bytes = ATTESTATION_LABEL + struct.pack(">QQQ", 0, 0, 0)
    ui = usig.create_ui(forged_bytes)
    attestation = usig.attest()
    assert attestation is not None and attestation.counter == ui.counter
    as_attestation = replace(attestation, new_view_max=0, certificate=ui.certificate)
    assert not verify_attestation(scheme, as_attestation, usig.id())
    # ... and an attestation's certificate is no UI.
    assert not verify_ui_digest(scheme, message_digest(forged_bytes),
                                replace(ui, certificate=attestation.certificate), usig.id())


def test_one_message_twice_gets_two_values(scheme: UsigScheme) -> None:
    usig = new_usig(scheme)
    first, second = usig.create_ui(b"same"), usig.create_ui(b"same")
    assert (first.counter, second.counter) == (1, 2)


def test_nothing_verifies_that_the_usig_did_not_certify(scheme: UsigScheme) -> None:
    usig, other = new_usig(scheme, replica=0), new_usig(scheme, replica=1)
    ui = usig.create_ui(b"hello")
    assert not usig.verify_ui(b"hellO", ui, usig.id())  # another message
    assert not usig.verify_ui(b"hello", ui, other.id())  # another USIG
    assert not usig.verify_ui(b"hello", UI(0, 2, ui.certificate), usig.id())  # another counter
    assert not usig.verify_ui(b"hello", UI(1, 1, ui.certificate), UsigId(0, 1))  # another epoch
    assert not usig.verify_ui(b"hello", UI(0, 1, b"\x00" * len(ui.certificate)), usig.id())
    assert not usig.verify_ui(b"hello", UI(0, 1, b""), usig.id())
    # A peer may send anything: never raises.
    for bad in (None, 3, b"x", UI(0, 1, b"x" * 64), (0, 1, ui.certificate)):
        assert not usig.verify_ui(b"hello", bad, usig.id())
    assert not verify_ui(scheme, b"hello", ui, 0)  # type: ignore[arg-type]
    assert not verify_ui(scheme, "hello", ui, usig.id())


def test_the_simulation_usig_key_is_not_the_signing_key() -> None:
    # A Byzantine replica in simulation holds its own signer (ADR 0008): it must
    # not be able to make USIG certificates with it.
    assert USIG_SIMULATION_SECRET != SIMULATION_SECRET
    usig = new_usig(simulation_scheme())
    ui = usig.create_ui(b"m")
    forged = HmacUsigScheme(SIMULATION_SECRET).certify(usig.id(), 2, b"\x00" * 32)
    assert forged != ui.certificate
    assert not usig.verify_ui(b"m", UI(0, 2, forged), usig.id())


def test_ed25519_uis_verify_with_another_instance_of_the_scheme() -> None:
    # Publicly verifiable: a verifier needs only the public key (derived here).
    ui = new_usig(Ed25519UsigScheme(b"k" * 32), replica=3).create_ui(b"m")
    assert verify_ui(Ed25519UsigScheme(b"k" * 32), b"m", ui, UsigId(3, 0))
    assert not verify_ui(Ed25519UsigScheme(b"j" * 32), b"m", ui, UsigId(3, 0))


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ConfigError):
        HmacUsigScheme(b"short")
    with pytest.raises(ConfigError):
        Ed25519UsigScheme(b"short")


class StorageStore:
    """The counter in a MemoryStorage (the simulator's disk, with its crash
    semantics), as a step's write."""

    def __init__(self, storage: MemoryStorage) -> None:
        self.storage = storage

    def load(self) -> tuple[int, int, bytes] | None:
        data = self.storage.recover().get("usig")
        if data is None:
            return None
        epoch, counter, digest = data.split(b":", 2)
        return int(epoch), int(counter), digest

    def save(self, epoch: int, counter: int, digest: bytes, new_view_max: int = 0,
             marks: tuple[int, ...] = ()) -> None:
        self.storage.put("usig", b"%d:%d:" % (epoch, counter) + digest)

    def load_new_view_max(self) -> int:
        return 0

    def load_marks(self) -> tuple[int, ...]:
        return ()


@pytest.mark.parametrize("ui_per_step", [1, 3])
def test_a_crash_between_the_write_and_the_release_never_reissues_a_value(
    ui_per_step: int,
) -> None:
    """Steps create UIs (each a write), then sync, then release the UIs (the
    host's order: persist before send). A crash cuts steps anywhere: between
    the writes, or after them but before the release. Whatever survives, no
    counter value is released twice, and the released ones are 1, 2, 3, ..."""
    scheme = simulation_scheme()
    for crash_every in range(2, 7):
        for keep in range(ui_per_step + 1):
            storage = MemoryStorage()
            store = StorageStore(storage)
            usig = new_usig(scheme, store=store)
            released: list[int] = []
            for step in range(40):
                made = [usig.create_ui(f"s{step}u{i}".encode()) for i in range(ui_per_step)]
                if step % crash_every == crash_every - 1:
                    # The machine dies during the step's writes (or after all of
                    # them, before the sync): a prefix survives, nothing is sent.
                    storage.crash(keep_unsynced=min(keep, storage.unsynced_count))
                    usig = Usig.open(scheme, 0, store, lambda: 1)
                    assert usig.id().epoch == 0  # the disk survived: same USIG
                    continue
                storage.sync()
                released.extend(ui.counter for ui in made)
            assert len(released) == len(set(released)), "a counter value released twice"
            assert released == sorted(released)
            assert released[0] == 1


def test_a_broken_usig_that_writes_after_release_reissues_values() -> None:
    """The same schedule against a USIG that releases first and writes its
    counter later (at the next UI): the test above must be able to fail."""

    class LateUsig(Usig):
        __slots__ = ()

        def create_ui(self, message: bytes) -> UI:
            self.store.save(self.identity.epoch, self.counter, b"")  # the previous value only
            self.counter += 1
            return UI(self.identity.epoch, self.counter,
                      self.scheme.certify(self.identity, self.counter, b""))

    storage = MemoryStorage()
    store = StorageStore(storage)
    usig: Usig = LateUsig(simulation_scheme(), UsigId(0, 0), store)
    released: list[int] = []
    for step in range(10):
        ui = usig.create_ui(b"m")
        if step == 4:
            storage.crash()
            epoch, counter, _ = store.load() or (0, 0, b"")
            usig = LateUsig(simulation_scheme(), UsigId(0, epoch), store, counter)
            continue
        storage.sync()
        released.append(ui.counter)
    assert len(released) != len(set(released))


def test_a_usig_whose_state_is_lost_comes_back_under_a_new_epoch() -> None:
    scheme = simulation_scheme()
    store = DictStore()
    usig = Usig.open(scheme, 1, store, lambda: 0)
    old = usig.create_ui(b"a")
    store.value = None  # the disk is gone
    renewed = Usig.open(scheme, 1, store, lambda: 77)
    new = renewed.create_ui(b"b")
    assert renewed.id() == UsigId(1, 77) and new.counter == 1
    # Counter 1 twice, but under two identities: nobody can take one for the other.
    assert not verify_ui(scheme, b"b", new, UsigId(1, 0))
    assert verify_ui(scheme, b"a", old, UsigId(1, 0))


def test_the_last_ui_is_given_again_for_the_same_message_only(scheme: UsigScheme) -> None:
    store = DictStore()
    usig = new_usig(scheme, store=store)
    ui = usig.create_ui(b"m")
    again = Usig.open(scheme, 0, store, lambda: 9)  # restarted: the disk survived
    assert again.reissue_last(b"m") == ui
    assert again.reissue_last(b"other") is None
    assert again.create_ui(b"n").counter == 2
    assert again.reissue_last(b"m") is None  # no longer the last


def test_verify_ui_digest_checks_stubs(scheme: UsigScheme) -> None:
    usig = new_usig(scheme)
    ui = usig.create_ui(b"m")
    assert verify_ui_digest(scheme, message_digest(b"m"), ui, usig.id())
    assert not verify_ui_digest(scheme, message_digest(b"n"), ui, usig.id())
    assert not verify_ui_digest(scheme, b"short", ui, usig.id())


def keyed_schemes(n: int) -> list[Ed25519KeyedUsigScheme]:
    keys = [generate_ed25519_key() for _ in range(n)]
    publics = {replica: public for replica, (_, public) in enumerate(keys)}
    return [Ed25519KeyedUsigScheme(replica, private, publics)
            for replica, (private, _) in enumerate(keys)]


def test_per_replica_ed25519_keys_verify_across_replicas_and_refuse_others() -> None:
    schemes = keyed_schemes(3)
    usigs = [new_usig(scheme, replica=replica) for replica, scheme in enumerate(schemes)]
    uis = [usig.create_ui(b"m") for usig in usigs]
    for verifier in schemes:
        for replica, ui in enumerate(uis):
            assert verify_ui(verifier, b"m", ui, UsigId(replica=replica, epoch=0))
            assert not verify_ui(verifier, b"m", ui, UsigId(replica=(replica + 1) % 3, epoch=0))
            assert not verify_ui(verifier, b"n", ui, UsigId(replica=replica, epoch=0))
            assert not verify_ui(verifier, b"m", ui, UsigId(replica=replica, epoch=1))
    # A replica's key cannot certify for another replica, and one not listed is unknown.
    assert not verify_ui(schemes[0], b"m", uis[0], UsigId(replica=7, epoch=0))
    # A whole other cluster's keys (same replica ids) certify nothing here.
    stranger = new_usig(keyed_schemes(3)[1], replica=1).create_ui(b"m")
    assert not verify_ui(schemes[0], b"m", stranger, UsigId(replica=1, epoch=0))


def test_per_replica_ed25519_keys_are_checked_up_front() -> None:
    (private, public), (_, other) = generate_ed25519_key(), generate_ed25519_key()
    # The checks are core.signing.ed25519_keys', their messages naming the USIG's keys.
    with pytest.raises(ConfigError, match="replica 0: USIG Ed25519 private key does not match"):
        Ed25519KeyedUsigScheme(0, private, {0: other, 1: public})
    with pytest.raises(ConfigError,
                       match="replica 1: USIG Ed25519 public key of 5 bytes, not 32 raw bytes"):
        Ed25519KeyedUsigScheme(0, private, {0: public, 1: b"short"})
    with pytest.raises(ConfigError,
                       match="replica 0: USIG Ed25519 private key of 31 bytes, not 32 raw bytes"):
        Ed25519KeyedUsigScheme(0, private[:31], {0: public})
