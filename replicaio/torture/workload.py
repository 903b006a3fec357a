"""The torture's clients: redis-py connections recording one history the whole run.

Each client thread has its own connection to a node it picks at random,
issues one operation at a time (``put``/``get``/``append``/``cas``/``incr`` on
a few shared keys, and ``put`` of a fresh *acknowledged* key once in a while)
and records it in a shared :class:`~replicaio.check.history.HistoryRecorder`
(the JSON-lines format of ``docs/history-format.md``): ``ok`` with what it
returned, ``fail`` for a read refused with ``-TRYAGAIN`` (it had no effect),
``info`` for a write refused or any lost connection or timeout (its effect is
unknown). After an ``info`` the client continues under a new id and, after a
lost connection, on a new connection to a random node.

Acknowledged keys are written once each with a unique value; every one whose
``SET`` returned ``OK`` must be read back at the end (:meth:`read_back`).
Every call is bounded by the client's socket timeouts; threads stop when
``stop`` is set and are joined with a timeout.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from replicaio.check.history import HistoryRecorder, Operation, PendingOperation

REGISTERS = ("r0", "r1", "r2", "r3")
COUNTERS = ("c0", "c1")
CLIENTS_MAX = 256
SOCKET_TIMEOUT_S = 3.0
CONNECT_TIMEOUT_S = 1.0
ACKNOWLEDGED_SHARE = 0.15
READ_BACK_BATCH = 64
JOIN_TIMEOUT_S = 3 * SOCKET_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """The files a TLS client presents and trusts (``certs init``'s ``client.*``)."""

    ca_file: str
    cert_file: str
    key_file: str


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    tls: ClientCertificate | None = None  # mutual TLS on the client port


def connect(endpoint: Endpoint, timeout_s: float = SOCKET_TIMEOUT_S) -> redis.Redis:
    """A redis-py client with its retries off: every failure is recorded, not hidden."""
    tls = endpoint.tls
    if tls is None:
        return redis.Redis(
            host=endpoint.host, port=endpoint.port, socket_timeout=timeout_s,
            socket_connect_timeout=CONNECT_TIMEOUT_S, retry=Retry(NoBackoff(), 0),
        )
    return redis.Redis(
        host=endpoint.host, port=endpoint.port, socket_timeout=timeout_s,
        socket_connect_timeout=CONNECT_TIMEOUT_S, retry=Retry(NoBackoff(), 0),
        ssl=True, ssl_ca_certs=tls.ca_file, ssl_certfile=tls.cert_file,
        ssl_keyfile=tls.key_file, ssl_check_hostname=False,
    )


class Workload:
    """Client threads over ``endpoints``; see the module docstring."""

    def __init__(self, endpoints: Sequence[Endpoint], clients: int, seed: int,
                 clock: Callable[[], float] = time.monotonic, *,
                 timeout_s: float = SOCKET_TIMEOUT_S,
                 acknowledged_share: float = ACKNOWLEDGED_SHARE) -> None:
        if not 1 <= clients <= CLIENTS_MAX:
            raise ValueError(f"clients must be in 1..{CLIENTS_MAX}")
        if not timeout_s > 0:
            raise ValueError("timeout_s must be > 0")
        if not 0 <= acknowledged_share <= 1:
            raise ValueError("acknowledged_share must be in [0, 1]")
        self.endpoints = tuple(endpoints)
        self.timeout_s = timeout_s  # every call's socket timeout
        self.acknowledged_share = acknowledged_share  # of operations: a fresh key's put
        self.recorder = HistoryRecorder(clock)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.acknowledged: dict[str, str] = {}
        self.read_back_failures: list[str] = []  # :meth:`read_back`'s failed MGETs
        self.threads = [
            threading.Thread(target=self.run_client, args=(seed * 1000 + index, index),
                             name=f"torture-client-{index}", daemon=True)
            for index in range(clients)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def finish(self) -> list[str]:
        """Stop the clients; what went wrong in them (threads still alive, errors)."""
        self.stop.set()
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        problems = [f"client thread {t.name} did not stop" for t in self.threads if t.is_alive()]
        return problems + [f"client error: {error!r}" for error in self.errors]

    def operations(self) -> list[Operation]:
        with self.lock:
            return self.recorder.operations()

    def new_client(self) -> int:
        with self.lock:
            return self.recorder.new_client()

    def open(self, rng: random.Random) -> redis.Redis:
        """A connection to a node that answers PING (a refused connect is no operation)."""
        while not self.stop.is_set():
            client = connect(rng.choice(self.endpoints), self.timeout_s)
            try:
                client.ping()
                return client
            except (redis.RedisError, OSError):
                client.close()
                self.stop.wait(0.05)
        raise InterruptedError

    def run_client(self, seed: int, index: int) -> None:
        rng = random.Random(seed)
        seen: dict[str, str] = {}
        try:
            client = self.open(rng)
            actor = self.new_client()
            count = 0
            while not self.stop.is_set():
                count += 1
                status = self.operation(client, actor, rng, seen, f"{index}.{count}")
                if status != "ok":
                    actor = self.new_client()  # after an info: a new id (history rule)
                if status == "lost":
                    client.close()
                    client = self.open(rng)
            client.close()
        except InterruptedError:
            pass
        except BaseException as error:  # reported by finish()
            self.errors.append(error)

    def operation(
        self, client: redis.Redis, actor: int, rng: random.Random, seen: dict[str, str],
        unique: str,
    ) -> str:
        if rng.random() < self.acknowledged_share:
            kind, key, expected = "put", f"a{unique}", None
            value: str | None = f"v{unique}"
        else:
            kind = rng.choice(("put", "get", "append", "cas", "incr", "get"))
            key = rng.choice(COUNTERS if kind == "incr" or (kind == "get" and rng.random() < 0.3)
                             else REGISTERS)
            expected = seen.get(key) if kind == "cas" else None
            if kind == "cas" and expected is None:
                kind = "get"
            value = {"put": f"p{unique}", "append": f"[{unique}]", "cas": f"c{unique}",
                     "incr": "1"}.get(kind)
        with self.lock:
            handle = self.recorder.invoke(actor, kind, key, value, expected=expected)
        try:
            output = execute(client, kind, key, value, expected)
        except redis.ResponseError:
            # -TRYAGAIN and kin: a read had no effect; a write's outcome is unknown.
            self.complete(handle, "fail" if kind == "get" else "info")
            return "error"
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            self.complete(handle, "info")
            return "lost"
        if kind == "get" and output is not None:
            seen[key] = str(output)
        self.complete(handle, "ok", output)
        if kind == "put" and key.startswith("a"):
            with self.lock:
                self.acknowledged[key] = value or ""
        return "ok"

    def complete(self, handle: PendingOperation, status: str, output: Any = None) -> None:
        with self.lock:
            if status == "ok":
                self.recorder.ok(handle, output)
            elif status == "fail":
                self.recorder.fail(handle)
            else:
                self.recorder.info(handle)

    def read_back(self, endpoint: Endpoint, keys: Sequence[str], deadline: float
                  ) -> dict[str, str | None]:
        """Read ``keys`` with ``MGET`` in batches, each recorded as one ``get`` per key
        over the batch's interval (MGET reads them at one point of the log); retries
        refused batches until ``deadline``. Failed attempts and the last error are
        kept in :attr:`read_back_failures` for the report."""
        found: dict[str, str | None] = {}
        self.read_back_failures = []
        keys = list(keys)
        position = 0
        while position < len(keys) and time.monotonic() < deadline:
            batch = keys[position:position + READ_BACK_BATCH]
            actors = [self.new_client() for _ in batch]
            with self.lock:
                handles = [self.recorder.invoke(actor, "get", key)
                           for actor, key in zip(actors, batch, strict=True)]
            client = connect(endpoint)
            try:
                values: Any = client.mget(batch)
            except (redis.RedisError, OSError) as error:
                for handle in handles:
                    self.complete(handle, "info")  # reads: no effect either way
                self.read_back_failures.append(f"{type(error).__name__}: {error}")
                time.sleep(0.2)
                continue
            finally:
                client.close()
            for key, handle, value in zip(batch, handles, values, strict=True):
                found[key] = None if value is None else bytes(value).decode()
                self.complete(handle, "ok", found[key])
            position += len(batch)
        return found

    def ok_count(self) -> int:
        with self.lock:
            return sum(1 for op in self.recorder.operations() if op.status == "ok")


def execute(
    client: redis.Redis, kind: str, key: str, value: str | None, expected: str | None
) -> str | int | None:
    """One operation through redis-py; its output as the history records it."""
    if kind == "get":
        found: Any = client.get(key)
        return None if found is None else bytes(found).decode()
    if kind == "put":
        if client.set(key, value or "") is not True:
            raise redis.ResponseError("SET did not answer OK")
        return None
    if kind == "append":
        client.append(key, value or "")
        return None
    if kind == "incr":
        result: int = client.incr(key)
        return result
    command: Any = client.execute_command
    swapped = command("CAS", key, expected, value)
    return "ok" if swapped == 1 else "fail"


def leader_of(endpoints: Sequence[Endpoint]) -> int | None:
    """The node that says it leads (``INFO replication``), if one answers quickly."""
    for index, endpoint in enumerate(endpoints):
        with contextlib.suppress(redis.RedisError, OSError, KeyError):
            client = connect(endpoint, timeout_s=0.5)
            try:
                if client.info("replication")["role"] == "leader":
                    return index
            finally:
                client.close()
    return None
