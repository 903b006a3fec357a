"""Signatures for protocol code: deterministic, transferable, behind one interface.

Who uses it: protocol and SMR code, through :meth:`Context.sign
<replicaio.core.context.Context.sign>` and :meth:`Context.verify
<replicaio.core.context.Context.verify>` (or ``context.signer``). A node gets its
:class:`Signer` as configuration (``Node(..., signer=...)``); protocol code never
sees a key. Channel authentication (``replicaio.runtime.crypto``) is a different
thing: it proves who sent a frame to *this* node; a signature proves to *any*
node who signed some bytes, so a quorum of signed messages is a certificate a
third party can check (PBFT's prepared and checkpoint certificates, client
request signatures).

Contract (both implementations, ``tests/test_signing.py``):

* ``sign(data)`` signs ``data`` as this node. It is deterministic: the same
  node signing the same bytes gives the same signature (no randomness, no
  clock), so a step computes the same effects in the simulator, in replay and
  live.
* ``verify(node, data, signature)`` is True exactly when ``signature`` is
  ``node``'s signature of ``data``. It never raises on bad input: an unknown
  node, a non-bytes argument, a wrong length are all ``False``.
* ``signature_bytes`` is the length of every signature.

Implementations:

* :class:`KeyedHashSigner` (``"hmac-sha256"``, the simulator's): node ``i``
  signs with ``HMAC-SHA256(k_i, data)`` where ``k_i = HMAC-SHA256(cluster
  secret, "replicaio sign v1" | i)``. Verifying needs ``k_node``, so every
  signer holds every node's key: it is unforgeable only against code that
  never receives the cluster secret or a signer's key table. In the
  simulator that is the adversary (its strategies sign only through their own
  node's ``sign``); the secret is :data:`SIMULATION_SECRET`, public and fixed,
  so runs replay. A live cluster with ``auth.kind = "hmac"`` uses it with the
  cluster secret: its members trust each other not to sign for others (every
  member could), so live Byzantine tolerance needs Ed25519. About a
  microsecond a signature.
* :class:`Ed25519Signer` (``"ed25519"``, live): Ed25519 (RFC 8032, deterministic
  by construction) with this node's private key and every node's public key,
  the keys of the cluster file's ``ed25519`` auth. Unforgeable without the
  private key; about 50 microseconds to verify. It remembers the last
  ``OWN_SIGNATURES_MAX`` signatures it made (by the SHA-256 of the data), so
  verifying one of them costs a lookup: a node checks its own signatures
  often (its Redis front's requests, signed by the node, are authenticated
  again by SMR before they are ordered). Signing is deterministic, so the
  answer is the one Ed25519 would give.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Mapping
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from replicaio.core.errors import ConfigError

__all__ = [
    "ED25519_KEY_BYTES",
    "ED25519_SIGNATURE_BYTES",
    "HMAC_SIGNATURE_BYTES",
    "SIGNATURE_BYTES_MAX",
    "SIMULATION_SECRET",
    "Ed25519Signer",
    "KeyedHashSigner",
    "Signer",
    "simulation_signer",
]

SIGN_LABEL = b"replicaio sign v1"
HMAC_SIGNATURE_BYTES = 32
ED25519_SIGNATURE_BYTES = 64
ED25519_KEY_BYTES = 32
SIGNATURE_BYTES_MAX = 64  # the longest signature of any scheme (message bounds use it)
OWN_SIGNATURES_MAX = 4096  # an Ed25519Signer's memo of the signatures it made
SECRET_BYTES_MIN = 16
# The simulator's cluster secret: public on purpose (runs must replay from the
# seed alone). Unforgeability in simulation rests on the adversary never being
# handed a signer other than its own node's.
SIMULATION_SECRET = b"replicaio simulation signing secret v1"


class Signer(Protocol):
    """Signs as one node, verifies any node's signature; see the module docstring."""

    @property
    def name(self) -> str: ...

    @property
    def node_id(self) -> int: ...

    @property
    def signature_bytes(self) -> int: ...

    def sign(self, data: bytes) -> bytes:
        """This node's signature of ``data`` (deterministic)."""
        ...

    def verify(self, node: int, data: bytes, signature: bytes) -> bool:
        """True iff ``signature`` is ``node``'s signature of ``data``; never raises."""
        ...


def well_typed(node: object, data: object, signature: object) -> bool:
    """Whether verify's arguments have the types it needs (a peer may send anything)."""
    return type(node) is int and isinstance(data, bytes) and isinstance(signature, bytes)


def node_key(secret: bytes, node: int) -> bytes:
    """Node ``node``'s signing key under the cluster ``secret``."""
    return hmac.digest(secret, SIGN_LABEL + struct.pack(">I", node), hashlib.sha256)


class KeyedHashSigner:
    """HMAC-SHA256 signatures with per-node keys derived from a cluster secret."""

    __slots__ = ("keys", "node_id", "own_key")

    name = "hmac-sha256"
    signature_bytes = HMAC_SIGNATURE_BYTES

    def __init__(self, node_id: int, secret: bytes, n: int) -> None:
        if len(secret) < SECRET_BYTES_MIN:
            raise ConfigError(f"signing secret must be at least {SECRET_BYTES_MIN} bytes")
        if not 0 <= node_id < n:
            raise ConfigError(f"node {node_id} is not in 0..{n - 1}")
        self.node_id = node_id
        self.keys: tuple[bytes, ...] = tuple(node_key(secret, node) for node in range(n))
        self.own_key = self.keys[node_id]

    def sign(self, data: bytes) -> bytes:
        return hmac.digest(self.own_key, data, hashlib.sha256)

    def verify(self, node: int, data: bytes, signature: bytes) -> bool:
        if not well_typed(node, data, signature) or not 0 <= node < len(self.keys):
            return False
        if len(signature) != HMAC_SIGNATURE_BYTES:
            return False
        expected = hmac.digest(self.keys[node], data, hashlib.sha256)
        return hmac.compare_digest(expected, signature)


def ed25519_keys(
    node_id: int, private_key: bytes, public_keys: Mapping[int, bytes], *,
    kind: str = "Ed25519", who: str = "node",
) -> tuple[Ed25519PrivateKey, dict[int, Ed25519PublicKey]]:
    """Node ``node_id``'s Ed25519 private key and every node's public key (its
    own among them), from the raw keys of a cluster file. Raises
    :class:`~replicaio.core.errors.ConfigError` for a key of the wrong length,
    or a private key whose public key is not ``public_keys[node_id]``; its
    message names the keys (``kind``) and whose they are (``who``, then the id).
    (The channel's ``Ed25519Authenticator`` and MinBFT's per-replica USIG keys,
    ``Ed25519KeyedUsigScheme``, load their keys here too.)"""
    if len(private_key) != ED25519_KEY_BYTES:
        raise ConfigError(f"{who} {node_id}: {kind} private key of {len(private_key)} bytes, "
                          f"not {ED25519_KEY_BYTES} raw bytes")
    private = Ed25519PrivateKey.from_private_bytes(private_key)
    own = private.public_key().public_bytes_raw()
    if public_keys.get(node_id) != own:
        raise ConfigError(f"{who} {node_id}: {kind} private key does not match its public key")
    publics: dict[int, Ed25519PublicKey] = {}
    for node, raw in public_keys.items():
        if len(raw) != ED25519_KEY_BYTES:
            raise ConfigError(f"{who} {node}: {kind} public key of {len(raw)} bytes, "
                              f"not {ED25519_KEY_BYTES} raw bytes")
        publics[node] = Ed25519PublicKey.from_public_bytes(raw)
    return private, publics


class Ed25519Signer:
    """Ed25519 signatures: this node's private key, every node's public key."""

    __slots__ = ("node_id", "own", "private", "publics")

    name = "ed25519"
    signature_bytes = ED25519_SIGNATURE_BYTES

    def __init__(self, node_id: int, private_key: bytes, public_keys: Mapping[int, bytes]) -> None:
        self.node_id = node_id
        self.private, self.publics = ed25519_keys(node_id, private_key, public_keys)
        # SHA-256 of data -> this node's signature of it, oldest first (bounded).
        self.own: dict[bytes, bytes] = {}

    def sign(self, data: bytes) -> bytes:
        signature = self.private.sign(data)
        own = self.own
        if len(own) >= OWN_SIGNATURES_MAX:
            del own[next(iter(own))]
        own[hashlib.sha256(data).digest()] = signature
        return signature

    def verify(self, node: int, data: bytes, signature: bytes) -> bool:
        if not well_typed(node, data, signature):
            return False
        if node == self.node_id:
            made = self.own.get(hashlib.sha256(data).digest())
            if made is not None and hmac.compare_digest(made, signature):
                return True  # this signer made it: Ed25519 would say the same
        public = self.publics.get(node)
        if public is None:
            return False
        if len(signature) != ED25519_SIGNATURE_BYTES:
            return False
        try:
            public.verify(signature, data)
        except InvalidSignature:
            return False
        return True


def simulation_signer(node_id: int, n: int) -> KeyedHashSigner:
    """The signer a node gets unless its host passes one (simulator, replay,
    scenarios): keyed hashes under :data:`SIMULATION_SECRET`."""
    return KeyedHashSigner(node_id, SIMULATION_SECRET, n)
