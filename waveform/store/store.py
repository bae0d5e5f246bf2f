"""`Store`: the archive's one entry point for writing and reading ECGs.

Open it on a data directory; give the service `submit` (group commit, many
threads) or use `ingest` for a batch in one transaction; read with `get_dicom`,
`get_trace`, `get_summary` and `search`. See docs/storage.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from waveform.errors import (
    Conflict,
    DurabilityError,
    InvalidArgument,
    InvalidDicom,
    NotFound,
    StorageError,
    UnsupportedObject,
    WaveformError,
    without_traceback,
)
from waveform.store import codec as _codec
from waveform.store import queries as _q
from waveform.store import records as _records
from waveform.store import schema as _schema
from waveform.store.codec import EncodedSamples
from waveform.store.codec import decode_samples as decode_encoded
from waveform.store.durable import commit_tables, discard, register, stage_tables, table_dir
from waveform.store.files import FileOps, files_for
from waveform.store.lake import ALIAS, Lake, connect
from waveform.store.locators import (
    CLAIM_TTL_S,
    EXAM_COLUMNS,
    Claim,
    Entry,
    Locators,
    open_locators,
)
from waveform.store.records import Prepared, channels_from_row, decode_samples, prepare, sha256
from waveform.store.writer import GroupCommitWriter

__all__ = ["MAX_TRACE_RATE_HZ", "MAX_TRACE_VALUES", "IngestResult", "Store"]

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What an ingest answers. ``already_stored``: the same bytes were stored before
    (the other fields are those of the first ingest)."""

    sop_instance_uid: str
    sha256: str
    size: int
    ingested_at: dt.datetime | None  # None: a row committed without one (no object)
    already_stored: bool = False
    summary: dict[str, Any] | None = None
    #: The object's Patient ID, on the answer of the commit that stored it.
    patient_id: str = ""


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _micros(t: dt.datetime | None) -> int | None:
    """Microseconds since the epoch of an aware (or UTC) datetime."""
    if t is None:
        return None
    d = (t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)) - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def _result(e: Entry, uid: str, already: bool) -> IngestResult:
    at = None if e.ingested_us is None else _EPOCH + dt.timedelta(microseconds=e.ingested_us)
    return IngestResult(uid, e.sha256, e.size, at, already)


#: How long a writer waits for another server's claim of the same UID to be stored
#: before it answers "retry" (seconds).
CLAIM_WAIT_S = 10.0


#: The columns `Store._reindex` reads of each indexed table's files.
_INDEXED_COLUMNS = {
    "ecg": list(dict.fromkeys(["sop_instance_uid", "sha256", "size", "ingested_at",
                               *EXAM_COLUMNS])),
    "header": ["sop_instance_uid"],
    "waveform": ["sop_instance_uid", "group_index"],
    "summary": ["sop_instance_uid", "analysis_version", "measured_at"],
}

_WAVEFORM_META = [n for n in _schema.WAVEFORM.names if n != "samples"]


class _CommitGate:
    """The store's commit lock, aware of files staged ahead of their commit.

    The ingest writer stages a group's files (`staging`) while the catalog commits
    the previous group (`committing`). Holding the gate itself (``with``, re-entrant),
    as compaction and the measurement stage do, means that no commit is running and
    no staged file of this process is waiting for its commit: new staging waits, the
    groups already staged are committed first. So compaction never takes a staged
    file for an orphan, and a summary commit never runs between the two halves of
    an ingest commit.
    """

    def __init__(self) -> None:
        self._commit = threading.RLock()
        self._cond = threading.Condition(threading.Lock())
        self._staged = 0  # groups staged or being staged, not yet committed
        self._closed_by: int | None = None  # the thread holding the gate
        self._depth = 0

    @contextlib.contextmanager
    def staging(self) -> Iterator[None]:
        """Around writing one group's files; `committed` (or `discard`) must follow."""
        with self._cond:
            me = threading.get_ident()
            self._cond.wait_for(lambda: self._closed_by in (None, me))
            self._staged += 1
        try:
            yield
        except BaseException:
            self.committed()
            raise

    def committed(self) -> None:
        """A staged group was committed, or given up."""
        with self._cond:
            self._staged -= 1
            self._cond.notify_all()

    def committing(self) -> threading.RLock:
        """The commit lock alone (the writer's commit of a staged group)."""
        return self._commit

    def __enter__(self) -> _CommitGate:
        me = threading.get_ident()
        with self._cond:
            if self._closed_by == me:
                self._depth += 1
                return self
            self._cond.wait_for(lambda: self._closed_by is None)
            self._closed_by = me
            self._depth = 1
            self._cond.wait_for(lambda: self._staged == 0)
        self._commit.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._depth -= 1
            if self._depth:
                return
            self._commit.release()
            self._closed_by = None
            self._cond.notify_all()


@dataclass(slots=True)
class _StagedIngest:
    """An ingest group whose data files are durable, waiting for its catalog commit.

    ``settled``: answers already known for some items (by position in ``items``):
    another server holds their UID. ``ours``: the items this commit stores."""

    store: Store
    items: list[Prepared]
    ours: list[Prepared]
    paths: dict[str, str]
    settled: dict[int, IngestResult | Exception]

    def commit(self) -> list[IngestResult | Exception]:
        stored = iter(self.store._commit_staged(self.ours, self.paths) if self.ours else ())
        return [self.settled[i] if i in self.settled else next(stored)
                for i in range(len(self.items))]

    def abort(self) -> None:
        if self.ours:
            discard(self.store._files, self.paths)
            self.store._commit_lock.committed()
            self.store._release(self.ours)


class Store:
    """A DuckLake-backed ECG archive. Thread-safe; one writer process per catalog."""

    def __init__(self, lake: Lake, files: FileOps, data_path: str, clock: Clock,
                 locators: Locators) -> None:
        self._lake = lake
        self._locators = locators
        #: This process's name on its claims (`locators.Claim.owner`).
        self._owner = uuid.uuid4().hex
        self._files = files
        self.data_path = data_path
        self._clock = clock
        self._local = threading.local()
        self._ids = threading.Lock()
        #: UIDs whose current-version summary a commit of this process is writing.
        self._summary_claims: set[str] = set()
        self._pending: dict[str, tuple[str, Future[IngestResult]]] = {}
        self._commit_lock = _CommitGate()
        self._compact_lock = threading.Lock()
        self._reader = _q.RowReader(files)
        self._writer: GroupCommitWriter[Prepared, IngestResult] | None = None
        self._measure: Any = None
        self.analysis_version: str | None = None
        self._closed = False
        self.auto_compact_commits: int | None = None
        self._commits_since_compact = 0
        self._compactor: threading.Thread | None = None
        self._timers: set[threading.Timer] = set()
        #: A group failed to write (StorageError) and nothing has succeeded since.
        self._write_failing = False
        #: UIDs of a group whose catalog commit failed with an unknown outcome.
        self._uncertain: set[str] = set()
        self._writer_options: dict[str, Any] = {}
        self._recovery: threading.Thread | None = None
        self._recovered = 0

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
        store = cls(lake, files, data_path, clock or _utcnow, locators)
        try:
            store._create_schema()
            store._remove_temporaries()
            if analyze == "auto":
                analyze, analysis_version = _default_analysis()
            if analysis_version is not None:
                store.analysis_version = str(analysis_version)
            store._reindex()
            store.auto_compact_commits = auto_compact_commits
            _codec.warm_up()
            store._writer_options = dict(max_objects=max_batch,
                                         max_delay_s=max_delay_ms / 1000, max_queued=max_queued)
            store._writer = GroupCommitWriter(stage=store._stage, **store._writer_options)
            store._recovery = threading.Thread(target=store._watch_writes,
                                               name="waveform-recovery", daemon=True)
            store._recovery.start()
            if callable(analyze) and measure:
                from waveform.store.measure import MeasureStage

                store.analysis_version = str(analysis_version)
                store._measure = MeasureStage(store, analyze, str(analysis_version))
                store._measure.catch_up()
        except BaseException:
            store.close()
            raise
        return store

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self._local.cursor = self._lake.cursor()
        return cur

    def _sql(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._cursor().execute(sql, list(params)).fetchall()
        except duckdb.Error as e:
            raise StorageError(f"catalog query failed: {e}") from e

    def _create_schema(self) -> None:
        """The tables and their columns, created or added where missing. Servers
        opening one new catalog at once race to create them; the loser's transaction
        conflicts, and its next attempt finds them made."""
        for attempt in range(1, 6):
            try:
                self._create_tables()
                return
            except duckdb.TransactionException:
                if attempt == 5:
                    raise
                time.sleep(0.05 * attempt)

    def _create_tables(self) -> None:
        cur = self._lake.cursor()
        # Every row is in a data file we wrote and fsynced: no rows inlined into
        # the catalog, and a whole-file DELETE ends the file (compaction needs it).
        cur.execute(f"CALL {ALIAS}.set_option('data_inlining_row_limit', 0)")
        for stmt in _schema.ddl(ALIAS):
            cur.execute(stmt)
        for table in _schema.TABLES:
            present = [r[0] for r in cur.execute(
                "SELECT column_name FROM duckdb_columns() WHERE database_name = ? "
                "AND table_name = ?", [ALIAS, table]).fetchall()]
            for change in _schema.added_columns(table, present):
                cur.execute(f"ALTER TABLE {ALIAS}.{table} {change}")
        rows = cur.execute(
            "SELECT comment FROM duckdb_tables() WHERE database_name = ? AND table_name = 'ecg'",
            [ALIAS],
        ).fetchall()
        found = rows[0][0] if rows else None
        if not found:
            cur.execute(f"COMMENT ON TABLE {ALIAS}.ecg IS '{_schema.VERSION_COMMENT}'")
        elif found != _schema.VERSION_COMMENT:
            raise StorageError(
                f"the catalog is marked {found!r}; this waveform reads and writes "
                f"{_schema.VERSION_COMMENT!r}; migrate it before opening"
            )

    def _remove_temporaries(self) -> None:
        """Temporary files of writes a crash interrupted (never named by the catalog)."""
        for table in _schema.TABLES:
            for p in self._files.list(table_dir(self._files, self.data_path, table)):
                if p.rsplit("/", 1)[-1].rsplit(os.sep, 1)[-1].startswith("."):
                    self._files.remove(p)

    def _reindex(self) -> None:
        """Take into the locator index every live data file it has not taken in: those
        of a commit whose index update a crash cut off, or all of an archive written
        before the index existed. Costs the number of files, not of ECGs."""
        indexed = self._locators.indexed_files(self.analysis_version)
        cur = self._lake.cursor()
        tables = ["ecg", "header", "waveform"]
        if self.analysis_version is not None:
            tables.append("summary")
        taken = 0
        for table in tables:
            live = [r[0] for r in cur.execute(
                f"SELECT data_file FROM ducklake_list_files('{ALIAS}', '{table}')").fetchall()]
            for path in live:
                if path in indexed:
                    continue
                with self._files.open_input(path) as src:
                    t = pq.read_table(src, columns=_INDEXED_COLUMNS[table])
                self._locators.index_rows(table, path, self._index_rows(table, t),
                                          self.analysis_version if table == "summary" else None)
                taken += 1
        if taken:
            log.info("the locator index took in %d data files", taken)

    def _index_rows(self, table: str, t: pa.Table) -> list[tuple[Any, ...]]:
        """`Locators.index_rows`' rows of one file of ``table`` (row = position in ``t``)."""
        uids = t.column("sop_instance_uid").to_pylist()
        if table == "ecg":
            at = pc.cast(t.column("ingested_at"), pa.int64()).to_pylist()
            contexts = t.select(list(EXAM_COLUMNS)).to_pylist() if (
                set(EXAM_COLUMNS) <= set(t.column_names)) else [None] * len(uids)
            return list(zip(uids, range(len(uids)), t.column("sha256").to_pylist(),
                            t.column("size").to_pylist(), at, contexts, strict=True))
        if table == "header":
            return list(zip(uids, range(len(uids)), strict=True))
        if table == "waveform":
            rows: dict[str, list[tuple[int, int]]] = {}
            for r, (u, g) in enumerate(zip(uids, t.column("group_index").to_pylist(),
                                           strict=True)):
                rows.setdefault(u, []).append((g, r))
            return [(u, [r for _, r in sorted(v)]) for u, v in rows.items()]
        # summary: the current version's rows, the latest of an ECG winning
        versions = t.column("analysis_version").to_pylist()
        measured = t.column("measured_at").to_pylist()
        best: dict[str, tuple[Any, int]] = {}
        for r, (u, v, m) in enumerate(zip(uids, versions, measured, strict=True)):
            if v == self.analysis_version and (u not in best or m >= best[u][0]):
                best[u] = (m, r)
        return [(u, r, self.analysis_version) for u, (_, r) in best.items()]

    # --------------------------------------------------------------- writing
    def submit(self, data: bytes | memoryview, organisation: str, *,
               format: str | None = None) -> Future[IngestResult]:
        """Queue one object for the next group commit; the future answers after it.

        The future raises what concerns this object: `Conflict` (same SOP Instance
        UID, other bytes), `InvalidDicom`/`UnsupportedObject`, `InvalidFile` (a
        cart's file, see `records.prepare`: ``format`` or the content says which),
        or the commit's `StorageError` (not stored, retry) / `DurabilityError`. The
        call itself raises what concerns the service: `Overloaded` (queue full),
        `DurabilityError` (the writer has stopped), `StorageError` (closed).
        """
        try:
            p = prepare(data, organisation, self._clock(), format=format)
            return self._enqueue([p])[0]
        except (InvalidDicom, UnsupportedObject, InvalidArgument, Conflict) as e:
            f: Future[IngestResult] = Future()
            # Without its traceback: the frames would keep ``data`` alive (a cycle
            # through this frame's ``f``) until the collector runs.
            f.set_exception(without_traceback(e))
            return f

    def ingest(
        self,
        objects: Iterable[bytes | memoryview],
        organisation: str,
        *,
        wait_summary: bool = False,
        timeout: float | None = None,
    ) -> list[IngestResult]:
        """Store a batch in one transaction: all of it, or (raising) none of it.

        Every object is decoded and checked (including conflicts) before anything
        is written; the first invalid one raises and nothing is stored.
        """
        now = self._clock()
        prepared = [prepare(d, organisation, now) for d in objects]
        futures = self._enqueue(prepared)
        results = [f.result(timeout) for f in futures]
        if wait_summary:
            results = [self._with_summary(r, timeout) for r in results]
        return results

    def _with_summary(self, r: IngestResult, timeout: float | None) -> IngestResult:
        self.wait_for_summary(r.sop_instance_uid, timeout)
        return dataclasses.replace(r, summary=self.get_summary(r.sop_instance_uid))

    def _enqueue(self, prepared: list[Prepared]) -> list[Future[IngestResult]]:
        if self._writer is None:
            raise StorageError("the store is closed")
        out: list[Future[IngestResult] | None] = [None] * len(prepared)
        fresh: list[Prepared] = []
        fresh_at: list[int] = []
        try:
            stored = self._locators.get_many(p.sop_instance_uid for p in prepared)
        except StorageError:
            self._write_failing = True  # the index is unreachable: until a probe passes
            raise
        with self._ids:
            seen: dict[str, str] = {}
            for i, p in enumerate(prepared):
                uid = p.sop_instance_uid
                known = stored.get(uid)
                if known is None and uid in seen:
                    known_sha = seen[uid]
                elif known is not None:
                    known_sha = known.sha256
                elif uid in self._pending:
                    known_sha = self._pending[uid][0]
                else:
                    known_sha = None
                if known_sha is not None and known_sha != p.sha256:
                    raise _conflict(uid, p.sha256)
                if known is not None:
                    f: Future[IngestResult] = Future()
                    f.set_result(_result(known, uid, True))
                    out[i] = f
                elif uid in seen or uid in self._pending:
                    out[i] = None  # chained below to the first copy
                else:
                    seen[uid] = p.sha256
                    fresh.append(p)
                    fresh_at.append(i)
            futures = self._writer.submit(fresh) if fresh else []
            for p, f in zip(fresh, futures, strict=True):
                self._pending[p.sop_instance_uid] = (p.sha256, f)
                f.add_done_callback(self._settler(p.sop_instance_uid))
            for i, f in zip(fresh_at, futures, strict=True):
                out[i] = f
            for i, p in enumerate(prepared):
                if out[i] is None:
                    out[i] = _already(self._pending[p.sop_instance_uid][1])
        return [f for f in out if f is not None]

    def _settler(self, uid: str) -> Callable[[Future[IngestResult]], None]:
        def settle(_: Future[IngestResult]) -> None:
            with self._ids:
                self._pending.pop(uid, None)

        return settle

    def _stage(self, items: list[Prepared]) -> _StagedIngest:
        """Staging thread: a group's UIDs claimed, then its data files written and made
        durable (steps 1-4 of the durability order), while the previous group commits."""
        try:
            ours, settled = self._claim(items)
        except StorageError:
            self._write_failing = True  # the index is unreachable: until a probe passes
            raise
        if not ours:
            return _StagedIngest(self, items, ours, {}, settled)
        tables = _records.tables(ours)
        try:
            with self._commit_lock.staging():
                paths = stage_tables(self._files, self.data_path, tables)
        except BaseException as e:
            if isinstance(e, StorageError):
                self._write_failing = True  # a full disk, say: health says so until a probe
            self._release(ours)
            raise
        return _StagedIngest(self, items, ours, paths, settled)

    def _claim(self, items: list[Prepared]
               ) -> tuple[list[Prepared], dict[int, IngestResult | Exception]]:
        """Claim the group's UIDs in the locator index: the items this process stores,
        and the answers of those another writer holds (stored: "already stored" or a
        conflict; claimed: waited for, up to `CLAIM_WAIT_S`)."""
        now_us = time.time_ns() // 1000
        held = self._locators.claim([(p.sop_instance_uid, p.sha256, p.size) for p in items],
                                    self._owner, now_us)
        ours: list[Prepared] = []
        settled: dict[int, IngestResult | Exception] = {}
        for i, p in enumerate(items):
            c = held.get(p.sop_instance_uid)
            answer = None if c is None else self._held_elsewhere(p, c)
            if answer is None:
                ours.append(p)
            else:
                settled[i] = answer
        return ours, settled

    def _held_elsewhere(self, p: Prepared, c: Claim) -> IngestResult | Exception | None:
        """The answer for ``p`` whose UID ``c`` holds; None when this process took the
        claim over (its writer went silent and its commit never landed)."""
        uid = p.sop_instance_uid
        deadline = time.monotonic() + CLAIM_WAIT_S
        while True:
            if c.sha256 != p.sha256:
                return _conflict(uid, p.sha256)
            if c.entry is not None:
                return _result(c.entry, uid, True)
            now_us = time.time_ns() // 1000
            mine = c.owner == self._owner
            if mine or c.claimed_us < now_us - CLAIM_TTL_S * 1e6:
                landed = self._repair(uid)  # did that writer's commit land after all?
                if landed is not None:
                    return _result(landed, uid, True)
                cutoff = now_us + 1 if mine else now_us - int(CLAIM_TTL_S * 1e6)
                if self._locators.take_over(uid, self._owner, cutoff, now_us):
                    return None
            if time.monotonic() > deadline:
                return StorageError(f"SOP Instance UID {uid} is being stored by another "
                                    "server; retry")
            time.sleep(0.02)
            again = self._locators.claim([(uid, p.sha256, p.size)], self._owner,
                                         time.time_ns() // 1000)
            if uid not in again:
                return None  # its writer gave it up: ours now
            c = again[uid]

    def _release(self, items: Sequence[Prepared]) -> None:
        """Give up the claims of a group that was not stored (best effort: a claim left
        behind goes stale and is taken over)."""
        try:
            self._locators.release([p.sop_instance_uid for p in items], self._owner)
        except StorageError as e:
            log.warning("claims of an unstored group stay until they go stale: %s", e)

    def _commit_staged(self, items: list[Prepared], paths: dict[str, str]) -> list[IngestResult]:
        """Commit thread: one catalog commit for a staged group, then the index."""
        results = []
        # The index is updated under the commit lock too, so that compaction never
        # sees a committed file whose locators are not in the index yet.
        try:
            with self._commit_lock.committing():
                try:
                    register(self._cursor(), self._files, paths)
                except DurabilityError:
                    # Its outcome is unknown: recovery asks the catalog for them.
                    with self._ids:
                        self._uncertain.update(p.sop_instance_uid for p in items)
                    raise
                except StorageError:
                    self._write_failing = True
                    self._release(items)
                    raise
                self._write_failing = False
                row = 0
                entries: dict[str, Entry] = {}
                for i, p in enumerate(items):
                    n = len(p.waveform_rows)
                    e = Entry(
                        p.sha256, p.size, _micros(p.ecg_row["ingested_at"]),
                        (paths["ecg"], i),
                        (paths["header"], i),
                        [(paths["waveform"], row + k) for k in range(n)],
                    )
                    row += n
                    entries[p.sop_instance_uid] = e
                    results.append(dataclasses.replace(
                        _result(e, p.sop_instance_uid, False),
                        patient_id=p.ecg_row.get("patient_id") or ""))
                self._index_stored(entries, paths.values(),
                                   {p.sop_instance_uid: p.ecg_row for p in items})
        finally:
            self._commit_lock.committed()
        self._files.mark("ack")
        self._maybe_compact()
        if self._measure is not None:
            self._measure.enqueue([p.sop_instance_uid for p in items],
                                  [{k: p.ecg_row[k] for k in _schema.SUMMARY_CONTEXT}
                                   for p in items])
        return results

    def _index_stored(self, entries: Mapping[str, Entry], paths: Iterable[str],
                      contexts: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """Mark committed ECGs stored in the locator index. The lake commit has landed, so
        a failure here loses nothing: the files stay unmarked, and the next open takes
        them in; until then a reader finds the claim and asks the lake."""
        try:
            self._locators.stored(entries, paths, contexts)
        except StorageError as e:
            log.warning("the locator index missed a commit (the next open takes it in): %s", e)

    def _commit_replacement(self, table: str, old: list[str], new: str, merged: pa.Table
                            ) -> None:
        """Compaction: one commit that ends ``old`` files and names ``new`` (holding
        ``merged``); then the locators move. Same failure rules as `commit_tables`."""
        cur = self._cursor()
        with self._commit_lock:
            try:
                cur.execute("BEGIN TRANSACTION")
                cur.execute(f"DELETE FROM {ALIAS}.{table} WHERE list_contains(?, filename)", [old])
                cur.execute(f"CALL ducklake_add_data_files('{ALIAS}', '{table}', ?)", [new])
            except duckdb.Error as e:
                cur.execute("ROLLBACK")
                self._files.remove(new)
                raise StorageError(f"compaction of {table} was not registered: {e}") from e
            try:
                self._files.mark("commit")
                cur.execute("COMMIT")
            except (duckdb.Error, OSError) as e:
                with contextlib.suppress(duckdb.Error):
                    cur.execute("ROLLBACK")
                raise DurabilityError(f"the compaction commit of {table} failed: {e}") from e
            self._files.mark("committed")
            if table not in _INDEXED_COLUMNS or (table == "summary"
                                                 and self.analysis_version is None):
                return
            # Committed: a failure here leaves ``new`` unmarked, taken in at the next
            # open; until then readers find the old locators gone and ask the lake.
            try:
                self._locators.moved(table, new, self._index_rows(table, merged), old,
                                     self.analysis_version if table == "summary" else None)
                self._locators.forget_files(old)
            except StorageError as e:
                log.warning("the locator index missed a compaction of %s: %s", table, e)

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

    def compact(self, **options: Any) -> Any:
        """Merge small data files and remove unreferenced ones (`waveform.store.compact`)."""
        from waveform.store.compact import compact

        return compact(self, **options)

    def commit_summaries(self, table: pa.Table) -> int:
        """Durably commit ``summary`` rows and index those of the current version
        (rows of ECGs that already have a summary of it are dropped); the number
        of rows committed.

        Staged and committed like an ingest group: the file is written while an
        ingest commit may run, and only the catalog transaction takes the lock."""
        # Never a second summary of the current version: rows of ECGs that have one,
        # or that another commit of this process is writing now, are dropped.
        uids = table.column("sop_instance_uid").to_pylist()
        versions = table.column("analysis_version").to_pylist()
        current = self.analysis_version
        have = (self._locators.summaries([u for u, v in zip(uids, versions, strict=True)
                                          if v == current], current)
                if current is not None else {})
        with self._ids:
            keep = [i for i, (u, v) in enumerate(zip(uids, versions, strict=True))
                    if v != current or (u not in have and u not in self._summary_claims)]
            claimed = {uids[i] for i in keep if versions[i] == self.analysis_version}
            self._summary_claims |= claimed
        try:
            if len(keep) < table.num_rows:
                table = table.take(pa.array(keep, pa.int64()))
                uids = [uids[i] for i in keep]
                versions = [versions[i] for i in keep]
            if table.num_rows == 0:
                return 0
            with self._commit_lock.staging():
                paths = stage_tables(self._files, self.data_path, {"summary": table})
            try:
                with self._commit_lock.committing():
                    register(self._cursor(), self._files, paths)
                    path = paths["summary"]
                    locs = {u: (path, i) for i, (u, v) in enumerate(zip(uids, versions,
                                                                        strict=True))
                            if current is not None and v == current}
                    try:
                        if current is not None:
                            self._locators.set_summaries(current, locs, path)
                    except StorageError as e:  # committed: the next open takes it in
                        log.warning("the locator index missed summaries: %s", e)
            finally:
                self._commit_lock.committed()
            return table.num_rows
        finally:
            with self._ids:
                self._summary_claims -= claimed

    def _stored_objects(self, uids: Sequence[str]) -> dict[str, bytes | Exception]:
        """Measurement hook: the original objects of ``uids`` (or why one cannot be read).

        Rows committed together are neighbours in their files, so their ``header``
        and ``waveform`` rows are read a row group at a time (`_read_rows`), not a
        row group per object; anything unexpected falls back to `get_dicom` for
        that object.
        """
        from waveform.dicom import join

        entries, missing = self._entries(uids)
        out: dict[str, bytes | Exception] = dict(missing)
        heads = self._read_rows([e.header for e in entries.values() if e.header[1] >= 0],
                                ["sop_instance_uid", "header"])
        groups = self._read_rows([g for e in entries.values() for g in e.groups],
                                 ["sop_instance_uid", "retained", "dtype", "codec", "nbytes",
                                  "n_channels", "samples"])
        for uid, e in entries.items():
            head = heads.get(e.header)
            rows = [groups.get(g) for g in e.groups]
            try:
                if head is None or head["sop_instance_uid"] != uid or any(
                        r is None or r["sop_instance_uid"] != uid for r in rows):
                    out[uid] = self.get_dicom(uid)
                    continue
                parts = [decode_encoded(EncodedSamples(r["codec"], r["samples"], r["nbytes"]),
                                        np.dtype(r["dtype"]), r["n_channels"])
                         for r in rows if r is not None and r["retained"]]
                data = join(head["header"], parts)
                if sha256(data) != e.sha256:
                    out[uid] = self.get_dicom(uid)  # raises the damaged-copy error
                    continue
                out[uid] = data
            except (WaveformError, OSError) as err:  # this object only
                out[uid] = err
        return out

    def _entries(self, uids: Iterable[str]
                 ) -> tuple[dict[str, Entry], dict[str, WaveformError]]:
        """The index entries of ``uids``, and why each of the others has none."""
        uids = list(uids)
        entries = self._locators.get_many(uids)
        missing: dict[str, WaveformError] = {}
        for uid in uids:
            if uid in entries:
                continue
            try:
                entries[uid] = self._entry(uid)
            except WaveformError as err:
                missing[uid] = err
        return entries, missing

    def _read_rows(self, locators: Sequence[tuple[str, int]], columns: list[str]
                   ) -> dict[tuple[str, int], dict[str, Any]]:
        """Rows by locator, each row group of a file read once for all the rows
        asked of it (rows committed together are neighbours, so a batch's rows
        fall in few)."""
        by_file: dict[str, list[int]] = {}
        for path, row in dict.fromkeys(locators):
            by_file.setdefault(path, []).append(row)
        out: dict[tuple[str, int], dict[str, Any]] = {}
        for path, rows in by_file.items():
            try:
                got = self._reader.read_rows(path, rows, columns)
            except (OSError, IndexError):  # moved: the callers fall back to one by one
                continue
            out.update(((path, r), v) for r, v in zip(rows, got, strict=True))
        return out

    def ensure_tables(self, tables: Mapping[str, pa.Schema]) -> None:
        """Create the tables another module owns in this catalog (`schema.RESERVED`).

        Their rows are then committed with `commit_rows` and read with `sql`.
        """
        unknown = sorted(set(tables) - set(_schema.RESERVED))
        if unknown:
            raise ValueError(f"tables {unknown} are not reserved for other modules "
                             f"(reserved: {', '.join(_schema.RESERVED)})")
        with self._commit_lock:
            for name in tables:
                self._files.makedirs(table_dir(self._files, self.data_path, name))
            for stmt in _schema.ddl(ALIAS, tables):
                self._sql(stmt)

    def commit_rows(self, tables: dict[str, pa.Table]) -> dict[str, str]:
        """Durably commit rows of store tables (the measurement stage's way in)."""
        with self._commit_lock:
            return commit_tables(self._cursor(), self._files, self.data_path, tables)

    # --------------------------------------------------------------- reading
    def _entry(self, uid: str, refresh: bool = False) -> Entry:
        """Where ``uid``'s rows are: from the locator index, or from the lake itself when
        the index may be behind (``refresh``: a locator pointed at another row, say
        after another server's compaction; or the UID is claimed, and its writer may
        have committed without updating the index), which then repairs the index."""
        e = None if refresh else self._locators.get(uid)
        if e is None:
            if not refresh and self._locators.claimed(uid) is None:
                raise NotFound(f"no ECG with SOP Instance UID {uid!r} is stored")
            e = self._repair(uid)
            if e is None:
                raise NotFound(f"no ECG with SOP Instance UID {uid!r} is stored")
        return e

    def _repair(self, uid: str) -> Entry | None:
        """``uid``'s locators (and examination columns) read from the lake and written
        to the locator index; None if the lake does not hold it."""
        e = self._lookup(uid)
        if e is not None:
            rows = self._sql(f"SELECT {', '.join(EXAM_COLUMNS)} FROM {ALIAS}.ecg "
                             "WHERE sop_instance_uid = ?", [uid])
            self._index_stored({uid: e}, [],
                               {uid: dict(zip(EXAM_COLUMNS, rows[0], strict=True))}
                               if rows else None)
        return e

    def _lookup(self, uid: str) -> Entry | None:
        ecg = self._sql(
            f"SELECT sha256, size, ingested_at, filename, file_row_number FROM {ALIAS}.ecg "
            "WHERE sop_instance_uid = ?", [uid])
        if not ecg:
            return None
        groups = self._sql(
            f"SELECT filename, file_row_number FROM {ALIAS}.waveform "
            "WHERE sop_instance_uid = ? ORDER BY group_index", [uid])
        head = self._sql(
            f"SELECT filename, file_row_number FROM {ALIAS}.header "
            "WHERE sop_instance_uid = ?", [uid])
        sha, size, at, fn, row = ecg[0]
        return Entry(sha, size, _micros(at), (fn, row), head[0] if head else ("", -1),
                      [(f, r) for f, r in groups])

    def _read(self, uid: str, fn: Callable[[Entry], Any]) -> Any:
        """``fn(entry)``, retried once with a fresh locator if its file is gone; data
        files that cannot be read (object storage unreachable, say) are a
        `StorageError` (retry later)."""
        try:
            return fn(self._entry(uid))
        except (OSError, IndexError):
            pass
        try:
            return fn(self._entry(uid, refresh=True))
        except OSError as e:
            raise StorageError(f"the data files of ECG {uid} cannot be read now: {e}") from e

    def contains(self, uid: str) -> bool:
        return self._locators.get(uid) is not None

    def unmeasured(self, version: str) -> list[str]:
        """Stored ECGs without a summary of analysis ``version`` (that the locator index
        knows of: the summaries this store and the servers beside it committed)."""
        return self._locators.without_summary(version)

    def exams(self, column: str, value: str) -> list[dict[str, Any]]:
        """The stored ECGs whose ``column`` (``patient_id``, ``study_instance_uid``,
        ``accession_number``, or ``uid``: the SOP Instance UID) is ``value``: their
        ``ecg`` columns `locators.EXAM_COLUMNS`, one indexed query."""
        return self._locators.exams(column, value)

    def uids(self) -> list[str]:
        """Every stored ECG's SOP Instance UID, in order (tests and tools: a query over
        the whole index)."""
        return self._locators.uids()

    def _waveform_rows(
        self, e: Entry, columns: list[str], groups: Sequence[int]
    ) -> list[dict[str, Any]]:
        return [self._reader.read(e.groups[g][0], e.groups[g][1], columns)[0] for g in groups]

    def _dicom_parts(self, uid: str, e: Entry) -> tuple[bytes, list[bytes], str]:
        if e.header[1] < 0:
            raise NotFound(f"ECG {uid} is catalogued without its original object")
        head = self._reader.read(e.header[0], e.header[1], ["header", "sop_instance_uid"])[0]
        if head["sop_instance_uid"] != uid:
            raise IndexError(f"locator of {uid} points at {head['sop_instance_uid']}")
        rows = self._waveform_rows(e, ["sop_instance_uid", "retained", "dtype", "codec",
                                       "nbytes", "n_channels", "samples"], range(len(e.groups)))
        parts = []
        for r in rows:
            if r["sop_instance_uid"] != uid:
                raise IndexError(f"locator of {uid} points at {r['sop_instance_uid']}")
            if r["retained"]:
                enc = EncodedSamples(r["codec"], r["samples"], r["nbytes"])
                parts.append(decode_encoded(enc, np.dtype(r["dtype"]), r["n_channels"]))
        return head["header"], parts, e.sha256

    def ecg_context(self, uid: str, columns: Sequence[str] = ()) -> dict[str, Any]:
        """``ecg`` columns of one ECG: those summary rows carry (`schema.SUMMARY_CONTEXT`)
        and any others named in ``columns``."""
        cols = _context_columns(columns)

        def fetch(e: Entry) -> dict[str, Any]:
            row = self._reader.read(e.ecg[0], e.ecg[1], cols)[0]
            if row["sop_instance_uid"] != uid:
                raise IndexError(f"locator of {uid} points at {row['sop_instance_uid']}")
            return row

        out: dict[str, Any] = self._read(uid, fetch)
        return out

    def ecg_contexts(self, uids: Sequence[str], columns: Sequence[str] = ()
                     ) -> dict[str, dict[str, Any] | Exception]:
        """`ecg_context` of many ECGs (or why one cannot be read), their ``ecg``
        rows read a row group at a time (`_read_rows`): ECGs committed together are
        neighbours there, and one read per row cost each new ECG a row group."""
        entries, missing = self._entries(uids)
        out: dict[str, dict[str, Any] | Exception] = dict(missing)
        rows = self._read_rows([e.ecg for e in entries.values()], _context_columns(columns))
        for uid, e in entries.items():
            row = rows.get(e.ecg)
            if row is not None and row["sop_instance_uid"] == uid:
                out[uid] = row
                continue
            try:  # moved since (compaction): one by one, with a fresh locator
                out[uid] = self.ecg_context(uid, columns)
            except (WaveformError, OSError, IndexError) as err:  # this ECG only
                out[uid] = err
        return {uid: out[uid] for uid in uids}

    def get_dicom(self, uid: str) -> bytes:
        """The original object, byte for byte (its SHA-256 is checked before it is returned)."""
        from waveform.dicom import join

        header, parts, digest = self._read(uid, lambda e: self._dicom_parts(uid, e))
        data = join(header, parts)
        if sha256(data) != digest:
            raise StorageError(f"ECG {uid} reassembles to other bytes than were stored "
                               f"(SHA-256 {digest[:16]}...); the archive copy is damaged")
        return data

    def get_original(self, uid: str) -> tuple[str, bytes]:
        """The format and the file, byte for byte, of an ECG that came in a cart's own
        format (its SHA-256 is checked). `NotFound` when no such ECG is stored, or
        when it came as DICOM (then `get_dicom` is the original)."""
        self._entry(uid)
        for attempt in (1, 2):  # a file compaction replaced meanwhile: ask the catalog again
            rows = self._sql(f"SELECT format, sha256, filename, file_row_number FROM "
                             f"{ALIAS}.original WHERE sop_instance_uid = ?", [uid])
            if not rows:
                raise NotFound(f"ECG {uid} was ingested as DICOM; use GetDicom for its "
                               "original object")
            fmt, digest, path, row = rows[0]
            try:
                got = self._reader.read(path, row, ["sop_instance_uid", "original"])[0]
                break
            except (OSError, IndexError):
                if attempt == 2:
                    raise
        data = bytes(got["original"])
        if got["sop_instance_uid"] != uid or sha256(data) != digest:
            raise StorageError(f"the original file of ECG {uid} reads back as other bytes than "
                               f"were stored (SHA-256 {digest[:16]}...); the archive copy is "
                               "damaged")
        return str(fmt), data

    def get_trace(
        self,
        uid: str,
        group: int = 0,
        leads: Sequence[str] | None = None,
        start_s: float = 0.0,
        duration_s: float | None = None,
        fs: float | None = None,
        units: str = "uV",
    ) -> _q.Trace:
        """Samples of multiplex group ``group``, sliced to ``leads`` and the window.

        Bounds (`MAX_TRACE_RATE_HZ`, `MAX_TRACE_VALUES`): every number must be finite,
        the window non-negative, the rate positive and at most `MAX_TRACE_RATE_HZ`,
        and the answer at most `MAX_TRACE_VALUES` samples over all its leads."""
        _check_window(start_s, duration_s, fs)
        if units not in ("uV", "raw"):
            raise InvalidArgument(f"units {units!r}: expected 'uV' or 'raw'")
        if units == "raw" and fs is not None:
            raise InvalidArgument("resampling (fs) gives µV; ask for units='uV' or no fs")
        n_groups = len(self._entry(uid).groups)
        if not 0 <= group < n_groups:
            raise InvalidArgument(f"ECG {uid} has {n_groups} multiplex groups; no group {group}")

        def fetch(e: Entry) -> dict[str, Any]:
            r = self._waveform_rows(e, [*_WAVEFORM_META, "samples"], [group])[0]
            if r["sop_instance_uid"] != uid:
                raise IndexError(f"locator of {uid} points at {r['sop_instance_uid']}")
            return r

        row: dict[str, Any] = self._read(uid, fetch)
        raw = decode_samples(row)
        channels = channels_from_row(row["channels"], row["dtype"])
        names = [c.name for c in channels]
        if leads:
            missing = [name for name in leads if name not in names]
            if missing:
                raise InvalidArgument(f"ECG {uid} group {group} has no lead {missing[0]!r}; "
                                      f"it has {names}")
            idx = [names.index(name) for name in leads]
        else:
            idx = list(range(len(channels)))
        rate = float(row["sampling_frequency"])
        i0 = round(start_s * rate)
        n = raw.shape[1]
        i1 = n if duration_s is None else min(n, i0 + round(duration_s * rate))
        if i0 >= raw.shape[1]:
            raise InvalidArgument(f"start {start_s} s is past the end "
                                  f"({raw.shape[1] / rate:.3f} s)")
        sel = [channels[i] for i in idx]
        x = raw[idx, i0:i1]
        common = dict(sop_instance_uid=uid, group=group, label=row["label"] or "",
                      leads=tuple(names[i] for i in idx), start_s=i0 / rate)
        if units == "raw":
            return _q.Trace(**common, sampling_frequency=rate, units="raw",  # type: ignore[arg-type]
                            data=np.ascontiguousarray(x),
                            sensitivity=tuple(c.sensitivity for c in sel),
                            correction=tuple(c.correction for c in sel),
                            baseline=tuple(c.baseline for c in sel),
                            channel_units=tuple(c.units for c in sel))
        from waveform.dsp.scale import to_microvolts

        stored = [c.bits_stored for c in channels if c.bits_stored]
        # The same scaling as the printout and the analysis (`WaveformGroup.microvolts`):
        # G.711 codes expanded and Waveform Bits Stored sign-extended.
        uv = to_microvolts(
            x, [c.sensitivity for c in sel], [c.correction for c in sel],
            [c.baseline for c in sel], [c.units for c in sel], [c.padding for c in sel],
            interpretation=row["interpretation"] or "", bits_stored=min(stored, default=None),
        )
        out_n = x.shape[1] if fs is None else math.ceil(x.shape[1] * float(fs) / rate)
        if out_n * len(idx) > MAX_TRACE_VALUES:
            raise InvalidArgument(
                f"the trace asked for would hold {out_n * len(idx):,} samples ({len(idx)} leads "
                f"x {out_n:,}); at most {MAX_TRACE_VALUES:,} are sent in one answer: ask for "
                "fewer leads, a shorter window or a lower rate")
        if fs is not None and fs != rate:
            from waveform.dsp.resample import resample

            uv = np.asarray(resample(uv, rate, fs), dtype=np.float32)
            rate = float(fs)
        return _q.Trace(**common, sampling_frequency=rate, units="uV", data=uv)  # type: ignore[arg-type]

    def get_summary(self, uid: str, analysis_version: str | None = None) -> dict[str, Any] | None:
        """The latest summary of ``uid`` (of ``analysis_version`` if given), or None."""
        self._entry(uid)
        if analysis_version is not None:
            rows = self._sql(
                f"SELECT document, median_beat FROM {ALIAS}.summary WHERE sop_instance_uid = ? "
                "AND analysis_version = ? ORDER BY measured_at DESC LIMIT 1",
                [uid, analysis_version])
        else:
            rows = self._sql(
                f"SELECT document, median_beat FROM {ALIAS}.summary WHERE sop_instance_uid = ? "
                "ORDER BY analysis_version = ? DESC, measured_at DESC LIMIT 1",
                [uid, self.analysis_version or ""])
        if not rows:
            return None
        from waveform.store.summaries import summary_document

        try:
            return summary_document(rows[0][0], rows[0][1])
        except ValueError as e:  # a median beat that does not fit its leads: damaged
            raise StorageError(f"the summary of {uid} cannot be read: {e}") from e

    def search(self, query: _q.SearchQuery | None = None, **filters: Any) -> _q.Page:
        """One page of ECGs matching ``query`` (or keyword filters, see `SearchQuery`)."""
        if query is None:
            equals = tuple((k, filters.pop(k)) for k in list(filters) if k in _q._EQUALS)
            ranges = tuple(filters.pop("ranges", ()))
            query = _q.SearchQuery(equals=equals, ranges=ranges, **filters)
        sql, params, two_phase = _q.search_sql(query, self.analysis_version)
        cur = self._cursor()
        try:
            res = cur.execute(sql, params)
            names = [d[0] for d in res.description]
            page = _q.page_from(res.fetchall(), names, query.limit)
            if two_phase and (query.analysis_version in (None, self.analysis_version)
                              and self.analysis_version is not None):
                self.attach_summaries(page.rows)
            elif two_phase:
                version = query.analysis_version or self.analysis_version
                found: dict[str, tuple[Any, ...]] = {}
                s_names = list(_q.SUMMARY_RESULT)
                plan = _q.summaries_sql(page.rows, version)
                if plan is not None:
                    res = cur.execute(*plan)
                    s_names = [d[0] for d in res.description][2:]
                    for r in res.fetchall():  # ordered by measured_at: the latest wins
                        found[r[0]] = r[2:]
                for row in page.rows:
                    values = found.get(row["sop_instance_uid"])
                    for i, n in enumerate(s_names):
                        row[n] = None if values is None else values[i]
        except duckdb.Error as e:
            raise StorageError(f"search failed: {e}") from e
        return page

    def attach_summaries(self, rows: list[dict[str, Any]]) -> None:
        """Add to each row (a dict with ``sop_instance_uid``) the searchable measurements
        of its current summary (`queries.SUMMARY_RESULT`; None where there is none),
        read directly by locator (also phase two of a search)."""
        cols = ["sop_instance_uid", *_q.SUMMARY_RESULT]
        found = (self._locators.summaries([row["sop_instance_uid"] for row in rows],
                                          self.analysis_version)
                 if self.analysis_version is not None else {})
        locs = [found.get(row["sop_instance_uid"]) for row in rows]
        # A row moved by another process is not found here: the catalog is asked.
        fetched = self._read_rows([loc for loc in locs if loc is not None], cols)
        for row, loc in zip(rows, locs, strict=True):
            uid = row["sop_instance_uid"]
            values: dict[str, Any] = {}
            if loc is not None:
                values = fetched.get(loc, {})
                if values.get("sop_instance_uid") != uid:
                    got = self._sql(
                        f"SELECT {', '.join(cols)} FROM {ALIAS}.summary WHERE "
                        "sop_instance_uid = ? AND analysis_version = ? "
                        "ORDER BY measured_at DESC LIMIT 1", [uid, self.analysis_version])
                    values = dict(zip(cols, got[0], strict=True)) if got else {}
            for c in _q.SUMMARY_RESULT:
                row[c] = values.get(c)

    def sql_arrow(self, sql: str, params: Sequence[Any] = ()) -> pa.Table:
        """A read query's result as an Arrow table (large results, column at a time)."""
        try:
            return self._cursor().execute(sql, list(params)).to_arrow_table()
        except duckdb.Error as e:
            raise StorageError(f"catalog query failed: {e}") from e

    def sql(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Read-only SQL over the catalog (tables are ``lake.ecg`` etc.), bound parameters."""
        return self._sql(sql, params)

    # ------------------------------------------------------------ lifecycle
    @property
    def queued(self) -> int:
        """Objects submitted and not yet taken into a commit group."""
        return self._writer.queued if self._writer else 0

    @property
    def stopped(self) -> BaseException | None:
        """The `DurabilityError` that stopped the writer, if any."""
        return self._writer.stopped if self._writer else None

    def wait_for_summary(self, uid: str, timeout: float | None = None) -> None:
        """Block until the measurement stage has measured ``uid`` (or ``timeout``
        passed; then the summary may be absent)."""
        if self._measure is not None:
            self._measure.wait_for(uid, timeout)

    def wait_measured(self, timeout: float | None = None) -> bool:
        """Block until the measurement stage has caught up (tests, batch jobs, the
        demo); False if ``timeout`` ran out first."""
        return self._measure.join(timeout) if self._measure is not None else True

    # ------------------------------------------------------------ recovery
    @property
    def writable(self) -> bool:
        """False while the store cannot write: the writer stopped after a failed fsync
        or commit, or the last group could not be written (a full disk), until a
        probe write succeeds (checked every `PROBE_INTERVAL_S`) and the store has
        recovered by itself."""
        writer = self._writer
        return not self._closed and not self._write_failing and (
            writer is not None and writer.stopped is None)

    @property
    def recoveries(self) -> int:
        """How many times the store has recovered from a write failure."""
        return self._recovered

    def _watch_writes(self) -> None:
        while not self._closed:
            time.sleep(PROBE_INTERVAL_S)
            if self._closed or self.writable:
                continue
            try:
                self._probe()
                self._recover()
            except (WaveformError, OSError, duckdb.Error) as e:
                log.info("the store still cannot write: %s", e)

    def _probe(self) -> None:
        """A small file written, fsynced and removed where data files go, a catalog
        round trip (one that reaches the metadata database) and one to the locator
        index: raises while any fails."""
        directory = table_dir(self._files, self.data_path, "ecg")
        path = self._files.join(directory, f".probe-{time.time_ns()}.tmp")
        try:
            self._files.write(path, b"\0" * 4096)
            self._files.fsync(path)
        finally:
            with contextlib.suppress(OSError):
                self._files.remove(path)
        self._lake.cursor().execute(
            f"SELECT * FROM ducklake_current_snapshot('{ALIAS}')").fetchall()
        self._locators.ping()

    def _recover(self) -> None:
        """After a passing probe: the UIDs of a commit of unknown outcome are looked up
        in the catalog (and indexed if it landed), and a stopped writer is replaced."""
        with self._ids:
            uncertain, self._uncertain = list(self._uncertain), set()
        for uid in uncertain:
            if self._repair(uid) is None:
                self._locators.release([uid], self._owner)
        old = self._writer
        if old is not None and old.stopped is not None and not self._closed:
            old.close(5)
            self._writer = GroupCommitWriter(stage=self._stage, **self._writer_options)
        self._write_failing = False
        self._recovered += 1
        log.warning("the store can write again; ingest resumes",
                    extra={"uncertain": len(uncertain)})

    def later(self, delay_s: float, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on a background thread in ``delay_s`` seconds, unless the store
        is closed first (maintenance: compaction's removal of replaced files). A
        failure is logged; the next compaction tries again."""

        def run() -> None:
            with self._ids:
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
        with self._ids:
            if self._closed:
                return
            self._timers.add(timer)
        timer.start()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._ids:
            timers, self._timers = list(self._timers), set()
        for t in timers:
            t.cancel()
        if self._writer is not None:
            self._writer.close()
        if self._recovery is not None:
            self._recovery.join(2 * PROBE_INTERVAL_S)
        if self._compactor is not None:
            self._compactor.join()
        if self._measure is not None:
            self._measure.close()
        self._lake.close()
        self._locators.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: How often a store that cannot write tries a probe write (seconds).
PROBE_INTERVAL_S = 0.5

#: The highest rate a trace is resampled to (Hz): above any ECG or
#: electrophysiology acquisition rate a viewer can use.
MAX_TRACE_RATE_HZ = 20_000.0
#: The most samples (over all leads) one trace answer holds: 12 leads of 10 minutes
#: at 2 kHz.
MAX_TRACE_VALUES = 16_000_000


def _check_window(start_s: float, duration_s: float | None, fs: float | None) -> None:
    """`Store.get_trace`'s numbers: finite, and within the stated bounds."""
    named = (("start_s", start_s), ("duration_s", duration_s), ("sampling_frequency", fs))
    for name, value in named:
        if value is not None and not math.isfinite(value):
            raise InvalidArgument(f"{name} is {value}; it must be a finite number")
    if start_s < 0:
        raise InvalidArgument(f"start_s is {start_s} s; it must be 0 or more")
    if duration_s is not None and duration_s <= 0:
        raise InvalidArgument(f"duration_s is {duration_s} s; it must be positive (or "
                              "absent: to the end)")
    if fs is not None and not 0 < fs <= MAX_TRACE_RATE_HZ:
        raise InvalidArgument(f"sampling_frequency is {fs} Hz; it must be above 0 and at "
                              f"most {MAX_TRACE_RATE_HZ:g} Hz")


def _context_columns(columns: Sequence[str]) -> list[str]:
    """The ``ecg`` columns `Store.ecg_context` reads: the UID (to check the
    locator), those summary rows carry, and ``columns``, each once."""
    return list(dict.fromkeys(["sop_instance_uid", *_schema.SUMMARY_CONTEXT, *columns]))


def _conflict(uid: str, sha: str) -> Conflict:
    # Nothing of the stored object is told (it may be another organisation's): only
    # that its content differs.
    return Conflict(f"SOP Instance UID {uid} is already stored with other content than this "
                    f"object (SHA-256 {sha[:16]}...); send it with a new SOP Instance UID",
                    uid=uid)


def _already(first: Future[IngestResult]) -> Future[IngestResult]:
    """A future that answers as ``first`` does, marked already stored."""
    out: Future[IngestResult] = Future()

    def done(f: Future[IngestResult]) -> None:
        err = f.exception()
        if err is not None:
            out.set_exception(err)
        else:
            out.set_result(dataclasses.replace(f.result(), already_stored=True))

    first.add_done_callback(done)
    return out


def _default_analysis() -> tuple[Callable[[Any], Any] | None, str | None]:
    try:
        from waveform.analysis import ANALYSIS_VERSION, analyze
    except ImportError:
        log.warning("waveform.analysis is not importable; summaries will not be computed")
        return None, None
    return analyze, str(ANALYSIS_VERSION)
