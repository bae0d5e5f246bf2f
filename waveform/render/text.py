"""The words on the printout: header blocks and footer, from the ECG and its Summary.

Pure strings. A measurement the analysis could not make is printed as an em
dash, never left out, so that a reader sees it was looked for.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from waveform.model import Ecg, Measured, Summary, WaveformGroup

__all__ = ["ABSENT", "QTC_FORMULAS", "footer", "header_blocks", "person_name"]

#: How an absent measurement reads.
ABSENT = "\u2014"
#: QTc formula name -> the Summary field that holds it.
QTC_FORMULAS: dict[str, str] = {
    "Bazett": "qtc_bazett_ms",
    "Fridericia": "qtc_fridericia_ms",
    "Framingham": "qtc_framingham_ms",
    "Hodges": "qtc_hodges_ms",
}
_SEX = {"F": "female", "M": "male", "O": "other"}
_MAX_CHARS = 42


def _clip(s: str, n: int = _MAX_CHARS) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 1] + "\u2026"


def _age(birth: dt.date | None, when: dt.datetime | None) -> str:
    if birth is None or when is None:
        return "age unknown"
    d = when.date()
    years = d.year - birth.year - ((d.month, d.day) < (birth.month, birth.day))
    return f"{years} years" if years >= 0 else "age unknown"


def _value(m: Measured | None, unit: str, nd: int = 0) -> str:
    if m is None or m.value is None:
        return ABSENT
    return f"{m.value:.{nd}f}{unit}"


def person_name(pn: str) -> str:
    """A DICOM person name (PS3.5 6.2: family^given^middle^prefix^suffix, its first
    component group) as printed: "Family, Given Middle"."""
    family, given, middle, prefix, suffix = (pn.split("=")[0].split("^") + [""] * 5)[:5]
    first = " ".join(p.strip() for p in (prefix, given, middle) if p.strip())
    name = ", ".join(p for p in (family.strip(), first) if p)
    return f"{name} {suffix.strip()}".strip()


def _patient(ecg: Ecg, organisation: str | None) -> str:
    sex = _SEX.get(ecg.sex.strip().upper(), "sex unknown")
    when = ecg.acquisition_datetime
    acquired = when.strftime("%Y-%m-%d %H:%M:%S") if when else "acquisition time unknown"
    device = " ".join(p for p in (ecg.manufacturer.strip(), ecg.model.strip()) if p)
    return "\n".join([
        f"{_clip(person_name(ecg.patient_name), 30) or 'Name ' + ABSENT}  "
        f"ID {_clip(ecg.patient_id, 20) or ABSENT}",
        f"{sex}, {_age(ecg.birth_date, when)}",
        f"Acquired {acquired}",
        f"Organisation {_clip(organisation or ecg.institution) or ABSENT}",
        f"Device {_clip(device) or ABSENT}",
    ])


def header_blocks(ecg: Ecg, summary: Summary | None, qtc: str = "Bazett",
                  organisation: str | None = None) -> tuple[str, ...]:
    """Three blocks of lines: patient and context, intervals, QTc and axes.
    ``organisation`` is the one that archived the ECG, as the archive knows it
    (the object's Institution Name is what the cart was told, and may be absent)."""
    s = summary
    intervals = "\n".join([
        f"Rate {_value(s.heart_rate_bpm if s else None, ' bpm')}",
        f"PR {_value(s.pr_ms if s else None, ' ms')}",
        f"QRS {_value(s.qrs_ms if s else None, ' ms')}",
        f"QT {_value(s.qt_ms if s else None, ' ms')}",
    ])
    qtc_m = getattr(s, QTC_FORMULAS[qtc]) if s else None
    axes = "/".join(
        _value(getattr(s, name) if s else None, "\u00b0")
        for name in ("p_axis_deg", "qrs_axis_deg", "t_axis_deg")
    )
    others = "\n".join([
        f"QTc {_value(qtc_m, ' ms')} ({qtc})",
        f"Axes P/QRS/T {axes}",
        "" if s else "Not analysed",
    ]).rstrip()
    return _patient(ecg, organisation), intervals, others


def _filters(group: WaveformGroup) -> str:
    chans = group.channels
    if not chans:
        return "filter not stated"
    lows = {c.filter_low_hz for c in chans}
    highs = {c.filter_high_hz for c in chans}
    notches = {c.notch_hz for c in chans}
    if len(lows) > 1 or len(highs) > 1 or len(notches) > 1:
        return "filters differ between channels"
    low, high, notch = lows.pop(), highs.pop(), notches.pop()
    if low is None and high is None:
        band = "filter not stated"
    else:
        lo = ABSENT if low is None else f"{low:g}"
        hi = ABSENT if high is None else f"{high:g}"
        band = f"filter {lo}\u2013{hi} Hz"
    if notch is None:
        return band
    return f"{band}, notch {f'{notch:g} Hz' if notch > 0 else 'off'}"


def footer(
    group: WaveformGroup,
    summary: Summary | None,
    speed_mm_s: float,
    gain_mm_mv: float,
    derived: Sequence[str] = (),
) -> str:
    """One line: speed, gain, filters, the recording, what was derived, analysis version."""
    parts = [
        f"{speed_mm_s:g} mm/s",
        f"{gain_mm_mv:g} mm/mV",
        _filters(group),
        f"{group.sampling_frequency:g} Hz, {group.duration_s:.1f} s",
    ]
    if derived:
        parts.append(f"{', '.join(derived)} derived from I and II")
    parts.append(f"analysis {summary.analysis_version}" if summary else "analysis: none")
    return "    ".join(parts)
