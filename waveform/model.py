"""The in-memory vocabulary of an ECG: `Ecg`, `WaveformGroup`, `Channel`.

Values are frozen. A `WaveformGroup` holds the samples exactly as stored
(``raw``: integers shaped (channels, samples), usually a read-only view of the
received bytes); everything physical is derived from them on demand.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from waveform.errors import InvalidArgument

__all__ = [
    "LEADS",
    "ROLES",
    "SUMMARY_MEASURES",
    "Annotation",
    "Channel",
    "Code",
    "Ecg",
    "Identity",
    "LeadQuality",
    "Measured",
    "Summary",
    "WaveformGroup",
]

#: The twelve standard leads, in the conventional display order.
LEADS: tuple[str, ...] = (
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
)


@dataclass(frozen=True, slots=True)
class Code:
    """A coded concept: (coding scheme designator, code value, code meaning)."""

    scheme: str
    value: str
    meaning: str = ""


@dataclass(frozen=True, slots=True)
class Channel:
    """One channel of a multiplex group, as its Channel Definition Sequence item says.

    ``lead`` is the standard lead name (I, II, III, aVR, aVL, aVF, V1..V6, ...)
    when the source code is an ECG lead, else None. ``units`` is the UCUM code of
    Channel Sensitivity Units (``uV``, ``mV``, ``mm[Hg]``, ...). Physical value =
    raw * sensitivity * correction + baseline (PS3.3 C.10.9.1.4.3).
    ``skew`` is the offset of the channel's first sample from the group's start
    in seconds (Channel Time Skew, or Channel Sample Skew / sampling frequency).
    ``padding`` is the group's Waveform Padding Value (no sample), if declared.
    """

    label: str = ""
    source: Code | None = None
    lead: str | None = None
    units: str | None = None
    sensitivity: float = 1.0
    correction: float = 1.0
    baseline: float = 0.0
    skew: float = 0.0
    filter_low_hz: float | None = None
    filter_high_hz: float | None = None
    notch_hz: float | None = None
    bits_stored: int | None = None
    padding: int | None = None

    @property
    def name(self) -> str:
        """The lead name if known, else the label, else the code meaning."""
        if self.lead:
            return self.lead
        if self.label:
            return self.label
        return self.source.meaning if self.source else ""


# Sample interpretation -> numpy dtype of the stored samples (PS3.3 C.10.9.1.5).
SAMPLE_DTYPES: dict[tuple[int, str], np.dtype[Any]] = {
    (8, "SB"): np.dtype(np.int8),
    (8, "UB"): np.dtype(np.uint8),
    (8, "MB"): np.dtype(np.uint8),
    (8, "AB"): np.dtype(np.uint8),
    (16, "SS"): np.dtype(np.int16),
    (16, "US"): np.dtype(np.uint16),
    (32, "SL"): np.dtype(np.int32),
    (32, "UL"): np.dtype(np.uint32),
    (64, "SV"): np.dtype(np.int64),
    (64, "UV"): np.dtype(np.uint64),
}


@dataclass(frozen=True, slots=True, eq=False)
class WaveformGroup:
    """One multiplex group (an item of the Waveform Sequence).

    ``raw`` is shaped (channels, samples) in the stored dtype; it is typically a
    transposed, read-only view of the object's WaveformData, not a copy.
    ``time_offset`` (Multiplex Group Time Offset) and ``trigger_time_offset``
    are in milliseconds, as in the object.
    """

    label: str
    sampling_frequency: float
    channels: tuple[Channel, ...]
    raw: np.ndarray
    interpretation: str = "SS"
    time_offset: float = 0.0
    originality: str = "ORIGINAL"
    trigger_time_offset: float | None = None

    @property
    def n_channels(self) -> int:
        return int(self.raw.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.raw.shape[1])

    @property
    def bits_allocated(self) -> int:
        return int(self.raw.dtype.itemsize * 8)

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sampling_frequency

    @property
    def leads(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.channels)

    def lead_index(self, lead: str) -> int | None:
        """Row of ``raw`` that holds the standard lead ``lead``, or None."""
        for i, c in enumerate(self.channels):
            if c.lead == lead:
                return i
        return None

    def physical(self) -> np.ndarray:
        """float64 (channels, samples) in each channel's units.

        Applies, per channel and in this order, ``raw * sensitivity * correction
        + baseline`` after undoing the storage form of the samples: mu-law (MB)
        and A-law (AB) codes are expanded to linear values (ITU-T G.711), samples
        are sign-extended (or masked) from Waveform Bits Stored, and samples equal
        to the padding value are NaN (they carry no measurement). The one
        scaling kernel, `waveform.dsp.scale`, does it for every consumer.
        """
        from waveform.dsp.scale import to_physical

        ch = self.channels
        return to_physical(self.raw, [c.sensitivity for c in ch], [c.correction for c in ch],
                           [c.baseline for c in ch], padding=[c.padding for c in ch],
                           interpretation=self.interpretation, bits_stored=self.bits_stored)

    def microvolts(self, rows: Sequence[int] | None = None) -> np.ndarray:
        """float32 (channels, samples) in µV of the channels ``rows`` (default all,
        which must be in voltage units): `physical` in one unit, for the analysis
        and traces, from the same kernel."""
        from waveform.dsp.scale import to_microvolts

        idx = list(range(self.n_channels)) if rows is None else list(rows)
        ch = [self.channels[i] for i in idx]
        raw = self.raw if rows is None else self.raw[idx]
        return to_microvolts(raw, [c.sensitivity for c in ch], [c.correction for c in ch],
                             [c.baseline for c in ch], [c.units for c in ch],
                             [c.padding for c in ch], interpretation=self.interpretation,
                             bits_stored=self.bits_stored)

    @property
    def bits_stored(self) -> int | None:
        """Waveform Bits Stored. It is per channel in the standard but one value in
        practice; the narrowest declared width applies to the whole group."""
        stored = [c.bits_stored for c in self.channels if c.bits_stored]
        return min(stored) if stored else None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WaveformGroup):
            return NotImplemented
        return (
            self.label == other.label
            and self.sampling_frequency == other.sampling_frequency
            and self.channels == other.channels
            and self.interpretation == other.interpretation
            and self.time_offset == other.time_offset
            and self.originality == other.originality
            and self.trigger_time_offset == other.trigger_time_offset
            and self.raw.dtype == other.raw.dtype
            and self.raw.shape == other.raw.shape
            and bool(np.array_equal(self.raw, other.raw))
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Annotation:
    """One item of the Waveform Annotation Sequence (PS3.3 C.10.10).

    Either free text (``text``), a coded statement (``concept`` names it and
    ``value_code`` holds its Concept Code) or a numeric measurement (``concept``
    + ``value`` + ``units``, a UCUM code),
    optionally pinned to channels (pairs of (group, channel), 1-based as in the
    object) and to sample positions or times.
    """

    text: str | None = None
    concept: Code | None = None
    value_code: Code | None = None
    value: float | None = None
    units: str | None = None
    group_number: int | None = None
    channels: tuple[tuple[int, int], ...] = ()
    temporal_range_type: str | None = None
    sample_positions: tuple[int, ...] = ()
    time_offsets: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class Ecg:
    """One waveform SOP instance: identity, context and its multiplex groups."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    patient_id: str = ""
    patient_id_issuer: str = ""
    patient_name: str = ""
    birth_date: dt.date | None = None
    sex: str = ""
    accession_number: str = ""
    acquisition_datetime: dt.datetime | None = None
    study_description: str = ""
    institution: str = ""
    manufacturer: str = ""
    model: str = ""
    software_versions: str = ""
    device_serial_number: str = ""
    operator: str = ""
    reading_physician: str = ""
    referring_physician: str = ""
    annotations: Sequence[Annotation] = ()
    groups: tuple[WaveformGroup, ...] = ()
    transfer_syntax_uid: str = "1.2.840.10008.1.2.1"
    specific_character_set: str = ""
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def group(self, label: str) -> WaveformGroup | None:
        """The first multiplex group whose label is ``label`` (case-insensitive)."""
        want = label.strip().upper()
        for g in self.groups:
            if g.label.strip().upper() == want:
                return g
        return None

    @property
    def rhythm(self) -> WaveformGroup | None:
        """The rhythm group: labelled RHYTHM, else the longest ORIGINAL group."""
        g = self.group("RHYTHM")
        if g is not None:
            return g
        originals = [g for g in self.groups if g.originality == "ORIGINAL"] or list(self.groups)
        return max(originals, key=lambda g: g.duration_s, default=None)

    def replace(self, **changes: Any) -> Ecg:
        """A copy with ``changes`` applied (``dataclasses.replace`` for slots)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Ecg(**values)


# ---------------------------------------------------------------------------
# Measurements: the analysis result (`waveform.analysis.analyze`) and its parts.
# Persisted by the store as flat, Arrow-friendly columns via to_dict/from_dict.
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Measured:
    """A measured value, or None with the reason it could not be measured."""

    value: float | None = None
    reason: str = ""

    @property
    def present(self) -> bool:
        return self.value is not None

    @classmethod
    def absent(cls, reason: str) -> Measured:
        return cls(None, reason)


@dataclass(frozen=True, slots=True)
class LeadQuality:
    """Signal quality 0..1 of one lead and the reason that limits it ("OK" if none)."""

    lead: str
    quality: float
    reason: str = "OK"


#: Scalar measurements of a Summary, in the order columns are written.
SUMMARY_MEASURES: tuple[str, ...] = (
    "heart_rate_bpm", "heart_rate_min_bpm", "heart_rate_max_bpm",
    "rr_mean_ms", "rr_sd_ms",
    "p_onset_ms", "p_offset_ms", "qrs_onset_ms", "qrs_offset_ms", "t_offset_ms",
    "pr_ms", "qrs_ms", "qt_ms",
    "qtc_bazett_ms", "qtc_fridericia_ms", "qtc_framingham_ms", "qtc_hodges_ms",
    "p_axis_deg", "qrs_axis_deg", "t_axis_deg",
)


@dataclass(frozen=True, slots=True, eq=False)
class Summary:
    """What the analysis measured on one ECG's rhythm group.

    ``beats`` are sample indices at the group's own rate (``sampling_frequency``)
    with one class each: "N" normal, "P" premature (20% before the median RR),
    "U" unknown (the first beat, a beat after a stretch no lead recorded, and
    every beat of a rhythm with no P wave and irregular RR intervals, as in
    atrial fibrillation, which has no expected beat time). ``median_beat``
    is float32 µV (leads, samples) at ``median_fs``; fiducials (``*_onset_ms``,
    ``*_offset_ms``) are ms from the start of the median beat, global over leads
    as in the CSE convention (earliest onset, latest offset). Each scalar is a
    `Measured`: absent with a reason, never guessed.
    """

    analysis_version: str
    sampling_frequency: float
    beats: np.ndarray
    beat_classes: tuple[str, ...]
    heart_rate_bpm: Measured
    heart_rate_min_bpm: Measured
    heart_rate_max_bpm: Measured
    rr_mean_ms: Measured
    rr_sd_ms: Measured
    median_leads: tuple[str, ...]
    median_fs: float
    median_beat: np.ndarray
    p_onset_ms: Measured
    p_offset_ms: Measured
    qrs_onset_ms: Measured
    qrs_offset_ms: Measured
    t_offset_ms: Measured
    pr_ms: Measured
    qrs_ms: Measured
    qt_ms: Measured
    qtc_bazett_ms: Measured
    qtc_fridericia_ms: Measured
    qtc_framingham_ms: Measured
    qtc_hodges_ms: Measured
    p_axis_deg: Measured
    qrs_axis_deg: Measured
    t_axis_deg: Measured
    lead_quality: tuple[LeadQuality, ...] = ()
    #: Per-beat wave boundaries (`waveform.analysis.MARKS` columns: P on, P off,
    #: QRS on, QRS off, T peak, T off), int64 sample indices at
    #: ``sampling_frequency``, a row per beat, -1 where absent; ``beat_mark_why``
    #: (int8, same shape) indexes ``beat_mark_reasons`` for each absent mark, -1
    #: for a present one.
    beat_marks: np.ndarray = field(default_factory=lambda: np.empty((0, 6), dtype=np.int64))
    beat_mark_why: np.ndarray = field(default_factory=lambda: np.empty((0, 6), dtype=np.int8))
    beat_mark_reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Flat columns: scalars, ``<name>_reason`` strings and lists (Arrow-friendly)."""
        d: dict[str, Any] = {
            "analysis_version": self.analysis_version,
            "sampling_frequency": self.sampling_frequency,
            "beats": [int(b) for b in self.beats],
            "beat_classes": list(self.beat_classes),
            "median_leads": list(self.median_leads),
            "median_fs": self.median_fs,
            "median_beat": [[float(v) for v in row] for row in self.median_beat],
            "quality_leads": [q.lead for q in self.lead_quality],
            "quality": [q.quality for q in self.lead_quality],
            "quality_reasons": [q.reason for q in self.lead_quality],
            "beat_marks": self.beat_marks.tolist(),
            "beat_mark_why": self.beat_mark_why.tolist(),
            "beat_mark_reasons": list(self.beat_mark_reasons),
        }
        for name in SUMMARY_MEASURES:
            m: Measured = getattr(self, name)
            d[name] = m.value
            d[f"{name}_reason"] = m.reason
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Summary:
        """The inverse of `to_dict`."""
        measures = {
            name: Measured(
                None if d.get(name) is None else float(d[name]), d.get(f"{name}_reason") or ""
            )
            for name in SUMMARY_MEASURES
        }
        median = np.asarray(d.get("median_beat") or [], dtype=np.float32)
        if median.ndim != 2:
            median = median.reshape(len(d.get("median_leads") or ()), -1)
        quality = tuple(
            LeadQuality(lead, float(q), r)
            for lead, q, r in zip(
                d.get("quality_leads") or (), d.get("quality") or (),
                d.get("quality_reasons") or (), strict=True,
            )
        )
        return cls(
            analysis_version=str(d["analysis_version"]),
            sampling_frequency=float(d["sampling_frequency"]),
            beats=np.asarray(d.get("beats") or [], dtype=np.int64),
            beat_classes=tuple(d.get("beat_classes") or ()),
            median_leads=tuple(d.get("median_leads") or ()),
            median_fs=float(d["median_fs"]),
            median_beat=median,
            lead_quality=quality,
            beat_marks=np.asarray(d.get("beat_marks") or [], dtype=np.int64).reshape(-1, 6),
            beat_mark_why=np.asarray(d.get("beat_mark_why") or [], dtype=np.int8).reshape(-1, 6),
            beat_mark_reasons=tuple(d.get("beat_mark_reasons") or ()),
            **measures,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Summary):
            return NotImplemented
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray):
                if not (isinstance(b, np.ndarray) and a.shape == b.shape
                        and bool(np.array_equal(a, b))):
                    return False
            elif a != b:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]


#: Who may call the archive: what each role may do is `waveform.archive.policy`'s.
ROLES = ("device", "clinician", "citizen", "auditor", "admin")


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller: organisation, user, role (and a citizen's patient)."""

    organisation: str
    user: str
    role: str
    patient_id: str = ""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise InvalidArgument(f"role {self.role!r} is not one of {', '.join(ROLES)}")
        if not self.organisation or not self.user:
            raise InvalidArgument("an identity needs an organisation and a user")
        if self.role == "citizen" and not self.patient_id:
            raise InvalidArgument(f"citizen {self.user!r} needs a patient_id")

    def describe(self) -> str:
        return f"{self.role} {self.user} of {self.organisation}"
