"""`Store`: the archive's one entry point for writing and reading ECGs.

Open it on a data directory (or a PostgreSQL catalog and an S3 data path); give
the service `submit` (group commit, many threads) or use `ingest` for a batch in
one transaction; read with `get_dicom`, `get_trace`, `get_summary` and `search`.

This class is a thin facade over the store's parts, each in its own module:
`engine` (the lake, the data files, the commit gate, the locator index),
`ingest` (claims and group commit), `reads` (objects, traces, summaries,
search), `measure` (the measurement stage) and `compact`. It wires them
together, runs the recovery probe and the background maintenance, and closes
them in order. See docs/storage.md.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from waveform.errors import StorageError, WaveformError
from waveform.store import codec as _codec
from waveform.store import queries as _q
from waveform.store import schema as _schema
from waveform.store.durable import table_dir
from waveform.store.engine import Clock, Engine
from waveform.store.files import FileOps, files_for
from waveform.store.ingest import IngestPath, IngestResult
from waveform.store.lake import connect
from waveform.store.locators import open_locators
from waveform.store.reads import MAX_TRACE_RATE_HZ, MAX_TRACE_VALUES, ReadPath
from waveform.store.records import Prepared
from waveform.store.tables import TableRef, table_ref

if TYPE_CHECKING:
    from waveform.store.compact import CompactionReport
    from waveform.store.measure import MeasureStage

__all__ = ["MAX_TRACE_RATE_HZ", "MAX_TRACE_VALUES", "PROBE_INTERVAL_S", "IngestResult",
           "Store"]

log = logging.getLogger(__name__)

#: How often a store that cannot write tries a probe write (seconds).
PROBE_INTERVAL_S = 0.5


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Store:
    """A DuckLake-backed ECG archive. Thread-safe; several processes may share a
    PostgreSQL catalog (an embedded catalog file admits one)."""

    def __init__(self, engine: Engine, *, max_batch: int = 1024, max_delay_ms: float = 5.0,
                 max_queued: int = 10_000,
                 analyze: Callable[[Any], Any] | str | None = "auto",
                 analysis_version: str | None = None, measure: bool = True,
                 auto_compact_commits: int | None = 256) -> None:
        """Start the store's parts on an open ``engine`` (`open` makes one; the options
        are `open`'s). The engine is closed if this fails."""
        self.engine = engine
        self.reads = ReadPath(engine)
        self.ingest_path: IngestPath | None = None
        self.measure: MeasureStage | None = None
        self.auto_compact_commits = auto_compact_commits
        self._lock = threading.Lock()
        self._closed = False
        self._commits_since_compact = 0
        self._compactor: threading.Thread | None = None
        self._timers: set[threading.Timer] = set()
        self._recovery: threading.Thread | None = None
        self._recovered = 0
        try:
            engine.create_schema()
            engine.remove_temporaries()
            if analyze == "auto":
                analyze, analysis_version = _default_analysis()
            if analysis_version is not None:
                engine.analysis_version = str(analysis_version)
            engine.reindex()
            _codec.warm_up()
            self.ingest_path = IngestPath(
                engine, self._committed, max_objects=max_batch,
                max_delay_s=max_delay_ms / 1000, max_queued=max_queued)
            self._recovery = threading.Thread(target=self._watch_writes,
                                              name="waveform-recovery", daemon=True)
            self._recovery.start()
            if callable(analyze) and measure:
                from waveform.store.measure import MeasureStage

                engine.analysis_version = str(analysis_version)
                self.measure = MeasureStage(self, analyze, str(analysis_version))
                self.measure.catch_up()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ open
    @classmethod
    def open(
        cls,
        data_dir: str | os.PathLike[str],
        *,
        catalog: str | None = None,
        data_path: str | None = None,
        files: FileOps | None = None,
        clock: Clock | None = None,
        max_batch: int = 1024,
        max_delay_ms: float = 5.0,
        max_queued: int = 10_000,
        analyze: Callable[[Any], Any] | str | None = "auto",
        analysis_version: str | None = None,
        measure: bool = True,
        auto_compact_commits: int | None = 256,
    ) -> Store:
        """Open (creating if needed) the store in ``data_dir``.

        ``catalog``: a DuckLake metadata location (default ``data_dir/catalog.ducklake``,
        or ``postgres:`` and a libpq string). ``data_path``: where data files live
        (default ``data_dir/lake/``, or ``s3://bucket/prefix/``). ``files``: the
        `FileOps` for them (default: `files.files_for` the data path). The locator
        index (`locators`) lives beside the catalog.
        ``analyze``/``analysis_version``: the measurement function and its version
        (``"auto"``: `waveform.analysis` when importable; None: no measurement).
        ``auto_compact_commits``: compact in the background after this many
        commits (None: only when `compact` is called).
        """
        data_dir = os.fspath(data_dir)
        if data_path is None:
            os.makedirs(data_dir, exist_ok=True)
            data_path = os.path.join(data_dir, "lake") + os.sep
        files = files or files_for(data_path)
        if catalog is None:
            catalog = os.path.join(data_dir, "catalog.ducklake")
        for table in _schema.TABLES:
            files.makedirs(table_dir(files, data_path, table))
        lake = connect(catalog, data_path)
        try:
            locators = open_locators(catalog, None)
        except BaseException:
            lake.close()
            raise
        return cls(Engine(lake, files, data_path, clock or _utcnow, locators),
                   max_batch=max_batch, max_delay_ms=max_delay_ms, max_queued=max_queued,
                   analyze=analyze, analysis_version=analysis_version, measure=measure,
                   auto_compact_commits=auto_compact_commits)

    # ------------------------------------------------------------ properties
    @property
    def data_path(self) -> str:
        return self.engine.data_path

    @property
    def analysis_version(self) -> str | None:
        """The analysis version this store measures with (None: it does not measure)."""
        return self.engine.analysis_version

    def _ingest(self) -> IngestPath:
        if self.ingest_path is None:
            raise StorageError("the store is closed")
        return self.ingest_path

    # --------------------------------------------------------------- writing
    def submit(self, data: bytes | memoryview, organisation: str, *,
               format: str | None = None) -> Future[IngestResult]:
        """Queue one object for the next group commit (`IngestPath.submit`)."""
        return self._ingest().submit(data, organisation, format=format)

    def ingest(self, objects: Iterable[bytes | memoryview], organisation: str, *,
               wait_summary: bool = False, timeout: float | None = None
               ) -> list[IngestResult]:
        """Store a batch in one transaction: all of it, or (raising) none of it
        (`IngestPath.ingest`); ``wait_summary``: with each ECG's summary."""
        results = self._ingest().ingest(objects, organisation, timeout=timeout)
        if wait_summary:
            results = [self._with_summary(r, timeout) for r in results]
        return results

    def _with_summary(self, r: IngestResult, timeout: float | None) -> IngestResult:
        self.wait_for_summary(r.sop_instance_uid, timeout)
        return dataclasses.replace(r, summary=self.get_summary(r.sop_instance_uid))

    def _committed(self, items: list[Prepared]) -> None:
        """After each ingest commit: the measurement stage's queue, then compaction."""
        self._maybe_compact()
        if self.measure is not None:
            self.measure.enqueue([p.sop_instance_uid for p in items],
                                 [{k: p.ecg_row[k] for k in _schema.SUMMARY_CONTEXT}
                                  for p in items])

    def commit_summaries(self, table: pa.Table) -> int:
        """Durably commit ``summary`` rows (`IngestPath.commit_summaries`)."""
        return self._ingest().commit_summaries(table)

    def ensure_tables(self, tables: Mapping[str, pa.Schema]) -> None:
        """Create the tables another module owns in this catalog (`schema.RESERVED`)."""
        self.engine.ensure_tables(tables)

    def table(self, name: str) -> TableRef:
        """The handle on table ``name`` to write SQL against (`waveform.store.tables`):
        a store table, or a reserved one once `ensure_tables` has created it (its
        schema is read from the catalog). ``ValueError`` for any other name."""
        return table_ref(name, lambda qualified: self.engine.sql_arrow(
            f"SELECT * FROM {qualified} LIMIT 0").schema)

    def commit_rows(self, tables: dict[str, pa.Table]) -> dict[str, str]:
        """Durably commit rows of store tables."""
        return self.engine.commit_rows(tables)

    # ----------------------------------------------------------- compaction
    def _maybe_compact(self) -> None:
        """Start a background compaction when enough small files have piled up."""
        self._commits_since_compact += 1
        if (self.auto_compact_commits is None
                or self._commits_since_compact < self.auto_compact_commits
                or (self._compactor is not None and self._compactor.is_alive())):
            return
        self._commits_since_compact = 0

        def run() -> None:
            try:
                self.compact()
            except (WaveformError, OSError) as e:  # the next trigger tries again
                log.warning("background compaction failed: %s", e)

        self._compactor = threading.Thread(target=run, name="waveform-compact", daemon=True)
        self._compactor.start()

    def compact(self, **options: Any) -> CompactionReport:
        """Merge small data files and remove unreferenced ones (`waveform.store.compact`)."""
        from waveform.store.compact import compact

        return compact(self, **options)

    # --------------------------------------------------------------- reading
    def get_dicom(self, uid: str) -> bytes:
        return self.reads.get_dicom(uid)

    def get_original(self, uid: str) -> tuple[str, bytes]:
        return self.reads.get_original(uid)

    def get_trace(self, uid: str, group: int = 0, leads: Sequence[str] | None = None,
                  start_s: float = 0.0, duration_s: float | None = None,
                  fs: float | None = None, units: str = "uV") -> _q.Trace:
        return self.reads.get_trace(uid, group, leads, start_s, duration_s, fs, units)

    def get_summary(self, uid: str, analysis_version: str | None = None
                    ) -> dict[str, Any] | None:
        return self.reads.get_summary(uid, analysis_version)

    def search(self, query: _q.SearchQuery | None = None, **filters: Any) -> _q.Page:
        return self.reads.search(query, **filters)

    def attach_summaries(self, rows: list[dict[str, Any]]) -> None:
        self.reads.attach_summaries(rows)

    def ecg_context(self, uid: str, columns: Sequence[str] = ()) -> dict[str, Any]:
        return self.reads.ecg_context(uid, columns)

    def ecg_contexts(self, uids: Sequence[str], columns: Sequence[str] = ()
                     ) -> dict[str, dict[str, Any] | Exception]:
        return self.reads.ecg_contexts(uids, columns)

    def stored_objects(self, uids: Sequence[str]) -> dict[str, bytes | Exception]:
        return self.reads.stored_objects(uids)

    def contains(self, uid: str) -> bool:
        return self.reads.contains(uid)

    def exams(self, column: str, value: str) -> list[dict[str, Any]]:
        return self.reads.exams(column, value)

    def unmeasured(self, version: str) -> list[str]:
        return self.reads.unmeasured(version)

    def uids(self) -> list[str]:
        return self.reads.uids()

    def sql_arrow(self, sql: str, params: Sequence[Any] = ()) -> pa.Table:
        """A read query's result as an Arrow table (large results, column at a time)."""
        return self.engine.sql_arrow(sql, params)

    def sql(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Read-only SQL over the catalog (tables are ``lake.ecg`` etc.), bound parameters."""
        return self.engine.sql(sql, params)

    # ------------------------------------------------------------ lifecycle
    @property
    def queued(self) -> int:
        """Objects submitted and not yet taken into a commit group."""
        return self.ingest_path.queued if self.ingest_path else 0

    @property
    def stopped(self) -> BaseException | None:
        """The `DurabilityError` that stopped the writer, if any."""
        return self.ingest_path.stopped if self.ingest_path else None

    def wait_for_summary(self, uid: str, timeout: float | None = None) -> None:
        """Block until the measurement stage has measured ``uid`` (or ``timeout``
        passed; then the summary may be absent)."""
        if self.measure is not None:
            self.measure.wait_for(uid, timeout)

    def wait_measured(self, timeout: float | None = None) -> bool:
        """Block until the measurement stage has caught up (tests, batch jobs, the
        demo); False if ``timeout`` ran out first."""
        return self.measure.join(timeout) if self.measure is not None else True

    # ------------------------------------------------------------ recovery
    @property
    def writable(self) -> bool:
        """False while the store cannot write: the writer stopped after a failed fsync
        or commit, or a group could not be written (a full disk, an unreachable
        catalog or object store), until a probe (every `PROBE_INTERVAL_S`) passes and
        the store has recovered by itself."""
        return not self._closed and self.ingest_path is not None and self.ingest_path.writable

    @property
    def recoveries(self) -> int:
        """How many times the store has recovered from a write failure."""
        return self._recovered

    def _watch_writes(self) -> None:
        while not self._closed:
            time.sleep(PROBE_INTERVAL_S)
            path = self.ingest_path
            if self._closed or path is None or path.writable:
                continue
            try:
                self.engine.probe()
                uncertain = path.recover()
            except (WaveformError, OSError, duckdb.Error) as e:
                log.info("the store still cannot write: %s", e)
                continue
            self._recovered += 1
            log.warning("the store can write again; ingest resumes",
                        extra={"uncertain": uncertain})

    def later(self, delay_s: float, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on a background thread in ``delay_s`` seconds, unless the store
        is closed first (maintenance: compaction's removal of replaced files). A
        failure is logged; the next compaction tries again."""

        def run() -> None:
            with self._lock:
                self._timers.discard(timer)
            if self._closed:
                return
            try:
                fn()
            except (WaveformError, OSError, duckdb.Error) as e:
                log.warning("background maintenance failed: %s", e)

        timer = threading.Timer(delay_s, run)
        timer.daemon = True
        timer.name = "waveform-maintenance"
        with self._lock:
            if self._closed:
                return
            self._timers.add(timer)
        timer.start()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._lock:
            timers, self._timers = list(self._timers), set()
        for t in timers:
            t.cancel()
        if self.ingest_path is not None:
            self.ingest_path.close()
        if self._recovery is not None:
            self._recovery.join(2 * PROBE_INTERVAL_S)
        if self._compactor is not None:
            self._compactor.join()
        if self.measure is not None:
            self.measure.close()
        self.engine.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _default_analysis() -> tuple[Callable[[Any], Any] | None, str | None]:
    try:
        from waveform.analysis import ANALYSIS_VERSION, analyze
    except ImportError:
        log.warning("waveform.analysis is not importable; summaries will not be computed")
        return None, None
    return analyze, str(ANALYSIS_VERSION)
