"""HL7 aECG (``<AnnotatedECG>``, HL7 v3 annotated ECG, the FDA's submission format).

A ``series`` (RHYTHM) and its ``derivation/derivedSeries`` (REPRESENTATIVE_BEAT,
the MEDIAN BEAT group here) each hold a ``sequenceSet``: one time sequence
(``TIME_ABSOLUTE`` GLIST_TS or ``TIME_RELATIVE`` GLIST_PQ: its ``increment`` is
the sampling interval) and one ``SLIST_PQ`` sequence per lead: integer
``digits`` with ``scale`` and ``origin``, so value = origin + scale x digit. The
digits are kept as they are (sensitivity = scale, baseline = origin).

Measurements are the annotations with a physical quantity (``PQ``) value that
describe the whole ECG: those not tied to a region (no ``support``), first of
each code. Statements are the annotations with a text (``ST``) value and the
rhythm (``MDC_ECG_RHY``) coded value.
"""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET

import numpy as np

from waveform.dicom.codes import lead_from_text
from waveform.errors import InvalidFile
from waveform.formats.base import Measurement, Reader, Reading, file_uid, int16_group, measurement
from waveform.formats.xmltree import Node, parse, root_name
from waveform.model import Channel, WaveformGroup

__all__ = ["READER"]

FORMAT = "hl7-aecg"

# MDC measurement codes -> (concept in base.CONCEPTS or None).
_CONCEPTS: dict[str, str | None] = {
    "MDC_ECG_HEART_RATE": "heart_rate",
    "MDC_ECG_TIME_PD_RR": "rr",
    "MDC_ECG_TIME_PD_PP": "pp",
    "MDC_ECG_TIME_PD_PR": "pr",
    "MDC_ECG_TIME_PD_QRS": "qrs",
    "MDC_ECG_TIME_PD_QT": "qt",
    "MDC_ECG_TIME_PD_QTc": "qtc",
    "MDC_ECG_ANGLE_P_FRONT": "p_axis",
    "MDC_ECG_ANGLE_QRS_FRONT": "qrs_axis",
    "MDC_ECG_ANGLE_T_FRONT": "t_axis",
}
# HL7 / UCUM unit spellings -> the UCUM code written in DICOM.
_UNITS: dict[str, str] = {"uV": "uV", "mV": "mV", "V": "V", "nV": "nV", "ms": "ms", "s": "s",
                          "deg": "deg", "bpm": "/min", "/min": "/min", "{beats}/min": "/min",
                          "Hz": "Hz",
                          "bmp": "/min"}  # JHU's example writes bpm as "bmp"
# Time units of an increment, in seconds.
_SECONDS: dict[str, float] = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
_SEX: dict[str, str] = {"M": "M", "F": "F"}
_SERIES: dict[str, tuple[str, str]] = {"series": ("RHYTHM", "ORIGINAL"),
                                       "derivedSeries": ("MEDIAN BEAT", "DERIVED")}
_TS = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d+)?([+-]\d{4})?$")


def recognises(data: bytes) -> bool:
    return root_name(data) == "AnnotatedECG"


def _timestamp(field: str, text: str) -> dt.datetime | None:
    text = text.strip()
    if not text:
        return None
    m = _TS.match(text)
    if m is None:
        raise InvalidFile(FORMAT, field, f"{text[:40]!r} is not an HL7 timestamp (YYYYMMDDHHMMSS)")
    year, month, day, hour, minute, second, frac, zone = m.groups()
    try:
        when = dt.datetime(int(year), int(month or 1), int(day or 1), int(hour or 0),
                           int(minute or 0), int(second or 0),
                           round(float(frac) * 1e6) if frac else 0)
    except ValueError as e:
        raise InvalidFile(FORMAT, field, f"{text!r}: {e}") from None
    if zone:
        sign = 1 if zone[0] == "+" else -1
        when = when.replace(tzinfo=dt.timezone(
            sign * dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[3:5]))))
    return when


def _quantity(node: Node, name: str) -> tuple[float, str]:
    el = node.need(name)
    text = el.attr("value")
    try:
        value = float(text)
    except ValueError:
        raise el.fail(f"{text[:40]!r} is not a number", "@value") from None
    if not np.isfinite(value):
        raise el.fail(f"{text!r} is not finite", "@value")
    return value, el.attr("unit", "1")


def _group(series: Node, kind: str) -> WaveformGroup | None:
    label, originality = _SERIES[kind]
    sets = series.all("component/sequenceSet")
    if not sets:
        return None
    rate: float | None = None
    channels: list[Channel] = []
    rows: list[np.ndarray] = []
    for seq in sets[0].all("component/sequence"):
        code = seq.need("code").attr("code")
        value = seq.need("value")
        if code in ("TIME_ABSOLUTE", "TIME_RELATIVE"):
            step, unit = _quantity(value, "increment")
            seconds = _SECONDS.get(unit)
            if seconds is None or step <= 0:
                raise value.fail(f"increment {step} {unit!r} is not a sampling interval",
                                 "/increment")
            rate = round(1.0 / (step * seconds), 6)
            continue
        if not code.startswith("MDC_ECG_LEAD_"):
            continue
        name = code.removeprefix("MDC_ECG_LEAD_")
        lead = lead_from_text(name)
        if lead is None:
            raise seq.fail(f"lead {code!r} is not one of the twelve standard leads", "/code")
        origin, origin_unit = _quantity(value, "origin")
        scale, scale_unit = _quantity(value, "scale")
        units = _UNITS.get(scale_unit)
        if units not in ("uV", "mV", "V", "nV") or origin_unit != scale_unit or scale <= 0:
            raise value.fail(f"scale {scale} {scale_unit!r}, origin {origin} {origin_unit!r}: "
                             "expected a positive voltage scale and an origin in its unit",
                             "/scale")
        digits = value.text("digits").split()
        try:
            row = np.array(digits, dtype=np.int64)
        except (ValueError, OverflowError):
            bad = next((d for d in digits if not re.fullmatch(r"[+-]?\d+", d)), digits[0])
            raise value.fail(f"digit {bad[:20]!r} is not an integer", "/digits") from None
        rows.append(row)
        channels.append(Channel(label=lead, lead=lead, units=units, sensitivity=scale,
                                baseline=origin))
    if rate is None:
        raise sets[0].fail("no TIME_ABSOLUTE or TIME_RELATIVE sequence gives the sampling "
                           "interval", "/component/sequence")
    return int16_group(FORMAT, sets[0].path, label, rate, channels, rows,
                       originality=originality)


def _walk(el: ET.Element, supported: bool,
          out: list[tuple[ET.Element, bool]]) -> None:
    for child in el:
        if child.tag == "annotation":
            here = supported or child.find("support") is not None
            out.append((child, here))
            _walk(child, here, out)
        else:
            _walk(child, supported, out)


def _annotations(series: Node) -> tuple[tuple[Measurement, ...], tuple[str, ...]]:
    found: list[tuple[ET.Element, bool]] = []
    for holder in series.el.findall("subjectOf/annotationSet"):
        _walk(holder, False, found)
    measures: dict[str, Measurement] = {}
    statements: list[str] = []
    for el, supported in found:
        code_el, value = el.find("code"), el.find("value")
        if code_el is None or value is None:
            continue
        code = code_el.get("code", "")
        kind = value.get("type", "")
        if kind == "ST" and (text := "".join(value.itertext()).strip()):
            statements.append(text)
        elif kind == "CE" and code == "MDC_ECG_RHY":
            statements.append(value.get("displayName") or value.get("code") or "")
        elif kind == "PQ" and not supported and code and code not in measures:
            try:
                number = float(value.get("value", ""))
            except ValueError:
                continue  # a measurement the cart could not make
            if not np.isfinite(number):
                continue
            units = _UNITS.get(value.get("unit", ""), value.get("unit", "") or "1")
            measures[code] = measurement(code, number, units, _CONCEPTS.get(code))
    return tuple(measures.values()), tuple(s for s in statements if s)


def read(data: bytes) -> Reading:
    root = Node(FORMAT, parse(FORMAT, data))
    if root.el.tag != "AnnotatedECG":
        raise root.fail("the root element is not AnnotatedECG")
    series = root.need("component/series")
    groups = [g for g in (_group(series, "series"),) if g is not None]
    if not groups:
        raise series.fail("no sequenceSet holds the rhythm", "/component/sequenceSet")
    derived = series.find("derivation/derivedSeries")
    if derived is not None and (median := _group(derived, "derivedSeries")) is not None:
        groups.append(median)

    when = None
    for path in ("effectiveTime/low", "effectiveTime/center"):
        for holder in (series, root):
            el = holder.find(path)
            if when is None and el is not None:
                when = _timestamp(f"{el.path}@value", el.attr("value", ""))
    subject = root.find("componentOf/timepointEvent/componentOf/subjectAssignment/subject/"
                        "trialSubject")
    person = subject.find("subjectDemographicPerson") if subject is not None else None
    ident = subject.find("id") if subject is not None else None
    sex_el = person.find("administrativeGenderCode") if person is not None else None
    birth_el = person.find("birthTime") if person is not None else None
    birth = _timestamp("subjectDemographicPerson/birthTime@value",
                       birth_el.attr("value", "")) if birth_el is not None else None
    device = series.find("author/seriesAuthor")
    root_id = root.find("id")
    measurements, statements = _annotations(series)
    return Reading(
        groups=tuple(groups),
        acquisition_datetime=when,
        patient_id=ident.attr("extension", "") if ident is not None else "",
        patient_name=" ".join(person.text("name").split()) if person is not None else "",
        birth_date=birth.date() if birth else None,
        sex=_SEX.get(sex_el.attr("code", "")) or "" if sex_el is not None else "",
        manufacturer=device.text("manufacturerOrganization/name") if device else "",
        model=device.text("manufacturedSeriesDevice/manufacturerModelName") if device else "",
        software_versions=device.text("manufacturedSeriesDevice/softwareName") if device else "",
        uid=file_uid(root_id.attr("root", ""), root_id.attr("extension", ""))
        if root_id is not None else "",
        measurements=measurements,
        statements=statements,
    )


READER = Reader(FORMAT, "HL7 aECG", recognises, read, "effectiveTime/low")
