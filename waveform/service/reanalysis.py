"""Re-analysis inside the server: the `Reanalyze` RPC's job, one at a time.

The embedded catalog has one writer process (docs/scale.md), so a job that must
run while the service ingests runs in the server's process, over the server's
own `Store`: `waveform.reanalyze.run` in a thread of its own, its summary
commits sharing the store's single writer with ingest. The job reports through
`_Feed`, a `Progress` that turns each event (the plan, a unit measured, a
commit) into a `ReanalyzeProgress` message on a queue that the call streams.

The feed is also where a stop takes effect: when the call ends (the client
cancelled, its deadline passed) or the server shuts down, the next unit
boundary raises `_Stopped` inside the job, the engine's workers are shut down
(a unit already running finishes first), and what was committed stays. A job
run again plans exactly the ECGs still without a summary, so it measures the
rest and never an ECG twice.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import multiprocessing
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from waveform.errors import InvalidArgument, WaveformError
from waveform.model import Identity
from waveform.reanalyze.progress import Progress
from waveform.service._proto.waveform.v1 import archive_pb2 as pb
from waveform.service.calls import Abort
from waveform.service.convert import comparison_from_message, comparison_message

if TYPE_CHECKING:
    from waveform.reanalyze.engines import Engine
    from waveform.reanalyze.job import JobResult
    from waveform.reanalyze.planning import Filter
    from waveform.store import Store

__all__ = ["DEFAULT_COMMIT_ROWS", "DEFAULT_TOP", "DEFAULT_UNIT_ECGS", "JobOptions",
           "Reanalysis", "compare_options", "comparison_from_message", "comparison_message",
           "job_options"]

log = logging.getLogger("waveform.service.reanalyze")

DEFAULT_UNIT_ECGS = 256
DEFAULT_COMMIT_ROWS = 1024
#: Bounds of a request's sizes. A commit's rows are held in the server's memory
#: until they are written (a summary row is about 31 KB, most of it the median beat).
MAX_UNIT_ECGS = 10_000
MAX_COMMIT_ROWS = 16_384
#: Worker processes a request may ask for, per core of the server's machine.
MAX_WORKERS_PER_CORE = 4
#: Failure entries per message (the rest follow in the next ones).
ENTRIES_PER_MESSAGE = 1000
#: Largest changes listed per measurement by `CompareVersions`: default and bound.
DEFAULT_TOP = 10
MAX_TOP = 1000
#: How often a waiting call checks that its client is still there (seconds).
_POLL_S = 0.5


@dataclass(frozen=True, slots=True)
class JobOptions:
    """A validated `ReanalyzeRequest`."""

    filters: tuple[Filter, ...]
    engine: str
    workers: int
    scheduler: str | None
    unit_ecgs: int
    commit_rows: int

    def describe(self) -> str:
        where = " AND ".join(f"{f.column} {f.op} {f.value!r}" for f in self.filters)
        workers = (f"the scheduler at {self.scheduler}" if self.scheduler else
                   f"{self.workers} worker{'s' if self.workers != 1 else ''}")
        return f"{self.engine} engine, {workers}" + (f", ECGs with {where}" if where else "")


def _cores() -> int:
    return multiprocessing.cpu_count() or 1


def job_options(request: pb.ReanalyzeRequest) -> JobOptions:
    """The options of ``request``, each checked (`InvalidArgument` names the field
    and the value; the engine's name is checked by `Reanalysis.begin`, which makes
    it); the filters have the command line's ``--where`` syntax."""
    from waveform.reanalyze.planning import parse_filter

    filters = tuple(parse_filter(text) for text in request.where)
    engine = request.engine or "local"
    scheduler = request.scheduler or None
    if scheduler and engine != "dask":
        raise InvalidArgument(f"scheduler {scheduler!r} is a Dask scheduler: it needs "
                              f"engine 'dask' (engine is {engine!r})")
    most = MAX_WORKERS_PER_CORE * _cores()
    if not 0 <= request.workers <= most:
        raise InvalidArgument(f"workers {request.workers}: expected 0 (one less than the "
                              f"server's {_cores()} cores) to {most}")
    # The server ingests meanwhile: by default the job leaves it a core.
    workers = request.workers or max(1, _cores() - 1)
    for name, value, most in (("unit_ecgs", request.unit_ecgs, MAX_UNIT_ECGS),
                              ("commit_rows", request.commit_rows, MAX_COMMIT_ROWS)):
        if not 0 <= value <= most:
            raise InvalidArgument(f"{name} {value}: expected 0 (the default) to {most}")
    return JobOptions(filters, engine, workers, scheduler,
                      request.unit_ecgs or DEFAULT_UNIT_ECGS,
                      request.commit_rows or DEFAULT_COMMIT_ROWS)


class _Stopped(Exception):
    """Raised inside the job at a unit boundary once a stop is asked."""

    def __init__(self, reason: str, shutdown: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.shutdown = shutdown


@dataclass(frozen=True, slots=True)
class _End:
    """The last item of a job's queue: how it ended (None: it completed)."""

    error: BaseException | None


def _failures(items: Sequence[tuple[str, str]]) -> list[pb.ReanalyzeFailure]:
    return [pb.ReanalyzeFailure(sop_instance_uid=u, reason=why) for u, why in items]


class _Feed(Progress):
    """The job's `Progress`: every event becomes a message of the call's stream,
    and a stop asked of the job is raised at the next unit boundary."""

    def __init__(self, job: _Job) -> None:
        super().__init__(io.StringIO())  # unused: events go to the job's queue
        self._job = job
        self.pass_number = 0
        self.planned = 0
        #: The plan has work and the engine's workers are starting (not up yet).
        self.starting = False
        #: The job's live result, known from its first commit on.
        self.result: JobResult | None = None
        self._failed_sent = 0

    def message(self, **fields: object) -> pb.ReanalyzeProgress:
        """A message with the counts so far and the failures not yet sent."""
        m = pb.ReanalyzeProgress(
            analysis_version=self._job.version, planned=self.planned,
            pass_number=self.pass_number, pass_ecgs=self.total, done=self.done,
            rate=self.rate if self.total else 0.0, **fields)  # type: ignore[arg-type]
        r = self.result
        if r is not None:
            m.committed, m.already_present, m.commits = r.committed, r.skipped, r.commits
            m.failed, m.unread = len(r.failed), len(r.unread)
            new = r.failed[self._failed_sent:self._failed_sent + ENTRIES_PER_MESSAGE]
            m.failed_ecgs.extend(_failures(new))
            self._failed_sent += len(new)
        return m

    # -- Progress: called by `run` in the job's thread
    def start(self, total: int) -> None:
        self._job.check()
        super().start(total)
        self.pass_number += 1
        if self.pass_number == 1:
            self.planned = total
        self._job.put(self.message())

    def advance(self, n: int) -> None:
        self.done += n
        self._job.put(self.message())
        self._job.check()

    def _show(self) -> None:
        return None  # every event is a message already

    def note(self, message: str) -> None:
        self._job.put(self.message(note=message))

    def committed(self, result: JobResult) -> None:
        """`run`'s ``on_commit``."""
        self.result = result
        self._job.put(self.message())

    def end(self, result: JobResult) -> None:
        """The last messages: failures not yet sent, the unread ECGs, the totals."""
        self.result = result
        while len(result.failed) - self._failed_sent > ENTRIES_PER_MESSAGE:
            self._job.put(self.message())
        last = self.message(final=True, files=result.files, units=result.units,
                            seconds=result.seconds)
        last.rate = result.rate
        for k in range(0, len(result.unread), ENTRIES_PER_MESSAGE):
            chunk = _failures(result.unread[k:k + ENTRIES_PER_MESSAGE])
            if k + ENTRIES_PER_MESSAGE >= len(result.unread):
                last.unread_ecgs.extend(chunk)
            else:
                self._job.put(self.message(unread_ecgs=chunk))
        self._job.put(last)


class _Job:
    """One run of `waveform.reanalyze.run` on the server's store, in its own thread."""

    def __init__(self, owner: Reanalysis, options: JobOptions, identity: Identity,
                 engine: Engine) -> None:
        from waveform.reanalyze.worker import default_analysis

        self.owner = owner
        self.options = options
        self.identity = identity
        self.engine = engine
        self.version = default_analysis()[1]
        self.started = dt.datetime.now(dt.UTC)
        self.feed = _Feed(self)
        self.messages: queue.Queue[pb.ReanalyzeProgress | _End] = queue.Queue()
        self._stop: _Stopped | None = None
        self._thread = threading.Thread(target=self._run, name="reanalyze-job", daemon=True)

    def describe(self) -> str:
        f = self.feed
        where = ("starting its workers" if f.starting else
                 f"pass {f.pass_number}: {f.done}/{f.total} ECGs" if f.pass_number else "planning")
        stopping = f"; stopping: {self._stop.reason}" if self._stop else ""
        return (f"started {self.started:%Y-%m-%d %H:%M:%S} UTC by "
                f"{self.identity.describe()}, {self.options.describe()}, {where}{stopping}")

    def put(self, item: pb.ReanalyzeProgress | _End) -> None:
        self.messages.put(item)

    def stop(self, reason: str, *, shutdown: bool = False) -> None:
        """Stop at the next unit boundary (the first reason given is kept)."""
        if self._stop is None:
            self._stop = _Stopped(reason, shutdown)

    def check(self) -> None:
        if self._stop is not None:
            raise self._stop

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _start_engine(self) -> None:
        """Start the workers and warm them up (seconds); a failure says which engine
        could not start, and why (an unreachable scheduler, processes that died)."""
        self.feed.starting = True
        self.put(self.feed.message(note=f"starting the {self.options.describe()}"))
        try:
            self.engine.start()
        except WaveformError:
            raise
        except Exception as exc:
            o = self.options
            at = f" with the scheduler at {o.scheduler}" if o.scheduler else ""
            raise Abort(grpc.StatusCode.UNAVAILABLE,
                        f"the {o.engine} engine could not start its workers{at}: "
                        f"{type(exc).__name__}: {exc}; nothing was measured") from exc
        finally:
            self.feed.starting = False

    def _run(self) -> None:
        from waveform.reanalyze.job import run

        o = self.options
        log.info("reanalyze started", extra={
            "user": self.identity.user, "org": self.identity.organisation,
            "engine": o.engine, "workers": o.workers, "version": self.version,
            "filters": [f"{f.column}{f.op}{f.value}" for f in o.filters]})
        self.put(self.feed.message(note=f"analysis {self.version} on the server: planning "
                                        "(the workers start only if there is work)"))
        ended: _End
        try:
            try:
                self.check()
                result = run(self.owner.store, self.engine, version=self.version,
                             filters=o.filters, unit_ecgs=o.unit_ecgs,
                             commit_rows=o.commit_rows, progress=self.feed,
                             on_commit=self.feed.committed, start=self._start_engine)
            finally:
                self.engine.close()  # also after a stop: no worker outlives the job
            self.feed.end(result)
            ended = _End(None)
            log.info("reanalyze finished", extra={
                "planned": result.planned, "committed": result.committed,
                "already_present": result.skipped, "failed": len(result.failed),
                "unread": len(result.unread), "seconds": round(result.seconds, 1)})
        except _Stopped as stopped:
            r = self.feed.result
            log.info("reanalyze stopped", extra={
                "reason": stopped.reason, "committed": r.committed if r else 0})
            ended = _End(stopped)
        except BaseException as exc:  # handed to the call, which reports it
            ended = _End(exc)
        self.owner.release(self)  # before the end is seen: a new job may start at once
        self.put(ended)


class Reanalysis:
    """The server's re-analysis: at most one `_Job` at a time, on ``store``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._current: _Job | None = None
        self._closed = ""

    def begin(self, options: JobOptions, identity: Identity) -> _Job:
        """Claim the server's job slot for a new job (not started yet: `_Job.start`,
        or `cancel` if the call fails before it starts). A job already running
        is refused with FAILED_PRECONDITION, a server shutting down with
        UNAVAILABLE."""
        from waveform.reanalyze.engines import make_engine

        with self._lock:
            if self._closed:
                raise Abort(grpc.StatusCode.UNAVAILABLE, self._closed)
            if self._current is not None:
                raise Abort(grpc.StatusCode.FAILED_PRECONDITION,
                            "a re-analysis job is already running on this server ("
                            f"{self._current.describe()}); one job at a time: wait for it "
                            "to end, or cancel its call")
            engine = make_engine(options.engine, workers=options.workers,
                                 scheduler=options.scheduler)
            job = self._current = _Job(self, options, identity, engine)
        return job

    def cancel(self, job: _Job) -> None:
        """Give back the slot of a job that was never started."""
        self.release(job)

    def release(self, job: _Job) -> None:
        """``job`` ended: a new one may start."""
        with self._lock:
            if self._current is job:
                self._current = None

    @property
    def running(self) -> bool:
        with self._lock:
            return self._current is not None

    def follow(self, job: _Job, context: grpc.ServicerContext
               ) -> Iterator[pb.ReanalyzeProgress]:
        """The job's messages, until it ends; the job stops when the call ends."""
        context.add_callback(lambda: job.stop(
            "its call ended (the client cancelled or its deadline passed)"))
        while True:
            try:
                item = job.messages.get(timeout=_POLL_S)
            except queue.Empty:
                if not context.is_active():
                    job.stop("its call ended")
                continue
            if not isinstance(item, _End):
                yield item
                continue
            if item.error is None:
                return
            raise _reported(item.error, job)

    def stop(self, reason: str) -> None:
        """Refuse new jobs and stop the running one at its next unit boundary."""
        with self._lock:
            self._closed = f"{reason}: no new re-analysis job is started"
            job = self._current
        if job is not None:
            job.stop(reason, shutdown=True)

    def join(self, timeout: float | None) -> bool:
        """Wait for the running job's thread (its workers shut down); False on timeout."""
        with self._lock:
            job = self._current
        return job is None or job.join(timeout)


def _reported(error: BaseException, job: _Job) -> BaseException:
    """What the call answers for a job that ended with ``error``."""
    if not isinstance(error, _Stopped):
        return error  # a WaveformError keeps its code; anything else is INTERNAL
    r = job.feed.result
    done = (f"{r.committed} summaries were committed by then" if r
            else "no summary was committed")
    code = grpc.StatusCode.UNAVAILABLE if error.shutdown else grpc.StatusCode.CANCELLED
    return Abort(code, f"the re-analysis stopped because {error.reason}; {done} and stay; "
                       "call Reanalyze again to measure the rest")


# ----------------------------------------------------------- CompareVersions


def compare_options(request: pb.CompareVersionsRequest) -> tuple[str, str, int]:
    """The old and new versions and the number of largest changes of ``request``,
    checked (`InvalidArgument` names the field)."""
    for name in ("old_version", "new_version"):
        if not getattr(request, name).strip():
            raise InvalidArgument(f"{name} is empty: name the analysis versions to compare "
                                  "(e.g. old_version 1.2.0, new_version 1.3.0)")
    if request.old_version == request.new_version:
        raise InvalidArgument(f"old_version and new_version are both "
                              f"{request.old_version!r}: name two versions")
    if not 0 <= request.top <= MAX_TOP:
        raise InvalidArgument(f"top {request.top}: expected 0 (the default, {DEFAULT_TOP}) "
                              f"to {MAX_TOP}")
    return request.old_version, request.new_version, request.top or DEFAULT_TOP
