"""A measured ECG as a ``summary`` row, and a stored row back as its document.

A row holds the searchable measurements as typed columns, the whole
``Summary.to_dict()`` as JSON in ``document``, except the median beat: 12 x 600
float32 values that as JSON text were three quarters of a row's bytes and most
of the time of making it. The median beat is the ``median_beat`` column instead:
the float32 values little-endian, one lead after another in the order of the
document's ``median_leads`` (so its shape is the number of those leads by the
blob's length over them). Rows written before that column existed hold the median
beat in the document and are read as they always were.

The per-beat marks (``beat_marks``: a row of six sample indices per beat, -1
where absent, ``beat_mark_why`` indexing ``beat_mark_reasons``) stay in the
document: small integers, about 30 bytes a beat as JSON (a 15-minute Holter
excerpt's 1,100 beats: some 35 KB), read back by `Summary.from_dict` and served
by GetSummary as they are.

`summary_document` gives back what `Summary.to_dict()` gave, as the JSON of the
older rows read: each median value as the shortest decimal that reads back as
the same float32 (bit-exact through `Summary.from_dict`), keys in sorted order.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from waveform.store.schema import MEASURES, SUMMARY, SUMMARY_CONTEXT

__all__ = ["measure_one", "median_beat", "summary_document", "summary_row", "summary_table"]

log = logging.getLogger("waveform.store.measure")

_F32 = np.dtype("<f4")


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)


def _median_of(summary: Any) -> np.ndarray | None:
    """The median beat of a `Summary` when the column can hold it: a 2-D float32
    array with a row per ``median_leads`` entry (otherwise its shape could not be
    recovered, and the document keeps it as it is)."""
    median = getattr(summary, "median_beat", None)
    leads = getattr(summary, "median_leads", None)
    if (
        isinstance(median, np.ndarray) and median.dtype == np.float32 and median.ndim == 2
        and leads is not None and median.shape[0] == len(leads)
        and dataclasses.is_dataclass(summary)
    ):
        return median
    return None


def summary_row(
    uid: str, version: str, measured_at: Any, summary: Any, context: Mapping[str, Any]
) -> dict[str, Any]:
    """A ``summary`` row from an analysis result (anything with ``to_dict()``, or a
    dict) and the ECG's ``context`` (its `SUMMARY_CONTEXT` columns)."""
    median = _median_of(summary)
    blob: bytes | None = None
    if median is not None:
        # to_dict would turn the 7,200 values into Python floats one by one; the
        # column takes the array's bytes instead.
        doc = dataclasses.replace(summary, median_beat=median[:0]).to_dict()
        del doc["median_beat"]
        blob = median.astype(_F32, copy=False).tobytes()
    else:
        doc = summary.to_dict() if hasattr(summary, "to_dict") else dict(summary)
    row: dict[str, Any] = {
        **{k: context.get(k) for k in SUMMARY_CONTEXT},
        "sop_instance_uid": uid,
        "analysis_version": version,
        "measured_at": measured_at,
        "document": json.dumps(doc, default=_jsonable, sort_keys=True),
        "median_beat": blob,
    }
    for column, keys in MEASURES.items():
        value = None
        for k in keys:  # the first key present with a value (a loop: no generator a column)
            value = doc.get(k)
            if value is not None:
                break
        row[column] = None if value is None else float(value)
    return row


def measure_one(analyze: Callable[[Any], Any], ecg: Any, uid: str, version: str,
                context: Mapping[str, Any], at: dt.datetime) -> tuple[dict[str, Any], str]:
    """One ECG measured: its ``summary`` row (`summary_row`), and why it could not be
    measured ("" if it could). Any failure of ``analyze`` is recorded in the row's
    document, never raised: the ECG is not tried again on every start. The
    measurement stage and re-analysis workers both measure through this."""
    try:
        summary: Any = analyze(ecg)
        reason = ""
    except Exception as e:  # any failure of the algorithm is recorded, never fatal
        reason = f"{type(e).__name__}: {e}"
        log.info("ECG %s could not be measured: %s", uid, reason)
        summary = {"error": reason}
    return summary_row(uid, version, at, summary, context), reason


def summary_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """``rows`` (`summary_row`'s) as a `SUMMARY` table. ``from_pylist`` it is: built
    a column at a time it was no faster (10-25 µs a row either way, half of it
    copying the median beats), far below the rest of a summary's cost."""
    return pa.Table.from_pylist(list(rows), schema=SUMMARY)


def median_beat(blob: bytes, leads: int) -> list[list[float]]:
    """The ``median_beat`` column's value as the document held it: ``leads`` lists
    of floats, each the shortest decimal of its float32 value (as `summary_row`
    wrote them before the column existed; Arrow's cast does both conversions in
    C++), so ``float32(value)`` is the stored value, bit for bit."""
    values = np.frombuffer(blob, dtype=_F32)
    if leads <= 0:
        if values.size:
            raise ValueError(f"a median beat of {values.size} values for no median_leads")
        return []
    if values.size % leads:
        raise ValueError(f"a median beat of {values.size} values does not divide into "
                         f"{leads} leads (median_leads)")
    shortest = pc.cast(pc.cast(pa.array(values), pa.string()), pa.float64()).to_numpy()
    finite = np.isfinite(values)
    if not finite.all():  # NaN keeps its payload: widened, not parsed from "nan"
        shortest = np.where(finite, shortest, values.astype(np.float64))
    out: list[list[float]] = shortest.reshape(leads, -1).tolist()
    return out


def summary_document(document: str, median: bytes | None) -> dict[str, Any]:
    """The `Summary.to_dict()` of a stored row (``document`` and ``median_beat``)."""
    doc: dict[str, Any] = json.loads(document)
    if median is None:  # written before the column, or a document without one
        return doc
    doc["median_beat"] = median_beat(median, len(doc.get("median_leads") or ()))
    return dict(sorted(doc.items()))
