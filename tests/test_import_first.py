"""Modules a user may import first, each in a fresh interpreter: a circular
import shows only when its cycle is entered from the wrong module.
``protocols/bft.py`` took PBFT's digest from the ``pbft`` package, whose
``__init__`` imports ``pbft.pbft`` and so ``bft``: importing ``bft`` or a MinBFT
module first failed (found by importing every module first, audit37's report).
``services/kv/redis_typed.py`` imported ``redis_commands``, which merged the
typed commands at the end of its own import by importing ``redis_typed``:
importing ``redis_typed`` first failed; the shared types now live in
``redis_plan`` and the imports go one way.
The compiled hot modules have their own test (``test_compiled_classes``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

FIRST = [
    "replicaio.protocols.bft",
    "replicaio.protocols.minbft.minbft",
    "replicaio.protocols.minbft.normal",
    "replicaio.protocols.minbft.view_change",
    "replicaio.protocols.pbft.messages",
    "replicaio.services.kv.redis_plan",
    "replicaio.services.kv.redis_typed",
]


@pytest.mark.parametrize("module", FIRST)
def test_a_module_imports_first(module: str) -> None:
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                          text=True, timeout=120, check=False,
                          env={**os.environ, "REPLICAIO_COMPILED": "0"})
    assert done.returncode == 0, done.stderr[-2000:]
