"""Notices an operator must act on carry advice in their log line: every
placeholder of an advice names a field of its output, so the host can format
it for any instance (a KeyError there would crash a node's release path)."""

from __future__ import annotations

import string

import replicaio.assembly  # noqa: F401  (registers every protocol's outputs)
from replicaio.core.codec import Message
from replicaio.core.effects import NOTICE_ADVICE, NOTICE_TYPES
from replicaio.protocols.minbft.recovery import UsigLost


def test_every_advice_names_only_fields_of_its_notice() -> None:
    assert UsigLost in NOTICE_ADVICE
    for kind, advice in NOTICE_ADVICE.items():
        assert kind in NOTICE_TYPES
        assert issubclass(kind, Message), kind  # a notice is an output message
        fields = set(kind.__struct_fields__)
        names = {name for _, name, _, _ in string.Formatter().parse(advice) if name}
        assert names and names <= fields, (kind.__name__, names - fields)


def test_the_usig_lost_advice_says_how_to_bring_the_replica_back() -> None:
    advice = NOTICE_ADVICE[UsigLost].format(replica=2, epoch=0)
    assert "replicaio kv admit-usig --cluster FILE --node 2" in advice
    assert "above 0" in advice
