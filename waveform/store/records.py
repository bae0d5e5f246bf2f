"""An ingested object as table rows, and stored rows back as model values.

`prepare` is the CPU part of ingest (decode, split, hash, encode the samples): it
runs in the caller's thread so that many callers prepare in parallel and the
single writer thread only writes files and commits. `group_from_row` turns a
stored ``waveform`` row back into a `WaveformGroup` for traces; `GroupRows` does
the same for a table of them (re-analysis workers), converting the table once.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from waveform.errors import InvalidDicom
from waveform.model import Channel, Code, Ecg, WaveformGroup
from waveform.store import codec as _codec
from waveform.store.durable import WRITE_OPTIONS, ParquetOptions
from waveform.store.schema import ECG, HEADER, ORIGINAL, WAVEFORM

__all__ = [
    "GROUP_COLUMNS",
    "GroupRows",
    "Prepared",
    "channels_from_row",
    "decode_samples",
    "group_from_row",
    "prepare",
    "sha256",
    "tables",
]


# ``original`` rows are read one at a time by locator (`Store.get_original`): small
# row groups, as ``header``'s, and no statistics of the files' bytes. Registered
# here beside the rows it describes until `durable.WRITE_OPTIONS` lists it.
WRITE_OPTIONS.setdefault("original", ParquetOptions(row_group_size=8,
                                                    no_statistics=("original",)))


def sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class Prepared:
    """One object ready for the writer: its ``ecg`` row and ``waveform`` rows."""

    sop_instance_uid: str
    sha256: str
    size: int
    ecg_row: dict[str, Any]
    header_row: dict[str, Any]
    waveform_rows: list[dict[str, Any]]
    #: The ``original`` row of an ECG that came in a cart's format (None: DICOM).
    original_row: dict[str, Any] | None = None


def _channel_row(c: Channel) -> dict[str, Any]:
    return {
        "label": c.label,
        "lead": c.lead,
        "source_scheme": c.source.scheme if c.source else None,
        "source_value": c.source.value if c.source else None,
        "source_meaning": c.source.meaning if c.source else None,
        "units": c.units,
        "sensitivity": c.sensitivity,
        "correction": c.correction,
        "baseline": c.baseline,
        "skew": c.skew,
        "filter_low_hz": c.filter_low_hz,
        "filter_high_hz": c.filter_high_hz,
        "notch_hz": c.notch_hz,
        "bits_stored": c.bits_stored,
        "padding": _stored_padding(c.padding),
    }


_U64 = 1 << 64


def _stored_padding(padding: int | None) -> int | None:
    """The ``padding`` cell (int64) of a channel's padding value: a 64-bit unsigned
    (UV) value of 2**63 or more is kept as its bit pattern, a negative int64 (the
    conventional UV padding is 2**64 - 1, which int64 cannot hold)."""
    if padding is not None and padding >= 1 << 63:
        return padding - _U64
    return padding


def _unsigned_64(dtype: Any) -> bool:
    d = np.dtype(dtype)
    return d.kind == "u" and d.itemsize == 8


@functools.lru_cache(maxsize=256)
def _padding_unsigned(channels: tuple[Channel, ...]) -> tuple[Channel, ...]:
    """``channels`` of a 64-bit unsigned group with their padding values read back
    from the int64 bit pattern `_stored_padding` keeps."""
    return tuple(dataclasses.replace(c, padding=c.padding + _U64)
                 if c.padding is not None and c.padding < 0 else c for c in channels)


@functools.lru_cache(maxsize=1024)
def _channel_rows(channels: tuple[Channel, ...]) -> list[dict[str, Any]]:
    """The ``channels`` cell of a group, shared by every group with the same channel
    definitions (one device sends the same ones every time), so that `tables`
    converts each distinct definition to Arrow once. Never mutated."""
    return [_channel_row(c) for c in channels]


_CHANNEL_FIELDS: tuple[str, ...] = tuple(f.name for f in WAVEFORM.field("channels").type.value_type)


def channels_from_row(rows: list[dict[str, Any]], dtype: Any = None) -> tuple[Channel, ...]:
    """The channels of a stored ``channels`` cell of a group whose samples are of
    ``dtype`` (the row's ``dtype``: a 64-bit unsigned group's padding is kept as its
    int64 bit pattern). A device sends the same channel definitions every time, so
    they are made once per distinct cell (a re-analysis reads thousands of rows of
    the same few devices)."""
    if rows and tuple(rows[0]) == _CHANNEL_FIELDS:  # Arrow's order: the values are the key
        out = _channels(tuple(map(tuple, map(dict.values, rows))))
    else:
        out = _channels(tuple(tuple(r[k] for k in _CHANNEL_FIELDS) for r in rows))
    return _padding_unsigned(out) if dtype is not None and _unsigned_64(dtype) else out


@functools.lru_cache(maxsize=1024)
def _channels(cells: tuple[tuple[Any, ...], ...]) -> tuple[Channel, ...]:
    out = []
    for cell in cells:
        r = dict(zip(_CHANNEL_FIELDS, cell, strict=True))
        source = (
            Code(r["source_scheme"], r["source_value"], r["source_meaning"] or "")
            if r["source_scheme"] is not None and r["source_value"] is not None
            else None
        )
        out.append(Channel(
            label=r["label"] or "", source=source, lead=r["lead"], units=r["units"],
            sensitivity=r["sensitivity"], correction=r["correction"], baseline=r["baseline"],
            skew=r["skew"], filter_low_hz=r["filter_low_hz"],
            filter_high_hz=r["filter_high_hz"], notch_hz=r["notch_hz"],
            bits_stored=r["bits_stored"], padding=r["padding"],
        ))
    return tuple(out)


def _group_bytes(g: WaveformGroup) -> bytes:
    """A group's samples as WaveformData would hold them (multiplexed, stored order)."""
    return np.ascontiguousarray(g.raw.T).tobytes()


def _as_dicom(data: bytes | memoryview, format: str | None
              ) -> tuple[bytes | memoryview, dict[str, Any] | None, str]:
    """``data`` as the DICOM object the archive keeps, the ``original`` row of a cart's
    file, and the format it came in. ``format``: stated by the sender (None: the
    content says; "dicom": decoded as DICOM whatever it looks like)."""
    from waveform.formats import DICOM, cart_format, convert, stated_format

    name = format or stated_format(data) or cart_format(data) or DICOM
    if name == DICOM:
        return data, None, DICOM
    # A cart's file: our encoder's DICOM object (the same file always gives the
    # same bytes, so idempotence by SOP Instance UID holds), the file kept as it is.
    converted = convert(bytes(data), name)
    original = converted.original
    row = {"sop_instance_uid": converted.ecg.sop_instance_uid, "format": converted.format,
           "sha256": sha256(original), "size": len(original), "original": original}
    return converted.dicom, row, converted.format


def prepare(
    data: bytes | memoryview,
    organisation: str,
    ingested_at: dt.datetime,
    *,
    codec: str = _codec.DEFAULT_CODEC,
    format: str | None = None,
) -> Prepared:
    """Decode, split and encode one object; raises `InvalidDicom`/`UnsupportedObject`.

    A cart's own file (GE MUSE XML, Philips Sierra XML, HL7 aECG, SCP-ECG: stated in
    ``format`` or by a `waveform.formats.StatedFormat`, else recognised from the
    content) is converted to DICOM first (`waveform.formats.convert`; a malformed
    file raises `InvalidFile`), and kept byte for byte in the ``original`` row.
    """
    from waveform.dicom import decode, split

    data, original_row, source_format = _as_dicom(data, format)
    ecg: Ecg = decode(data)
    if not ecg.sop_instance_uid:
        raise InvalidDicom("SOP Instance UID (0008,0018) is empty; the archive keys on it")
    header, cut = split(data)
    if cut and len(cut) != len(ecg.groups):
        raise InvalidDicom(
            f"split found {len(cut)} sample ranges for {len(ecg.groups)} multiplex groups"
        )
    digest = sha256(data)
    wf_rows = []
    for i, g in enumerate(ecg.groups):
        # Retained groups keep the exact bytes cut from the object; a deflated
        # object is kept whole in the header and its samples stored for traces.
        sample_bytes = cut[i] if cut else _group_bytes(g)
        expected = g.n_channels * g.n_samples * g.raw.dtype.itemsize
        if len(sample_bytes) != expected:
            raise InvalidDicom(
                f"multiplex group {i + 1}: {len(sample_bytes)} sample bytes cut from the "
                f"object, {expected} expected for {g.n_channels} x {g.n_samples} samples"
            )
        enc = _codec.encode_samples(sample_bytes, g.raw.dtype, g.n_channels, codec)
        wf_rows.append({
            "sop_instance_uid": ecg.sop_instance_uid,
            "group_index": i,
            "label": g.label,
            "sampling_frequency": g.sampling_frequency,
            "n_channels": g.n_channels,
            "n_samples": g.n_samples,
            "interpretation": g.interpretation,
            "dtype": g.raw.dtype.str,
            "time_offset": g.time_offset,
            "originality": g.originality,
            "trigger_time_offset": g.trigger_time_offset,
            "channels": _channel_rows(g.channels),
            "retained": bool(cut),
            "codec": enc.codec,
            "nbytes": enc.nbytes,
            "samples": enc.blob,
        })
    row: dict[str, Any] = {f.name: getattr(ecg, f.name, None) for f in ECG}
    row.update(
        organisation=organisation,
        n_groups=len(ecg.groups),
        ingested_at=ingested_at,
        size=len(data),
        sha256=digest,
        source_format=source_format,
    )
    if set(row) != set(ECG.names) or set(wf_rows[0] if wf_rows else WAVEFORM.names) != set(
        WAVEFORM.names
    ):  # pragma: no cover - a schema edit without this module
        raise AssertionError("records.prepare is out of step with store.schema")
    header_row = {"sop_instance_uid": ecg.sop_instance_uid, "header": bytes(header)}
    return Prepared(ecg.sop_instance_uid, digest, len(data), row, header_row, wf_rows,
                    original_row)


def _column(rows: Sequence[dict[str, Any]], field: pa.Field) -> pa.Array:
    return pa.array([r[field.name] for r in rows], type=field.type)


def _channels_column(rows: Sequence[dict[str, Any]], field: pa.Field) -> pa.Array:
    """Each distinct ``channels`` cell converted once, then taken for every row."""
    at: dict[int, int] = {}
    distinct: list[list[dict[str, Any]]] = []
    index = []
    for r in rows:
        cell = r[field.name]
        k = at.get(id(cell))
        if k is None:
            k = at[id(cell)] = len(distinct)
            distinct.append(cell)
        index.append(k)
    return pa.array(distinct, type=field.type).take(pa.array(index, type=pa.int32()))


def _blob_column(rows: Sequence[dict[str, Any]], field: pa.Field) -> pa.ChunkedArray:
    """A binary column whose chunks are the blobs themselves, not copies (``pa.array``
    copies every blob into one growing buffer: most of the time of building a
    batch of encoded samples)."""
    offsets = np.zeros((len(rows), 2), dtype=np.int32)
    blobs = [r[field.name] for r in rows]
    offsets[:, 1] = [len(b) for b in blobs]
    return pa.chunked_array([
        pa.Array.from_buffers(field.type, 1, [None, pa.py_buffer(offsets[i]), pa.py_buffer(b)])
        for i, b in enumerate(blobs)
    ], type=field.type)


_BUILDERS = {"channels": _channels_column, "samples": _blob_column, "header": _blob_column,
             "original": _blob_column}


def _table(rows: Sequence[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_arrays(
        [_BUILDERS.get(f.name, _column)(rows, f) for f in schema], schema=schema,
    )


def tables(items: Sequence[Prepared]) -> dict[str, pa.Table]:
    """The ``ecg``, ``header``, ``waveform`` and ``original`` rows of ``items`` as
    Arrow tables (``original`` empty when every item was DICOM: no file is written).

    Built a column at a time (about 5x faster than ``Table.from_pylist`` on a
    batch of 256, most of it the channel definitions, converted once per distinct
    set): this runs on the writer thread, once per group commit.
    """
    return {
        "ecg": _table([p.ecg_row for p in items], ECG),
        "header": _table([p.header_row for p in items], HEADER),
        "waveform": _table([r for p in items for r in p.waveform_rows], WAVEFORM),
        "original": _table([p.original_row for p in items if p.original_row is not None],
                           ORIGINAL),
    }


def decode_samples(row: Mapping[str, Any]) -> np.ndarray:
    """The stored samples of a ``waveform`` row as a read-only (channels, samples)
    array of the stored dtype."""
    enc = _codec.EncodedSamples(row["codec"], row["samples"], row["nbytes"])
    raw = _codec.decode_channels(enc, np.dtype(row["dtype"]), row["n_channels"])
    return raw.reshape(row["n_channels"], row["n_samples"])


def _group(row: Mapping[str, Any], channels: tuple[Channel, ...]) -> WaveformGroup:
    if _unsigned_64(row["dtype"]):
        channels = _padding_unsigned(channels)
    return WaveformGroup(
        label=row["label"] or "",
        sampling_frequency=row["sampling_frequency"],
        channels=channels,
        raw=decode_samples(row),
        interpretation=row["interpretation"],
        time_offset=row["time_offset"],
        originality=row["originality"],
        trigger_time_offset=row["trigger_time_offset"],
    )


def group_from_row(row: Mapping[str, Any]) -> WaveformGroup:
    return _group(row, channels_from_row(row["channels"]))


#: The ``waveform`` columns `GroupRows` needs: all but the index and ``retained``.
GROUP_COLUMNS: tuple[str, ...] = tuple(n for n in WAVEFORM.names
                                       if n not in ("group_index", "retained"))


class GroupRows:
    """Stored ``waveform`` rows (a table with `GROUP_COLUMNS`) rebuilt as groups,
    row by row, as `group_from_row` rebuilds each, but with the table converted
    once: each column to Python values in one call, the channel definitions from
    the struct's fields (one `Channel` tuple per distinct definition) instead of a
    dict per channel, and the sample blobs as views of the table's buffers.

    A row that cannot be rebuilt (an unknown codec, damaged samples, a channel
    definition missing a field) raises from `group` for that row only."""

    def __init__(self, table: pa.Table) -> None:
        self._table = table
        self._columns = {n: table.column(n).to_pylist() for n in GROUP_COLUMNS
                         if n not in ("channels", "samples")}
        self._columns["samples"] = _blobs(table.column("samples"))
        self._channels: list[tuple[Channel, ...] | None] | None = None

    def __len__(self) -> int:
        return self._table.num_rows

    def uid(self, i: int) -> str:
        uid: str = self._columns["sop_instance_uid"][i]
        return uid

    def group(self, i: int) -> WaveformGroup:
        if self._channels is None:
            self._channels = _channels_of(self._table.column("channels"))
        channels = self._channels[i]
        if channels is None:
            raise ValueError(f"waveform row {i} of the rows read ({self.uid(i)}) has a NULL "
                             "channel definition; the store never writes one: the file is "
                             "damaged")
        return _group(_Row(self._columns, i), channels)


class _Row(Mapping[str, Any]):
    """Row ``i`` of a table's columns, as `_group` reads a row, without copying it."""

    __slots__ = ("_columns", "_i")

    def __init__(self, columns: dict[str, list[Any]], i: int) -> None:
        self._columns = columns
        self._i = i

    def __getitem__(self, name: str) -> Any:
        return self._columns[name][self._i]

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)


def _channels_of(column: pa.ChunkedArray) -> list[tuple[Channel, ...] | None]:
    """Each row's channels of a ``channels`` column, as `channels_from_row` makes
    them (same cache key: the values in `_CHANNEL_FIELDS` order), read from the
    struct's fields rather than as a dict per channel. None for a row whose cell,
    or one of its channels, is NULL (the writer never stores one)."""
    out: list[tuple[Channel, ...] | None] = []
    for chunk in column.chunks:
        if not len(chunk):
            continue
        at = chunk.offsets.to_numpy()  # into chunk.values, which slicing leaves whole
        flat = chunk.values.slice(at[0], at[-1] - at[0])
        at = (at - at[0]).tolist()
        fields = dict(zip((f.name for f in flat.type), flat.flatten(), strict=True))
        cells = list(zip(*(fields[k].to_pylist() for k in _CHANNEL_FIELDS), strict=True))
        bad = (chunk.is_null().to_numpy(zero_copy_only=False) if chunk.null_count
               else np.zeros(len(chunk), dtype=bool))
        if flat.null_count:
            null = np.concatenate(([0], np.cumsum(flat.is_null().to_numpy(zero_copy_only=False))))
            bad = bad | (null[at[1:]] > null[at[:-1]])
        out += [None if bad[i] else _channels(tuple(cells[a:b]))
                for i, (a, b) in enumerate(itertools.pairwise(at))]
    return out


def _blobs(column: pa.ChunkedArray) -> list[memoryview]:
    """Each value of a binary column as a view of the column's data buffer."""
    out: list[memoryview] = []
    for chunk in column.chunks:
        _, offsets, data = chunk.buffers()
        wide = pa.types.is_large_binary(chunk.type)
        at = np.frombuffer(offsets, dtype=np.int64 if wide else np.int32)
        at = at[chunk.offset:chunk.offset + len(chunk) + 1]
        view = memoryview(data) if data is not None else memoryview(b"")
        out += [view[a:b] for a, b in zip(at[:-1].tolist(), at[1:].tolist(), strict=True)]
    return out
