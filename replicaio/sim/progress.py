"""A progress bar for long runs of many simulations (``swarm``, ``explore``).

Drawn with ``rich`` on **stderr**, and only when stderr is a terminal: a
script that reads stdout (``--json``) or a CI log never sees it. It shows
runs done out of the total, the rate (runs per second), failures so far and
the time remaining at that rate; it disappears when the work is done (the
command's own summary follows).
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import IO, Any


class RunProgress:
    """``with RunProgress("bracha swarm", total, unit="seeds") as bar: bar.advance(failed)``."""

    def __init__(self, label: str, total: int, *, unit: str = "runs",
                 stream: IO[str] | None = None, force: bool = False) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = force or self.stream.isatty()
        self.failures = 0
        self.progress: Any = None
        self.task: Any = None

    def __enter__(self) -> RunProgress:
        if not self.enabled:
            return self
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        console = Console(file=self.stream, force_terminal=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(f"{{task.fields[rate]}} {self.unit}/s"),
            TextColumn("{task.fields[failed]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.progress.__enter__()
        self.task = self.progress.add_task(self.label, total=self.total, rate="-",
                                           failed=self.failed_text())
        return self

    def failed_text(self) -> str:
        if not self.failures:
            return "[green]0 failures"
        return f"[bold red]{self.failures} failure{'s' if self.failures != 1 else ''}"

    def advance(self, failed: bool = False, steps: int = 1) -> None:
        """``steps`` more runs done; ``failed`` if one of them failed."""
        if failed:
            self.failures += 1
        if self.progress is None:
            return
        self.progress.advance(self.task, steps)
        task = self.progress.tasks[0]
        speed = task.speed
        self.progress.update(self.task, rate=f"{speed:.1f}" if speed else "-",
                             failed=self.failed_text())

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self.progress is not None:
            self.progress.__exit__(kind, error, trace)
