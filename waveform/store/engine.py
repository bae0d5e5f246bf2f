"""The store's engine: the lake, the data files, the commit gate and the locators.

What the ingest path (`waveform.store.ingest`), the read path
(`waveform.store.reads`), compaction and the measurement stage share: the DuckDB
connection with the DuckLake catalog attached (`lake`), the `FileOps` every data
file goes through (`files`), the gate every catalog commit passes (`gate`), and the
locator index that says where each ECG's rows are (`locators`), with the ways to
read rows by locator and to ask the lake itself when the index may be behind.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from waveform.errors import DurabilityError, NotFound, StorageError, WaveformError
from waveform.store import queries as _q
from waveform.store import schema as _schema
from waveform.store.durable import commit_tables, table_dir
from waveform.store.files import FileOps
from waveform.store.lake import ALIAS, Lake
from waveform.store.locators import EXAM_COLUMNS, Entry, Locators

__all__ = ["EPOCH", "INDEXED_COLUMNS", "Clock", "CommitGate", "Engine", "micros"]

log = logging.getLogger("waveform.store.store")

Clock = Callable[[], dt.datetime]

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def micros(t: dt.datetime | None) -> int | None:
    """Microseconds since the epoch of an aware (or UTC) datetime."""
    if t is None:
        return None
    d = (t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)) - EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


#: The columns `Engine.reindex` reads of each indexed table's files.
INDEXED_COLUMNS = {
    "ecg": list(dict.fromkeys(["sop_instance_uid", "sha256", "size", "ingested_at",
                               *EXAM_COLUMNS])),
    "header": ["sop_instance_uid"],
    "waveform": ["sop_instance_uid", "group_index"],
    "summary": ["sop_instance_uid", "analysis_version", "measured_at"],
}


class CommitGate:
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

    def __enter__(self) -> CommitGate:
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


class Engine:
    """What the store's parts share (see the module docstring). Thread-safe."""

    def __init__(self, lake: Lake, files: FileOps, data_path: str, clock: Clock,
                 locators: Locators) -> None:
        self.lake = lake
        self.files = files
        self.data_path = data_path
        self.clock = clock
        self.locators = locators
        #: This process's name on its claims (`locators.Claim.owner`).
        self.owner = uuid.uuid4().hex
        self.gate = CommitGate()
        #: Held by a compaction (one at a time).
        self.compaction = threading.Lock()
        self.reader = _q.RowReader(files)
        #: The analysis version whose summaries the locator index follows.
        self.analysis_version: str | None = None
        self._local = threading.local()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self._local.cursor = self.lake.cursor()
        return cur

    def sql(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self.cursor().execute(sql, list(params)).fetchall()
        except duckdb.Error as e:
            raise StorageError(f"catalog query failed: {e}") from e

    def create_schema(self) -> None:
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
        cur = self.lake.cursor()
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

    def remove_temporaries(self) -> None:
        """Temporary files of writes a crash interrupted (never named by the catalog)."""
        for table in _schema.TABLES:
            for p in self.files.list(table_dir(self.files, self.data_path, table)):
                if p.rsplit("/", 1)[-1].rsplit(os.sep, 1)[-1].startswith("."):
                    self.files.remove(p)

    def reindex(self) -> None:
        """Take into the locator index every live data file it has not taken in: those
        of a commit whose index update a crash cut off, or all of an archive written
        before the index existed. Costs the number of files, not of ECGs."""
        indexed = self.locators.indexed_files(self.analysis_version)
        cur = self.lake.cursor()
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
                with self.files.open_input(path) as src:
                    t = pq.read_table(src, columns=INDEXED_COLUMNS[table])
                self.locators.index_rows(table, path, self.index_rows(table, t),
                                          self.analysis_version if table == "summary" else None)
                taken += 1
        if taken:
            log.info("the locator index took in %d data files", taken)

    def index_rows(self, table: str, t: pa.Table) -> list[tuple[Any, ...]]:
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

    def index_stored(self, entries: Mapping[str, Entry], paths: Iterable[str],
                      contexts: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """Mark committed ECGs stored in the locator index. The lake commit has landed, so
        a failure here loses nothing: the files stay unmarked, and the next open takes
        them in; until then a reader finds the claim and asks the lake."""
        try:
            self.locators.stored(entries, paths, contexts)
        except StorageError as e:
            log.warning("the locator index missed a commit (the next open takes it in): %s", e)

    def commit_replacement(self, table: str, old: list[str], new: str, merged: pa.Table
                            ) -> None:
        """Compaction: one commit that ends ``old`` files and names ``new`` (holding
        ``merged``); then the locators move. Same failure rules as `commit_tables`."""
        cur = self.cursor()
        with self.gate:
            try:
                cur.execute("BEGIN TRANSACTION")
                cur.execute(f"DELETE FROM {ALIAS}.{table} WHERE list_contains(?, filename)", [old])
                cur.execute(f"CALL ducklake_add_data_files('{ALIAS}', '{table}', ?)", [new])
            except duckdb.Error as e:
                cur.execute("ROLLBACK")
                self.files.remove(new)
                raise StorageError(f"compaction of {table} was not registered: {e}") from e
            try:
                self.files.mark("commit")
                cur.execute("COMMIT")
            except duckdb.TransactionException as e:
                # Another server committed to these files meanwhile (DuckLake detects
                # the conflict and commits nothing, and does not retry a DELETE): the
                # merge is given up, and the next compaction tries again.
                with contextlib.suppress(duckdb.Error):
                    cur.execute("ROLLBACK")
                self.files.remove(new)
                raise StorageError(f"compaction of {table} conflicted with another commit "
                                   f"and was given up: {e}") from e
            except (duckdb.Error, OSError) as e:
                with contextlib.suppress(duckdb.Error):
                    cur.execute("ROLLBACK")
                raise DurabilityError(f"the compaction commit of {table} failed: {e}") from e
            self.files.mark("committed")
            if table not in INDEXED_COLUMNS or (table == "summary"
                                                 and self.analysis_version is None):
                return
            # Committed: a failure here leaves ``new`` unmarked, taken in at the next
            # open; until then readers find the old locators gone and ask the lake.
            try:
                self.locators.moved(table, new, self.index_rows(table, merged), old,
                                     self.analysis_version if table == "summary" else None)
                self.locators.forget_files(old)
            except StorageError as e:
                log.warning("the locator index missed a compaction of %s: %s", table, e)

    def ensure_tables(self, tables: Mapping[str, pa.Schema]) -> None:
        """Create the tables another module owns in this catalog (`schema.RESERVED`).

        Their rows are then committed with `commit_rows` and read with `sql`.
        """
        unknown = sorted(set(tables) - set(_schema.RESERVED))
        if unknown:
            raise ValueError(f"tables {unknown} are not reserved for other modules "
                             f"(reserved: {', '.join(_schema.RESERVED)})")
        with self.gate:
            for name in tables:
                self.files.makedirs(table_dir(self.files, self.data_path, name))
            for attempt in range(1, 6):
                try:
                    for stmt in _schema.ddl(ALIAS, tables):
                        self.cursor().execute(stmt)
                    return
                except duckdb.TransactionException:
                    # Servers opening one new catalog at once race to create them;
                    # the loser's next attempt finds them made.
                    if attempt == 5:
                        raise StorageError("the archive's tables could not be created: "
                                           "other servers kept creating them") from None
                    time.sleep(0.05 * attempt)
                except duckdb.Error as e:
                    raise StorageError(f"catalog query failed: {e}") from e

    def commit_rows(self, tables: dict[str, pa.Table]) -> dict[str, str]:
        """Durably commit rows of store tables (the measurement stage's way in)."""
        with self.gate:
            return commit_tables(self.cursor(), self.files, self.data_path, tables)

    def entry(self, uid: str, refresh: bool = False) -> Entry:
        """Where ``uid``'s rows are: from the locator index, or from the lake itself when
        the index may be behind (``refresh``: a locator pointed at another row, say
        after another server's compaction; or the UID is claimed, and its writer may
        have committed without updating the index), which then repairs the index."""
        e = None if refresh else self.locators.get(uid)
        if e is None:
            if not refresh and self.locators.claimed(uid) is None:
                raise NotFound(f"no ECG with SOP Instance UID {uid!r} is stored")
            e = self.repair(uid)
            if e is None:
                raise NotFound(f"no ECG with SOP Instance UID {uid!r} is stored")
        return e

    def entries(self, uids: Iterable[str]
                 ) -> tuple[dict[str, Entry], dict[str, WaveformError]]:
        """The index entries of ``uids``, and why each of the others has none."""
        uids = list(uids)
        entries = self.locators.get_many(uids)
        missing: dict[str, WaveformError] = {}
        for uid in uids:
            if uid in entries:
                continue
            try:
                entries[uid] = self.entry(uid)
            except WaveformError as err:
                missing[uid] = err
        return entries, missing

    def repair(self, uid: str) -> Entry | None:
        """``uid``'s locators (and examination columns) read from the lake and written
        to the locator index; None if the lake does not hold it."""
        e = self.lookup(uid)
        if e is not None:
            rows = self.sql(f"SELECT {', '.join(EXAM_COLUMNS)} FROM {ALIAS}.ecg "
                             "WHERE sop_instance_uid = ?", [uid])
            self.index_stored({uid: e}, [],
                               {uid: dict(zip(EXAM_COLUMNS, rows[0], strict=True))}
                               if rows else None)
        return e

    def lookup(self, uid: str) -> Entry | None:
        ecg = self.sql(
            f"SELECT sha256, size, ingested_at, filename, file_row_number FROM {ALIAS}.ecg "
            "WHERE sop_instance_uid = ?", [uid])
        if not ecg:
            return None
        groups = self.sql(
            f"SELECT filename, file_row_number FROM {ALIAS}.waveform "
            "WHERE sop_instance_uid = ? ORDER BY group_index", [uid])
        head = self.sql(
            f"SELECT filename, file_row_number FROM {ALIAS}.header "
            "WHERE sop_instance_uid = ?", [uid])
        sha, size, at, fn, row = ecg[0]
        return Entry(sha, size, micros(at), (fn, row), head[0] if head else ("", -1),
                      [(f, r) for f, r in groups])

    def read(self, uid: str, fn: Callable[[Entry], Any]) -> Any:
        """``fn(entry)``, retried once with a fresh locator if its file is gone; data
        files that cannot be read (object storage unreachable, say) are a
        `StorageError` (retry later)."""
        try:
            return fn(self.entry(uid))
        except (OSError, IndexError):
            pass
        try:
            return fn(self.entry(uid, refresh=True))
        except OSError as e:
            raise StorageError(f"the data files of ECG {uid} cannot be read now: {e}") from e

    def read_rows(self, locators: Sequence[tuple[str, int]], columns: list[str]
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
                got = self.reader.read_rows(path, rows, columns)
            except (OSError, IndexError):  # moved: the callers fall back to one by one
                continue
            out.update(((path, r), v) for r, v in zip(rows, got, strict=True))
        return out

    def sql_arrow(self, sql: str, params: Sequence[Any] = ()) -> pa.Table:
        """A read query's result as an Arrow table (large results, column at a time)."""
        try:
            return self.cursor().execute(sql, list(params)).to_arrow_table()
        except duckdb.Error as e:
            raise StorageError(f"catalog query failed: {e}") from e

    def probe(self) -> None:
        """A small file written, fsynced and removed where data files go, a catalog
        round trip (one that reaches the metadata database) and one to the locator
        index: raises while any fails."""
        directory = table_dir(self.files, self.data_path, "ecg")
        path = self.files.join(directory, f".probe-{time.time_ns()}.tmp")
        try:
            self.files.write(path, b"\0" * 4096)
            self.files.fsync(path)
        finally:
            with contextlib.suppress(OSError):
                self.files.remove(path)
        self.lake.cursor().execute(
            f"SELECT * FROM ducklake_current_snapshot('{ALIAS}')").fetchall()
        self.locators.ping()

    def close(self) -> None:
        self.lake.close()
        # Closing the lake closed every thread's cursor; the cursors themselves are
        # let go here, on this thread. Left in their threads' locals they would go
        # when each thread ends, and a DuckDB connection's destructor lets go of the
        # GIL and takes it again: on a daemon thread while the interpreter exits,
        # that ends the thread (pthread_exit) inside a noexcept destructor and the
        # process aborts ("terminate called without an active exception";
        # duckdb/duckdb#13904).
        self._local = threading.local()
        self.locators.close()
