"""The read side of an `IngestStream`: requests read ahead of their answers.

A reader thread takes requests off the stream as they arrive and submits each to
the intake at once, so that the objects of many streams share group commits and
a client that sends in lock step is not starved; the handler answers them in
order. Read-ahead is bounded twice: by `STREAM_WINDOW` requests and by the
server's `InflightBudget` in bytes (the reader waits for room, and gRPC's flow
control then holds the sender back), so memory does not grow with what a client
sends. A request over the object size limit is answered as that request's error
and the stream goes on.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

from waveform.errors import without_traceback
from waveform.model import Identity
from waveform.service._proto.waveform.v1 import archive_pb2 as pb
from waveform.service.intake import failed, oversized

if TYPE_CHECKING:
    from waveform.service.handlers import EcgArchive
    from waveform.store import IngestResult

__all__ = ["STREAM_WINDOW", "Idle", "Pending", "StreamReader"]

#: Requests of one IngestStream in flight at once (read ahead of the responses).
STREAM_WINDOW = 512
#: Bytes of the budget a stream takes before reading its first request.
_FIRST_RESERVE = 1 << 20


@dataclass(slots=True)
class Pending:
    """A request read and submitted, waiting for its answer: its object's bytes
    (taken from the message once: each read of a protobuf bytes field is a copy)
    and whether it asked for the summary; ``held`` bytes of the in-flight budget
    are its until `StreamReader.done`."""

    data: bytes
    wait_for_summary: bool
    future: Future[IngestResult]
    held: int

    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


class Idle:
    """The stream sent nothing for the idle limit."""


class StreamReader:
    """Reads ``requests`` on its own thread; `next` hands them over in order."""

    def __init__(self, service: EcgArchive, requests: Iterator[pb.IngestRequest],
                 identity: Identity) -> None:
        self._service = service
        self._requests = requests
        self._identity = identity
        self._queue: queue.Queue[Pending | BaseException | None] = queue.Queue(STREAM_WINDOW)
        self._closed = threading.Event()
        #: Requests read so far, and when the last one arrived (monotonic seconds).
        self.count = 0
        self.last_read = time.monotonic()
        self._thread = threading.Thread(target=self._read, name="ingest-stream-reader",
                                         daemon=True)
        self._thread.start()

    def _read(self) -> None:
        budget = self._service.intake.budget
        requests = iter(self._requests)
        # Room for a message like the previous one is taken before the next is read,
        # so that what a stream holds is counted before it arrives (a client that
        # turns from small objects to large ones overshoots by one message).
        reserve = _FIRST_RESERVE
        try:
            while True:
                if not self._acquire(reserve):
                    return
                try:
                    req = next(requests)
                except BaseException:
                    budget.release(reserve)
                    raise
                self.count += 1
                self.last_read = time.monotonic()
                data, wait = req.dicom, req.wait_for_summary
                del req  # the message's own copy of the bytes goes now
                size = len(data)
                too_large = oversized(size, self._service.max_message_bytes,
                                      f"request {self.count} of this stream")
                if too_large is not None:  # answered as its own error, its bytes let go
                    digest = hashlib.sha256(data).hexdigest()
                    del data
                    budget.release(reserve)
                    self._put(_Refused(b"", False, failed(too_large), 0, digest))
                    continue
                if size > reserve:
                    if not self._acquire(size - reserve):
                        budget.release(reserve)
                        return
                else:
                    budget.release(reserve - size)
                future = self._service.intake.submit(data, self._identity)
                self._put(Pending(data, wait, future, size))
                del data
                reserve = max(size, _FIRST_RESERVE)
        except StopIteration:
            self._put(None)
        except BaseException as exc:
            self._put(without_traceback(exc))

    def _acquire(self, n: int) -> bool:
        """Wait for ``n`` bytes of the budget; False if the stream closed meanwhile."""
        budget = self._service.intake.budget
        while not budget.acquire(n, timeout=0.25):
            if self._closed.is_set():
                return False
        if self._closed.is_set():
            budget.release(n)
            return False
        return True

    def _put(self, item: Pending | BaseException | None) -> None:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.25)
                return
            except queue.Full:
                continue
        if isinstance(item, Pending):
            self._service.intake.budget.release(item.held)

    def next(self, idle_s: float) -> Pending | BaseException | Idle | None:
        """The next request read (None: the client half-closed), the transport's
        error, or `Idle` when nothing arrived for ``idle_s`` seconds."""
        while True:
            wait = self.last_read + idle_s - time.monotonic()
            try:
                return self._queue.get(timeout=max(wait, 0.001))
            except queue.Empty:
                if time.monotonic() - self.last_read >= idle_s:
                    return Idle()

    def done(self, item: Pending) -> None:
        self._service.intake.budget.release(item.held)
        item.held = 0

    def close(self) -> None:
        """Stop reading; give back the budget of requests never answered."""
        self._closed.set()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Pending):
                self.done(item)


@dataclass(slots=True)
class _Refused(Pending):
    """A request refused before submission (too large): its digest kept, not its bytes."""

    digest: str = ""

    def sha256(self) -> str:
        return self.digest
