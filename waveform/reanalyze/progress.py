"""How a running job shows where it is: a bar on a terminal, plain lines elsewhere.

The bar is tqdm's when tqdm is installed, else one line redrawn in place; off a
terminal (a log file, a pipe, a scheduler's capture) a line is printed at most
every few seconds and at the end, each complete on its own, with the count, the
rate and the time left.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import IO, Any

__all__ = ["Bar", "LogLines", "Progress", "progress_for"]


def _eta(done: int, total: int, elapsed: float) -> str:
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
              f"{_eta(self.done, self.total, now - self._t0)} left",
              file=self.stream, flush=True)


class Bar(Progress):
    """A bar redrawn in place: tqdm's if installed, else one line of our own."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream)
        self._tqdm: Any = None

    def start(self, total: int) -> None:
        super().start(total)
        try:
            from tqdm import tqdm
        except ImportError:
            self._tqdm = None
        else:
            self._tqdm = tqdm(total=total, unit="ECG", file=self.stream, desc="reanalyze",
                              smoothing=0.1)

    def advance(self, n: int) -> None:
        if self._tqdm is not None:
            self.done += n
            self._tqdm.update(n)
        else:
            super().advance(n)

    def _show(self) -> None:
        width = 30
        filled = width * self.done // max(self.total, 1)
        line = (f"\rreanalyze [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}"
                f" {self.rate:.0f} ECGs/s, "
                f"{_eta(self.done, self.total, time.monotonic() - self._t0)} left ")
        self.stream.write(line)
        self.stream.flush()

    def note(self, message: str) -> None:
        if self._tqdm is not None:
            self._tqdm.write(f"reanalyze: {message}", file=self.stream)
        elif not self.total:  # before the bar is drawn
            super().note(message)
        else:
            self.stream.write("\r\033[K")
            super().note(message)
            self._show()

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
        elif self.total:
            self.stream.write("\n")
            self.stream.flush()


def progress_for(stream: IO[str]) -> Progress:
    """A bar when ``stream`` is a terminal, plain lines otherwise."""
    isatty = getattr(stream, "isatty", None)
    return Bar(stream) if isatty is not None and isatty() else LogLines(stream)
