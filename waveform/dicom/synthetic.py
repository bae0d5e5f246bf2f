"""Deterministic synthetic waveform objects: realistic ECGs and a test corpus.

`synthetic_ecg` builds an `Ecg` whose leads come from one cardiac dipole: each
wave (P, Q, R, S, T) is a Gaussian in time with a frontal-plane axis and a
precordial profile, so the limb leads obey Einthoven's and Goldberger's laws
(III = II - I, aVR = -(I + II)/2, aVL = I - II/2, aVF = II - I/2) before
quantisation. Samples are quantised to the requested interpretation (including
8-bit mu-law and A-law, ITU-T G.711) with a sensitivity chosen so that the
signal uses a fraction of the stored range.

`corpus` enumerates small objects covering every SOP class, transfer syntax,
sample interpretation and width, channel counts 1..24 and several rates, for
encoder/decoder tests.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from pydicom.uid import generate_uid

from waveform.dicom.codes import SOP_CLASSES, TRANSFER_SYNTAXES, lead_from_code
from waveform.errors import InvalidArgument
from waveform.model import LEADS, SAMPLE_DTYPES, Annotation, Channel, Code, Ecg, WaveformGroup

__all__ = [
    "EXTRA_LEADS",
    "GENERAL_ECG",
    "TWELVE_LEAD",
    "corpus",
    "synthetic_ecg",
]

TWELVE_LEAD = "1.2.840.10008.5.1.4.1.1.9.1.1"
GENERAL_ECG = "1.2.840.10008.5.1.4.1.1.9.1.2"
_ARTERIAL = "1.2.840.10008.5.1.4.1.1.9.5.1"
_RESPIRATORY = "1.2.840.10008.5.1.4.1.1.9.6.1"
_MULTI_RESPIRATORY = "1.2.840.10008.5.1.4.1.1.9.6.2"
_BODY_POSITION = "1.2.840.10008.5.1.4.1.1.9.8.1"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"

# Interpretation -> bits allocated (each interpretation has exactly one width).
_WIDTH: dict[str, int] = {interp: bits for (bits, interp) in SAMPLE_DTYPES}

_LEAD_MEANINGS: dict[str, str] = {
    "I": "Lead I", "II": "Lead II", "III": "Lead III",
    "aVR": "aVR, augmented voltage, right", "aVL": "aVL, augmented voltage, left",
    "aVF": "aVF, augmented voltage, foot",
    **{f"V{i}": f"Lead V{i}" for i in range(1, 7)},
}
_LEAD_VALUES: dict[str, str] = {
    "I": "2:1", "II": "2:2", "V1": "2:3", "V2": "2:4", "V3": "2:5", "V4": "2:6",
    "V5": "2:7", "V6": "2:8", "III": "2:61", "aVR": "2:62", "aVL": "2:63", "aVF": "2:64",
}

#: Channels 13..24 of a wide ECG: (label, MDC code value, meaning, mix of the 12 leads).
EXTRA_LEADS: tuple[tuple[str, str, str, dict[str, float]], ...] = (
    ("V7", "2:9", "Lead V7", {"V6": 0.8}),
    ("V2R", "2:10", "Lead V2R", {"V1": 1.0}),
    ("V3R", "2:11", "Lead V3R", {"V1": 0.8}),
    ("V4R", "2:12", "Lead V4R", {"V1": 0.6, "aVR": 0.2}),
    ("V5R", "2:13", "Lead V5R", {"V1": 0.5, "aVR": 0.3}),
    ("V6R", "2:14", "Lead V6R", {"aVR": 0.6}),
    ("V7R", "2:15", "Lead V7R", {"aVR": 0.5}),
    ("X", "2:16", "Lead X", {"I": 1.0}),
    ("Y", "2:17", "Lead Y", {"aVF": 1.0}),
    ("Z", "2:18", "Lead Z", {"V2": -0.5}),
    ("CC5", "2:19", "Lead CC5", {"V5": 0.9, "aVR": -0.2}),
    ("CM5", "2:20", "Lead CM5", {"V5": 1.0}),
)


@dataclass(frozen=True, slots=True)
class _Wave:
    """One deflection of the cardiac dipole relative to the R peak (PS-free physiology)."""

    at_s: float
    width_s: float
    mv: float
    axis_deg: float
    precordial: tuple[float, float, float, float, float, float]
    #: Ventricular repolarisation (the T wave): its timing and width follow the
    #: heart rate (`_repolarisation_scale`).
    repolarisation: bool = False


# A normal adult beat: frontal axis about +60 degrees, R wave progression V1->V5.
_BEAT: tuple[_Wave, ...] = (
    _Wave(-0.16, 0.022, 0.15, 55.0, (0.05, 0.08, 0.10, 0.10, 0.10, 0.08)),
    _Wave(-0.028, 0.008, -0.10, 60.0, (0.0, 0.0, 0.0, -0.05, -0.10, -0.10)),
    _Wave(0.0, 0.010, 1.20, 60.0, (0.25, 0.55, 0.85, 1.25, 1.40, 1.10)),
    _Wave(0.030, 0.010, -0.30, 60.0, (-0.90, -1.20, -0.80, -0.40, -0.20, -0.10)),
    _Wave(0.25, 0.040, 0.35, 45.0, (-0.10, 0.30, 0.45, 0.40, 0.35, 0.25), repolarisation=True),
)
#: The RR interval (s) at which `_BEAT` has its nominal timing (72/min).
_NOMINAL_RR_S = 60.0 / 72.0
#: Where `_BEAT`'s QRS complex starts (s from the R peak): the QT interval,
#: which `_repolarisation_scale` scales, is counted from here.
_QRS_ONSET_S = -0.045


def _repolarisation_scale(rr_s: float) -> float:
    """How much the T wave's time from the QRS onset and its width scale at RR ``rr_s``.

    The QT interval shortens as the rate rises; Fridericia's cube-root law
    (QT proportional to RR^(1/3)) describes it well over the resting and
    tachycardic range. 1 at 72/min, so the nominal beat is unchanged there.
    Without it the T wave of a beat at 100/min would still end where the next
    beat's P wave begins, as the T wave of a sinus tachycardia at that rate
    does not.
    """
    return float((rr_s / _NOMINAL_RR_S) ** (1.0 / 3.0))


def _units_per_mv(units: str) -> float:
    scale = {"uV": 1000.0, "mV": 1.0, "V": 0.001, "nV": 1e6}
    try:
        return scale[units]
    except KeyError:
        raise InvalidArgument(
            f"ECG units {units!r} are not a voltage; expected one of {', '.join(scale)}"
        ) from None


def _r_peaks(duration_s: float, heart_rate: float, rng: np.random.Generator) -> np.ndarray:
    """R peak times: a mean RR of 60/heart_rate with +-1.5% respiratory variation."""
    rr = 60.0 / heart_rate
    times: list[float] = []
    t = 0.35 * rr + 0.2
    k = 0
    while t < duration_s + rr:
        times.append(t)
        k += 1
        t += rr * (1.0 + 0.015 * math.sin(2 * math.pi * k / 4.5) + 0.003 * rng.standard_normal())
    return np.asarray(times)


def _limb_and_chest(
    t: np.ndarray, peaks: np.ndarray, rng: np.random.Generator, rr_s: float
) -> dict[str, np.ndarray]:
    """The twelve leads in mV at times ``t`` for beats at ``peaks`` (mean RR ``rr_s``),
    with 10 uV of noise on the two independent limb leads and the chest leads (so
    the derived limb leads still obey Einthoven exactly)."""
    qt = _repolarisation_scale(rr_s)
    lead_i = 0.01 * rng.standard_normal(t.size)
    lead_ii = 0.01 * rng.standard_normal(t.size)
    chest = 0.01 * rng.standard_normal((6, t.size))
    for r in peaks:
        near = np.abs(t - r) < 0.6
        if not near.any():
            continue
        tt = t[near] - r
        for w in _BEAT:
            k = qt if w.repolarisation else 1.0
            at = _QRS_ONSET_S + k * (w.at_s - _QRS_ONSET_S)
            shape = np.exp(-0.5 * ((tt - at) / (k * w.width_s)) ** 2)
            axis = math.radians(w.axis_deg)
            lead_i[near] += w.mv * math.cos(axis) * shape
            lead_ii[near] += w.mv * math.cos(axis - math.radians(60.0)) * shape
            chest[:, near] += np.outer(w.precordial, shape)
    leads = {
        "I": lead_i,
        "II": lead_ii,
        "III": lead_ii - lead_i,
        "aVR": -(lead_i + lead_ii) / 2.0,
        "aVL": lead_i - lead_ii / 2.0,
        "aVF": lead_ii - lead_i / 2.0,
    }
    for i in range(6):
        leads[f"V{i + 1}"] = chest[i]
    return leads


def _ecg_channels(n: int) -> list[tuple[Code, str | None, str, dict[str, float]]]:
    """(source code, lead, label, mix) for the first ``n`` channels of a wide ECG."""
    out: list[tuple[Code, str | None, str, dict[str, float]]] = []
    for lead in LEADS:
        out.append((Code("MDC", _LEAD_VALUES[lead], _LEAD_MEANINGS[lead]), lead, lead,
                    {lead: 1.0}))
    for label, value, meaning, mix in EXTRA_LEADS:
        out.append((Code("MDC", value, meaning), lead_from_code("MDC", value), label, mix))
    if n > len(out):
        raise InvalidArgument(f"n_channels={n}: at most {len(out)} ECG channels can be made")
    return out[:n]


# Non-ECG classes: (private code value, meaning, units) per channel kind.
_OTHER_KIND: dict[str, tuple[str, str, str]] = {
    _ARTERIAL: ("ART", "Arterial pressure", "mm[Hg]"),
    _RESPIRATORY: ("FLOW", "Respiratory flow", "L/s"),
    _MULTI_RESPIRATORY: ("FLOW", "Respiratory flow", "L/s"),
    _BODY_POSITION: ("ANGLE", "Body inclination", "deg"),
}
_PRIVATE_SCHEME = "99WAVEFORM"


def _other_signal(kind: str, t: np.ndarray, peaks: np.ndarray, channel: int) -> np.ndarray:
    if kind == "ART":
        p = np.full_like(t, 80.0)
        for r in peaks:
            tt = t - r - 0.08
            p += 40.0 * np.exp(-0.5 * (tt / 0.06) ** 2) * (tt > -0.3)
            p += 8.0 * np.exp(-0.5 * ((tt - 0.3) / 0.04) ** 2)
        return p
    if kind == "FLOW":
        return 0.5 * np.sin(2 * math.pi * 0.25 * t + channel * 0.7)
    # Body inclination: slow steps between postures, in degrees.
    return 30.0 * np.floor((t + channel) / 2.0) % 90.0 - 45.0 + 5.0 * channel


# ---------------------------------------------------------------------------
# Quantisation.


def _g711_mu(linear: np.ndarray) -> np.ndarray:
    """ITU-T G.711 mu-law codes of 16-bit linear values (14-bit companding, as Sun's g711.c)."""
    x = np.clip(linear.astype(np.int64), -32768, 32767) >> 2
    mask = np.where(x < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(x), 8159) + 33
    seg = np.searchsorted(np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF]),
                          mag, side="left")
    code = np.where(seg >= 8, 0x7F, (seg << 4) | ((mag >> (seg + 1)) & 0x0F))
    return (code ^ mask).astype(np.uint8)


def _g711_a(linear: np.ndarray) -> np.ndarray:
    """ITU-T G.711 A-law codes of 16-bit linear values (13-bit companding, as Sun's g711.c)."""
    x = np.clip(linear.astype(np.int64), -32768, 32767) >> 3
    mask = np.where(x >= 0, 0xD5, 0x55)
    mag = np.where(x >= 0, x, -x - 1)
    seg = np.searchsorted(np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF]),
                          mag, side="left")
    code = np.where(seg >= 8, 0x7F, (seg << 4) | np.where(
        seg < 2, (mag >> 1) & 0x0F, (mag >> np.maximum(seg, 1)) & 0x0F))
    return (code ^ mask).astype(np.uint8)


def _nice(x: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k at or above ``x`` (exact as a decimal string)."""
    k = math.floor(math.log10(x))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        v = float(f"{m}e{k}")
        if v >= x * (1 - 1e-12):
            return v
    return float(f"1e{k + 1}")


@dataclass(frozen=True, slots=True)
class _Scale:
    sensitivity: float
    baseline: float


def _quantise(
    phys: np.ndarray, interpretation: str, bits_stored: int, sensitivity: float | None,
    padding: int | None,
) -> tuple[np.ndarray, _Scale]:
    """Integer samples (channels, samples) of ``phys`` and the scale that maps them back."""
    dtype = SAMPLE_DTYPES[(_WIDTH[interpretation], interpretation)]
    peak = float(np.max(np.abs(phys))) or 1.0
    if interpretation in ("MB", "AB"):
        # Companded: codes expand to 16-bit linear values; use a quarter of that range.
        sens = sensitivity or _nice(peak / 8000.0)
        linear = np.rint(phys / sens)
        raw = _g711_mu(linear) if interpretation == "MB" else _g711_a(linear)
        if padding is not None:
            raw[raw == padding] ^= 0x01
        return raw, _Scale(sens, 0.0)
    signed = dtype.kind == "i"
    # Stored range of ``bits_stored`` bits (values stay sign-extended in the word);
    # wider words use a 32-bit range so that float64 and int64 hold every value.
    bits = min(bits_stored, 32)
    lo = -(2 ** (bits - 1)) if signed else 0
    hi = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    mid = 0 if signed else 2 ** (bits - 1)
    half = min(hi - mid, mid - lo)
    sens = sensitivity or _nice(peak / (0.4 * half))
    baseline = -mid * sens
    q = np.clip(np.rint((phys - baseline) / sens), lo, hi).astype(np.int64)
    raw = q.astype(dtype)
    if padding is not None:
        # The padding value marks "no sample": keep measured samples off it.
        pad = np.array(padding).astype(dtype)
        raw[raw == pad] = pad + 1 if int(pad) < hi else pad - 1
    return raw, _Scale(sens, baseline)


# ---------------------------------------------------------------------------
# The generator.


def synthetic_ecg(
    *,
    sop_class_uid: str = TWELVE_LEAD,
    n_channels: int = 12,
    fs: float = 500.0,
    duration_s: float = 10.0,
    interpretation: str = "SS",
    bits_stored: int | None = None,
    padding: int | None = None,
    groups: int = 1,
    heart_rate: float = 72.0,
    seed: int = 0,
    units: str = "uV",
    sensitivity: float | None = None,
    step_mv: float | None = None,
    annotations: bool = True,
    group_offset_ms: float = 0.0,
    transfer_syntax_uid: str = _EXPLICIT_LE,
) -> Ecg:
    """A deterministic synthetic waveform object.

    ``groups`` = 1 gives a RHYTHM group; 2 adds a MEDIAN BEAT group (DERIVED);
    more add further short RHYTHM groups, each ``group_offset_ms`` after the previous
    (Multiplex Group Time Offset, which makes the encoder write a Synchronization
    module). ``bits_stored`` below
    the width keeps samples within that many bits; ``padding`` marks the last
    samples of the last channel as padding. ``step_mv`` puts a calibration pulse
    of that height into every channel from 0.1 s to 0.3 s (the signal is zero
    from 0 to 0.4 s). ``sensitivity`` (units per LSB) defaults to a round value
    that uses about 40% of the stored range. Non-ECG SOP classes get signals of
    their kind (arterial pressure, respiratory flow, body inclination) with
    private codes.
    """
    sop = SOP_CLASSES.get(sop_class_uid)
    if sop is None:
        raise InvalidArgument(f"SOP class {sop_class_uid!r} is not a waveform class")
    if interpretation not in sop.interpretations:
        raise InvalidArgument(
            f"{sop.name} does not allow interpretation {interpretation!r}; expected one of "
            + ", ".join(sorted(sop.interpretations))
        )
    if sop.max_channels is not None and n_channels > sop.max_channels:
        raise InvalidArgument(
            f"{sop.name} allows at most {sop.max_channels} channels, not {n_channels}"
        )
    if sop.max_groups is not None and groups > sop.max_groups:
        raise InvalidArgument(f"{sop.name} allows at most {sop.max_groups} groups, not {groups}")
    if n_channels < 1 or groups < 1 or fs <= 0 or duration_s <= 0 or heart_rate <= 0:
        raise InvalidArgument(
            f"n_channels={n_channels}, groups={groups}, fs={fs}, duration_s={duration_s} and "
            f"heart_rate={heart_rate} must all be positive"
        )
    width = _WIDTH[interpretation]
    stored = bits_stored if bits_stored is not None else width
    if not 2 <= stored <= width or (interpretation in ("MB", "AB") and stored != 8):
        raise InvalidArgument(
            f"bits_stored={bits_stored} is not possible for {interpretation} ({width} bits)"
        )

    rng = np.random.default_rng(seed)
    n = round(duration_s * fs)
    if sop.max_samples is not None and n > sop.max_samples:
        raise InvalidArgument(
            f"{sop.name} allows at most {sop.max_samples} samples per channel; "
            f"{duration_s} s at {fs} Hz is {n}"
        )
    t = np.arange(n) / fs
    peaks = _r_peaks(duration_s, heart_rate, rng)
    other = _OTHER_KIND.get(sop_class_uid)

    def group_signal(tt: np.ndarray, pk: np.ndarray) -> tuple[np.ndarray, list[Channel]]:
        if other is None:
            leads = _limb_and_chest(tt, pk, rng, 60.0 / heart_rate)
            scale = _units_per_mv(units)
            specs = _ecg_channels(n_channels)
            rows = [sum(w * leads[k] for k, w in mix.items()) * scale
                    for _, _, _, mix in specs]
            chans = [Channel(label=label, source=code, lead=lead, units=units)
                     for code, lead, label, _ in specs]
            phys = np.vstack([np.asarray(r, dtype=np.float64) for r in rows])
        else:
            value, meaning, unit = other
            phys = np.vstack([_other_signal(value, tt, pk, c) for c in range(n_channels)])
            chans = [Channel(label=f"{value} {c + 1}" if n_channels > 1 else value,
                             source=Code(_PRIVATE_SCHEME, value, meaning), units=unit)
                     for c in range(n_channels)]
            scale = 1.0
        if step_mv is not None:
            phys[:, tt < 0.4] = 0.0
            phys[:, (tt >= 0.1) & (tt < 0.3)] = step_mv * scale
        return phys, chans

    made: list[WaveformGroup] = []
    specs = [("RHYTHM", t, peaks, "ORIGINAL", 0.0)]
    if groups >= 2:
        beat = np.arange(round(1.2 * fs)) / fs
        specs.append(("MEDIAN BEAT", beat, np.asarray([0.45]), "DERIVED", 0.0))
    for k in range(2, groups):
        offset = (k - 1) * group_offset_ms
        specs.append(("RHYTHM", t[: max(1, n // 2)], peaks, "ORIGINAL", offset))
    for label, tt, pk, originality, offset in specs:
        phys, chans = group_signal(tt, pk)
        raw, sc = _quantise(phys, interpretation, stored, sensitivity, padding)
        if padding is not None:
            tail = max(1, raw.shape[1] // 20)
            raw[-1, -tail:] = padding
        channels = tuple(
            Channel(
                label=c.label, source=c.source, lead=c.lead, units=c.units,
                sensitivity=sc.sensitivity, correction=1.0, baseline=sc.baseline,
                skew=0.0,
                filter_low_hz=0.05 if other is None else None,
                filter_high_hz=min(150.0, fs / 2) if other is None else None,
                notch_hz=50.0 if other is None else None,
                bits_stored=stored, padding=padding,
            )
            for c in chans
        )
        made.append(WaveformGroup(
            label=label, sampling_frequency=float(fs), channels=channels, raw=raw,
            interpretation=interpretation, time_offset=offset, originality=originality,
        ))

    key = [sop_class_uid, n_channels, fs, duration_s, interpretation, stored, padding, groups,
           heart_rate, seed, units, sensitivity, step_mv, group_offset_ms]
    entropy = [repr(k) for k in key]
    anns: tuple[Annotation, ...] = ()
    if annotations:
        rr_ms = float(round(60000.0 / heart_rate))
        first = round(float(peaks[0]) * fs) if peaks[0] * fs < n else 0
        anns = (
            Annotation(text="Sinus rhythm", channels=((1, 0),), group_number=0),
            Annotation(concept=Code("SCPECG", "5.10.2.1-3", "RR Interval"), value=rr_ms,
                       units="ms", channels=((1, 0),), group_number=1),
            Annotation(concept=Code("DCM", "121071", "Finding"),
                       value_code=Code("SCT", "251146004", "Normal sinus rhythm"),
                       channels=((1, 0),), group_number=0),
            Annotation(text="R", channels=((1, 1),), temporal_range_type="POINT",
                       sample_positions=(first + 1,)),
        )
    when = dt.datetime(2024, 1, 1, 8, 0, 0) + dt.timedelta(minutes=int(seed) % 525600)
    return Ecg(
        sop_class_uid=sop_class_uid,
        sop_instance_uid=str(generate_uid(entropy_srcs=[*entropy, "instance"])),
        study_instance_uid=str(generate_uid(entropy_srcs=[*entropy, "study"])),
        series_instance_uid=str(generate_uid(entropy_srcs=[*entropy, "series"])),
        patient_id=f"SYN{seed:06d}",
        patient_id_issuer="WAVEFORM-SYNTHETIC",
        patient_name=f"Synthetic^Patient{seed}",
        birth_date=dt.date(1960 + seed % 40, 1 + seed % 12, 1 + seed % 28),
        sex="FM"[seed % 2],
        accession_number=f"ACC{seed:06d}",
        acquisition_datetime=when,
        study_description="Resting ECG" if other is None else sop.name,
        institution="Synthetic Hospital",
        manufacturer="waveform",
        model="synthetic",
        software_versions="1",
        device_serial_number=f"SN{seed:04d}",
        operator="Operator^Olga",
        reading_physician="Reader^Rita",
        referring_physician="Referrer^Rolf",
        annotations=anns,
        groups=tuple(made),
        transfer_syntax_uid=transfer_syntax_uid,
    )


# ---------------------------------------------------------------------------
# The corpus.

_RATES: tuple[float, ...] = (500.0, 250.0, 1000.0, 360.0, 200.0, 257.0)
_COUNTS: tuple[int, ...] = (1, 2, 3, 4, 6, 12, 13)


def corpus() -> Iterator[tuple[str, Ecg, str]]:
    """(readable id, Ecg, transfer syntax UID) for a small corpus covering every SOP class,
    transfer syntax, interpretation and width the class allows, channel counts 1..24
    within each class's limit and several rates; plus bits stored below bits allocated,
    padding and multi-group objects. Every object is short (at most 0.6 s)."""
    syntaxes = list(TRANSFER_SYNTAXES)
    ts_names = {
        "1.2.840.10008.1.2": "implicit",
        "1.2.840.10008.1.2.1": "explicit",
        "1.2.840.10008.1.2.1.99": "deflated",
        "1.2.840.10008.1.2.2": "bigendian",
    }
    seed = 0
    for sop in SOP_CLASSES.values():
        short = sop.name.replace(" Waveform Storage", "").replace(" ", "-").lower()
        interps = sorted(sop.interpretations, key=lambda i: (_WIDTH[i], i))
        max_ch = min(sop.max_channels or 24, 24)
        max_groups = min(sop.max_groups or 4, 3)
        # General ECG walks every channel count 1..24; the others a spread up to their limit.
        counts = (list(range(1, max_ch + 1)) if sop.uid == GENERAL_ECG
                  else sorted({c for c in _COUNTS if c <= max_ch} | {max_ch}))
        cases = max(len(syntaxes) * len(interps), len(counts))
        for i in range(cases):
            ts = syntaxes[i % len(syntaxes)]
            interp = interps[(i // len(syntaxes)) % len(interps)]
            n_ch = counts[i % len(counts)]
            fs = _RATES[i % len(_RATES)]
            groups = 1 + (i // 3) % max_groups if i % 3 == 0 else 1
            width = _WIDTH[interp]
            bits_stored = None
            if i % 3 == 1 and interp not in ("MB", "AB"):
                bits_stored = width - 4 if width > 8 else 6
            padding = None
            if i % 4 == 2 and bits_stored is None:
                padding = _padding_for(interp)
            seed += 1
            ecg = synthetic_ecg(
                sop_class_uid=sop.uid, n_channels=n_ch, fs=fs, duration_s=0.6,
                interpretation=interp, bits_stored=bits_stored, padding=padding,
                groups=groups, seed=seed, transfer_syntax_uid=ts,
                units="uV" if i % 5 else "mV",
            )
            name = (f"{short}-{ts_names[ts]}-{interp}{width}-{n_ch}ch-{fs:g}Hz-{groups}g"
                    + (f"-bs{bits_stored}" if bits_stored else "")
                    + ("-pad" if padding is not None else ""))
            yield name, ecg, ts


def _padding_for(interpretation: str) -> int:
    """The conventional padding value of an interpretation: the most negative value for
    signed samples, the largest for unsigned ones, 0xFF for companded codes."""
    dtype = SAMPLE_DTYPES[(_WIDTH[interpretation], interpretation)]
    if interpretation in ("MB", "AB"):
        return 0xFF
    info = np.iinfo(dtype)
    return int(info.min) if dtype.kind == "i" else int(info.max)
