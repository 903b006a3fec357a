"""Swarms beyond one machine: the seeds of ``replicaio swarm`` on a Dask cluster.

``replicaio swarm ... --dask tcp://SCHEDULER:8786`` hands every seed to an
existing ``dask.distributed`` cluster instead of local processes. A seed's run
is a pure function of the command's options and the seed (the simulator owns
its world), so a worker on any host computes the same verdict and the same
event-log hash as a local process; :func:`map_on_dask` only moves the jobs and
their results. Results arrive in completion order (the caller sorts them);
failures are shrunk and reported locally, as for a local swarm.

Workers need the same replicaio version (and Python) as the caller: the job
names ``replicaio.cli.swarm_worker`` and its options by reference. How to
start a scheduler and workers on several hosts: ``docs/simulation.md``.
Bounds: at most ``len(items)`` futures, each awaited once; connecting to the
scheduler gives up after ``connect_timeout_s``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from replicaio.core.errors import UsageError

Item = TypeVar("Item")
CONNECT_TIMEOUT_S = 30.0


def map_on_dask(
    address: str, function: Callable[[Item], dict[str, Any]], items: Sequence[Item],
    *, connect_timeout_s: float = CONNECT_TIMEOUT_S,
) -> Iterator[dict[str, Any]]:
    """``function`` of each item, run on the Dask cluster at ``address``, yielded as
    each finishes. Raises :class:`UsageError` when distributed is missing or the
    scheduler cannot be reached."""
    try:  # untyped: used through Any
        distributed: Any = importlib.import_module("distributed")
    except ImportError:
        raise UsageError("--dask needs dask.distributed: pip install 'replicaio[dask]'") from None
    try:
        client = distributed.Client(address, timeout=connect_timeout_s, set_as_default=False)
    except (OSError, TimeoutError) as error:
        raise UsageError(f"cannot reach the Dask scheduler at {address}: {error}") from None
    try:
        futures = client.map(function, list(items), pure=False)
        for future in distributed.as_completed(futures, loop=client.loop):
            result: dict[str, Any] = future.result()
            yield result
    finally:
        client.close()
