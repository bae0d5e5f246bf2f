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
_EMPTY = pb.IngestRequest()


@dataclass(slots=True)
class Pending:
    """A request read and submitted, waiting for its answer; ``held`` bytes of the
    in-flight budget are its until `StreamReader.done`."""

    request: pb.IngestRequest
    future: Future[IngestResult]
    held: int

    def sha256(self) -> str:
        return hashlib.sha256(self.request.dicom).hexdigest()


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
        try:
            for req in self._requests:
                self.count += 1
                self.last_read = time.monotonic()
                size = len(req.dicom)
                too_large = oversized(size, self._service.max_message_bytes,
                                      f"request {self.count} of this stream")
                if too_large is not None:  # answered as its own error, its bytes let go
                    digest = hashlib.sha256(req.dicom).hexdigest()
                    del req
                    self._put(_Refused(_EMPTY, failed(too_large), 0, digest))
                    continue
                while not budget.acquire(size, timeout=0.25):
                    if self._closed.is_set():
                        return
                if self._closed.is_set():
                    budget.release(size)
                    return
                self._put(Pending(req, self._service.intake.submit(req.dicom, self._identity),
                                  size))
            self._put(None)
        except BaseException as exc:
            self._put(without_traceback(exc))

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
