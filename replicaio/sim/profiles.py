"""Workload profiles: how much a simulated run does, and for how long.

The ``default`` profile is the short run the swarms always drew: 1-6
broadcasts per node, 200 KV operations, faults drawn per second of virtual
time. Short runs find most bugs fast, but never reach the edges a long-lived
cluster reaches: broadcast garbage collection (after ``retained_max`` = 32
deliveries per sender), the per-sender window (64 instances), SMR session
eviction, Raft snapshots installed on followers that fell behind the
compacted log, and partitions that outlast what the others retain.

The ``long`` profile reaches them (``replicaio sim|swarm ... --profile long``):

* broadcast: 40-120 requests per node, sent faster than a partitioned
  cluster delivers them, so senders fill their window and everyone collects;
  one or two *long* partitions (30-70% of the safety phase) besides the usual
  short ones; crashes that may keep any prefix of a step's unsynced writes
  (not only the first three), so a crash can land in the middle of a
  collecting step;
* both: half the messages that reach a crashed node are held and delivered
  right after it restarts (a peer's queue flushing on reconnection), so
  replies to the old incarnation's requests reach the new one; and half the
  mid-step crashes are aimed at steps that write much (``Crash.heavy``);
* replicated services: a third of the crashes start a crash loop (the node
  crashes again soon after it restarts, up to three times);
* replicated services: 3x the operations, clients that come and go (a new
  client id every few operations) against a session table of
  ``LONG_SESSIONS_MAX`` entries (eviction), a snapshot every
  ``LONG_SNAPSHOT_EVERY`` batches, and faults drawn per 4 s window so that a
  partitioned follower falls behind the compacted log and must take a
  snapshot.

A profile only shapes how options are *drawn*: the drawn
:class:`~replicaio.sim.options.SimOptions` describe the run completely, so
``--options FILE`` replays a long run like any other. The long draws come
from their own random stream, so the default profile's draws are unchanged.
"""

from __future__ import annotations

import random
from dataclasses import replace

from replicaio.core.errors import UsageError
from replicaio.sim.options import Crash, Partition, SimOptions, draw_crashes, draw_partitions

PROFILES = ("default", "long")

LONG_REQUESTS_MIN = 40
LONG_REQUESTS_MAX = 120
LONG_KEEP_UNSYNCED_MAX = 64  # a crash may keep this many unsynced writes of its step
LONG_SESSIONS_MAX = 8  # SMR sessions remembered under the long profile (eviction)
LONG_SNAPSHOT_EVERY = 8  # applied batches between SMR snapshots under the long profile
LONG_CLIENT_OPS_MAX = 4  # a simulated client takes a new id after this many operations
LONG_OPS_FACTOR = 3
LONG_FAULT_WINDOW_US = 4_000_000
# Messages reaching a crashed node delivered after its restart instead (replies
# to the old incarnation's requests): how a stale read-index reply was missed.
LONG_HOLD_ACROSS_RESTART = 0.5
RELAPSE_CHANCE = 1 / 3  # of a service run's crashes, how many start a crash loop
RELAPSES_MAX = 3  # crashes again after one restart, at most
RELAPSE_AFTER_US = (2_000, 300_000)  # how long after its restart a node relapses
RELAPSE_DOWN_US = (1_000, 200_000)  # how long a relapsed node stays down
RELAPSE_RARE = 2 / 3  # of the relapses, how many are aimed at a rare send (Crash.rare)
RARE_AIM_MAX = 3  # an aimed relapse lands after the 1st..3rd step that sends a rare kind


def check_profile(profile: str) -> str:
    """``profile`` if it names a profile, else a :class:`UsageError`."""
    if profile not in PROFILES:
        raise UsageError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    return profile


def long_broadcast(options: SimOptions, *, requests_per_node: int | None = None) -> SimOptions:
    """The long-profile variant of a broadcast run's ``options`` (same seed)."""
    rng = random.Random(f"replicaio-long:{options.seed}")
    requests = requests_per_node
    if requests is None:
        requests = rng.randint(LONG_REQUESTS_MIN, LONG_REQUESTS_MAX)
    spacing = rng.choice((1_000, 5_000, 20_000))
    safety = max(1_000_000, requests * spacing * 2)
    correct = [node for node in range(options.nodes) if node not in options.byzantine]
    partitions: tuple[Partition, ...] = ()
    crashes: tuple[Crash, ...] = ()
    if "partition" in options.faults:
        partitions = draw_partitions(rng, options.nodes, safety)
        partitions += draw_long_partitions(rng, options.nodes, safety)
    if "crash" in options.faults:
        crashes = widen_crashes(rng, draw_crashes(rng, correct, safety))
    return replace(
        options,
        requests_per_node=requests,
        request_spacing_us=spacing,
        safety_us=safety,
        liveness_us=safety + 60_000_000,
        partitions=tuple(sorted(partitions, key=lambda cut: (cut.start_us, cut.end_us))),
        crashes=crashes,
        hold_across_restart=LONG_HOLD_ACROSS_RESTART if crashes else 0.0,
    )


def draw_long_partitions(
    rng: random.Random, nodes: int, safety_us: int
) -> tuple[Partition, ...]:
    """One or two partitions lasting 30-70% of the safety phase: long enough that
    the connected side delivers and collects far more than it retains."""
    found = []
    for _ in range(rng.randint(1, 2)):
        length = rng.randrange(safety_us * 3 // 10, safety_us * 7 // 10)
        start = rng.randrange(0, safety_us - length)
        size = rng.randint(1, max(1, nodes // 2))
        side = tuple(sorted(rng.sample(range(nodes), size)))
        found.append(Partition(start, start + length, side, symmetric=rng.random() < 0.8))
    return tuple(found)


def widen_crashes(rng: random.Random, crashes: tuple[Crash, ...]) -> tuple[Crash, ...]:
    """Of the mid-step crashes, a quarter keep any prefix of the step's writes
    (up to ``LONG_KEEP_UNSYNCED_MAX``), not only the first few, and half are
    *heavy*: aimed at the node's next step that writes much (a delivery that
    collects, a snapshot), and cut strictly inside it. A crash at a random
    moment mostly lands in a step that writes one record or none, where no
    write order can be wrong (docs/simulation.md)."""
    found = []
    for crash in crashes:
        if crash.mid_step:
            draw = rng.random()
            keep = rng.randint(0, LONG_KEEP_UNSYNCED_MAX)
            if draw < 1 / 4:
                crash = replace(crash, keep_unsynced=keep)
            elif draw < 3 / 4:
                crash = replace(crash, keep_unsynced=keep, heavy=True)
        found.append(crash)
    return tuple(found)


def long_crashes(seed: int, crashes: tuple[Crash, ...]) -> tuple[Crash, ...]:
    """:func:`widen_crashes` for a service run's crashes, on its own stream, then
    :func:`relapse_crashes` on another (so the widened crashes stay as drawn)."""
    widened = widen_crashes(random.Random(f"replicaio-long-crashes:{seed}"), crashes)
    return relapse_crashes(random.Random(f"replicaio-long-relapse:{seed}"), widened)


def relapse_crashes(rng: random.Random, crashes: tuple[Crash, ...]) -> tuple[Crash, ...]:
    """A crash loop: after a third of the crashes the node crashes again soon
    after it restarts (``RELAPSE_AFTER_US``), and that restart too may relapse,
    up to ``RELAPSES_MAX`` times. A node that keeps restarting issues the first
    numbers of each incarnation again and again, so what its previous
    incarnation left in flight (a read-index reply held across the restart)
    meets a request of the new one with the same low number. Two thirds of the
    relapses are aimed just after the node sent a rare kind of message
    (``Crash.rare``: a read-index request, a vote), so that the reply is in
    flight when it goes down: the schedule the reverted stale read-index fix
    needs, which crashes at random moments almost never made
    (docs/benchmarks.md)."""
    found = list(crashes)
    for crash in crashes:
        if rng.random() >= RELAPSE_CHANCE:
            continue
        up_us = crash.at_us + crash.down_us
        for _ in range(rng.randint(1, RELAPSES_MAX)):
            relapse = Crash(
                node=crash.node,
                at_us=up_us + rng.randrange(*RELAPSE_AFTER_US),
                down_us=rng.randrange(*RELAPSE_DOWN_US),
                mid_step=True,
                keep_unsynced=rng.randint(0, 3),
                rare=rng.randint(1, RARE_AIM_MAX) if rng.random() < RELAPSE_RARE else 0,
            )
            found.append(relapse)
            up_us = relapse.at_us + relapse.down_us
    return tuple(sorted(found, key=lambda crash: (crash.at_us, crash.node)))
