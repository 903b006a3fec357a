"""A protocol name's parameters (``raft:fill=8``): each family takes the ones its
builder or the simulator's harness reads, and a name with any other is refused
with the parameter and the protocol named, never built with the setting silently
ignored (``txn-kv:fill=8`` once built groups that did not fill)."""

from __future__ import annotations

import functools

import pytest

from replicaio.assembly import (
    MINBFT_PARAMETERS,
    PBFT_PARAMETERS,
    RAFT_PARAMETERS,
    SERVICE_PARAMETERS,
    TXN_BFT_PARAMETERS,
    TXN_RAFT_PARAMETERS,
    live_protocol_params,
    protocol_factory,
)
from replicaio.core.errors import ConfigError, UsageError
from replicaio.protocols.raft.params import RaftParams
from replicaio.services.txn.protocol import TxnFactory
from replicaio.smr.protocol import SmrFactory

# A value each parameter takes (1 unless 1 is not a usable value).
VALUES = {"values": 1024, "view_timeout": 100, "memory": 8, "snapshotkib": 64}
FAMILIES = [
    ("raft", RAFT_PARAMETERS), ("pbft", PBFT_PARAMETERS), ("minbft", MINBFT_PARAMETERS),
    ("txn", TXN_RAFT_PARAMETERS), ("txn-kv", TXN_RAFT_PARAMETERS),
    ("txn-pbft", TXN_BFT_PARAMETERS), ("txn-kv-minbft", TXN_BFT_PARAMETERS),
]


@pytest.mark.parametrize(("name", "ignored"), [
    ("pbft:lease=1", "lease"), ("minbft:macs=1", "macs"), ("raft:reads=1", "reads"),
    ("txn:windows=2", "windows"), ("txn-kv-pbft:fill=8", "fill"),
    ("txn-kv:groups=3,memory=8", "memory"), ("raft-forget-vote:gateway=1", "gateway"),
    ("pbft-commit-off-by-one:notice_us=0", "notice_us"), ("txn-pbft-no-vouch:fill=2", "fill"),
])
def test_a_parameter_its_protocol_does_not_read_is_refused(name: str, ignored: str) -> None:
    with pytest.raises(UsageError) as caught:
        protocol_factory(name)
    message = str(caught.value)
    base = name.partition(":")[0]
    assert f"{ignored} does not apply to {base}" in message, message


@pytest.mark.parametrize(("base", "accepted"), FAMILIES)
def test_every_parameter_a_family_declares_builds(base: str, accepted: frozenset[str]) -> None:
    """Declared means usable: each parameter alone builds the protocol (PBFT's and
    MinBFT's ``values`` excepted: refused with the reason, below)."""
    for parameter in sorted(accepted):
        if parameter == "values" and base in ("pbft", "minbft"):
            continue
        protocol_factory(f"{base}:{parameter}={VALUES.get(parameter, 1)}")


def test_values_on_a_bft_service_says_why() -> None:
    with pytest.raises(ConfigError, match="values= applies to Raft"):
        protocol_factory("pbft:values=1024")


def test_every_documented_parameter_is_taken_by_some_protocol() -> None:
    declared = (RAFT_PARAMETERS | PBFT_PARAMETERS | MINBFT_PARAMETERS | TXN_RAFT_PARAMETERS
                | TXN_BFT_PARAMETERS)
    assert declared == set(SERVICE_PARAMETERS)


def test_the_raft_groups_of_a_sharded_store_fill_hold_notices_and_size_snapshots() -> None:
    """``fill``, ``notice_us`` and ``snapshotkib`` reach every Raft group of a
    sharded store, and a live cluster file gets a single Raft service's defaults."""
    factory = protocol_factory("txn-kv:groups=2,fill=16,notice_us=3000,snapshotkib=256")
    assert isinstance(factory, TxnFactory)
    groups = factory.group_factory
    assert isinstance(groups, SmrFactory)
    assert groups.params.batch_fill_min == 16
    assert groups.constants.snapshot_log_bytes_min == 256 * 1024
    footprint = groups.ordering_footprint_max  # a partial over the groups' RaftParams
    assert isinstance(footprint, functools.partial)
    raft_params = footprint.args[0]
    assert isinstance(raft_params, RaftParams) and raft_params.commit_notice_delay_us == 3000
    plain = protocol_factory("txn-kv:groups=2")
    assert isinstance(plain, TxnFactory) and isinstance(plain.group_factory, SmrFactory)
    assert plain.group_factory.params.batch_fill_min == 1  # the simulator's default
    assert live_protocol_params("txn-kv", {"groups": 2}) == {
        "groups": 2, "fill": 64, "notice_us": 4000, "snapshotkib": 1024}
    assert live_protocol_params("txn-pbft", {"groups": 2}) == {"groups": 2}
