"""The digest PBFT and MinBFT name batches and snapshots by (SHA-256).

Its own module so that ``protocols/bft.py``, the replica base both protocols
build on, can take it without importing the ``pbft`` package, whose
``__init__`` imports ``pbft.pbft`` and so ``bft`` itself: importing ``bft`` (or
a MinBFT module) first in a fresh interpreter was a circular import.
"""

from __future__ import annotations

import hashlib


def digest_of(data: bytes) -> bytes:
    """The digest of a batch or a snapshot (SHA-256)."""
    return hashlib.sha256(data).digest()
