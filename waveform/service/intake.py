"""The one way an object enters the archive, whichever door it came through.

gRPC `Ingest` and `IngestStream` and the DICOM network's C-STORE all hand the
bytes they received to an `Intake`: `submit` queues the object for the store's
group commit (never raising for what concerns the object: its future does), and
`settle` waits for the commit, records the outcome in the call's audit event
and says whether the caller's organisation controls the ECG (a duplicate of
another organisation's object is described no further: no summary, no
fingerprint, no name).

Memory is bounded whatever callers send: the bytes of every object between its
arrival and its answer are counted against one `InflightBudget`. A unary caller
past the budget is refused at once (`Overloaded`); a stream's reader waits for
room, so that gRPC's flow control holds the sender back. Errors kept in futures
carry no traceback: a traceback holds the frames, and the frames the request's
bytes, until the cycle collector happens to run (rejected 60 MB objects piled
up by the gigabyte).
"""

from __future__ import annotations

import copy
import logging
import threading
import uuid
from concurrent.futures import Future
from typing import TYPE_CHECKING

from waveform.errors import (
    Conflict,
    InvalidArgument,
    Overloaded,
    WaveformError,
    without_traceback,
)
from waveform.model import Identity
from waveform.service.memory import Trimmer
from waveform.service.status import code_of, message_of

if TYPE_CHECKING:
    from waveform.archive import Access, Archive
    from waveform.store import IngestResult, Store

__all__ = ["InflightBudget", "Intake", "failed", "oversized", "request_error"]

log = logging.getLogger("waveform.service")


def failed(exc: BaseException) -> Future[IngestResult]:
    """A future that raises ``exc`` (kept without its traceback)."""
    f: Future[IngestResult] = Future()
    f.set_exception(without_traceback(exc))
    return f


def oversized(size: int, limit: int, which: str) -> InvalidArgument | None:
    """The refusal of an object of ``size`` bytes over ``limit`` (None: it fits);
    ``which`` names the request ("request 7 of this stream")."""
    if size <= limit:
        return None
    return InvalidArgument(
        f"{which} carries a {size / 2**20:.1f} MiB object; the limit is {limit / 2**20:.0f} "
        "MiB an object (--max-message-mb); it was not stored")


def request_error(exc: BaseException) -> tuple[int, str]:
    """The (gRPC status code number, message) that answers one request of a stream
    or one C-STORE: the error class's code, or INTERNAL with a log reference for a
    defect (never a library's text)."""
    if isinstance(exc, WaveformError):
        return code_of(exc).value[0], message_of(exc)
    ref = uuid.uuid4().hex[:12]
    log.error("internal error", exc_info=exc, extra={"ref": ref, "method": "ingest"})
    return code_of(exc).value[0], f"internal error (log reference {ref})"


class InflightBudget:
    """Bytes of received objects not yet answered, across every call."""

    def __init__(self, max_bytes: int, trimmer: Trimmer | None = None) -> None:
        if max_bytes <= 0:
            raise ValueError(f"an in-flight budget of {max_bytes} bytes admits nothing")
        self.max_bytes = max_bytes
        self._used = 0
        self._cond = threading.Condition()
        #: Told of every byte let go, so that the heap is given back (`memory`).
        self.trimmer = trimmer

    @property
    def used(self) -> int:
        return self._used

    def _fits(self, n: int) -> bool:
        # An object larger than the whole budget is admitted alone (the message
        # size limit keeps it finite), so that it is answered rather than stuck.
        return self._used + n <= self.max_bytes or self._used == 0

    def try_acquire(self, n: int) -> bool:
        with self._cond:
            if not self._fits(n):
                return False
            self._used += n
            return True

    def acquire(self, n: int, timeout: float | None = None) -> bool:
        """Wait for room for ``n`` bytes; False if ``timeout`` ran out first."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._fits(n), timeout):
                return False
            self._used += n
            return True

    def release(self, n: int) -> None:
        with self._cond:
            self._used -= n
            self._cond.notify_all()
        if self.trimmer is not None:
            self.trimmer.released(n)

    def refusal(self, n: int) -> Overloaded:
        return Overloaded(
            f"the server holds {self._used >> 20} MiB of objects not yet answered (limit "
            f"{self.max_bytes >> 20} MiB); this {n >> 20} MiB object was not accepted, "
            "retry later")


class Intake:
    """Submit objects to ``store`` and settle their answers under ``archive``'s audit."""

    def __init__(self, store: Store, archive: Archive, budget: InflightBudget) -> None:
        self.store = store
        self.archive = archive
        self.budget = budget

    def submit(self, data: bytes | memoryview, identity: Identity) -> Future[IngestResult]:
        """The object queued for the next group commit; what goes wrong with it (or
        with the store) is in the future, never raised here."""
        try:
            return self.store.submit(data, identity.organisation)
        except Exception as exc:
            if not isinstance(exc, WaveformError):
                ref = uuid.uuid4().hex[:12]
                log.error("internal error", exc_info=exc,
                          extra={"ref": ref, "method": "ingest"})
            return failed(exc)

    def settle(self, acc: Access, future: Future[IngestResult],
               timeout: float | None = None) -> tuple[IngestResult, bool]:
        """The commit's answer (waiting at most ``timeout``: `TimeoutError`), recorded
        in ``acc``'s event, and whether the caller's organisation controls the ECG.
        Raises what the future holds, a conflict with another organisation's object
        (or one not indexed yet) told without any detail of it."""
        err = future.exception(timeout)
        if err is not None:
            if isinstance(err, Conflict):
                raise self._conflict(acc, err) from None
            # A copy is raised: the future keeps the original, and the original raised
            # would take a traceback through frames that hold the future (a cycle that
            # keeps the request's bytes until the collector runs).
            raise copy.copy(err) from None
        result = future.result()
        acc.objects(result.sop_instance_uid)
        if result.already_stored:
            ref = self.archive.patients.exam(result.sop_instance_uid)
            if ref is not None:
                patient, controller = ref.patient_id, ref.organisation
            else:  # stored by a path that does not index (a bulk load): ask the store
                ctx = self.store.ecg_context(result.sop_instance_uid)
                patient, controller = ctx["patient_id"] or "", ctx["organisation"] or ""
            acc.patient(patient)
            if controller != acc.identity.organisation:
                acc.event.rule = "duplicate-of-other-organisation"
                return result, False
        else:
            acc.patient(result.patient_id)
        acc.event.rule = acc.event.rule or "device-ingest"
        return result, True

    def _conflict(self, acc: Access, err: Conflict) -> Conflict:
        uid = err.uid
        ref = self.archive.patients.exam(uid) if uid else None
        if ref is not None and ref.organisation == acc.identity.organisation:
            return err
        # Another organisation's object, or one whose commit is still running (its
        # owner unknown yet): nothing of it is told.
        return Conflict(f"SOP Instance UID {uid} is already in use in the archive by "
                        "another object; send it with a new SOP Instance UID", uid=uid)
