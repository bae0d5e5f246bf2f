"""The one output formatter of every command: ``--format table|json|csv``.

A table is for people (aligned columns, ``-`` for an absent value); JSON holds
every field (an absent value is ``null``, times are ISO 8601 in UTC); CSV has a
header row and the table's columns (an absent value is empty). A stream of rows
(every page of a search, the audit trail) is written as it comes: JSON lines,
CSV rows, or table rows aligned on the header.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import datetime as dt
import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

import click

__all__ = ["FORMATS", "Column", "emit", "emit_record", "emit_stream", "format_option",
           "jsonable"]

FORMATS = ("table", "json", "csv")


def format_option(default: str = "table") -> Callable[[Any], Any]:
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default=default,
                        show_default=True, help="table for people; json or csv for programs")


@dataclass(frozen=True, slots=True)
class Column:
    """A column: the row's key, the header of the table, how a cell is shown."""

    key: str
    label: str = ""
    show: Callable[[Any], str] | None = None

    @property
    def header(self) -> str:
        return self.label or self.key


def jsonable(value: Any) -> Any:
    """``value`` with datetimes, bytes, numpy arrays, tuples and dataclasses turned
    into what JSON holds."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return jsonable(value.tolist())
    if isinstance(value, BaseException):
        return str(value)
    return value


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if math.isfinite(value) else "-"
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value) or "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _csv_cell(value: Any) -> Any:
    v = jsonable(value)
    if v is None:
        return ""
    if isinstance(v, list):
        return " ".join(str(x) for x in v)
    return v


def _shown(row: Mapping[str, Any], c: Column) -> str:
    value = row.get(c.key)
    return c.show(value) if c.show is not None and value is not None else _cell(value)


def _table(columns: Sequence[Column], rows: Sequence[Mapping[str, Any]], out: IO[str]) -> None:
    cells = [[_shown(r, c) for c in columns] for r in rows]
    widths = [max([len(c.header), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    for line in [[c.header for c in columns], ["-" * w for w in widths], *cells]:
        out.write("  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
                  + "\n")


def emit(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], fmt: str, *,
         key: str = "items", extra: Mapping[str, Any] | None = None,
         out: IO[str] | None = None) -> None:
    """A list of rows: a table, ``{key: [...], **extra}`` as JSON, or CSV."""
    out = out or sys.stdout
    if fmt == "json":
        out.write(json.dumps({key: jsonable(list(rows)), **jsonable(dict(extra or {}))},
                             indent=2) + "\n")
    elif fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow([c.key for c in columns])
        w.writerows([_csv_cell(r.get(c.key)) for c in columns] for r in rows)
    else:
        _table(columns, rows, out)
    out.flush()


def emit_record(record: Mapping[str, Any], fields: Sequence[Column], fmt: str,
                out: IO[str] | None = None) -> None:
    """One object: ``field value`` lines in a table, the object as JSON, one CSV row."""
    out = out or sys.stdout
    if fmt == "json":
        out.write(json.dumps(jsonable(dict(record)), indent=2) + "\n")
    elif fmt == "csv":
        emit([record], fields, "csv", out=out)
    else:
        width = max((len(c.header) for c in fields), default=0)
        for c in fields:
            out.write(f"{c.header.ljust(width)}  {_shown(record, c)}".rstrip() + "\n")
    out.flush()


def emit_stream(rows: Iterable[Mapping[str, Any]], columns: Sequence[Column], fmt: str,
                out: IO[str] | None = None) -> int:
    """Rows as they come: JSON lines, CSV, or table rows (cells as wide as the
    header, longer ones overflow); the number of rows."""
    out = out or sys.stdout
    n = 0
    w = csv.writer(out, lineterminator="\n")
    widths = [max(len(c.header), 8) for c in columns]
    if fmt == "csv":
        w.writerow([c.key for c in columns])
    elif fmt == "table":
        out.write("  ".join(c.header.ljust(x) for c, x in zip(columns, widths, strict=True))
                  .rstrip() + "\n")
    for row in rows:
        n += 1
        if fmt == "json":
            out.write(json.dumps(jsonable(dict(row))) + "\n")
        elif fmt == "csv":
            w.writerow([_csv_cell(row.get(c.key)) for c in columns])
        else:
            out.write("  ".join(_shown(row, c).ljust(x) for c, x in
                                zip(columns, widths, strict=True)).rstrip() + "\n")
        out.flush()
    return n
