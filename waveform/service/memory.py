"""Giving memory back to the system after large objects pass through.

gRPC receives a large message as many small slices before it is joined and
parsed, and the server's threads each allocate from their own glibc arena. Freed,
that memory stays in the arenas (fragmented between live small blocks) instead of
returning to the system: resident memory climbed by hundreds of megabytes over a
few gigabytes of large rejected objects and stayed there, although nothing held
them. glibc's ``malloc_trim(0)`` releases the free pages of every arena
(``madvise``); `Trimmer` calls it on a background thread once enough bytes of
received objects have been let go, at most once a second. Elsewhere than glibc
it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Callable

__all__ = ["TRIM_AFTER_BYTES", "Trimmer", "malloc_trim"]

#: Bytes of received objects let go between two trims.
TRIM_AFTER_BYTES = 256 << 20


def _libc_trim() -> Callable[[], None] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def run() -> None:
        trim(0)

    return run


_TRIM = _libc_trim()


def malloc_trim() -> bool:
    """Return free heap pages to the system now; False where there is no way to."""
    if _TRIM is None:
        return False
    _TRIM()
    return True


class Trimmer:
    """Trims (`malloc_trim`) after every ``after_bytes`` let go, at most once a
    ``min_interval_s``, on its own daemon thread (a trim walks every arena)."""

    def __init__(self, after_bytes: int = TRIM_AFTER_BYTES, min_interval_s: float = 1.0
                 ) -> None:
        self.after_bytes = after_bytes
        self.min_interval_s = min_interval_s
        self.trims = 0
        self._freed = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        if _TRIM is not None:
            self._thread = threading.Thread(target=self._run, name="waveform-trim", daemon=True)
            self._thread.start()

    def released(self, n: int) -> None:
        with self._lock:
            self._freed += n
            if self._freed >= self.after_bytes:
                self._freed = 0
                self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if self._closed:
                return
            self._wake.clear()
            malloc_trim()
            self.trims += 1
            # Pace the trims; whatever is let go meanwhile wakes the next one.
            self._wake.wait(self.min_interval_s)
            if self._closed:
                return

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
