"""The command line's one progress display (ingest, reanalyze, compact).

On a terminal it is a rich bar (rich is a declared dependency); anywhere else
(a log file, a pipe, a scheduler's capture) a complete line at most every few
seconds and at the end: ``ingest: 40/120 (33%), 85/s, 1 s left``. Without a
total (an offline compaction) it is a spinner on a terminal and nothing else.
It is a `waveform.reanalyze.progress.Progress`, so a re-analysis job drives it
as it drives any other display; `advance` may be called from several threads.
"""

from __future__ import annotations

import threading
import time
from typing import IO, Any

from waveform.reanalyze.progress import Progress, eta

__all__ = ["Bar", "is_terminal"]


def is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


class Bar(Progress):
    """``label``'s progress on ``stream``; ``enabled=False`` shows nothing (notes
    still print)."""

    def __init__(self, stream: IO[str], label: str, *, unit: str = "", enabled: bool = True,
                 every_s: float = 5.0) -> None:
        super().__init__(stream)
        self.label = label
        self.unit = f" {unit}" if unit else ""
        self.enabled = enabled
        self.every_s = every_s
        self._lock = threading.Lock()
        self._last = 0.0
        self._rich: Any = None
        self._task: Any = None

    def start(self, total: int | None) -> None:
        with self._lock:
            super().start(total or 0)
            self._last = time.monotonic()
            if not (self.enabled and is_terminal(self.stream)):
                return
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                SpinnerColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            if self._rich is None:
                columns: list[Any] = ([TextColumn("{task.description}"), BarColumn(),
                                       MofNCompleteColumn(), TimeRemainingColumn()]
                                      if total else
                                      [SpinnerColumn(), TextColumn("{task.description}")])
                self._rich = RichProgress(*columns, console=Console(file=self.stream),
                                          transient=False)
                self._rich.start()
            self._task = self._rich.add_task(self.label, total=total or None)

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            if self._rich is not None:
                self._rich.update(self._task, completed=self.done)
            else:
                self._show()

    def _show(self) -> None:
        if not self.enabled or not self.total:
            return
        now = time.monotonic()
        if now - self._last < self.every_s and self.done < self.total:
            return
        self._last = now
        pct = 100 * self.done // max(self.total, 1)
        print(f"{self.label}: {self.done}/{self.total}{self.unit} ({pct}%), "
              f"{self.rate:.0f}{self.unit}/s, "
              f"{eta(self.done, self.total, now - self._t0)} left",
              file=self.stream, flush=True)

    def note(self, message: str) -> None:
        if self._rich is not None:
            self._rich.console.print(f"{self.label}: {message}", markup=False,
                                     highlight=False)
        else:
            print(f"{self.label}: {message}", file=self.stream, flush=True)

    def close(self) -> None:
        with self._lock:
            if self._rich is not None:
                self._rich.stop()
                self._rich = None
