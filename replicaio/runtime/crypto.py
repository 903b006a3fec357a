"""Channel authentication behind one interface: pairwise MACs or Ed25519 signatures.

Who uses it: the transport (``replicaio.runtime.transport``) authenticates the
handshake through an :class:`Authenticator`, which also covers the ephemeral
X25519 shares that the connection's per-frame MAC keys come from (so an
Ed25519 cluster signs once per connection, not once per frame); protocol code
never sees it, so switching a cluster from MACs to signatures changes the
cluster file, not the protocol (STYLE: crypto is injected; after Mir's crypto
modules).

Contract (checked for both implementations by ``tests/test_runtime_crypto.py``):

* ``tag(peer, data)`` authenticates ``data`` for ``peer`` (the node on the other
  end of the channel); ``verify(peer, data, tag)`` is True exactly when ``tag``
  was made by ``peer`` for this node over these bytes. It never raises on bad
  input: a wrong length, a wrong key, an unknown peer are all ``False``.
* ``tag_bytes`` is the fixed length of every tag.
* ``transferable`` says whether a third node can check a tag too (signatures:
  yes, a proof; MACs: no, only the pair shares the key).

Implementations:

* :class:`HmacAuthenticator`: HMAC-SHA256 with a pairwise key. The key of the
  pair ``{a, b}`` is ``HMAC-SHA256(cluster secret, "replicaio pair v1" | min(a, b)
  | max(a, b))`` (ids as 4-byte big-endian), an HKDF-Expand-style derivation: the
  pair's key reveals nothing about the secret or other pairs' keys. Tags are
  32 bytes, cost about a microsecond per small message.
* :class:`Ed25519Authenticator`: an Ed25519 signature (64 bytes) by the sender's
  private key, checked with its public key from the cluster file. Transferable;
  about 50x slower than a MAC.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Mapping
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from replicaio.core import signing
from replicaio.core.errors import ConfigError
from replicaio.core.signing import ed25519_keys

ED25519_KEY_BYTES = signing.ED25519_KEY_BYTES  # a raw key, private or public

SECRET_BYTES_MIN = 16
PAIR_LABEL = b"replicaio pair v1"
HMAC_TAG_BYTES = 32
ED25519_TAG_BYTES = 64


class Authenticator(Protocol):
    """Authenticates bytes between this node and a peer; see the module docstring."""

    @property
    def name(self) -> str: ...

    @property
    def tag_bytes(self) -> int: ...

    @property
    def transferable(self) -> bool: ...

    def knows(self, peer: int) -> bool:
        """Whether ``peer`` is a node this authenticator has key material for."""
        ...

    def tag(self, peer: int, data: bytes) -> bytes:
        """A tag over ``data`` for ``peer``; ``peer`` must be known (caller's bug otherwise)."""
        ...

    def verify(self, peer: int, data: bytes, tag: bytes) -> bool:
        """True iff ``tag`` authenticates ``data`` as sent by ``peer`` to this node."""
        ...


def pair_key(secret: bytes, a: int, b: int) -> bytes:
    """The HMAC key shared by nodes ``a`` and ``b`` (order does not matter)."""
    low, high = min(a, b), max(a, b)
    return hmac.digest(secret, PAIR_LABEL + struct.pack(">II", low, high), hashlib.sha256)


class HmacAuthenticator:
    """HMAC-SHA256 with pairwise keys derived from one cluster secret."""

    name = "hmac-sha256"
    tag_bytes = HMAC_TAG_BYTES
    transferable = False

    def __init__(self, node_id: int, secret: bytes, nodes: range | tuple[int, ...]) -> None:
        if len(secret) < SECRET_BYTES_MIN:
            raise ConfigError(f"cluster secret must be at least {SECRET_BYTES_MIN} bytes")
        if node_id not in nodes:
            raise ConfigError(f"node {node_id} is not in the cluster")
        self.node_id = node_id
        self.keys: dict[int, bytes] = {
            peer: pair_key(secret, node_id, peer) for peer in nodes if peer != node_id
        }

    def knows(self, peer: int) -> bool:
        return peer in self.keys

    def tag(self, peer: int, data: bytes) -> bytes:
        return hmac.digest(self.keys[peer], data, hashlib.sha256)

    def verify(self, peer: int, data: bytes, tag: bytes) -> bool:
        key = self.keys.get(peer)
        if key is None or len(tag) != HMAC_TAG_BYTES:
            return False
        return hmac.compare_digest(hmac.digest(key, data, hashlib.sha256), tag)


class Ed25519Authenticator:
    """Ed25519 signatures: this node's private key, every peer's public key."""

    name = "ed25519"
    tag_bytes = ED25519_TAG_BYTES
    transferable = True

    def __init__(
        self, node_id: int, private_key: bytes, public_keys: Mapping[int, bytes]
    ) -> None:
        self.node_id = node_id
        self.private, self.publics = ed25519_keys(node_id, private_key, public_keys)
        del self.publics[node_id]  # (its own: a channel has a peer at the other end)

    def knows(self, peer: int) -> bool:
        return peer in self.publics

    def tag(self, peer: int, data: bytes) -> bytes:
        # The signature does not depend on the peer: anyone can check it.
        assert peer in self.publics, f"unknown peer {peer}"
        return self.private.sign(data)

    def verify(self, peer: int, data: bytes, tag: bytes) -> bool:
        public = self.publics.get(peer)
        if public is None or len(tag) != ED25519_TAG_BYTES:
            return False
        try:
            public.verify(tag, data)
        except InvalidSignature:
            return False
        return True


def generate_ed25519_key() -> tuple[bytes, bytes]:
    """A fresh ``(private, public)`` raw key pair (for ``cluster up`` and tests)."""
    private = Ed25519PrivateKey.generate()
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()
