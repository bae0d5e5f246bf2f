"""Time for the archive's rules: the release delay and the audit trail need "now".

The service receives a clock (a seam): production uses `utcnow`, tests a
`ManualClock` they move forward to pass a release delay.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable

__all__ = ["Clock", "ManualClock", "utcnow"]

Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ManualClock:
    """A clock that stands still until moved (``advance``); always timezone-aware UTC."""

    def __init__(self, start: dt.datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock needs a timezone-aware start (UTC)")
        self._now = start.astimezone(dt.UTC)
        self._lock = threading.Lock()

    def __call__(self) -> dt.datetime:
        with self._lock:
            return self._now

    def advance(self, **delta: float) -> dt.datetime:
        """Move forward by ``datetime.timedelta(**delta)``; the new time."""
        step = dt.timedelta(**delta)
        if step < dt.timedelta(0):
            raise ValueError("time does not go backwards")
        with self._lock:
            self._now += step
            return self._now
