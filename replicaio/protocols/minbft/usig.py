"""The USIG: MinBFT's trusted Unique Sequential Identifier Generator.

Veronese et al., *Efficient Byzantine Fault-Tolerance* (IEEE Transactions on
Computers 2013), section 3.2. Every replica has one small trusted component
that stays correct even when the rest of the replica is Byzantine. It holds a
counter and a key, and offers:

* ``create_ui(message) -> UI(counter, certificate)``: increments the counter
  and certifies ``(this USIG's identity, counter, digest(message))``;
* ``verify_ui(message, ui, usig_id) -> bool``: whether ``ui`` was created by
  the USIG ``usig_id`` for ``message``;
* ``id()``: this USIG's identity.

What it promises (the whole reason MinBFT needs only n = 2f + 1):

* **unique**: no two messages ever get a UI with one counter value from one
  USIG (so a faulty replica cannot tell two peers different things under one
  sequence number: equivocation becomes *visible* as a gap or a second number);
* **monotonic and sequential**: counter values are 1, 2, 3, ... without gaps,
  in creation order (so a receiver that processes a peer's messages in counter
  order sees every one of them, or waits);
* **unforgeable**: no one but the USIG can produce a certificate that
  verifies, not even the replica that hosts it.

Durability: the counter is written durably *before* the UI leaves the USIG
(``UsigStore.save`` is called inside ``create_ui``, before it returns). In
protocol code the store is the component's storage slice
(:class:`ContextUsigStore`): a ``persist`` of the step, released with the
step's writes before any of the step's messages, and the simulator's mid-step
crash releases none of a step's messages if it cuts the step's writes (a
prefix of the writes survives, the sends do not). So a UI never reaches
anyone unless its counter, or a later one, is on disk: after a restart the
USIG resumes above every counter it ever released. What it may lose is only
counters no one saw. A USIG whose state is lost (a disk replaced, a wiped
volume) must not resume at all under its old identity: it takes a new one
(``epoch``), see docs/minbft.md, *Recovery*.

Schemes (the certificate, :class:`UsigScheme`):

* :class:`HmacUsigScheme` (``hmac-sha256``): HMAC-SHA256 under one key shared
  by every replica's trusted component (never by the untrusted rest of the
  replica): fast, verifiable only by trusted components (a verifier must hold
  the key). In the simulator the key derives from the public
  :data:`USIG_SIMULATION_SECRET`, unforgeable against code that is never
  handed it: the adversary reaches a USIG only through :class:`Usig` objects
  (``replicaio.sim.minbft_adversary``), as ADR 0008 does for signatures.
* :class:`Ed25519UsigScheme` (``ed25519``): RFC 8032 signatures, one key pair
  per USIG identity; publicly verifiable (anyone with the public key), so a
  UI-certified message is a transferable proof, as MinBFT's VIEW-CHANGE needs.
  Here the key pairs derive from a secret seed (a software stand-in for keys
  born inside an enclave; docs/minbft.md says what hardware must promise).

A hardware implementation (SGX enclave, TPM monotonic counter, a secure
element) implements :class:`Usig`'s three methods with the counter and the
key inside the device; see docs/minbft.md, *The trusted component*.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from typing import Annotated, Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from replicaio.core.codec import Message, Meta
from replicaio.core.errors import ConfigError
from replicaio.core.signing import ed25519_keys

CERTIFICATE_BYTES_MAX = 64
COUNTER_MAX = (1 << 63) - 1
EPOCH_MAX = (1 << 62) - 1
USIG_LABEL = b"replicaio usig v1"
# A USIG of one replicated group among several on a node certifies under this
# label, with the group (docs/minbft.md, *One USIG per group*; ADR 0031).
USIG_GROUP_LABEL = b"replicaio usig v1 group"
GROUP_MAX = (1 << 32) - 1
NEW_VIEW_LABEL = b"minbft-nv\x00"  # a NEW-VIEW's certified bytes start so (messages.py)
# A CHECKPOINT's certified bytes start so, then its number (8 bytes big-endian).
CHECKPOINT_LABEL = b"minbft-cp\x00"
# A *certified* NEW-VIEW-COMMIT's start so, then the last number its header
# decides (8 bytes big-endian; 0 if it decides none).
DECIDED_LABEL = b"minbft-nvc\x00"
ATTESTATION_LABEL = b"replicaio usig attestation v1"
# An attestation is certified as if for this bit | its counter: no UI has such a
# counter (COUNTER_MAX is below it), so neither verifies as the other, whatever
# bytes a faulty host has its USIG certify.
ATTESTATION_BIT = 1 << 63
ADMISSION_LABEL = b"replicaio usig admission v1"
# Public on purpose: simulated runs replay from their seed alone. Unforgeable in
# simulation because the adversary is never handed it (nor a scheme built on it).
USIG_SIMULATION_SECRET = b"replicaio simulation usig secret v1"
SECRET_BYTES_MIN = 16
PUBLIC_KEYS_CACHED_MAX = 1024


class UI(Message, tag="minbft.UI"):
    """A unique identifier: USIG ``epoch`` of the sending replica gave ``counter``
    to the message, and ``certificate`` proves it."""

    epoch: Annotated[int, Meta(ge=0, le=EPOCH_MAX)]
    counter: Annotated[int, Meta(ge=1, le=COUNTER_MAX)]
    certificate: Annotated[bytes, Meta(max_length=CERTIFICATE_BYTES_MAX)]


class UsigAttestation(Message, tag="minbft.UsigAttestation"):
    """The USIG ``epoch``'s statement, made when its counter stood at
    ``counter`` (no value consumed): the highest view of a NEW-VIEW it had
    certified by then was ``new_view_max`` (0: none). A peer whose stream of
    this replica resumes at ``counter`` skips what was certified before it;
    this tells it which NEW-VIEWs it can no longer take (docs/minbft.md, *A
    second NEW-VIEW of a view*).

    ``checkpoint_at``: the counter of the CHECKPOINT that raised the highest
    number of a CHECKPOINT it certified to where it stands (0: none); an
    attestation made at a CHECKPOINT's own counter with ``checkpoint_at`` that
    counter says it is the *first* CHECKPOINT of a number that high.
    ``decided_from``: the counter of the first certified NEW-VIEW-COMMIT whose
    decisions reach above every CHECKPOINT certified before it, while one is
    still open (0: none). A VIEW-CHANGE anchored at that CHECKPOINT must show
    its log from there (docs/minbft.md, *The pre-anchor hiding gap*)."""

    epoch: Annotated[int, Meta(ge=0, le=EPOCH_MAX)]
    counter: Annotated[int, Meta(ge=1, le=COUNTER_MAX)]
    new_view_max: Annotated[int, Meta(ge=0, le=COUNTER_MAX)]
    certificate: Annotated[bytes, Meta(max_length=CERTIFICATE_BYTES_MAX)]
    checkpoint_at: Annotated[int, Meta(ge=0, le=COUNTER_MAX)] = 0
    decided_from: Annotated[int, Meta(ge=0, le=COUNTER_MAX)] = 0


class UsigId(Message, tag="minbft.UsigId"):
    """A USIG's identity: the replica hosting it, the epoch of its state (a
    USIG whose state was lost comes back under a new epoch) and the replicated
    group it orders for (``None``: the node's only MinBFT, no group). A node
    hosting several MinBFT groups has one USIG per group, each certifying its
    group with every value, so a value of one group's counter never verifies
    in another group (ADR 0031)."""

    replica: Annotated[int, Meta(ge=0)]
    epoch: Annotated[int, Meta(ge=0, le=EPOCH_MAX)]
    group: Annotated[int, Meta(ge=0, le=GROUP_MAX)] | None = None


class UsigAdmission(Message, tag="minbft.UsigAdmission"):
    """The operator's act admitting USIG ``epoch`` of ``replica`` (a new USIG
    whose predecessor's state was lost): ``certificate`` is the operator's,
    checked by :meth:`UsigScheme.check_admission`. Peers take a replica's
    messages under an epoch above the first only with its admission
    (docs/minbft.md, *Recovery*; ADR 0026); a replica cannot admit itself."""

    replica: Annotated[int, Meta(ge=0)]
    epoch: Annotated[int, Meta(ge=1, le=EPOCH_MAX)]
    certificate: Annotated[bytes, Meta(max_length=CERTIFICATE_BYTES_MAX)]


def admission_bytes(replica: int, epoch: int, group: int | None = None) -> bytes:
    """What an admission's certificate covers: the replica, the epoch and the
    group whose USIG it admits (``None``: the node's only MinBFT). The group is
    not in the message: a verifier checks the admission for its own group, so
    one group's admission never opens an epoch in another (ADR 0031)."""
    if group is None:
        return ADMISSION_LABEL + struct.pack(">QQ", replica, epoch)
    return ADMISSION_LABEL + b" group" + struct.pack(">QQQ", replica, epoch, group)


def sign_admission(operator_key: bytes, replica: int, epoch: int,
                   group: int | None = None) -> UsigAdmission:
    """The operator's Ed25519 admission of ``epoch`` for ``replica`` (in
    ``group``; live: the operator's private key, ``replicaio kv admit-usig``)."""
    if len(operator_key) != 32:
        raise ConfigError("a USIG operator key is 32 raw bytes")
    key = Ed25519PrivateKey.from_private_bytes(operator_key)
    return UsigAdmission(replica, epoch, key.sign(admission_bytes(replica, epoch, group)))


def check_admission_ed25519(public: Ed25519PublicKey | None, admission: Any,
                            group: int | None = None) -> bool:
    """Whether ``admission`` is signed by the operator key ``public`` for
    ``group`` (never raises)."""
    if public is None or not valid_admission(admission) or len(admission.certificate) != 64 \
            or not valid_group(group):
        return False
    try:
        public.verify(admission.certificate,
                      admission_bytes(admission.replica, admission.epoch, group))
    except InvalidSignature:
        return False
    return True


def valid_group(group: Any) -> bool:
    return group is None or (type(group) is int and 0 <= group <= GROUP_MAX)


def valid_admission(admission: Any) -> bool:
    return (
        type(admission) is UsigAdmission
        and type(admission.replica) is int and admission.replica >= 0
        and type(admission.epoch) is int and 1 <= admission.epoch <= EPOCH_MAX
        and isinstance(admission.certificate, bytes)
    )


def certified_bytes(usig: UsigId, counter: int, digest: bytes) -> bytes:
    """What a certificate covers: the USIG (its replica, epoch and group), the
    counter and the message digest. Without a group the bytes are those of a
    single-group node (unchanged since ADR 0013); with one, another label and
    the group: the two forms differ in length (the digest is always 32 bytes),
    so no UI of one USIG passes for another's (ADR 0031)."""
    if usig.group is None:
        return USIG_LABEL + struct.pack(">QQQ", usig.replica, usig.epoch, counter) + digest
    return USIG_GROUP_LABEL + struct.pack(
        ">QQQQ", usig.replica, usig.epoch, usig.group, counter) + digest


def message_digest(message: bytes) -> bytes:
    return hashlib.sha256(message).digest()


def new_view_of(message: bytes) -> int | None:
    """The view a message announces itself a NEW-VIEW of (None: not one): the
    protocol certifies a NEW-VIEW's header as :data:`NEW_VIEW_LABEL`, then the
    view (8 bytes, big-endian), then the rest; no other message starts so."""
    if not message.startswith(NEW_VIEW_LABEL) or len(message) < len(NEW_VIEW_LABEL) + 8:
        return None
    return int(struct.unpack_from(">Q", message, len(NEW_VIEW_LABEL))[0])


def labelled_number(label: bytes, message: bytes) -> int | None:
    """The number behind ``label`` at the start of ``message`` (None: not so
    labelled): a CHECKPOINT's number (:data:`CHECKPOINT_LABEL`), the last number
    a certified NEW-VIEW-COMMIT decides (:data:`DECIDED_LABEL`)."""
    if not message.startswith(label) or len(message) < len(label) + 8:
        return None
    return int(struct.unpack_from(">Q", message, len(label))[0])


class UsigMarks:
    """What the USIG keeps besides the counter about what it certified, for its
    attestations (all durable with the counter): the highest NEW-VIEW view; the
    highest CHECKPOINT number and the counter of the CHECKPOINT that reached it;
    the highest number a certified NEW-VIEW-COMMIT decided and the counter of
    the first such commitment still *open* (deciding above every CHECKPOINT
    certified before it, and not yet covered by a later CHECKPOINT)."""

    __slots__ = ("checkpoint_at", "checkpoint_max", "decided_from", "decided_max",
                 "new_view_max")

    def __init__(self, new_view_max: int = 0, checkpoint_max: int = 0, checkpoint_at: int = 0,
                 decided_max: int = 0, decided_from: int = 0) -> None:
        self.new_view_max = new_view_max
        self.checkpoint_max = checkpoint_max
        self.checkpoint_at = checkpoint_at
        self.decided_max = decided_max
        self.decided_from = decided_from

    def values(self) -> tuple[int, int, int, int, int]:
        return (self.new_view_max, self.checkpoint_max, self.checkpoint_at, self.decided_max,
                self.decided_from)

    def after(self, counter: int, message: bytes) -> UsigMarks:
        """The marks once ``message`` got ``counter``."""
        marks = UsigMarks(*self.values())
        marks.new_view_max = max(marks.new_view_max, new_view_of(message) or 0)
        checkpoint = labelled_number(CHECKPOINT_LABEL, message)
        if checkpoint is not None and checkpoint > marks.checkpoint_max:
            marks.checkpoint_max, marks.checkpoint_at = checkpoint, counter
            if checkpoint >= marks.decided_max:
                marks.decided_from = 0  # every decision so far is at or below it
        decided = labelled_number(DECIDED_LABEL, message)
        if decided is not None and decided > marks.checkpoint_max:
            marks.decided_max = max(marks.decided_max, decided)
            if marks.decided_from == 0:
                marks.decided_from = counter
        return marks


def attestation_digest(new_view_max: int, checkpoint_at: int = 0, decided_from: int = 0) -> bytes:
    """What an attestation's certificate covers besides the USIG and its
    counter (with :data:`ATTESTATION_BIT` set)."""
    return message_digest(ATTESTATION_LABEL + struct.pack(">QQQ", new_view_max, checkpoint_at,
                                                          decided_from))


def verify_attestation(scheme: UsigScheme, attestation: Any, usig_id: UsigId) -> bool:
    """Whether ``attestation`` is the USIG ``usig_id``'s (never raises)."""
    if type(attestation) is not UsigAttestation or not valid_usig_id(usig_id) \
            or attestation.epoch != usig_id.epoch:
        return False
    if type(attestation.counter) is not int or not 1 <= attestation.counter <= COUNTER_MAX:
        return False
    for value in (attestation.new_view_max, attestation.checkpoint_at,
                  attestation.decided_from):
        if type(value) is not int or not 0 <= value <= COUNTER_MAX:
            return False
    return scheme.check(usig_id, ATTESTATION_BIT | attestation.counter,
                        attestation_digest(attestation.new_view_max, attestation.checkpoint_at,
                                           attestation.decided_from),
                        attestation.certificate)


class UsigScheme(Protocol):
    """How certificates are made and checked. ``certify`` belongs inside the
    trusted component; ``check`` never raises on bad input."""

    @property
    def name(self) -> str: ...

    def certify(self, usig: UsigId, counter: int, digest: bytes) -> bytes: ...

    def check(self, usig: UsigId, counter: int, digest: bytes, certificate: bytes) -> bool: ...

    def check_admission(self, admission: Any, group: int | None = None) -> bool:
        """Whether ``admission`` is the operator's, for the USIG of ``group``
        (never raises)."""
        ...


class HmacUsigScheme:
    """HMAC-SHA256 under a key shared by the trusted components only."""

    __slots__ = ("admission_key", "key")

    name = "hmac-sha256"

    def __init__(self, secret: bytes) -> None:
        if len(secret) < SECRET_BYTES_MIN:
            raise ConfigError(f"a USIG secret is at least {SECRET_BYTES_MIN} bytes")
        self.key = hmac.digest(secret, USIG_LABEL + b" hmac", hashlib.sha256)
        # Admissions under a key of their own, derived from the same secret: the
        # operator holds the secret (usig.secret live; the simulator's operator).
        self.admission_key = hmac.digest(secret, ADMISSION_LABEL + b" hmac", hashlib.sha256)

    def admit(self, replica: int, epoch: int, group: int | None = None) -> UsigAdmission:
        """The operator's admission of ``epoch`` for ``replica`` (in ``group``;
        never called by a replica: the simulator's operator, ``replicaio kv
        admit-usig``)."""
        certificate = hmac.digest(self.admission_key, admission_bytes(replica, epoch, group),
                                  hashlib.sha256)
        return UsigAdmission(replica, epoch, certificate)

    def check_admission(self, admission: Any, group: int | None = None) -> bool:
        if not valid_admission(admission) or len(admission.certificate) != 32 \
                or not valid_group(group):
            return False
        expected = self.admit(admission.replica, admission.epoch, group).certificate
        return hmac.compare_digest(expected, admission.certificate)

    def certify(self, usig: UsigId, counter: int, digest: bytes) -> bytes:
        return hmac.digest(self.key, certified_bytes(usig, counter, digest), hashlib.sha256)

    def check(self, usig: UsigId, counter: int, digest: bytes, certificate: bytes) -> bool:
        if not isinstance(certificate, bytes) or len(certificate) != 32:
            return False
        return hmac.compare_digest(self.certify(usig, counter, digest), certificate)


class Ed25519UsigScheme:
    """Ed25519: one key pair per USIG identity, derived from a secret seed (the
    software stand-in for a key generated inside the enclave); publicly
    verifiable by anyone holding the public keys."""

    __slots__ = ("privates", "publics", "secret")

    name = "ed25519"

    def __init__(self, secret: bytes) -> None:
        if len(secret) < SECRET_BYTES_MIN:
            raise ConfigError(f"a USIG secret is at least {SECRET_BYTES_MIN} bytes")
        self.secret = secret
        self.privates: dict[UsigId, Ed25519PrivateKey] = {}
        self.publics: dict[UsigId, Ed25519PublicKey] = {}

    def private_key(self, usig: UsigId) -> Ed25519PrivateKey:
        found = self.privates.get(usig)
        if found is None:
            seed = hmac.digest(
                self.secret, USIG_LABEL + struct.pack(">QQ", usig.replica, usig.epoch),
                hashlib.sha256,
            )
            if len(self.privates) >= PUBLIC_KEYS_CACHED_MAX:
                self.privates.clear()
            found = self.privates[usig] = Ed25519PrivateKey.from_private_bytes(seed)
        return found

    def public_key(self, usig: UsigId) -> Ed25519PublicKey:
        found = self.publics.get(usig)
        if found is None:
            if len(self.publics) >= PUBLIC_KEYS_CACHED_MAX:
                self.publics.clear()
            found = self.publics[usig] = self.private_key(usig).public_key()
        return found

    def certify(self, usig: UsigId, counter: int, digest: bytes) -> bytes:
        return self.private_key(usig).sign(certified_bytes(usig, counter, digest))

    def operator_key(self) -> bytes:
        return hmac.digest(self.secret, ADMISSION_LABEL, hashlib.sha256)

    def admit(self, replica: int, epoch: int, group: int | None = None) -> UsigAdmission:
        """The operator's admission of ``epoch`` for ``replica`` (in ``group``)."""
        return sign_admission(self.operator_key(), replica, epoch, group)

    def check_admission(self, admission: Any, group: int | None = None) -> bool:
        public = Ed25519PrivateKey.from_private_bytes(self.operator_key()).public_key()
        return check_admission_ed25519(public, admission, group)

    def check(self, usig: UsigId, counter: int, digest: bytes, certificate: bytes) -> bool:
        if not isinstance(certificate, bytes) or len(certificate) != 64:
            return False
        try:
            self.public_key(usig).verify(certificate, certified_bytes(usig, counter, digest))
        except InvalidSignature:
            return False
        return True


class Ed25519KeyedUsigScheme:
    """Ed25519 with one key pair per replica, as a live cluster configures it
    (the cluster file's ``[usig] kind = "ed25519"``): this replica's private key
    (read from its own key file, never from the cluster file) and every
    replica's public key. It certifies only for its own replica (anything else
    is our bug); any epoch of a replica is checked against that replica's
    public key, the epoch being inside what is signed. The software stand-in
    for a key born in the replica's enclave: whoever reads the key file can mint
    UIs (docs/minbft.md, *Live*)."""

    __slots__ = ("operator", "private", "publics", "replica")

    name = "ed25519"

    def __init__(self, replica: int, private_key: bytes, public_keys: dict[int, bytes],
                 operator_public_key: bytes | None = None) -> None:
        self.replica = replica
        self.private, self.publics = ed25519_keys(
            replica, private_key, public_keys, kind="USIG Ed25519", who="replica")
        # The operator's key, which admits a new USIG epoch (None: no admissions).
        self.operator: Ed25519PublicKey | None = None
        if operator_public_key is not None:
            if len(operator_public_key) != 32:
                raise ConfigError("a USIG operator public key is 32 raw bytes")
            self.operator = Ed25519PublicKey.from_public_bytes(operator_public_key)

    def check_admission(self, admission: Any, group: int | None = None) -> bool:
        return check_admission_ed25519(self.operator, admission, group)

    def certify(self, usig: UsigId, counter: int, digest: bytes) -> bytes:
        assert usig.replica == self.replica, "a USIG certifies for its own replica only"
        return self.private.sign(certified_bytes(usig, counter, digest))

    def check(self, usig: UsigId, counter: int, digest: bytes, certificate: bytes) -> bool:
        public = self.publics.get(usig.replica) if valid_usig_id(usig) else None
        if public is None or not isinstance(certificate, bytes) or len(certificate) != 64:
            return False
        try:
            public.verify(certificate, certified_bytes(usig, counter, digest))
        except InvalidSignature:
            return False
        return True


def simulation_scheme() -> UsigScheme:
    """The scheme of simulated runs (fast, deterministic, under the public
    simulation secret: see the module docstring)."""
    return HmacUsigScheme(USIG_SIMULATION_SECRET)


def valid_usig_id(usig: Any) -> bool:
    return (
        type(usig) is UsigId
        and type(usig.replica) is int and usig.replica >= 0
        and type(usig.epoch) is int and 0 <= usig.epoch <= EPOCH_MAX
        and valid_group(usig.group)
    )


def verify_ui(scheme: UsigScheme, message: Any, ui: Any, usig_id: UsigId) -> bool:
    """Whether ``ui`` is the USIG ``usig_id``'s identifier for ``message``
    (never raises: a peer may send anything)."""
    if not isinstance(message, bytes):
        return False
    return verify_ui_digest(scheme, message_digest(message), ui, usig_id)


def verify_ui_digest(scheme: UsigScheme, digest: Any, ui: Any, usig_id: UsigId) -> bool:
    """:func:`verify_ui` for a message known by its digest (a log entry kept
    as a stub: the certificate covers the digest)."""
    if type(ui) is not UI or not valid_usig_id(usig_id) or ui.epoch != usig_id.epoch:
        return False
    if type(ui.counter) is not int or not 1 <= ui.counter <= COUNTER_MAX:
        return False
    if not isinstance(digest, bytes) or len(digest) != 32:
        return False
    return scheme.check(usig_id, ui.counter, digest, ui.certificate)


class UsigStore(Protocol):
    """Where a USIG keeps its counter durably. ``save`` returns once the value
    is as durable as anything the caller sends afterwards."""

    def load(self) -> tuple[int, int, bytes] | None:
        """``(epoch, counter, digest)`` as last saved (``digest``: of the message
        the counter went to), or ``None`` if never saved or lost."""
        ...

    def save(self, epoch: int, counter: int, digest: bytes, new_view_max: int = 0,
             marks: tuple[int, ...] = ()) -> None:
        """Also the highest view of a NEW-VIEW certified so far (0: none) and the
        rest of the :class:`UsigMarks` (``values()[1:]``)."""
        ...

    def load_new_view_max(self) -> int:
        """``new_view_max`` as last saved (0 if never)."""
        ...

    def load_marks(self) -> tuple[int, ...]:
        """``marks`` as last saved (empty if never)."""
        ...


class ContextUsigStore:
    """The counter in a protocol component's storage slice (``usig`` record):
    a write of the current step, durable before the step's messages leave."""

    __slots__ = ("load_value", "persist_value")

    NAME = "usig"

    def __init__(self, load: Callable[[str], Any], persist: Callable[[str, Any], None]) -> None:
        self.load_value = load
        self.persist_value = persist

    def load(self) -> tuple[int, int, bytes] | None:
        stored = self.load_value(self.NAME)
        if stored is None:
            return None
        return int(stored[0]), int(stored[1]), bytes(stored[2])

    def save(self, epoch: int, counter: int, digest: bytes, new_view_max: int = 0,
             marks: tuple[int, ...] = ()) -> None:
        self.persist_value(self.NAME, (epoch, counter, digest, new_view_max, *marks))

    def load_new_view_max(self) -> int:
        stored = self.load_value(self.NAME)
        return int(stored[3]) if stored is not None and len(stored) > 3 else 0

    def load_marks(self) -> tuple[int, ...]:
        stored = self.load_value(self.NAME)
        return tuple(int(value) for value in stored[4:8]) if stored is not None else ()


class UsigExhausted(Exception):
    """The counter reached :data:`COUNTER_MAX` (never in practice: 2^63 UIs)."""


class Usig:
    """One replica's USIG: a counter, an identity and a scheme (see the module
    docstring for the promises). Not thread-safe: one step at a time."""

    __slots__ = ("counter", "identity", "last_digest", "marks", "scheme", "store")

    def __init__(self, scheme: UsigScheme, identity: UsigId, store: UsigStore,
                 counter: int = 0, last_digest: bytes = b"", new_view_max: int = 0,
                 marks: tuple[int, ...] = ()) -> None:
        assert 0 <= counter <= COUNTER_MAX
        self.scheme = scheme
        self.identity = identity
        self.store = store
        self.counter = counter  # the last value given out (0: none yet)
        self.last_digest = last_digest  # the digest of the message it went to
        # The highest view of a NEW-VIEW it certified (``new_view_of``) and the
        # rest of what ``attest`` states, kept with the counter.
        self.marks = UsigMarks(new_view_max, *marks[:4])

    @property
    def new_view_max(self) -> int:
        return self.marks.new_view_max

    def saved_values(self) -> tuple[int, int, bytes, int, tuple[int, ...]]:
        """What ``store.save`` was last given (for a host that writes it itself)."""
        values = self.marks.values()
        return self.identity.epoch, self.counter, self.last_digest, values[0], values[1:]

    @classmethod
    def open(cls, scheme: UsigScheme, replica: int, store: UsigStore,
             fresh_epoch: Callable[[], int], group: int | None = None) -> Usig:
        """The USIG as ``store`` left it, or, if it holds nothing, a new one
        under a fresh epoch (``fresh_epoch``: 0 for the very first start of a
        replica; otherwise a value never used before, see docs/minbft.md).
        ``group``: the replicated group it orders for (``None``: the node's
        only MinBFT); the store is that group's own."""
        stored = store.load()
        if stored is not None:
            epoch, counter, digest = stored
            return cls(scheme, UsigId(replica, epoch, group), store, counter, digest,
                       store.load_new_view_max(), store.load_marks())
        epoch = fresh_epoch()
        assert 0 <= epoch <= EPOCH_MAX
        store.save(epoch, 0, b"")
        return cls(scheme, UsigId(replica, epoch, group), store, 0)

    def id(self) -> UsigId:
        return self.identity

    def create_ui(self, message: bytes) -> UI:
        """The next UI, certified for ``message``; its counter is durable first."""
        if self.counter >= COUNTER_MAX:
            raise UsigExhausted(f"USIG {self.identity} has no counter values left")
        counter = self.counter + 1
        digest = message_digest(message)
        marks = self.marks.after(counter, message)
        values = marks.values()
        # durable BEFORE release
        self.store.save(self.identity.epoch, counter, digest, values[0], values[1:])
        self.counter, self.last_digest, self.marks = counter, digest, marks
        certificate = self.scheme.certify(self.identity, counter, digest)
        return UI(self.identity.epoch, counter, certificate)

    def attest(self) -> UsigAttestation | None:
        """A statement of where the counter stands and the highest view of a
        NEW-VIEW certified so far (no counter value consumed; None before the
        first value)."""
        if self.counter == 0:
            return None
        marks = self.marks
        certificate = self.scheme.certify(
            self.identity, ATTESTATION_BIT | self.counter,
            attestation_digest(marks.new_view_max, marks.checkpoint_at, marks.decided_from))
        return UsigAttestation(self.identity.epoch, self.counter, marks.new_view_max, certificate,
                               marks.checkpoint_at, marks.decided_from)

    def reissue_last(self, message: bytes) -> UI | None:
        """The UI of the last value again, if it went to ``message`` (the same
        bytes: a host that crashed before it stored what it certified gets the
        identical UI back; never a second message for one value)."""
        if self.counter == 0 or message_digest(message) != self.last_digest:
            return None
        certificate = self.scheme.certify(self.identity, self.counter, self.last_digest)
        return UI(self.identity.epoch, self.counter, certificate)

    def verify_ui(self, message: bytes, ui: Any, usig_id: UsigId) -> bool:
        """Whether ``ui`` is ``usig_id``'s identifier for ``message`` (any USIG's,
        this one's included); never raises."""
        return verify_ui(self.scheme, message, ui, usig_id)
