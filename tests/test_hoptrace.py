"""The opt-in hop stamps of a live node (replicaio.runtime.hoptrace): off unless
asked, bounded, and written one line per stamp."""

from __future__ import annotations

from pathlib import Path

import pytest

from replicaio.runtime import hoptrace


def test_off_unless_the_environment_names_a_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(hoptrace.ENV, raising=False)
    assert hoptrace.from_environment(0) is None
    monkeypatch.setenv(hoptrace.ENV, str(tmp_path))
    trace = hoptrace.from_environment(2)
    assert trace is not None and trace.path == tmp_path / "node2.hops"


def test_bounded_and_written(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(hoptrace, "EVENTS_MAX", 3)
    trace = hoptrace.HopTrace(tmp_path / "out" / "node0.hops")
    for kind in (hoptrace.COMMAND, hoptrace.BATCH, hoptrace.STEPPED, hoptrace.REPLY):
        trace.stamp(kind, 7)
    assert len(trace.events) == 3 and trace.dropped == 1
    trace.write()
    lines = trace.path.read_text().splitlines()
    assert lines[0] == "# dropped 1"
    stamps = [line.split() for line in lines if not line.startswith("#")]
    assert [int(kind) for _, kind, _ in stamps] == [hoptrace.COMMAND, hoptrace.BATCH,
                                                    hoptrace.STEPPED]
    times = [int(at) for at, _, _ in stamps]
    assert times == sorted(times)


def test_garbage_collections_stamped_until_untraced(tmp_path: Path) -> None:
    """Every collection's start and end while traced (its generation in both), none
    after ``untrace_gc``: a slow request can be matched with the pauses of its nodes."""
    import gc

    trace = hoptrace.HopTrace(tmp_path / "node0.hops")
    trace.trace_gc()
    trace.trace_gc()  # once only
    try:
        gc.collect(1)
    finally:
        trace.untrace_gc()
    traced = len(trace.events)
    gc.collect(0)
    assert len(trace.events) == traced
    kinds = [(kind, arg % 10) for _, kind, arg in trace.events]
    # (an automatic young collection may have come first)
    assert kinds[-2:] == [(hoptrace.GC_START, 1), (hoptrace.GC_END, 1)]
    assert {kind for kind, _ in kinds} == {hoptrace.GC_START, hoptrace.GC_END}
    trace.untrace_gc()  # idempotent


@pytest.mark.parametrize("marks_in_log", [True, False])
def test_the_marks_flush_is_stamped_where_the_mark_lives(tmp_path: Path,
                                                         marks_in_log: bool) -> None:
    """A lone batch's two flushes each get their stamp, the log's (``SYNC_IN`` ->
    ``LOG_FLUSHED``) and then the mark's (``MARKED``), with the mark in a slot of
    the log (ADR 0045, the default) as in the superblock, whether the host syncs
    in one call or pipelined (``write_sealed``, then ``mark_flushed``). A mark
    carried by the next batch's flush writes nothing and is stamped at once."""
    from replicaio.storage.file import FileStorage

    trace = hoptrace.HopTrace(tmp_path / "node0.hops")
    with FileStorage(tmp_path / "data", marks_in_log=marks_in_log) as storage:
        trace.trace_storage(storage)
        storage.put("a", b"1")
        storage.sync()  # one call: write and flush, then the mark
        storage.put("b", b"2")
        sealed = storage.seal()
        assert sealed is not None
        storage.write_sealed(sealed)  # pipelined, the log thread's two calls
        assert storage.mark_flushed() == sealed.batch
        kinds = [kind for _, kind, _ in trace.events]
        assert kinds == [hoptrace.SYNC_IN, hoptrace.LOG_FLUSHED, hoptrace.MARKED] * 2
        assert storage.batch_marked == sealed.batch
