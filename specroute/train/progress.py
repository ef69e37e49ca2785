"""Progress display of a study: one bar for the study and one per run in flight, with loss, tokens/s,
MFU (:mod:`specroute.flops.mfu`) and ETA.

Trainers report through ``start_run(name, steps, done)``, ``update(name, step, record)`` and
``end_run(name)``. :class:`StudyProgress` draws them with rich (nothing without a console);
:class:`QueueProgress` forwards them from a worker process to the parent's :class:`StudyProgress`.
"""

from __future__ import annotations

import queue
from typing import Any

from rich.console import Console
from specroute.flops.mfu import fmt_speed
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


#: What a run's progress line shows of a step's record: its losses, and the tokens/s and MFU of its last
#: steps (:meth:`specroute.train.trainer.Trainer.speed`).
PROGRESS_FIELDS = ("loss", "lm", "tokens_per_s", "mfu")


class StudyProgress:
    """Rich progress bars: ``study`` (every step left to run, all stages) and one per running run."""

    def __init__(self, console: Console | None, total_steps: int):
        self.console = console
        self._progress: Progress | None = None
        self._runs: dict[str, TaskID] = {}
        if console is None:
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[loss]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, transient=False, refresh_per_second=4,
        )
        self._study: TaskID = self._progress.add_task("study", total=total_steps, loss="")

    def __enter__(self) -> StudyProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()

    def start_run(self, name: str, steps: int, done: int = 0) -> None:
        if self._progress is not None:
            self._runs[name] = self._progress.add_task(name, total=steps, completed=done, loss="")

    def update(self, name: str, step: int, record: dict[str, Any]) -> None:
        if self._progress is None or name not in self._runs:
            return
        loss = f"loss {record.get('loss', float('nan')):.3f} lm {record.get('lm', float('nan')):.3f}"
        if record.get("tokens_per_s") is not None:
            loss += f"  {fmt_speed(record['tokens_per_s'], record.get('mfu'))}"
        self._progress.update(self._runs[name], completed=step, loss=loss)
        self._progress.advance(self._study)

    def end_run(self, name: str) -> None:
        if self._progress is not None and name in self._runs:
            self._progress.remove_task(self._runs.pop(name))

    def note(self, message: str) -> None:
        if self.console is not None:
            self.console.print(message, highlight=False)

    def drain(self, q: Any) -> None:
        """Apply every message a :class:`QueueProgress` has put on ``q`` so far."""
        while True:
            try:
                method, args = q.get_nowait()
            except queue.Empty:
                return
            getattr(self, method)(*args)


class QueueProgress:
    """The progress interface of a worker process: puts each call on a queue for the parent."""

    def __init__(self, q: Any):
        self.q = q

    def start_run(self, name: str, steps: int, done: int = 0) -> None:
        self.q.put(("start_run", (name, steps, done)))

    def update(self, name: str, step: int, record: dict[str, Any]) -> None:
        self.q.put(("update", (name, step, {k: record.get(k) for k in PROGRESS_FIELDS})))

    def end_run(self, name: str) -> None:
        self.q.put(("end_run", (name,)))

    def note(self, message: str) -> None:
        self.q.put(("note", (message,)))


class TokenisingProgress:
    """A bar for tokenising a corpus into shards (tokens so far of the target, when there is one);
    shown only once tokenising has begun (nothing when the shards are cached)."""

    def __init__(self, console: Console | None):
        self.console = console
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> TokenisingProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, tokens: int, target: int | None) -> None:
        if self.console is None:
            return
        if self._progress is None:
            self._progress = Progress(TextColumn("[bold]tokenising"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                      console=self.console, refresh_per_second=2)
            self._task = self._progress.add_task("tokenising", total=target)
            self._progress.start()
        self._progress.update(self._task, completed=tokens)
