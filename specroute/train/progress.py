"""Progress display of a study: one bar for the study, one for the current run, with loss and ETA.

Without a console (library use, tests) every method does nothing.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


class StudyProgress:
    """Two rich progress bars: ``study`` (every step of every stage left to run) and ``run``."""

    def __init__(self, console: Console | None, total_steps: int):
        self.console = console
        self._progress: Progress | None = None
        if console is None:
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[loss]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, transient=False, refresh_per_second=4,
        )
        self._study: TaskID = self._progress.add_task("study", total=total_steps, loss="")
        self._run: TaskID | None = None

    def __enter__(self) -> StudyProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()

    def start_run(self, name: str, steps: int, done: int = 0) -> None:
        if self._progress is None:
            return
        if self._run is not None:
            self._progress.remove_task(self._run)
        self._run = self._progress.add_task(name, total=steps, completed=done, loss="")

    def step(self, step: int, record: dict[str, Any]) -> None:
        if self._progress is None or self._run is None:
            return
        loss = f"loss {record.get('loss', float('nan')):.3f}  lm {record.get('lm', float('nan')):.3f}"
        self._progress.update(self._run, completed=step, loss=loss)
        self._progress.advance(self._study)

    def note(self, message: str) -> None:
        if self.console is not None:
            self.console.print(message, highlight=False)
