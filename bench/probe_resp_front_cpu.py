"""The Redis front's own CPU per command, without a cluster: one process runs the
``resp`` service in front of an in-process host that executes every request at
once on a real key-value state machine (no log, no peers, no fsync), and
``redis-benchmark`` drives it; the process's CPU time over each run, divided by
the commands answered, is what the front (plus the store and the codec, the same
for every front) costs per command.

    .venv/bin/python bench/probe_resp_front_cpu.py
    .venv/bin/python bench/probe_resp_front_cpu.py --runs 20000:1:1,40000:16:1,80000:16:16

Run it with another tree's interpreter (``OTHER/.venv/bin/python -P
bench/probe_resp_front_cpu.py``) to compare two fronts side by side; the service
is the tree's own (``replicaio.runtime.kv.service``), and so is the host's
``try_submit`` if the service uses it. Each run is N:C:P (``-n N -c C -P P``,
``-t set,get``); rounds alternate when several trees run in turn.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import sys
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from replicaio.core.codec import Codec
from replicaio.runtime.config import Address, HostParams
from replicaio.runtime.counters import Counters
from replicaio.runtime.kv.service import RespService
from replicaio.services.kv.state_machine import KeyValueStateMachine
from replicaio.smr.api import ClientRequest, Reply


class InstantHost:
    """A ServiceHost that executes each request on the loop's next turn (SMR's session
    rules reduced to what the front needs: a registration answers, writes apply)."""

    def __init__(self) -> None:
        self.codec = Codec()
        self.counters = Counters()
        self.node_id = 0
        self.core = SimpleNamespace(incarnation=1, protocol=None)
        self.cluster = SimpleNamespace(service_params={}, protocol="probe", n=1)
        self.kv = KeyValueStateMachine()
        self.service = RespService()
        self.requests = 0

    async def submit(self, payload: Any, on_done: Callable[[str | None], None] | None = None
                     ) -> None:
        self.try_submit(payload, on_done)

    def try_submit(self, payload: Any, on_done: Callable[[str | None], None] | None = None
                   ) -> bool:
        request = self.codec.decode(payload)
        assert type(request) is ClientRequest
        self.requests += 1
        asyncio.get_running_loop().call_soon(self.execute, request, on_done)
        return True

    def execute(self, request: ClientRequest, on_done: Callable[[str | None], None] | None
                ) -> None:
        if request.read_only:
            result = self.kv.read(request.command)
        else:
            result = self.kv.apply(request.command) if request.command else b""
        if on_done is not None:
            on_done(None)
        self.service.on_outputs([Reply(request.client, request.seq, result, 0)])


async def one_run(requests: int, clients: int, pipeline: int) -> dict[str, Any]:
    host = InstantHost()
    await host.service.start(host, Address("127.0.0.1", 0), HostParams())
    try:
        command = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(host.service.port),
                   "-t", "set,get", "-n", str(requests), "-c", str(clients), "-P",
                   str(pipeline), "-d", "100", "-r", "1000", "--csv"]
        before = resource.getrusage(resource.RUSAGE_SELF)
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        output, _ = await process.communicate()
        after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        await host.service.close()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    commands = host.service.commands_processed
    rates = {}
    for line in output.decode().splitlines():
        cells = [cell.strip('"') for cell in line.split(",")]
        if len(cells) >= 2 and cells[0] in ("SET", "GET"):
            rates[cells[0]] = float(cells[1])
    return {"run": f"{requests}:{clients}:{pipeline}", "commands": commands,
            "smr_requests": host.requests, "cpu_s": round(cpu, 3),
            "cpu_us_per_command": round(1e6 * cpu / max(1, commands), 2), "ops_per_s": rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="20000:1:1,40000:16:1,80000:16:16")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    if shutil.which("redis-benchmark") is None:
        raise SystemExit("probe_resp_front_cpu: needs redis-benchmark (redis-tools)")
    if args.loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    results = []
    for spec in args.runs.split(","):
        requests, clients, pipeline = (int(part) for part in spec.split(":"))
        results.append(asyncio.run(one_run(requests, clients, pipeline)))
    print(json.dumps({"tree": os.path.dirname(os.path.dirname(
        sys.modules["replicaio"].__file__ or "")), "load": os.getloadavg(),
        "results": results}))


if __name__ == "__main__":
    main()
