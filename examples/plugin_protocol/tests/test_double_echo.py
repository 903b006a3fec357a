"""The protocol's own tests: replicaio's conformance kit, and the planted bug caught."""

from replicaio.testing.conformance import assert_conformant, check_protocol


def test_double_echo_conforms() -> None:
    assert_conformant("double-echo", seeds=3)


def test_the_planted_bug_is_caught() -> None:
    report = check_protocol("double-echo-weak", seeds=10, processes=False)
    assert [check.name for check in report.failures()] == ["checkers"]
