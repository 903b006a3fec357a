"""Certificates for mutual TLS: a cluster CA, one certificate per node, one per client.

``replicaio certs init --nodes N --out DIR [--hosts H0,H1,...] [--days D]`` writes::

    DIR/ca.pem  DIR/ca.key                 the cluster CA (keep ca.key offline)
    DIR/node-I.pem  DIR/node-I.key         node I: urn:replicaio:node:I
    DIR/client.pem  DIR/client.key         a client: urn:replicaio:client:default

and prints the ``[tls]`` table and the ``tls_cert``/``tls_key`` lines of each
``[[nodes]]`` table for the cluster file. Keys are ECDSA P-256, private files
are written mode 0600. A node certificate also names ``localhost``,
``127.0.0.1`` and the given host (a DNS name or an address) so that ordinary
TLS clients (``redis-cli --tls``) that check host names accept it; replicaio
itself checks the URI (``replicaio.runtime.tls``).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from replicaio.core.errors import UsageError
from replicaio.runtime.tls import CLIENT_URI_PREFIX, NODE_URI_PREFIX

DAYS_DEFAULT = 825
NODES_MAX = 1_000

PrivateKey = ec.EllipticCurvePrivateKey


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def make_ca(name: str = "replicaio cluster CA", *, days: int = DAYS_DEFAULT
            ) -> tuple[PrivateKey, x509.Certificate]:
    key = new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    started = now() - datetime.timedelta(minutes=5)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(started)
        .not_valid_after(started + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def make_leaf(
    ca_key: PrivateKey, ca_certificate: x509.Certificate, uri: str, *,
    hosts: tuple[str, ...] = (), days: int = DAYS_DEFAULT,
    not_before: datetime.datetime | None = None,
) -> tuple[PrivateKey, x509.Certificate]:
    """A certificate for ``uri`` (a node's or a client's), usable on both ends of TLS.
    ``not_before`` lets tests make one that has already expired."""
    key = new_key()
    started = not_before if not_before is not None else now() - datetime.timedelta(minutes=5)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, uri)]))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(started)
        .not_valid_after(started + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, certificate


def write_pair(directory: Path, name: str, key: PrivateKey, certificate: x509.Certificate
               ) -> tuple[Path, Path]:
    """``name.pem`` (the certificate) and ``name.key`` (the key, mode 0600)."""
    certificate_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
    return certificate_path, key_path


def read_ca(directory: Path) -> tuple[PrivateKey, x509.Certificate]:
    key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UsageError(f"{directory / 'ca.key'} is not an ECDSA key made by certs init")
    return key, x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())


def init_certs(directory: Path, nodes: int, *, hosts: tuple[str, ...] = (),
               days: int = DAYS_DEFAULT) -> None:
    """Write the CA, ``nodes`` node certificates and a client certificate into
    ``directory`` (see the module docstring); ``hosts[i]`` is node i's host."""
    if not 1 <= nodes <= NODES_MAX:
        raise UsageError(f"--nodes must be in 1..{NODES_MAX}")
    if hosts and len(hosts) != nodes:
        raise UsageError(f"--hosts names {len(hosts)} hosts for {nodes} nodes")
    if days < 1:
        raise UsageError("--days must be >= 1")
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "ca.key").exists():
        raise UsageError(f"{directory} already has a CA (ca.key); remove it to start over")
    ca_key, ca_certificate = make_ca(days=days)
    write_pair(directory, "ca", ca_key, ca_certificate)
    for node in range(nodes):
        names = ("localhost", "127.0.0.1", *((hosts[node],) if hosts else ()))
        key, certificate = make_leaf(ca_key, ca_certificate, f"{NODE_URI_PREFIX}{node}",
                                     hosts=names, days=days)
        write_pair(directory, f"node-{node}", key, certificate)
    key, certificate = make_leaf(ca_key, ca_certificate, f"{CLIENT_URI_PREFIX}default",
                                 days=days)
    write_pair(directory, "client", key, certificate)


def cluster_file_lines(directory: Path, nodes: int) -> str:
    lines = ["[tls]", f'ca_file = "{directory / "ca.pem"}"', "peer = true", "client = true",
             ""]
    for node in range(nodes):
        lines.append(f"# in [[nodes]] id = {node}:")
        lines.append(f'tls_cert = "{directory / f"node-{node}.pem"}"')
        lines.append(f'tls_key = "{directory / f"node-{node}.key"}"')
    return "\n".join(lines)


def add_certs_command(commands: Any) -> None:
    certs = commands.add_parser("certs", help="certificates for mutual TLS")
    actions = certs.add_subparsers(dest="certs_command", required=True)
    init = actions.add_parser("init", help="make a cluster CA, node and client certificates")
    init.add_argument("--nodes", type=int, required=True)
    init.add_argument("--out", required=True, help="directory for the PEM files")
    init.add_argument("--hosts", default="",
                      help="comma-separated host of each node (DNS name or address)")
    init.add_argument("--days", type=int, default=DAYS_DEFAULT)
    init.set_defaults(handler=command_certs_init)


def command_certs_init(args: argparse.Namespace) -> int:
    directory = Path(args.out).resolve()
    hosts = tuple(host for host in args.hosts.split(",") if host)
    init_certs(directory, args.nodes, hosts=hosts, days=args.days)
    print(f"certs init: CA, {args.nodes} node certificates and a client certificate in "
          f"{directory}\nfor the cluster file:\n")
    print(cluster_file_lines(directory, args.nodes))
    print(f"\nredis-cli --tls --cacert {directory / 'ca.pem'} --cert {directory / 'client.pem'} "
          f"--key {directory / 'client.key'} -p PORT")
    return 0
