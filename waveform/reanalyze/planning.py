"""What a re-analysis has to do: the ECGs without a summary of a version, in work units.

The driver asks the catalog once which stored ECGs lack a summary of the target
analysis version (optionally filtered on ``ecg`` columns), with the locator of
each of their ``waveform`` rows (data file, row in file) and the ``ecg`` columns
a summary row carries. Work is split by the catalog's data files of
``waveform`` (`ducklake_list_files`): a unit is the pending rows of one file, or
of several small consecutive files, or a slice of a large one, so that a worker
reads Parquet from the data path directly and never opens the catalog.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from waveform.errors import InvalidArgument, StorageError
from waveform.store.schema import ECG, SUMMARY_CONTEXT

if TYPE_CHECKING:
    from waveform.store import Store

__all__ = ["UNIT_ROWS", "Filter", "Plan", "WorkUnit", "parse_filter", "plan"]

#: Columns of a unit's rows: where each pending ``waveform`` row is, and the
#: ECG's summary context (repeated for each of its groups).
UNIT_ROWS = pa.schema([
    ("filename", pa.string()),
    ("file_row_number", pa.int64()),
    ("group_index", pa.int16()),
    ("sop_instance_uid", pa.string()),
    *[(name, ECG.field(name).type) for name in SUMMARY_CONTEXT],
])

#: Comparison operators a filter may use (SQL spelling).
_OPERATORS = ("<=", ">=", "!=", "=", "<", ">")
#: ``ecg`` columns a filter may name: not the ones holding bytes or digests.
_FILTERABLE = tuple(n for n in ECG.names if n not in ("sha256",))
_FILTER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|!=|=|<|>)\s*(.*?)\s*$")


@dataclass(frozen=True, slots=True)
class Filter:
    """``column op value`` on the ``ecg`` table; the value is bound, never spliced."""

    column: str
    op: str
    value: str

    def sql(self) -> str:
        return f"e.{self.column} {self.op} ?"


def parse_filter(text: str) -> Filter:
    """``"organisation=org-a"``, ``"acquisition_datetime>=2024-01-01"``, ..."""
    m = _FILTER.match(text)
    if m is None:
        raise InvalidArgument(
            f"filter {text!r} is not COLUMN OP VALUE (OP one of {' '.join(_OPERATORS)}), "
            "e.g. organisation=org-a or acquisition_datetime>=2024-01-01"
        )
    column, op, value = m.groups()
    if column not in _FILTERABLE:
        raise InvalidArgument(f"filter {text!r}: no ecg column {column!r}; "
                              f"one of {', '.join(_FILTERABLE)}")
    return Filter(column, op, value.strip("'\""))


@dataclass(frozen=True, slots=True)
class WorkUnit:
    """The pending ``waveform`` rows a worker measures in one task (`UNIT_ROWS`)."""

    index: int
    rows: pa.Table

    @property
    def files(self) -> list[str]:
        return sorted(set(self.rows.column("filename").to_pylist()))

    @property
    def n_ecgs(self) -> int:
        return len(set(self.rows.column("sop_instance_uid").to_pylist()))


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything the driver dispatches, decided once before any work is done."""

    version: str
    units: tuple[WorkUnit, ...]
    n_files: int
    n_ecgs: int


def _pending_sql(store: Store, filters: Sequence[Filter]) -> str:
    ecg, summary, waveform = (store.table(t).sql for t in ("ecg", "summary", "waveform"))
    ctx = ", ".join(f"e.{c}" for c in SUMMARY_CONTEXT)
    where = "".join(f" AND {f.sql()}" for f in filters)
    return (
        f"WITH todo AS (SELECT e.sop_instance_uid, {ctx} FROM {ecg} e "
        f"WHERE e.sop_instance_uid NOT IN (SELECT sop_instance_uid FROM {summary} "
        # (NOT IN over a NULL would exclude everything: none is let in.)
        f"WHERE analysis_version = ? AND sop_instance_uid IS NOT NULL){where}) "
        "SELECT w.filename, w.file_row_number, w.group_index, t.* "
        f"FROM {waveform} w JOIN todo t USING (sop_instance_uid) "
        "ORDER BY w.filename, w.file_row_number"
    )


def plan(
    store: Store,
    version: str,
    *,
    filters: Sequence[Filter] = (),
    unit_ecgs: int = 256,
    only: Sequence[str] | None = None,
) -> Plan:
    """The ECGs of ``store`` without a summary of ``version``, in units of about
    ``unit_ecgs`` ECGs (``only``: restricted to these UIDs)."""
    if unit_ecgs < 1:
        raise InvalidArgument(f"unit size {unit_ecgs} ECGs: expected at least 1")
    params: list[Any] = [version, *[f.value for f in filters]]
    waveform = store.table("waveform")
    for attempt in (1, 2):
        live = {r[0] for r in store.sql(
            "SELECT data_file FROM "
            f"ducklake_list_files('{waveform.catalog.name}', '{waveform.name}')")}
        rows = store.sql_arrow(_pending_sql(store, filters), params)
        # Rows come with their locators, so a worker reads only rows the catalog
        # names; a file the catalog does not list as live (a compaction committed
        # between the two queries) would be read in vain: plan again.
        stray = set(pc.unique(rows.column("filename")).to_pylist()) - live
        if not stray:
            break
        if attempt == 2:
            raise StorageError(
                f"{len(stray)} waveform data files named by rows are not listed by "
                f"ducklake_list_files (e.g. {min(stray)}); the catalog keeps changing "
                "under the plan: run again")
    rows = rows.select(UNIT_ROWS.names).cast(UNIT_ROWS)
    if only is not None:
        rows = rows.filter(pc.is_in(rows.column("sop_instance_uid"),
                                    value_set=pa.array(list(only), pa.string())))
    return _split(version, rows, unit_ecgs)


def _split(version: str, rows: pa.Table, unit_ecgs: int) -> Plan:
    """Units of ``unit_ecgs`` ECGs from ``rows`` ordered by (filename, file_row_number).

    Every group of an ECG goes with its first row: ECGs are taken in the order
    their first rows come, each with all its rows, so consecutive ECGs of one
    file (and of small consecutive files) share a unit.
    """
    if rows.num_rows == 0:
        return Plan(version, (), 0, 0)
    codes = pc.dictionary_encode(rows.column("sop_instance_uid").combine_chunks())
    ecg = codes.indices.to_numpy(zero_copy_only=False)
    # The row where each ECG first appears, and each row's ECG's rank in that order.
    _, first = np.unique(ecg, return_index=True)
    rank = np.empty_like(first)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    order = np.argsort(rank[ecg], kind="stable")
    unit_of = rank[ecg][order] // unit_ecgs
    cuts = np.flatnonzero(np.diff(unit_of)) + 1
    bounds = [0, *cuts.tolist(), rows.num_rows]
    # Each unit's rows are a table of their own (`take` copies): a unit is sent to
    # a worker, and a slice would carry the whole plan's buffers with it.
    units = tuple(WorkUnit(k, rows.take(pa.array(order[a:b])))
                  for k, (a, b) in enumerate(itertools.pairwise(bounds)))
    homes = rows.column("filename").take(pa.array(first))
    return Plan(version, units, len(pc.unique(homes)), int(first.size))
