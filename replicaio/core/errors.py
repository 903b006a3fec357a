"""The three kinds of failure, kept apart (after h11 and TIGER_STYLE).

* A peer's misbehaviour is expected: the node drops the input, counts it under
  a stable reason, and goes on. It is never an exception that escapes a step.
* A caller's misuse (bad configuration, calling an API wrongly) raises a
  subclass of :class:`UsageError` at the call.
* Our own bug fails an ``assert`` and stops the node.
"""

from __future__ import annotations


class ReplicaioError(Exception):
    """Base class of every error replicaio raises on purpose."""


class UsageError(ReplicaioError):
    """The caller used an API wrongly; the message says how to fix it."""


class ConfigError(UsageError):
    """A configuration is invalid (for example ``n < 3f + 1`` for a BFT protocol)."""


class Cancelled(BaseException):
    """Thrown into a task whose scope was cancelled.

    A ``BaseException`` so that ``except Exception`` in protocol code does not
    swallow it by accident.
    """
