"""Seed sweeps, broken variants, determinism and replay of simulated runs.

Each sweep holds a protocol to exactly what it claims (see
``replicaio.check.broadcast``) under every fault kind at once, with Byzantine
behaviours drawn from the seed (equivocation most often).
"""

from __future__ import annotations

import io
import os

import pytest

from replicaio.assembly import protocol_factory
from replicaio.sim.options import FAULT_KINDS, SimOptions
from replicaio.sim.simulator import simulate
from replicaio.trace.replay import replay

# Storage faults ("disk") are for protocols that recover from damaged logs (Raft so far).
ALL_FAULTS = tuple(kind for kind in FAULT_KINDS if kind != "disk")


# The suite runs a quarter to a third of each sweep's seeds (288 of 1,080 runs: a
# sweep of a correct protocol is a swarm, and the suite's time has a budget);
# ``REPLICAIO_FULL_SWEEPS=1`` runs every seed, as docs/simulation.md records.
FULL = os.environ.get("REPLICAIO_FULL_SWEEPS", "") not in ("", "0")


def seeds(start: int, full: int, suite: int) -> range:
    """``full`` seeds from ``start`` with REPLICAIO_FULL_SWEEPS=1, else the first ``suite``."""
    assert suite <= full
    return range(start, start + (full if FULL else suite))


def sweep(protocol: str, nodes: int, byzantine: int, seeds: range, **draw: object) -> list[str]:
    failures = []
    for seed in seeds:
        options = SimOptions.draw(seed, nodes, byzantine, ALL_FAULTS, **draw)  # type: ignore[arg-type]
        result = simulate(protocol, options, record=False)
        if result.violations:
            failures.append(f"seed {seed}: {result.violations[0]}")
    return failures


@pytest.mark.parametrize("chunk", range(4))
def test_bracha_f1_all_faults(chunk: int) -> None:
    assert sweep("bracha", 4, 1, seeds(chunk * 100, 100, 25)) == []


@pytest.mark.parametrize("chunk", range(2))
def test_bracha_f2_equivocation_all_faults(chunk: int) -> None:
    assert sweep("bracha", 7, 2, seeds(chunk * 50, 50, 20), behaviour="equivocate") == []


@pytest.mark.parametrize("chunk", range(2))
def test_echo_f1_all_faults(chunk: int) -> None:
    assert sweep("echo", 4, 1, seeds(chunk * 100, 100, 30)) == []


def test_echo_f2_equivocation_all_faults() -> None:
    assert sweep("echo", 7, 2, seeds(0, 60, 20), behaviour="equivocate") == []


def test_beb_crash_faults() -> None:
    assert sweep("beb", 4, 0, seeds(0, 200, 60)) == []


def test_bracha_larger_cluster() -> None:
    assert sweep("bracha", 10, 3, seeds(0, 20, 8)) == []


@pytest.mark.parametrize(("protocol", "property_name"), [
    ("echo-weak", "agreement"),
    ("bracha-weak-echo", "totality"),
])
def test_broken_variants_are_caught_within_a_few_seeds(protocol: str, property_name: str) -> None:
    caught = []
    for seed in range(1, 11):
        options = SimOptions.draw(seed, 4, 1, ())
        result = simulate(protocol, options, record=False)
        caught += [violation["property"] for violation in result.violations]
    assert property_name in caught


def test_a_protocol_loop_that_spins_is_reported_not_a_hung_run() -> None:
    """``bracha-spins`` awaits a line already set in its loop, so the await returns at
    once and the step would never end: the core's livelock bound fails it, and the
    run reports ``node-raised`` (before the bound a swarm hung on such a seed)."""
    result = simulate("bracha-spins", SimOptions.draw(1, 4, 1, ALL_FAULTS), record=False)
    raised = [v for v in result.violations if v["property"] == "node-raised"]
    assert raised and "livelock" in raised[0]["detail"], result.violations


def test_same_seed_same_log_in_one_process() -> None:
    options = SimOptions.draw(11, 4, 1, ALL_FAULTS)
    first = simulate("bracha", options)
    second = simulate("bracha", options)
    assert first.log_sha256 == second.log_sha256
    assert first.stats["steps"] == second.stats["steps"]
    other = simulate("bracha", SimOptions.draw(12, 4, 1, ALL_FAULTS))
    assert other.log_sha256 != first.log_sha256


def test_log_sha256_is_the_hash_of_the_written_log() -> None:
    import hashlib

    sink = io.BytesIO()
    result = simulate("bracha", SimOptions.draw(5, 4, 1, ALL_FAULTS), log_sink=sink)
    assert hashlib.sha256(sink.getvalue()).hexdigest() == result.log_sha256


def faulty_log(seed_range: range) -> tuple[bytes, SimOptions]:
    """The log of a run with crashes (some mid-step) and a Byzantine node."""
    for seed in seed_range:
        options = SimOptions.draw(seed, 4, 1, ALL_FAULTS, behaviour="equivocate")
        if options.crashes and any(crash.mid_step for crash in options.crashes):
            sink = io.BytesIO()
            result = simulate("bracha", options, log_sink=sink)
            if result.stats["crashes"] >= 1 and result.stats["restarts"] >= 1:
                return sink.getvalue(), options
    raise AssertionError("no seed with crashes found")


def test_replay_of_a_faulty_run_matches_for_every_node() -> None:
    data, options = faulty_log(range(1, 50))
    restarted = {crash.node for crash in options.crashes}
    for node in range(4):
        result = replay(io.BytesIO(data), node, protocol_factory)
        assert result.matched, result.divergence
        assert result.steps > 0
        if node in restarted:
            assert result.incarnations >= 1


def test_replay_reports_the_first_divergence() -> None:
    """Tamper with one recorded effect: replay must say where."""
    import msgpack

    data, _ = faulty_log(range(1, 50))
    unpacker = msgpack.Unpacker(io.BytesIO(data), raw=False, strict_map_key=False)
    records = list(unpacker)
    target = next(
        index for index, record in enumerate(records[1:], start=1)
        if isinstance(record, list) and record[0] == 0 and record[2] == 1 and record[6][1]
    )
    records[target][6][1][0][0] = 3 if records[target][6][1][0][0] != 3 else 2
    tampered = b"".join(msgpack.packb(record, use_bin_type=True) for record in records)
    result = replay(io.BytesIO(tampered), 1, protocol_factory)
    assert not result.matched
    assert result.divergence is not None
    assert result.divergence["part"] == "sends"


def test_a_log_of_another_version_is_refused_naming_its_version() -> None:
    """Version 1 logs (the hand-written codec's) are refused with a clear message."""
    import msgpack

    from replicaio.trace.eventlog import VERSION, EventLogError, read_log

    data, _ = faulty_log(range(1, 50))
    unpacker = msgpack.Unpacker(io.BytesIO(data), raw=False, strict_map_key=False)
    records = list(unpacker)
    assert records[0]["version"] == VERSION == 2
    for old in (1, 3, "x"):
        records[0]["version"] = old
        tampered = b"".join(msgpack.packb(record, use_bin_type=True) for record in records)
        with pytest.raises(EventLogError, match=f"event log version {old!r}: .* only version 2"):
            read_log(io.BytesIO(tampered))
        with pytest.raises(EventLogError, match=f"version {old!r}"):
            replay(io.BytesIO(tampered), 0, protocol_factory)


def test_options_round_trip_through_json() -> None:
    import json

    options = SimOptions.draw(3, 4, 1, ALL_FAULTS)
    again = SimOptions.from_dict(json.loads(json.dumps(options.as_dict())))
    assert again == options
    assert simulate("bracha", again).log_sha256 == simulate("bracha", options).log_sha256


@pytest.mark.parametrize("change", [
    {"loss": 1.5},
    {"behaviours": []},
    {"latency_min_us": 0},
    {"crashes": [{"node": 9, "at_us": 1, "down_us": 1, "mid_step": False, "keep_unsynced": 0}]},
    {"nodes": "four"},
])
def test_bad_options_are_refused_with_a_usage_error(change: dict[str, object]) -> None:
    from replicaio.core.errors import UsageError

    data = {**SimOptions.draw(3, 4, 1, ALL_FAULTS).as_dict(), **change}
    with pytest.raises(UsageError):
        SimOptions.from_dict(data)


def test_shrinking_keeps_the_failure_and_drops_irrelevant_faults() -> None:
    from replicaio.sim.shrink import fails, shrink

    seed = next(
        seed for seed in range(1, 40)
        if (options := SimOptions.draw(seed, 4, 1, ALL_FAULTS, behaviour="equivocate")).crashes
        and fails("echo-weak", None, options, "agreement")
    )
    options = SimOptions.draw(seed, 4, 1, ALL_FAULTS, behaviour="equivocate")
    result = shrink("echo-weak", options, "agreement")
    assert fails("echo-weak", None, result.options, "agreement")
    assert len(result.options.crashes) <= len(options.crashes)
    assert len(result.options.partitions) <= len(options.partitions)
    # equivocation alone breaks echo-weak: every fault schedule is irrelevant
    assert result.options.crashes == ()
    assert result.options.partitions == ()
    assert result.options.loss == 0.0


def test_explore_enumerates_choice_sequences_and_finds_broken_runs() -> None:
    from replicaio.sim.explore import explore

    options = SimOptions.draw(1, 4, 1, ("crash", "loss"), behaviour="equivocate")
    good = explore("bracha", options, runs_max=50)
    assert good.failures == []
    assert good.runs >= 1
    bad = explore("echo-weak", SimOptions.draw(1, 4, 1, (), behaviour="equivocate"), runs_max=50)
    assert bad.failures
    assert bad.failures[0]["violations"][0]["property"] == "agreement"


def test_explore_branches_on_every_alternative(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a choice override, the explorer visits every outcome sequence once."""
    from replicaio.sim import explore as explore_module

    seen: list[tuple[int, ...]] = []

    def fake_simulate(protocol: str, options: SimOptions, **kwargs: object) -> object:
        choose = kwargs["choose"]
        picks = (choose(0, "a", 3), choose(0, "b", 2))  # type: ignore[operator]
        seen.append(picks)

        class Result:
            violations: list[dict[str, object]] = []

        return Result()

    monkeypatch.setattr(explore_module, "simulate", fake_simulate)
    result = explore_module.explore("bracha", SimOptions.draw(1, 4, 0, ()), runs_max=100)
    assert sorted(seen) == [(a, b) for a in range(3) for b in range(2)]
    assert result.exhaustive
    assert result.runs == 6


def test_a_custom_strategy_forces_choices_and_rewrites_messages() -> None:
    """A user-written adversary: lies only in READY messages, and logs the
    choice points it is asked to resolve. Bracha must still hold."""
    import random
    from typing import Any

    from msgspec.structs import replace

    from replicaio.core.node import Envelope
    from replicaio.sim.adversary import Strategy, twist
    from replicaio.sim.simulator import Simulator

    class LyingReady(Strategy):
        rewritten = 0

        def rewrite(self, destination: int, message: Any) -> list[tuple[int, Any]]:
            if type(message) is Envelope and message.channel == "READY" and destination % 2:
                LyingReady.rewritten += 1
                return [(destination, replace(message, body=twist(message.body)))]
            return [(destination, message)]

    options = SimOptions.draw(4, 4, 1, ALL_FAULTS)
    byzantine = options.byzantine[0]
    strategy = LyingReady(byzantine, 4, random.Random(0))
    result = Simulator("bracha", options, strategies={byzantine: strategy}).run()
    assert result.violations == []
    assert LyingReady.rewritten > 0


def test_explore_raft_choice_points_lazily() -> None:
    """Raft draws election timeouts as choice points with thousands of
    alternatives; the explorer branches lazily and stays small."""
    from replicaio.cli import build_parser, draw_options
    from replicaio.sim.explore import explore

    args = build_parser().parse_args(["explore", "raft", "--nodes", "3", "--seed", "1"])
    options = draw_options(args, 1)
    result = explore("raft", options, runs_max=6)
    assert result.runs == 6
    assert result.choice_points_max > 0
    assert not result.exhaustive
    assert result.failures == []
