"""The TOML cluster file: who the nodes are, where they listen, how they authenticate.

One file describes a whole cluster and every node process reads the same
file (``replicaio node --config FILE --id I``). It is validated completely at
start; any problem raises :class:`ClusterFileError`, whose ``field`` names the
offending entry (``nodes[2].peer``, ``transport.frame_bytes_max``) and whose
message says what is expected. Unknown keys are errors too: a typo must not
silently fall back to a default. The format, with an example, is in
``docs/runtime.md``; relative paths are relative to the file's directory.

Sections: ``[protocol]`` (name, f, and params: integers a replicated service
such as ``raft`` takes, ``snapshot`` and ``batch``), ``[auth]`` (kind and secret or
keys), ``[node]`` (the core's :class:`~replicaio.core.node.NodeParams`),
``[transport]`` (:class:`TransportParams`), ``[host]`` (:class:`HostParams`),
``[service]`` (the client service's own parameters, checked by the service;
see ``replicaio.runtime.client``), ``[tls]`` (mutual TLS: ``ca_file``, ``peer``,
``client``, ``handshake_timeout_ms``, ``handshakes_pending_max``; each node then
names its ``tls_cert`` and ``tls_key``; see ``replicaio.runtime.tls``), ``[usig]``
(required by protocols with a trusted component, MinBFT: ``kind = "ed25519"``,
each node naming its ``usig_key_file`` and ``usig_public_key``, or ``kind =
"hmac"`` with a ``secret_file`` shared by the trusted components; see
docs/minbft.md, *Live*), and one ``[[nodes]]`` table per node.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replicaio.assembly import SERVICES as REPLICATED_SERVICES
from replicaio.assembly import (
    TRANSACTIONAL,
    frame_bytes_needed,
    live_protocol_params,
    protocol_factory,
    protocol_names,
    usig_admission,
    usig_scheme,
)
from replicaio.core.codec import FRAME_BYTES_MAX_DEFAULT
from replicaio.core.config import NODES_MAX, ClusterConfig, Resilience
from replicaio.core.errors import ConfigError, UsageError
from replicaio.core.node import NodeParams
from replicaio.core.signing import Ed25519Signer, KeyedHashSigner, Signer
from replicaio.core.stream import GROUPS_MAX
from replicaio.runtime.crypto import (
    ED25519_KEY_BYTES,
    SECRET_BYTES_MIN,
    Authenticator,
    Ed25519Authenticator,
    HmacAuthenticator,
)
from replicaio.runtime.tls import TlsConfig
from replicaio.storage.file import WAL_BYTES_COMPACT_THRESHOLD_DEFAULT

USIG_EPOCH_MAX = (1 << 62) - 1  # MinBFT's ``usig.EPOCH_MAX``: an admission's epoch, at most

AUTH_KINDS = ("hmac", "ed25519")
USIG_KINDS = ("ed25519", "hmac")
USIG_SECRET_FILE = "usig.secret"
USIG_OPERATOR_KEY_FILE = "usig-operator.key"


class ClusterFileError(ConfigError):
    """The cluster file is invalid; ``field`` names the entry, the message the fix."""

    def __init__(self, field: str, problem: str, file: Path | None = None) -> None:
        where = f"{file}: " if file is not None else ""
        super().__init__(f"{where}{field}: {problem}")
        self.field = field
        self.problem = problem
        self.file = file


@dataclass(frozen=True, slots=True)
class Address:
    """A TCP endpoint ``host:port``."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class TransportParams:
    """Bounds and periods of the peer transport (``[transport]``)."""

    frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT + 1024  # one codec frame plus header and tag
    outbound_queue_max: int = 65_536  # messages per peer; beyond it the oldest is dropped
    # Bytes of the messages queued for one peer (snapshot chunks, large values);
    # beyond it the oldest are dropped. At least one frame.
    outbound_queue_bytes_max: int = 64 << 20
    handshake_timeout_ms: int = 2_000  # two round trips and two tags: short
    handshakes_pending_max: int = 64  # unauthenticated inbound connections at once
    handshakes_per_source_max: int = 8  # of them from one address
    reconnect_delay_ms_min: int = 20
    reconnect_delay_ms_max: int = 2_000
    connect_timeout_ms: int = 2_000

    def validate(self) -> TransportParams:
        for name in (
            "outbound_queue_max",
            "handshake_timeout_ms",
            "handshakes_pending_max",
            "handshakes_per_source_max",
            "reconnect_delay_ms_min",
            "connect_timeout_ms",
        ):
            if getattr(self, name) < 1:
                raise ClusterFileError(f"transport.{name}", "must be >= 1")
        if self.frame_bytes_max < 1024:
            raise ClusterFileError("transport.frame_bytes_max", "must be >= 1024")
        if self.outbound_queue_bytes_max < self.frame_bytes_max:
            raise ClusterFileError(
                "transport.outbound_queue_bytes_max", "must be >= frame_bytes_max"
            )
        if self.handshakes_per_source_max > self.handshakes_pending_max:
            raise ClusterFileError(
                "transport.handshakes_per_source_max", "must be <= handshakes_pending_max"
            )
        if self.reconnect_delay_ms_max < self.reconnect_delay_ms_min:
            raise ClusterFileError(
                "transport.reconnect_delay_ms_max", "must be >= reconnect_delay_ms_min"
            )
        return self


WAL_COMPACT_BYTES_MIN = 4096  # below it every batch or two would compact
PIPELINE_MAX = 8  # batches in flight in a pipelined host (``[host] pipeline``)


@dataclass(frozen=True, slots=True)
class HostParams:
    """Bounds of the node host and its client port (``[host]``)."""

    fsync: bool = True
    inbox_max: int = 16_384  # inputs waiting for a step; readers pause beyond it
    batch_inputs_max: int = 1_024  # inputs stepped together before one sync
    client_service: str = "stream"
    client_connections_max: int = 256
    client_queue_max: int = 65_536  # frames waiting for one client; beyond it, disconnect
    client_queue_bytes_max: int = 40 << 20  # their bytes
    client_history_max: int = 4_096  # outputs replayed to a client that connects later
    client_history_bytes_max: int = 4 << 20  # their bytes
    client_frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT + 1024
    # After the sync, a batch's replies go before its sends (docs/runtime.md).
    replies_first: bool = True
    # Zeros kept written ahead of the log's write position (docs/storage.md, "Writing").
    preallocate_bytes: int = 1 << 20
    # Every sync marked in the superblock (a second fdatasync) before what depends
    # on it leaves, so that a lost acknowledged batch is told from a torn write
    # (docs/storage.md, "Marks"; ADR 0032). false: etcd's guarantee, one flush.
    mark_syncs: bool = True
    # Marks in a slot of the log segment itself, a batch's mark carried by the next
    # batch's flush (ADR 0045); false: in the superblock, a flush and a thread of
    # their own (ADR 0032's layout, kept for comparison; docs/storage.md, "Marks").
    marks_in_log: bool = True
    # Batches stepped, written and marked at once (ADR 0037): the next batch is
    # stepped while earlier ones are flushed and marked; 1 = one batch at a time
    # (docs/benchmarks.md, "A pipelined host (pipe26)").
    pipeline: int = 2
    # A pipelined host's log thread marks its own batch when no later batch waits
    # to be written and the mark thread is idle, sparing the batch a hand-off
    # (ADR 0042); false: the mark thread marks every batch (docs/runtime.md).
    mark_inline: bool = True
    # The log is folded into a snapshot once its live segments exceed this many
    # bytes (and the live data): FileStorage's wal_bytes_compact_threshold.
    wal_compact_bytes: int = WAL_BYTES_COMPACT_THRESHOLD_DEFAULT
    # The node process's generation-0 garbage collection threshold (``gc``): a
    # young collection every this many container allocations net; 0 keeps
    # Python's (700). At 700 a leader at 128 clients collected once per ~90 SETs
    # and promoted what was in flight to the older generations, scanned again
    # there; at 10,000, 0.27x the collection time per SET, each collection a
    # millisecond or two (ADR 0057). Only cyclic garbage waits longer (the rest
    # is freed by reference counting). Objects made at start-up are frozen
    # (``gc.freeze``) either way once the node serves.
    gc_young: int = 10_000

    def validate(self) -> HostParams:
        if self.preallocate_bytes < 0:
            raise ClusterFileError("host.preallocate_bytes", "must be >= 0")
        if self.gc_young < 0:
            raise ClusterFileError("host.gc_young", "must be >= 0 (0: Python's threshold)")
        if self.wal_compact_bytes < WAL_COMPACT_BYTES_MIN:
            raise ClusterFileError("host.wal_compact_bytes", f"must be >= {WAL_COMPACT_BYTES_MIN}")
        if not 1 <= self.pipeline <= PIPELINE_MAX:
            raise ClusterFileError("host.pipeline", f"must be >= 1 and <= {PIPELINE_MAX}")
        for name in (
            "inbox_max",
            "batch_inputs_max",
            "client_connections_max",
            "client_queue_max",
        ):
            if getattr(self, name) < 1:
                raise ClusterFileError(f"host.{name}", "must be >= 1")
        if self.client_frame_bytes_max < 1024:
            raise ClusterFileError("host.client_frame_bytes_max", "must be >= 1024")
        if not 0 <= self.client_history_max < self.client_queue_max:
            raise ClusterFileError(
                "host.client_history_max", "must be >= 0 and < client_queue_max"
            )
        if self.client_queue_bytes_max < 2 * self.client_frame_bytes_max:
            raise ClusterFileError(
                "host.client_queue_bytes_max", "must be >= 2 * client_frame_bytes_max"
            )
        if not 0 <= self.client_history_bytes_max <= (
            self.client_queue_bytes_max - self.client_frame_bytes_max
        ):
            raise ClusterFileError(
                "host.client_history_bytes_max",
                "must be >= 0 and leave client_frame_bytes_max of client_queue_bytes_max",
            )
        from replicaio.runtime.client import service_names  # the services register on import

        if self.client_service not in service_names():
            raise ClusterFileError(
                "host.client_service",
                f"unknown service {self.client_service!r}; known: {', '.join(service_names())}",
            )
        return self


@dataclass(frozen=True, slots=True)
class TlsSection:
    """The ``[tls]`` table (paths resolved)."""

    ca_file: Path
    peer: bool = True
    client: bool = True
    handshake_timeout_ms: int = 5_000
    handshakes_pending_max: int = 64


@dataclass(frozen=True, slots=True)
class NodeEntry:
    """One ``[[nodes]]`` table."""

    id: int
    peer: Address
    client: Address
    data_dir: Path
    metrics: Address | None = None
    key_file: Path | None = None  # Ed25519 private key (hex), read only by this node
    public_key: bytes | None = None
    tls_cert: Path | None = None  # PEM certificate of urn:replicaio:node:<id>
    tls_key: Path | None = None  # its private key
    usig_key_file: Path | None = None  # its USIG's Ed25519 private key (hex)
    usig_public_key: bytes | None = None
    usig_epoch: int = 0  # above 0: the operator admitted a new USIG (ADR 0026)
    usig_admission: bytes | None = None  # the operator's certificate of that epoch
    # A node of several MinBFT groups: each group's USIG has its epochs (ADR
    # 0031), admitted per group: ``usig_groups = [[group, epoch, "hex"], ...]``.
    usig_groups: tuple[tuple[int, int, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class ClusterFile:
    """A validated cluster file; see the module docstring."""

    protocol: str
    f: int
    nodes: tuple[NodeEntry, ...]
    auth: str
    secret: bytes | None
    protocol_params: dict[str, Any] = field(default_factory=dict)
    node_params: NodeParams = field(default_factory=NodeParams)
    transport: TransportParams = field(default_factory=TransportParams)
    host: HostParams = field(default_factory=HostParams)
    path: Path | None = None
    service_params: dict[str, Any] = field(default_factory=dict)  # [service], checked by it
    tls: TlsSection | None = None
    usig: str | None = None  # the [usig] kind
    usig_secret: bytes | None = None  # kind hmac: the trusted components' shared key
    usig_operator_public_key: bytes | None = None  # kind ed25519: checks admissions

    def usig_admission(self, node_id: int) -> object | None:
        """The operator's admission of this node's current USIG epoch (ADR
        0024), or ``None`` (epoch 0: the first USIG). A node of several MinBFT
        groups with admitted groups: a mapping group -> admission (ADR 0031;
        ``Context.usig_admission`` gives each group its own)."""
        entry = self.node(node_id)
        if self.usig is None:
            return None
        if entry.usig_groups:
            return {group: usig_admission(node_id, epoch, certificate)
                    for group, epoch, certificate in entry.usig_groups}
        if entry.usig_admission is None:
            return None
        return usig_admission(node_id, entry.usig_epoch, entry.usig_admission)

    def usig_scheme(self, node_id: int) -> object | None:
        """This node's USIG certificates (``replicaio.protocols.minbft.usig``):
        ``None`` without a ``[usig]`` table (a protocol without a trusted
        component). Reads the node's USIG key file."""
        if self.usig is None:
            return None
        if self.usig == "hmac":
            return usig_scheme("hmac", node_id, self.usig_secret, None, {})
        entry = self.node(node_id)
        field_name = f"nodes[{node_id}].usig_key_file"
        assert entry.usig_key_file is not None  # checked at parse
        private = read_hex_file(entry.usig_key_file, field_name, self.path)
        publics = {node.id: node.usig_public_key or b"" for node in self.nodes}
        try:
            return usig_scheme("ed25519", node_id, None, private, publics,
                               self.usig_operator_public_key)
        except ConfigError as error:
            raise ClusterFileError(field_name, str(error), self.path) from error

    def tls_config(self, node_id: int) -> TlsConfig | None:
        """This node's TLS settings, ``None`` without a ``[tls]`` table."""
        if self.tls is None:
            return None
        entry = self.node(node_id)
        assert entry.tls_cert is not None and entry.tls_key is not None  # checked at parse
        return TlsConfig(
            ca_file=self.tls.ca_file, cert_file=entry.tls_cert, key_file=entry.tls_key,
            peer=self.tls.peer, client=self.tls.client,
            handshake_timeout_ms=self.tls.handshake_timeout_ms,
            handshakes_pending_max=self.tls.handshakes_pending_max,
        )

    @property
    def n(self) -> int:
        return len(self.nodes)

    def node(self, node_id: int) -> NodeEntry:
        if not 0 <= node_id < self.n:
            raise ClusterFileError("--id", f"no node {node_id} in 0..{self.n - 1}", self.path)
        return self.nodes[node_id]

    def cluster_config(self) -> ClusterConfig:
        resilience: Resilience = protocol_factory(self.protocol).resilience
        return ClusterConfig(n=self.n, f=self.f, resilience=resilience).validate()

    def signer(self, node_id: int) -> Signer:
        """This node's signer for protocol code (``replicaio.core.signing``): Ed25519
        with the ``ed25519`` auth keys; with ``hmac`` auth, keyed hashes under the
        cluster secret (members trust each other not to sign for one another)."""
        if self.auth == "hmac":
            assert self.secret is not None
            return KeyedHashSigner(node_id, self.secret, self.n)
        authenticator = self.authenticator(node_id)
        assert isinstance(authenticator, Ed25519Authenticator)
        private = authenticator.private.private_bytes_raw()
        publics = {node.id: node.public_key or b"" for node in self.nodes}
        return Ed25519Signer(node_id, private, publics)

    def authenticator(self, node_id: int) -> Authenticator:
        """This node's authenticator (reads its private key file for Ed25519)."""
        entry = self.node(node_id)
        nodes = tuple(range(self.n))
        if self.auth == "hmac":
            assert self.secret is not None
            return HmacAuthenticator(node_id, self.secret, nodes)
        field_name = f"nodes[{node_id}].key_file"
        if entry.key_file is None:
            raise ClusterFileError(field_name, "ed25519 auth needs this node's key file", self.path)
        private = read_hex_file(entry.key_file, field_name, self.path)
        if len(private) != ED25519_KEY_BYTES:
            raise ClusterFileError(field_name, "must hold 32 bytes of hex", self.path)
        publics = {node.id: node.public_key or b"" for node in self.nodes}
        try:
            return Ed25519Authenticator(node_id, private, publics)
        except ConfigError as error:
            raise ClusterFileError(field_name, str(error), self.path) from error


# -- loading --------------------------------------------------------------------------------


def load_cluster_file(path: str | Path) -> ClusterFile:
    """Read and validate ``path``; raise :class:`ClusterFileError` on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ClusterFileError("(file)", f"cannot read: {error.strerror}", path) from error
    except UnicodeDecodeError as error:
        raise ClusterFileError("(file)", "not UTF-8 text", path) from error
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ClusterFileError("(file)", f"not valid TOML: {error}", path) from error
    try:
        return parse_cluster(data, base=path.parent.resolve(), path=path)
    except ClusterFileError as error:
        if error.file is None:
            raise ClusterFileError(error.field, error.problem, path) from None
        raise


def parse_cluster(data: dict[str, Any], *, base: Path, path: Path | None = None) -> ClusterFile:
    """Validate a parsed cluster file (``base`` resolves relative paths)."""
    check_keys(data, "", {"protocol", "auth", "node", "transport", "host", "service", "nodes",
                          "tls", "usig"})
    protocol_table = table(data, "protocol", required=True)
    check_keys(protocol_table, "protocol", {"name", "f", "params"})
    protocol = string(protocol_table, "name", "protocol.name", required=True)
    if protocol not in protocol_names():
        raise ClusterFileError(
            "protocol.name", f"unknown protocol {protocol!r}; known: {', '.join(protocol_names())}"
        )
    params = live_protocol_params(
        protocol, table(protocol_table, "params", field_name="protocol.params")
    )
    protocol = protocol_with_params(protocol, params)
    nodes = parse_nodes(data.get("nodes"), base)
    resilience = protocol_factory(protocol).resilience
    f_default = default_f(resilience, len(nodes))
    f = integer(protocol_table, "f", "protocol.f", default=f_default, minimum=0)
    try:
        ClusterConfig(n=len(nodes), f=f, resilience=resilience).validate()
    except ConfigError as error:
        raise ClusterFileError("protocol.f", str(error)) from error
    auth, secret = parse_auth(table(data, "auth", required=True), nodes, base)
    frame = frame_bytes_needed(protocol) + 1024  # one codec frame plus header and tag
    host_table = sized(table(data, "host"), "host", "client_frame_bytes_max", frame)
    if "client_frame_bytes_max" not in table(data, "host"):
        host_table.setdefault("client_queue_bytes_max", max(
            HostParams().client_queue_bytes_max, 2 * frame + HostParams().client_history_bytes_max))
    host: HostParams = parse_dataclass(HostParams, host_table, "host")
    service_params = table(data, "service")
    from replicaio.runtime.client import check_service_params

    check_service_params(host.client_service, service_params, protocol)
    tls = parse_tls(table(data, "tls"), nodes, base) if "tls" in data else None
    usig, usig_secret, usig_operator = parse_usig(data, nodes, base, resilience)
    return ClusterFile(
        tls=tls,
        usig=usig,
        usig_secret=usig_secret,
        usig_operator_public_key=usig_operator,
        protocol=protocol,
        f=f,
        nodes=nodes,
        auth=auth,
        secret=secret,
        protocol_params=dict(params),
        node_params=parse_dataclass(NodeParams, table(data, "node"), "node"),
        transport=parse_dataclass(
            TransportParams, transport_values(table(data, "transport"), frame), "transport"
        ),
        host=host,
        path=path,
        service_params=dict(service_params),
    )


def transport_values(values: dict[str, Any], frame: int) -> dict[str, Any]:
    """``[transport]`` with ``frame_bytes_max`` at least ``frame`` (see :func:`sized`)
    and, unless given, an outbound queue of at least two such frames."""
    found = sized(values, "transport", "frame_bytes_max", frame)
    if "outbound_queue_bytes_max" not in values:
        frame_bytes = found.get("frame_bytes_max", TransportParams().frame_bytes_max)
        if isinstance(frame_bytes, int):
            found.setdefault("outbound_queue_bytes_max", max(
                TransportParams().outbound_queue_bytes_max, 2 * frame_bytes))
    return found


def sized(values: dict[str, Any], section: str, key: str, needed: int) -> dict[str, Any]:
    """``values`` with ``key`` at least ``needed`` (the frame the protocol's
    largest value needs, ``assembly.frame_bytes_needed``): the default is
    raised to it, a smaller explicit value is refused by name."""
    found = values.get(key)
    default = getattr(HostParams() if section == "host" else TransportParams(), key)
    if found is None:
        return {**values, key: max(default, needed)}
    if type(found) is int and found < needed and needed > default:
        raise ClusterFileError(
            f"{section}.{key}", f"must be >= {needed} for the protocol's largest value (values=)"
        )
    return dict(values)


def protocol_with_params(name: str, params: dict[str, Any]) -> str:
    """The assembly's name for ``name`` with ``params``: ``raft`` with ``{snapshot = 8}``
    is ``raft:snapshot=8`` (what the event log records, so replay builds the same)."""
    if not params:
        return name
    if name not in REPLICATED_SERVICES and name not in TRANSACTIONAL:
        raise ClusterFileError(
            "protocol.params", f"protocol {name!r} takes no parameters, got {sorted(params)}"
        )
    for key, value in params.items():
        if type(value) is not int:
            raise ClusterFileError(f"protocol.params.{key}", f"must be an integer, got {value!r}")
    full = name + ":" + ",".join(f"{key}={params[key]}" for key in sorted(params))
    try:
        protocol_factory(full)
    except UsageError as error:
        raise ClusterFileError("protocol.params", str(error)) from error
    return full


def default_f(resilience: Resilience, n: int) -> int:
    """The largest f the protocol tolerates with n nodes."""
    if resilience is Resilience.ANY:
        return 0
    if resilience is Resilience.BYZANTINE:
        return (n - 1) // 3
    return (n - 1) // 2


def parse_nodes(raw: Any, base: Path) -> tuple[NodeEntry, ...]:
    if not isinstance(raw, list) or not raw:
        raise ClusterFileError("nodes", "at least one [[nodes]] table is required")
    if len(raw) > NODES_MAX:
        raise ClusterFileError("nodes", f"at most {NODES_MAX} nodes")
    entries: dict[int, NodeEntry] = {}
    endpoints: dict[tuple[str, int], str] = {}
    for index, item in enumerate(raw):
        where = f"nodes[{index}]"
        if not isinstance(item, dict):
            raise ClusterFileError(where, "must be a table")
        check_keys(item, where, {"id", "peer", "client", "data_dir", "metrics", "key_file",
                                 "public_key", "tls_cert", "tls_key", "usig_key_file",
                                 "usig_public_key", "usig_epoch", "usig_admission",
                                 "usig_groups"})
        node_id = integer(item, "id", f"{where}.id", required=True, minimum=0)
        if node_id in entries:
            raise ClusterFileError(f"{where}.id", f"node {node_id} is listed twice")
        entry = NodeEntry(
            id=node_id,
            peer=required_address(item, "peer", f"{where}.peer"),
            client=required_address(item, "client", f"{where}.client"),
            data_dir=base / string(item, "data_dir", f"{where}.data_dir", required=True),
            metrics=address(item, "metrics", f"{where}.metrics"),
            key_file=optional_path(item, "key_file", f"{where}.key_file", base),
            public_key=optional_hex(item, "public_key", f"{where}.public_key"),
            tls_cert=optional_path(item, "tls_cert", f"{where}.tls_cert", base),
            tls_key=optional_path(item, "tls_key", f"{where}.tls_key", base),
            usig_key_file=optional_path(item, "usig_key_file", f"{where}.usig_key_file", base),
            usig_public_key=optional_hex(item, "usig_public_key", f"{where}.usig_public_key"),
            usig_epoch=integer(item, "usig_epoch", f"{where}.usig_epoch", default=0, minimum=0),
            usig_admission=optional_hex(item, "usig_admission", f"{where}.usig_admission"),
            usig_groups=usig_groups(item, f"{where}.usig_groups"),
        )
        if (entry.usig_epoch > 0) != (entry.usig_admission is not None):
            raise ClusterFileError(f"{where}.usig_admission", "usig_epoch above 0 and "
                                   "usig_admission go together (replicaio kv admit-usig)")
        for kind, endpoint in (("peer", entry.peer), ("client", entry.client),
                               ("metrics", entry.metrics)):
            if endpoint is None:
                continue
            key = (endpoint.host, endpoint.port)
            if key in endpoints:
                raise ClusterFileError(
                    f"{where}.{kind}", f"{endpoint} is already used by {endpoints[key]}"
                )
            endpoints[key] = f"{where}.{kind}"
        entries[node_id] = entry
    ids = sorted(entries)
    if ids != list(range(len(ids))):
        raise ClusterFileError("nodes", f"node ids must be 0..{len(ids) - 1}, got {ids}")
    directories = [entry.data_dir for entry in entries.values()]
    if len(set(directories)) != len(directories):
        raise ClusterFileError("nodes", "every node needs its own data_dir")
    return tuple(entries[node_id] for node_id in ids)


def parse_tls(values: dict[str, Any], nodes: tuple[NodeEntry, ...], base: Path) -> TlsSection:
    check_keys(values, "tls", {"ca_file", "peer", "client", "handshake_timeout_ms",
                               "handshakes_pending_max"})
    ca_file = optional_path(values, "ca_file", "tls.ca_file", base)
    if ca_file is None:
        raise ClusterFileError("tls.ca_file", "the cluster CA's certificate (PEM) is required")
    flags = {}
    for name in ("peer", "client"):
        value = values.get(name, True)
        if type(value) is not bool:
            raise ClusterFileError(f"tls.{name}", f"must be true or false, got {value!r}")
        flags[name] = value
    for entry in nodes:
        for name in ("tls_cert", "tls_key"):
            if getattr(entry, name) is None:
                raise ClusterFileError(f"nodes[{entry.id}].{name}",
                                       "[tls] needs every node's certificate and key")
    return TlsSection(
        ca_file=ca_file, peer=flags["peer"], client=flags["client"],
        handshake_timeout_ms=integer(values, "handshake_timeout_ms", "tls.handshake_timeout_ms",
                                     default=5_000, minimum=1),
        handshakes_pending_max=integer(values, "handshakes_pending_max",
                                       "tls.handshakes_pending_max", default=64, minimum=1),
    )


def parse_usig(
    data: dict[str, Any], nodes: tuple[NodeEntry, ...], base: Path, resilience: Resilience
) -> tuple[str | None, bytes | None, bytes | None]:
    """The ``[usig]`` table: required by (and only by) protocols with a trusted
    component, so a MinBFT cluster never runs on the public simulation key.
    Returns the kind, the hmac secret and the operator's public key."""
    trusted = resilience is Resilience.BYZANTINE_TRUSTED
    if "usig" not in data:
        if trusted:
            raise ClusterFileError("usig", "this protocol needs a [usig] table (its trusted "
                                   "component's keys; kv up writes one)")
        return None, None, None
    if not trusted:
        raise ClusterFileError("usig", "this protocol has no trusted component")
    values = table(data, "usig")
    check_keys(values, "usig", {"kind", "secret_file", "operator_public_key"})
    kind = string(values, "kind", "usig.kind", required=True)
    if kind not in USIG_KINDS:
        raise ClusterFileError("usig.kind", f"must be one of {', '.join(USIG_KINDS)}")
    if kind == "ed25519":
        if "secret_file" in values:
            raise ClusterFileError("usig.secret_file", "only for kind = \"hmac\"")
        for entry in nodes:
            where = f"nodes[{entry.id}]"
            if entry.usig_key_file is None:
                raise ClusterFileError(f"{where}.usig_key_file", "ed25519 USIGs need it")
            if entry.usig_public_key is None or len(entry.usig_public_key) != ED25519_KEY_BYTES:
                raise ClusterFileError(f"{where}.usig_public_key", "needs 32 bytes of hex")
        operator = optional_hex(values, "operator_public_key", "usig.operator_public_key")
        if operator is not None and len(operator) != ED25519_KEY_BYTES:
            raise ClusterFileError("usig.operator_public_key", "needs 32 bytes of hex")
        if operator is None and any(entry.usig_epoch or entry.usig_groups for entry in nodes):
            raise ClusterFileError("usig.operator_public_key",
                                   "an admitted USIG epoch needs the operator's key")
        return kind, None, operator
    if "operator_public_key" in values:
        raise ClusterFileError("usig.operator_public_key", "only for kind = \"ed25519\"")
    secret_path = optional_path(values, "secret_file", "usig.secret_file", base)
    if secret_path is None:
        raise ClusterFileError("usig.secret_file", "an hmac USIG needs the shared key's file")
    secret = read_hex_file(secret_path, "usig.secret_file", None)
    if len(secret) < SECRET_BYTES_MIN:
        raise ClusterFileError("usig.secret_file", f"must hold at least {SECRET_BYTES_MIN} bytes")
    return kind, secret, None


def write_private(path: Path, text: str) -> None:
    """Write a secret to ``path``, created with mode 0600: never readable by
    others, not even between its creation and a later ``chmod``."""
    import os

    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)


def write_node_key(directory: Path, node: dict[str, Any]) -> None:
    """Give ``node``, a cluster file's entry, a fresh Ed25519 key pair: the
    private key in ``directory/node-<id>.key`` (mode 0600), named by the entry
    with the public key."""
    from replicaio.runtime.crypto import generate_ed25519_key

    private, public = generate_ed25519_key()
    key_file = f"node-{node['id']}.key"
    write_private(directory / key_file, private.hex() + "\n")
    node["key_file"] = key_file
    node["public_key"] = public.hex()


def write_usig_keys(
    directory: Path, protocol: str, nodes: list[dict[str, Any]], kind: str = "ed25519"
) -> dict[str, dict[str, Any]]:
    """For a protocol with a trusted component: write its USIG keys into
    ``directory`` (mode 0600), add each node's ``usig_key_file`` /
    ``usig_public_key`` to ``nodes`` and return the ``[usig]`` section;
    ``{}`` for any other protocol."""
    import secrets

    from replicaio.runtime.crypto import generate_ed25519_key

    if protocol_factory(protocol).resilience is not Resilience.BYZANTINE_TRUSTED:
        return {}
    if kind not in USIG_KINDS:
        raise UsageError(f"--usig must be one of {', '.join(USIG_KINDS)}")

    def private(name: str, text: str) -> None:
        write_private(directory / name, text)

    if kind == "hmac":
        private(USIG_SECRET_FILE, secrets.token_hex(32) + "\n")
        return {"usig": {"kind": "hmac", "secret_file": USIG_SECRET_FILE}}
    for node in nodes:
        key, public = generate_ed25519_key()
        name = f"node-{node['id']}.usig"
        private(name, key.hex() + "\n")
        node["usig_key_file"] = name
        node["usig_public_key"] = public.hex()
    # The operator's key, which admits a new USIG epoch (kv admit-usig): the
    # operator's, not the nodes' (no node reads it).
    operator, operator_public = generate_ed25519_key()
    private(USIG_OPERATOR_KEY_FILE, operator.hex() + "\n")
    return {"usig": {"kind": "ed25519", "operator_public_key": operator_public.hex()}}


def parse_auth(
    auth: dict[str, Any], nodes: tuple[NodeEntry, ...], base: Path
) -> tuple[str, bytes | None]:
    check_keys(auth, "auth", {"kind", "secret", "secret_file"})
    kind = string(auth, "kind", "auth.kind", required=True)
    if kind not in AUTH_KINDS:
        raise ClusterFileError("auth.kind", f"must be one of {', '.join(AUTH_KINDS)}")
    if kind == "ed25519":
        for entry in nodes:
            if entry.public_key is None or len(entry.public_key) != ED25519_KEY_BYTES:
                raise ClusterFileError(
                    f"nodes[{entry.id}].public_key", "ed25519 auth needs 32 bytes of hex"
                )
        return kind, None
    has_secret, has_file = "secret" in auth, "secret_file" in auth
    if has_secret == has_file:
        raise ClusterFileError("auth.secret", "give exactly one of secret or secret_file")
    if has_secret:
        secret = optional_hex(auth, "secret", "auth.secret") or b""
    else:
        secret_path = optional_path(auth, "secret_file", "auth.secret_file", base)
        assert secret_path is not None
        secret = read_hex_file(secret_path, "auth.secret_file", None)
    if len(secret) < SECRET_BYTES_MIN:
        raise ClusterFileError(
            "auth.secret", f"must be at least {SECRET_BYTES_MIN} bytes ({2 * SECRET_BYTES_MIN} "
            "hex digits)"
        )
    return kind, secret


def parse_dataclass(cls: Any, values: dict[str, Any], section: str) -> Any:
    """Build a params dataclass from a table, type-checking every key."""
    fields = {item.name: item for item in dataclasses.fields(cls)}
    check_keys(values, section, set(fields))
    arguments: dict[str, Any] = {}
    for name, value in values.items():
        expected = type(getattr(cls(), name))
        if type(value) is not expected:
            raise ClusterFileError(
                f"{section}.{name}", f"must be {expected.__name__}, got {value!r}"
            )
        arguments[name] = value
    try:
        result = cls(**arguments)
        return result.validate()
    except ClusterFileError:
        raise
    except ConfigError as error:
        raise ClusterFileError(section, str(error)) from error


# -- small typed readers ------------------------------------------------------------------


def check_keys(values: dict[str, Any], where: str, allowed: set[str]) -> None:
    for key in values:
        if key not in allowed:
            place = f"[{where}]" if where else "the top level"
            raise ClusterFileError(
                f"{where}.{key}" if where else key,
                f"unknown key in {place}; expected one of {', '.join(sorted(allowed))}",
            )


def table(
    values: dict[str, Any], key: str, *, required: bool = False, field_name: str | None = None
) -> dict[str, Any]:
    found = values.get(key)
    if found is None:
        if required:
            raise ClusterFileError(field_name or key, "this table is required")
        return {}
    if not isinstance(found, dict):
        raise ClusterFileError(field_name or key, "must be a table")
    return found


def string(values: dict[str, Any], key: str, field_name: str, *, required: bool = False) -> str:
    found = values.get(key)
    if found is None and not required:
        return ""
    if not isinstance(found, str) or not found:
        raise ClusterFileError(field_name, f"must be a non-empty string, got {found!r}")
    return found


def integer(
    values: dict[str, Any],
    key: str,
    field_name: str,
    *,
    required: bool = False,
    default: int = 0,
    minimum: int | None = None,
) -> int:
    found = values.get(key)
    if found is None:
        if required:
            raise ClusterFileError(field_name, "is required")
        return default
    if type(found) is not int:
        raise ClusterFileError(field_name, f"must be an integer, got {found!r}")
    if minimum is not None and found < minimum:
        raise ClusterFileError(field_name, f"must be >= {minimum}, got {found}")
    return found


def required_address(values: dict[str, Any], key: str, field_name: str) -> Address:
    found = address(values, key, field_name, required=True)
    assert found is not None
    return found


def address(
    values: dict[str, Any], key: str, field_name: str, *, required: bool = False
) -> Address | None:
    found = values.get(key)
    if found is None and not required:
        return None
    if not isinstance(found, str):
        raise ClusterFileError(field_name, f"must be a \"host:port\" string, got {found!r}")
    return parse_address(found, field_name)


def parse_address(text: str, field_name: str) -> Address:
    host, separator, port_text = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not separator or not host or not port_text.isdigit():
        raise ClusterFileError(field_name, f"must be \"host:port\", got {text!r}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ClusterFileError(field_name, f"port must be in 1..65535, got {port}")
    return Address(host, port)


def optional_path(values: dict[str, Any], key: str, field_name: str, base: Path) -> Path | None:
    found = values.get(key)
    if found is None:
        return None
    if not isinstance(found, str) or not found:
        raise ClusterFileError(field_name, f"must be a non-empty path string, got {found!r}")
    return base / found


def usig_groups(values: dict[str, Any], field_name: str) -> tuple[tuple[int, int, bytes], ...]:
    """A node's per-group USIG admissions: ``[[group, epoch, "hex"], ...]``, one
    per group, epochs above 0 (``replicaio kv admit-usig --group``)."""
    found = values.get("usig_groups")
    if found is None:
        return ()
    if not isinstance(found, list) or len(found) > GROUPS_MAX:
        raise ClusterFileError(field_name, "must be a list of [group, epoch, \"hex\"]")
    admitted: dict[int, tuple[int, int, bytes]] = {}
    for index, item in enumerate(found):
        where = f"{field_name}[{index}]"
        if (not isinstance(item, list) or len(item) != 3 or type(item[0]) is not int
                or type(item[1]) is not int or not isinstance(item[2], str)):
            raise ClusterFileError(where, "must be [group, epoch, \"hex\"]")
        group, epoch, text = item
        if not 0 <= group < GROUPS_MAX or not 0 < epoch <= USIG_EPOCH_MAX:
            raise ClusterFileError(where, f"needs a group in 0..{GROUPS_MAX - 1} and an "
                                   "epoch above 0")
        if group in admitted:
            raise ClusterFileError(where, f"group {group} is listed twice")
        try:
            certificate = bytes.fromhex(text)
        except ValueError as error:
            raise ClusterFileError(where, "the admission must be a hex string") from error
        admitted[group] = (group, epoch, certificate)
    return tuple(admitted[group] for group in sorted(admitted))


def optional_hex(values: dict[str, Any], key: str, field_name: str) -> bytes | None:
    found = values.get(key)
    if found is None:
        return None
    if not isinstance(found, str):
        raise ClusterFileError(field_name, "must be a hex string")
    try:
        return bytes.fromhex(found)
    except ValueError as error:
        raise ClusterFileError(field_name, "must be a hex string") from error


def read_hex_file(path: Path, field_name: str, file: Path | None) -> bytes:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise ClusterFileError(field_name, f"cannot read {path}: {error}", file) from error
    try:
        return bytes.fromhex(text)
    except ValueError as error:
        raise ClusterFileError(field_name, f"{path} must hold hex text", file) from error


# -- writing (cluster up, tests) ------------------------------------------------------------


def render_cluster_file(
    *,
    protocol: str,
    nodes: list[dict[str, Any]],
    secret_file: str | None = None,
    auth: str = "hmac",
    f: int | None = None,
    sections: dict[str, dict[str, Any]] | None = None,
) -> str:
    """A cluster file as TOML text; ``nodes`` are ``[[nodes]]`` tables (str/int values)."""
    if auth not in AUTH_KINDS:
        raise UsageError(f"auth must be one of {AUTH_KINDS}")
    lines = ["# replicaio cluster file (see docs/runtime.md)", "", "[protocol]",
             f"name = {toml_value(protocol)}"]
    if f is not None:
        lines.append(f"f = {f}")
    lines += ["", "[auth]", f"kind = {toml_value(auth)}"]
    if secret_file is not None:
        lines.append(f"secret_file = {toml_value(secret_file)}")
    for section, values in (sections or {}).items():
        lines += ["", f"[{section}]"]
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
    for node in nodes:
        lines += ["", "[[nodes]]"]
        lines += [f"{key} = {toml_value(value)}" for key, value in node.items()]
    return "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    raise UsageError(f"cannot render {value!r} as a TOML value")
