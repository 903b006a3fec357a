"""The runtime's subcommands of ``replicaio``: ``node``, ``cluster up|down``, ``broadcast``.

    replicaio node --config FILE --id I [--event-log FILE] [--log-level L] [--loop L]
    replicaio cluster up --protocol P --nodes N --base-port B --data-dir D [...]
    replicaio cluster down --data-dir D
    replicaio broadcast --config FILE --node I VALUE [--timeout S] [--no-wait]

``cluster up`` writes ``D/cluster.toml`` and ``D/cluster.key`` (a fresh
cluster secret, mode 0600) on first use and reuses them after, starts one
``replicaio node`` process per node (data in ``D/node-I``, logs in
``D/node-I.log``, pid in ``D/node-I.pid``) and waits until every client port
answers. Ports: peer ``B + i``, client ``B + N + i``, metrics (``--metrics``)
``B + 2N + i``. ``cluster down`` stops the processes of the pid files with
SIGTERM (a clean stop), then SIGKILL after ``--timeout``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from replicaio.cli_common import positive_int, print_json
from replicaio.core.errors import UsageError
from replicaio.runtime.config import (
    ClusterFile,
    load_cluster_file,
    render_cluster_file,
    write_node_key,
    write_private,
    write_usig_keys,
)
from replicaio.runtime.local import listens_on

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
CLUSTER_FILE = "cluster.toml"
SECRET_FILE = "cluster.key"
LOG_LEVELS = ("debug", "info", "warning", "error")


def add_node_arguments(node: argparse.ArgumentParser) -> None:
    """The options of every "run one node" command (``node``, ``kv node``)."""
    node.add_argument("--config", required=True, help="the TOML cluster file")
    node.add_argument("--id", type=int, required=True, help="this node's id")
    node.add_argument("--event-log", default=None,
                      help="record every step to FILE (replay with `replicaio replay`)")
    node.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    node.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                      help="event loop (auto: uvloop when installed)")
    node.add_argument("--byzantine", default=None, metavar="BEHAVIOUR[+BEHAVIOUR]",
                      help="run this node as a faulty replica: the simulator's adversary "
                      "behaviours (`replicaio protocols --json` lists them; e.g. "
                      "pbft_equivocate, pbft_silent_primary, pbft_invalid_batch) rewrite every "
                      "message it sends, signed with its own key (tests and demos)")
    node.add_argument("--join", action="store_true",
                      help="this node starts on a new, empty disk replacing a lost one (Raft: "
                      "it does not vote until it caught up; only matters on a blank disk)")


def add_down_arguments(down: argparse.ArgumentParser) -> None:
    """The options of every "stop a local cluster" command."""
    down.add_argument("--data-dir", required=True)
    down.add_argument("--timeout", type=float, default=10.0,
                      help="seconds to wait for a node to stop before it is killed")
    down.add_argument("--json", action="store_true", help="one JSON object on stdout")


def add_runtime_commands(commands: Any) -> None:
    """Add the runtime subcommands to the ``replicaio`` parser's subparsers."""
    node = commands.add_parser("node", help="run one node of a live cluster")
    add_node_arguments(node)
    node.set_defaults(handler=command_node)

    cluster = commands.add_parser("cluster", help="start or stop a local cluster of processes")
    actions = cluster.add_subparsers(dest="cluster_command", required=True)
    up = actions.add_parser("up", help="start a local cluster (one process per node)")
    up.add_argument("--protocol", default="bracha")
    up.add_argument("--nodes", type=positive_int, default=4, help="cluster size")
    up.add_argument("--f", type=int, default=None, help="faults tolerated (default: the most)")
    up.add_argument("--base-port", type=int, required=True)
    up.add_argument("--data-dir", required=True)
    up.add_argument("--host", default="127.0.0.1", help="address every node binds")
    up.add_argument("--auth", choices=("hmac", "ed25519"), default="hmac")
    up.add_argument("--metrics", action="store_true", help="serve Prometheus metrics too")
    up.add_argument("--no-fsync", action="store_true", help="skip fsync (tests only)")
    up.add_argument("--event-logs", action="store_true", help="record D/node-I.events")
    up.add_argument("--ready-timeout", type=float, default=20.0,
                    help="seconds to wait for the nodes to listen")
    up.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="the nodes' log level")
    up.add_argument("--json", action="store_true", help="one JSON object on stdout")
    up.set_defaults(handler=command_cluster_up)
    down = actions.add_parser("down", help="stop the cluster started in --data-dir")
    add_down_arguments(down)
    down.set_defaults(handler=command_cluster_down)

    broadcast = commands.add_parser("broadcast", help="broadcast a value through one node")
    broadcast.add_argument("--config", required=True)
    broadcast.add_argument("--node", type=int, required=True)
    broadcast.add_argument("value", help="the value (UTF-8 text)")
    broadcast.add_argument("--timeout", type=float, default=10.0)
    broadcast.add_argument("--no-wait", action="store_true",
                           help="return once accepted, without waiting for the delivery")
    broadcast.set_defaults(handler=command_broadcast)

    from replicaio.runtime.certs import add_certs_command

    add_certs_command(commands)


# -- node ----------------------------------------------------------------------------------


def command_node(args: argparse.Namespace) -> int:
    from replicaio.runtime.host import run_node
    from replicaio.runtime.logs import configure_logging
    from replicaio.storage.base import StorageError

    configure_logging(args.log_level, args.id)
    cluster = load_cluster_file(args.config)
    cluster.node(args.id)
    if getattr(args, "join", False):
        cluster = joining(cluster)
    outgoing = None
    if getattr(args, "byzantine", None):
        # The cli wires the simulator's behaviours in (runtime does not import sim).
        build = getattr(args, "byzantine_builder", None)
        if build is None:
            raise UsageError("--byzantine is not available from this entry point")
        outgoing = build(args.byzantine, cluster, args.id)
    try:
        run_node(cluster, args.id, event_log=args.event_log, loop=args.loop, outgoing=outgoing)
    except StorageError as error:
        print(f"replicaio: error: node {args.id} cannot open its storage: {error}",
              file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        print(f"replicaio: error: node {args.id}: {error}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def joining(cluster: ClusterFile) -> ClusterFile:
    """``cluster`` with this node's protocol told it joins on a new disk (``join=1``;
    the event log records the name, so a replay builds the same node)."""
    from replicaio.assembly import protocol_factory

    name = cluster.protocol
    full = name + (",join=1" if ":" in name else ":join=1")
    try:
        protocol_factory(full)
    except UsageError as error:
        raise UsageError(f"--join: protocol {name!r} has no join option ({error})") from None
    return dataclasses.replace(cluster, protocol=full)


# -- cluster up / down -------------------------------------------------------------------


NODE: tuple[str, ...] = ("node",)  # the CLI command a node process runs
KV_NODE: tuple[str, ...] = ("kv", "node")


def start_nodes(
    directory: Path, config_path: Path, cluster: ClusterFile, event_logs: bool,
    log_level: str = "info", only: int | None = None, kind: tuple[str, ...] = NODE,
) -> list[subprocess.Popen[bytes]]:
    """Start ``cluster``'s node processes (or node ``only``) as ``replicaio <kind>``,
    each in its own session, output appended to ``node-<id>.log`` and its pid
    written to ``node-<id>.pid`` in ``directory``."""
    processes = []
    for entry in cluster.nodes:
        if only is not None and entry.id != only:
            continue
        command = [sys.executable, "-m", "replicaio.cli", *kind, "--config",
                   str(config_path), "--id", str(entry.id), "--log-level", log_level]
        if event_logs:
            command += ["--event-log", str(directory / f"node-{entry.id}.events")]
        with open(directory / f"node-{entry.id}.log", "ab") as output:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (directory / f"node-{entry.id}.pid").write_text(f"{process.pid}\n")
        processes.append(process)
    return processes


def command_cluster_up(args: argparse.Namespace) -> int:
    directory = Path(args.data_dir).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    if running_pids(directory):
        raise UsageError(f"a cluster is already running in {directory} (cluster down first)")
    config_path = directory / CLUSTER_FILE
    if not config_path.exists():
        write_local_cluster(directory, args)
    cluster = load_cluster_file(config_path)
    if cluster.protocol != args.protocol or cluster.n != args.nodes:
        raise UsageError(
            f"{config_path} describes {cluster.n} {cluster.protocol} nodes; remove the "
            "directory to start a different cluster"
        )
    processes = launch(directory, config_path, cluster, args)
    if processes is None:
        return EXIT_FAILED
    if args.json:
        print_json(cluster_report("cluster up", cluster, processes, config_path))
        return EXIT_OK
    for entry, process in zip(cluster.nodes, processes, strict=True):
        metrics = f" metrics {entry.metrics}" if entry.metrics else ""
        print(f"node {entry.id}: pid {process.pid} peer {entry.peer} client {entry.client}"
              f"{metrics}")
    print(f"cluster up: {cluster.n} {cluster.protocol} nodes; config {config_path}")
    return EXIT_OK


Waiter = Callable[[ClusterFile, list[subprocess.Popen[bytes]], float, Path], str | None]


def launch(
    directory: Path, config_path: Path, cluster: ClusterFile, args: argparse.Namespace, *,
    client: str = "client", kind: tuple[str, ...] = NODE, serving: Waiter | None = None,
) -> list[subprocess.Popen[bytes]] | None:
    """Start every node of ``cluster`` (``cluster up``, ``kv up``: ``args`` gives
    the event logs, log level and ready timeout) once all its ports are free,
    and wait until every one is ready, and then until ``serving`` says so too:
    the processes, or ``None`` once what failed is said on stderr (the nodes
    started are stopped). ``client`` names the client port in what it says."""
    busy = ports_in_use(cluster, client)
    if busy:
        print(f"replicaio: error: cannot start: {'; '.join(busy)}", file=sys.stderr)
        return None
    processes = start_nodes(directory, config_path, cluster, args.event_logs, args.log_level,
                            kind=kind)
    failed = wait_until_ready(cluster, processes, args.ready_timeout, directory)
    if failed is None and serving is not None:
        failed = serving(cluster, processes, args.ready_timeout, directory)
    if failed is not None:
        print(f"replicaio: error: {failed}; see {directory}/node-*.log", file=sys.stderr)
        stop_cluster(directory, timeout_s=5.0)
        return None
    return processes


def cluster_report(command: str, cluster: ClusterFile, processes: Sequence[Any],
                   config_path: Path) -> dict[str, Any]:
    """What ``cluster up``/``kv up --json`` print: the nodes and where they listen."""
    return {
        "command": command, "protocol": cluster.protocol, "nodes": [
            {"id": entry.id, "pid": process.pid, "peer": str(entry.peer),
             "client": str(entry.client),
             "metrics": None if entry.metrics is None else str(entry.metrics)}
            for entry, process in zip(cluster.nodes, processes, strict=True)
        ], "config": str(config_path),
    }


def write_local_cluster(directory: Path, args: argparse.Namespace) -> None:
    """Write the cluster file (and keys) of a cluster on one host."""
    n, base, host = args.nodes, args.base_port, args.host
    if n < 1 or base < 1 or base + 3 * n > 65536:
        raise UsageError("--nodes must be >= 1 and the ports B .. B+3N-1 must be valid")
    secret_path = directory / SECRET_FILE
    write_private(secret_path, secrets.token_hex(32) + "\n")
    nodes: list[dict[str, Any]] = []
    for node_id in range(n):
        node: dict[str, Any] = {
            "id": node_id,
            "peer": f"{host}:{base + node_id}",
            "client": f"{host}:{base + n + node_id}",
            "data_dir": f"node-{node_id}",
        }
        if args.metrics:
            node["metrics"] = f"{host}:{base + 2 * n + node_id}"
        if args.auth == "ed25519":
            write_node_key(directory, node)
        nodes.append(node)
    sections = write_usig_keys(directory, args.protocol, nodes)
    if args.no_fsync:
        sections["host"] = {"fsync": False}
    text = render_cluster_file(
        protocol=args.protocol, nodes=nodes, auth=args.auth, f=args.f,
        secret_file=SECRET_FILE if args.auth == "hmac" else None, sections=sections,
    )
    (directory / CLUSTER_FILE).write_text(text)


def ports_in_use(cluster: ClusterFile, client: str = "client") -> list[str]:
    """Every port of ``cluster`` that this host cannot listen on now, said as whose
    port it is and why (checked before starting nodes: a node that cannot listen
    stops, and another program on its client port would answer in its place)."""
    problems = []
    for entry in cluster.nodes:
        for what, address in (("peer", entry.peer), (client, entry.client),
                              ("metrics", entry.metrics)):
            if address is None or address.port == 0:
                continue
            problem = cannot_listen(address.host, address.port)
            if problem is not None:
                problems.append(f"the {what} port {address} of node {entry.id} {problem}")
    return problems


def cannot_listen(host: str, port: int) -> str | None:
    """Why nothing could listen on ``host:port`` now, or ``None`` if it could."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the node does
            probe.bind(address)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            return "is already in use"
        return f"cannot be listened on: {error.strerror or error}"
    return None


def exit_reason(directory: Path | None, node_id: int, status: int) -> str:
    """``node I exited with status S``, with the last line of its log when there is one."""
    reason = f"node {node_id} exited with status {status}"
    if directory is None:
        return reason
    with contextlib.suppress(OSError):
        lines = (directory / f"node-{node_id}.log").read_text(errors="replace").splitlines()
        errors = [line for line in lines if line.startswith("replicaio: error:")]
        if errors:
            return f"{reason}: {errors[-1].removeprefix('replicaio: error: ')}"
    return reason


def wait_until_ready(
    cluster: ClusterFile, processes: list[subprocess.Popen[bytes]], timeout_s: float,
    directory: Path | None = None,
) -> str | None:
    """``None`` once every node's client port accepts on the node's own socket, else
    what went wrong (with
    the error a node that exited wrote to ``directory/node-I.log``)."""
    deadline = time.monotonic() + timeout_s
    waiting = {entry.id for entry in cluster.nodes}
    while waiting:
        for node_id in sorted(waiting):
            status = processes[node_id].poll()
            if status is not None:
                return exit_reason(directory, node_id, status)
            entry = cluster.nodes[node_id]
            try:
                with socket.create_connection((entry.client.host, entry.client.port), 0.2):
                    pass
            except OSError:
                continue
            # The port may be another process's (bound after the check before the
            # start): then this node exits, address in use, and says so above.
            if listens_on(processes[node_id].pid, entry.client.port) is not False:
                waiting.discard(node_id)
        if waiting and time.monotonic() > deadline:
            return f"nodes {sorted(waiting)} not ready after {timeout_s} s"
        if waiting:
            time.sleep(0.05)
    return None


def command_cluster_down(args: argparse.Namespace) -> int:
    return command_down(args, "cluster down")


def command_down(args: argparse.Namespace, command: str) -> int:
    """``cluster down``, ``kv down``: stop the cluster of ``--data-dir`` and say
    how many node processes stopped."""
    directory = Path(args.data_dir).resolve()
    if not (directory / CLUSTER_FILE).exists():
        raise UsageError(f"no cluster in {directory}")
    stopped = stop_cluster(directory, timeout_s=args.timeout)
    if args.json:
        print_json({"command": command, "stopped": stopped, "data_dir": str(directory)})
    else:
        print(f"{command}: {stopped} node process(es) stopped")
    return EXIT_OK


def running_pids(directory: Path) -> dict[Path, int]:
    """The live nodes of this directory's cluster: those of its pid files, and any
    other process running ``replicaio ... node --config`` on its cluster file
    (started by hand, or by a ``kv up`` whose pid file is gone), keyed by
    ``/proc/<pid>``."""
    found: dict[Path, int] = {}
    for pid_file in sorted(directory.glob("node-*.pid")):
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
        if is_our_node(pid, directory):
            found[pid_file] = pid
    known = set(found.values())
    for entry in Path("/proc").iterdir():
        pid = int(entry.name) if entry.name.isdigit() else 0
        if pid and pid not in known and pid != os.getpid() and is_our_node(pid, directory):
            found[entry] = pid
    return found


def is_our_node(pid: int, directory: Path) -> bool:
    """True if ``pid`` is alive and runs ``replicaio ... node`` on this directory's
    cluster file, named in any way (guards against a recycled pid)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    if state == "Z" or b"node" not in command or b"--config" not in command:
        return False
    position = command.index(b"--config") + 1
    if position >= len(command):
        return False
    named = Path(os.fsdecode(command[position]))
    if not named.is_absolute():
        try:
            named = Path(os.readlink(f"/proc/{pid}/cwd")) / named
        except OSError:
            return False
    return os.path.normpath(named) == os.path.normpath(directory / CLUSTER_FILE)


def node_id_of(pid: int) -> int | None:
    """The ``--id`` a node process was started with, if it can be read."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return int(command[command.index(b"--id") + 1])
    except (OSError, ValueError, IndexError):
        return None


def stop_cluster(directory: Path, *, timeout_s: float) -> int:
    running = running_pids(directory)
    for pid in running.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(
        is_our_node(pid, directory) for pid in running.values()
    ):
        time.sleep(0.05)
    for pid in running.values():
        if is_our_node(pid, directory):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for pid_file in directory.glob("node-*.pid"):
        pid_file.unlink(missing_ok=True)
    return len(running)


# -- broadcast -----------------------------------------------------------------------------


def command_broadcast(args: argparse.Namespace) -> int:
    from replicaio.interfaces.broadcast import Accepted, Delivered
    from replicaio.runtime.client import HistoryEnd, RequestRejected, StreamClient

    cluster = load_cluster_file(args.config)
    entry = cluster.node(args.node)
    value = args.value.encode()
    started = time.monotonic()
    deadline = started + args.timeout
    report: dict[str, Any] = {"node": args.node, "value": args.value}
    try:
        client = StreamClient(entry.client, timeout_s=args.timeout)
    except OSError as error:
        raise UsageError(f"cannot reach node {args.node} at {entry.client}: {error}") from error
    with client:
        if not wait_for(client, deadline, lambda message: type(message) is HistoryEnd):
            return timed_out(report, "the node's greeting")
        client.request(value)
        accepted = wait_for(client, deadline, lambda message: (
            type(message) is RequestRejected
            or (type(message) is Accepted and message.sender == args.node
                and message.value == value)
        ))
        if accepted is None:
            return timed_out(report, "acceptance")
        if type(accepted) is RequestRejected:
            report["rejected"] = accepted.reason
            print(json.dumps(report))
            return EXIT_FAILED
        assert type(accepted) is Accepted
        report["seq"] = accepted.seq
        report["accepted_ms"] = round((time.monotonic() - started) * 1000, 3)
        if not args.no_wait:
            delivered = wait_for(client, deadline, lambda message: (
                type(message) is Delivered and message.sender == args.node
                and message.seq == accepted.seq
            ))
            if delivered is None:
                return timed_out(report, "delivery")
            report["delivered_ms"] = round((time.monotonic() - started) * 1000, 3)
    print(json.dumps(report))
    return EXIT_OK


def wait_for(client: Any, deadline: float, matches: Any) -> Any | None:
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        message = client.next_output(remaining)
        if message is None:
            return None  # timed out, or the node closed the connection
        if matches(message):
            return message


def timed_out(report: dict[str, Any], what: str) -> int:
    report["error"] = f"no {what} before the timeout"
    print(json.dumps(report))
    return EXIT_FAILED
