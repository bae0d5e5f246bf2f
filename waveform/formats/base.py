"""What every cart-format reader shares: the `Reading` it returns and how it becomes an `Ecg`.

A reader turns a file into a `Reading` (samples as integers with their
sensitivity, who and when, the cart's measurements and statements). `assemble`
makes the `Ecg`: the SOP class the groups fit (12-lead when PS3.3 A.34.3 allows,
General ECG otherwise), UIDs derived from the file (never the clock or a random
source, so one file always gives the same DICOM bytes), and the cart's
measurements and statements as Waveform Annotations, as a Mortara cart writes
them (Concept Name + Numeric Value + Measurement Units; Unformatted Text Value).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from waveform.dicom.codes import SOP_CLASSES
from waveform.errors import InvalidFile, UnsupportedObject
from waveform.model import Annotation, Channel, Code, Ecg, WaveformGroup

__all__ = [
    "CONCEPTS",
    "GENERAL_ECG",
    "TWELVE_LEAD",
    "Measurement",
    "Reader",
    "Reading",
    "assemble",
    "derived_uid",
    "file_uid",
    "int16_group",
    "measurement",
]

TWELVE_LEAD = "1.2.840.10008.5.1.4.1.1.9.1.1"
GENERAL_ECG = "1.2.840.10008.5.1.4.1.1.9.1.2"

#: The concepts of the carts' global measurements, coded as the Mortara ELI 250
#: writes them in DICOM (SCP-ECG codes, scheme version 1.3) and LOINC's heart rate.
CONCEPTS: dict[str, Code] = {
    "rr": Code("SCPECG", "5.10.2.1-3", "RR Interval"),
    "pp": Code("SCPECG", "5.10.2.1-5", "PP Interval"),
    "pr": Code("SCPECG", "5.13.5-7", "PR Interval"),
    "qrs": Code("SCPECG", "5.13.5-9", "QRS Duration"),
    "qt": Code("SCPECG", "5.13.5-11", "QT Interval"),
    "qtc": Code("SCPECG", "5.10.2.5-5", "QTc Interval"),
    "p_axis": Code("SCPECG", "5.10.3-11", "P Axis"),
    "qrs_axis": Code("SCPECG", "5.10.3-13", "QRS Axis"),
    "t_axis": Code("SCPECG", "5.10.3-15", "T Axis"),
    "heart_rate": Code("LN", "8867-4", "Heart rate"),
}

# A cart's measurement with no standard concept keeps the cart's own name under a
# private coding scheme (PS3.3 8.2: designators beginning "99" are private).
_PRIVATE_SCHEME = "99WAVEFORM"

# PS3.3 A.34.3.4.x: the 12-lead IOD's limits besides those of `SOP_CLASSES`.
_TWELVE_LEAD_RATES = (200.0, 1000.0)


@dataclass(frozen=True, slots=True)
class Measurement:
    """One global measurement as the cart stated it: ``name`` is the cart's own."""

    name: str
    value: float
    units: str
    code: Code


def measurement(name: str, value: float, units: str, concept: str | None = None) -> Measurement:
    """A `Measurement` coded by `CONCEPTS[concept]`, else under the private scheme."""
    code = CONCEPTS[concept] if concept else Code(_PRIVATE_SCHEME, name, name)
    return Measurement(name, value, units, code)


@dataclass(frozen=True, slots=True)
class Reading:
    """What a reader found in a file, before UIDs and the SOP class are chosen."""

    groups: tuple[WaveformGroup, ...]
    acquisition_datetime: dt.datetime | None
    patient_id: str = ""
    patient_name: str = ""
    birth_date: dt.date | None = None
    sex: str = ""
    manufacturer: str = ""
    model: str = ""
    software_versions: str = ""
    device_serial_number: str = ""
    institution: str = ""
    uid: str = ""
    measurements: tuple[Measurement, ...] = ()
    statements: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Reader:
    """One format: its registry name, how its content is recognised, and its reader."""

    name: str
    title: str
    recognises: Callable[[bytes], bool]
    read: Callable[[bytes], Reading]
    #: Where the format states the acquisition date: named when a file lacks it.
    date_field: str


def file_uid(root: str, extension: str = "") -> str:
    """A DICOM UID from an identifier a file carries, or "" when it cannot be one.

    An OID root without extension is used as it is; a UUID becomes ``2.25.<int>``
    (PS3.5 B.2). Anything else (an OID with an extension) is not a UID.
    """
    root = root.strip()
    if extension.strip():
        return ""
    if re.fullmatch(r"[0-2](\.(0|[1-9][0-9]*))+", root) and len(root) <= 64:
        return root
    try:
        return f"2.25.{uuid.UUID(root).int}"
    except ValueError:
        return ""


def derived_uid(data: bytes, what: str) -> str:
    """``2.25.<int>`` from the SHA-256 of the file's bytes and ``what`` (128 bits)."""
    digest = hashlib.sha256(what.encode() + b"\0" + data).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def int16_group(
    fmt: str, field: str, label: str, rate: float, channels: Sequence[Channel],
    rows: Sequence[np.ndarray], *, originality: str = "ORIGINAL",
) -> WaveformGroup:
    """A multiplex group of int16 rows of one length, checked (never wrapped)."""
    if not rows:
        raise InvalidFile(fmt, field, "no lead holds samples")
    lengths = {len(r) for r in rows}
    if len(lengths) != 1:
        raise InvalidFile(fmt, field, f"leads hold different sample counts {sorted(lengths)}")
    if not (np.isfinite(rate) and rate > 0):
        raise InvalidFile(fmt, field, f"sampling rate {rate!r} is not a positive number")
    if lengths == {0}:
        raise InvalidFile(fmt, field, "leads hold no samples")
    raw = np.vstack([np.asarray(r, dtype=np.int64) for r in rows])
    low, high = int(raw.min()), int(raw.max())
    if low < -32768 or high > 32767:
        raise InvalidFile(fmt, field, f"samples {low}..{high} exceed 16 bits")
    return WaveformGroup(
        label=label, sampling_frequency=float(rate), channels=tuple(channels),
        raw=raw.astype(np.int16), interpretation="SS", originality=originality,
    )


def _sop_class(groups: tuple[WaveformGroup, ...]) -> str:
    for uid in (TWELVE_LEAD, GENERAL_ECG):
        limits = SOP_CLASSES[uid]
        fits = (limits.max_groups is None or len(groups) <= limits.max_groups) and all(
            (limits.max_channels is None or g.n_channels <= limits.max_channels)
            and (limits.max_samples is None or g.n_samples <= limits.max_samples)
            and g.interpretation in limits.interpretations
            and (uid != TWELVE_LEAD
                 or _TWELVE_LEAD_RATES[0] <= g.sampling_frequency <= _TWELVE_LEAD_RATES[1])
            for g in groups
        )
        if fits:
            return uid
    shapes = ", ".join(f"{g.label}: {g.n_channels} x {g.n_samples}" for g in groups)
    raise UnsupportedObject(
        f"{len(groups)} multiplex groups ({shapes}) fit neither 12-lead nor General ECG "
        "Waveform Storage (at most 4 groups of 24 channels)"
    )


def _annotations(reading: Reading) -> tuple[Annotation, ...]:
    statements = tuple(Annotation(text=_st(s)) for s in reading.statements)
    measures = tuple(
        Annotation(concept=m.code, value=m.value, units=m.units) for m in reading.measurements
    )
    return statements + measures


def _lo(text: str) -> str:
    """A Long String value: one value (no backslash), at most 64 characters."""
    return text.replace("\\", "/").strip()[:64]


def _st(text: str) -> str:
    """A Short Text value: at most 1024 characters."""
    return text.strip()[:1024]


def assemble(fmt: str, data: bytes, reading: Reading, date_field: str) -> Ecg:
    """The `Ecg` of ``reading``: SOP class, UIDs derived from ``data``, annotations.

    A file without an acquisition date is refused (``date_field`` names where the
    format keeps it): both ECG IODs require Acquisition DateTime and Content Date
    and Time (PS3.3 C.10.8, Waveform Identification, all Type 1, so never empty),
    and the archive neither invents one nor stores an object that does not validate.
    """
    if reading.acquisition_datetime is None:
        raise InvalidFile(fmt, date_field, "absent: the file states no acquisition date, "
                          "which the DICOM object needs (Acquisition DateTime, Content Date "
                          "and Time are Type 1); export the ECG with its acquisition date")
    return Ecg(
        sop_class_uid=_sop_class(reading.groups),
        sop_instance_uid=reading.uid or derived_uid(data, "instance"),
        study_instance_uid=derived_uid(data, "study"),
        series_instance_uid=derived_uid(data, "series"),
        patient_id=_lo(reading.patient_id),
        patient_name=_lo(reading.patient_name),
        birth_date=reading.birth_date,
        sex=reading.sex,
        acquisition_datetime=reading.acquisition_datetime,
        institution=_lo(reading.institution),
        manufacturer=_lo(reading.manufacturer),
        model=_lo(reading.model),
        software_versions=_lo(reading.software_versions),
        device_serial_number=_lo(reading.device_serial_number),
        annotations=_annotations(reading),
        groups=reading.groups,
        warnings=reading.warnings,
    )
