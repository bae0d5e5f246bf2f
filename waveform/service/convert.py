"""Between the model/store and the protobuf messages of `waveform.v1`."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from waveform.errors import InvalidArgument
from waveform.model import SUMMARY_MEASURES
from waveform.service._proto.waveform.v1 import archive_pb2 as pb
from waveform.store import SearchQuery, Trace, Visibility

if TYPE_CHECKING:
    from waveform.reanalyze.compare import Comparison

__all__ = [
    "TRACE_CHUNK_SAMPLES", "comparison_from_message", "comparison_message", "search_query",
    "search_response", "summary", "timestamp", "trace_chunks",
]

#: Frames per TraceChunk when the caller does not choose: about 1 MB of float32 for
#: 12 leads, well under the message limit.
TRACE_CHUNK_SAMPLES = 20_000
_MAX_CHUNK_BYTES = 4 << 20


def measured(value: Any, reason: str = "") -> pb.Measured:
    m = pb.Measured(reason=reason or "")
    if value is not None:
        m.value = float(value)
    return m


def summary(uid: str, doc: Mapping[str, Any], source_format: str | None = None) -> pb.Summary:
    """A `Summary` message from a stored summary document (`Summary.to_dict()`) and the
    format the ECG came in (the ``ecg`` row's ``source_format``; NULL: DICOM)."""
    out = pb.Summary(sop_instance_uid=uid, analysis_version=str(doc.get("analysis_version", "")),
                     source_format=source_format or "dicom",
                     beat_count=len(doc.get("beats") or ()),
                     document_json=json.dumps(doc, default=str, separators=(",", ":")))
    for name in SUMMARY_MEASURES:
        if name in pb.Summary.DESCRIPTOR.fields_by_name:
            getattr(out, name).CopyFrom(measured(doc.get(name), doc.get(f"{name}_reason", "")))
    for lead, q, why in zip(doc.get("quality_leads") or (), doc.get("quality") or (),
                            doc.get("quality_reasons") or (), strict=False):
        out.lead_quality.add(lead=str(lead), quality=float(q), reason=str(why or ""))
    out.sampling_frequency = float(doc.get("sampling_frequency") or 0.0)
    _beats(out, doc)
    return out


#: The per-beat marks of a summary document's ``beat_marks`` rows, in column order
#: (`waveform.analysis.MARKS`).
_BEAT_MARKS = ("p_onset", "p_offset", "qrs_onset", "qrs_offset", "t_peak", "t_offset")


def _beats(out: pb.Summary, doc: Mapping[str, Any]) -> None:
    """``out.beats`` from a summary document's beats, classes and per-beat marks (a
    document written before the marks existed gives the beats alone)."""
    beats = doc.get("beats") or ()
    classes = doc.get("beat_classes") or ()
    marks = doc.get("beat_marks") or ()
    why = doc.get("beat_mark_why") or ()
    reasons = doc.get("beat_mark_reasons") or ()
    for k, sample in enumerate(beats):
        b = out.beats.add(sample=int(sample), beat_class=str(classes[k]) if k < len(classes)
                          else "")
        if k >= len(marks):
            continue
        for name, v, w in zip(_BEAT_MARKS, marks[k], why[k] if k < len(why) else (),
                              strict=False):
            if v is not None and v >= 0:
                setattr(b, name, int(v))
            elif 0 <= w < len(reasons):
                b.reasons[name] = str(reasons[w])


def timestamp(value: dt.datetime | None) -> Timestamp | None:
    """A protobuf Timestamp (naive datetimes are taken as UTC); None stays None."""
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value if value.tzinfo else value.replace(tzinfo=dt.UTC))
    return ts


def _datetime(ts: pb.SearchRequest, field: str) -> dt.datetime | None:
    if not ts.HasField(field):
        return None
    value: dt.datetime = getattr(ts, field).ToDatetime(tzinfo=dt.UTC)
    return value


_EQUALS = ("patient_id", "patient_id_issuer", "organisation", "sop_class_uid", "manufacturer",
           "model", "study_instance_uid", "accession_number")


def search_query(req: pb.SearchRequest, visible: Visibility) -> SearchQuery:
    """The store query of a request, confined to what ``visible`` (the access
    policy's decision for this caller) lets the caller see."""
    equals = {name: getattr(req, name) for name in _EQUALS if getattr(req, name)}
    ranges = []
    for r in req.ranges:
        ranges.append((r.measure, r.low if r.HasField("low") else None,
                       r.high if r.HasField("high") else None))
    size = req.page_size or 100
    if not 1 <= size <= 10_000:
        raise InvalidArgument(f"page_size {req.page_size} is outside 1..10000")
    return SearchQuery(
        equals=tuple(sorted(equals.items())),
        acquired_from=_datetime(req, "acquired_from"),
        acquired_to=_datetime(req, "acquired_to"),
        ranges=tuple(ranges),
        sort=req.order_by or "acquisition_datetime",
        descending=not req.ascending,
        limit=size,
        cursor=req.page_token or None,
        visible=visible,
    )


def search_response(rows: list[dict[str, Any]], next_cursor: str | None) -> pb.SearchResponse:
    out = pb.SearchResponse(next_page_token=next_cursor or "")
    for row in rows:
        hit = out.hits.add(
            sop_instance_uid=row["sop_instance_uid"], patient_id=row.get("patient_id") or "",
            organisation=row.get("organisation") or "",
            sop_class_uid=row.get("sop_class_uid") or "",
            study_instance_uid=row.get("study_instance_uid") or "",
            accession_number=row.get("accession_number") or "",
            manufacturer=row.get("manufacturer") or "", model=row.get("model") or "",
            analysis_version=row.get("analysis_version") or "",
            source_format=row.get("source_format") or "dicom",
        )
        acquired = timestamp(row.get("acquisition_datetime"))
        if acquired is not None:
            hit.acquired.CopyFrom(acquired)
        for name in ("heart_rate_bpm", "pr_ms", "qrs_ms", "qt_ms", "qtc_ms"):
            value = row.get(name)
            getattr(hit, name).CopyFrom(
                measured(value, "" if value is not None else "not measured"))
    return out


def trace_chunks(trace: Trace, samples_per_chunk: int = 0) -> Iterator[pb.TraceChunk]:
    """The trace as chunks of whole frames, channel-major within each chunk."""
    data = trace.data
    if trace.units == "raw":
        data = data.astype("<i8", copy=False)
        units = pb.UNITS_RAW
    else:
        data = data.astype("<f4", copy=False)
        units = pb.UNITS_MICROVOLTS
    n_ch, n = data.shape
    per_frame = max(1, n_ch * data.dtype.itemsize)
    if samples_per_chunk < 0:
        raise InvalidArgument(f"samples_per_chunk is {samples_per_chunk}; it must be 0 (the "
                              "service chooses) or positive")
    step = samples_per_chunk or TRACE_CHUNK_SAMPLES
    step = max(1, min(step, _MAX_CHUNK_BYTES // per_frame))
    first = True
    for i0 in range(0, max(n, 1), step):
        block = np.ascontiguousarray(data[:, i0:i0 + step])
        chunk = pb.TraceChunk(first_sample=i0, samples=block.shape[1], data=block.tobytes())
        if first:
            chunk.sop_instance_uid = trace.sop_instance_uid
            chunk.leads.extend(trace.leads)
            chunk.sampling_frequency = trace.sampling_frequency
            chunk.start_s = trace.start_s
            chunk.units = units
            chunk.total_samples = n
            if trace.units == "raw":
                chunk.sensitivity.extend(trace.sensitivity)
                chunk.correction.extend(trace.correction)
                chunk.baseline.extend(trace.baseline)
                chunk.channel_units.extend(u or "" for u in trace.channel_units)
            first = False
        yield chunk


def comparison_message(c: Comparison, plot_png: bytes = b"") -> pb.CompareVersionsResponse:
    """``c`` as the `CompareVersions` answer (the pairs behind a plot stay here)."""
    m = pb.CompareVersionsResponse(old_version=c.old_version, new_version=c.new_version,
                                   old_ecgs=c.n_old, new_ecgs=c.n_new, common_ecgs=c.n_common,
                                   plot_png=plot_png)
    for d in c.differences:
        x = m.differences.add(label=d.measurement.label, key=d.measurement.key,
                              unit=d.measurement.unit, compared=d.n, became=d.became,
                              stopped=d.stopped)
        if d.mean == d.mean:  # NaN: nothing compared
            x.mean = d.mean
        if d.sd == d.sd:
            x.sd = d.sd
        x.largest.extend(pb.VersionChange(sop_instance_uid=uid, old_value=o, new_value=n)
                         for uid, o, n in d.largest)
    return m


def comparison_from_message(m: pb.CompareVersionsResponse) -> Comparison:
    """The `Comparison` a `CompareVersions` answer describes, for the same report as
    a comparison made here (without the pairs: its `Difference.old`/``new`` are empty)."""
    from waveform.reanalyze.compare import Comparison, Difference, Measurement

    empty = np.empty(0)
    diffs = tuple(
        Difference(Measurement(d.label, d.key, d.unit, degrees=d.unit == "deg"), int(d.compared),
                   d.mean if d.HasField("mean") else float("nan"),
                   d.sd if d.HasField("sd") else float("nan"), int(d.became), int(d.stopped),
                   tuple((c.sop_instance_uid, c.old_value, c.new_value) for c in d.largest),
                   empty, empty)
        for d in m.differences)
    return Comparison(m.old_version, m.new_version, int(m.old_ecgs), int(m.new_ecgs),
                      int(m.common_ecgs), diffs)
