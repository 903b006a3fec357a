"""The ``replicaio kv`` subcommands: a replicated key-value store that Redis clients use.

    replicaio kv up --nodes 3 --base-port P --data-dir D [--protocol raft] [...]
    replicaio kv down --data-dir D
    replicaio kv node --config FILE --id I [--event-log FILE] [--log-level L] [--loop L]
    replicaio kv gateway --cluster FILE --port P [--host H]

``kv up`` writes ``D/cluster.toml`` (client service ``resp``) and a fresh
secret ``D/cluster.key`` on first use and reuses them after, starts one
``replicaio kv node`` process per node (data in ``D/node-I``, output in
``D/node-I.log``, pid in ``D/node-I.pid``), waits until every node answers
``PING`` and the cluster answers a read (a leader is elected), and prints the
ports. Ports: RESP (Redis clients) ``P+1 .. P+N``, peers ``P+N+1 .. P+2N``,
metrics ``P+2N+1 .. P+3N`` (``--no-metrics`` to skip). So with the defaults
``redis-cli -p 7001 set k v`` works. With ``--tls`` (on first use) ``kv up``
also makes a cluster CA and certificates in ``D/certs`` (``certs init``) and
the nodes speak mutual TLS 1.3 on both ports: peers authenticate each other
by certificate, and a Redis client needs one of the CA's certificates
(``redis-cli --tls --cacert D/certs/ca.pem --cert D/certs/client.pem --key
D/certs/client.key``). ``kv down`` stops the processes (SIGTERM,
then SIGKILL after ``--timeout``). ``kv node`` runs one node from a cluster
file, for a deployment across hosts. ``kv gateway`` serves Redis clients on
``--port`` and answers each command only once f+1 replicas agree on its result
(``replicaio.runtime.gateway``); a node's own RESP port is a trusted shortcut.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import secrets
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from replicaio.assembly import split_name
from replicaio.cli_common import positive_int, print_json
from replicaio.core.errors import UsageError
from replicaio.runtime.commands import (
    CLUSTER_FILE,
    EXIT_FAILED,
    EXIT_OK,
    KV_NODE,
    LOG_LEVELS,
    SECRET_FILE,
    add_down_arguments,
    add_node_arguments,
    cluster_report,
    command_down,
    command_node,
    exit_reason,
    launch,
    node_id_of,
    ports_in_use,
    running_pids,
    start_nodes,
)
from replicaio.runtime.config import (
    ClusterFile,
    load_cluster_file,
    protocol_with_params,
    render_cluster_file,
    write_node_key,
    write_private,
    write_usig_keys,
)

PROBE_KEY = b"replicaio:kv-up-probe"
SHARDED_PROTOCOL = "txn-kv"  # kv up --groups G: txn-kv:groups=G
# kv up --groups G --protocol P: the sharded store over groups of P
SHARDED_PROTOCOLS = {"raft": SHARDED_PROTOCOL, "pbft": "txn-kv-pbft", "minbft": "txn-kv-minbft"}
DEFAULT_BASE_PORT = 7000
DEFAULT_HOST = "127.0.0.1"


def add_kv_commands(commands: Any) -> None:
    """Add ``kv up|down|node`` to the ``replicaio`` parser's subparsers."""
    kv = commands.add_parser("kv", help="a replicated key-value store for Redis clients")
    actions = kv.add_subparsers(dest="kv_command", required=True)
    up = actions.add_parser("up", help="start a local KV cluster (one process per node)")
    up.add_argument("--nodes", type=positive_int, default=3, help="cluster size")
    up.add_argument("--base-port", type=int, default=None,
                    help="RESP on P+1..P+N, peers P+N+1.., metrics P+2N+1.. (default 7000)")
    up.add_argument("--data-dir", required=True)
    up.add_argument("--protocol", default="raft", help="a replicated service (default: raft)")
    up.add_argument("--groups", type=positive_int, default=None, metavar="G",
                    help="G replicated groups, keys by hash slot, MULTI/EXEC across them "
                    "(protocol txn-kv:groups=G, or txn-kv-pbft:groups=G with --protocol "
                    "pbft, txn-kv-minbft:groups=G with --protocol minbft; every node hosts "
                    "a replica of each group)")
    up.add_argument("--host", default=None, help="address every node binds (default 127.0.0.1)")
    up.add_argument("--auth", choices=("hmac", "ed25519"), default=None,
                    help="node keys (default: ed25519 for Byzantine fault tolerant protocols, "
                    "whose clients sign with Ed25519 too; hmac otherwise)")
    up.add_argument("--usig", choices=("ed25519", "hmac"), default=None,
                    help="the trusted USIG's keys, for MinBFT: ed25519 (default; a key pair "
                    "per node) or hmac (one key shared by the trusted components)")
    up.add_argument("--no-metrics", action="store_true", help="no Prometheus endpoints")
    up.add_argument("--no-fsync", action="store_true", help="skip fsync (throwaway clusters)")
    up.add_argument("--event-logs", action="store_true", help="record D/node-I.events")
    up.add_argument("--tls", action="store_true",
                    help="mutual TLS on the peer and RESP ports (certificates made in D/certs)")
    up.add_argument("--ready-timeout", type=float, default=30.0,
                    help="seconds to wait for the nodes to serve")
    up.add_argument("--node", type=int, default=None, metavar="I",
                    help="start (or restart) only node I of the cluster in --data-dir")
    up.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                    help="the nodes' log level")
    up.add_argument("--json", action="store_true", help="one JSON object on stdout")
    up.set_defaults(handler=command_kv_up)
    down = actions.add_parser("down", help="stop the KV cluster started in --data-dir")
    add_down_arguments(down)
    down.set_defaults(handler=command_kv_down)
    node = actions.add_parser("node", help="run one node of a KV cluster")
    add_node_arguments(node)
    node.set_defaults(handler=command_kv_node)
    gateway = actions.add_parser(
        "gateway", help="a local Redis endpoint that trusts no single replica (f+1 matching)"
    )
    gateway.add_argument("--cluster", required=True, help="the cluster file")
    gateway.add_argument("--port", type=int, required=True, help="RESP port to serve")
    gateway.add_argument("--host", default=DEFAULT_HOST, help="address to bind")
    gateway.add_argument("--log-level", default="info")
    gateway.add_argument(
        "--fast-reads", action="store_true",
        help="the read-only optimisation: reads answered by 2f+1 matching replicas from "
        "their current state, else through the log; writes then need 2f+1 matching too",
    )
    gateway.add_argument(
        "--txn-first-wave-ms", type=int, default=0, metavar="MS",
        help="sharded clusters: send a transaction across groups to f+1 nodes first, and "
        "to the others only once those cannot settle it or after MS ms (0, the default: "
        "to every node at once)",
    )
    gateway.set_defaults(handler=command_kv_gateway)
    from replicaio.runtime.kv.usig_admission import add_admit_usig_command

    add_admit_usig_command(actions)


def command_kv_gateway(args: argparse.Namespace) -> int:
    import asyncio

    from replicaio.runtime.config import Address
    from replicaio.runtime.gateway import serve_gateway
    from replicaio.runtime.logs import configure_logging

    configure_logging(args.log_level)
    cluster = load_cluster_file(args.cluster)
    if not 0 <= args.port <= 65535:
        raise UsageError("--port must be in 0..65535")
    if args.txn_first_wave_ms < 0:
        raise UsageError("--txn-first-wave-ms must be >= 0")
    try:
        asyncio.run(serve_gateway(cluster, Address(args.host, args.port),
                                  fast_reads=args.fast_reads,
                                  first_wave_ms=args.txn_first_wave_ms))
    except KeyboardInterrupt:
        return EXIT_OK
    except OSError as error:
        print(f"replicaio: error: gateway: {error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def command_kv_node(args: argparse.Namespace) -> int:
    return command_node(args)


def command_kv_up(args: argparse.Namespace) -> int:
    from replicaio.assembly import live_protocol_params, service_spec

    if service_spec(args.protocol) is None:
        raise UsageError(f"--protocol {args.protocol!r} is not a replicated service (try raft)")
    if args.groups is not None:
        if args.protocol not in SHARDED_PROTOCOLS:
            raise UsageError("--groups runs Raft, PBFT or MinBFT groups "
                             "(--protocol raft, pbft or minbft)")
        args.protocol = f"{SHARDED_PROTOCOLS[args.protocol]}:groups={args.groups}"
    directory = Path(args.data_dir).resolve()
    if args.node is not None:
        return start_one_node(directory, args)
    directory.mkdir(parents=True, exist_ok=True)
    if running_pids(directory):
        raise UsageError(f"a cluster is already running in {directory} (kv down first, or "
                         "kv up --node I to start one stopped node)")
    config_path = directory / CLUSTER_FILE
    existed = config_path.exists()
    if not existed:
        write_kv_cluster(directory, args)
    cluster = load_cluster_file(config_path)
    base, parameters = split_name(args.protocol)
    if (
        cluster.n != args.nodes
        or cluster.protocol != protocol_with_params(base, live_protocol_params(base, parameters))
        or cluster.host.client_service != "resp"
    ):
        raise UsageError(
            f"{config_path} describes {cluster.n} {cluster.protocol} nodes with the "
            f"{cluster.host.client_service!r} service; remove the directory to start another"
        )
    ignored = ignored_options(cluster, args) if existed else []
    if ignored:
        print(f"replicaio: warning: {config_path} exists and is used as it is; ignored: "
              f"{'; '.join(ignored)} (remove the directory, or edit the file, to change them)",
              file=sys.stderr)
    processes = launch(directory, config_path, cluster, args, client="RESP", kind=KV_NODE,
                       serving=wait_until_serving)
    if processes is None:
        return EXIT_FAILED
    if args.json:
        print_json(cluster_report("kv up", cluster, processes, config_path))
        return EXIT_OK
    for entry, process in zip(cluster.nodes, processes, strict=True):
        metrics = f" metrics {entry.metrics}" if entry.metrics else ""
        print(f"node {entry.id}: pid {process.pid} resp {entry.client} peer {entry.peer}"
              f"{metrics}")
    ports = " ".join(str(entry.client.port) for entry in cluster.nodes)
    print(f"kv up: {cluster.n} {cluster.protocol} nodes; RESP ports {ports}; config {config_path}")
    tls = ""
    if cluster.tls is not None and cluster.tls.client:
        certs = directory / "certs"
        tls = (f"--tls --cacert {cluster.tls.ca_file} --cert {certs / 'client.pem'} "
               f"--key {certs / 'client.key'} ")
    print(f"try: redis-cli {tls}-p {cluster.nodes[0].client.port} set k v")
    return EXIT_OK


def ignored_options(cluster: ClusterFile, args: argparse.Namespace) -> list[str]:
    """What the options of ``kv up`` ask for that an existing cluster file does not
    say (the file wins: its nodes have data and each other's addresses)."""
    ignored = []
    first = cluster.nodes[0]
    if args.base_port is not None and args.base_port != first.client.port - 1:
        ignored.append(f"--base-port {args.base_port} (the file's: {first.client.port - 1})")
    if args.host is not None and args.host != first.client.host:
        ignored.append(f"--host {args.host} (the file's: {first.client.host})")
    if args.no_fsync and cluster.host.fsync:
        ignored.append("--no-fsync (the file's nodes fsync)")
    if not args.no_fsync and not cluster.host.fsync:
        ignored.append("fsync (the file's nodes do not fsync: it was made with --no-fsync)")
    if args.no_metrics and first.metrics is not None:
        ignored.append("--no-metrics (the file's nodes serve metrics)")
    if not args.no_metrics and first.metrics is None:
        ignored.append("metrics (the file has no metrics ports: it was made with --no-metrics)")
    if args.tls and cluster.tls is None:
        ignored.append("--tls (the file's nodes speak plaintext)")
    if not args.tls and cluster.tls is not None:
        ignored.append("plaintext (the file's nodes speak TLS: it was made with --tls)")
    return ignored


def write_kv_cluster(directory: Path, args: argparse.Namespace) -> None:
    n = args.nodes
    base = DEFAULT_BASE_PORT if args.base_port is None else args.base_port
    host = DEFAULT_HOST if args.host is None else args.host
    if n < 1 or base < 1 or base + 3 * n > 65535:
        raise UsageError("--nodes must be >= 1 and the ports P+1 .. P+3N must be valid")
    from replicaio.assembly import service_spec, transactional_spec
    from replicaio.core.config import Resilience

    auth = getattr(args, "auth", None)
    if auth is None:
        found = service_spec(args.protocol)
        sharded = transactional_spec(args.protocol)
        byzantine = (found is not None and found[0].resilience is not Resilience.CRASH) or (
            sharded is not None and sharded[0].ordering != "raft")
        auth = "ed25519" if byzantine else "hmac"
    if auth == "hmac":
        write_private(directory / SECRET_FILE, secrets.token_hex(32) + "\n")
    nodes: list[dict[str, Any]] = []
    for node_id in range(n):
        node: dict[str, Any] = {
            "id": node_id,
            "peer": f"{host}:{base + n + 1 + node_id}",
            "client": f"{host}:{base + 1 + node_id}",
            "data_dir": f"node-{node_id}",
        }
        if not args.no_metrics:
            node["metrics"] = f"{host}:{base + 2 * n + 1 + node_id}"
        if auth == "ed25519":
            write_node_key(directory, node)
        nodes.append(node)
    host_section: dict[str, Any] = {"client_service": "resp"}
    if args.no_fsync:
        host_section["fsync"] = False
    sections: dict[str, dict[str, Any]] = {"host": host_section}
    groups = getattr(args, "groups", None)
    # --protocol raft:snapshot=8 goes to the file as [protocol] params.
    parameters: dict[str, Any] = dict(split_name(args.protocol)[1])
    if groups is not None:  # the slot map: G groups sharing the slots evenly
        parameters["groups"] = groups
    if parameters:
        sections["protocol.params"] = parameters
    if args.tls:
        from replicaio.runtime.certs import init_certs

        local = host in (DEFAULT_HOST, "localhost")
        init_certs(directory / "certs", n, hosts=() if local else (host,) * n)
        sections["tls"] = {"ca_file": "certs/ca.pem", "peer": True, "client": True}
        for node in nodes:
            node["tls_cert"] = f"certs/node-{node['id']}.pem"
            node["tls_key"] = f"certs/node-{node['id']}.key"
    sections.update(write_usig_keys(directory, args.protocol, nodes,
                                    getattr(args, "usig", None) or "ed25519"))
    text = render_cluster_file(
        protocol=args.protocol.partition(":")[0], nodes=nodes, auth=auth,
        secret_file=SECRET_FILE if auth == "hmac" else None, sections=sections,
    )
    (directory / CLUSTER_FILE).write_text(text)


def start_one_node(directory: Path, args: argparse.Namespace) -> int:
    """``kv up --node I``: start (or restart) node I of the cluster in ``directory``,
    which must exist; the other nodes are left as they are."""
    config_path = directory / CLUSTER_FILE
    if not config_path.exists():
        raise UsageError(f"no cluster in {directory} (kv up without --node creates one)")
    cluster = load_cluster_file(config_path)
    if args.node not in {entry.id for entry in cluster.nodes}:
        raise UsageError(f"--node {args.node}: the cluster has nodes 0..{cluster.n - 1}")
    running = [pid for pid in running_pids(directory).values() if node_id_of(pid) == args.node]
    if running:
        raise UsageError(f"node {args.node} is already running (pid {running[0]})")
    entry = cluster.nodes[args.node]
    busy = ports_in_use(dataclasses.replace(cluster, nodes=(entry,)), "RESP")
    if busy:
        print(f"replicaio: error: cannot start: {'; '.join(busy)}", file=sys.stderr)
        return EXIT_FAILED
    process = start_nodes(directory, config_path, cluster, args.event_logs, args.log_level,
                          only=args.node, kind=KV_NODE)[0]
    deadline = time.monotonic() + args.ready_timeout
    while not ask(entry.client.host, entry.client.port, b"*1\r\n$4\r\nPING\r\n", b"+PONG",
                  time.monotonic() + 1.0, client_tls(cluster)):
        status = process.poll()
        if status is not None:
            print(f"replicaio: error: {exit_reason(directory, args.node, status)}",
                  file=sys.stderr)
            return EXIT_FAILED
        if time.monotonic() > deadline:
            print(f"replicaio: error: node {args.node} not serving after {args.ready_timeout} s"
                  f"; see {directory}/node-{args.node}.log", file=sys.stderr)
            return EXIT_FAILED
        time.sleep(0.05)
    if args.json:
        print_json({"command": "kv up", "node": args.node, "pid": process.pid,
                    "client": str(entry.client), "config": str(config_path)})
    else:
        print(f"node {args.node}: pid {process.pid} resp {entry.client} peer {entry.peer}")
    return EXIT_OK


def wait_until_serving(
    cluster: ClusterFile, processes: list[subprocess.Popen[bytes]], timeout_s: float,
    directory: Path,
) -> str | None:
    """``None`` once every node answers PING and a read through node 0 succeeds
    (so a leader is elected), else what went wrong."""
    deadline = time.monotonic() + timeout_s

    def exited() -> str | None:
        for entry, process in zip(cluster.nodes, processes, strict=True):
            status = process.poll()
            if status is not None:
                return exit_reason(directory, entry.id, status)
        return None

    tls = client_tls(cluster)
    for entry in cluster.nodes:
        if not ask(entry.client.host, entry.client.port, b"*1\r\n$4\r\nPING\r\n", b"+PONG",
                   deadline, tls):
            return exited() or f"node {entry.id} does not answer PING at {entry.client}"
    first = cluster.nodes[0].client
    probes = [b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n" % (len(key), key)
              for key in probe_keys(cluster.protocol)]
    while time.monotonic() < deadline:
        failed = exited()
        if failed is not None:
            return failed
        if all(ask(first.host, first.port, probe, b"$", deadline, tls) for probe in probes):
            return None
        time.sleep(0.1)
    return f"no leader elected within {timeout_s} s"


def probe_keys(protocol: str) -> list[bytes]:
    """Keys to read until the cluster serves: one in each group of a sharded one."""
    from replicaio.services.txn.slots import SlotMap

    base, _, rest = protocol.partition(":")
    if base != SHARDED_PROTOCOL:
        return [PROBE_KEY]
    groups = 3
    for item in rest.split(","):
        name, _, value = item.partition("=")
        if name == "groups" and value.isdigit():
            groups = int(value)
    slots = SlotMap.even(groups)
    found: dict[int, bytes] = {}
    number = 0
    while len(found) < groups:
        key = PROBE_KEY + b"-%d" % number
        found.setdefault(slots.group_of(key), key)
        number += 1
    return [found[group] for group in sorted(found)]


def client_tls(cluster: ClusterFile) -> ssl.SSLContext | None:
    """How ``kv up`` itself speaks to the RESP ports: plaintext, or (``[tls]
    client``) TLS with node 0's certificate, which the client port accepts as it
    accepts any certificate of the cluster's CA (``replicaio.runtime.tls``)."""
    if cluster.tls is None or not cluster.tls.client:
        return None
    from replicaio.runtime.tls import client_context

    config = cluster.tls_config(cluster.nodes[0].id)
    assert config is not None
    return client_context(config)


def ask(host: str, port: int, request: bytes, expected: bytes, deadline: float,
        tls: ssl.SSLContext | None = None) -> bool:
    """Whether the node at ``host:port`` answers ``request`` with a reply that starts
    with ``expected`` before ``deadline`` (over TLS with ``tls``)."""
    try:
        with socket.create_connection((host, port), timeout=2.0) as plain:
            plain.settimeout(max(0.1, min(10.0, deadline - time.monotonic())))
            with (tls.wrap_socket(plain) if tls is not None
                  else contextlib.nullcontext(plain)) as connection:
                connection.sendall(request)
                answer = connection.recv(256)
    except OSError:
        return False
    return answer.startswith(expected)


def command_kv_down(args: argparse.Namespace) -> int:
    return command_down(args, "kv down")
