"""The simulated clients of a Byzantine fault tolerant service vote (issue 10 §1).

PBFT + SMR + KV in the simulator, with one Byzantine replica whose every reply
lies (a plausible but wrong result, sent by a wrapper around the run's clients,
as a liar on the network would). The clients accept a result only once f+1
replicas sent it (``replicaio.smr.client``), so the history stays
linearizable; the same run with clients that believe one reply is not: the
check bites.
"""

from __future__ import annotations

from typing import Any

from replicaio.services.kv.state_machine import (
    KeyValueStateMachine,
    KvOk,
    decode_result,
    encode_command,
)
from replicaio.sim.kv_harness import KvHarness, KvWorkload, kv_options
from replicaio.sim.simulator import SimResult, Simulator
from replicaio.smr.api import Rejected, Reply

# A value nobody wrote, as a get's result: ["ok", b"lie"].
LIE_VALUE = KeyValueStateMachine()
LIE_VALUE.apply(encode_command("put", b"k", b"lie"))
LIE = LIE_VALUE.apply(encode_command("get", b"k"))


def lie_about(result: bytes) -> bytes:
    """A get's result (a value or none) becomes the lie; other results stay."""
    decoded = decode_result(result)
    if isinstance(decoded, KvOk) and (decoded.value is None or isinstance(decoded.value, bytes)):
        return LIE
    return result


def run_with_liar(seed: int, quorum: int | None = None) -> SimResult:
    options = kv_options(seed, 4, ("loss", "reorder"), KvWorkload(clients=4, ops=120),
                         byzantine=1, adversary=("replay",), protocol="pbft")
    simulator = Simulator("pbft", options, f=1)
    harness = simulator.harness
    assert isinstance(harness, KvHarness)
    assert harness.bft and harness.quorum == 2
    if quorum is not None:
        harness.quorum = quorum  # a broken client: believes `quorum` replies
    honest = harness.on_output

    def on_output(node: int, output: Any, time_us: int) -> list[Any]:
        if node in options.byzantine and type(output) is Reply:
            output = Reply(output.client, output.seq, lie_about(output.result), output.replica,
                           output.leader)
        elif node in options.byzantine and type(output) is Rejected:
            output = Rejected(output.client, output.seq, "session_expired")
        return honest(node, output, time_us)

    harness.on_output = on_output  # type: ignore[method-assign]
    return simulator.run()


def test_a_lying_replica_cannot_make_clients_accept_a_wrong_result() -> None:
    for seed in (1, 2, 3):
        result = run_with_liar(seed)
        assert result.violations == [], (seed, result.violations[:2])
        assert result.stats["linearizable"] is True
        assert result.stats["ops_completed"] > 20


def test_clients_believing_one_reply_are_fooled_and_the_check_bites() -> None:
    found = set()
    for seed in (1, 2, 3):
        found |= {violation["property"] for violation in run_with_liar(seed, quorum=1).violations}
    assert "linearizability" in found
