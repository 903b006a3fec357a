"""The f+1 Python client's attempts that read (issue 12): a late driver answers
the reads, and the client asks the undecided nodes again.

``TxnClient(replies=f+1)`` sends its signed attempt to every node of a BFT
cluster; each drives it and the outcome needs f+1 matching definite answers
(``services.txn.outcomes``). A driver whose ``begin`` finds the attempt
already committed by another (or that had it committed on votes it did not
see) held none of its reads, which come from the votes, and answered
``unknown``: with fewer than f+1 first drivers the client was told
``TransactionUnknown`` for a committed attempt. Now every participant keeps
the reads of its latest commits and answers them again to a repeated
``commit`` (``TxnStore.keep_reads``), the late driver finishes the attempt on
the certified decision and answers those reads, and the client asks the nodes
without a definite answer the same signed attempt again (at most
``REASKS_MAX`` times), as the Redis gateway does. The simulator's gateway
clients (``txn-pbft:gateway=1``) are that client; the variant
``txn-pbft-late-unknown`` (the rule before) tells clients ``unknown`` where
f+1 correct nodes knew the attempt committed (``txn_unknown_decided``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from replicaio.core.codec import Codec
from replicaio.runtime.config import Address
from replicaio.runtime.framing import LENGTH, LENGTH_BYTES, frame_header
from replicaio.runtime.local import free_ports
from replicaio.runtime.txn_client import TransactionUnknown, TxnClient
from replicaio.services.txn.protocol import SignedTxnRequest, TxnResult
from replicaio.services.txn.store import TxnStore
from replicaio.sim.simulator import Simulator
from replicaio.sim.txn_harness import TxnWorkload, txn_options

codec = Codec()
BFT_FAULTS = ("crash", "loss", "dup", "reorder")


# -- the participant keeps the reads of its latest commits ---------------------------


def run(store: TxnStore, *command: Any) -> Any:
    return codec.decode_value(store.apply(codec.encode_value(list(command))))


def test_a_repeated_commit_answers_the_same_reads() -> None:
    store = TxnStore()
    run(store, "prepare", 1, 1, 0, [["add", b"a", 5]])
    run(store, "commit", 1, 1)
    assert run(store, "prepare", 1, 2, 0, [["r", b"a", None], ["append", b"b", 7]]) == (
        "prepared", (5,), ("claim", "vote", 1, 2, 0, ()))
    first = run(store, "commit", 1, 2)
    assert first == ("committed", (5,), ("claim", "applied", 1, 2, "committed"))
    assert run(store, "commit", 1, 2) == first  # a late driver's commit: the same reads
    # An attempt that read nothing here answers as before (no reads item).
    assert run(store, "commit", 1, 1) == ("committed", ("claim", "applied", 1, 1, "committed"))
    restored = TxnStore()
    restored.restore(store.snapshot())
    assert run(restored, "commit", 1, 2) == first
    assert restored.footprint()["txn_reads_kept"] == 1


def test_the_kept_reads_are_bounded() -> None:
    store = TxnStore()
    for nonce in range(1, 1100):
        store.keep_reads((1, nonce), (nonce,))
    assert len(store.reads_kept) == store.footprint_max()["txn_reads_kept"] == 1024
    assert (1, 1) not in store.reads_kept and (1, 1099) in store.reads_kept


# -- simulated: f+1 clients with re-asks, late drivers answering the reads -----------


def simulate(protocol: str, seed: int) -> Any:
    options = txn_options(seed, 4, BFT_FAULTS, TxnWorkload(), byzantine=1,
                          adversary=("txn_lying_driver",))
    return Simulator(protocol, options).run()


def test_late_drivers_answer_the_reads_and_clients_learn_the_outcome() -> None:
    for seed in (2, 3):
        result = simulate("txn-pbft:groups=3,gateway=1", seed)
        assert result.ok, (seed, result.violations)
        assert result.counters.get("txn_late_reads", 0) > 0, seed
        assert result.stats["outcomes"].get("gateway_reasks", 0) > 0, seed


def test_the_rule_before_told_clients_unknown_for_what_f_plus_1_knew_committed() -> None:
    # Seed 5 (2 until backups forwarded what they wait for on suspicion,
    # 2026-12-06, which moved the schedules; 3 and 4 pass since).
    result = simulate("txn-pbft-late-unknown:groups=3", 5)
    assert not result.ok
    assert {violation["property"] for violation in result.violations} == {
        "txn_unknown_decided"}
    assert result.counters.get("txn_late_reads", 0) == 0


# -- the Python client asks the undecided nodes again ------------------------------


class FakeNode:
    """A node's client port that answers each attempt from a script of answers
    (one per time it is asked; the last one repeats), or never (``None``)."""

    def __init__(self, script: list[tuple[str, str, Any] | None]) -> None:
        self.script = script
        self.asked = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (length,) = LENGTH.unpack(await reader.readexactly(LENGTH_BYTES))
                payload: Any = codec.decode_value(await reader.readexactly(length))
                signed = codec.decode(payload)
                assert isinstance(signed, SignedTxnRequest)
                request = signed.request
                answer = self.script[min(self.asked, len(self.script) - 1)]
                self.asked += 1
                if answer is None:
                    continue
                outcome, reason, reads = answer
                body = codec.encode(TxnResult(request.client, request.nonce, outcome, reason,
                                              codec.encode_value(reads)))
                writer.write(frame_header(len(body)) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def with_nodes(nodes: list[FakeNode], reasks: int, timeout_s: float) -> Any:
    ports = free_ports(len(nodes))
    servers = [await asyncio.start_server(node.serve, "127.0.0.1", port)
               for node, port in zip(nodes, ports, strict=True)]
    client = await TxnClient.connect([Address("127.0.0.1", port) for port in ports],
                                     timeout_s=timeout_s, replies=2, signing="keyed",
                                     reasks=reasks)
    try:
        async with client.transaction() as t:
            handle = t.read("a")
        return t.value(handle), client.reasked
    except TransactionUnknown as error:
        return error, client.reasked
    finally:
        await client.close()
        for server in servers:
            server.close()


def test_the_client_asks_the_undecided_again_and_learns_the_reads() -> None:
    committed = ("committed", "", [5])
    nodes = [FakeNode([committed]), FakeNode([("unknown", "no_decision", []), committed]),
             FakeNode([("aborted", "busy", [])]), FakeNode([None])]
    read, reasked = asyncio.run(with_nodes(nodes, reasks=2, timeout_s=5.0))
    assert read == 5 and reasked == 1
    assert nodes[1].asked == 2 and nodes[0].asked == 1  # a definite answer is not asked again


def test_without_reasks_the_same_answers_are_unknown() -> None:
    """The rule before (``reasks=0``): the first round alone, then unknown."""
    committed = ("committed", "", [5])
    nodes = [FakeNode([committed]), FakeNode([("unknown", "no_decision", []), committed]),
             FakeNode([("aborted", "busy", [])]), FakeNode([("unknown", "already_decided", [])])]
    error, reasked = asyncio.run(with_nodes(nodes, reasks=0, timeout_s=5.0))
    assert isinstance(error, TransactionUnknown) and reasked == 0
    assert "no 2 matching answers" in str(error)
