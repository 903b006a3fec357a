"""PBFT under the BFT-shaped SMR (ADR 0011, issue 10 section 1): a backup answers
``submit`` with ``NotLeader(primary)`` so SMR relays the *requests* and a request
a client multicasts is ordered once; every reply carries the view and the
primary; a backup watches the requests it relayed and replaces a primary that
does not order them."""

from __future__ import annotations

from dataclasses import replace

from test_pbft_pitfalls import at, pbft_of, quiet_options, simulator

from replicaio.core.codec import Codec
from replicaio.interfaces.ordering import NotLeader
from replicaio.smr.api import ClientRequest
from replicaio.smr.auth import KeyedClientSigner

CLIENT = 1 << 40  # no harness client has this id


def multicast(sim: object, time_us: int, seq: int) -> None:
    """At ``time_us``, one signed request of ``CLIENT`` to every replica."""
    codec = Codec()
    request = ClientRequest(CLIENT, seq, b"", False)
    data = codec.encode(KeyedClientSigner(codec, CLIENT).wrap(request))

    def send() -> None:
        for node in range(4):
            sim.harness.api.request(node, data)  # type: ignore[attr-defined]

    at(sim, time_us, send)  # type: ignore[arg-type]


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


def test_replies_carry_the_view_and_the_primary() -> None:
    """After the silent primary of view 0 is replaced, replies name view >= 1
    and its primary: a client's next request goes there first."""
    sim = simulator(replace(quiet_options(22), byzantine=(0,),
                            behaviours=("pbft_silent_primary",)))
    hints: list[tuple[int, int]] = []
    at(sim, 3_000_000, lambda: hints.extend(
        (pbft_of(sim, node).view_hint, pbft_of(sim, node).leader_hint) for node in (1, 2, 3)
    ))
    replies: list[tuple[int, int]] = []
    original = sim.harness.on_client_output  # type: ignore[attr-defined]

    def spy(node: int, output: object) -> None:
        view = getattr(output, "view", None)
        if view is not None and node != 0:
            replies.append((view, output.leader))  # type: ignore[attr-defined]
        original(node, output)

    sim.harness.on_client_output = spy  # type: ignore[attr-defined]
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
    result = simulator(options).run()
    assert result.violations == []
    counters = result.counters
    assert counters.get("smr_request_unauthenticated_in_batch", 0) == 0
    assert counters.get("smr_batch_undecodable", 0) == 0
    assert counters.get("pbft_rejected_pre_prepare_invalid_batch", 0) > 0
    assert counters.get("smr_validate_unauthenticated", 0) > 0
    assert counters.get("smr_validate_undecodable", 0) > 0
    assert result.stats["pbft_view_max"] >= 1
    assert result.stats["ops_completed"] > 0
