"""Compaction: merge small data files, then remove files nothing refers to.

Safe while readers and writers run, because it follows the durability order and
never removes a file a reader may still hold:

1. Small live files of a table (fewer than ``target_bytes``) are read, sorted
   by the table's ``sorting`` keys (`durable.WRITE_OPTIONS`) so that search
   filters prune row groups, and written as one merged file with the same
   durability order as ingest (temp name, fsync, rename, fsync the directory).
2. One catalog transaction deletes the merged files' rows (a whole-file DELETE
   ends those files in the new snapshot) and registers the new file; commit.
   The store's locators move to the new file only after that commit.
3. Files ended in snapshots older than ``grace_s`` are removed through
   `FileOps` (DuckLake's ``ducklake_expire_snapshots`` lists them), so a reader
   that looked up a locator just before the commit still finds its file.
4. Orphans, files in the data directories that the catalog never named (a crash
   after the rename and before the commit), are removed once older than ``grace_s``
   (their name carries their creation time), while holding the commit lock so
   that no write of this process is in flight.

DuckLake's own ``ducklake_merge_adjacent_files`` is not used: it writes the
merged file with DuckDB, which does not fsync it (duckdb PR #12371).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from waveform.store.durable import WRITE_OPTIONS, ParquetOptions, publish, table_dir
from waveform.store.lake import ALIAS
from waveform.store.schema import TABLES

if TYPE_CHECKING:
    from waveform.store.store import Store

log = logging.getLogger(__name__)

__all__ = ["GRACE_S", "CompactionReport", "compact", "compact_dir", "remove_replaced"]

_META = f"__ducklake_metadata_{ALIAS}"


@dataclass(frozen=True, slots=True)
class CompactionReport:
    merged_files: int
    written_files: int
    removed_files: int
    orphans_removed: int


def _name_age_s(path: str, now_ns: int) -> float:
    """Age from the time-ordered file name (`durable.new_file_name`); inf if not ours."""
    base = path.replace(os.sep, "/").rsplit("/", 1)[-1].lstrip(".")
    try:
        return (now_ns - int(base.split("-", 1)[0])) / 1e9
    except ValueError:
        return float("inf")


def _merge_table(store: Store, table: str, target_bytes: int, min_files: int) -> tuple[int, int]:
    files = store.engine.files
    live = store.sql(f"SELECT filename, count(*) FROM {ALIAS}.{table} GROUP BY filename")
    small = sorted(
        (f for f, _ in live if files.size(f) < target_bytes), key=lambda f: f.rsplit("/", 1)[-1]
    )
    merged = written = 0
    group: list[str] = []
    size = 0
    groups: list[list[str]] = []
    for f in small:
        group.append(f)
        size += files.size(f)
        if size >= target_bytes:
            groups.append(group)
            group, size = [], 0
    if group:
        groups.append(group)
    for g in groups:
        if len(g) < min_files:
            continue
        parts = []
        for f in g:
            with files.open_input(f) as src:
                parts.append(pq.read_table(src, schema=TABLES[table]))
        merged_table = pa.concat_tables(parts)
        opts: ParquetOptions = WRITE_OPTIONS.get(table, ParquetOptions())
        if opts.sorting:
            merged_table = merged_table.take(pc.sort_indices(
                merged_table, sort_keys=[(k, "ascending", "at_end") for k in opts.sorting]))
        directory = table_dir(files, store.data_path, table)
        new = publish(files, directory, merged_table, opts)
        store.engine.commit_replacement(table, g, new, merged_table)
        merged += len(g)
        written += 1
    return merged, written


#: How long a replaced file outlives the commit that replaced it: a reader that
#: looked up a locator (or planned a query) just before still finds its file, and
#: one that comes later asks the catalog again (`Store` retries a missing file).
GRACE_S = 60.0


def compact(
    store: Store,
    *,
    target_bytes: int = 64 << 20,
    min_files: int = 4,
    grace_s: float = GRACE_S,
) -> CompactionReport:
    """Merge small files of every table and remove files no snapshot needs.

    The files a merge replaced are removed ``grace_s`` after its commit: now when
    ``grace_s`` is 0 (no reader can hold them: the store is not serving), else by a
    clean-up the store runs that long after (`Store.later`), so that space is freed
    without another compaction."""
    merged = written = 0
    engine = store.engine
    # One compaction at a time in this process, and on a shared catalog one server at
    # a time: two merging the same files would both commit, each row then twice.
    with engine.compaction, engine.locators.exclusive("compaction") as mine:
        if not mine:
            log.info("compaction skipped: another server is compacting")
            return CompactionReport(0, 0, 0, 0)
        for table in TABLES:
            m, w = _merge_table(store, table, target_bytes, min_files)
            merged += m
            written += w
        removed = _remove_expired(store, grace_s)
        # Under the commit lock: every write of this process publishes and commits
        # while holding it, so no file seen here is in flight (others: grace_s).
        with store.engine.gate:
            orphans = _remove_orphans(store, grace_s)
    if merged and grace_s > 0:
        store.later(grace_s + 1.0, lambda: remove_replaced(store, grace_s))
    return CompactionReport(merged, written, removed, orphans)


def remove_replaced(store: Store, grace_s: float = GRACE_S) -> int:
    """Remove the data files replaced more than ``grace_s`` ago; how many."""
    engine = store.engine
    with engine.compaction, engine.locators.exclusive("compaction") as mine:
        return _remove_expired(store, grace_s) if mine else 0


def _remove_expired(store: Store, grace_s: float) -> int:
    cur = store.engine.lake.cursor()
    with store.engine.gate:
        cur.execute(
            f"CALL ducklake_expire_snapshots('{ALIAS}', older_than => "
            "now() - to_microseconds(?::BIGINT))", [int(grace_s * 1e6)]
        )
    rows = cur.execute(
        f"SELECT path, path_is_relative FROM {_META}.ducklake_files_scheduled_for_deletion"
    ).fetchall()
    for path, relative in rows:
        full = _absolute(store, path, relative)
        store.engine.files.remove(full)
        store.engine.reader.forget(full)
    if rows:
        for d in {store.engine.files.dirname(_absolute(store, p, r)) for p, r in rows}:
            store.engine.files.fsync_dir(d)
        with store.engine.gate:
            cur.execute(f"CALL ducklake_cleanup_old_files('{ALIAS}', cleanup_all => true)")
    return len(rows)


def _absolute(store: Store, path: str, relative: bool) -> str:
    """A catalog path as a full path (relative ones are under the table's directory)."""
    if not relative:
        return path
    return store.engine.files.join(store.data_path.rstrip("/" + os.sep) or store.data_path, path)


def _remove_orphans(store: Store, grace_s: float) -> int:
    cur = store.engine.lake.cursor()
    known_rows = cur.execute(
        f"SELECT f.path, f.path_is_relative, t.table_name FROM {_META}.ducklake_data_file f "
        f"JOIN {_META}.ducklake_table t USING (table_id) "
        f"UNION ALL SELECT path, path_is_relative, NULL FROM {_META}.ducklake_delete_file"
    ).fetchall()
    known: set[str] = set()
    for path, relative, table in known_rows:
        if relative and table is not None:
            files = store.engine.files
            known.add(files.join(table_dir(files, store.data_path, table), path))
            known.add(_absolute(store, path, relative))
        else:
            known.add(_absolute(store, path, relative))
    now = time.time_ns()
    removed = 0
    for table in TABLES:
        directory = table_dir(store.engine.files, store.data_path, table)
        for p in store.engine.files.list(directory):
            if p not in known and _name_age_s(p, now) >= grace_s:
                store.engine.files.remove(p)
                removed += 1
        if removed:
            store.engine.files.fsync_dir(directory)
    return removed


def compact_dir(
    data_dir: str | os.PathLike[str],
    *,
    catalog: str | None = None,
    data_path: str | None = None,
    grace_s: float | None = None,
) -> CompactionReport:
    """``waveform compact --data DIR``: open the store without measuring, compact, close.

    With an embedded catalog nothing serves the store meanwhile (it admits one
    process), so the replaced files go at once (``grace_s`` 0); a PostgreSQL catalog
    may have servers reading and writing beside, so they get `GRACE_S` (files they
    may hold, files they are about to commit) unless ``grace_s`` says otherwise."""
    from waveform.store.store import Store

    if grace_s is None:
        grace_s = GRACE_S if (catalog or "").startswith("postgres:") else 0.0
    with Store.open(data_dir, catalog=catalog, data_path=data_path, analyze=None,
                    auto_compact_commits=None) as store:
        return compact(store, grace_s=grace_s)
