"""The durability order: data files made durable by us, then one catalog commit.

DuckDB closes Parquet files without fsync (duckdb PR #12371) and a committed
DuckLake data file has been seen without its footer after a power loss
(duckdb/ducklake#680), so the store writes its own data files and commits them
in this order, every step through `FileOps`:

1. each table's rows are written by pyarrow to a temporary name ``.<name>.tmp``,
2. ``fsync`` the file, 3. ``rename`` it to its final name (an object store, which
   has no atomic rename but an atomic PUT, writes the final name at once: `publish`),
4. ``fsync_dir`` each directory touched (the names are durable),
5. one catalog transaction registers every file (``ducklake_add_data_files``),
6. ``mark("commit")``, COMMIT, ``mark("committed")``; only then may a caller be
   acknowledged (the writer marks ``ack``).

Steps 1-4 are `stage_tables`, 5-6 `register`: the group-commit writer stages the
next group while the catalog commits the previous one (`commit_tables` does both).

A failure before the COMMIT leaves nothing visible: the transaction is rolled
back and the published files are removed (best effort; a leftover file is an
orphan that compaction removes). A failed fsync is never retried: the page cache
may have dropped the dirty pages, so the store raises `DurabilityError` and the
writer stops. A failed COMMIT is a `DurabilityError` too (its outcome is unknown).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from waveform.errors import DurabilityError, StorageError
from waveform.store.files import FileOps
from waveform.store.lake import ALIAS

__all__ = [
    "WRITE_OPTIONS",
    "ParquetOptions",
    "commit_tables",
    "discard",
    "new_file_name",
    "register",
    "stage_tables",
    "table_dir",
]


@dataclass(frozen=True, slots=True)
class ParquetOptions:
    """How one table's data files are written."""

    row_group_size: int = 1 << 20
    compression: str = "zstd"
    #: Columns that are stored uncompressed (already compressed by a codec).
    uncompressed: tuple[str, ...] = ()
    #: Columns without min/max statistics (large blobs would bloat the footer).
    no_statistics: tuple[str, ...] = ()
    sorting: tuple[str, ...] = field(default=())


#: Per table. ``waveform`` keeps row groups small so that reading one ECG by its
#: locator reads a few rows, not a whole batch (measured in bench/store.py).
#: ``sorting`` is applied by compaction: ``ecg`` by patient (one patient's
#: history prunes to a row group), ``summary`` by organisation and time (the
#: filters of measurement queries). 16k-row groups: small enough that reading one
#: summary row by its locator is cheap and pruning is fine-grained, large enough
#: that a scan is not dominated by per-row-group work (4k and 64k measured worse,
#: docs/storage.md).
WRITE_OPTIONS: dict[str, ParquetOptions] = {
    "ecg": ParquetOptions(
        row_group_size=1 << 14, sorting=("patient_id", "acquisition_datetime"),
    ),
    "header": ParquetOptions(row_group_size=8, no_statistics=("header",)),
    "waveform": ParquetOptions(
        row_group_size=8, uncompressed=("samples",), no_statistics=("samples", "channels")
    ),
    "summary": ParquetOptions(
        # The float32 median beats compress by 7% for a tenth of a millisecond
        # of the writer's time per row: stored as they are.
        row_group_size=1 << 14, uncompressed=("median_beat",),
        no_statistics=("document", "median_beat"),
        sorting=("organisation", "acquisition_datetime"),
    ),
}


def new_file_name() -> str:
    """A unique, time-ordered data file name."""
    return f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.parquet"


def table_dir(files: FileOps, data_path: str, table: str) -> str:
    return files.join(data_path.rstrip("/" + os.sep) or data_path, table)


def _parquet_bytes(table: pa.Table, opts: ParquetOptions) -> pa.Buffer:
    compression: str | dict[str, str] = opts.compression
    if opts.uncompressed:
        compression = {
            name: ("none" if name in opts.uncompressed else opts.compression)
            for name in table.column_names
        }
    stats: bool | list[str] = True
    if opts.no_statistics:
        stats = [n for n in table.column_names if n not in opts.no_statistics]
    sink = pa.BufferOutputStream()
    pq.write_table(
        table, sink, row_group_size=opts.row_group_size, compression=compression,
        write_statistics=stats, use_dictionary=[
            n for n in table.column_names if n not in opts.uncompressed + opts.no_statistics
        ],
    )
    return sink.getvalue()


def _step(files: FileOps, op: str, *args: object) -> None:
    """One file operation, its failure translated (fsyncs are never retried)."""
    try:
        getattr(files, op)(*args)
    except OSError as e:
        if op.startswith("fsync"):
            raise DurabilityError(
                f"{op} of {args[0]} failed ({e}); the writer stops because the data may "
                "not be on disk and a retried fsync cannot tell"
            ) from e
        # The path the step was about: a rename's target, else its first argument
        # (a write's second is the data).
        raise StorageError(f"{op} of {args[-1] if op == 'rename' else args[0]} failed: {e}"
                           ) from e


def publish(files: FileOps, directory: str, table: pa.Table, opts: ParquetOptions) -> str:
    """Steps 1-3 for one file: write to a temporary name, fsync, rename. Returns the path.

    Where ``files`` has no atomic rename (an object store) the file is written under
    its final name instead, then fsynced (a no-op where a write is durable): an S3 PUT
    is atomic, so no reader ever sees part of it, and it is invisible to the catalog
    until `register` names it, like a temporary file.
    """
    name = new_file_name()
    final = files.join(directory, name)
    data = _parquet_bytes(table, opts)
    if not files.atomic_rename:
        try:
            _step(files, "write", final, memoryview(data))
            _step(files, "fsync", final)
        except BaseException:
            _discard(files, final)
            raise
        return final
    tmp = files.join(directory, "." + name + ".tmp")
    _step(files, "write", tmp, memoryview(data))
    try:
        _step(files, "fsync", tmp)
        _step(files, "rename", tmp, final)
    except BaseException:
        _discard(files, tmp)
        raise
    return final


def _discard(files: FileOps, path: str) -> None:
    try:
        files.remove(path)
    except OSError:  # an orphan at worst; compaction removes it
        pass


def stage_tables(
    files: FileOps,
    data_path: str,
    tables: Mapping[str, pa.Table],
    *,
    options: Mapping[str, ParquetOptions] = WRITE_OPTIONS,
) -> dict[str, str]:
    """Steps 1-4: every table's file written, fsynced, renamed, its directory fsynced.

    Returns the paths by table. Nothing is visible yet: `register` names them in the
    catalog. On failure the files written so far are removed and `StorageError`
    (safe to retry) or `DurabilityError` (an fsync failed: stop writing) is raised.
    The group-commit writer stages the next batch while the catalog commits this one.
    """
    written: dict[str, str] = {}
    try:
        for name, table in tables.items():
            if table.num_rows == 0:
                continue
            directory = table_dir(files, data_path, name)
            written[name] = publish(files, directory, table, options.get(name, ParquetOptions()))
        for directory in sorted({files.dirname(p) for p in written.values()}):
            _step(files, "fsync_dir", directory)
    except BaseException:
        discard(files, written)
        raise
    return written


def register(
    cursor: duckdb.DuckDBPyConnection, files: FileOps, written: Mapping[str, str]
) -> None:
    """Steps 5-6: one catalog transaction names the staged files, then COMMIT.

    A failure before the COMMIT removes the files (`StorageError`, safe to retry); a
    failed COMMIT is a `DurabilityError` (its outcome is unknown).
    """
    try:
        cursor.execute("BEGIN TRANSACTION")
        for name, path in written.items():
            cursor.execute(f"CALL ducklake_add_data_files('{ALIAS}', '{name}', ?)", [path])
    except duckdb.Error as e:
        _rollback(cursor)
        discard(files, written)
        raise StorageError(f"registering data files in the catalog failed: {e}") from e
    try:
        files.mark("commit")
        cursor.execute("COMMIT")
    except (duckdb.Error, OSError) as e:
        _rollback(cursor)
        raise DurabilityError(
            f"the catalog commit failed ({e}); its outcome is unknown, so the writer stops"
        ) from e
    files.mark("committed")


def discard(files: FileOps, written: Mapping[str, str]) -> None:
    """Remove staged files that will not be committed (best effort: orphans otherwise)."""
    for p in written.values():
        _discard(files, p)


def commit_tables(
    cursor: duckdb.DuckDBPyConnection,
    files: FileOps,
    data_path: str,
    tables: Mapping[str, pa.Table],
    *,
    options: Mapping[str, ParquetOptions] = WRITE_OPTIONS,
) -> dict[str, str]:
    """Make ``tables`` durable and visible in one catalog commit; the paths written.

    `stage_tables` then `register`. Raises `StorageError` (nothing stored, safe to
    retry) or `DurabilityError` (the caller must stop writing).
    """
    written = stage_tables(files, data_path, tables, options=options)
    register(cursor, files, written)
    return written


def _rollback(cursor: duckdb.DuckDBPyConnection) -> None:
    try:
        cursor.execute("ROLLBACK")
    except duckdb.Error:  # no transaction open any more: nothing to undo
        pass
