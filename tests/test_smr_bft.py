"""SMR made Byzantine-shaped, over the test double of ``test_smr`` with n = 3f+1.

What a Byzantine fault tolerant ordering needs of SMR (ADR 0005, issue 10
section 1): requests keep their clients' authenticators inside batches and
every replica checks them (on a primary's proposal: ``validate_batch``; before
executing); every replica replies, with hints, and a client accepts f+1
matching replies (``replicaio.smr.client``), so a replica that lies cannot
make it accept a wrong result; backups relay requests to the primary, so a
request multicast to every replica is ordered once; the protocol gets every
checkpoint; the reply cache travels with state transfer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from test_smr import CODEC, Cluster, CommitNow, LogOrdering, value_of, write

from replicaio.core.config import Resilience
from replicaio.core.context import Context
from replicaio.core.effects import Receive
from replicaio.core.errors import UsageError
from replicaio.services.kv import KeyValueStateMachine, encode_command
from replicaio.smr.api import AuthenticatedRequest, ClientRequest, Committed, Rejected, Reply
from replicaio.smr.auth import (
    ED25519,
    KEYED,
    Ed25519ClientSigner,
    KeyedClientSigner,
    MacClients,
    MacClientSigner,
    SignedClients,
    client_id_of,
)
from replicaio.smr.client import Accepted, FastQuorums, Refused, Votes, fast_quorums, reply_quorum
from replicaio.smr.messages import Batch, SignedBatch, SignedForward
from replicaio.smr.params import SmrConstants, SmrParams
from replicaio.smr.replica import encode_snapshot

N = 4
F = 1


@dataclass(frozen=True)
class InstallSnapshot:
    """Admin payload: state transfer (the protocol verified the snapshot)."""

    index: int
    data: bytes


class BftLogOrdering(LogOrdering):
    """The shared-log double, shaped as a BFT ordering: backups answer
    ``NotLeader(primary)`` (SMR relays to the primary) and validate every batch
    before applying it (PBFT's backups, before accepting a PRE-PREPARE)."""

    def __init__(self, context: Context, shared: Any) -> None:
        super().__init__(context, shared)
        self.verdicts: dict[int, bool] = {}

    def catch_up(self) -> None:
        assert self.handlers is not None
        if self.context.id != self.shared.leader:
            for index in range(self.applied + 1, self.shared.committed + 1):
                entry = self.shared.entries[index - 1]
                self.verdicts[index] = self.handlers.validate_batch(entry)
        super().catch_up()

    @property
    def view_hint(self) -> int:
        return 3

    def on_admin(self, payload: Any) -> str | None:
        if isinstance(payload, InstallSnapshot):
            assert self.handlers is not None
            self.handlers.on_snapshot(payload.index, payload.data)
            self.applied = payload.index
            return None
        return super().on_admin(payload)


def verdicts_of(cluster: Cluster, node: int) -> dict[int, bool]:
    """What ``node``'s :class:`BftLogOrdering` decided of each batch it validated."""
    ordering = cluster.protocol(node).ordering
    assert isinstance(ordering, BftLogOrdering)
    return ordering.verdicts


def bft_cluster(**options: Any) -> Cluster:
    return Cluster(
        N,
        resilience=Resilience.BYZANTINE,
        ordering=BftLogOrdering,
        admin_types=(InstallSnapshot,),
        **options,
    )


def signed(client: int, seq: int, op: str, key: bytes, *arguments: Any) -> AuthenticatedRequest:
    return KeyedClientSigner(CODEC, client).wrap(write(client, seq, op, key, *arguments))


def replies(cluster: Cluster) -> dict[int, list[Any]]:
    return {i: cluster.take(i) for i in range(N)}


# -- every replica replies; clients need f+1 matching ------------------------------------------


def test_every_replica_replies_with_hints_and_f_plus_1_match() -> None:
    cluster = bft_cluster()
    cluster.request(0, signed(7, 1, "incr", b"n", 5))
    answers = replies(cluster)
    votes = Votes(7, 1, reply_quorum(Resilience.BYZANTINE, F, N), N)
    decision = None
    for replica, outputs in answers.items():
        [reply] = outputs
        assert isinstance(reply, Reply)
        assert (reply.replica, reply.leader, reply.view) == (replica, 0, 3)
        assert value_of(reply) == 5
        decision = votes.add(reply, replica)
    assert decision == Accepted(answers[0][0].result, (0, 1))


def test_a_replica_lying_in_its_reply_cannot_make_the_client_accept_a_wrong_result() -> None:
    """f Byzantine replicas answer first, and alike: the client waits for a
    result f+1 replicas vouch for, and takes the correct one."""
    cluster = Cluster(
        7, resilience=Resilience.BYZANTINE, ordering=BftLogOrdering  # f = 2
    )
    cluster.request(0, signed(7, 1, "incr", b"n", 5))
    honest = [cluster.take(i)[0] for i in range(7)]
    lie = Reply(7, 1, KeyValueStateMachine().apply(encode_command("incr", b"n", 99)), 5)
    votes = Votes(7, 1, reply_quorum(Resilience.BYZANTINE, 2, 7), 7)
    assert votes.add(lie, 5) is None
    assert votes.add(lie, 6) is None
    # The liar cannot vote twice, nor in another replica's name.
    assert votes.add(lie, 6) is None
    assert votes.add(Reply(7, 1, lie.result, 0), 6) is None
    assert votes.add(honest[0], 0) is None
    assert votes.add(honest[1], 1) is None
    decision = votes.add(honest[2], 2)
    assert isinstance(decision, Accepted)
    assert decision.result == honest[0].result != lie.result
    assert decision.replicas == (0, 1, 2)


def test_refusals_need_f_plus_1_matching_and_reads_need_2f_plus_1() -> None:
    votes = Votes(1, 1, reply_quorum(Resilience.BYZANTINE, F, N), N)
    assert votes.add(Rejected(1, 1, "session_expired"), 3) is None  # one liar
    assert votes.add(Rejected(1, 1, "busy"), 0) is None
    assert votes.add(Rejected(1, 1, "session_expired"), 1) == Refused("session_expired", (1, 3))
    assert reply_quorum(Resilience.BYZANTINE, F, N, read_only=True) == 3
    assert reply_quorum(Resilience.CRASH, 2, 5) == 1
    read = Votes(1, 2, 3, N)
    for replica, result in enumerate((b"a", b"b", b"a")):
        read.add(Reply(1, 2, result, replica), replica)
    assert not read.split()  # the fourth replica may still make "a" reach 3
    read.add(Reply(1, 2, b"c", 3), 3)
    assert read.split()  # no answer can reach 2f+1: retry through the log
    with pytest.raises(UsageError):
        Votes(1, 1, 5, N)


def test_read_quorums_grow_with_n_so_that_any_two_share_a_correct_replica() -> None:
    """ceil((n + f + 1) / 2) for reads and writes alike: 2f+1 of the paper's
    3f+1, more with more replicas (2f+1 of six could be the faulty replica and
    two correct ones that missed a write completed on the faulty one and two
    others); never more than the n - f correct replicas once n >= 3f+1."""
    byzantine = Resilience.BYZANTINE
    expected = {(4, 1): 3, (5, 1): 4, (6, 1): 4, (7, 1): 5, (7, 2): 5, (10, 3): 7, (12, 3): 8}
    for (n, f), quorum in expected.items():
        assert fast_quorums(byzantine, f, n) == FastQuorums(quorum, quorum)
        assert reply_quorum(byzantine, f, n, read_only=True) == quorum
        assert reply_quorum(byzantine, f, n) == f + 1
        assert quorum <= n - f
        # any two quorums share f + 1 replicas
        assert 2 * quorum - n >= f + 1
    assert reply_quorum(Resilience.CRASH, 1, 5, read_only=True) == 1
    assert fast_quorums(Resilience.CRASH, 1, 5) == FastQuorums(1, 1)
    with pytest.raises(UsageError):
        reply_quorum(byzantine, 1, 0)
    with pytest.raises(UsageError):
        fast_quorums(byzantine, -1, 3)


def test_below_3f_plus_1_reads_take_every_replica_and_writes_stay_at_f_plus_1() -> None:
    """Where ceil((n + f + 1) / 2) is more than the n - f correct replicas
    (MinBFT's n = 2f+1: 3 of 3, 4 of 5), a fast reader's write on it would wait
    for a replica that may be silent for good: reads take every replica and
    writes the ordinary f + 1, R + W = n + f + 1 still (docs/minbft.md)."""
    trusted = Resilience.BYZANTINE_TRUSTED
    expected = {(3, 1): (3, 2), (5, 2): (5, 3), (7, 3): (7, 4), (6, 2): (6, 3),
                (4, 1): (3, 3), (5, 1): (4, 4), (1, 0): (1, 1), (2, 0): (2, 2)}
    for (n, f), (reads, writes) in expected.items():
        quorums = fast_quorums(trusted, f, n)
        assert quorums == FastQuorums(reads, writes), (n, f, quorums)
        assert reply_quorum(trusted, f, n, read_only=True) == reads
        assert reads + writes >= n + f + 1  # a read meets every completed write
        assert 2 * reads >= n + f + 1  # and every earlier read
        assert writes <= n - f  # writes stay live with f silent


def test_a_cached_answer_comes_from_every_replica_too() -> None:
    cluster = bft_cluster()
    request = signed(7, 1, "put", b"k", b"v")
    cluster.request(0, request)
    replies(cluster)
    for i in range(N):  # the client retransmits to all (it missed the replies)
        cluster.request(i, request)
    answers = replies(cluster)
    assert all(len(outputs) == 1 and isinstance(outputs[0], Reply) for outputs in answers.values())
    assert len(cluster.shared.entries) == 1


# -- authenticators travel with requests; every replica checks them ---------------------------


def test_requests_carry_their_authenticators_through_batches() -> None:
    cluster = bft_cluster()
    request = signed(7, 1, "put", b"k", b"v")
    cluster.request(0, request)
    [entry] = cluster.shared.entries
    assert CODEC.decode_as(entry, SignedBatch).requests == (request,)
    for i in range(1, N):
        assert verdicts_of(cluster, i) == {1: True}


def test_unauthenticated_and_bare_requests_are_refused_at_admission() -> None:
    cluster = bft_cluster()
    forged = AuthenticatedRequest(write(7, 1, "put", b"k", b"x"), b"", b"\0" * 32)
    cluster.request(0, forged)
    cluster.request(0, write(8, 1, "put", b"k", b"x"))  # a bare ClientRequest
    assert cluster.take(0) == [Rejected(7, 1, "unauthenticated")]
    assert cluster.counter(0, "request_rejected_unauthenticated") == 1
    assert cluster.counter(0, "request_rejected_bad_request") == 1
    assert cluster.shared.entries == []


def test_backups_refuse_a_batch_with_a_forged_request_and_nobody_executes_it() -> None:
    """A faulty primary orders a forged request: backups' validate_batch says no,
    and every replica skips it at execution (the same verdict everywhere)."""
    cluster = bft_cluster(mode="manual")
    good = signed(1, 1, "put", b"k", b"good")
    forged = AuthenticatedRequest(write(2, 1, "put", b"k", b"evil"), b"", b"\1" * 32)
    cluster.shared.entries.append(CODEC.encode(SignedBatch(0, 1, 0, (good, forged))))
    bare = Batch(0, 1, 1, (write(3, 1, "put", b"j", b"bare"),))
    cluster.shared.entries.append(CODEC.encode(bare))
    cluster.request(0, CommitNow())
    for i in range(1, N):
        assert verdicts_of(cluster, i) == {1: False, 2: False}
        assert cluster.counter(i, "smr_validate_unauthenticated") == 1
        assert cluster.counter(i, "smr_validate_undecodable") == 1
    for i in range(N):
        assert cluster.kv(i).data == {b"k": b"good"}
        assert cluster.counter(i, "smr_request_unauthenticated_in_batch") == 1
        assert cluster.counter(i, "smr_batch_undecodable") == 1


def test_a_byzantine_backup_cannot_relay_a_forged_request() -> None:
    cluster = bft_cluster(mode="manual")
    forged = AuthenticatedRequest(write(2, 1, "put", b"k", b"evil"), b"", b"\1" * 32)
    relay = SignedForward((forged, signed(1, 1, "put", b"k", b"ok")))
    cluster.execute(0, cluster.nodes[0].step(Receive(3, CODEC.encode(relay))))
    cluster.settle()
    assert cluster.counter(0, "smr_forward_unauthenticated") == 1
    assert [len(CODEC.decode_as(e, SignedBatch).requests) for e in cluster.shared.entries] == [1]


def test_ed25519_client_ids_are_self_certifying() -> None:
    authenticator = SignedClients(CODEC, ED25519)
    signer = Ed25519ClientSigner(CODEC, bytes(range(32)))
    assert signer.client == client_id_of(signer.public) >= 0
    request = signer.wrap(write(signer.client, 1, "put", b"k", b"v"))
    assert authenticator.authenticate(request) == (request.request, request)
    # The same signature under another client id, or another key, is refused.
    stolen = AuthenticatedRequest(write(signer.client + 1, 1, "put", b"k", b"v"),
                                  request.key, request.authenticator)
    assert authenticator.authenticate(stolen) == "unauthenticated"
    other = Ed25519ClientSigner(CODEC, bytes(32))
    swapped = AuthenticatedRequest(request.request, other.public, request.authenticator)
    assert authenticator.authenticate(swapped) == "unauthenticated"
    tampered = AuthenticatedRequest(write(signer.client, 1, "put", b"k", b"w"),
                                    request.key, request.authenticator)
    assert authenticator.authenticate(tampered) == "unauthenticated"
    keyed = KeyedClientSigner(CODEC, 5).wrap(write(5, 1, "put", b"k", b"v"))
    assert authenticator.authenticate(keyed) == "unauthenticated"  # not this scheme
    assert SignedClients(CODEC, KEYED).authenticate(keyed) == (keyed.request, keyed)


def test_mac_vectors_are_checked_per_replica_and_not_again_at_execution() -> None:
    def macs(context: Context, params: SmrParams) -> MacClients:
        return MacClients(context.node.codec, context.id, context.n)

    cluster = bft_cluster(authenticator=macs, mode="manual")
    signer = MacClientSigner(CODEC, 9, N)
    good = signer.wrap(write(9, 1, "put", b"k", b"v"))
    # A faulty client: the MAC for replica 2 is wrong.
    other = MacClientSigner(CODEC, 10, N)
    bad = bytearray(other.wrap(write(10, 1, "put", b"j", b"w")).authenticator)
    bad[2 * 32] ^= 1
    partial = AuthenticatedRequest(write(10, 1, "put", b"j", b"w"), b"", bytes(bad))
    cluster.shared.entries.append(CODEC.encode(SignedBatch(0, 1, 0, (good,))))
    cluster.shared.entries.append(CODEC.encode(SignedBatch(0, 1, 1, (partial,))))
    cluster.request(0, CommitNow())
    verdicts = [verdicts_of(cluster, i) for i in (1, 2, 3)]
    assert verdicts == [{1: True, 2: True}, {1: True, 2: False}, {1: True, 2: True}]
    # Once committed, every replica executes alike (no per-replica re-check).
    for i in range(N):
        assert cluster.kv(i).data == {b"k": b"v", b"j": b"w"}
    cluster.request(2, partial)
    assert Rejected(10, 1, "unauthenticated") in cluster.take(2)


# -- backups relay; one multicast request is ordered once --------------------------------------


def test_a_request_multicast_to_every_replica_is_ordered_once() -> None:
    cluster = bft_cluster(mode="manual")
    request = signed(7, 1, "incr", b"n", 1)
    for i in (1, 2, 3, 0):
        cluster.request(i, request)
    assert len(cluster.shared.entries) == 1
    assert cluster.counter(0, "smr_forward_duplicate") + cluster.counter(
        0, "smr_requests_queued_again"
    ) == 3
    for i in range(1, N):
        assert cluster.counter(i, "smr_forwarded") == 1
        assert cluster.counter(i, "smr_batches_submitted") == 0
    cluster.request(0, CommitNow())
    for i in range(N):
        [reply] = [o for o in cluster.take(i) if isinstance(o, Reply)]
        assert value_of(reply) == 1
        assert cluster.kv(i).data == {b"n": b"1"}
    assert cluster.protocol(0).replica.queued == {}


# -- checkpoints: every interval; the reply cache travels with state transfer ------------------


def test_the_protocol_gets_a_checkpoint_at_every_interval() -> None:
    """Several intervals committed in one step: each checkpoint is handed over, in order."""
    cluster = bft_cluster(mode="manual", constants=SmrConstants(snapshot_interval=1))
    for client in range(1, 4):
        cluster.shared.entries.append(
            CODEC.encode(SignedBatch(0, 1, client, (signed(client, 1, "put", b"k", b"v"),)))
        )
    cluster.request(0, CommitNow())
    for i in range(N):
        assert [index for node, index in cluster.shared.compactions if node == i] == [1, 2, 3]


def test_the_reply_cache_travels_with_state_transfer() -> None:
    """A replica brought forward by a snapshot answers a retry from the session
    table it received, without executing, and refuses an older request."""
    cluster = bft_cluster(mode="manual", constants=SmrConstants(snapshot_interval=1))
    cluster.hold = lambda source, destination, body: destination == 3
    cluster.request(0, signed(7, 1, "incr", b"n", 5))
    cluster.request(0, CommitNow())
    cluster.request(0, signed(7, 2, "incr", b"n", 1))
    cluster.request(0, CommitNow())
    cluster.held.clear()
    cluster.take(3)
    assert cluster.protocol(3).replica.applied == 0
    index, data = 2, cluster.shared.snapshots[2][0]
    cluster.request(3, InstallSnapshot(index, data))
    lagging = cluster.protocol(3).replica
    assert lagging.applied == 2 and cluster.kv(3).data == {b"n": b"6"}
    assert lagging.sessions.lookup(7) is not None
    cluster.hold = None
    cluster.request(3, signed(7, 2, "incr", b"n", 1))
    [reply] = cluster.take(3)
    assert value_of(reply) == 6
    assert cluster.counter(3, "smr_replies_cached") == 1
    assert cluster.counter(3, "smr_requests_applied") == 0
    cluster.request(3, signed(7, 1, "incr", b"n", 5))
    assert cluster.take(3) == [Rejected(7, 1, "stale_seq")]
    # The snapshot it received is the one every replica took (certifiable).
    assert len(set(cluster.shared.snapshots[2].values())) == 1


def test_cluster_constants_decide_what_a_committed_batch_does() -> None:
    """A batch over the cluster's batch_requests_max is skipped by every replica
    alike (and refused by backups), whatever each replica's local settings."""
    constants = SmrConstants(batch_requests_max=2)
    cluster = bft_cluster(mode="manual", constants=constants, params=SmrParams(pending_max=8))
    three = tuple(signed(c, 1, "put", b"k", b"v") for c in (1, 2, 3))
    cluster.shared.entries.append(CODEC.encode(SignedBatch(0, 1, 0, three)))
    cluster.request(0, CommitNow())
    for i in range(N):
        assert cluster.kv(i).data == {}
        assert cluster.counter(i, "smr_batch_undecodable") == 1


def test_an_authenticated_request_too_large_for_a_batch_is_refused() -> None:
    constants = SmrConstants(batch_bytes_max=1150, command_bytes_max=1000)
    cluster = bft_cluster(constants=constants)
    big = signed(7, 1, "put", b"k", b"x" * 980)
    assert len(big.request.command) <= 1000
    cluster.request(0, big)
    assert cluster.take(0) == [Rejected(7, 1, "too_large")]
    cluster.request(0, signed(7, 1, "put", b"k", b"x" * 900))
    assert isinstance(cluster.take(0)[0], Reply)


def test_committed_requests_are_rechecked_by_every_replica() -> None:
    cluster = bft_cluster(mode="manual")
    replica = cluster.protocol(1).replica
    request = signed(4, 1, "put", b"k", b"v")
    assert replica.authenticator.check(request)
    assert replica.validate_batch(CODEC.encode(SignedBatch(0, 1, 0, (request,))))
    wrong_client = AuthenticatedRequest(
        ClientRequest(5, 1, request.request.command, False), b"", request.authenticator
    )
    assert not replica.validate_batch(CODEC.encode(SignedBatch(0, 1, 0, (wrong_client,))))
    replica.on_commit(Committed(1, b""))  # a protocol's own entry: nothing to check
    assert replica.applied == 1


def test_snapshot_bytes_include_sessions_for_transfer() -> None:
    cluster = bft_cluster()
    cluster.request(0, signed(7, 1, "put", b"k", b"v"))
    replica = cluster.protocol(0).replica
    data = encode_snapshot(replica.codec, 1, cluster.kv(0).snapshot(), replica.sessions.records())
    assert replica.sessions.records()[0][:2] == (7, 1)
    assert data  # the format is checked in test_smr
