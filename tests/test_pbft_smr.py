"""PBFT under the BFT-shaped SMR (ADR 0011, issue 10 section 1): a backup answers
``submit`` with ``NotLeader(primary)`` so SMR relays the *requests* and a request
a client multicasts is ordered once; every reply carries the view and the
primary; a backup watches the requests it relayed and replaces a primary that
does not order them."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_pbft_pitfalls import at, pbft_of, quiet_options, simulator

from replicaio.core.codec import Codec
from replicaio.interfaces.ordering import NotLeader
from replicaio.protocols.pbft import messages as pbft_messages
from replicaio.protocols.pbft import state_transfer as pbft_state_transfer
from replicaio.protocols.pbft.catch_up import LateCommits
from replicaio.protocols.pbft.messages import checkpoint_digest
from replicaio.sim.kv_harness import KvHarness
from replicaio.sim.options import Crash, Partition
from replicaio.sim.simulator import Simulator
from replicaio.smr.api import ClientRequest, Redirect, Rejected, Reply
from replicaio.smr.auth import KeyedClientSigner
from replicaio.smr.protocol import SmrProtocol

CLIENT = 1 << 40  # no harness client has this id


def multicast(sim: Simulator, time_us: int, seq: int) -> None:
    """At ``time_us``, one signed request of ``CLIENT`` to every replica."""
    codec = Codec()
    request = ClientRequest(CLIENT, seq, b"", False)
    data = codec.encode(KeyedClientSigner(codec, CLIENT).wrap(request))
    harness = sim.harness
    assert isinstance(harness, KvHarness) and harness.api is not None
    api = harness.api

    def send() -> None:
        for node in range(4):
            api.request(node, data)

    at(sim, time_us, send)


def foreign(violations: list[dict[str, object]]) -> list[dict[str, object]]:
    """Violations other than the harness's surprise at CLIENT's replies."""
    return [v for v in violations if str(CLIENT) not in str(v.get("detail", ""))]


def test_a_backup_answers_not_leader_and_a_multicast_request_is_ordered_once() -> None:
    sim = simulator(quiet_options(21))
    answers: list[object] = []
    at(sim, 300_000, lambda: answers.extend(
        pbft_of(sim, node).submit(b"not a batch") for node in (1, 2, 3)
    ))
    for index, time_us in enumerate((400_000, 900_000, 1_400_000)):
        multicast(sim, time_us, index + 1)
    result = sim.run()
    assert foreign(result.violations) == []
    assert answers == [NotLeader(0), NotLeader(0), NotLeader(0)]
    assert result.counters.get("smr_forwarded", 0) >= 3
    # Every copy of each request dropped before ordering: none executed twice.
    assert result.counters.get("smr_duplicates", 0) == 0
    assert result.counters.get("smr_forward_duplicate", 0) + result.counters.get(
        "smr_requests_queued_again", 0) > 0


def test_replies_carry_the_view_and_the_primary(monkeypatch: pytest.MonkeyPatch) -> None:
    """After the silent primary of view 0 is replaced, replies name view >= 1
    and its primary: a client's next request goes there first."""
    sim = simulator(replace(quiet_options(22), byzantine=(0,),
                            behaviours=("pbft_silent_primary",)))
    hints: list[tuple[int, int]] = []
    at(sim, 3_000_000, lambda: hints.extend(
        (pbft_of(sim, node).view_hint, pbft_of(sim, node).leader_hint) for node in (1, 2, 3)
    ))
    replies: list[tuple[int, int]] = []
    harness = sim.harness
    assert isinstance(harness, KvHarness)
    original = harness.on_client_output

    def spy(node: int, output: Reply | Redirect | Rejected) -> None:
        if isinstance(output, Reply) and node != 0:  # (the one answer with a view)
            replies.append((output.view, output.leader))
        original(node, output)

    monkeypatch.setattr(harness, "on_client_output", spy)
    result = sim.run()
    assert result.violations == []
    assert all(view >= 1 and leader == view % 4 for view, leader in hints), hints
    late = replies[-10:]
    assert late and all(view >= 1 and leader == view % 4 for view, leader in late), late


def test_backups_refuse_to_prepare_a_byzantine_primarys_invalid_batches() -> None:
    """Section 4.2: a backup accepts a PRE-PREPARE only for valid requests. A
    primary proposing forged, foreign, too many or undecodable requests gets
    none of them prepared (so none reaches execution, where SMR would have to
    skip it) and is replaced."""
    options = replace(quiet_options(23), byzantine=(0,), behaviours=("pbft_invalid_batch",))
    # Four batches in flight: the behaviour makes each kind of lie in turn, one
    # per batch, and with one batch in flight (PBFT's default) the primary is
    # replaced after its first.
    result = simulator(options, "pbft:inflight=4").run()
    assert result.violations == []
    counters = result.counters
    assert counters.get("smr_request_unauthenticated_in_batch", 0) == 0
    assert counters.get("smr_batch_undecodable", 0) == 0
    assert counters.get("pbft_rejected_pre_prepare_invalid_batch", 0) > 0
    assert counters.get("smr_validate_unauthenticated", 0) > 0
    assert counters.get("smr_validate_undecodable", 0) > 0
    assert result.stats["pbft_view_max"] >= 1
    assert result.stats["ops_completed"] > 0


def test_a_primary_cannot_move_the_stores_clock_ahead() -> None:
    """ADR 0015: backups refuse a batch stamped further ahead of their clocks
    than ``stamp_ahead_ms_max``; a primary stamping an hour ahead is replaced
    and no correct replica's store ever runs ahead (keys would expire early)."""
    options = replace(quiet_options(24), byzantine=(0,), behaviours=("pbft_clock_ahead",))
    sim = simulator(options)
    result = sim.run()
    assert result.violations == []
    clocks = []
    for node in (1, 2, 3):
        core = sim.nodes[node].core
        assert core is not None
        protocol = core.protocol
        assert isinstance(protocol, SmrProtocol)
        clocks.append(protocol.replica.clock_ms)
    assert max(clocks) <= sim.now // 1000 + 2_000, clocks
    assert result.counters.get("smr_validate_stamp_ahead", 0) > 0
    assert result.stats["pbft_view_max"] >= 1


def test_a_damaged_stable_checkpoint_is_refused_on_load_and_recovered_by_state_transfer() -> None:
    """Issue 9 for PBFT: replica 3's stored stable checkpoint is damaged while it
    is down (a flipped byte in its snapshot). At restart the record does not
    verify (digest, 2f+1 signatures): the replica erases its log, joins the next
    view so it never votes again where it may have voted, and takes its peers'
    certified state; no wrong state ever runs."""
    options = replace(quiet_options(25), crashes=(Crash(3, 1_200_000, 300_000, False, 0),))
    sim = simulator(options)
    damaged: list[str] = []

    def damage() -> None:
        storage = sim.nodes[3].storage
        durable = storage._durable  # bit rot in a synced record: below the Storage API
        key = next(key for key in durable if key.endswith("stable"))
        assert sim.nodes[3].core is None  # down
        record = Codec().decode_value(durable[key])
        assert isinstance(record, tuple), record
        seq, digest, snapshot, proof = record
        assert isinstance(snapshot, bytes), snapshot
        flipped = bytearray(snapshot)
        flipped[len(flipped) // 2] ^= 0x40
        durable[key] = Codec().encode_value((seq, digest, bytes(flipped), proof))
        damaged.append(key)

    at(sim, 1_300_000, damage)
    result = sim.run()
    assert damaged
    assert result.violations == []
    replica = pbft_of(sim, 3)
    assert checkpoint_digest(replica.stable_snapshot) == replica.stable_digest
    assert result.counters.get("pbft_stable_checkpoint_damaged", 0) == 1
    assert result.counters.get("pbft_state_installed", 0) >= 1
    assert pbft_of(sim, 3).stable_seq > 0


def test_pbft_with_mac_authenticated_clients_is_safe_and_live() -> None:
    """``pbft:macs=1`` (the paper's per-replica MAC authenticators for client
    requests, issue 10 section 1): every fault kind and a Byzantine replica;
    every request's MAC checked by each replica for its own entry."""
    from test_pbft_sim import options_for

    for seed in (1, 2, 3):
        result = Simulator("pbft:macs=1", options_for(seed, 4, 1), f=1, record=False).run()
        assert result.violations == [], (seed, result.violations[:2])
        assert result.stats["ops_completed"] > 0
        assert result.counters.get("smr_validate_unauthenticated", 0) == 0
    forged = Simulator("pbft:macs=1", replace(quiet_options(26), byzantine=(0,),
                                               behaviours=("pbft_invalid_batch",)),
                       f=1, record=False).run()
    assert forged.violations == []
    assert forged.counters.get("smr_validate_unauthenticated", 0) > 0


def test_state_transfer_is_chunked_checked_per_chunk_and_resumable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Chunks of a small size (so a test state spans many): replica 3, cut off
    while the others move far beyond L, fetches the certified manifest, then
    chunk by chunk; replica 0 damages every answer it gives, each refused on
    arrival while the transfer goes on from the next signer with what it has."""
    monkeypatch.setattr(pbft_messages, "STATE_CHUNK_BYTES", 512)
    monkeypatch.setattr(pbft_state_transfer, "STATE_CHUNK_BYTES", 512)
    # Replica 3 alone in a later view would otherwise catch up on the older
    # view's committed certificates (catch_up.py) as far as its window goes:
    # here only state transfer may bring it back.
    monkeypatch.setattr(LateCommits, "offer", lambda self, message: False)
    options = replace(
        quiet_options(27, ops=1500, clients=6), byzantine=(0,), behaviours=("pbft_bad_state",),
        partitions=(Partition(50_000, 1_500_000, (3,), True),),
        safety_us=4_000_000, liveness_us=34_000_000,
    )
    sim = simulator(options)
    result = sim.run()
    assert result.violations == []
    counters = result.counters
    assert counters.get("pbft_state_installed", 0) >= 1
    assert counters.get("pbft_state_chunks_received", 0) > 4
    assert counters.get("pbft_rejected_state_reply_digest_mismatch", 0) > 0
    replica = pbft_of(sim, 3)
    assert checkpoint_digest(replica.stable_snapshot) == replica.stable_digest
    assert replica.executed > 2 * replica.params.log_size
