"""A testbed of network namespaces: one "host" per node, joined by a bridge.

:class:`Testbed` creates, for a run tagged ``T`` (unique per process), a Linux
bridge ``rtbT`` in the caller's namespace with address ``.254`` of a private
/24 subnet, and per node ``i`` a namespace ``replicaio-T-nI`` holding one end
of a veth pair (``eth0``, address ``.i+1``) whose other end (``rtvTnI``) is a
port of the bridge. The torture's clients run in the caller's namespace and
reach the nodes through the bridge; node-to-node traffic crosses the bridge.

Faults on the network are applied *inside* the node namespaces only, so
nothing outside the testbed is ever touched: packet filters in a table of
our own (``nft``, or ``iptables`` where ``nft`` is missing) drop inbound
packets from chosen peers; ``tc netem`` on a node's ``eth0`` delays, drops,
duplicates and reorders what it sends (on kernels without netem: ``nft``
loss and duplication, and :mod:`replicaio.torture.shaper` holding the real
packets in an NFQUEUE for delay, jitter and reordering). A small ``tmpfs`` mounted on one
node's data directory lets the nemesis fill its disk.

Teardown (:meth:`Testbed.teardown`) deletes exactly what :meth:`create`
made, in reverse order, and is idempotent: deleting a namespace deletes its
veth pair and every filter and qdisc inside it; the bridge and the mounts
are removed by name. Every external command runs with a timeout.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from replicaio.core.errors import ReplicaioError

COMMAND_TIMEOUT_S = 15.0
FILTER_TABLE = "replicaio_torture"
SHAPE_TABLE = "replicaio_torture_shape"
SUBNET_ATTEMPTS_MAX = 32
FILL_CHUNK_BYTES = 1 << 20
LEFTOVER_WAIT_S = 10.0
SHAPER_QUEUE = 1  # NFQUEUE numbers are per namespace: one per node's namespace
SHAPER_READY_TIMEOUT_S = 10.0


class TortureError(ReplicaioError):
    """The testbed cannot be built or driven (not root, a tool missing, a command failed)."""


def run_command(arguments: Sequence[str], *, check: bool = True, stdin: str | None = None) -> str:
    """Run one command (bounded by ``COMMAND_TIMEOUT_S``); its stdout, or
    :class:`TortureError` with its stderr when ``check`` and it fails ("" unchecked)."""
    return attempt_command(arguments, check=check, stdin=stdin) or ""


def attempt_command(arguments: Sequence[str], *, check: bool = False, stdin: str | None = None
                    ) -> str | None:
    """Like :func:`run_command`, but ``None`` when an unchecked command fails."""
    try:
        done = subprocess.run(
            list(arguments), input=stdin, capture_output=True, text=True,
            timeout=COMMAND_TIMEOUT_S, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        if check:
            raise TortureError(f"{' '.join(arguments)}: {error}") from error
        return None
    if done.returncode != 0:
        if check:
            raise TortureError(f"{' '.join(arguments)}: {done.stderr.strip() or done.returncode}")
        return None
    return done.stdout


def missing_requirements(euid: int | None = None) -> str | None:
    """Why this machine cannot run a torture (``None`` if it can): root and the tools
    (``euid``: whose rights to judge; the current process's by default)."""
    if (os.geteuid() if euid is None else euid) != 0:
        return ("replicaio torture needs root: it creates network namespaces, a bridge, packet "
                "filters and a tmpfs (run it as root, e.g. with sudo)")
    for tool, package in (("ip", "iproute2"), ("tc", "iproute2"), ("mount", "mount")):
        if shutil.which(tool) is None:
            return f"replicaio torture needs `{tool}` (install {package})"
    if shutil.which("nft") is None and shutil.which("iptables") is None:
        return "replicaio torture needs `nft` or `iptables` (install nftables or iptables)"
    return None


def choose_subnet(seed: int) -> ipaddress.IPv4Network:
    """A /24 in 10.0.0.0/8 that overlaps no route of this machine (bounded attempts)."""
    routes = []
    for line in run_command(["ip", "-4", "route", "show", "table", "all"]).splitlines():
        word = line.split()[0] if line.split() else ""
        if word in {"local", "broadcast", "unreachable", "prohibit", "blackhole"}:
            word = line.split()[1] if len(line.split()) > 1 else ""
        with contextlib.suppress(ValueError):
            routes.append(ipaddress.ip_network(word, strict=False))
    for attempt in range(SUBNET_ATTEMPTS_MAX):
        index = (seed * 7919 + os.getpid() + attempt * 104729) % (200 * 256)
        candidate = ipaddress.IPv4Network(f"10.{40 + index // 256}.{index % 256}.0/24")
        if not any(candidate.overlaps(route) for route in routes
                   if isinstance(route, ipaddress.IPv4Network) and route.prefixlen > 0):
            return candidate
    raise TortureError("no free /24 in 10.40.0.0 .. 10.239.255.0 for the testbed")


@dataclass
class Testbed:
    """Namespaces, veths, a bridge and mounts of one run; see the module docstring."""

    tag: str
    nodes: int
    subnet: ipaddress.IPv4Network
    namespaces: list[str] = field(default_factory=list)
    bridge: str | None = None
    mounts: list[Path] = field(default_factory=list)
    firewall: str = "nft"
    netem_available: bool = False
    nfqueue_available: bool = False
    shapers: dict[int, subprocess.Popen[str]] = field(default_factory=dict)
    shapes_made: int = 0

    def __post_init__(self) -> None:
        assert 1 <= self.nodes <= 200
        assert len(self.tag) <= 6, "interface names are at most 15 characters"
        self.firewall = "nft" if shutil.which("nft") is not None else "iptables"

    # -- names and addresses --------------------------------------------------------------

    def namespace(self, node: int) -> str:
        return f"replicaio-{self.tag}-n{node}"

    def bridge_name(self) -> str:
        return f"rtb{self.tag}"

    def veth_name(self, node: int) -> str:
        return f"rtv{self.tag}n{node}"

    def address(self, node: int) -> str:
        return str(self.subnet.network_address + node + 1)

    def client_address(self) -> str:
        return str(self.subnet.network_address + 254)

    # -- building and tearing down -----------------------------------------------------------

    def create(self) -> None:
        """Build the bridge and one namespace per node (each step recorded for teardown)."""
        bridge = self.bridge_name()
        run_command(["ip", "link", "add", bridge, "type", "bridge"])
        self.bridge = bridge
        run_command(["ip", "addr", "add", f"{self.client_address()}/24", "dev", bridge])
        run_command(["ip", "link", "set", bridge, "up"])
        for node in range(self.nodes):
            namespace, veth = self.namespace(node), self.veth_name(node)
            run_command(["ip", "netns", "add", namespace])
            self.namespaces.append(namespace)
            run_command(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0",
                         "netns", namespace])
            run_command(["ip", "link", "set", veth, "master", bridge, "up"])
            run_command(["ip", "-n", namespace, "addr", "add", f"{self.address(node)}/24",
                         "dev", "eth0"])
            run_command(["ip", "-n", namespace, "link", "set", "eth0", "up"])
            run_command(["ip", "-n", namespace, "link", "set", "lo", "up"])
            self.install_filter(node)
        self.netem_available = self.detect_netem()
        self.nfqueue_available = not self.netem_available and self.detect_nfqueue()

    def teardown(self) -> list[str]:
        """Remove everything :meth:`create` and :meth:`mount_tmpfs` made; what failed."""
        problems = []
        for node in list(self.shapers):
            self.stop_shaper(node)
        for directory in reversed(self.mounts):
            if run_command(["umount", str(directory)], check=False) == "" and is_mount(directory):
                run_command(["umount", "-l", str(directory)], check=False)
            if is_mount(directory):
                problems.append(f"still mounted: {directory}")
        self.mounts.clear()
        for node in reversed(range(len(self.namespaces))):
            # The veth first: deleting it is synchronous (both ends), while the
            # kernel frees a deleted namespace's devices later, asynchronously.
            run_command(["ip", "link", "del", self.veth_name(node)], check=False)
            run_command(["ip", "netns", "del", self.namespaces[node]], check=False)
        self.namespaces.clear()
        if self.bridge is not None:
            run_command(["ip", "link", "del", self.bridge], check=False)
            self.bridge = None
        deadline = time.monotonic() + LEFTOVER_WAIT_S
        left = self.leftovers()
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = self.leftovers()
        return problems + left

    def leftovers(self) -> list[str]:
        """Namespaces and links of this run's tag that still exist."""
        found = []
        prefix = f"replicaio-{self.tag}-"
        for line in run_command(["ip", "netns", "list"], check=False).splitlines():
            if line.split(" ")[0].startswith(prefix):
                found.append(f"namespace {line.split(' ')[0]}")
        for name in (self.bridge_name(), *(self.veth_name(n) for n in range(self.nodes))):
            if run_command(["ip", "link", "show", name], check=False):
                found.append(f"link {name}")
        return found

    # -- the node's commands ------------------------------------------------------------------

    def exec_prefix(self, node: int) -> list[str]:
        """The argv prefix that runs a command inside ``node``'s namespace."""
        return ["ip", "netns", "exec", self.namespace(node)]

    def mount_tmpfs(self, directory: Path, size_bytes: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        run_command(["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0700", "tmpfs",
                     str(directory)])
        self.mounts.append(directory)

    # -- packet filters -------------------------------------------------------------------

    def install_filter(self, node: int) -> None:
        """An empty input filter of our own in ``node``'s namespace."""
        if self.firewall == "nft":
            rules = (f"table inet {FILTER_TABLE} {{\n chain input {{\n"
                     "  type filter hook input priority 0; policy accept;\n }\n}\n")
            run_command([*self.exec_prefix(node), "nft", "-f", "-"], stdin=rules)

    def block(self, node: int, sources: Sequence[int]) -> None:
        """``node`` drops every packet from the nodes ``sources`` (replacing earlier blocks)."""
        self.unblock(node)
        if not sources:
            return
        addresses = [self.address(source) for source in sorted(sources)]
        if self.firewall == "nft":
            run_command([*self.exec_prefix(node), "nft", "add", "rule", "inet", FILTER_TABLE,
                         "input", "ip", "saddr", "{", ", ".join(addresses), "}", "drop"])
            return
        for address in addresses:
            run_command([*self.exec_prefix(node), "iptables", "-A", "INPUT", "-s", address,
                         "-j", "DROP"])

    def unblock(self, node: int) -> None:
        if self.firewall == "nft":
            run_command([*self.exec_prefix(node), "nft", "flush", "chain", "inet", FILTER_TABLE,
                         "input"])
        else:
            run_command([*self.exec_prefix(node), "iptables", "-F", "INPUT"])

    # -- link shaping -------------------------------------------------------------------

    def detect_netem(self) -> bool:
        """Whether this kernel has ``sch_netem`` (tried on a namespace's loopback)."""
        if not self.namespaces:
            return False
        prefix = self.exec_prefix(0)
        added = attempt_command([*prefix, "tc", "qdisc", "add", "dev", "lo", "root", "netem",
                                 "delay", "1ms"])
        run_command([*prefix, "tc", "qdisc", "del", "dev", "lo", "root"], check=False)
        return added is not None

    def detect_nfqueue(self) -> bool:
        """Whether an ``NFQUEUE`` rule can be added (for :mod:`shaper`)."""
        if not self.namespaces or shutil.which("iptables") is None:
            return False
        rule = ["OUTPUT", "-o", "lo", "-j", "NFQUEUE", "--queue-num", str(SHAPER_QUEUE),
                "--queue-bypass"]
        prefix = self.exec_prefix(0)
        added = attempt_command([*prefix, "iptables", "-A", *rule])
        run_command([*prefix, "iptables", "-D", *rule], check=False)
        return added is not None

    def shape(self, node: int, link: LinkShape) -> str:
        """Make what ``node`` sends late, lost, duplicated, reordered; what was applied.

        With ``sch_netem``: one ``tc netem`` qdisc on ``eth0`` does it all. Without
        it (some VM kernels): loss and duplication by ``nft`` rules on output
        (``numgen random``, ``dup to``), a slow link by ``htb``, and delay, jitter
        and reordering by the userspace :mod:`shaper` holding the real packets in
        an NFQUEUE; where even that is missing, the description says what was not
        injected.
        """
        self.clear_shape(node)
        prefix = self.exec_prefix(node)
        if self.netem_available:
            run_command([*prefix, "tc", "qdisc", "replace", "dev", "eth0", "root", "netem",
                         *link.netem_arguments()])
            return "tc netem " + " ".join(link.netem_arguments())
        applied = []
        rules = [f"table ip {SHAPE_TABLE} {{\n chain output {{\n"
                 "  type filter hook output priority 0; policy accept;\n"]
        if link.loss_percent:
            rules.append(f"  oifname \"eth0\" numgen random mod 100 < {link.loss_percent} drop\n")
            applied.append(f"loss {link.loss_percent}%")
        if link.duplicate_percent:
            for peer in range(self.nodes + 1):
                address = self.client_address() if peer == self.nodes else self.address(peer)
                rules.append(f"  ip daddr {address} numgen random mod 100 < "
                             f"{link.duplicate_percent} dup to {address} device \"eth0\"\n")
            applied.append(f"duplicate {link.duplicate_percent}%")
        rules.append(" }\n}\n")
        run_command([*prefix, "nft", "-f", "-"], stdin="".join(rules))
        if link.rate_kbit:
            run_command([*prefix, "tc", "qdisc", "replace", "dev", "eth0", "root", "handle",
                         "1:", "htb", "default", "10"])
            run_command([*prefix, "tc", "class", "add", "dev", "eth0", "parent", "1:",
                         "classid", "1:10", "htb", "rate", f"{link.rate_kbit}kbit"])
            applied.append(f"rate {link.rate_kbit}kbit (htb)")
        if link.delay_ms or link.jitter_ms or link.reorder_percent:
            applied.append(self.start_shaper(node, link))
        return "nft/htb " + ", ".join(applied)

    def start_shaper(self, node: int, link: LinkShape) -> str:
        """Delay, jitter and reorder ``node``'s outgoing packets in userspace
        (:mod:`replicaio.torture.shaper`); what was applied, or why not."""
        wanted = (f"delay {link.delay_ms}ms jitter {link.jitter_ms}ms reorder "
                  f"{link.reorder_percent}%")
        if not self.nfqueue_available:
            return f"no {wanted}: this kernel has no sch_netem and no NFQUEUE"
        prefix = self.exec_prefix(node)
        self.shapes_made += 1
        process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "replicaio.torture.shaper",
             "--queue", str(SHAPER_QUEUE), "--delay-ms", str(link.delay_ms),
             "--jitter-ms", str(link.jitter_ms), "--reorder-percent", str(link.reorder_percent),
             "--seed", str(self.shapes_made)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.shapers[node] = process
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], SHAPER_READY_TIMEOUT_S)
        if not ready or process.stdout.readline().strip() != "ready":
            self.stop_shaper(node)
            return f"no {wanted}: the shaper did not start"
        run_command([*prefix, "iptables", "-A", *shaper_rule()])
        return f"{wanted} (NFQUEUE shaper)"

    def stop_shaper(self, node: int) -> str:
        """Stop ``node``'s shaper (its held packets go out first); its counters."""
        run_command([*self.exec_prefix(node), "iptables", "-D", *shaper_rule()], check=False)
        process = self.shapers.pop(node, None)
        if process is None:
            return ""
        if process.poll() is None:
            process.terminate()
        try:
            _, said = process.communicate(timeout=COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            _, said = process.communicate(timeout=COMMAND_TIMEOUT_S)
        return said.strip()

    def clear_shape(self, node: int) -> None:
        prefix = self.exec_prefix(node)
        self.stop_shaper(node)
        run_command([*prefix, "tc", "qdisc", "del", "dev", "eth0", "root"], check=False)
        run_command([*prefix, "nft", "delete", "table", "ip", SHAPE_TABLE], check=False)


def shaper_rule() -> list[str]:
    """The ``iptables`` rule that hands a node's outgoing packets to its shaper
    (they pass untouched while no shaper listens: ``--queue-bypass``)."""
    return ["OUTPUT", "-o", "eth0", "-j", "NFQUEUE", "--queue-num", str(SHAPER_QUEUE),
            "--queue-bypass"]


@dataclass(frozen=True, slots=True)
class LinkShape:
    """How a node's outgoing link misbehaves (``tc netem`` terms)."""

    delay_ms: int = 0
    jitter_ms: int = 0
    loss_percent: int = 0
    duplicate_percent: int = 0
    reorder_percent: int = 0
    rate_kbit: int = 0
    limit_packets: int = 0  # packets held late at most (0: the qdisc's default, 1,000)

    def netem_arguments(self) -> list[str]:
        arguments = ["delay", f"{self.delay_ms}ms", f"{self.jitter_ms}ms",
                     "loss", f"{self.loss_percent}%", "duplicate", f"{self.duplicate_percent}%"]
        if self.reorder_percent and self.delay_ms:
            arguments += ["reorder", f"{self.reorder_percent}%", "50%"]
        if self.rate_kbit:
            arguments += ["rate", f"{self.rate_kbit}kbit"]
        if self.limit_packets:
            arguments += ["limit", str(self.limit_packets)]
        return arguments


def is_mount(directory: Path) -> bool:
    with contextlib.suppress(OSError):
        return os.path.ismount(directory)
    return False


def fill_disk(directory: Path, bytes_max: int) -> int:
    """Write a filler file into ``directory`` until its file system is full (at most
    ``bytes_max``); the bytes written."""
    written = 0
    path = directory / "torture-filler"
    with contextlib.suppress(OSError), open(path, "ab", buffering=0) as filler:
        chunk = b"\0" * FILL_CHUNK_BYTES
        while written < bytes_max:
            written += filler.write(chunk) or 0
    return written


def free_disk(directory: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (directory / "torture-filler").unlink()
