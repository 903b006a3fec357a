"""Conformance of every Signer (keyed hashes, Ed25519) to the contract in
replicaio/core/signing.py, the route from protocol code (Context.sign/verify),
and the signers a live node gets from its cluster file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from replicaio.assembly import protocol_factory
from replicaio.core.config import ClusterConfig
from replicaio.core.errors import ConfigError
from replicaio.core.node import Node
from replicaio.core.signing import (
    OWN_SIGNATURES_MAX,
    SIGNATURE_BYTES_MAX,
    SIMULATION_SECRET,
    Ed25519Signer,
    KeyedHashSigner,
    Signer,
    simulation_signer,
)
from replicaio.runtime.config import load_cluster_file, render_cluster_file
from replicaio.runtime.crypto import generate_ed25519_key

N = 4
Make = Callable[[], dict[int, Signer]]


def make_keyed_hash() -> dict[int, Signer]:
    return {node: KeyedHashSigner(node, b"k" * 32, N) for node in range(N)}


def make_ed25519() -> dict[int, Signer]:
    keys = {node: generate_ed25519_key() for node in range(N)}
    publics = {node: public for node, (_, public) in keys.items()}
    return {node: Ed25519Signer(node, keys[node][0], publics) for node in range(N)}


IMPLEMENTATIONS: dict[str, Make] = {"hmac-sha256": make_keyed_hash, "ed25519": make_ed25519}


@pytest.fixture(params=list(IMPLEMENTATIONS))
def signers(request: pytest.FixtureRequest) -> dict[int, Signer]:
    return IMPLEMENTATIONS[request.param]()


def test_any_node_verifies_a_signature_a_third_party_made(signers: dict[int, Signer]) -> None:
    signature = signers[0].sign(b"PREPARE v=1 n=7")
    assert len(signature) == signers[0].signature_bytes <= SIGNATURE_BYTES_MAX
    for node in range(N):  # the signer itself too: a certificate is checked by everyone
        assert signers[node].verify(0, b"PREPARE v=1 n=7", signature)


def test_own_signatures_verify_from_memory_with_ed25519_s_answers() -> None:
    """An Ed25519 signer verifies the signatures it made by lookup; a lookup never
    accepts what Ed25519 would refuse (another signature of the same data, a
    signature of other data, another node's claim), and the memo is bounded."""
    signers = make_ed25519()
    own = signers[1]
    assert isinstance(own, Ed25519Signer)
    signature = own.sign(b"request")
    assert own.verify(1, b"request", signature)
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert not own.verify(1, b"request", flipped)
    assert not own.verify(1, b"requesT", signature)
    assert not own.verify(0, b"request", signature)
    assert signers[0].verify(1, b"request", signature)  # and others agree
    for number in range(OWN_SIGNATURES_MAX + 5):
        own.sign(b"%d" % number)
    assert len(own.own) == OWN_SIGNATURES_MAX
    assert own.verify(1, b"request", signature)  # forgotten: Ed25519 answers the same


def test_signing_is_deterministic(signers: dict[int, Signer]) -> None:
    assert signers[2].sign(b"data") == signers[2].sign(b"data")
    assert signers[2].sign(b"data") != signers[2].sign(b"datA")
    assert signers[2].sign(b"data") != signers[1].sign(b"data")


def test_other_data_another_signer_or_a_damaged_signature_do_not_verify(
    signers: dict[int, Signer],
) -> None:
    signature = signers[0].sign(b"data")
    assert not signers[1].verify(0, b"datA", signature)
    assert not signers[1].verify(2, b"data", signature)  # claimed to be node 2's
    assert not signers[1].verify(0, b"data", bytes([signature[0] ^ 1]) + signature[1:])
    assert not signers[1].verify(0, b"data", signature[:-1])
    assert not signers[1].verify(0, b"data", b"")


BAD_INPUTS: list[tuple[Any, Any, Any]] = [
    (-1, b"data", None),
    (N, b"data", None),
    (2**64, b"data", None),
    ("0", b"data", None),
    (True, b"data", None),  # a bool is not a node id
    (0, "data", None),
    (0, None, None),
    (0, b"data", "signature"),
    (0, b"data", 17),
    (0, bytearray(b"data"), None),
]


@pytest.mark.parametrize("node, data, signature", BAD_INPUTS)
def test_verify_never_raises_on_bad_input(
    signers: dict[int, Signer], node: Any, data: Any, signature: Any
) -> None:
    good = signers[0].sign(b"data")
    assert signers[1].verify(node, data, good if signature is None else signature) is False


def test_keyed_hash_keys_depend_on_the_secret_and_the_node() -> None:
    one = KeyedHashSigner(0, b"a" * 32, N)
    other = KeyedHashSigner(0, b"b" * 32, N)
    assert one.sign(b"x") != other.sign(b"x")
    assert not other.verify(0, b"x", one.sign(b"x"))
    with pytest.raises(ConfigError):
        KeyedHashSigner(0, b"short", N)
    with pytest.raises(ConfigError):
        KeyedHashSigner(N, b"a" * 32, N)


def test_ed25519_refuses_a_private_key_that_is_not_the_nodes() -> None:
    private, _ = generate_ed25519_key()
    _, other_public = generate_ed25519_key()
    with pytest.raises(ConfigError):
        Ed25519Signer(0, private, {0: other_public})
    with pytest.raises(ConfigError):
        Ed25519Signer(0, private[:-1], {})


def test_protocol_code_signs_through_its_context() -> None:
    config = ClusterConfig(n=N, f=1)
    nodes = [Node(node, config, protocol_factory("bracha")) for node in range(N)]
    signature = nodes[1].root.sign(b"CHECKPOINT 16")
    assert signature == simulation_signer(1, N).sign(b"CHECKPOINT 16")
    assert nodes[3].root.verify(1, b"CHECKPOINT 16", signature)
    assert not nodes[3].root.verify(2, b"CHECKPOINT 16", signature)
    assert nodes[0].root.signer.name == "hmac-sha256"


def test_a_node_refuses_another_nodes_signer() -> None:
    config = ClusterConfig(n=N, f=1)
    with pytest.raises(ConfigError):
        Node(0, config, protocol_factory("bracha"), signer=simulation_signer(1, N))


def test_the_simulation_secret_is_not_a_live_clusters() -> None:
    live = KeyedHashSigner(0, bytes.fromhex("ab" * 32), N)
    assert live.sign(b"x") != KeyedHashSigner(0, SIMULATION_SECRET, N).sign(b"x")


def cluster_nodes(tmp_path: Path, *, keys: bool) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = []
    for node_id in range(N):
        entry: dict[str, Any] = {
            "id": node_id, "peer": f"127.0.0.1:{7000 + node_id}",
            "client": f"127.0.0.1:{7100 + node_id}", "data_dir": f"n{node_id}",
        }
        if keys:
            private, public = generate_ed25519_key()
            (tmp_path / f"node{node_id}.key").write_text(private.hex())
            entry.update(key_file=f"node{node_id}.key", public_key=public.hex())
        nodes.append(entry)
    return nodes


def test_an_ed25519_cluster_signs_with_its_node_keys(tmp_path: Path) -> None:
    text = render_cluster_file(protocol="bracha", nodes=cluster_nodes(tmp_path, keys=True),
                               auth="ed25519")
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    cluster = load_cluster_file(path)
    signers = [cluster.signer(node) for node in range(N)]
    assert all(isinstance(signer, Ed25519Signer) for signer in signers)
    signature = signers[2].sign(b"VIEW-CHANGE 3")
    assert signers[0].verify(2, b"VIEW-CHANGE 3", signature)
    assert not signers[0].verify(1, b"VIEW-CHANGE 3", signature)


def test_an_hmac_cluster_signs_with_keyed_hashes_of_its_secret(tmp_path: Path) -> None:
    (tmp_path / "secret.hex").write_text(("s" * 32).encode().hex())
    text = render_cluster_file(protocol="bracha", nodes=cluster_nodes(tmp_path, keys=False),
                               auth="hmac", secret_file="secret.hex")
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    cluster = load_cluster_file(path)
    signer = cluster.signer(1)
    assert isinstance(signer, KeyedHashSigner)
    assert signer.sign(b"x") == KeyedHashSigner(1, b"s" * 32, N).sign(b"x")
