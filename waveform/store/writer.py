"""Group commit: many concurrent requests, one durable catalog commit.

Callers put jobs on a queue and wait on futures. One writer thread takes the
first job, keeps collecting until ``max_objects`` objects are queued or
``max_delay_s`` has passed since the first, and hands the whole group to the
``flush`` function (which writes, fsyncs and commits). Every future of the group
gets the result of that one commit: all succeed, or all fail with the same error.
A `DurabilityError` stops the writer: every queued and later request fails with
it, because nothing more can be promised durable.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from waveform.errors import DurabilityError, Overloaded, StorageError

__all__ = ["GroupCommitWriter", "Job"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass(slots=True)
class Job(Generic[T, R]):
    """Items that must commit together, and one future per item."""

    items: Sequence[T]
    futures: list[Future[R]] = field(default_factory=list)


_STOP: Any = object()


class GroupCommitWriter(Generic[T, R]):
    """A queue and one thread that flushes groups of jobs.

    ``flush(items)`` returns one result per item or raises; it is only ever
    called from the writer thread.
    """

    def __init__(
        self,
        flush: Callable[[list[T]], list[R]],
        *,
        max_objects: int = 256,
        max_delay_s: float = 0.005,
        max_queued: int = 10_000,
        name: str = "waveform-writer",
    ) -> None:
        self._flush = flush
        self.max_objects = max_objects
        self.max_delay_s = max_delay_s
        self.max_queued = max_queued
        self._queue: queue.Queue[Job[T, R]] = queue.Queue()
        self._queued = 0
        self._lock = threading.Lock()
        self._stopped: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def stopped(self) -> BaseException | None:
        """The error that stopped the writer, if any."""
        return self._stopped

    def submit(self, items: Sequence[T]) -> list[Future[R]]:
        """Queue ``items`` to commit together; one future per item."""
        job: Job[T, R] = Job(items, [Future() for _ in items])
        with self._lock:
            if self._stopped is not None:
                raise DurabilityError(f"the writer stopped after an earlier failure: "
                                      f"{self._stopped}") from self._stopped
            if self._closed:
                raise StorageError("the store is closed")
            if self._queued + len(items) > self.max_queued:
                raise Overloaded(
                    f"{self._queued} objects are waiting to be written (limit "
                    f"{self.max_queued}); retry later"
                )
            self._queued += len(items)
            self._queue.put(job)
        return job.futures

    def close(self, timeout: float | None = None) -> None:
        """Flush what is queued, then stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(timeout)

    def _collect(self, first: Job[T, R]) -> tuple[list[Job[T, R]], bool]:
        jobs = [first]
        n = len(first.items)
        deadline = time.monotonic() + self.max_delay_s
        while n < self.max_objects:
            timeout = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return jobs, True
            jobs.append(job)
            n += len(job.items)
        return jobs, False

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            jobs, stop = self._collect(first)
            items = [it for j in jobs for it in j.items]
            futures = [f for j in jobs for f in j.futures]
            with self._lock:
                self._queued -= len(items)
            try:
                results = self._flush(items)
            except BaseException as e:  # every request in the group fails with it
                if isinstance(e, DurabilityError):
                    with self._lock:
                        self._stopped = e
                for f in futures:
                    f.set_exception(e)
                if isinstance(e, DurabilityError):
                    self._drain(e)
                    return
                continue
            for f, r in zip(futures, results, strict=True):
                f.set_result(r)
        self._drain(StorageError("the store was closed before this object was written"))

    def _drain(self, error: BaseException) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is _STOP:
                continue
            for f in job.futures:
                f.set_exception(error)
