"""The call census of ``bench/census_kv_calls.py``, installed in a node process by
putting this directory on ``PYTHONPATH`` (Python imports ``sitecustomize`` at start).

Inactive unless ``REPLICAIO_CENSUS_DIR`` is set. Then every call of a Python function
and of a C function, on every thread, is counted by (file, first line, name), and
each ``SIGUSR1`` writes the counts so far to ``$REPLICAIO_CENSUS_DIR/<pid>.<k>.json``
(k = 0, 1, ...): two such snapshots around N operations give the calls per operation.
The profile hook slows the process several times; the counts, not the times, are
the figures.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

_DIRECTORY = os.environ.get("REPLICAIO_CENSUS_DIR")


def _install(directory: str) -> None:
    counts: collections.Counter[tuple[str, int, str]] = collections.Counter()
    written = [0]

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            counts[(code.co_filename, code.co_firstlineno, code.co_name)] += 1
        elif event == "c_call":
            name = getattr(arg, "__qualname__", None) or repr(arg)[:60]
            counts[("<C>", 0, name)] += 1

    def snapshot(_number: int, _frame: FrameType | None) -> None:
        rows = [[*key, value] for key, value in list(counts.items())]
        path = os.path.join(directory, f"{os.getpid()}.{written[0]}.json")
        sys.setprofile(None)  # the snapshot's own calls are not the node's (its thread)
        try:
            with open(path + ".part", "w") as sink:
                json.dump(rows, sink)
            os.replace(path + ".part", path)  # whole or absent: the tool polls for it
        finally:
            sys.setprofile(profile)
        written[0] += 1

    signal.signal(signal.SIGUSR1, snapshot)
    sys.setprofile(profile)
    threading.setprofile(profile)


if _DIRECTORY:
    _install(_DIRECTORY)
