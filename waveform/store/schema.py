"""The archive's tables, in one place, versioned.

Each table is an Arrow schema: the store writes its Parquet data files with
pyarrow from exactly these schemas, and the catalog DDL is derived from them, so
the two cannot drift. `SCHEMA_VERSION` is recorded as the comment of the ``ecg``
table (catalog metadata, so no data file is written for it); a store opened by a
different version is refused with a message rather than misread.

Tables owned here: ``ecg`` (one row per SOP instance), ``header`` (its split
header, for byte-exact reassembly), ``waveform`` (one row per
multiplex group, the samples losslessly encoded, see `waveform.store.codec`),
``summary`` (one row per ECG and analysis version) and ``original`` (the file
of an ECG that came in a cart's own format, byte for byte). `RESERVED` names tables that
later modules (documents, consent, denials, audit) create in the same catalog.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pyarrow as pa

__all__ = [
    "ECG",
    "HEADER",
    "MEASURES",
    "ORIGINAL",
    "RESERVED",
    "SCHEMA_VERSION",
    "SUMMARY",
    "SUMMARY_CONTEXT",
    "TABLES",
    "VERSION_COMMENT",
    "WAVEFORM",
    "added_columns",
    "ddl",
    "duck_type",
]

SCHEMA_VERSION = 1

#: The comment of the ``ecg`` table that records the schema version.
VERSION_COMMENT = f"waveform schema {SCHEMA_VERSION}"

_TS = pa.timestamp("us")
_TS_UTC = pa.timestamp("us", tz="UTC")

ECG = pa.schema([
    ("sop_instance_uid", pa.string()),
    ("sop_class_uid", pa.string()),
    ("study_instance_uid", pa.string()),
    ("series_instance_uid", pa.string()),
    ("patient_id", pa.string()),
    ("patient_id_issuer", pa.string()),
    ("patient_name", pa.string()),
    ("birth_date", pa.date32()),
    ("sex", pa.string()),
    ("accession_number", pa.string()),
    # DICOM date-times carry no zone: kept as the device wrote them.
    ("acquisition_datetime", _TS),
    ("study_description", pa.string()),
    ("institution", pa.string()),
    # The archiving caller's organisation (authenticated), not Institution Name.
    ("organisation", pa.string()),
    ("manufacturer", pa.string()),
    ("model", pa.string()),
    ("software_versions", pa.string()),
    ("device_serial_number", pa.string()),
    ("operator", pa.string()),
    ("reading_physician", pa.string()),
    ("referring_physician", pa.string()),
    ("transfer_syntax_uid", pa.string()),
    ("n_groups", pa.int16()),
    ("ingested_at", _TS_UTC),
    ("size", pa.int64()),
    ("sha256", pa.string()),
    # The format the ECG came in: "dicom", or the cart format its DICOM object was
    # made from (`waveform.formats`: "ge-muse-xml", "scp-ecg", ...), whose file is
    # kept in ``original``. NULL in rows written before this column: DICOM.
    ("source_format", pa.string()),
])

#: `waveform.dicom.split`'s header (the object minus each group's sample bytes),
#: one row per SOP instance. Not a column of ``ecg``: ``ecg`` is sorted into
#: large row groups for search, and reading one header would then decompress a
#: whole row group of headers (measured 28 ms a `get_dicom` over 100,000 ECGs).
HEADER = pa.schema([
    ("sop_instance_uid", pa.string()),
    ("header", pa.binary()),
])

#: The file a cart sent in its own format (MUSE XML, Sierra XML, aECG, SCP-ECG),
#: byte for byte, beside the DICOM object made of it (one row per such ECG,
#: committed with its ``ecg`` row; a DICOM-ingested ECG has none). Not a column
#: of ``header``: most ECGs have no original, and ``get_dicom`` never reads it.
ORIGINAL = pa.schema([
    ("sop_instance_uid", pa.string()),
    ("format", pa.string()),
    ("sha256", pa.string()),
    ("size", pa.int64()),
    ("original", pa.binary()),
])

_CHANNEL = pa.struct([
    ("label", pa.string()),
    ("lead", pa.string()),
    ("source_scheme", pa.string()),
    ("source_value", pa.string()),
    ("source_meaning", pa.string()),
    ("units", pa.string()),
    ("sensitivity", pa.float64()),
    ("correction", pa.float64()),
    ("baseline", pa.float64()),
    ("skew", pa.float64()),
    ("filter_low_hz", pa.float64()),
    ("filter_high_hz", pa.float64()),
    ("notch_hz", pa.float64()),
    ("bits_stored", pa.int32()),
    ("padding", pa.int64()),
])

WAVEFORM = pa.schema([
    ("sop_instance_uid", pa.string()),
    ("group_index", pa.int16()),
    ("label", pa.string()),
    ("sampling_frequency", pa.float64()),
    ("n_channels", pa.int32()),
    ("n_samples", pa.int64()),
    ("interpretation", pa.string()),
    # numpy dtype string of the stored samples, byte order included ("<i2", ">i2").
    ("dtype", pa.string()),
    ("time_offset", pa.float64()),
    ("originality", pa.string()),
    ("trigger_time_offset", pa.float64()),
    ("channels", pa.list_(_CHANNEL)),
    # True when `split` cut these bytes out of the header (join needs them).
    ("retained", pa.bool_()),
    ("codec", pa.string()),
    ("nbytes", pa.int64()),
    ("samples", pa.binary()),
])

#: Searchable measurements: column -> keys accepted from ``Summary.to_dict()``.
MEASURES: dict[str, tuple[str, ...]] = {
    "heart_rate_bpm": ("heart_rate_bpm", "heart_rate", "rate", "hr"),
    "pr_ms": ("pr_ms", "pr", "pr_interval_ms"),
    "qrs_ms": ("qrs_ms", "qrs", "qrs_duration_ms"),
    "qt_ms": ("qt_ms", "qt", "qt_interval_ms"),
    # The searchable QTc is Bazett's (what carts print by default); every formula
    # is in ``document``.
    "qtc_ms": ("qtc_ms", "qtc_bazett_ms", "qtc", "qtc_interval_ms"),
    # Beat-to-beat regularity: with the PR interval, what the rhythm label is made of.
    "rr_mean_ms": ("rr_mean_ms",),
    "rr_sd_ms": ("rr_sd_ms",),
}

#: ``ecg`` columns copied into each ``summary`` row: search filters and sorts on
#: them in ``summary`` alone (a measurement query reads one table, and compaction
#: sorts ``summary`` by organisation and time so that those filters prune).
SUMMARY_CONTEXT: tuple[str, ...] = (
    "patient_id", "organisation", "sop_class_uid", "acquisition_datetime", "ingested_at",
    "manufacturer", "model", "institution", "study_instance_uid", "accession_number",
    "source_format",
)

SUMMARY = pa.schema([
    ("sop_instance_uid", pa.string()),
    ("analysis_version", pa.string()),
    ("measured_at", _TS_UTC),
    *[(name, ECG.field(name).type) for name in SUMMARY_CONTEXT],
    *[(name, pa.float64()) for name in MEASURES],
    # The whole `Summary.to_dict()` as JSON but the median beat: the typed columns
    # are for search.
    ("document", pa.string()),
    # The median beat: float32 little-endian, a lead after another in the order of
    # the document's median_leads (`waveform.store.summaries`). NULL in rows written
    # before this column, whose document holds it.
    ("median_beat", pa.binary()),
])

TABLES: dict[str, pa.Schema] = {
    "ecg": ECG, "header": HEADER, "waveform": WAVEFORM, "summary": SUMMARY,
    "original": ORIGINAL,
}

#: Tables other modules own in the same catalog; the store never creates them.
RESERVED: tuple[str, ...] = ("document", "document_release", "consent", "denial")

_SCALARS: dict[pa.DataType, str] = {
    pa.string(): "VARCHAR",
    pa.binary(): "BLOB",
    pa.bool_(): "BOOLEAN",
    pa.int16(): "SMALLINT",
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.float64(): "DOUBLE",
    pa.date32(): "DATE",
    _TS: "TIMESTAMP",
    _TS_UTC: "TIMESTAMPTZ",
}


def duck_type(t: pa.DataType) -> str:
    """The DuckDB type of an Arrow type used in these schemas."""
    if t in _SCALARS:
        return _SCALARS[t]
    if pa.types.is_list(t):
        return duck_type(t.value_type) + "[]"
    if pa.types.is_struct(t):
        fields = ", ".join(f"{f.name} {duck_type(f.type)}" for f in t)
        return f"STRUCT({fields})"
    raise TypeError(f"no DuckDB type for Arrow type {t}")


def added_columns(table: str, present: Sequence[str],
                  tables: Mapping[str, pa.Schema] = TABLES) -> list[str]:
    """``ALTER TABLE`` statements for columns a schema gained after the catalog was
    made (appended at the end; rows written before read them as NULL)."""
    have = set(present)
    return [f'ADD COLUMN "{f.name}" {duck_type(f.type)}' for f in tables[table]
            if f.name not in have]


def ddl(catalog: str, tables: Mapping[str, pa.Schema] = TABLES) -> list[str]:
    """Statements that create each of ``tables`` (if absent) in ``catalog``."""
    out = []
    for name, schema in tables.items():
        cols = ", ".join(f'"{f.name}" {duck_type(f.type)}' for f in schema)
        out.append(f"CREATE TABLE IF NOT EXISTS {catalog}.{name} ({cols})")
    return out
