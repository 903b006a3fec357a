"""The TOML cluster file: a valid file loads; every invalid one raises a
ClusterFileError naming the field, before anything starts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from test_usig import DictStore

from replicaio.assembly import (
    RAFT_LIVE_NOTICE_US,
    RAFT_LIVE_ROUND_ACK,
    RAFT_LIVE_SNAPSHOT_KIB,
    live_protocol_params,
    minbft_of,
    protocol_factory,
)
from replicaio.core.node import Node, NodeParams
from replicaio.protocols.minbft.usig import (
    Ed25519KeyedUsigScheme,
    HmacUsigScheme,
    Usig,
    simulation_scheme,
    verify_ui,
)
from replicaio.runtime.config import (
    ClusterFileError,
    load_cluster_file,
    render_cluster_file,
    write_usig_keys,
)
from replicaio.runtime.crypto import Ed25519Authenticator, HmacAuthenticator, generate_ed25519_key
from replicaio.smr.params import SmrConstants

SECRET_HEX = "ab" * 32


EXAMPLE = f"""
[protocol]
name = "bracha"
f = 1

[auth]
kind = "hmac"
secret = "{SECRET_HEX}"

[node]
tick_us = 10000

[transport]
outbound_queue_max = 1024

[host]
fsync = false

[[nodes]]
id = 0
peer = "127.0.0.1:7000"
client = "127.0.0.1:7100"
data_dir = "data/node0"
metrics = "127.0.0.1:9100"

[[nodes]]
id = 1
peer = "127.0.0.1:7001"
client = "127.0.0.1:7101"
data_dir = "data/node1"

[[nodes]]
id = 2
peer = "127.0.0.1:7002"
client = "127.0.0.1:7102"
data_dir = "data/node2"

[[nodes]]
id = 3
peer = "[::1]:7003"
client = "127.0.0.1:7103"
data_dir = "/var/lib/replicaio/node3"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    return path


def test_a_valid_file_loads_with_paths_relative_to_it(tmp_path: Path) -> None:
    cluster = load_cluster_file(write(tmp_path, EXAMPLE))
    assert cluster.protocol == "bracha"
    assert (cluster.n, cluster.f) == (4, 1)
    assert cluster.nodes[0].data_dir == tmp_path.resolve() / "data/node0"
    assert cluster.nodes[3].data_dir == Path("/var/lib/replicaio/node3")
    assert str(cluster.nodes[0].metrics) == "127.0.0.1:9100"
    assert cluster.nodes[1].metrics is None
    assert cluster.nodes[3].peer.host == "::1"
    assert cluster.node_params == NodeParams(tick_us=10_000)
    assert cluster.transport.outbound_queue_max == 1024
    assert cluster.host.fsync is False
    assert isinstance(cluster.authenticator(2), HmacAuthenticator)
    assert cluster.cluster_config().n == 4


def test_f_defaults_to_the_most_the_protocol_tolerates(tmp_path: Path) -> None:
    cluster = load_cluster_file(write(tmp_path, EXAMPLE.replace("f = 1\n", "")))
    assert cluster.f == 1


def test_protocol_params_become_the_registry_name(tmp_path: Path) -> None:
    text = EXAMPLE.replace('name = "bracha"\nf = 1\n',
                           'name = "raft"\n[protocol.params]\nsnapshot = 8\nbatch = 4\n')
    cluster = load_cluster_file(write(tmp_path, text))
    # (the live defaults added)
    assert cluster.protocol == "raft:batch=4,fill=4,notice_us=4000,roundack=2,snapshot=8"
    assert cluster.f == 1  # crash resilience: n = 4 tolerates 1
    bad = text.replace("snapshot = 8", "snapshots = 8")
    with pytest.raises(ClusterFileError) as caught:
        load_cluster_file(write(tmp_path, bad))
    assert caught.value.field == "protocol.params"


def test_live_raft_snapshots_are_sized_by_bytes_unless_the_file_says_otherwise(
    tmp_path: Path,
) -> None:
    """A live Raft service takes ``snapshotkib`` = ``RAFT_LIVE_SNAPSHOT_KIB`` and
    ``fill`` = its batch size (``raft_live_batch_fill``, 64) and ``notice_us`` =
    ``RAFT_LIVE_NOTICE_US`` by default (in its name,
    so its event logs replay the same); a file that names ``snapshot``, ``snapshotkib``
    or ``fill`` keeps what it says; other protocols are left alone (the simulator never
    reads a cluster file, so its defaults are unchanged)."""
    def loaded(name: str, params: str = "") -> str:
        table = f"[protocol.params]\n{params}" if params else ""
        text = EXAMPLE.replace('name = "bracha"\nf = 1\n', f'name = "{name}"\n{table}')
        return load_cluster_file(write(tmp_path, text)).protocol

    fill = (f"fill={SmrConstants().batch_requests_max},notice_us={RAFT_LIVE_NOTICE_US},"
            f"roundack={RAFT_LIVE_ROUND_ACK}")
    assert loaded("raft") == f"raft:{fill},snapshotkib={RAFT_LIVE_SNAPSHOT_KIB}"
    assert loaded("raft-forget-vote") == (
        f"raft-forget-vote:{fill},snapshotkib={RAFT_LIVE_SNAPSHOT_KIB}"
    )
    assert loaded("raft", "snapshotkib = 0\n") == f"raft:{fill},snapshotkib=0"
    assert loaded("raft", "snapshot = 8\n") == f"raft:{fill},snapshot=8"
    notice = f"notice_us={RAFT_LIVE_NOTICE_US}"
    ack = f"roundack={RAFT_LIVE_ROUND_ACK}"
    assert loaded("raft", "fill = 1\n") == (
        f"raft:fill=1,{notice},{ack},snapshotkib={RAFT_LIVE_SNAPSHOT_KIB}"
    )
    assert loaded("raft", "batch = 16\n") == (
        f"raft:batch=16,fill=16,{notice},{ack},snapshotkib={RAFT_LIVE_SNAPSHOT_KIB}"
    )
    assert loaded("raft", "notice_us = 0\n") == (
        f"raft:fill=64,notice_us=0,{ack},snapshotkib={RAFT_LIVE_SNAPSHOT_KIB}"
    )
    assert loaded("raft", "roundack = 0\n") == (
        f"raft:fill=64,{notice},roundack=0,snapshotkib={RAFT_LIVE_SNAPSHOT_KIB}"
    )
    assert loaded("pbft") == "pbft"
    # The Raft groups of a sharded service take the same defaults; BFT groups none.
    assert loaded("txn", "groups = 3\n") == (
        f"txn:fill=64,groups=3,{notice},snapshotkib={RAFT_LIVE_SNAPSHOT_KIB}"
    )
    assert loaded("txn-kv", "fill = 1\nsnapshot = 8\n") == f"txn-kv:fill=1,{notice},snapshot=8"
    assert loaded("txn-kv-pbft", "groups = 2\n") == "txn-kv-pbft:groups=2"
    assert live_protocol_params("bracha", {}) == {}


def test_the_frames_follow_the_protocols_largest_value(tmp_path: Path) -> None:
    """``values=`` (KiB) raises the largest value; the peer and client frames a
    node needs follow it by default, and a smaller explicit frame is refused
    naming the field (it would cut the value's log entry short)."""
    text = EXAMPLE.replace('name = "bracha"\nf = 1\n',
                           'name = "raft"\n[protocol.params]\nvalues = 20480\n')
    cluster = load_cluster_file(write(tmp_path, text))
    assert cluster.protocol == (
        "raft:fill=64,notice_us=4000,roundack=2,snapshotkib=1024,values=20480")
    assert cluster.transport.frame_bytes_max > 20 << 20
    assert cluster.host.client_frame_bytes_max > 20 << 20
    assert cluster.host.client_queue_bytes_max >= 2 * cluster.host.client_frame_bytes_max
    small = text.replace("[transport]\n", "[transport]\nframe_bytes_max = 16778240\n")
    assert small != text
    with pytest.raises(ClusterFileError) as caught:
        load_cluster_file(write(tmp_path, small))
    assert caught.value.field == "transport.frame_bytes_max"
    plain = load_cluster_file(write(tmp_path, EXAMPLE))  # no values=: the defaults stay
    assert plain.transport.frame_bytes_max == (16 << 20) + 1024


def test_transactional_clusters_take_their_groups(tmp_path: Path) -> None:
    text = EXAMPLE.replace('name = "bracha"\nf = 1\n',
                           'name = "txn"\n[protocol.params]\ngroups = 5\n')
    assert load_cluster_file(write(tmp_path, text)).protocol == (
        f"txn:fill=64,groups=5,notice_us={RAFT_LIVE_NOTICE_US},snapshotkib={RAFT_LIVE_SNAPSHOT_KIB}"
    )


def test_the_secret_may_come_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "secret.hex").write_text(SECRET_HEX + "\n")
    text = EXAMPLE.replace(f'secret = "{SECRET_HEX}"', 'secret_file = "secret.hex"')
    assert load_cluster_file(write(tmp_path, text)).secret == bytes.fromhex(SECRET_HEX)


def test_ed25519_nodes_read_their_own_key_file(tmp_path: Path) -> None:
    nodes: list[dict[str, Any]] = []
    for node_id in range(4):
        private, public = generate_ed25519_key()
        (tmp_path / f"node{node_id}.key").write_text(private.hex())
        nodes.append({"id": node_id, "peer": f"127.0.0.1:{7000 + node_id}",
                      "client": f"127.0.0.1:{7100 + node_id}", "data_dir": f"n{node_id}",
                      "key_file": f"node{node_id}.key", "public_key": public.hex()})
    text = render_cluster_file(protocol="bracha", nodes=nodes, auth="ed25519")
    cluster = load_cluster_file(write(tmp_path, text))
    assert isinstance(cluster.authenticator(1), Ed25519Authenticator)
    (tmp_path / "node1.key").write_text(generate_ed25519_key()[0].hex())
    with pytest.raises(ClusterFileError) as caught:
        cluster.authenticator(1)
    assert caught.value.field == "nodes[1].key_file"


BAD: dict[str, tuple[str, str, str]] = {
    # name: (text to replace, replacement, field named by the error)
    "no protocol": ('[protocol]\nname = "bracha"\nf = 1\n', "", "protocol"),
    "unknown protocol": ('name = "bracha"', 'name = "paxos"', "protocol.name"),
    "protocol params": ("f = 1\n", "f = 1\n[protocol.params]\nwindow = 3\n", "protocol.params"),
    "f too large": ("f = 1", "f = 2", "protocol.f"),
    "negative f": ("f = 1", "f = -1", "protocol.f"),
    "typo in a key": ("tick_us = 10000", "tick_ms = 10000", "node.tick_ms"),
    "bad node param": ("tick_us = 10000", "tick_us = 0", "node"),
    "wrong type": ("outbound_queue_max = 1024", 'outbound_queue_max = "1024"',
                   "transport.outbound_queue_max"),
    "bad bound": ("outbound_queue_max = 1024", "outbound_queue_max = 0",
                  "transport.outbound_queue_max"),
    "unknown service": ("fsync = false", 'client_service = "resp9"', "host.client_service"),
    "tiny compaction threshold": ("fsync = false", "fsync = false\nwal_compact_bytes = 100",
                                  "host.wal_compact_bytes"),
    "no pipeline": ("fsync = false", "fsync = false\npipeline = 0", "host.pipeline"),
    "unknown section": ("[host]", "[hosts]", "hosts"),
    "no port": ('peer = "127.0.0.1:7001"', 'peer = "127.0.0.1"', "nodes[1].peer"),
    "bad port": ('peer = "127.0.0.1:7001"', 'peer = "127.0.0.1:70001"', "nodes[1].peer"),
    "no client": ('client = "127.0.0.1:7101"\n', "", "nodes[1].client"),
    "duplicate id": ("id = 2", "id = 1", "nodes[2].id"),
    "gap in ids": ("id = 3", "id = 4", "nodes"),
    "shared port": ('client = "127.0.0.1:7102"', 'client = "127.0.0.1:7001"',
                    "nodes[2].client"),
    "shared data dir": ('data_dir = "data/node1"', 'data_dir = "data/node0"', "nodes"),
    "short secret": (f'secret = "{SECRET_HEX}"', 'secret = "abcd"', "auth.secret"),
    "secret not hex": (f'secret = "{SECRET_HEX}"', 'secret = "xyz"', "auth.secret"),
    "no secret": (f'secret = "{SECRET_HEX}"', "", "auth.secret"),
    "two secrets": (f'secret = "{SECRET_HEX}"',
                    f'secret = "{SECRET_HEX}"\nsecret_file = "k"', "auth.secret"),
    "missing secret file": (f'secret = "{SECRET_HEX}"', 'secret_file = "missing.key"',
                            "auth.secret_file"),
    "unknown auth": ('kind = "hmac"', 'kind = "rot13"', "auth.kind"),
    "ed25519 without keys": ('kind = "hmac"', 'kind = "ed25519"', "nodes[0].public_key"),
    "not toml": ("[protocol]", "[protocol", "(file)"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_an_invalid_file_is_refused_naming_the_field(tmp_path: Path, name: str) -> None:
    old, new, field = BAD[name]
    assert old in EXAMPLE
    with pytest.raises(ClusterFileError) as caught:
        load_cluster_file(write(tmp_path, EXAMPLE.replace(old, new, 1)))
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{tmp_path / 'cluster.toml'}: {field}: ")


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ClusterFileError, match="cannot read"):
        load_cluster_file(tmp_path / "absent.toml")


def test_an_unknown_node_id_is_refused(tmp_path: Path) -> None:
    cluster = load_cluster_file(write(tmp_path, EXAMPLE))
    with pytest.raises(ClusterFileError, match="no node 9"):
        cluster.node(9)


def minbft_file(tmp_path: Path, usig: str) -> tuple[Path, list[dict[str, Any]]]:
    nodes: list[dict[str, Any]] = [
        {"id": node_id, "peer": f"127.0.0.1:{7000 + node_id}",
         "client": f"127.0.0.1:{7100 + node_id}", "data_dir": f"n{node_id}"}
        for node_id in range(3)
    ]
    sections = write_usig_keys(tmp_path, "minbft", nodes, usig)
    (tmp_path / "secret.hex").write_text(SECRET_HEX + "\n")
    text = render_cluster_file(protocol="minbft", nodes=nodes, secret_file="secret.hex",
                               sections=sections)
    return write(tmp_path, text), nodes


def test_minbft_nodes_get_their_own_ed25519_usig_keys(tmp_path: Path) -> None:
    path, nodes = minbft_file(tmp_path, "ed25519")
    cluster = load_cluster_file(path)
    assert cluster.usig == "ed25519"
    schemes = [cluster.usig_scheme(node_id) for node_id in range(3)]
    assert all(isinstance(scheme, Ed25519KeyedUsigScheme) for scheme in schemes)
    assert len({node["usig_public_key"] for node in nodes}) == 3
    assert (tmp_path / "node-1.usig").stat().st_mode & 0o077 == 0
    usig = Usig.open(schemes[1], 1, DictStore(), lambda: 0)  # type: ignore[arg-type]
    ui = usig.create_ui(b"m")
    assert verify_ui(schemes[0], b"m", ui, usig.id())  # type: ignore[arg-type]
    assert not verify_ui(simulation_scheme(), b"m", ui, usig.id())
    # A key file that does not match the node's public key is refused at start.
    (tmp_path / "node-1.usig").write_text(generate_ed25519_key()[0].hex())
    with pytest.raises(ClusterFileError) as caught:
        cluster.usig_scheme(1)
    assert caught.value.field == "nodes[1].usig_key_file"


def test_an_hmac_usig_reads_the_shared_key_from_its_file(tmp_path: Path) -> None:
    path, _ = minbft_file(tmp_path, "hmac")
    cluster = load_cluster_file(path)
    assert cluster.usig == "hmac"
    assert cluster.usig_secret == bytes.fromhex((tmp_path / "usig.secret").read_text().strip())
    assert cluster.usig_secret != cluster.secret
    assert isinstance(cluster.usig_scheme(0), HmacUsigScheme)


def test_a_minbft_file_without_usig_keys_is_refused(tmp_path: Path) -> None:
    path, _ = minbft_file(tmp_path, "ed25519")
    text = path.read_text()
    without = re.sub(r"\[usig\]\n(?:[a-z_]+ = [^\n]*\n)*", "", text)
    assert "operator_public_key" not in without
    for bad, field_name in ((without, "usig"),
                            (text.replace('usig_key_file = "node-2.usig"\n', ""),
                             "nodes[2].usig_key_file"),
                            (text.replace('kind = "ed25519"', 'kind = "rot13"'), "usig.kind"),
                            (EXAMPLE + '\n[usig]\nkind = "ed25519"\n', "usig")):
        with pytest.raises(ClusterFileError) as caught:
            load_cluster_file(write(tmp_path, bad))
        assert caught.value.field == field_name
    assert load_cluster_file(write(tmp_path, EXAMPLE)).usig_scheme(0) is None


def test_a_minbft_node_certifies_with_the_configured_usig(tmp_path: Path) -> None:
    # As the live host builds it (replicaio.runtime.host): the scheme reaches MinBFT.
    path, _ = minbft_file(tmp_path, "ed25519")
    cluster = load_cluster_file(path)
    scheme = cluster.usig_scheme(2)
    node = Node(2, cluster.cluster_config(), protocol_factory(cluster.protocol),
                signer=cluster.signer(2), usig_scheme=scheme)
    node.start({})
    node.run()  # its first step, as the host runs it
    minbft = minbft_of(node.protocol)
    assert minbft is not None and minbft.scheme is scheme
    usig = minbft.usig
    assert usig is not None
    ui = usig.create_ui(b"m")
    assert verify_ui(cluster.usig_scheme(0), b"m", ui, usig.id())  # type: ignore[arg-type]
    assert not verify_ui(simulation_scheme(), b"m", ui, usig.id())


def test_a_node_key_is_written_private_from_its_first_byte(tmp_path: Path) -> None:
    """``write_node_key`` (``kv up``, ``cluster up``, the local and torture
    clusters) creates the private key with mode 0600, under any umask: a file
    written and chmod-ed after would be readable by others in between."""
    import os

    from replicaio.core.signing import ed25519_keys
    from replicaio.runtime.config import write_node_key

    node: dict[str, Any] = {"id": 4}
    previous = os.umask(0)
    try:
        write_node_key(tmp_path, node)
    finally:
        os.umask(previous)
    path = tmp_path / node["key_file"]
    assert path.name == "node-4.key"
    assert path.stat().st_mode & 0o777 == 0o600
    # the key pair matches (ConfigError otherwise)
    ed25519_keys(4, bytes.fromhex(path.read_text().strip()), {4: bytes.fromhex(node["public_key"])})
