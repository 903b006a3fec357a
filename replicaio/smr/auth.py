"""Client authentication: the one place SMR checks who sent a request.

With crash-fault protocols (Raft) clients are trusted and a request is taken
as it comes (:class:`TrustedClients`). With Byzantine protocols (PBFT,
MinBFT) a request arrives as an :class:`~replicaio.smr.api.AuthenticatedRequest`
and SMR checks it *before* batching, so a forged request never reaches the
ordering protocol; the authenticator then **travels with the request inside
batches** (``smr.SignedBatch``), so a backup checks a primary's batch before
accepting it (``OrderingHandlers.validate_batch``, Castro and Liskov section
4.2) and every replica checks every request again before executing it.

Schemes (``AuthenticatedRequest`` names the fields):

* ``ed25519`` (:class:`SignedClients` with :data:`ED25519`, the default on a
  live cluster whose nodes sign with Ed25519): the request carries the
  client's public key and its signature. Client ids are *self-certifying*:
  ``client == client_id_of(key)``, so no key directory is needed and nobody
  can act under another client's id without its private key. Transferable and
  deterministic, so every correct replica reaches the same verdict on a
  committed request, and execution re-checks it.
* ``keyed`` (:data:`KEYED`, the simulator's stand-in, also used by clusters
  whose nodes sign with keyed hashes): HMAC-SHA256 with the client's key
  ``HMAC-SHA256(secret, "replicaio client v1" | client)``. Like the nodes'
  keyed-hash signatures (``replicaio.core.signing``) it is unforgeable only by
  code that never holds the secret: in the simulator, the adversary; the
  secret (:data:`SIMULATION_CLIENT_SECRET`) is public so runs replay. A live
  cluster that must tolerate Byzantine clients uses ``ed25519``.
* ``node`` (next to either of the above): a client *inside* a replica's process
  (the Redis front of a node, the trusted shortcut) has its requests signed by
  that node's own signer (``replicaio.core.signing``). Its client ids carry the
  node's id (:func:`node_client_id`, a space apart from ``ed25519`` ids), and a
  node can vouch only for its own: a Byzantine replica cannot act for anyone
  else's clients. A backup takes the requests a proposal's author vouches for
  on the proposal's signature (:meth:`SignedClients.check_proposed`, ADR
  0028: the author could sign them as easily), so node-vouched requests are
  not checked again at execution (a correct replica validated the batch).
* ``mac`` (:class:`MacClients`, an option): a vector of one HMAC per replica
  (PBFT's authenticators, Castro and Liskov TOCS 2002 section 3.2), keys
  ``HMAC-SHA256(secret, "replicaio client mac v1" | replica | client)``. A
  replica checks only its own entry, so verdicts are *not* the same on every
  replica: a MAC-authenticated request is checked at admission and when a
  backup validates the primary's batch, never again at execution (that would
  let a faulty client make replicas diverge); a committed batch was validated
  by at least f+1 correct replicas.

Checked authenticators are remembered (``SmrParams.verified_max``, oldest
forgotten first), so the check at execution of a request this replica already
checked costs a lookup. Verification is a pure function, so the memo never
changes a verdict: replay and the simulator stay deterministic.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from replicaio.core.codec import Codec, EncodeError
from replicaio.core.context import group_domain
from replicaio.core.signing import Signer
from replicaio.smr.api import AuthenticatedRequest, ClientRequest

ED25519 = "ed25519"
KEYED = "keyed"
MAC = "mac"
REQUEST_LABEL = b"replicaio request v1"
CLIENT_KEY_LABEL = b"replicaio client v1"
CLIENT_MAC_LABEL = b"replicaio client mac v1"
ED25519_PUBLIC_BYTES = 32
ED25519_SIGNATURE_BYTES = 64
HMAC_BYTES = 32
CLIENT_ID_BITS = 62
# Node-vouched client ids: bit 62 set (ed25519 ids are below 1 << 62), then the
# node's incarnation, its id, and a counter.
NODE_CLIENT_FLAG = 1 << 62
NODE_CLIENT_COUNTER_BITS = 30
NODE_CLIENT_NODE_BITS = 10
NODE_CLIENT_INCARNATION_BITS = 62 - NODE_CLIENT_COUNTER_BITS - NODE_CLIENT_NODE_BITS
NODE_KEY_PREFIX = b"node"
NODE_KEY_BYTES = len(NODE_KEY_PREFIX) + 2  # the prefix and the node's id (node_key)
# The simulator's client secret: public on purpose, as the nodes' signing secret
# (replicaio.core.signing): runs replay from their seed alone.
SIMULATION_CLIENT_SECRET = b"replicaio simulation client secret v1"

Admitted = tuple[ClientRequest, AuthenticatedRequest | None]


class ClientAuthenticator(Protocol):
    """Turns a client's payload into a request SMR may execute.

    Called by the replica for every ``Request`` input, synchronously, in the
    step; must be deterministic (same payload, same answer). ``authenticate``
    returns the request with what travels with it in batches (``None`` when
    requests carry nothing), or a stable rejection reason (``"unauthenticated"``,
    ``"bad_request"``...) used as a counter label. When the payload is
    recognisably a request whose authenticator is wrong, return the reason and
    let :meth:`claimed` name it, so the client hears ``Rejected``.
    """

    @property
    def carries(self) -> bool:
        """Requests travel with their authenticators (``SignedBatch``)."""
        ...

    @property
    def rechecks(self) -> bool:
        """Execution checks a committed request again (the verdict is the same on
        every correct replica: signatures, not MAC vectors)."""
        ...

    def authenticate(self, payload: Any) -> Admitted | str:
        """The authenticated request inside ``payload``, or why it is refused."""
        ...

    def claimed(self, payload: Any) -> ClientRequest | None:
        """The request ``payload`` claims to carry (unverified), if it has one."""
        ...

    def check(self, carried: AuthenticatedRequest) -> bool:
        """Whether ``carried`` (from a batch or a forward) is authentic; never raises."""
        ...

    def check_proposed(self, carried: AuthenticatedRequest, proposer: int) -> bool:
        """:meth:`check` of a request in a batch replica ``proposer`` proposed and
        authenticated (a PRE-PREPARE it signed): a request ``proposer`` itself
        vouches for (its in-node client's) needs no signature of its own."""
        ...

    def check_committed(self, carried: AuthenticatedRequest) -> bool:
        """The check at execution (only when :attr:`rechecks`)."""
        ...


class TrustedClients:
    """Crash-fault model: clients are who they say they are."""

    carries = False
    rechecks = False

    def authenticate(self, payload: Any) -> Admitted | str:
        if type(payload) is not ClientRequest:
            return "bad_request"
        return payload, None

    def claimed(self, payload: Any) -> ClientRequest | None:
        return payload if type(payload) is ClientRequest else None

    def check(self, carried: AuthenticatedRequest) -> bool:
        return False  # nothing authenticated ever travels in a trusted cluster

    def check_proposed(self, carried: AuthenticatedRequest, proposer: int) -> bool:
        return False

    def check_committed(self, carried: AuthenticatedRequest) -> bool:
        return False


def client_id_of(public_key: bytes) -> int:
    """The self-certifying client id of an Ed25519 public key (62 bits, >= 0)."""
    digest = hashlib.blake2b(b"replicaio client id v1" + public_key, digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - CLIENT_ID_BITS)


def node_client_id(incarnation: int, node: int, number: int) -> int:
    """A client id node ``node`` may vouch for: unique per incarnation and counter."""
    assert 0 <= node < 1 << NODE_CLIENT_NODE_BITS
    assert 0 <= number < 1 << NODE_CLIENT_COUNTER_BITS
    assert 0 <= incarnation < 1 << NODE_CLIENT_INCARNATION_BITS
    high = incarnation << (NODE_CLIENT_COUNTER_BITS + NODE_CLIENT_NODE_BITS)
    return NODE_CLIENT_FLAG | high | (node << NODE_CLIENT_COUNTER_BITS) | number


def vouching_node(client: int) -> int | None:
    """The node whose signature may stand for ``client`` (``None``: none may)."""
    if not NODE_CLIENT_FLAG <= client < NODE_CLIENT_FLAG << 1:
        return None
    return (client >> NODE_CLIENT_COUNTER_BITS) & ((1 << NODE_CLIENT_NODE_BITS) - 1)


def node_key(node: int) -> bytes:
    """``AuthenticatedRequest.key`` of a request node ``node`` signs."""
    return NODE_KEY_PREFIX + struct.pack(">H", node)


def signed_bytes(codec: Codec, request: ClientRequest) -> bytes | None:
    """What a client authenticates: a label and the request's wire encoding."""
    try:
        return REQUEST_LABEL + codec.encode(request)
    except EncodeError:
        return None  # a peer's request no correct client could have sent


def client_key(secret: bytes, client: int) -> bytes:
    """The ``keyed`` scheme's key of ``client``."""
    return hmac.digest(secret, CLIENT_KEY_LABEL + struct.pack(">Q", client), hashlib.sha256)


def client_mac_key(secret: bytes, replica: int, client: int) -> bytes:
    """The ``mac`` scheme's key shared by ``client`` and ``replica``."""
    label = CLIENT_MAC_LABEL + struct.pack(">IQ", replica, client)
    return hmac.digest(secret, label, hashlib.sha256)


class Memo:
    """Authenticators already checked, the oldest forgotten first (bounded)."""

    __slots__ = ("entries", "entries_max")

    def __init__(self, entries_max: int) -> None:
        self.entries_max = entries_max
        self.entries: dict[bytes, None] = {}

    def __contains__(self, key: bytes) -> bool:
        return key in self.entries

    def add(self, key: bytes) -> None:
        entries = self.entries
        if len(entries) >= self.entries_max:
            del entries[next(iter(entries))]
        entries[key] = None


class AuthenticatedClients:
    """What the Byzantine schemes share: unwrapping, well-formedness, the memo."""

    carries = True
    rechecks = True

    def __init__(self, codec: Codec, verified_max: int) -> None:
        self.codec = codec
        self.memo = Memo(verified_max)

    def authenticate(self, payload: Any) -> Admitted | str:
        if type(payload) is not AuthenticatedRequest:
            return "bad_request"
        if type(payload.request) is not ClientRequest:
            return "bad_request"
        if not self.check(payload):
            return "unauthenticated"
        return payload.request, payload

    def claimed(self, payload: Any) -> ClientRequest | None:
        if type(payload) is AuthenticatedRequest and type(payload.request) is ClientRequest:
            return payload.request
        return None

    def check(self, carried: AuthenticatedRequest) -> bool:
        request = carried.request
        if type(request) is not ClientRequest or type(request.client) is not int:
            return False
        key, authenticator = carried.key, carried.authenticator  # typed by the codec
        data = signed_bytes(self.codec, request)
        if data is None:
            return False
        # The memo is keyed by everything the verdict depends on.
        fingerprint = hashlib.blake2b(data, digest_size=16)
        fingerprint.update(struct.pack(">I", len(key)) + key + authenticator)
        memo_key = fingerprint.digest()
        if memo_key in self.memo:
            return True
        if not self.verify(request.client, key, data, authenticator):
            return False
        self.memo.add(memo_key)
        return True

    def check_proposed(self, carried: AuthenticatedRequest, proposer: int) -> bool:
        return self.check(carried)

    def check_committed(self, carried: AuthenticatedRequest) -> bool:
        return self.check(carried)

    def verify(self, client: int, key: bytes, data: bytes, authenticator: bytes) -> bool:
        raise NotImplementedError


class SignedClients(AuthenticatedClients):
    """Signature schemes, checkable by every replica alike: ``ed25519`` and ``keyed``."""

    def __init__(
        self,
        codec: Codec,
        scheme: str = ED25519,
        *,
        secret: bytes = SIMULATION_CLIENT_SECRET,
        verified_max: int = 4096,
        nodes: Signer | None = None,
        group: int | None = None,
    ) -> None:
        super().__init__(codec, verified_max)
        assert scheme in (ED25519, KEYED), scheme
        self.scheme = scheme
        self.secret = secret
        self.nodes = nodes  # checks node-vouched requests (None: refuses them)
        # A node vouches for a request of one group (``group_domain``): its vouch
        # for a call into another group of the node never verifies here.
        self.group = group

    def check_proposed(self, carried: AuthenticatedRequest, proposer: int) -> bool:
        """A request the proposer vouches for is taken on the proposal's signature
        (ADR 0028): the proposer could sign it as easily, so checking its own
        signature proves nothing more. Any other request: :meth:`check`."""
        request = carried.request
        if (
            type(request) is ClientRequest
            and type(request.client) is int
            and vouching_node(request.client) == proposer
            and carried.key == node_key(proposer)
        ):
            return True
        return self.check(carried)

    def check_committed(self, carried: AuthenticatedRequest) -> bool:
        """Node-vouched requests are not checked again at execution (ADR 0028):
        a committed batch was validated by a correct replica (its signature, or
        its proposer's own), and a request the proposer vouched for may carry no
        valid signature of its own. Client-signed requests are checked again."""
        key = carried.key
        if len(key) == NODE_KEY_BYTES and key.startswith(NODE_KEY_PREFIX):
            return True
        return self.check(carried)

    def verify(self, client: int, key: bytes, data: bytes, authenticator: bytes) -> bool:
        if key.startswith(NODE_KEY_PREFIX):
            return self.verify_vouched(client, key, data, authenticator)
        if self.scheme == KEYED:
            if key or len(authenticator) != HMAC_BYTES or client < 0:
                return False
            expected = hmac.digest(client_key(self.secret, client), data, hashlib.sha256)
            return hmac.compare_digest(expected, authenticator)
        if len(key) != ED25519_PUBLIC_BYTES or len(authenticator) != ED25519_SIGNATURE_BYTES:
            return False
        if client != client_id_of(key):
            return False
        try:
            Ed25519PublicKey.from_public_bytes(key).verify(authenticator, data)
        except (InvalidSignature, ValueError):
            return False
        return True


    def verify_vouched(self, client: int, key: bytes, data: bytes, authenticator: bytes) -> bool:
        nodes = self.nodes
        if nodes is None or len(key) != NODE_KEY_BYTES:
            return False
        (node,) = struct.unpack(">H", key[len(NODE_KEY_PREFIX) :])
        if vouching_node(client) != node:
            return False
        return nodes.verify(node, group_domain(self.group, data), authenticator)


class MacClients(AuthenticatedClients):
    """The ``mac`` scheme: this replica checks its own entry of the vector."""

    rechecks = False

    def __init__(
        self,
        codec: Codec,
        replica: int,
        n: int,
        *,
        secret: bytes = SIMULATION_CLIENT_SECRET,
        verified_max: int = 4096,
    ) -> None:
        super().__init__(codec, verified_max)
        self.replica = replica
        self.n = n
        self.secret = secret

    def verify(self, client: int, key: bytes, data: bytes, authenticator: bytes) -> bool:
        if key or len(authenticator) != HMAC_BYTES * self.n or client < 0:
            return False
        start = HMAC_BYTES * self.replica
        mine = authenticator[start : start + HMAC_BYTES]
        mac_key = client_mac_key(self.secret, self.replica, client)
        return hmac.compare_digest(hmac.digest(mac_key, data, hashlib.sha256), mine)


# -- the client's side --------------------------------------------------------------------


class ClientSigner(Protocol):
    """Authenticates a client's requests (the client library and simulated clients)."""

    @property
    def client(self) -> int:
        """The client id this signer speaks for."""
        ...

    def wrap(self, request: ClientRequest) -> AuthenticatedRequest:
        """``request`` with its authenticator."""
        ...


class Ed25519ClientSigner:
    """A client of the ``ed25519`` scheme; its id is :func:`client_id_of` its public key.
    The private key is given (raw 32 bytes): generating one is the host's business."""

    def __init__(self, codec: Codec, private_key: bytes) -> None:
        self.codec = codec
        self.private = Ed25519PrivateKey.from_private_bytes(private_key)
        self.public = self.private.public_key().public_bytes_raw()
        self.client = client_id_of(self.public)

    def wrap(self, request: ClientRequest) -> AuthenticatedRequest:
        assert request.client == self.client
        data = signed_bytes(self.codec, request)
        assert data is not None
        return AuthenticatedRequest(request, self.public, self.private.sign(data))


class NodeClientSigner:
    """Requests of an in-node client (a node's Redis front), signed by the node,
    within the signing domain of the group the request is for (``group``;
    ``None``: a single-group node). In-node client ids carry no group (a node's
    sessions are per group), so without the domain a Byzantine node could replay
    a correct node's vouched request of one group into another, where the same
    (client, seq) then answers the correct node's next call with the replayed
    command's result (``txn-minbft`` seed 50 under ``silent,forge``)."""

    def __init__(self, codec: Codec, signer: Signer) -> None:
        self.codec = codec
        self.signer = signer
        self.key = node_key(signer.node_id)

    def wrap(self, request: ClientRequest, group: int | None = None) -> AuthenticatedRequest:
        assert vouching_node(request.client) == self.signer.node_id
        data = signed_bytes(self.codec, request)
        assert data is not None
        return AuthenticatedRequest(request, self.key, self.signer.sign(group_domain(group, data)))


class KeyedClientSigner:
    """A client of the ``keyed`` scheme."""

    def __init__(self, codec: Codec, client: int, secret: bytes = SIMULATION_CLIENT_SECRET):
        self.codec = codec
        self.client = client
        self.key = client_key(secret, client)

    def wrap(self, request: ClientRequest) -> AuthenticatedRequest:
        assert request.client == self.client
        data = signed_bytes(self.codec, request)
        assert data is not None
        return AuthenticatedRequest(request, b"", hmac.digest(self.key, data, hashlib.sha256))


class MacClientSigner:
    """A client of the ``mac`` scheme (one MAC per replica)."""

    def __init__(
        self, codec: Codec, client: int, n: int, secret: bytes = SIMULATION_CLIENT_SECRET
    ) -> None:
        self.codec = codec
        self.client = client
        self.keys = [client_mac_key(secret, replica, client) for replica in range(n)]

    def wrap(self, request: ClientRequest) -> AuthenticatedRequest:
        assert request.client == self.client
        data = signed_bytes(self.codec, request)
        assert data is not None
        macs = b"".join(hmac.digest(key, data, hashlib.sha256) for key in self.keys)
        return AuthenticatedRequest(request, b"", macs)
