"""Mutual TLS with real node processes on 127.0.0.1: ``replicaio certs init`` makes the
certificates, a 3-node Raft KV cluster speaks TLS 1.3 between its nodes and to
redis-py (with a client certificate), and what must be refused is refused,
counted (``rejected_tls_<reason>`` on ``/metrics``) and logged: a node restarted
with a certificate from another CA, an expired certificate and a plaintext
client, on the client port and on the peer port; a client's certificate on the
peer port.
"""

from __future__ import annotations

import datetime
import shutil
import socket
import ssl
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from cryptography import x509
from redis.backoff import NoBackoff
from redis.retry import Retry

from replicaio.cli import main
from replicaio.runtime.certs import make_ca, make_leaf, read_ca, write_pair
from replicaio.runtime.local import LocalCluster
from replicaio.testing.live import runtime_counters

SECTIONS: dict[str, dict[str, Any]] = {
    "node": {"tick_us": 10_000},
    "transport": {"reconnect_delay_ms_min": 10, "reconnect_delay_ms_max": 200},
    "host": {"client_service": "resp", "fsync": False},
    "service": {"retry_after_ms": 300, "retry_backoff_ms": 20, "request_timeout_ms": 2500},
}
DEADLINE_S = 20.0


def test_certs_init_makes_a_ca_node_and_client_certificates(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    out = tmp_path / "certs"
    assert main(["certs", "init", "--nodes", "3", "--out", str(out),
                 "--hosts", "a.example,b.example,10.1.2.3"]) == 0
    printed = capsys.readouterr().out
    assert "[tls]" in printed and "tls_cert" in printed and "redis-cli --tls" in printed
    for name in ("ca", "node-0", "node-1", "node-2", "client"):
        assert (out / f"{name}.pem").exists()
        assert stat.S_IMODE((out / f"{name}.key").stat().st_mode) == 0o600
    node = x509.load_pem_x509_certificate((out / "node-2.pem").read_bytes())
    names = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "urn:replicaio:node:2" in names.get_values_for_type(x509.UniformResourceIdentifier)
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1",
                                                                           "10.1.2.3"]
    assert main(["certs", "init", "--nodes", "3", "--out", str(out)]) == 2  # never overwrites


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path / "tls", protocol="raft", nodes=3, sections=SECTIONS,
                      metrics=True, tls=True) as made:
        made.start_all()
        yield made


def tls_client(cluster: LocalCluster, node: int, certificate: Path | None, key: Path | None
               ) -> redis.Redis:
    certs = cluster.directory / "certs"
    return redis.Redis(
        port=cluster.cluster.nodes[node].client.port, ssl=True,
        ssl_ca_certs=str(certs / "ca.pem"), ssl_check_hostname=False,
        ssl_certfile=None if certificate is None else str(certificate),
        ssl_keyfile=None if key is None else str(key),
        socket_timeout=5.0, socket_connect_timeout=2.0, retry=Retry(NoBackoff(), 0),
    )


def write_until_ok(client: redis.Redis, key: str, value: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            assert client.set(key, value) is True
            return
        except redis.ResponseError:  # -TRYAGAIN while no leader is known
            assert time.monotonic() < deadline, "no write within the deadline"
            time.sleep(0.1)


def refused(attempt: Any) -> BaseException:
    with pytest.raises((redis.ConnectionError, redis.TimeoutError, ssl.SSLError,
                        ConnectionError, OSError)) as caught:
        attempt()
    return caught.value


def foreign_and_expired(cluster: LocalCluster, tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    """Certificates a node must refuse: from another CA, and expired (from the right CA)."""
    other_key, other_ca = make_ca("another cluster's CA")
    ca_key, ca_certificate = read_ca(cluster.directory / "certs")
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    made = {}
    for name, (key, certificate) in {
        "foreign-client": make_leaf(other_key, other_ca, "urn:replicaio:client:x"),
        "foreign-node-0": make_leaf(other_key, other_ca, "urn:replicaio:node:0"),
        "expired-client": make_leaf(ca_key, ca_certificate, "urn:replicaio:client:x", days=1,
                                    not_before=long_ago),
        "expired-node-0": make_leaf(ca_key, ca_certificate, "urn:replicaio:node:0", days=1,
                                    not_before=long_ago),
        "client-on-peer": make_leaf(ca_key, ca_certificate, "urn:replicaio:client:x"),
    }.items():
        made[name] = write_pair(tmp_path, name, key, certificate)
    return made


def dial_peer_port(cluster: LocalCluster, node: int, pair: tuple[Path, Path] | None) -> None:
    """A TLS (or, with ``pair`` None, plaintext) connection to ``node``'s peer port,
    sending a hello; raises when the node refuses it."""
    address = cluster.cluster.nodes[node].peer
    raw = socket.create_connection((address.host, address.port), timeout=5.0)
    if pair is None:
        with raw:
            raw.sendall(b"\x00\x00\x00\x10plaintext hello!")
            if raw.recv(100) == b"":
                raise ConnectionError("closed by the node")
            return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cluster.directory / "certs" / "ca.pem")
    context.load_cert_chain(*pair)
    with context.wrap_socket(raw) as wrapped:
        wrapped.sendall(b"\x00\x00\x00\x05hello")  # TLS 1.3: the server's verdict comes now
        if wrapped.recv(100) == b"":
            raise ConnectionError("closed by the node")


def test_a_tls_cluster_serves_certified_clients_and_refuses_the_rest(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    certs = cluster.directory / "certs"
    writer = tls_client(cluster, 0, certs / "client.pem", certs / "client.key")
    write_until_ok(writer, "k", "over TLS")
    reader = tls_client(cluster, 2, certs / "client.pem", certs / "client.key")
    assert reader.get("k") == b"over TLS"  # node 2 forwarded to the leader over peer TLS
    writer.close()
    reader.close()

    bad = foreign_and_expired(cluster, tmp_path)
    port = cluster.cluster.nodes[1].client.port
    plaintext = redis.Redis(port=port, socket_timeout=3.0, retry=Retry(NoBackoff(), 0))
    refused(plaintext.ping)
    refused(tls_client(cluster, 1, None, None).ping)  # TLS without a client certificate
    refused(tls_client(cluster, 1, *bad["foreign-client"]).ping)
    refused(tls_client(cluster, 1, *bad["expired-client"]).ping)
    for pair in (None, bad["foreign-node-0"], bad["expired-node-0"], bad["client-on-peer"]):
        refused(lambda pair=pair: dial_peer_port(cluster, 2, pair))
    time.sleep(0.3)
    on_client_port, on_peer_port = runtime_counters(cluster, 1), runtime_counters(cluster, 2)
    for reason in ("plaintext", "no_certificate", "unknown_ca", "expired"):
        assert on_client_port.get(f"rejected_tls_{reason}", 0) >= 1, (reason, on_client_port)
    for reason in ("plaintext", "unknown_ca", "expired", "not_a_node"):
        assert on_peer_port.get(f"rejected_tls_{reason}", 0) >= 1, (reason, on_peer_port)
    log = cluster.stderr_log(1, 1).read_text()
    assert '"TLS connection refused"' in log and '"reason": "expired"' in log

    survivor = tls_client(cluster, 1, certs / "client.pem", certs / "client.key")
    assert survivor.get("k") == b"over TLS"  # refusals cost the node nothing
    survivor.close()


@pytest.mark.skipif(shutil.which("redis-cli") is None,
                    reason="redis-cli is not installed (./run setup installs redis-tools as root)")
def test_redis_cli_speaks_tls_to_the_cluster(cluster: LocalCluster) -> None:
    certs = cluster.directory / "certs"
    write_until_ok(tls_client(cluster, 0, certs / "client.pem", certs / "client.key"),
                   "cli", "hello")
    command = ["redis-cli", "--tls", "--cacert", str(certs / "ca.pem"), "--cert",
               str(certs / "client.pem"), "--key", str(certs / "client.key"),
               "-p", str(cluster.cluster.nodes[1].client.port)]
    done = subprocess.run([*command, "get", "cli"], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.stdout.strip() == "hello", done.stdout + done.stderr
    plain = subprocess.run(["redis-cli", "-p", str(cluster.cluster.nodes[1].client.port),
                            "get", "cli"], capture_output=True, text=True, timeout=30,
                           check=False)
    assert "hello" not in plain.stdout


def test_a_node_restarted_with_another_cas_certificate_is_shut_out(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    certs = cluster.directory / "certs"
    client = tls_client(cluster, 0, certs / "client.pem", certs / "client.key")
    write_until_ok(client, "before", "1")
    cluster.kill(2)
    other_key, other_ca = make_ca("another cluster's CA")
    key, certificate = make_leaf(other_key, other_ca, "urn:replicaio:node:2")
    foreign = write_pair(tmp_path, "node-2", key, certificate)
    shutil.copy(foreign[0], certs / "node-2.pem")
    shutil.copy(foreign[1], certs / "node-2.key")
    cluster.start(2)
    cluster.wait_ready([2])
    deadline = time.monotonic() + DEADLINE_S
    while runtime_counters(cluster, 0).get("rejected_tls_unknown_ca", 0) < 1:  # node 0 dials node 2
        assert time.monotonic() < deadline, runtime_counters(cluster, 0)
        time.sleep(0.2)
    write_until_ok(client, "after", "2")  # nodes 0 and 1 are a quorum
    log = cluster.stderr_log(0, 1).read_text()
    assert '"TLS to peer refused"' in log and '"peer": 2' in log
    client.close()


def test_kv_up_tls_serves_redis_py_over_tls_and_its_peers_over_mutual_tls(
    tmp_path: Path,
) -> None:
    """``kv up --tls`` makes the certificates, and its nodes speak TLS 1.3 to a
    certified redis-py client and mutual TLS between themselves; a plaintext
    client, and a TLS client without a certificate, are refused."""
    import sys

    from replicaio.runtime.local import free_port_block

    base = free_port_block(10)
    directory = tmp_path / "kv"
    command = [sys.executable, "-m", "replicaio.cli", "kv"]
    try:
        up = subprocess.run([*command, "up", "--nodes", "3", "--base-port", str(base),
                             "--data-dir", str(directory), "--no-fsync", "--tls"],
                            capture_output=True, text=True, timeout=90, check=False)
        assert up.returncode == 0, up.stderr
        assert "redis-cli --tls --cacert" in up.stdout
        certs = directory / "certs"
        assert (certs / "ca.pem").exists() and (certs / "client.key").exists()
        text = (directory / "cluster.toml").read_text()
        assert "[tls]" in text and "tls_cert" in text
        port = base + 1
        client = redis.Redis(port=port, ssl=True, ssl_ca_certs=str(certs / "ca.pem"),
                             ssl_check_hostname=False, ssl_certfile=str(certs / "client.pem"),
                             ssl_keyfile=str(certs / "client.key"), socket_timeout=5.0,
                             retry=Retry(NoBackoff(), 0))
        write_until_ok(client, "k", "over tls")
        assert client.get("k") == b"over tls"
        version = client.connection_pool.get_connection()
        try:
            assert version._sock.version() == "TLSv1.3"  # type: ignore[attr-defined]
        finally:
            client.connection_pool.release(version)
        for node in (1, 2):  # replicated to the others over the peers' mutual TLS
            other = redis.Redis(port=base + 1 + node, ssl=True,
                                ssl_ca_certs=str(certs / "ca.pem"), ssl_check_hostname=False,
                                ssl_certfile=str(certs / "client.pem"),
                                ssl_keyfile=str(certs / "client.key"), socket_timeout=5.0,
                                retry=Retry(NoBackoff(), 0))
            assert other.get("k") == b"over tls"
            other.close()
        client.close()
        plain = redis.Redis(port=port, socket_timeout=3.0, retry=Retry(NoBackoff(), 0))
        refused(plain.ping)
        anonymous = redis.Redis(port=port, ssl=True, ssl_ca_certs=str(certs / "ca.pem"),
                                ssl_check_hostname=False, socket_timeout=3.0,
                                retry=Retry(NoBackoff(), 0))
        refused(anonymous.ping)
        with socket.create_connection(("127.0.0.1", base + 4), timeout=3.0) as peer:
            peer.sendall(b"hello in plaintext\r\n")  # the peer port wants TLS too
            peer.settimeout(3.0)
            try:
                answer = peer.recv(100)
            except ConnectionResetError:
                answer = b""  # closed with a reset: refused just the same
            assert answer == b""
    finally:
        subprocess.run([*command, "down", "--data-dir", str(directory)], capture_output=True,
                       timeout=60, check=False)
