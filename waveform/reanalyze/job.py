"""The driver of a re-analysis: plan, dispatch, and the one writer of the summaries.

`run` decides once, before anything is dispatched, which ECGs lack a summary of
the version (`plan`); an engine measures the units on its workers; this process,
and only this one, commits the returned rows through the store, in batches.
Each commit first drops the UIDs that already have a summary of the version
(written meanwhile by the store's own measurement stage or another run), so a
job killed at any point and run again finishes the rest and never writes a
summary twice. The job runs through a `Store` that the caller holds: in the
server's process next to ingest (the catalog's single writer), or in its own
process when the catalog allows several (PostgreSQL): see docs/scale.md.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa

from waveform.errors import InvalidArgument
from waveform.reanalyze.engines import Engine
from waveform.reanalyze.planning import Filter, Plan, plan
from waveform.reanalyze.progress import Progress, progress_for
from waveform.reanalyze.worker import STAGES, Analyze, UnitResult, default_analysis

if TYPE_CHECKING:
    from waveform.store import Store

__all__ = ["JobResult", "commit_new", "run"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class JobResult:
    """What a run did. ``failed``: ECGs the analysis rejected (a summary row with
    the reason was written); ``unread``: ECGs whose rows could not be read (no
    row written; the next run retries them); ``skipped``: rows not committed
    because a summary of the version appeared meanwhile."""

    version: str
    planned: int = 0
    files: int = 0
    units: int = 0
    committed: int = 0
    commits: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    unread: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    #: Seconds the driver spent planning and committing (the rest of its time it waits).
    plan_seconds: float = 0.0
    commit_seconds: float = 0.0
    #: Seconds the workers spent in each stage (`worker.STAGES`), summed.
    stages: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    #: CPU seconds: the workers' (summed), and the driver process's (every thread:
    #: plan, receiving results, commits; with a local Dask cluster its scheduler
    #: too; run inside a server, the server's own work as well).
    worker_cpu_seconds: float = 0.0
    driver_cpu_seconds: float = 0.0

    @property
    def rate(self) -> float:
        """ECGs measured per second of wall time (failures included)."""
        return (self.committed + self.skipped) / self.seconds if self.seconds > 0 else 0.0

    def lines(self, max_failures: int = 20) -> list[str]:
        """The end-of-job report."""
        out = [
            f"analysis {self.version}: {self.planned} ECGs planned in {self.files} data files "
            f"({self.units} units); {self.committed} summaries committed in {self.commits} "
            f"commits, {self.skipped} already present, {len(self.failed)} failed analysis, "
            f"{len(self.unread)} unread; {self.seconds:.1f} s, {self.rate:.0f} ECGs/s",
        ]
        for title, items in (("failed analysis (recorded with the reason)", self.failed),
                             ("unread (no summary written; run again)", self.unread)):
            if items:
                out.append(f"{title}:")
                out += [f"  {uid}: {why}" for uid, why in items[:max_failures]]
                if len(items) > max_failures:
                    out.append(f"  ... and {len(items) - max_failures} more")
        return out


def commit_new(store: Store, table: pa.Table, version: str) -> tuple[int, int]:
    """Commit the rows of ``table`` whose UID has no summary of ``version`` yet;
    (committed, skipped)."""
    if table.num_rows == 0:
        return 0, 0
    uids = table.column("sop_instance_uid").to_pylist()
    summary = store.table("summary")
    present = {r[0] for r in store.sql(
        f"SELECT DISTINCT sop_instance_uid FROM {summary.sql} WHERE analysis_version = ? "
        "AND sop_instance_uid IN (SELECT unnest(?::VARCHAR[]))", [version, uids])}
    # One row per UID even if a batch somehow held two.
    first: dict[str, int] = {}
    for i, u in enumerate(uids):
        if u not in present:
            first.setdefault(u, i)
    rows = sorted(first.values())
    keep = table if len(rows) == table.num_rows else table.take(pa.array(rows, pa.int64()))
    # The store drops, under its commit lock, rows of ECGs that got a summary of
    # its own version since the query (its measurement stage racing the job).
    committed = store.commit_summaries(keep) if keep.num_rows else 0
    return committed, table.num_rows - committed


def run(
    store: Store,
    engine: Engine,
    *,
    version: str | None = None,
    analyze: Analyze | None = None,
    filters: Sequence[Filter] = (),
    unit_ecgs: int = 256,
    commit_rows: int = 1024,
    progress: Progress | None = None,
    retry_unread: bool = True,
    on_commit: Callable[[JobResult], None] | None = None,
    start: Callable[[], None] | None = None,
) -> JobResult:
    """Measure every ECG of ``store`` without a summary of ``version`` on ``engine``.

    ``analyze``/``version``: the measurement and its version (default
    `waveform.analysis`; a custom ``analyze`` must be importable by the workers
    and needs its ``version``). Rows are committed every ``commit_rows``.
    ``on_commit`` is called after each commit (tests, callers' own logging).
    The engine's workers are started (``start``, default ``engine.start``) only
    once the plan has something for them: a job with nothing to do starts none.
    The caller closes the engine.
    """
    if analyze is not None and version is None:
        raise InvalidArgument("a custom analyze function needs its version: pass version=")
    if version is None:
        version = default_analysis()[1]
    progress = progress or progress_for(sys.stderr)
    result = JobResult(version)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    p = plan(store, version, filters=filters, unit_ecgs=unit_ecgs)
    result.plan_seconds = time.perf_counter() - t0
    result.planned, result.files, result.units = p.n_ecgs, p.n_files, len(p.units)
    progress.note(f"{p.n_ecgs} ECGs lack a summary of analysis {version} "
                  f"({p.n_files} data files, {len(p.units)} units, "
                  f"{engine.name} engine, {engine.workers} workers)")
    progress.start(p.n_ecgs)
    try:
        if p.units:
            (start or engine.start)()
            _dispatch(store, engine, p, analyze, commit_rows, progress, result, on_commit)
        if result.unread and retry_unread:
            # Compaction may have moved a file under a unit: plan those ECGs again.
            # Those that got a summary meanwhile (or were deleted) are not planned.
            again = plan(store, version, filters=filters, unit_ecgs=unit_ecgs,
                         only=[u for u, _ in result.unread])
            progress.note(f"{len(result.unread)} ECGs were unread; "
                          f"{again.n_ecgs} still lack a summary: planning them again")
            result.unread = []
            if again.units:
                progress.close()
                progress.start(again.n_ecgs)
                _dispatch(store, engine, again, analyze, commit_rows, progress, result,
                          on_commit)
    finally:
        progress.close()
        result.seconds = time.perf_counter() - t0
        result.driver_cpu_seconds = time.process_time() - cpu0
    return result


def _timed_commit(store: Store, table: pa.Table, version: str) -> tuple[int, int, float]:
    t = time.perf_counter()
    done, skipped = commit_new(store, table, version)
    return done, skipped, time.perf_counter() - t


def _dispatch(store: Store, engine: Engine, p: Plan, analyze: Analyze | None,
              commit_rows: int, progress: Progress, result: JobResult,
              on_commit: Callable[[JobResult], None] | None) -> None:
    """Hand units to the engine, commit what comes back. Commits run in one thread
    of their own (still the one writer, one commit at a time) so that dispatch
    goes on while a batch is written. Once every unit left is on a worker, what
    has come back is committed whenever the committer is idle rather than
    ``commit_rows`` at a time: the commit after the last unit is then that unit's
    rows, not up to ``commit_rows`` of them, which the job would wait for with
    every worker idle."""
    buffered: list[pa.Table] = []
    n_buffered = 0
    pending: Future[tuple[int, int, float]] | None = None

    def settle() -> None:
        nonlocal pending
        if pending is None:
            return
        done, skipped, seconds = pending.result()  # a failed commit ends the run here
        pending = None
        result.committed += done
        result.skipped += skipped
        result.commits += 1
        result.commit_seconds += seconds
        log.info("committed %d summaries (%d already present)", done, skipped)
        if on_commit is not None:
            on_commit(result)

    def commit() -> None:
        nonlocal buffered, n_buffered, pending
        settle()
        if buffered:
            pending = committer.submit(_timed_commit, store, pa.concat_tables(buffered),
                                       p.version)
            buffered, n_buffered = [], 0

    left = len(p.units)
    with ThreadPoolExecutor(1, thread_name_prefix="reanalyze-commit") as committer:
        for unit, out in engine.run(p.units, p.version, analyze):
            left -= 1
            if isinstance(out, UnitResult):
                if out.table.num_rows:
                    buffered.append(out.table)
                    n_buffered += out.table.num_rows
                result.failed.extend(out.failed)
                result.unread.extend(out.unread)
                for k, v in out.seconds.items():
                    result.stages[k] = result.stages.get(k, 0.0) + v
                result.worker_cpu_seconds += out.cpu_seconds
            else:
                why = f"worker failed: {type(out).__name__}: {out}"
                log.warning("unit %d (%s) was not measured: %s", unit.index, unit.files, why)
                result.unread.extend((u, why) for u in sorted(
                    set(unit.rows.column("sop_instance_uid").to_pylist())))
            progress.advance(unit.n_ecgs)
            if pending is not None and pending.done():
                settle()
            if n_buffered >= commit_rows or (0 < left <= engine.workers and n_buffered
                                             and pending is None):
                commit()
        commit()
        settle()
