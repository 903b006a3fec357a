"""The protocol conformance kit for a test suite (yours or ours).

    from replicaio.testing.conformance import assert_conformant

    def test_my_protocol_conforms() -> None:
        assert_conformant("double-echo", seeds=5)

runs every standard check of :mod:`replicaio.conformance` (registration,
purity, determinism in this process and across string hash seeds, replay of
every node, a declared footprint bound, the checkers on ``seeds`` seeds under
every fault) and fails with each failed check's detail and reproduce line.
"""

from __future__ import annotations

from replicaio.conformance import (
    Check,
    ConformanceReport,
    check_protocol,
    conformant_protocols,
)

__all__ = ["Check", "ConformanceReport", "assert_conformant", "conformant_protocols"]


def assert_conformant(name: str, *, seeds: int = 5, first_seed: int = 1,
                      processes: bool = True) -> ConformanceReport:
    """Run the kit on protocol ``name``; raise ``AssertionError`` naming every failed
    check (with its reproduce line) unless all pass. Returns the report."""
    report = check_protocol(name, seeds=seeds, first_seed=first_seed, processes=processes)
    if not report.passed:
        lines = [f"{name} does not conform:"]
        for check in report.failures():
            lines.append(f"  {check.name}: {check.detail}")
            if check.reproduce:
                lines.append(f"    reproduce: {check.reproduce}")
        raise AssertionError("\n".join(lines))
    return report
