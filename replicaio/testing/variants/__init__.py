"""Deliberately broken variants of the protocols, to prove the checkers bite.

A checker is only trusted once a broken protocol makes it fail. Each variant
here is a small override of the real protocol (a replaced instance function,
a subclass replacing one method), never a switch inside the protocol's own
modules: production code has no broken branches to take by mistake.

* :mod:`replicaio.testing.variants.broadcast` — ``bracha-weak-echo`` and
  ``echo-weak`` (quorums below the bound), ``bracha-opens-own`` (the escaped
  bug of issue 7: a peer's message opens this node's own next instance) and
  ``bracha-unwindowed`` (no window: unbounded growth), the last two for the
  adversary's rules (docs/adversary.md);
* :mod:`replicaio.testing.variants.raft` — ``raft-commit-previous-term``,
  ``raft-forget-vote``, ``raft-follower-reads``, ``raft-trust-damaged-tail``,
  ``raft-early-round-answer-with-match`` and more (``RAFT_VARIANTS``);
* :mod:`replicaio.testing.variants.instances` — the multi-instance component
  with a small window (garbage collection within a few requests) and
  ``WatermarkLastInstances``, the collection write order fixed in issue 7
  (caught by the crash-prefix mode, ``replicaio.sim.prefixes``).

The assembly (``replicaio.assembly``) names them next to the correct
protocols, marked broken, so the simulator, swarms and scenarios run them
like any other protocol.
"""
