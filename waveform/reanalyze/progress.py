"""How a running job shows where it is: the `Progress` interface, and plain lines.

`LogLines` prints a line at most every few seconds and at the end, each complete
on its own, with the count, the rate and the time left (a log file, a pipe, a
scheduler's capture). The command line's bar on a terminal is
`waveform.cli.progress.Bar`, another `Progress`; the service streams progress as
messages (`waveform.service.reanalysis`).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import IO

__all__ = ["LogLines", "Progress", "eta", "progress_for"]


def eta(done: int, total: int, elapsed: float) -> str:
    if done <= 0 or elapsed <= 0:
        return "?"
    left = (total - done) * elapsed / done
    return f"{left:.0f} s" if left < 120 else f"{left / 60:.0f} min"


class Progress(ABC):
    """ECGs done out of ``total``; `note` reports an event (a commit, a retry)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.total = 0
        self.done = 0
        self._t0 = time.monotonic()

    def start(self, total: int) -> None:
        self.total, self.done, self._t0 = total, 0, time.monotonic()

    @property
    def rate(self) -> float:
        return self.done / max(time.monotonic() - self._t0, 1e-9)

    def advance(self, n: int) -> None:
        self.done += n
        self._show()

    @abstractmethod
    def _show(self) -> None: ...

    def note(self, message: str) -> None:
        print(f"reanalyze: {message}", file=self.stream, flush=True)

    def close(self) -> None:
        return None


class LogLines(Progress):
    """A full line every ``every_s`` seconds and at the end (not a terminal)."""

    def __init__(self, stream: IO[str], every_s: float = 5.0) -> None:
        super().__init__(stream)
        self.every_s = every_s
        self._last = 0.0

    def _show(self) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s and self.done < self.total:
            return
        self._last = now
        pct = 100 * self.done // max(self.total, 1)
        print(f"reanalyze: {self.done}/{self.total} ECGs ({pct}%), {self.rate:.0f} ECGs/s, "
              f"{eta(self.done, self.total, now - self._t0)} left",
              file=self.stream, flush=True)


def progress_for(stream: IO[str]) -> Progress:
    """The display of a job run as a library call: plain lines on ``stream``. The
    command line passes its own bar (`waveform.cli.progress.Bar`)."""
    return LogLines(stream)
