"""Simulated group commit: a node keeps stepping while its writes are synced.

With ``SimOptions.sync_us_mean`` above 0 (the ``sync`` fault kind), a step
that writes does not sync at once: its writes join a pending sync that
completes a drawn latency later (exponential, that mean; one stream per run,
``replicaio-sync-latency:SEED``). Until then the node keeps stepping peer
messages, timers and requests; every step taken meanwhile holds back its
effects (a step that writes nothing may still depend on an earlier unsynced
write), except the sends it marks ``sends_before_sync``, which leave at once.
When the sync completes, every write made so far is durable and the held
effects leave in step order: sends, then timers (armed from that moment: a
timer of delay 0 tells the core its writes are durable), then outputs, as the
live host releases a batch (``replicaio.runtime.host``). A crash before it
keeps a prefix of the unsynced writes of every step since the last sync
(``Crash.keep_unsynced``), and the held effects never leave.

This is a superset of what the live host does today (it steps a whole batch
before its one sync, and the next batch only after it): what a Raft leader
may not do with an acknowledgement that arrives before its own write is
durable is now reachable by the swarm (docs/adr/0024). Without the kind,
every writing step syncs at once, and runs, hashes and logs are as before.
"""

from __future__ import annotations

from math import log
from typing import TYPE_CHECKING

from replicaio.core.codec import EncodeError
from replicaio.core.effects import Effects, Input
from replicaio.trace.eventlog import encode_input, pack_effects

if TYPE_CHECKING:
    from replicaio.sim.simulator import SimNode, Simulator

SYNC = 7  # the event kind of a completing sync (after the simulator's own kinds)


def hold(simulator: Simulator, node: SimNode, event: Input, effects: Effects) -> None:
    """A step while the node's writes are not durable: its writes join the
    pending sync (one starts if none is pending), the sends it marked
    ``sends_before_sync`` leave now, and everything else waits for the sync
    to complete (:func:`finish_sync`). Cancelled timers are cancelled at
    once and a re-armed one's old expiry is dropped, as the live host does."""
    storage = node.storage
    for key, value in effects.persists:
        if value is None:
            storage.delete(key)
        else:
            storage.put(key, value)
    if node.waiting is None:
        node.waiting = []
        latency = -log(1.0 - simulator.sync_rng.random()) * simulator.options.sync_us_mean
        node.sync_token = simulator.sequence + 1  # the sequence number push() gives it
        simulator.push(simulator.now + 1 + int(latency), SYNC, node.node_id, node.sync_token)
        simulator.stats["syncs_delayed"] += 1
    simulator.stats["steps_during_sync"] += 1
    if effects.sends_before_sync:
        send_some(simulator, node, effects, effects.sends_before_sync, early=True)
    if node.strategy is not None and simulator.view is not None:
        simulator.attack(node)
    timers_to_arm = node.timers_to_arm
    for timer_id in effects.timers_cancelled:
        node.timers.pop(timer_id, None)
        timers_to_arm.pop(timer_id, None)
    for timer_id, delay in effects.timers_set:
        node.timers.pop(timer_id, None)
        timers_to_arm[timer_id] = delay
    node.waiting.append(effects)
    if simulator.log is not None:
        simulator.log.step(
            simulator.now, node.node_id, node.incarnation, encode_input(simulator.codec, event),
            node.choices, pack_effects(simulator.codec, effects),
        )


def finish_sync(simulator: Simulator, node: SimNode, token: int) -> None:
    """The pending sync of ``node`` completes: every write so far is durable;
    the held effects leave in step order (sends, then timers, then outputs,
    as the live host releases a batch)."""
    waiting = node.waiting
    if waiting is None or node.sync_token != token or not node.up:
        return  # the node crashed meanwhile: the held effects never left
    node.storage.sync()
    node.waiting = None
    node.sync_token = 0
    try:
        for effects in waiting:
            if effects.sends:
                send_some(simulator, node, effects, effects.sends_before_sync or (), early=False)
        timers_to_arm, node.timers_to_arm = node.timers_to_arm, {}
        for timer_id, delay in timers_to_arm.items():
            simulator.arm_timer(node, timer_id, delay)
        for effects in waiting:
            if effects.outputs:
                simulator.release_outputs(node, effects.outputs)
    except EncodeError as error:  # (the step's own check, Simulator.bad_output)
        simulator.bad_output(node, None, error)
        return
    if simulator.count_kinds:
        for effects in waiting:
            if node.up:
                simulator.after_sends(node, effects)


def send_some(
    simulator: Simulator, node: SimNode, effects: Effects,
    positions: list[int] | tuple[int, ...], *, early: bool,
) -> None:
    """Put the sends of ``effects`` at ``positions`` (``early``), or all the
    others, on the network."""
    sends = effects.sends
    marked = set(positions)
    effects.sends = [
        send for position, send in enumerate(sends) if (position in marked) == early
    ]
    try:
        if effects.sends:
            simulator.send_all(node, effects, log=False)
    finally:
        effects.sends = sends

