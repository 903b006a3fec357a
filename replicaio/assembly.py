"""The assembly: which protocol + SMR + service make a node, under which name.

This is the one module that knows protocols by name and wires them into the
node factories (:class:`~replicaio.core.node.ProtocolFactory`) the hosts run.
It sits above ``protocols``, ``smr``, ``services`` and the broken variants of
``replicaio.testing.variants``, and below the programs that use factories
(``sim``, ``runtime``, ``cli``), which reach a protocol only through it
(``docs/architecture.md``, enforced by import-linter).

Two kinds of names:

* the broadcast family (``beb``, ``bracha``, ``echo`` and their broken
  variants), one :class:`~replicaio.protocols.broadcast.BroadcastFactory` each;
* replicated services (:data:`SERVICES`): an ordering protocol under SMR
  (``replicaio.smr``) serving the key-value store. ``raft`` is Raft; the
  ``raft-*`` names are its deliberately broken variants, there to prove the
  checkers bite (``replicaio.testing.variants``).

A service name may carry parameters after a colon, ``raft:snapshot=8``
(:data:`SERVICE_PARAMETERS`). The whole string is what the event log header
records, so replay rebuilds exactly the same nodes.

Protocols from other packages join through the entry point group
``replicaio.protocols`` (:data:`PLUGIN_GROUP`): each entry point, named after
its protocol, refers to a :class:`BroadcastSpec` or a :class:`ServiceSpec`
(or a callable returning one). They are loaded once, the first time a name is
looked up, so every host (sim, swarm, replay, explore, the live runtime) sees
them without any edit here; a plug-in that fails to load never hides the
built-in protocols, it says why when its own name is asked for
(``docs/tutorial.md``, ADR 0019).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal, TypedDict, TypeVar

from replicaio.check.pbft import PbftChecker
from replicaio.check.raft import RaftChecker
from replicaio.core.codec import FRAME_BYTES_MAX_DEFAULT
from replicaio.core.config import ClusterConfig, Resilience
from replicaio.core.context import Context
from replicaio.core.errors import ConfigError, UsageError
from replicaio.core.node import ProtocolFactory
from replicaio.protocols.broadcast import PROTOCOLS, BroadcastFactory, BroadcastSpec, Instances
from replicaio.protocols.minbft import messages as minbft_messages
from replicaio.protocols.minbft.minbft import Minbft
from replicaio.protocols.minbft.params import MinbftParams
from replicaio.protocols.minbft.recovery import UsigLost
from replicaio.protocols.minbft.usig import (
    USIG_SIMULATION_SECRET,
    Ed25519KeyedUsigScheme,
    HmacUsigScheme,
    UsigAdmission,
    UsigScheme,
    sign_admission,
)
from replicaio.protocols.pbft import messages as pbft_messages
from replicaio.protocols.pbft.params import PbftParams
from replicaio.protocols.pbft.pbft import Pbft
from replicaio.protocols.raft import durable as raft_durable
from replicaio.protocols.raft.messages import LeaderCommitted, RaftAdmin
from replicaio.protocols.raft.params import RaftParams
from replicaio.protocols.raft.raft import Raft
from replicaio.protocols.raft.raft import raft_config_of as raft_config_of  # re-exported
from replicaio.protocols.raft.raft import raft_leader_of as raft_leader_of  # re-exported
from replicaio.services.kv.state_machine import (
    VALUE_BYTES_CEILING,
    VALUE_BYTES_MAX_DEFAULT,
    KeyValueStateMachine,
    KvParams,
)
from replicaio.services.txn.kv_store import KvTxnStore
from replicaio.services.txn.outcomes import GatewayRule
from replicaio.services.txn.protocol import TxnFactory, TxnNode, TxnParams
from replicaio.services.txn.slots import SlotMap
from replicaio.services.txn.store import StoreParams, TxnStore
from replicaio.smr.auth import ClientAuthenticator, MacClients
from replicaio.smr.client import FastQuorums, fast_quorums
from replicaio.smr.params import SNAPSHOT_DEFERRALS_MAX, SmrConstants, SmrParams
from replicaio.smr.protocol import AuthenticatorFactory, SmrFactory, StateMachineFactory
from replicaio.smr.replica import Replica
from replicaio.testing.variants.broadcast import BROADCAST_VARIANTS
from replicaio.testing.variants.minbft import MINBFT_VARIANTS, MinbftVariant
from replicaio.testing.variants.minbft_byzantine import (
    FreshAnchorViewChanges,
    HidingMinbft,
    JoiningViewChanges,
    LateAnchorMinbft,
    LateCheckpoints,
    SecondNewViewChanges,
    SilentPrimary,
    UnseenViewChanges,
)
from replicaio.testing.variants.pbft import PBFT_VARIANTS, PbftVariant
from replicaio.testing.variants.raft import RAFT_VARIANTS
from replicaio.testing.variants.txn import TXN_VARIANTS

# name parameter -> what it sets (all integers)
SERVICE_PARAMETERS: dict[str, str] = {
    "snapshot": "SmrConstants.snapshot_interval: applied batches between snapshots (0: never; "
    "PBFT: the checkpoint interval K, L = 2K)",
    "snapshotkib": "Raft: SmrConstants.snapshot_log_bytes_min in KiB: snapshots sized by "
    "bytes, a multiple of `snapshot` skipped while the log since the last snapshot is smaller "
    "than this and than that snapshot (at most 63 in a row; 0: off, the simulator's default; a "
    "live cluster file without `snapshot` or `snapshotkib` gets 1024)",
    "batch": "SmrConstants.batch_requests_max: requests per batch",
    "sessions": "SmrConstants.sessions_max: client sessions remembered (LRU beyond)",
    "results": "SmrConstants.session_results_bytes_max: bytes of results the sessions remember "
    "(LRU beyond; small values make swarms evict sessions all the time)",
    "inflight": "SmrParams.batches_inflight_max: own batches submitted and not yet applied",
    "fill": "SmrParams.batch_fill_min: while own batches are in flight, the next waits for "
    "this many pending requests (1: none waits; a live Raft service's, and each Raft group's "
    "of txn and txn-kv, is its batch size)",
    "lease": "RaftParams.read_lease: 1 serves reads from a leader lease (0: read-index only)",
    "roundack": "RaftParams.read_round_ack: a follower answers a read round before its "
    "flush (ADR 0070): 0 never, 1 when the round's first message carries entries, 2 (the "
    "default) also when earlier appends may not be durable yet",
    "drift": "RaftParams.clock_drift_ppm_max: the clock drift bound lease reads assume (ppm)",
    "notice": "RaftParams.commit_notice: 1 tells a follower a new commit index by an "
    "unanswered CommitNotice (0: an empty AppendEntries it acknowledges)",
    "notice_us": "RaftParams.commit_notice_delay_us: how long a commit index waits for the "
    "next entries to a follower to carry it before a CommitNotice goes alone (0: at once; "
    "default 1000, a live cluster file's 4000; a follower whose client waits is told at once; "
    "Raft groups of txn and txn-kv too)",
    "macs": "PBFT: 1 authenticates client requests with a vector of per-replica MACs "
    "(the paper's option) instead of signatures (simulation: the harness's clients sign so)",
    "replica_macs": "PBFT: 1 (the default) lets a COMMIT from its author count on the "
    "authenticated channel "
    "(MAC authenticators between replicas, ADR 0025): its signature is checked only before it is "
    "shown to a third replica; what enters certificates stays checked; 0 checks every COMMIT",
    "view_timeout": "PBFT, MinBFT: view_change_timeout_us in ms, the backups' request timer "
    "(default 400; PBFT's doubled for every view in a row that times out, section 4.5.2)",
    "reads": "PBFT: 1 makes the simulator's clients read with the read-only optimisation "
    "(2f+1 matching unordered answers, else the read again, ordered; writes then need 2f+1 "
    "matching replies too)",
    "groups": "transactional clusters (txn): replicated groups, keys by hash slot (default 3)",
    "values": "Raft: KvParams.value_bytes_max in KiB, the largest value (default 8192, at most "
    "32768; SMR's command and batch bounds and the node's frames follow)",
    "wait": "transactional clusters: ms a prepare refused for a locked key is asked again "
    "within the attempt, the groups prepared in lock order (bounded waiting; default 100; "
    "0: no-wait)",
    "remember": "transactional clusters: StoreParams.finished_max and coordinated_max, the "
    "outcomes and coordinator records a group remembers (small values make groups forget "
    "attempts within a run: what the nonce windows of BFT groups must still refuse)",
    "gateway": "transactional clusters over BFT groups: 1 makes the simulator's clients "
    "what `replicaio kv gateway` is (every attempt signed, to every node, f+1 matching "
    "outcomes, the undecided nodes asked the same attempt again; the nodes' answers taken "
    "at face value); 2: the same, each attempt to f+1 nodes first and to the others once "
    "those cannot settle it or do not in time",
    "fronts": "transactional clusters (simulation): after the heal every client attempt goes "
    "to one of this many correct nodes up, drawn at the heal (as when every client connects "
    "to one node's Redis port; with `degraded`, a group whose primary is kept down must "
    "still make progress through its backups' fronts); 0: any node (the default)",
    "windows": "transactional clusters over BFT groups: StoreParams.nonce_clients_max, the "
    "clients whose nonce windows a group keeps (LRU beyond: small values make swarms evict)",
    "memory": "KvParams.bytes_max in MiB: what the key-value store holds (Redis's maxmemory; "
    "writes beyond are refused with OOM). Default 512 (Raft), 32 (PBFT, MinBFT: a checkpoint "
    "must fit one state transfer)",
    "entries": "RaftParams.entries_per_message_max: log entries per AppendEntries (default "
    "64; small values make followers acknowledge a leader's log a few entries at a time, "
    "earlier terms' entries apart from the new term's, as a long backlog does)",
    "piece": "RaftParams.snapshot_piece_bytes: a snapshot's state beyond this many bytes is "
    "persisted in pieces of this size (default 4 MiB; small values make every snapshot of a "
    "simulated run several records, which compactions must erase)",
    "join": "RaftParams.join: 1 on ONE node started on a new, empty disk that replaces a lost "
    "one (set per node: `replicaio kv node --join`)",
}
# The parameters each family of protocols reads (its builder, or the simulator's
# harness for its clients: ``reads``, ``macs``, ``fronts``, ``gateway``); a name with
# any other is refused (``protocol_parameters_refused``), not silently ignored.
SMR_PARAMETERS = frozenset({"snapshot", "batch", "sessions", "results", "inflight", "memory",
                            "values", "fronts"})
RAFT_PARAMETERS = SMR_PARAMETERS | {"snapshotkib", "fill", "lease", "drift", "notice",
                                    "notice_us", "join", "roundack", "entries", "piece"}
PBFT_PARAMETERS = SMR_PARAMETERS | {"replica_macs", "view_timeout", "macs", "reads"}
MINBFT_PARAMETERS = SMR_PARAMETERS | {"view_timeout", "reads"}
TXN_PARAMETERS = frozenset({"groups", "sessions", "wait", "remember", "fronts"})
TXN_RAFT_PARAMETERS = TXN_PARAMETERS | {"snapshot", "snapshotkib", "batch", "results", "fill",
                                         "notice_us"}
TXN_BFT_PARAMETERS = TXN_PARAMETERS | {"windows", "gateway"}
RAFT_SNAPSHOT_INTERVAL = 16  # snapshots (and log compaction) happen in ordinary runs
# The live runtime's snapshots of a Raft service are sized by bytes unless its cluster
# file names `snapshot` or `snapshotkib`: a live store of any size is otherwise encoded
# again every 16 batches, which at low load is every 16 requests (docs/smr.md). The
# simulator keeps the plain interval, so its small stores still snapshot often.
RAFT_LIVE_SNAPSHOT_KIB = 1024
# A live Raft service, while one of its batches is in flight, cuts the next only
# once a full batch is pending (``fill`` = ``batch``, SmrConstants.batch_requests_max,
# 64 by default) or when the window empties, unless its file names ``fill``: below
# 64 clients one batch is in flight at a time, above it full batches pipeline
# (ADR 0054, which replaced ADR 0051's fill = 8). A request alone never waits, so
# one client is unchanged; the simulator keeps fill = 1 and every pinned schedule.
def raft_live_batch_fill(params: Mapping[str, Any]) -> int:
    """The ``fill`` a live Raft service takes when its file names none: its batch size."""
    return int(params.get("batch", SmrConstants().batch_requests_max))
# A live Raft service holds a commit notice up to 4 ms for the next entries to carry
# it (``notice_us``, RaftParams.commit_notice_delay_us) unless its file names
# ``notice_us``: at one client ADR 0044's 1 ms sent most notices alone just before
# the next SET's AppendEntries; 4 ms lets that carry them (ADR 0055). A follower a
# client waits on is told at once all the same; the simulator keeps 1 ms.
RAFT_LIVE_NOTICE_US = 4_000
# A live Raft service's followers answer a read round early (ADR 0070's
# ``ReadRoundAck``, ``roundack`` = 2, as the simulator) unless its file names
# ``roundack``. ADR 0070 amendment 1 had set 0 here: with a round per batch of reads
# the early answers cost 0.85-0.92x the mixed throughput from 64 clients. With one
# read round in flight (ADR 0072, amendment 2 of ADR 0070) rounds are few, and 2 was
# the only setting at least as fast as the session's start at every client count
# (mixed 1.00 / 1.01 / 1.29 / 1.17 at 1 / 16 / 64 / 256 clients; 0 gave 0.87 at 16,
# a GET waiting a round more), docs/benchmarks.md, "read38".
RAFT_LIVE_ROUND_ACK = 2
RAFT_SNAPSHOT_BYTES_CEILING = 8 << 30  # what a follower assembles in memory, at most
# The broadcast family, correct and deliberately broken.
BROADCASTS: dict[str, BroadcastSpec] = {**PROTOCOLS, **BROADCAST_VARIANTS}


MembershipAction = Literal["add", "remove", "transfer"]


@dataclass(frozen=True, slots=True)
class Membership:
    """How the simulator's membership nemesis reads and drives an ordering
    protocol's configuration without naming the protocol: which outputs
    announce a leader or a configuration, and how an operator's request reads."""

    leader_of: Callable[[Any], tuple[int, int] | None]  # output -> (term, leader)
    config_of: Callable[[Any], tuple[int, tuple[int, ...], tuple[int, ...]] | None]
    # ^ output -> (index, voters, learners)
    request: Callable[[MembershipAction, int], Any]  # (action, node) -> the operator's payload


def no_checkers(config: ClusterConfig) -> list[Any]:
    return []


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """A replicated service: how to build its nodes, the checkers of its ordering
    protocol's own properties (``checkers``, fed every output) and how the
    simulated operator changes its membership (``membership``; ``None``: never).
    ``family`` names the ordering protocol, for reports. The simulator's
    clients accept an unordered read (section 5.1.3) and a write of a client
    reading so on ``fast_quorums`` matching answers, and read so if ``reads``
    (else with the ``reads`` parameter): a broken client's rule is a variant
    like any other."""

    name: str
    family: str
    resilience: Resilience
    build: Callable[[str, Mapping[str, int]], ProtocolFactory]
    summary: str
    broken: bool = False
    checkers: Callable[[ClusterConfig], list[Any]] = no_checkers
    membership: Membership | None = None
    fast_quorums: Callable[[Resilience, int, int], FastQuorums] = fast_quorums
    reads: bool = False
    # The name's parameters it takes (``None``: any of ``SERVICE_PARAMETERS``, for
    # plug-ins written before this field).
    parameters: frozenset[str] | None = None


def raft_checkers(config: ClusterConfig) -> list[Any]:
    """Raft's own checkers (``replicaio.check.raft``), fed with every output."""
    return [RaftChecker()]


RAFT_MEMBERSHIP = Membership(raft_leader_of, raft_config_of, RaftAdmin)


def smr_constants(
    parameters: Mapping[str, int], snapshot_interval: int, **fixed: int
) -> SmrConstants:
    """SMR's cluster constants, from the protocol name's parameters alone (the
    cluster file's ``[protocol] params``, the event log header) and the
    protocol's own ``fixed`` ones: what every node of a cluster shares, so
    replicas cannot diverge on a committed batch."""
    defaults = SmrConstants()
    if "results" in parameters:
        fixed = {**fixed, "session_results_bytes_max": parameters["results"]}
    return SmrConstants(
        snapshot_interval=parameters.get("snapshot", snapshot_interval),
        batch_requests_max=parameters.get("batch", defaults.batch_requests_max),
        sessions_max=parameters.get("sessions", defaults.sessions_max),
        **fixed,
    ).validate()


# A BFT cluster's store: its checkpoint state (store, tombstones, sessions) must
# fit one state transfer (PBFT's and MinBFT's SNAPSHOT_BYTES_MAX, 64 MiB).
BFT_STORE_BYTES_DEFAULT = 32 << 20
BFT_TOMBSTONES_MAX = 8192
BFT_SESSION_RESULTS_BYTES_MAX = 8 << 20


def kv_params(parameters: Mapping[str, int], bytes_default: int, **fixed: int) -> KvParams:
    """The store's bounds: ``memory`` (MiB) from the protocol name's
    parameters, else ``bytes_default``; cluster constants like SMR's."""
    memory = parameters.get("memory")
    bytes_max = bytes_default if memory is None else memory << 20
    return KvParams(bytes_max=bytes_max, **fixed).validate()


def value_bytes_max(name: str, parameters: Mapping[str, int]) -> int:
    """The largest value a Raft store takes: ``values`` (KiB) from the
    protocol name's parameters, else 8 MiB; at most ``VALUE_BYTES_CEILING``
    (a value is one log entry, one peer frame and one WAL record)."""
    kib = parameters.get("values")
    if kib is None:
        return VALUE_BYTES_MAX_DEFAULT
    if not 1 <= kib << 10 <= VALUE_BYTES_CEILING:
        raise ConfigError(
            f"{name}: values={kib} KiB must be in 1..{VALUE_BYTES_CEILING >> 10} KiB"
        )
    return kib << 10


def value_sized(name: str, parameters: Mapping[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """The store's and SMR's bounds that follow the largest value (see
    :func:`value_bytes_max`): a command holds a key and a value, a batch one
    such command."""
    value = value_bytes_max(name, parameters)
    store = {"value_bytes_max": value, "command_bytes_max": value + 64 * 1024}
    smr = {"command_bytes_max": value + 128 * 1024, "batch_bytes_max": value + 512 * 1024}
    return store, smr


def kv_value_sizes(name: str | None) -> tuple[int, int]:
    """``(largest value, SMR's largest command)`` of key-value protocol
    ``name`` (the defaults unless its ``values=`` says otherwise): what the
    Redis front sizes its parser and its requests by."""
    spec = None if name is None else service_spec(name)
    if spec is None or "values" not in spec[1]:
        return VALUE_BYTES_MAX_DEFAULT, SmrConstants().command_bytes_max
    assert name is not None
    store, smr = value_sized(name, spec[1])
    return store["value_bytes_max"], smr["command_bytes_max"]


def frame_bytes_needed(name: str) -> int:
    """The codec frame a node of protocol ``name`` needs (a peer message
    carrying one batch, a client frame carrying one command): the codec's
    default, or more where ``values=`` raised the largest value."""
    spec = service_spec(name)
    if spec is None:
        return FRAME_BYTES_MAX_DEFAULT
    _, parameters = spec
    if "values" not in parameters:
        return FRAME_BYTES_MAX_DEFAULT
    _, smr = value_sized(name, parameters)
    return max(FRAME_BYTES_MAX_DEFAULT, smr["batch_bytes_max"] + 1024 * 1024)


def snapshot_bytes_needed(name: str, kv: KvParams, constants: SmrConstants,
                          carried_max: int) -> int:
    """What the protocol must carry to a lagging replica for the store and SMR's
    sessions at their fullest. Raises ``ConfigError`` if that is more than
    ``carried_max`` (the protocol's own ceiling): such a cluster would work
    until the store grew that large, then leave every replica that needs a
    snapshot behind for good, which is worse than refusing the configuration."""
    needed = constants.snapshot_bytes_bound(kv.snapshot_bytes_bound(), kv.result_bytes_bound())
    if needed > carried_max:
        raise ConfigError(
            f"{name}: a snapshot of the key-value store can reach {needed} bytes (store "
            f"{kv.bytes_max}, tombstones, sessions), more than the protocol carries to a "
            f"lagging replica ({carried_max}); lower memory= (MiB)"
        )
    return needed


def live_protocol_params(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` of a cluster file's ``[protocol]`` with the live runtime's defaults
    added: a Raft service (correct or a variant), and each Raft group of a sharded
    service (``txn``, ``txn-kv`` and their variants), sizes its snapshots by bytes
    (``snapshotkib``, ``RAFT_LIVE_SNAPSHOT_KIB``) unless the file sets ``snapshot``
    or ``snapshotkib`` itself, and fills its batches under load (``fill``, a full
    batch: :func:`raft_live_batch_fill`) unless the file sets ``fill``, and holds a
    commit notice up to ``RAFT_LIVE_NOTICE_US`` (``notice_us``) unless the file sets
    it; a single Raft service's followers answer read rounds early or not as
    ``RAFT_LIVE_ROUND_ACK`` says (``roundack``) unless the file sets it. The result
    becomes the protocol's name, so what the event log records still builds the
    same nodes."""
    spec = SERVICES.get(name)
    sharded = TRANSACTIONAL.get(name)
    live = dict(params)
    raft_groups = sharded is not None and sharded.ordering == "raft"
    if not raft_groups and (
            spec is None or (spec.name != "raft" and spec.name not in RAFT_VARIANTS)):
        return live
    if "snapshot" not in params and "snapshotkib" not in params:
        live["snapshotkib"] = RAFT_LIVE_SNAPSHOT_KIB
    live.setdefault("fill", raft_live_batch_fill(params))
    live.setdefault("notice_us", RAFT_LIVE_NOTICE_US)
    if not raft_groups:  # a sharded service's Raft groups read no ``roundack``
        live.setdefault("roundack", RAFT_LIVE_ROUND_ACK)
    return live


def build_raft(variant: str = "") -> Callable[[str, Mapping[str, int]], ProtocolFactory]:
    """A builder of Raft + SMR + KV nodes; with ``variant``, of that broken
    variant (``replicaio.testing.variants.raft``)."""

    def build(name: str, parameters: Mapping[str, int]) -> ProtocolFactory:
        raft_type = RAFT_VARIANTS[variant].raft_type if variant else Raft
        replica_type = RAFT_VARIANTS[variant].replica_type if variant else Replica
        defaults_raft = RaftParams()
        raft_params = RaftParams(
            read_lease=bool(parameters.get("lease", 0)),
            read_round_ack=parameters.get("roundack", defaults_raft.read_round_ack),
            clock_drift_ppm_max=parameters.get("drift", defaults_raft.clock_drift_ppm_max),
            commit_notice=bool(parameters.get("notice", int(defaults_raft.commit_notice))),
            commit_notice_delay_us=parameters.get(
                "notice_us", defaults_raft.commit_notice_delay_us
            ),
            join=bool(parameters.get("join", 0)),
            entries_per_message_max=parameters.get(
                "entries", defaults_raft.entries_per_message_max
            ),
            snapshot_piece_bytes=parameters.get("piece", defaults_raft.snapshot_piece_bytes),
        ).validate()
        smr_params = SmrParams(
            batches_inflight_max=parameters.get("inflight", SmrParams().batches_inflight_max),
            batch_fill_min=parameters.get("fill", SmrParams().batch_fill_min),
        )
        store_sizes, smr_sizes = value_sized(name, parameters)
        constants = smr_constants(
            parameters, RAFT_SNAPSHOT_INTERVAL,
            snapshot_log_bytes_min=parameters.get("snapshotkib", 0) * 1024, **smr_sizes,
        )
        kv = kv_params(parameters, KvParams().bytes_max, **store_sizes)
        # A follower accepts a snapshot as large as the store can make one.
        raft_params = dataclasses.replace(raft_params, snapshot_bytes_max=snapshot_bytes_needed(
            name, kv, constants, RAFT_SNAPSHOT_BYTES_CEILING))
        return SmrFactory(
            name,
            Resilience.CRASH,
            lambda context: raft_type(context, raft_params),
            functools.partial(KeyValueStateMachine, kv),
            smr_params,
            ordering_path="raft",
            admin_types=(RaftAdmin,),
            constants=constants,
            replica_type=replica_type,
            ordering_footprint_max=functools.partial(
                raft_footprint_max, raft_params, smr_params, constants
            ),
            ordering_durable_checks={LeaderCommitted: raft_durable.check_commit},
        )

    return build


def raft_footprint_max(
    raft: RaftParams, smr: SmrParams, constants: SmrConstants, config: ClusterConfig
) -> dict[str, int]:
    """What a Raft + SMR node may hold (the simulator's bounded-memory check).

    The log past the snapshot: at most ``snapshot_interval`` committed entries
    (SMR snapshots at every multiple and Raft compacts there), plus the
    trailing window a compaction keeps (``snapshot_trailing_entries_max``), plus the
    uncommitted tail a leader accepts (``pending_proposals_max``), plus what a
    follower may have received beyond it in one pipelined window. Every entry
    is one durable record. Of those, the applied entries past the snapshot are
    held to the snapshot cadence itself (``raft_log_uncompacted``: a
    compaction that never happens); records that are no part of the log or
    the snapshot are the self-audit's (``audit_durable_records``). Tasks and
    timers: one per read in progress (SMR's and Raft's bounds) plus the fixed
    ones. Without snapshots the log grows by design, so it is not bounded."""
    fixed = 32 + 4 * config.n
    bounds = {
        "contexts": 16,
        "tasks": smr.reads_pending_max + raft.reads_pending_max + fixed,
        "timers": smr.reads_pending_max + raft.reads_pending_max + fixed,
        "unacked": 64 * config.n,
        "stream_inbox": 0,
    }
    if constants.snapshot_interval:
        deferrals = SNAPSHOT_DEFERRALS_MAX if constants.snapshot_log_bytes_min else 0
        entries = (
            constants.snapshot_interval * (deferrals + 1)
            + raft.pending_proposals_max
            + raft.entries_per_message_max * raft.inflight_max
            + raft.snapshot_trailing_entries_max
        )
        bounds["raft_log_entries"] = entries
        bounds["storage_keys"] = entries + fixed
        # Applied entries not yet compacted: SMR snapshots at every multiple of
        # the interval (or skips up to ``deferrals`` of them) and hands the
        # snapshot to Raft in the same step, which compacts there.
        bounds["raft_log_uncompacted"] = constants.snapshot_interval * (deferrals + 1)
    return bounds


# -- PBFT ----------------------------------------------------------------------------

PBFT_CHECKPOINT_INTERVAL = 16  # K (and SMR's snapshot interval); L = 2K
# Bounded so that a VIEW-CHANGE (L batches) and a NEW-VIEW fit in one frame.
PBFT_COMMAND_BYTES_MAX = 8 * 1024
PBFT_BATCH_BYTES_MAX = 16 * 1024
# One own batch in flight (SMR's default is 4): requests that arrive while a
# batch goes through PBFT's three phases wait and join the next, so batches
# grow with the load and the per-batch signatures are shared by more requests
# (about 40 % less CPU per SET at 64 clients; docs/benchmarks.md). Raft keeps
# 4: its rounds are cheap and it gains little. ``pbft:inflight=N`` overrides.
PBFT_BATCHES_INFLIGHT = 1


def bft_constants(parameters: Mapping[str, int], interval: int) -> SmrConstants:
    """SMR's cluster constants for PBFT and MinBFT: small commands and batches
    (a VIEW-CHANGE carries L of them in one frame) and session results that
    fit a checkpoint's state transfer with the store."""
    return smr_constants(
        {**parameters, "snapshot": interval}, interval,
        batch_bytes_max=PBFT_BATCH_BYTES_MAX, command_bytes_max=PBFT_COMMAND_BYTES_MAX,
        session_results_bytes_max=BFT_SESSION_RESULTS_BYTES_MAX,
    )


def bft_kv_params(parameters: Mapping[str, int]) -> KvParams:
    """The store's bounds on PBFT and MinBFT (see ``BFT_STORE_BYTES_DEFAULT``)."""
    if "values" in parameters:
        raise ConfigError(
            f"values= applies to Raft; PBFT and MinBFT order commands of at most "
            f"{PBFT_COMMAND_BYTES_MAX} bytes (a VIEW-CHANGE carries L batches in one frame)"
        )
    return kv_params(parameters, BFT_STORE_BYTES_DEFAULT, tombstones_max=BFT_TOMBSTONES_MAX)


class BftWindow(TypedDict):
    """The parameters PBFT and MinBFT take alike from a service's (``PbftParams``,
    ``MinbftParams`` keywords)."""

    checkpoint_interval: int
    log_size: int
    batch_bytes_max: int
    snapshot_bytes_max: int
    view_change_timeout_us: int


def bft_parts(
    name: str, parameters: Mapping[str, int], *, interval_default: int, inflight_default: int,
    snapshot_bytes_max: int, view_timeout_us_default: int,
) -> tuple[SmrParams, SmrConstants, KvParams, BftWindow]:
    """What PBFT's and MinBFT's builders derive alike from a service's
    parameters: SMR's parameters and constants, the store's bounds, and the
    protocol's window (K = ``snapshot=``, L = 2K), batch and snapshot bounds
    and view-change timeout (``view_timeout=``, milliseconds)."""
    interval = parameters.get("snapshot", interval_default) or interval_default
    smr_params = SmrParams(batches_inflight_max=parameters.get("inflight", inflight_default))
    constants = bft_constants(parameters, interval)
    kv = bft_kv_params(parameters)
    window = BftWindow(
        checkpoint_interval=interval, log_size=2 * interval,
        batch_bytes_max=PBFT_BATCH_BYTES_MAX,
        snapshot_bytes_max=snapshot_bytes_needed(name, kv, constants, snapshot_bytes_max),
        view_change_timeout_us=1000 * parameters.get(
            "view_timeout", view_timeout_us_default // 1000),
    )
    return smr_params, constants, kv, window


def bft_footprint_max(smr: SmrParams, own: dict[str, int]) -> dict[str, int]:
    """``own``, what PBFT or MinBFT may hold in its buffers, and the tasks, timers
    and contexts both may hold beside SMR's (the simulator's bounded-memory check)."""
    reads = smr.reads_pending_max
    return {
        **own,
        "tasks": reads + smr.batches_inflight_max + 16,
        "timers": reads + smr.batches_inflight_max + 16,
        "contexts": 8,
    }


BftParamsT = TypeVar("BftParamsT", PbftParams, MinbftParams)


def bft_factory(
    name: str, ordering_type: Callable[[Context, BftParamsT], Any], params: BftParamsT,
    state_machine: StateMachineFactory, smr_params: SmrParams, constants: SmrConstants,
    authenticator: AuthenticatorFactory | None = None,
) -> SmrFactory:
    """PBFT or MinBFT (as ``params`` says: ``ordering_type`` is the protocol's
    class or a broken variant of it) under SMR over ``state_machine``, with the
    protocol's resilience, ordering path and declared footprint."""
    if isinstance(params, PbftParams):
        resilience, path = Resilience.BYZANTINE, "pbft"
        footprint = functools.partial(pbft_footprint_max, params, smr_params)
    else:
        resilience, path = Resilience.BYZANTINE_TRUSTED, "minbft"
        footprint = functools.partial(minbft_footprint_max, params, smr_params)
    return SmrFactory(
        name, resilience, lambda context: ordering_type(context, params), state_machine,
        smr_params, ordering_path=path, constants=constants, authenticator=authenticator,
        ordering_footprint_max=footprint,
    )


def txn_bft_constants(parameters: Mapping[str, int], interval: int) -> SmrConstants:
    """SMR's constants for a transaction group of PBFT or MinBFT replicas."""
    return smr_constants(
        {"sessions": parameters.get("sessions", SmrConstants().sessions_max)}, interval,
        batch_bytes_max=PBFT_BATCH_BYTES_MAX, command_bytes_max=PBFT_COMMAND_BYTES_MAX,
    )


def pbft_wire() -> ModuleType:
    """PBFT's wire messages and how they are signed, for the simulator's PBFT
    behaviours (``replicaio.sim.pbft_adversary``), which attack with them."""
    return pbft_messages


def pbft_checkers(config: ClusterConfig) -> list[Any]:
    """PBFT's own checkers (``replicaio.check.pbft``), fed with every output."""
    return [PbftChecker(config.byzantine, config.f)]


def pbft_footprint_max(
    pbft: PbftParams, smr: SmrParams, config: ClusterConfig
) -> dict[str, int]:
    """What PBFT may hold on top of SMR's own tables (the simulator's
    bounded-memory check): every buffer within the watermarks or its named
    bound; SMR's tables are declared by :meth:`SmrFactory.footprint_max`."""
    n = config.n
    window = pbft.log_size
    checkpoints = window // pbft.checkpoint_interval + 1
    return bft_footprint_max(smr, {
        "pbft_slots": window,
        "pbft_prepared_proofs": window,
        "pbft_relayed": pbft.relayed_max,
        "pbft_awaited": pbft.awaited_max,
        "pbft_awaited_batches": pbft.relayed_max,
        "pbft_forwarded": pbft.forwarded_max * (n - 1),
        "pbft_barriers": pbft.barriers_max,
        "pbft_proposals": pbft.proposals_max,
        "pbft_checkpoint_votes": (checkpoints + 1) * n,
        "pbft_snapshots": checkpoints,
        "pbft_view_changes": 2 * n,
        "pbft_late": window,
        "storage_keys": 3 * window + 16,
    })


def mac_clients(context: Context, params: SmrParams) -> ClientAuthenticator:
    """``pbft:macs=1``: clients authenticate with one MAC per replica (Castro and
    Liskov's authenticators; each replica checks its own entry, so validity is
    per replica: a faulty client can get a correct primary suspected, the price
    the paper pays for cheap authentication). Simulation secret only."""
    return MacClients(context.node.codec, context.id, context.n,
                      verified_max=params.verified_max)


def build_pbft(variant: str = "") -> Callable[[str, Mapping[str, int]], ProtocolFactory]:
    """A builder of PBFT + SMR + KV nodes; with ``variant``, of that broken
    variant (``replicaio.testing.variants.pbft``)."""

    def build(name: str, parameters: Mapping[str, int]) -> ProtocolFactory:
        pbft_type = PBFT_VARIANTS[variant].pbft_type if variant else Pbft
        smr_params, constants, kv, window = bft_parts(
            name, parameters, interval_default=PBFT_CHECKPOINT_INTERVAL,
            inflight_default=PBFT_BATCHES_INFLIGHT,
            snapshot_bytes_max=pbft_messages.SNAPSHOT_BYTES_MAX,
            view_timeout_us_default=PbftParams().view_change_timeout_us,
        )
        pbft_params = PbftParams(
            **window, commits_on_channel=bool(parameters.get("replica_macs", 1)),
        ).validate()
        return bft_factory(
            name, pbft_type, pbft_params, functools.partial(KeyValueStateMachine, kv),
            smr_params, constants, mac_clients if parameters.get("macs", 0) else None,
        )

    return build


# -- MinBFT --------------------------------------------------------------------------

MINBFT_CHECKPOINT_INTERVAL = 16  # K (and SMR's snapshot interval); L = 2K


def minbft_wire() -> ModuleType:
    """MinBFT's wire messages, for its simulator behaviours
    (``replicaio.sim.minbft_adversary``)."""
    return minbft_messages


def minbft_byzantine_code() -> dict[str, type[Any]]:
    """The code a Byzantine MinBFT replica's behaviours swap into its core
    (``replicaio/testing/variants/minbft_byzantine.py``, by class name), for
    the simulator."""
    return {code.__name__: code for code in (
        HidingMinbft, UnseenViewChanges, SecondNewViewChanges, FreshAnchorViewChanges,
        LateAnchorMinbft, LateCheckpoints, SilentPrimary, JoiningViewChanges)}


def usig_lost(output: Any) -> tuple[int, int] | None:
    """``(replica, epoch)`` if ``output`` is MinBFT's report that a replica's
    USIG state may be lost (``UsigLost``), for the simulated operator."""
    if type(output) is UsigLost:
        return output.replica, output.epoch
    return None


def simulation_admission(replica: int, epoch: int, group: int | None = None) -> object:
    """The operator's admission of USIG ``epoch`` for ``replica`` (of its USIG of
    ``group`` on a node of several MinBFT groups, ADR 0031) under the simulation
    scheme (``replicaio/sim/operator.py``; ADR 0026)."""
    return HmacUsigScheme(USIG_SIMULATION_SECRET).admit(replica, epoch, group)


def admit_usig(kind: str, replica: int, epoch: int, key: bytes | None,
               group: int | None = None) -> bytes:
    """The operator's admission certificate of USIG ``epoch`` for ``replica``
    (of its USIG of ``group`` on a node of several MinBFT groups, ADR 0031):
    ``hmac`` under the trusted components' shared secret ``key``; ``ed25519``
    with the operator's private ``key`` (``replicaio kv admit-usig``)."""
    assert key is not None
    if kind == "hmac":
        return HmacUsigScheme(key).admit(replica, epoch, group).certificate
    return sign_admission(key, replica, epoch, group).certificate


def usig_admission(replica: int, epoch: int, certificate: bytes) -> object:
    """MinBFT's ``UsigAdmission`` as a cluster file names it (checked by the
    replica's scheme when the node starts)."""
    return UsigAdmission(replica, epoch, certificate)


def usig_scheme(
    kind: str, replica: int, secret: bytes | None, private: bytes | None,
    publics: Mapping[int, bytes], operator_public_key: bytes | None = None,
) -> UsigScheme:
    """A live node's USIG certificates (the cluster file's ``[usig]``): ``hmac``
    under the trusted components' shared ``secret``; ``ed25519`` with this
    replica's ``private`` key and every replica's public key. Raises
    ``ConfigError`` on keys that do not fit."""
    if kind == "hmac":
        assert secret is not None
        return HmacUsigScheme(secret)
    assert kind == "ed25519" and private is not None
    return Ed25519KeyedUsigScheme(replica, private, dict(publics), operator_public_key)


def smr_replica_of(protocol: Any) -> Replica | None:
    """The SMR replica inside a node's protocol (for the simulator's adversary,
    which sees every replica's state: ``pbft_lagging_reads`` answers reads as
    the correct replica that executed least would)."""
    replica = getattr(protocol, "replica", None)
    return replica if isinstance(replica, Replica) else None


def minbft_of(protocol: Any, group: int | None = None) -> Minbft | None:
    """The MinBFT replica inside a node's protocol (for the simulator's
    adversary, which asks a Byzantine replica's own USIG for UIs): the node's
    only one, or with ``group`` its replica of that group on a node hosting
    several (``replicaio.smr.groups.Groups``)."""
    if group is not None:
        replicas = getattr(getattr(protocol, "groups", None), "replicas", None)
        if not isinstance(replicas, list) or not 0 <= group < len(replicas):
            return None
        protocol = replicas[group]
    ordering = getattr(protocol, "ordering", None)
    return ordering if isinstance(ordering, Minbft) else None


def minbft_footprint_max(
    minbft: MinbftParams, smr: SmrParams, config: ClusterConfig
) -> dict[str, int]:
    """What MinBFT may hold on top of SMR's own tables (declared by
    :meth:`SmrFactory.footprint_max`): every buffer within its window or bound."""
    n = config.n
    window = minbft.log_size
    checkpoints = window // minbft.checkpoint_interval + 1
    return bft_footprint_max(smr, {
        "minbft_slots": window,
        "minbft_relayed": minbft.relayed_max,
        "minbft_forwarded": minbft.forwarded_max * (n - 1),
        "minbft_barriers": minbft.barriers_max,
        "minbft_proposals": minbft.proposals_max,
        "minbft_held": minbft.held_max * n,
        "minbft_deferred": minbft.held_max * n,
        "minbft_own_log": 4 * window + 16,
        "minbft_checkpoint_votes": (checkpoints + 1) * n,
        "minbft_snapshots": checkpoints + minbft.snapshots_served_max,
        "minbft_view_changes": n,
        "minbft_requests": n,
        # One NEW-VIEW certificate per view the own log shows an entry of (each
        # such view has two own messages at least: its VIEW-CHANGE and a
        # commitment), and the current view's.
        "minbft_certificates": 2 * window + 9,
        "storage_keys": 8 * window + 4 * n + 32 + 2 * window + 9,
    })


def build_minbft(variant: str = "") -> Callable[[str, Mapping[str, int]], ProtocolFactory]:
    """A builder of MinBFT + SMR + KV nodes; with ``variant``, of that broken
    variant (``replicaio.testing.variants.minbft``)."""

    def build(name: str, parameters: Mapping[str, int]) -> ProtocolFactory:
        minbft_type = MINBFT_VARIANTS[variant].minbft_type if variant else Minbft
        smr_params, constants, kv, window = bft_parts(
            name, parameters, interval_default=MINBFT_CHECKPOINT_INTERVAL,
            inflight_default=SmrParams().batches_inflight_max,
            snapshot_bytes_max=minbft_messages.SNAPSHOT_BYTES_MAX,
            view_timeout_us_default=MinbftParams().view_change_timeout_us,
        )
        minbft_params = MinbftParams(**window).validate()
        return bft_factory(
            name, minbft_type, minbft_params, functools.partial(KeyValueStateMachine, kv),
            smr_params, constants,
        )

    return build


SERVICES: dict[str, ServiceSpec] = {
    spec.name: spec
    for spec in (
        ServiceSpec(
            "raft", "raft", Resilience.CRASH, build_raft(""),
            "Raft, with SMR and the key-value store, n >= 2f+1",
            checkers=raft_checkers, membership=RAFT_MEMBERSHIP, parameters=RAFT_PARAMETERS,
        ),
        ServiceSpec(
            "pbft", "pbft", Resilience.BYZANTINE, build_pbft(""),
            "PBFT, with SMR and the key-value store, n >= 3f+1 (f Byzantine)",
            checkers=pbft_checkers, parameters=PBFT_PARAMETERS,
        ),
        ServiceSpec(
            "minbft", "minbft", Resilience.BYZANTINE_TRUSTED, build_minbft(""),
            "MinBFT, with SMR and the key-value store, n >= 2f+1 (f Byzantine, a trusted "
            "USIG each)",
            checkers=pbft_checkers, parameters=MINBFT_PARAMETERS,
        ),
    )
}
# The deliberately broken variants of Raft, with SMR and the key-value store.
SERVICES.update(
    (name, ServiceSpec(name, "raft", Resilience.CRASH, build_raft(name),
                       f"BROKEN on purpose: {variant.summary}", broken=True,
                       checkers=raft_checkers, membership=RAFT_MEMBERSHIP,
                       parameters=RAFT_PARAMETERS))
    for name, variant in RAFT_VARIANTS.items()
)


def broken_bft_services(
    family: str, resilience: Resilience,
    build: Callable[[str], Callable[[str, Mapping[str, int]], ProtocolFactory]],
    variants: Mapping[str, PbftVariant | MinbftVariant], parameters: frozenset[str],
) -> dict[str, ServiceSpec]:
    """The services of PBFT's or MinBFT's deliberately broken ``variants``: the
    protocol's, each with its variant's summary and client rule."""
    return {
        name: ServiceSpec(name, family, resilience, build(name),
                          f"BROKEN on purpose: {variant.summary}", broken=True,
                          checkers=pbft_checkers, fast_quorums=variant.fast_quorums,
                          reads=variant.reads, parameters=parameters)
        for name, variant in variants.items()
    }


SERVICES.update(broken_bft_services(
    "minbft", Resilience.BYZANTINE_TRUSTED, build_minbft, MINBFT_VARIANTS, MINBFT_PARAMETERS))
SERVICES.update(broken_bft_services(
    "pbft", Resilience.BYZANTINE, build_pbft, PBFT_VARIANTS, PBFT_PARAMETERS))


TXN_GROUPS_DEFAULT = 3
TXN_WAIT_MS_DEFAULT = 100  # bounded waiting in lock order (ADR 0009, amendment 3)


@dataclass(frozen=True, slots=True)
class TransactionalSpec:
    """A transactional cluster: G groups of an ordering protocol (``raft``,
    ``pbft`` or ``minbft``) + SMR + the transaction store
    (``replicaio.services.txn``), with the transaction protocol on every node;
    ``checkers`` are each group's own; ``ordering_type``: a broken variant's
    class for the ordering (``None``: the protocol's own)."""

    name: str
    summary: str
    node_type: type[TxnNode] = TxnNode
    store_type: type[TxnStore] = TxnStore
    broken: bool = False
    ordering: str = "raft"
    checkers: Callable[[ClusterConfig], list[Any]] = raft_checkers
    ordering_type: type[Any] | None = None
    # The simulator's clients are gateways with this rule (else with ``gateway=1``).
    gateway: GatewayRule | None = None

    @property
    def parameters(self) -> frozenset[str]:
        """The name's parameters it takes."""
        return TXN_RAFT_PARAMETERS if self.ordering == "raft" else TXN_BFT_PARAMETERS


def build_transactional(spec: TransactionalSpec, name: str,
                        parameters: Mapping[str, int]) -> TxnFactory:
    groups = parameters.get("groups", TXN_GROUPS_DEFAULT)
    store_params = StoreParams()
    if "remember" in parameters:
        store_params = dataclasses.replace(
            store_params, finished_max=max(1, parameters["remember"]),
            coordinated_max=max(1, parameters["remember"]))
    if "windows" in parameters:
        store_params = dataclasses.replace(
            store_params, nonce_clients_max=max(1, parameters["windows"]))
    store_type = functools.partial(spec.store_type, store_params)
    group_factory: SmrFactory
    if spec.ordering == "pbft":
        interval = PBFT_CHECKPOINT_INTERVAL
        pbft_params = PbftParams(checkpoint_interval=interval, log_size=2 * interval,
                                 batch_bytes_max=PBFT_BATCH_BYTES_MAX).validate()
        smr_params = SmrParams()
        pbft_type: type[Pbft] = spec.ordering_type or Pbft
        group_factory = bft_factory(name, pbft_type, pbft_params, store_type, smr_params,
                                    txn_bft_constants(parameters, interval))
    elif spec.ordering == "minbft":
        # One USIG per (node, group): each group's replica certifies under an
        # identity naming its group (ADR 0031), in its own storage slice.
        interval = MINBFT_CHECKPOINT_INTERVAL
        minbft_params = MinbftParams(checkpoint_interval=interval, log_size=2 * interval,
                                     batch_bytes_max=PBFT_BATCH_BYTES_MAX).validate()
        minbft_type: type[Minbft] = spec.ordering_type or Minbft
        smr_params = SmrParams()
        group_factory = bft_factory(name, minbft_type, minbft_params, store_type, smr_params,
                                    txn_bft_constants(parameters, interval))
    else:
        # The group's store adds transaction tables to the key-value store: a
        # follower takes whatever snapshot the leader made (crash faults only).
        raft_params = RaftParams(
            snapshot_bytes_max=RAFT_SNAPSHOT_BYTES_CEILING,
            commit_notice_delay_us=parameters.get(
                "notice_us", RaftParams().commit_notice_delay_us),
        ).validate()
        raft_type: type[Raft] = spec.ordering_type or Raft
        smr_params = SmrParams(batch_fill_min=parameters.get("fill", SmrParams().batch_fill_min))
        constants = smr_constants(parameters, RAFT_SNAPSHOT_INTERVAL,
                                  snapshot_log_bytes_min=parameters.get("snapshotkib", 0) * 1024)
        group_factory = SmrFactory(
            name, Resilience.CRASH, lambda context: raft_type(context, raft_params),
            store_type, smr_params, ordering_path="raft", constants=constants,
            ordering_footprint_max=functools.partial(
                raft_footprint_max, raft_params, smr_params, constants),
        )
    params = TxnParams(lock_wait_us=parameters.get("wait", TXN_WAIT_MS_DEFAULT) * 1000)
    return TxnFactory(name, SlotMap.even(groups), group_factory, params,
                      node_type=spec.node_type)


TRANSACTIONAL: dict[str, TransactionalSpec] = {
    "txn": TransactionalSpec(
        "txn", "atomic transactions across G Raft groups (txn:groups=G), keys by hash slot"),
    "txn-kv": TransactionalSpec(
        "txn-kv", "a sharded Redis store: G Raft groups (txn-kv:groups=G), keys by hash "
        "slot, MULTI/EXEC across groups by the transaction protocol",
        store_type=KvTxnStore),
    "txn-pbft": TransactionalSpec(
        "txn-pbft", "atomic transactions across G PBFT groups (certified votes and "
        "decisions, client-signed requests: f Byzantine nodes), keys by hash slot",
        ordering="pbft", checkers=pbft_checkers),
    "txn-kv-pbft": TransactionalSpec(
        "txn-kv-pbft", "a sharded Redis store over G PBFT groups (txn-kv-pbft:groups=G): "
        "MULTI/EXEC across groups by certified, client-signed transactions (f Byzantine "
        "nodes), keys by hash slot", store_type=KvTxnStore, ordering="pbft",
        checkers=pbft_checkers),
    "txn-minbft": TransactionalSpec(
        "txn-minbft", "atomic transactions across G MinBFT groups (n >= 2f+1, one USIG per "
        "node and group; certified votes and decisions, client-signed requests), keys by "
        "hash slot", ordering="minbft", checkers=pbft_checkers),
    "txn-kv-minbft": TransactionalSpec(
        "txn-kv-minbft", "a sharded Redis store over G MinBFT groups (txn-kv-minbft:groups=G, "
        "one USIG per node and group): MULTI/EXEC across groups by certified, client-signed "
        "transactions, keys by hash slot", store_type=KvTxnStore, ordering="minbft",
        checkers=pbft_checkers),
}
TRANSACTIONAL.update(
    (name, TransactionalSpec(
        name, f"BROKEN on purpose: {variant.summary}", variant.node_type, variant.store_type,
        broken=True, ordering=variant.ordering, ordering_type=variant.ordering_type,
        gateway=variant.gateway,
        checkers=raft_checkers if variant.ordering == "raft" else pbft_checkers))
    for name, variant in TXN_VARIANTS.items()
)


def transactional_spec(name: str) -> tuple[TransactionalSpec, dict[str, int]] | None:
    """The transactional cluster ``name`` names (with its parameters), or ``None``."""
    base, parameters = split_name(name)
    spec = TRANSACTIONAL.get(base)
    if spec is None:
        return None
    refuse_parameters(name, parameters, spec.parameters)
    return spec, parameters


# -- protocols from other packages (entry point group replicaio.protocols) ------------

PLUGIN_GROUP = "replicaio.protocols"
# name -> (the distribution it came from, why it did not load: "" when it did)
PLUGINS: dict[str, tuple[str, str]] = {}
_plugins_loaded = False


def load_plugins() -> None:
    """Register every protocol of the ``replicaio.protocols`` entry point group, once.

    An entry point's name is the protocol's name; its object is a
    :class:`BroadcastSpec`, a :class:`ServiceSpec`, or a callable returning one.
    A plug-in may not take a built-in name; one that fails to load is recorded
    in :data:`PLUGINS` with the reason and never hides the others."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry in sorted(importlib.metadata.entry_points(group=PLUGIN_GROUP),
                        key=lambda found: found.name):
        distribution = entry.dist.name if entry.dist is not None else "?"
        PLUGINS[entry.name] = (distribution, register_plugin(entry))


def register_plugin(entry: importlib.metadata.EntryPoint) -> str:
    """Register one entry point's protocol; why it was refused, or ``""``."""
    name = entry.name
    if name in BROADCASTS or name in SERVICES or name in TRANSACTIONAL:
        return f"the name {name!r} is taken by a built-in protocol"
    if not name or ":" in name or "," in name:
        return f"{name!r} is not a protocol name (no ':' or ',')"
    try:
        found = entry.load()
        spec = found() if callable(found) else found
    except Exception as error:  # a plug-in's own failure, reported, never fatal here
        return f"{entry.value}: {type(error).__name__}: {error}"
    if not isinstance(spec, BroadcastSpec | ServiceSpec):
        return (f"{entry.value} is a {type(spec).__name__}, not a BroadcastSpec or "
                "ServiceSpec")
    if spec.name != name:
        return f"{entry.value} names itself {spec.name!r}, its entry point {name!r}"
    if isinstance(spec, BroadcastSpec):
        BROADCASTS[name] = spec
    else:
        SERVICES[name] = spec
    return ""


def plugin_error(name: str) -> str | None:
    """Why the plug-in protocol ``name`` (without parameters) did not load, if it did not."""
    load_plugins()
    found = PLUGINS.get(name.partition(":")[0])
    if found is None or not found[1]:
        return None
    return f"plug-in protocol {name!r} (from {found[0]}) did not load: {found[1]}"


def split_name(name: str) -> tuple[str, dict[str, int]]:
    """``"raft:snapshot=8,batch=4"`` -> ``("raft", {"snapshot": 8, "batch": 4})``."""
    base, colon, rest = name.partition(":")
    parameters: dict[str, int] = {}
    if not colon:
        return base, parameters
    for item in rest.split(","):
        key, equals, value = item.partition("=")
        if not equals or key not in SERVICE_PARAMETERS:
            known = ", ".join(f"{k} ({v})" for k, v in SERVICE_PARAMETERS.items())
            raise UsageError(f"protocol {name!r}: bad parameter {item!r}; known: {known}")
        try:
            number = int(value)
        except ValueError:
            raise UsageError(f"protocol {name!r}: {key} must be an integer") from None
        if number < 0:
            raise UsageError(f"protocol {name!r}: {key} must be >= 0")
        parameters[key] = number
    return base, parameters


def refuse_parameters(name: str, parameters: Mapping[str, int],
                      accepted: frozenset[str] | None) -> None:
    """Raise ``UsageError`` if ``name`` sets a parameter its protocol does not read
    (``accepted``; ``None``: any known one): a setting that would do nothing is an
    error, not a silent no-op."""
    if accepted is None:
        return
    ignored = sorted(set(parameters) - accepted)
    if ignored:
        raise UsageError(
            f"protocol {name!r}: {', '.join(ignored)} does not apply to "
            f"{name.partition(':')[0]}; it takes {', '.join(sorted(accepted))}")


def service_spec(name: str) -> tuple[ServiceSpec, dict[str, int]] | None:
    """The replicated service ``name`` names (with its parameters), or ``None``."""
    load_plugins()
    base, parameters = split_name(name)
    spec = SERVICES.get(base)
    if spec is None:
        return None
    refuse_parameters(name, parameters, spec.parameters)
    return spec, parameters


def protocol_names() -> list[str]:
    """Every protocol a host can run, in a stable order (plug-ins included)."""
    load_plugins()
    return [*BROADCASTS, *SERVICES, *TRANSACTIONAL]


def protocol_summaries() -> dict[str, str]:
    """One line per protocol name (a plug-in that did not load says why)."""
    load_plugins()
    found = {name: spec.summary for name, spec in BROADCASTS.items()}
    found.update({name: spec.summary for name, spec in SERVICES.items()})
    found.update({name: spec.summary for name, spec in TRANSACTIONAL.items()})
    for name, (distribution, error) in PLUGINS.items():
        if error:
            found[name] = f"NOT LOADED (plug-in from {distribution}): {error}"
    return found


def broadcast_spec(name: str) -> BroadcastSpec | None:
    """The broadcast protocol ``name`` names (with what it claims), or ``None``."""
    load_plugins()
    return BROADCASTS.get(name)


# Orderings whose nodes recover what a damaged disk lost from their peers (they
# honour ``Start.damaged``: Raft rejoins like a replaced disk, docs/raft.md; a
# PBFT replica withholds its votes until a stable checkpoint passes what it
# may have voted on, docs/pbft.md).
RECOVERING_ORDERINGS = frozenset({"raft", "pbft", "minbft"})


def damaged_disks_max(name: str | None, nodes: int, byzantine: int) -> int:
    """How many nodes of a simulated ``name`` cluster may have faulty disks:
    at most f Raft nodes, Byzantine ones included (n >= 2f + 1 stays with a
    quorum of intact disks); for PBFT, which withholds the votes a damaged
    replica may have lost, up to f besides the Byzantine ones (more than f
    faults together may stop it: its checker excuses liveness then, never
    safety)."""
    crash_bound = (nodes - 1) // 2 - byzantine
    if name is not None and transactional_spec(name) is not None:
        # The transaction harness demands liveness after the heal (every lock
        # released, every client committing) and excuses none: f faults in all.
        return max(0, faults_tolerated(name, nodes) - byzantine)
    if name is None or not recovers_lost_state(name):
        return crash_bound
    if protocol_factory(name).resilience is not Resilience.BYZANTINE:
        return crash_bound
    return max(crash_bound, (nodes - 1) // 3)


def faults_tolerated(name: str | None, nodes: int) -> int:
    """The f of a simulated ``name`` cluster of ``nodes``: (n - 1) / 3 for a
    Byzantine protocol without a trusted component (PBFT, transactions over
    PBFT groups), (n - 1) / 2 otherwise (Raft, MinBFT with its USIG)."""
    found = service_spec(name) if name is not None else None
    if found is not None and found[0].resilience is Resilience.BYZANTINE:
        return (nodes - 1) // 3
    transactional = transactional_spec(name) if name is not None else None
    if transactional is not None and transactional[0].ordering == "pbft":
        return (nodes - 1) // 3  # every group of a transactional cluster spans the nodes
    return (nodes - 1) // 2


def recovers_lost_state(name: str) -> bool:
    """Whether nodes of protocol ``name`` recover lost acknowledged state from
    their peers, so that their storage may cut a log damaged in its middle back
    to its intact prefix rather than refuse to start (docs/storage.md)."""
    factory = protocol_factory(name)
    if isinstance(factory, TxnFactory):
        # A node of several groups: one storage, so a damaged disk damages
        # every group's log, and each group's replica recovers its own.
        factory = factory.group_factory
    if isinstance(factory, SmrFactory):
        return factory.ordering_path in RECOVERING_ORDERINGS
    return False


def protocol_factory(name: str) -> ProtocolFactory:
    """The factory a :class:`~replicaio.core.node.Node` is built with for ``name``."""
    service = service_spec(name)
    if service is not None:
        spec, parameters = service
        return spec.build(name, parameters)
    transactional = transactional_spec(name)
    if transactional is not None:
        return build_transactional(transactional[0], name, transactional[1])
    spec_broadcast = broadcast_spec(name)
    if spec_broadcast is None:
        error = plugin_error(name)
        if error is not None:
            raise UsageError(error)
        raise UsageError(f"unknown protocol {name!r}; known: {', '.join(protocol_names())}")
    return BroadcastFactory(spec_broadcast)


# -- what the simulator's adversary may aim at (replicaio.sim.adversary) -------


def probe_instances(instances: Instances) -> Iterator[int]:
    """Broadcast instances: each sender's window ``[low, low + window_max)``,
    its edges, and the node's own next sequence number."""
    for low in instances.low:
        yield low - 1
        yield low + instances.window_max - 1
        yield low + instances.window_max
    yield instances.next_seq


def adversary_probes() -> dict[type, Callable[[Any], Iterable[int]]]:
    """Per protocol state class, the numbers at its edges that a generic walk of
    its attributes cannot find (sums such as the top of a window)."""
    return {Instances: probe_instances}
