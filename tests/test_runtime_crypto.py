"""Conformance of every Authenticator implementation (MAC and Ed25519) to the
contract in replicaio/runtime/crypto.py, and the pairwise key derivation."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from replicaio.core.errors import ConfigError
from replicaio.runtime.crypto import (
    Authenticator,
    Ed25519Authenticator,
    HmacAuthenticator,
    generate_ed25519_key,
    pair_key,
)

SECRET = b"0123456789abcdef0123456789abcdef"
NODES = (0, 1, 2)
Make = Callable[[], dict[int, Authenticator]]


def make_hmac() -> dict[int, Authenticator]:
    return {node: HmacAuthenticator(node, SECRET, NODES) for node in NODES}


def make_ed25519() -> dict[int, Authenticator]:
    keys = {node: generate_ed25519_key() for node in NODES}
    publics = {node: public for node, (_, public) in keys.items()}
    return {node: Ed25519Authenticator(node, keys[node][0], publics) for node in NODES}


IMPLEMENTATIONS: dict[str, Make] = {"hmac": make_hmac, "ed25519": make_ed25519}


@pytest.fixture(params=list(IMPLEMENTATIONS))
def nodes(request: pytest.FixtureRequest) -> dict[int, Authenticator]:
    return IMPLEMENTATIONS[request.param]()


def test_a_tag_verifies_at_its_addressee(nodes: dict[int, Authenticator]) -> None:
    tag = nodes[0].tag(1, b"data")
    assert len(tag) == nodes[0].tag_bytes
    assert nodes[1].verify(0, b"data", tag)


def test_other_data_another_sender_or_a_damaged_tag_do_not_verify(
    nodes: dict[int, Authenticator],
) -> None:
    tag = nodes[0].tag(1, b"data")
    assert not nodes[1].verify(0, b"datA", tag)
    assert not nodes[1].verify(2, b"data", tag)  # claimed to come from node 2
    assert not nodes[1].verify(0, b"data", bytes([tag[0] ^ 1]) + tag[1:])
    assert not nodes[1].verify(0, b"data", tag[:-1])  # wrong length: False, no exception
    assert not nodes[1].verify(0, b"data", b"")


def test_unknown_peers_are_refused_without_raising(nodes: dict[int, Authenticator]) -> None:
    tag = nodes[0].tag(1, b"data")
    assert not nodes[1].knows(9)
    assert not nodes[1].verify(9, b"data", tag)
    assert not nodes[1].knows(1)  # a node is not its own peer
    assert nodes[1].knows(0)


def test_only_signatures_are_transferable(nodes: dict[int, Authenticator]) -> None:
    tag = nodes[0].tag(1, b"proof")
    # A third node can check a signature, never a MAC meant for someone else.
    assert nodes[2].verify(0, b"proof", tag) is nodes[0].transferable


def test_pair_keys_are_symmetric_and_distinct_per_pair() -> None:
    assert pair_key(SECRET, 0, 1) == pair_key(SECRET, 1, 0)
    assert pair_key(SECRET, 0, 1) != pair_key(SECRET, 0, 2)
    assert pair_key(SECRET, 0, 1) != pair_key(SECRET[::-1], 0, 1)
    assert len(pair_key(SECRET, 0, 1)) == 32


def test_a_short_secret_or_a_mismatched_key_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        HmacAuthenticator(0, b"short", NODES)
    private, public = generate_ed25519_key()
    _, other = generate_ed25519_key()
    with pytest.raises(ConfigError, match="does not match"):
        Ed25519Authenticator(0, private, {0: other, 1: public})
    with pytest.raises(ConfigError, match="32 raw bytes"):
        Ed25519Authenticator(0, private[:31], {0: public})
