"""What a worker does with one unit: read Parquet, decode, analyse, return summary rows.

Runs in a process of the local pool or on a Dask worker. It reads the
``waveform`` rows its unit names straight from the data files (a local path or
a URL pyarrow's filesystems understand: ``s3://``, ``gs://``, ...), never the
catalog, and returns an Arrow table of ``summary`` rows for the driver to
commit. An ECG that the analysis rejects gets a row whose document holds the
reason (as the store's own measurement stage does), so it is not retried on
every run; an ECG whose rows cannot be read is reported as unread and gets no
row, so the next run tries it again.
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from waveform.model import Ecg, WaveformGroup
from waveform.reanalyze.planning import UNIT_ROWS, WorkUnit
from waveform.store.files import FileOps, files_for
from waveform.store.records import GROUP_COLUMNS, GroupRows
from waveform.store.s3 import is_s3_url
from waveform.store.schema import SUMMARY_CONTEXT
from waveform.store.summaries import measure_one, summary_table

__all__ = ["STAGES", "UnitResult", "default_analysis", "measure_unit", "warm_up"]

Analyze = Callable[[Any], Any]

#: Where a worker's time goes, in the order of the work.
STAGES: tuple[str, ...] = ("read", "decode", "analyze", "rows")


@dataclass(frozen=True, slots=True)
class UnitResult:
    """A unit's summary rows (`SUMMARY`), what could not be measured or read, the
    seconds spent in each of `STAGES` (wall clock) and the worker's CPU seconds
    for the whole unit (on a shared machine the two differ by what others took)."""

    index: int
    table: pa.Table
    failed: tuple[tuple[str, str], ...] = ()
    unread: tuple[tuple[str, str], ...] = ()
    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: float = 0.0


def default_analysis() -> tuple[Analyze, str]:
    from waveform.analysis import ANALYSIS_VERSION, analyze

    return analyze, str(ANALYSIS_VERSION)


def _open(path: str) -> pq.ParquetFile:
    """A data file by its catalog name: a local path, or ``s3://bucket/...`` read from
    object storage directly (endpoint and credentials as AWS tools read them, the
    same `S3Settings` as the store)."""
    if is_s3_url(path):
        return pq.ParquetFile(_s3_files().open_input(path))
    return pq.ParquetFile(path)


@functools.cache
def _s3_files() -> FileOps:
    """One S3 client a worker process (its connections are reused)."""
    return files_for("s3://")


def _read_rows(path: str, rows: list[int]) -> tuple[list[int], GroupRows]:
    """Rows ``rows`` of a ``waveform`` data file, reading only their row groups and
    the columns a group is rebuilt from: the row numbers in order, and the rows in
    that order. The sample blobs are views of the buffer pyarrow read, not copies."""
    pf = _open(path)
    meta = pf.metadata
    starts = []
    at = 0
    for i in range(meta.num_row_groups):
        starts.append(at)
        at += meta.row_group(i).num_rows
    want = sorted(set(rows))
    if want and not (0 <= want[0] and want[-1] < at):
        raise IndexError(f"{path} has {at} rows; rows {want[0]}..{want[-1]} were asked for")
    home = [bisect.bisect_right(starts, r) - 1 for r in want]
    groups = sorted(set(home))
    # One thread: a worker is one of several processes sharing the cores.
    table = pf.read_row_groups(groups, columns=list(GROUP_COLUMNS), use_threads=False)
    offset: dict[int, int] = {}
    base = 0
    for g in groups:
        offset[g] = base
        base += meta.row_group(g).num_rows
    take = [offset[g] + r - starts[g] for r, g in zip(want, home, strict=True)]
    if take != list(range(table.num_rows)):
        table = table.take(take)
    return want, GroupRows(table)


def warm_up() -> str:
    """Import and load what `measure_unit` needs (the sample codec's compiled
    kernels, the analysis, the time zone data), so that a worker's first unit is
    not charged for them; then take what is alive out of the garbage collector's
    sight."""
    from waveform.dicom.synthetic import synthetic_ecg
    from waveform.store import codec

    codec.warm_up()
    analyze, version = default_analysis()
    analyze(synthetic_ecg(duration_s=2.0))
    # A unit's context holds zoned timestamps; the first one made into a Python
    # datetime loads the time zone database (about 250 ms).
    pa.array([0], UNIT_ROWS.field("ingested_at").type).to_pylist()
    # The modules and compiled kernels (some 170,000 objects) live as long as the
    # worker: frozen, a full collection no longer walks them (it came every 1,000
    # to 2,000 ECGs and took 70-150 ms, 0.07-0.15 ms an ECG).
    gc.collect()
    gc.freeze()
    return version


def measure_unit(unit: WorkUnit, version: str, analyze: Analyze | None = None) -> UnitResult:
    """Measure every ECG of ``unit`` with ``analyze`` (default `waveform.analysis`)."""
    if analyze is None:
        analyze = default_analysis()[0]
    seconds = dict.fromkeys(STAGES, 0.0)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    # The unit's columns once, not a dict per row.
    files = unit.rows.column("filename").to_pylist()
    numbers = unit.rows.column("file_row_number").to_pylist()
    uids = unit.rows.column("sop_instance_uid").to_pylist()
    by_file: dict[str, list[int]] = {}
    for f, n in zip(files, numbers, strict=True):
        by_file.setdefault(f, []).append(n)
    stored: dict[tuple[str, int], tuple[GroupRows, int]] = {}
    unread: dict[str, str] = {}
    for path, wanted in by_file.items():
        try:
            read, table = _read_rows(path, wanted)
            for i, n in enumerate(read):
                stored[(path, n)] = (table, i)
        except (OSError, IndexError, pa.ArrowException) as e:  # gone (compacted) or damaged
            for f, u in zip(files, uids, strict=True):
                if f == path:
                    unread[u] = f"{path}: {type(e).__name__}: {e}"
    # Each ECG's rows of the unit (indices into its columns), groups in their order.
    ecgs: dict[str, list[tuple[int, int]]] = {}
    for k, (u, g) in enumerate(zip(uids, unit.rows.column("group_index").to_pylist(),
                                   strict=True)):
        ecgs.setdefault(u, []).append((g, k))
    context_columns = {c: unit.rows.column(c).to_pylist() for c in SUMMARY_CONTEXT}
    t1 = time.perf_counter()
    seconds["read"] = t1 - t0
    out: list[dict[str, Any]] = []
    failed: list[tuple[str, str]] = []
    for uid, parts in ecgs.items():
        if uid in unread:
            continue
        t = time.perf_counter()
        try:
            groups: list[WaveformGroup] = []
            for _, k in sorted(parts):
                table, i = stored[(files[k], numbers[k])]
                if table.uid(i) != uid:
                    raise IndexError(f"row {numbers[k]} of {files[k]} holds "
                                     f"{table.uid(i)}, not {uid}")
                groups.append(table.group(i))
        except (IndexError, ValueError, KeyError) as e:
            unread[uid] = f"{type(e).__name__}: {e}"
            continue
        first = parts[0][1]
        context = {c: context_columns[c][first] for c in SUMMARY_CONTEXT}
        ecg = Ecg(sop_class_uid=context["sop_class_uid"] or "", sop_instance_uid=uid,
                  groups=tuple(groups))
        t2 = time.perf_counter()
        seconds["decode"] += t2 - t
        row, reason = measure_one(analyze, ecg, uid, version, context, dt.datetime.now(dt.UTC))
        if reason:
            failed.append((uid, reason))
        out.append(row)
        seconds["analyze"] += time.perf_counter() - t2
    t4 = time.perf_counter()
    table = summary_table(out)
    seconds["rows"] += time.perf_counter() - t4
    return UnitResult(unit.index, table, tuple(failed), tuple(sorted(unread.items())), seconds,
                      time.process_time() - cpu0)
