"""Group commit: many concurrent requests, one durable catalog commit.

Callers put jobs on a queue and wait on futures. A staging thread takes the first
job, keeps collecting until ``max_objects`` objects are queued or ``max_delay_s``
has passed since the first, and stages the whole group (``stage``: its data files
written and fsynced); a commit thread then commits it (``Staged.commit``: the
catalog transaction) and answers every future of the group with that one
commit's result: all succeed, or all fail with the same error.

The two threads overlap: while the catalog commits group N, group N+1 collects
requests until it is twice as large as group N (or the commit ends), is staged,
and waits; what arrives meanwhile goes to group N+2. So groups grow with the load
(adaptive batching), and a few callers that each wait for their answer (unary
calls) stay in one group instead of being split in two. At most one staged group
waits for its commit. Commits happen in staging order.

A `DurabilityError` stops the writer: every queued and later request fails with
it, and a group staged but not committed is discarded (`Staged.abort`), because
nothing more can be promised durable.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from waveform.errors import DurabilityError, Overloaded, StorageError

__all__ = ["GroupCommitWriter", "Job", "Staged"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass(slots=True)
class Job(Generic[T, R]):
    """Items that must commit together, and one future per item."""

    items: Sequence[T]
    futures: list[Future[R]] = field(default_factory=list)


class Staged(Protocol[R]):
    """A group whose files are durable, waiting for its catalog commit."""

    def commit(self) -> list[R] | list[R | Exception]:
        """Commit; one result per item (raises if the commit fails). An item's result
        may be an exception of its own (that item failed, the others did not)."""

    def abort(self) -> None:
        """Give up the group (the writer stopped before its commit)."""


@dataclass(frozen=True, slots=True)
class _Deferred(Generic[R]):
    """A ``flush`` function's whole work, done at commit time (no staging step)."""

    flush: Callable[[list[Any]], list[R]]
    items: list[Any]

    def commit(self) -> list[R]:
        return self.flush(self.items)

    def abort(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class _Failed:
    """A group whose staging failed: its commit raises the staging error."""

    error: BaseException

    def commit(self) -> list[Any]:
        raise self.error

    def abort(self) -> None:
        return None


_STOP: Any = object()


class GroupCommitWriter(Generic[T, R]):
    """A queue, a staging thread and a commit thread.

    Give either ``flush(items) -> results`` (everything on the commit thread) or
    ``stage(items) -> Staged`` (files on the staging thread, the catalog on the
    commit thread). Either is only ever called from its one thread.
    """

    def __init__(
        self,
        flush: Callable[[list[T]], list[R]] | None = None,
        *,
        stage: Callable[[list[T]], Staged[R]] | None = None,
        max_objects: int = 256,
        max_delay_s: float = 0.005,
        max_queued: int = 10_000,
        name: str = "waveform-writer",
    ) -> None:
        if (flush is None) == (stage is None):
            raise TypeError("give GroupCommitWriter one of flush or stage")
        if stage is None:
            assert flush is not None
            f = flush

            def stage(items: list[T]) -> Staged[R]:
                return _Deferred(f, items)

        self._stage = stage
        self.max_objects = max_objects
        self.max_delay_s = max_delay_s
        self.max_queued = max_queued
        self._queue: queue.Queue[Job[T, R]] = queue.Queue()
        self._staged: queue.Queue[tuple[list[Future[R]], Staged[R]]] = queue.Queue()
        # One staged group may wait for the commit thread; the staging thread takes
        # the slot before it collects a group, the commit thread frees it when it
        # starts committing one.
        self._slot = threading.Semaphore(1)
        self._queued = 0
        #: Objects in the group being committed (0: the commit thread is idle).
        self._committing = 0
        self._lock = threading.Lock()
        self._stopped: BaseException | None = None
        self._closed = False
        self._stager = threading.Thread(target=self._run_stage, name=name + "-stage",
                                         daemon=True)
        self._thread = threading.Thread(target=self._run_commit, name=name, daemon=True)
        self._stager.start()
        self._thread.start()

    @property
    def stopped(self) -> BaseException | None:
        """The error that stopped the writer, if any."""
        return self._stopped

    @property
    def queued(self) -> int:
        """Objects submitted and not yet taken into a group."""
        return self._queued

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
        """Flush what is queued, then stop the threads."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(timeout)
        self._stager.join(timeout)

    def _collect(self, first: Job[T, R]) -> tuple[list[Job[T, R]], bool]:
        """A group: from ``first`` on, until ``max_objects``; while a commit runs,
        until the commit ends or the group is twice the one committing (then
        staging it in parallel pays, and groups double up to ``max_objects``
        under a steady load); when the commit thread is idle, until ``max_delay_s``."""
        jobs = [first]
        n = len(first.items)
        deadline = time.monotonic() + self.max_delay_s
        while n < self.max_objects:
            busy = self._committing
            if busy and n >= 2 * busy:
                break
            left = deadline - time.monotonic()
            if not busy and left <= 0:
                break
            try:
                # While a commit runs, look again every 2 ms whether it has ended.
                job = self._queue.get(timeout=0.002 if busy else left)
            except queue.Empty:
                continue
            if job is _STOP:
                return jobs, True
            jobs.append(job)
            n += len(job.items)
        return jobs, False

    def _run_stage(self) -> None:
        while True:
            self._slot.acquire()
            first = self._queue.get()
            if first is _STOP:
                break
            jobs, stop = self._collect(first)
            items = [it for j in jobs for it in j.items]
            futures = [f for j in jobs for f in j.futures]
            with self._lock:
                self._queued -= len(items)
                stopped = self._stopped
            if stopped is not None:  # the commit thread is shutting the writer down
                _fail(futures, stopped)
                break
            staged: Staged[R]
            try:
                staged = self._stage(items)
            except BaseException as e:  # every request in the group fails with it
                staged = _Failed(e)
                if isinstance(e, DurabilityError):
                    with self._lock:
                        self._stopped = e
                    stop = True
            self._staged.put((futures, staged))
            if stop:
                break
        self._staged.put(_STOP)

    def _run_commit(self) -> None:
        while True:
            item = self._staged.get()
            if item is _STOP:
                break
            futures, staged = item
            self._committing = len(futures)
            self._slot.release()
            try:
                results = staged.commit()
            except BaseException as e:
                self._committing = 0
                if isinstance(e, DurabilityError):
                    with self._lock:
                        if self._stopped is None:
                            self._stopped = e
                    _fail(futures, e)
                    self._shut_down(e)
                    return
                _fail(futures, e)
                continue
            self._committing = 0
            for f, r in zip(futures, results, strict=True):
                if isinstance(r, Exception):
                    f.set_exception(r)
                else:
                    f.set_result(r)
        self._drain(self._stopped or StorageError(
            "the store was closed before this object was written"))

    def _shut_down(self, error: BaseException) -> None:
        """After a durability failure: stop staging, fail everything still waiting."""
        self._queue.put(_STOP)
        self._slot.release()
        self._stager.join()
        while True:
            item = self._staged.get()
            if item is _STOP:
                break
            futures, staged = item
            staged.abort()
            _fail(futures, error)
        self._drain(error)

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


def _fail(futures: list[Future[Any]], error: BaseException) -> None:
    for f in futures:
        f.set_exception(error)
