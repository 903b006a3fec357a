"""The adversary attacks (issue 7 §2): generated well-typed messages, composable
behaviours, and the two rules every node is held to (no exception on any
input; a bounded footprint). See docs/adversary.md."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Annotated, Any

import pytest

import replicaio.protocols.raft.messages
import replicaio.runtime.client
import replicaio.smr.messages
from replicaio.core.codec import Codec, Message, Meta, registered_messages
from replicaio.core.errors import UsageError
from replicaio.core.reliable import Envelope
from replicaio.sim.adversary import (
    BEHAVIOURS,
    Composite,
    Forge,
    RunView,
    Strategy,
    behaviour_names,
    build_strategy,
    register_behaviour,
)
from replicaio.sim.forge import Bounds, Forger, Pool
from replicaio.sim.options import SimOptions, parse_adversary
from replicaio.sim.simulator import Simulator, simulate

ALL_FAULTS = ("crash", "partition", "loss", "dup", "reorder")


class Bounded(Message, tag="test.adversary.Bounded"):
    count: Annotated[int, Meta(ge=0, le=9)]
    name: Annotated[str, Meta(min_length=2, max_length=4)]
    items: Annotated[tuple[int, ...], Meta(max_length=1)]


def pool_of_run() -> Pool:
    pool = Pool()
    for number in (0, 1, 2, 3, 31, 32, 63, 64, 65):
        pool.add_number(number)
    pool.add_blob(b"v0.1.s7")
    pool.add_text("ECHO")
    pool.add_value(b"v0.1.s7")
    return pool


def test_every_registered_message_is_generated_well_typed() -> None:
    """Fresh and mutated messages of every registered class pass the real
    codec both ways (what a peer's decoder would accept)."""
    codec = Codec()
    forger = Forger(random.Random(7), pool_of_run())
    del replicaio.protocols.raft.messages, replicaio.smr.messages, replicaio.runtime.client
    classes = list(registered_messages().values())
    assert len(classes) > 20
    for cls in classes:
        for _ in range(25):
            forged = forger.message(cls)
            assert codec.decode(codec.encode(forged)) == forged
            mutated = forger.mutate(forged)
            assert type(mutated) is cls
            assert codec.decode(codec.encode(mutated)) == mutated


def test_annotated_bounds_are_honoured() -> None:
    forger = Forger(random.Random(3), pool_of_run())
    seen = set()
    for _ in range(300):
        forged = forger.message(Bounded)
        assert 0 <= forged.count <= 9
        assert 2 <= len(forged.name) <= 4
        assert len(forged.items) <= 1
        seen.add(forged.count)
    assert {0, 9} <= seen  # the edges of the range are drawn
    assert Bounds.of([Meta(gt=1, lt=5)]) == Bounds(2, 4, 0, None)


def test_numbers_are_drawn_near_what_the_run_shows() -> None:
    forger = Forger(random.Random(1), pool_of_run())
    drawn = [forger.number() for _ in range(2000)]
    for edge in (63, 64, 65, 66, 62):  # at, below and above a window edge
        assert edge in drawn
    assert any(number > 1 << 16 for number in drawn)  # and far away


def test_forge_addresses_real_components() -> None:
    """Forged link messages name component paths seen on the network, moved to
    the edges, often the receiver's own (the escaped bug's shape)."""
    view = RunView(4, (3,))
    for seq in range(3):
        view.recent.append((0, 1, Envelope(("bcast", 0, seq), "SEND", b"v%d" % seq)))
    forge = Forge(3, 4, random.Random(5))
    knowledge = view.know()
    forger = Forger(forge.rng, knowledge.pool)
    forged = [forge.envelope(forger, knowledge, 1) for _ in range(300)]
    assert all(item.path[0] == "bcast" for item in forged)
    assert any(item.path[1:] == (1, 3) for item in forged)  # receiver's own next seq
    assert any(item.body == b"v1" for item in forged)


def test_behaviours_compose_and_are_forcible() -> None:
    strategy = build_strategy("silent+forge", 3, 4, seed=1)
    assert isinstance(strategy, Composite)
    assert strategy.rewrite(0, b"honest") == []  # silent drops honest traffic
    assert parse_adversary("forge, replay+forge") == ("forge", "replay")
    with pytest.raises(UsageError):
        parse_adversary("forge,teleport")
    options = SimOptions.draw(5, 4, 1, (), adversary=("forge", "replay"))
    assert options.behaviours == ("forge+replay",)
    drawn = {SimOptions.draw(seed, 4, 1, ()).behaviours[0] for seed in range(60)}
    assert any("+forge" in mix for mix in drawn)
    assert any("+" not in mix for mix in drawn)
    with pytest.raises(UsageError):
        SimOptions.from_dict({**options.as_dict(), "behaviours": ["forge+teleport"]})


def test_a_forced_mix_keeps_the_fault_schedule() -> None:
    """The mix is drawn from a stream of its own: forcing it changes nothing else."""
    drawn = SimOptions.draw(11, 4, 1, ALL_FAULTS)
    forced = SimOptions.draw(11, 4, 1, ALL_FAULTS, adversary=("delay",))
    assert forced.crashes == drawn.crashes
    assert forced.partitions == drawn.partitions
    assert forced.byzantine == drawn.byzantine


@pytest.fixture
def custom_behaviour() -> Iterator[str]:
    class Shout(Strategy):
        def attack(self, view: RunView) -> list[tuple[int, Any]]:
            return [(self.peer(view), Envelope(("bcast",), "SHOUT", b"!"))]

    register_behaviour("shout", Shout, "shout at a peer", protocols=("bracha",), weight=1.0)
    try:
        yield "shout"
    finally:
        del BEHAVIOURS["shout"]


def test_a_protocol_registers_its_own_behaviour(custom_behaviour: str) -> None:
    assert custom_behaviour in behaviour_names("bracha")
    assert custom_behaviour not in behaviour_names("echo")
    mixes = [SimOptions.draw(seed, 4, 1, (), protocol="bracha").behaviours[0] for seed in range(5)]
    assert all(mix.endswith("+shout") for mix in mixes)
    assert "shout" not in SimOptions.draw(1, 4, 1, (), protocol="echo").behaviours[0]
    result = simulate("bracha", SimOptions.draw(1, 4, 1, (), adversary=("shout",)))
    assert result.ok
    assert result.counters["rejected_unknown_channel"] > 0
    with pytest.raises(ValueError):
        register_behaviour("shout", Strategy, "twice")


def test_runs_with_an_attacking_adversary_are_deterministic() -> None:
    options = SimOptions.draw(29, 4, 1, ALL_FAULTS, adversary=("forge", "replay", "delay"))
    first = simulate("bracha", options)
    second = simulate("bracha", options)
    assert first.stats["adversary_sends"] > 0
    assert first.log_sha256 == second.log_sha256


def test_seed_pinned_junk_for_the_senders_own_next_instance() -> None:
    """Regression (issue 7 §1, found again by this adversary): in these seeds
    the Byzantine node sends a correct node a message for that node's own next
    instance. Before the fix in instances.py the node later ran two copies of
    the instance and failed 'instance delivered twice' inside its step, as the
    variant with the fix taken out still does."""
    for seed in (3, 25, 70):
        options = SimOptions.draw(seed, 4, 1, (), protocol="bracha")
        result = simulate("bracha", options)
        assert result.violations == []
        assert result.counters["ignored_own_instance_not_opened"] > 0
        unfixed = simulate("bracha-opens-own", options).violations
        assert [violation["property"] for violation in unfixed] == ["node-raised"]


def test_the_escaped_bug_planted_again_is_caught_as_node_raised() -> None:
    caught = []
    for seed in range(1, 40):
        options = SimOptions.draw(seed, 4, 1, (), protocol="bracha-opens-own")
        caught += simulate("bracha-opens-own", options).violations
    assert caught
    first = caught[0]
    assert first["property"] == "node-raised"
    assert "instance delivered twice" in first["detail"]
    assert "correct node" in first["detail"]


def test_a_planted_unbounded_buffer_is_caught() -> None:
    """Without its window, a node opens an instance for every sequence number a
    Byzantine peer names: the footprint check reports it; the real component
    under the same flood stays within its bound."""
    result = simulate("bracha-unwindowed", SimOptions.draw(2, 4, 1, (), adversary=("flood",)))
    assert [violation["property"] for violation in result.violations] == ["bounded-memory"]
    assert "contexts=" in result.violations[0]["detail"]
    for seed in range(1, 5):
        result = simulate("bracha", SimOptions.draw(seed, 4, 1, (), adversary=("flood",)))
        assert result.violations == []
        assert result.stats["adversary_sends"] > 300


def test_a_correct_node_holds_to_its_footprint_under_every_behaviour() -> None:
    for seed, mix in enumerate(("flood", "forge,replay,delay", "garbage,forge", "silent,flood")):
        options = SimOptions.draw(seed, 4, 1, ALL_FAULTS, adversary=tuple(mix.split(",")))
        simulator = Simulator("echo", options)
        assert simulator.footprint_max["contexts"] == 4 * 64 + 8
        assert simulator.run().violations == []


def test_node_raised_names_the_input_and_the_reproducing_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from replicaio.cli import main

    status = main(["sim", "bracha-opens-own", "--nodes", "4", "--byzantine", "1",
                   "--seed", "3", "--json"])
    assert status == 1
    out = capsys.readouterr().out
    assert '"property": "node-raised"' in out
    assert "--seed 3" in out
    assert "on Receive from node" in out


def test_cli_forces_the_adversary(capsys: pytest.CaptureFixture[str]) -> None:
    from replicaio.cli import main

    status = main(["sim", "bracha", "--nodes", "4", "--byzantine", "1", "--seed", "2",
                   "--adversary", "forge,delay", "--json"])
    assert status == 0
    out = capsys.readouterr().out
    assert '"behaviours": ["forge+delay"]' in out
    assert "--adversary forge,delay" in out
