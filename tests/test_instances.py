"""Tests of the multi-instance broadcast component (replicaio.protocols.broadcast.
instances) through a Node: the per-sender window, garbage collection of delivered
instances (storage, watermark, retained sends), stale messages, and restart."""

from __future__ import annotations

from typing import Any

import pytest

from replicaio.assembly import protocol_factory
from replicaio.core.config import ClusterConfig, Resilience
from replicaio.core.context import Context, Ignore
from replicaio.core.effects import Effects, Receive, Request, Start, TimerFired
from replicaio.core.errors import ConfigError
from replicaio.core.node import TICK_TIMER, Envelope, Node
from replicaio.interfaces.broadcast import VALUE_BYTES_MAX
from replicaio.protocols.broadcast import Accepted, Delivered, Instances
from replicaio.protocols.broadcast.beb import best_effort
from replicaio.protocols.broadcast.bracha import bracha
from replicaio.protocols.broadcast.catchup import CATCHUP_INTERVAL_US, Archived, Fetch, Gone

N = 4
WINDOW = 4
RETAINED = 2


class Small:
    """Instances of a broadcast with a small window and retention."""

    name = "small"
    resilience = Resilience.BYZANTINE
    instance: Any = staticmethod(best_effort)
    window_max = WINDOW
    retained_max = RETAINED
    archived_max = 0  # the archive (catch-up) has its own tests below
    vouch_link: str | None = None

    def __init__(self, context: Context) -> None:
        self.instances = Instances(
            context.child("bcast"),
            self.instance,
            window_max=self.window_max,
            retained_max=self.retained_max,
            archived_max=self.archived_max,
            vouch_link=self.vouch_link,
        )

    def start(self) -> None:
        self.instances.start()

    def on_request(self, payload: Any) -> str | None:
        return self.instances.broadcast(payload)


class Wide(Small):
    window_max = WINDOW
    retained_max = WINDOW - 1


class SmallBracha(Small):
    instance = staticmethod(bracha)


class Host:
    """Drives one node and keeps its durable storage, as a host would."""

    def __init__(self, protocol: Any = Small, storage: dict[str, bytes] | None = None) -> None:
        self.storage: dict[str, bytes] = dict(storage or {})
        self.node = Node(0, ClusterConfig(N, 1), protocol)
        self.start_effects = self.step(Start(dict(self.storage)))

    def step(self, event: Any) -> Effects:
        effects = self.node.step(event)
        for key, value in effects.persists:
            if value is None:
                self.storage.pop(key, None)
            else:
                self.storage[key] = value
        return effects

    def send(
        self, source: int, sender: int, seq: int, value: bytes, channel: str = "SEND"
    ) -> Effects:
        message = Envelope(("bcast", sender, seq), channel, value)
        return self.step(Receive(source, self.node.codec.encode(message)))

    @property
    def instances(self) -> Instances:
        protocol = self.node.protocol
        assert isinstance(protocol, Small)
        return protocol.instances

    def decode(self, key: str) -> Any:
        return self.node.codec.decode_value(self.storage[key])


def instance_path(sender: int, seq: int) -> tuple[int | str, ...]:
    return ("bcast", sender, seq)


# -- the window -------------------------------------------------------------------


def test_message_beyond_the_window_is_ignored_without_ack() -> None:
    host = Host()
    effects = host.send(1, 1, WINDOW, b"late")
    assert not effects.sends and not effects.persists and not effects.outputs
    # only the catch-up watch starts: a peer is ahead of this node's window
    assert effects.timers_set == [(1, CATCHUP_INTERVAL_US)]
    assert host.node.counters == {"ignored_instance_beyond_window": 1}
    assert instance_path(1, WINDOW) not in host.node.routes
    assert not host.node.reliable.acks_pending[1]  # backpressure: the sender retransmits later
    effects = host.step(TimerFired(TICK_TIMER))
    assert effects.sends == []  # no Acks to node 1


def test_message_inside_the_window_opens_the_instance_and_is_acked() -> None:
    host = Host()
    effects = host.send(1, 1, WINDOW - 1, b"x")
    assert effects.outputs == [Delivered(1, WINDOW - 1, b"x")]
    assert (instance_path(1, WINDOW - 1), "SEND") in host.node.reliable.acks_pending[1]


def test_broadcast_request_beyond_the_own_window_is_rejected() -> None:
    host = Host(Wide)  # retains WINDOW - 1: the window cannot move yet
    for seq in range(WINDOW - 1):
        effects = host.step(Request(b"v%d" % seq))
        assert effects.outputs == [Accepted(0, seq, b"v%d" % seq), Delivered(0, seq, b"v%d" % seq)]
    # seq WINDOW - 1 is accepted: its delivery makes WINDOW > retained_max, seq 0 goes
    effects = host.step(Request(b"last"))
    assert Accepted(0, WINDOW - 1, b"last") in effects.outputs
    assert host.instances.low[0] == 1
    host.step(Request(b"fits"))  # seq WINDOW, inside [1, 1 + WINDOW)
    assert host.instances.low[0] == 2
    assert host.node.counters == {"broadcast_instances_collected": 2}


def test_broadcast_request_rejected_when_window_full() -> None:
    class Stalled(Small):
        instance = staticmethod(bracha)  # needs peers to deliver: nothing moves

    host = Host(Stalled)
    for seq in range(WINDOW):
        effects = host.step(Request(b"v%d" % seq))
        assert effects.outputs == [Accepted(0, seq, b"v%d" % seq)]
    effects = host.step(Request(b"one too many"))
    assert not effects
    assert host.node.counters == {"request_rejected_window_full": 1}
    assert host.instances.next_seq == WINDOW


@pytest.mark.parametrize(
    ("payload", "reason"),
    [("text", "not_bytes"), (b"x" * (VALUE_BYTES_MAX + 1), "too_large")],
)
def test_broadcast_request_of_a_bad_value_is_rejected(payload: Any, reason: str) -> None:
    host = Host()
    effects = host.step(Request(payload))
    assert not effects
    assert host.node.counters == {f"request_rejected_{reason}": 1}
    assert host.instances.next_seq == 0


@pytest.mark.parametrize(
    "path",
    [("bcast", 1), ("bcast", 1, 0, 0), ("bcast", "1", 0), ("bcast", 1, "0"), ("bcast", N, 0)],
)
def test_malformed_instance_path_is_ignored_without_ack(path: tuple[int | str, ...]) -> None:
    host = Host()
    effects = host.step(Receive(1, Envelope(path, "SEND", b"x")))
    assert not effects
    assert host.node.counters == {"ignored_bad_instance_path": 1}
    assert not host.node.reliable.acks_pending[1]


@pytest.mark.parametrize(("window_max", "retained_max"), [(0, 0), (4, -1), (4, 4), (4, 5)])
def test_instances_reject_unusable_bounds(window_max: int, retained_max: int) -> None:
    class Bad(Small):
        pass

    Bad.window_max = window_max
    Bad.retained_max = retained_max
    with pytest.raises(ConfigError):
        Node(0, ClusterConfig(N, 1), Bad).step(Start({}))


# -- garbage collection ---------------------------------------------------------------


def test_oldest_deliveries_beyond_retained_max_are_forgotten() -> None:
    host = Host()
    for seq in range(RETAINED):
        host.send(1, 1, seq, b"v%d" % seq)
    assert host.instances.low[1] == 0
    assert "sbcast#low:1" not in host.storage
    effects = host.send(1, 1, RETAINED, b"v%d" % RETAINED)
    assert effects.outputs == [Delivered(1, RETAINED, b"v%d" % RETAINED)]
    assert ("sbcast#delivered:1:0", None) in effects.persists
    assert host.instances.low[1] == 1
    assert host.decode("sbcast#low:1") == 1
    assert list(host.instances.delivered[1]) == [1, 2]
    assert instance_path(1, 0) not in host.node.routes
    assert sorted(key for key in host.storage if "delivered" in key) == [
        "sbcast#delivered:1:1",
        "sbcast#delivered:1:2",
    ]


def test_collecting_own_instances_drops_their_retained_sends() -> None:
    host = Host()
    for seq in range(RETAINED + 1):
        effects = host.step(Request(b"v%d" % seq))
    path = instance_path(0, 0)
    link_key = "sbcast/i0/i0#link:SEND:-1"
    assert (link_key, None) in effects.persists
    assert link_key not in host.storage
    assert "sbcast/i0/i1#link:SEND:-1" in host.storage
    assert path not in host.node.reliable.sent
    assert all((path, "SEND") not in unacked for unacked in host.node.reliable.unacked)
    assert host.instances.low[0] == 1


def test_memory_stays_flat_under_sustained_broadcasts() -> None:
    host = Host()
    for seq in range(50):
        host.step(Request(b"mine%d" % seq))
        host.send(2, 2, seq, b"theirs%d" % seq)
        host.step(TimerFired(TICK_TIMER))
    instances = host.instances
    # nobody acks here
    assert set(host.node.counters) == {"retransmissions", "broadcast_instances_collected"}
    assert instances.low == [50 - RETAINED, 0, 50 - RETAINED, 0]
    assert len(host.node.routes) <= 1 + 2 * RETAINED + 1  # root, bcast, retained
    assert len(host.node.reliable.sent) <= RETAINED
    assert len(host.storage) <= 2 * (RETAINED + 1) + 2 + 1
    assert len(host.node.scheduler.ready) == 0


def test_default_broadcast_never_stalls_after_a_window_of_deliveries() -> None:
    # The defaults must let the window move: a sender broadcasts for ever.
    node = Node(0, ClusterConfig(N, 1), protocol_factory("beb"))
    node.step(Start({}))
    for seq in range(300):
        effects = node.step(Request(b"v%d" % seq))
        assert effects.outputs[0] == Accepted(0, seq, b"v%d" % seq)
    assert node.counters == {"broadcast_instances_collected": 300 - 32}


def test_message_for_a_collected_instance_is_acked_and_ignored() -> None:
    host = Host()
    for seq in range(RETAINED + 1):
        host.send(1, 1, seq, b"v%d" % seq)
    host.step(TimerFired(TICK_TIMER))  # flush the acks so far
    effects = host.send(2, 1, 0, b"v0")
    assert not effects.outputs
    assert host.node.counters == {
        "broadcast_instances_collected": 1, "ignored_instance_delivered": 1
    }
    assert (instance_path(1, 0), "SEND") in host.node.reliable.acks_pending[2]
    assert instance_path(1, 0) not in host.node.routes


def test_unknown_child_for_a_delivered_instance_is_stale_not_early() -> None:
    # Delivered instances stay routed while retained; should one be asked for
    # anyway, it is stale (acknowledge: the sender may stop), never reopened.
    host = Host()
    host.send(1, 1, 0, b"v0")
    found = host.instances.on_unknown((1, 0))
    assert isinstance(found, Ignore)
    assert found.reason == "instance_delivered"
    assert found.acknowledge


def test_message_for_a_retained_delivered_instance_is_not_delivered_again() -> None:
    host = Host()
    host.send(1, 1, 0, b"v0")
    effects = host.send(1, 1, 0, b"v0")
    assert not effects.outputs
    assert host.node.counters == {"link_duplicate": 1}
    effects = host.send(1, 1, 0, b"other")
    assert not effects.outputs
    assert host.node.counters["link_equivocation"] == 1


# -- restart ------------------------------------------------------------------------


def test_restart_rebuilds_watermarks_and_reannounces_retained_deliveries() -> None:
    host = Host()
    for seq in range(RETAINED + 2):
        host.send(1, 1, seq, b"v%d" % seq)
    host.step(Request(b"mine"))
    assert host.instances.low[1] == 2

    restarted = Host(storage=host.storage)
    outputs = restarted.start_effects.outputs
    assert outputs == [
        Delivered(0, 0, b"mine", recovered=True),
        Delivered(1, 2, b"v2", recovered=True),
        Delivered(1, 3, b"v3", recovered=True),
    ]
    instances = restarted.instances
    assert instances.low == [0, 2, 0, 0]
    assert instances.delivered[1] == {2: None, 3: None}
    assert instances.delivered[0] == {0: None}
    assert instances.next_seq == 1
    # what it had sent is queued again for every peer
    assert (1, Envelope(instance_path(0, 0), "SEND", b"mine")) in restarted.start_effects.sends
    # collected and retained instances are not delivered a second time
    effects = restarted.send(1, 1, 1, b"v1")
    assert not effects.outputs
    assert restarted.node.counters == {"ignored_instance_delivered": 1}
    effects = restarted.send(1, 1, 3, b"v3")
    assert not effects.outputs
    effects = restarted.step(Request(b"next"))
    assert effects.outputs == [Accepted(0, 1, b"next"), Delivered(0, 1, b"next")]


def test_restart_resumes_an_instance_in_progress() -> None:
    host = Host(SmallBracha)
    effects = host.send(1, 1, 0, b"v")  # node 0 echoes
    echo = Envelope(instance_path(1, 0), "ECHO", b"v")
    assert (2, echo) in effects.sends
    assert not effects.outputs

    restarted = Host(SmallBracha, storage=host.storage)
    assert (2, echo) in restarted.start_effects.sends  # the echo is re-sent unchanged
    assert restarted.start_effects.outputs == []
    assert instance_path(1, 0) in restarted.node.routes
    assert restarted.instances.active[1].keys() == {0}
    outputs = [restarted.send(peer, 1, 0, b"v", channel="READY").outputs for peer in (1, 2, 3)]
    # two READYs justify its own (f + 1), which makes 2f + 1 with them: delivered
    assert outputs == [[], [Delivered(1, 0, b"v")], []]
    assert restarted.node.counters == {}


# -- a Byzantine peer and a crash mid-collection (regressions, issue 7) -------------


@pytest.mark.parametrize("seq", [0, 1, WINDOW - 1])
def test_a_peer_message_never_opens_an_instance_only_its_owner_may_open(seq: int) -> None:
    # One junk ECHO from node 3 for node 0's own next instance used to open it with
    # no value; node 0's broadcast then started a second copy of the same instance
    # and "instance delivered twice" escaped Node.step.
    host = Host(SmallBracha)
    effects = host.send(3, 0, seq, b"junk", channel="ECHO")
    assert not effects.outputs
    assert host.node.counters == {"ignored_own_instance_not_opened": 1}
    assert instance_path(0, seq) not in host.node.routes
    assert not host.node.reliable.acks_pending[3]
    for index in range(seq + 1):
        effects = host.step(Request(b"real%d" % index))
        assert effects.outputs == [Accepted(0, index, b"real%d" % index)]
    assert host.instances.next_seq == seq + 1


def test_a_peer_message_for_an_own_instance_in_progress_reaches_it() -> None:
    host = Host(SmallBracha)
    host.step(Request(b"mine"))
    host.send(1, 0, 0, b"mine", channel="ECHO")
    assert host.node.counters == {}
    assert instance_path(0, 0) in host.node.routes


def test_every_prefix_of_a_collecting_step_restarts_without_delivering_again() -> None:
    # Collection used to erase the delivered record before saving the advanced
    # watermark: a crash keeping a prefix of the step's writes restarted with the
    # old watermark and no record, and a peer's retransmission delivered again.
    host = Host()
    for seq in range(RETAINED):
        host.send(1, 1, seq, b"v%d" % seq)
    before = dict(host.storage)
    effects = host.send(1, 1, RETAINED, b"v%d" % RETAINED)  # collects seq 0
    assert host.instances.low[1] == 1
    writes = effects.persists
    for cut in range(len(writes) + 1):
        storage = dict(before)
        for key, value in writes[:cut]:
            if value is None:
                storage.pop(key, None)
            else:
                storage[key] = value
        restarted = Host(storage=storage)
        # delivered before the step (their outputs left), or re-announced at start
        seen = {(1, seq) for seq in range(RETAINED)}
        seen |= {(o.sender, o.seq) for o in restarted.start_effects.outputs}
        for seq in range(RETAINED + 1):
            effects = restarted.send(1, 1, seq, b"v%d" % seq)
            fresh = [o for o in effects.outputs if isinstance(o, Delivered)]
            for output in fresh:
                assert (output.sender, output.seq) not in seen, (cut, output)
                seen.add((output.sender, output.seq))
        # whatever lies below the watermark is erased at start
        low = restarted.instances.low[1]
        assert all(
            f"sbcast#delivered:1:{seq}" not in restarted.storage for seq in range(low)
        ), cut


# -- catch-up from the peers' archives (catchup.py) --------------------------------


class Archiving(Small):
    archived_max = 4


class ArchivingBracha(Archiving):
    instance = staticmethod(bracha)
    vouch_link = "READY"


def stream_message(host: Host, source: int, message: Any) -> Effects:
    return host.step(Receive(source, host.node.codec.encode(message)))


def sent_messages(effects: Effects, kind: type) -> list[tuple[int, Any]]:
    return [(peer, message) for peer, message in effects.sends if type(message) is kind]


def fired(host: Host, effects: Effects) -> Effects:
    """Fire the catch-up timer that ``effects`` set."""
    [timer] = [t for t, d in effects.timers_set if d == CATCHUP_INTERVAL_US]
    return host.step(TimerFired(timer))


def test_collected_values_stay_archived_and_are_served_to_a_fetching_peer() -> None:
    host = Host(Archiving)
    for seq in range(RETAINED + 3):
        host.send(1, 1, seq, b"v%d" % seq)
    assert host.instances.low[1] == 3
    assert host.instances.archive_low(1) == 0
    effects = stream_message(host, 2, Fetch(1, 0))
    assert sent_messages(effects, Archived) == [
        (2, Archived(1, seq, b"v%d" % seq)) for seq in range(RETAINED + 3)
    ]
    # the archive survives a restart (and is not delivered again)
    restarted = Host(Archiving, storage=host.storage)
    assert [o.seq for o in restarted.start_effects.outputs] == [3, 4]
    effects = stream_message(restarted, 2, Fetch(1, 1))
    assert [m.seq for _, m in sent_messages(effects, Archived)] == [1, 2, 3, 4]


def test_a_fetch_below_the_archive_hears_gone() -> None:
    host = Host(Archiving)
    for seq in range(RETAINED + Archiving.archived_max + 2):  # 8 deliveries, low = 6
        host.send(1, 1, seq, b"v%d" % seq)
    assert host.instances.archive_low(1) == 2
    assert "sbcast#delivered:1:1" not in host.storage  # erased beyond the archive
    effects = stream_message(host, 2, Fetch(1, 0))
    assert sent_messages(effects, Gone) == [(2, Gone(1, 2))]
    assert [m.seq for _, m in sent_messages(effects, Archived)] == list(range(2, 8))


def test_a_lagging_node_fetches_and_delivers_on_f_plus_one_matching_values() -> None:
    host = Host(Archiving)
    first = host.send(1, 1, 1, b"v1")  # instance 0 of sender 1 never reached this node
    host.send(1, 1, 2, b"v2")
    assert host.instances.delivered[1] == {1: None, 2: None}
    # the first look notes where the node is stuck, the second asks everyone
    effects = fired(host, first)
    assert not sent_messages(effects, Fetch)
    effects = fired(host, effects)
    assert sorted(sent_messages(effects, Fetch)) == [(p, Fetch(1, 0)) for p in (1, 2, 3)]
    # one peer's word (f = 1) delivers nothing, a Byzantine one's different value neither
    assert not stream_message(host, 3, Archived(1, 0, b"forged")).outputs
    assert not stream_message(host, 2, Archived(1, 0, b"v0")).outputs
    assert not stream_message(host, 2, Archived(1, 0, b"v0")).outputs  # repeated
    effects = stream_message(host, 1, Archived(1, 0, b"v0"))
    assert effects.outputs == [Delivered(1, 0, b"v0")]
    assert host.node.counters["broadcast_catchup_delivered"] == 1
    assert host.node.counters["ignored_catchup_repeated"] == 1
    # late or needless values are dropped and counted
    assert not stream_message(host, 3, Archived(1, 0, b"v0")).outputs
    assert host.node.counters["ignored_catchup_not_needed"] == 1


def test_catch_up_stops_an_open_instance_so_it_never_delivers_twice() -> None:
    host = Host(Archiving)
    host.send(1, 1, 0, b"v0", channel="ECHO")  # best effort ignores ECHO; opens (1, 0)
    assert instance_path(1, 0) in host.node.routes
    stream_message(host, 2, Archived(1, 0, b"v0"))
    effects = stream_message(host, 3, Archived(1, 0, b"v0"))
    assert effects.outputs == [Delivered(1, 0, b"v0")]
    assert instance_path(1, 0) not in host.node.routes
    effects = host.send(1, 1, 0, b"v0")  # the SEND arrives at last
    assert not effects.outputs


def test_bracha_counts_a_peers_delivery_as_its_ready() -> None:
    """Long profile, seed 47: only one correct node delivered before it forgot
    the instance, and its READY was lost to a partition. Its archived value
    counts as that READY, so the laggard completes 2f + 1 READYs."""
    host = Host(ArchivingBracha)
    host.send(1, 1, 0, b"v", channel="READY")
    assert not host.instances.delivered[1]
    # node 3's delivery stands for its READY: f + 1 READYs, so this node sends
    # its own, and that makes 2f + 1
    effects = stream_message(host, 3, Archived(1, 0, b"v"))
    assert effects.outputs == [Delivered(1, 0, b"v")]
    assert (2, Envelope(instance_path(1, 0), "READY", b"v")) in effects.sends


def test_a_peer_archive_never_opens_this_nodes_own_instance() -> None:
    host = Host(ArchivingBracha)
    effects = stream_message(host, 3, Archived(0, 0, b"junk"))
    assert not effects.outputs
    assert instance_path(0, 0) not in host.node.routes
