"""Scenario support for Raft (``cluster protocol=raft``): Raft + SMR + the KV store.

The :class:`~replicaio.testing.scenario.ProtocolKit` for the assembly's
``raft`` service, with Raft's checker (``replicaio.check.raft.RaftChecker``),
an output formatter for Raft's and SMR's outputs, and the commands a Raft
scenario needs (``docs/scenarios.md``, *Raft scenarios*):

* ``kv NODE put KEY VALUE`` / ``kv NODE get KEY``: a client request
  (``ClientRequest``, one client per command line) to NODE;
* ``elect NODE [quiet]``: fire NODE's timers until it campaigns (its election
  timer has run out without news from a leader);
* ``heartbeat NODE [quiet]``: fire a leader's timers once (heartbeat
  AppendEntries, check-quorum);
* ``wipe NODE``: NODE (down) loses its disk; its next ``restart`` is a blank
  disk, which draws a new disk identity;
* ``member LEADER add|remove|promote|transfer NODE``: an operator's
  ``RaftAdmin`` request to LEADER;
* ``raft``: per node, Raft's state from the read-only ``Raft.observe()``.

Timers. Raft's timers are tasks sleeping on core timers; the host sees only
their ids. Nothing fires unless a command says so, so a follower never
campaigns unless told to (``elect``), and a leader sends heartbeats only on
``heartbeat`` or ``tick``. ``stabilize`` does not apply to Raft: a Raft node
always has a timer armed.
"""

from __future__ import annotations

import dataclasses
import random
import weakref
from collections.abc import Mapping
from typing import Any

from replicaio.check.raft import RaftChecker
from replicaio.core.config import ClusterConfig
from replicaio.core.effects import Request, TimerFired
from replicaio.core.errors import ConfigError
from replicaio.core.node import TICK_TIMER
from replicaio.protocols.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Applied,
    BecameLeader,
    Config,
    ConfigChanged,
    Entry,
    FollowerLogRegressed,
    LeaderCommitted,
    RaftAdmin,
    ReadConfirmed,
    ReadRequested,
    RequestVote,
    RequestVoteResponse,
    Restarted,
    SnapshotInstalled,
    SnapshotTaken,
    TermChanged,
    TimeoutNow,
    Voted,
)
from replicaio.protocols.raft.params import RaftParams
from replicaio.protocols.raft.raft import Raft
from replicaio.protocols.raft.state import Role
from replicaio.smr.api import ClientRequest, Redirect, Rejected, Reply
from replicaio.storage.memory import MemoryStorage
from replicaio.testing.scenario import (
    Checker,
    Command,
    CommandHandler,
    ProtocolKit,
    Scenario,
    ScenarioError,
    ScenarioNode,
    format_message,
    format_value,
    no_more,
    take_quiet,
)
from replicaio.testing.variants.raft import RAFT_VARIANTS

ELECT_ROUNDS_MAX = 32
CLIENTS: weakref.WeakKeyDictionary[Scenario, int] = weakref.WeakKeyDictionary()


# -- printing -------------------------------------------------------------------------------


def format_config(config: Config) -> str:
    """``voters 0,1,2`` (``learners 3``, ``promoting 3``); identities are left out."""
    parts = ["voters " + ",".join(str(node) for node, _ in config.voters)]
    if config.learners:
        parts.append("learners " + ",".join(str(node) for node, _ in config.learners))
    if config.promoting:
        parts.append("promoting " + ",".join(map(str, config.promoting)))
    return " ".join(parts)


def format_entry(entry: Entry) -> str:
    if entry.config is not None:
        return f"t{entry.term}:config({format_config(entry.config)})"
    if not entry.data:
        return f"t{entry.term}:noop"
    return f"t{entry.term}:{len(entry.data)}B"


def format_raft_message(message: Any) -> str:
    """Raft's wire messages, compactly (``AppendEntries t2 prev=1/t1 [t2:noop] commit=1``)."""
    kind = type(message)
    if kind is RequestVote:
        what = "PreVote" if message.pre else "RequestVote"
        transfer = " transfer" if message.transfer else ""
        return (
            f"{what} t{message.term} last={message.last_log_index}/t{message.last_log_term}"
            f"{transfer}"
        )
    if kind is RequestVoteResponse:
        what = "PreVoteResponse" if message.pre else "RequestVoteResponse"
        return f"{what} t{message.term} {'granted' if message.granted else 'refused'}"
    if kind is AppendEntries:
        entries = " ".join(format_entry(entry) for entry in message.entries)
        return (
            f"AppendEntries t{message.term} prev={message.prev_log_index}/t{message.prev_log_term}"
            f" [{entries}] commit={message.leader_commit}"
        )
    if kind is AppendEntriesResponse:
        if message.success:
            return f"AppendEntriesResponse t{message.term} ok match={message.match_index}"
        return (
            f"AppendEntriesResponse t{message.term} reject at={message.rejected_index}"
            f" conflict={message.conflict_index}/t{message.conflict_term}"
        )
    if kind is TimeoutNow:
        return f"TimeoutNow t{message.term}"
    return format_message(message)


def format_raft_output(output: Any) -> str:
    """Raft's and SMR's outputs, one line each."""
    kind = type(output)
    if kind is Restarted:
        return (
            f"restarted disk={output.identity} term={output.term} "
            f"voted_for={output.voted_for} last_index={output.last_index}"
        )
    if kind is Voted:
        return f"voted t{output.term} for {output.candidate}"
    if kind is TermChanged:
        led = f", led by {output.leader}" if output.leader >= 0 else ""
        return f"term t{output.term} (from t{output.previous}){led}"
    if kind is SnapshotTaken:
        return f"snapshot taken {output.index} (t{output.term}), {output.size} bytes"
    if kind is FollowerLogRegressed:
        return (
            f"follower {output.follower}'s log went back: it had acknowledged "
            f"{output.match_index}, now ends at {output.last_index_hint}"
        )
    if kind is BecameLeader:
        return f"became leader t{output.term} last_index={output.last_index}"
    if kind is LeaderCommitted:
        return f"leader committed {output.index} (entry of t{output.entry_term}) in t{output.term}"
    if kind is Applied:
        return f"applied {output.index} (t{output.term})"
    if kind is SnapshotInstalled:
        return f"snapshot installed {output.index} (t{output.term})"
    if kind is ReadRequested:
        return f"read requested in t{output.term}"
    if kind is ReadConfirmed:
        return f"read confirmed at index {output.index}"
    if kind is ConfigChanged:
        return f"config at {output.index}: {format_config(output.config)}"
    if kind is Reply:
        return f"reply client {output.client}#{output.seq}: {format_kv_result(output.result)}"
    if kind is Redirect:
        leader = "unknown" if output.leader < 0 else str(output.leader)
        return f"redirect client {output.client}#{output.seq} to leader {leader}"
    if kind is Rejected:
        return f"rejected client {output.client}#{output.seq}: {output.reason}"
    return "output " + format_message(output)


def format_kv_result(result: bytes) -> str:
    from replicaio.services.kv.state_machine import decode_result

    try:
        decoded = decode_result(result)
    except Exception:  # show what came, whatever it is
        return format_value(result)
    value = getattr(decoded, "value", decoded)
    return "ok" if value is None else format_value(value)


# -- the kit --------------------------------------------------------------------------------


def raft_factory(params: RaftParams | None = None, raft_type: type[Raft] = Raft) -> Any:
    """Raft + SMR + KV exactly as the assembly's ``raft`` builds it, or with
    ``params`` and a broken variant's ``raft_type``."""
    from replicaio.assembly import protocol_factory

    factory = protocol_factory("raft")
    if params is None and raft_type is Raft:
        return factory
    from replicaio.smr.protocol import SmrFactory

    assert isinstance(factory, SmrFactory)
    validated = (params or RaftParams()).validate()
    return SmrFactory(
        factory.name,
        factory.resilience,
        lambda context: raft_type(context, validated),
        factory.state_machine,
        factory.params,
        ordering_path=factory.ordering_path,
        admin_types=factory.admin_types,
    )


# What the cluster line may set: RaftParams fields (integers, booleans as 0/1),
# and ``variant``, the name of a broken variant (replicaio.testing.variants.raft).
RAFT_PARAMETERS = (
    *(item.name for item in dataclasses.fields(RaftParams)
      if item.name not in ("initial_voters", "join")),
    "variant",
)


def configure(options: Mapping[str, str]) -> ProtocolKit:
    values: dict[str, Any] = {}
    defaults = RaftParams()
    raft_type: type[Raft] = Raft
    for key, text in options.items():
        if key == "variant":
            variant = RAFT_VARIANTS.get(text)
            if variant is None:
                raise ScenarioError(f"cluster: unknown variant {text!r}; known: "
                                    f"{', '.join(RAFT_VARIANTS)}")
            raft_type = variant.raft_type
            continue
        default = getattr(defaults, key)
        try:
            number = int(text)
        except ValueError:
            raise ScenarioError(f"cluster: {key} must be an integer, got {text!r}") from None
        values[key] = bool(number) if isinstance(default, bool) else number
    try:
        params = RaftParams(**values).validate()
    except ConfigError as error:
        raise ScenarioError(f"cluster: {error}") from None
    return dataclasses.replace(raft_kit(), factory=raft_factory(params, raft_type))


def raft_checker(config: ClusterConfig) -> Checker:
    return RaftChecker()


def raft_of(node: ScenarioNode) -> Raft:
    core = node.core
    assert core is not None
    ordering = getattr(core.protocol, "ordering", None)
    assert isinstance(ordering, Raft)
    return ordering


# -- commands -------------------------------------------------------------------------------


def kv(scenario: Scenario, command: Command) -> None:
    """kv NODE put KEY VALUE | kv NODE get KEY: a client's request to NODE."""
    from replicaio.services.kv.state_machine import encode_command

    words = list(command.words)
    usage = "kv NODE put KEY VALUE | kv NODE get KEY"
    if len(words) < 3 or words[1] not in ("put", "get"):
        raise ScenarioError(f"kv: usage: {usage}")
    node = scenario.up_node(words[0])
    op = words[1]
    if op == "put" and len(words) == 4:
        data = encode_command("put", words[2].encode(), words[3].encode())
        shown = f"put {words[2]}={words[3]}"
    elif op == "get" and len(words) == 3:
        data = encode_command("get", words[2].encode())
        shown = f"get {words[2]}"
    else:
        raise ScenarioError(f"kv: usage: {usage}")
    client = CLIENTS[scenario] = CLIENTS.get(scenario, 0) + 1  # one client per request
    request = ClientRequest(client, 1, data, op == "get")
    scenario.step(node, Request(request), f"{node.node_id}: client {client}#1 {shown}")


TIMER_KINDS = {
    "Election.watch_leader": "election timeout",
    "Election.election_round": "election timeout",  # a campaign that neither won nor lost
    "Replication.heartbeat_loop": "heartbeat",
    "Election.check_quorum_loop": "check-quorum",
    "Election.transfer_deadline": "transfer deadline",
}


def timer_kind(node: ScenarioNode, timer_id: int) -> str:
    """What an armed timer is for, from the task that armed it (read-only)."""
    core = node.core
    assert core is not None
    finisher = core.timer_finishers.get(timer_id)
    if finisher is None:
        return "core tick" if timer_id == TICK_TIMER else f"timer {timer_id}"
    name = getattr(finisher[0].coroutine, "__qualname__", "")
    return TIMER_KINDS.get(name, name or f"timer {timer_id}")


def fire(scenario: Scenario, node: ScenarioNode, kinds: tuple[str, ...]) -> int:
    """Fire NODE's armed timers of these kinds, in arming order; return how many."""
    fired = 0
    for timer_id in list(node.timers):
        if not node.up or timer_id not in node.timers:
            continue
        kind = timer_kind(node, timer_id)
        if kind not in kinds:
            continue
        del node.timers[timer_id]
        scenario.step(node, TimerFired(timer_id), f"{node.node_id}: {kind}")
        fired += 1
    return fired


def role_of(node: ScenarioNode) -> Role:
    return raft_of(node).observe().role


def campaigns(node: ScenarioNode) -> int:
    core = node.core
    assert core is not None
    counters = core.counters
    return counters.get("raft_election_timeouts", 0) + counters.get(
        "raft_election_rounds_timed_out", 0
    )


def elect(scenario: Scenario, command: Command) -> None:
    """elect NODE [quiet]: NODE's election timer runs out: fire it until NODE
    starts a campaign (a follower's first period may have heard from a leader;
    a candidate's round re-sends its requests every heartbeat before it starts over)."""
    positional = list(command.words)
    scenario.quiet = take_quiet(positional)
    if len(positional) != 1:
        raise ScenarioError("elect: usage: elect NODE [quiet]")
    node = scenario.up_node(positional[0])
    before = campaigns(node)
    for _ in range(ELECT_ROUNDS_MAX):
        if not fire(scenario, node, ("election timeout",)):
            raise ScenarioError(f"elect: node {node.node_id} has no election timer armed")
        if not node.up or campaigns(node) > before:
            break
    else:
        raise ScenarioError(
            f"elect: node {node.node_id} did not campaign after {ELECT_ROUNDS_MAX} timeouts"
        )
    if scenario.quiet and node.up:
        scenario.emit(f"{node.node_id}: {role_of(node).value}")


def timer_command(kind: str, usage: str) -> CommandHandler:
    def handler(scenario: Scenario, command: Command) -> None:
        positional = list(command.words)
        scenario.quiet = take_quiet(positional)
        if len(positional) != 1:
            raise ScenarioError(f"{command.name}: usage: {usage}")
        node = scenario.up_node(positional[0])
        if not fire(scenario, node, (kind,)):
            raise ScenarioError(f"{command.name}: node {node.node_id} has no {kind} timer armed")

    handler.__doc__ = f"{usage}: fire NODE's {kind} timer."
    return handler


heartbeat = timer_command("heartbeat", "heartbeat NODE [quiet]")
check_quorum = timer_command("check-quorum", "checkquorum NODE [quiet]")


def wipe(scenario: Scenario, command: Command) -> None:
    """wipe NODE: NODE (down) loses its disk; it restarts blank, with a new disk identity."""
    positional = list(command.words)
    if len(positional) != 1:
        raise ScenarioError("wipe: usage: wipe NODE")
    node = scenario.node(positional[0])
    if node.up:
        raise ScenarioError(f"wipe: node {node.node_id} is up (crash it first)")
    node.storage = MemoryStorage()
    # The new disk draws its identity (and its timeouts) from its own generator,
    # so it differs from the lost one (choose=first would draw the same).
    node.rng = random.Random(f"replicaio-scenario-wipe:{node.node_id}")
    scenario.emit(f"{node.node_id}: disk wiped")


ADMIN_ACTIONS = ("add", "add_learner", "promote", "remove", "transfer")


def member(scenario: Scenario, command: Command) -> None:
    """member LEADER add|add_learner|promote|remove|transfer NODE: an operator's request."""
    words = list(command.words)
    if len(words) != 3 or words[1] not in ADMIN_ACTIONS:
        raise ScenarioError(f"member: usage: member LEADER {'|'.join(ADMIN_ACTIONS)} NODE")
    node = scenario.up_node(words[0])
    target = scenario.node(words[2]).node_id
    admin = RaftAdmin(words[1], target)  # type: ignore[arg-type]
    scenario.step(node, Request(admin), f"{node.node_id}: admin {words[1]} {target}")


def status(scenario: Scenario, command: Command) -> None:
    """raft: per node, term, role, leader, vote, log end, commit and applied index, voters."""
    no_more(command, list(command.words), "raft")
    for node in scenario.nodes:
        if not node.up:
            scenario.emit(f"{node.node_id}: down")
            continue
        view = raft_of(node).observe()
        leader = "-" if view.leader < 0 else str(view.leader)
        vote = "-" if view.voted_for < 0 else str(view.voted_for)
        scenario.emit(
            f"{node.node_id}: t{view.term} {view.role.value} leader={leader} vote={vote} "
            f"last={view.last_index}/t{view.last_term} commit={view.commit_index} "
            f"applied={view.applied_index} {format_config(view.config)}"
        )


RAFT_COMMANDS: dict[str, CommandHandler] = {
    "kv": kv,
    "elect": elect,
    "heartbeat": heartbeat,
    "checkquorum": check_quorum,
    "wipe": wipe,
    "member": member,
    "raft": status,
}


def raft_kit() -> ProtocolKit:
    """The kit of ``cluster protocol=raft``."""
    return ProtocolKit(
        raft_factory(),
        raft_checker,
        format_raft_output,
        format_raft_message,
        show_choices=False,
        commands=RAFT_COMMANDS,
        parameters=RAFT_PARAMETERS,
        configure=configure,
    )
