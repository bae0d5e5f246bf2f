"""GE MUSE XML (``<RestingECG>``): rhythm and median waveforms, 12SL measurements and statements.

Each ``Waveform`` (``WaveformType`` Rhythm or Median) holds one ``LeadData`` per
stored lead: little-endian 16-bit samples in base64 (``WaveFormData``), their
count (``LeadSampleCountTotal``, ``LeadByteCountTotal``), the CRC-32 of the
decoded bytes (``LeadDataCRC32``) and the scale (``LeadAmplitudeUnitsPerBit``
µV). Carts store I, II and V1-V6; the other four limb leads are derived exactly
(Einthoven and Goldberger): III = II - I at the stored sensitivity, and the
augmented leads, which are half-integers of the stored unit, as integers at half
the sensitivity (aVR = -(I + II), aVL = 2I - II, aVF = 2II - I, each x s/2 µV), so
that no sample is rounded.
"""

from __future__ import annotations

import datetime as dt
import zlib

import numpy as np

from waveform.dicom.codes import lead_from_text
from waveform.formats.base import Reader, Reading, int16_group, measurement
from waveform.formats.xmltree import Node, date, parse, root_name, time
from waveform.model import LEADS, Channel, WaveformGroup

__all__ = ["READER"]

FORMAT = "ge-muse-xml"

# (element of RestingECGMeasurements, concept in base.CONCEPTS or None, UCUM units)
_MEASUREMENTS: tuple[tuple[str, str | None, str], ...] = (
    ("VentricularRate", "heart_rate", "/min"),
    ("AtrialRate", None, "/min"),
    ("PRInterval", "pr", "ms"),
    ("QRSDuration", "qrs", "ms"),
    ("QTInterval", "qt", "ms"),
    ("QTCorrected", "qtc", "ms"),
    ("QTcFrederica", None, "ms"),
    ("PAxis", "p_axis", "deg"),
    ("RAxis", "qrs_axis", "deg"),
    ("TAxis", "t_axis", "deg"),
)

# WaveformType -> (multiplex group label, originality), in the order groups are written.
_GROUPS: dict[str, tuple[str, str]] = {
    "RHYTHM": ("RHYTHM", "ORIGINAL"),
    "MEDIAN": ("MEDIAN BEAT", "DERIVED"),
}

_UNITS: dict[str, str] = {"MICROVOLTS": "uV", "MILLIVOLTS": "mV"}
_SEX: dict[str, str] = {"MALE": "M", "FEMALE": "F"}
_DATES = ("%m-%d-%Y", "%Y-%m-%d", "%m/%d/%Y")
_TIMES = ("%H:%M:%S", "%H:%M")

# Limb leads derived from I and II: name -> (coefficient of I, of II, divisor of the sensitivity).
_DERIVED: dict[str, tuple[int, int, int]] = {
    "III": (-1, 1, 1), "aVR": (-1, -1, 2), "aVL": (2, -1, 2), "aVF": (-1, 2, 2),
}


def recognises(data: bytes) -> bool:
    return root_name(data) == "RestingECG"


def _lead(node: Node) -> tuple[str, np.ndarray, Channel]:
    lead_id = node.text("LeadID")
    lead = lead_from_text(lead_id)
    if lead is None:
        raise node.fail(f"lead {lead_id!r} is not a standard lead", "/LeadID")
    if (size := node.integer("LeadSampleSize")) != 2:
        raise node.fail(f"{size} bytes a sample; MUSE writes 2", "/LeadSampleSize")
    count = node.integer("LeadSampleCountTotal")
    data = node.base64("WaveFormData")
    if count < 0 or len(data) != 2 * count:
        raise node.fail(f"WaveFormData holds {len(data)} bytes, LeadSampleCountTotal says "
                        f"{count} samples ({2 * count} bytes)", "/WaveFormData")
    stated = node.number("LeadByteCountTotal", int)
    if stated is not None and stated != len(data):
        raise node.fail(f"says {stated} bytes, WaveFormData holds {len(data)}",
                        "/LeadByteCountTotal")
    crc = node.number("LeadDataCRC32", int)
    if crc is not None and crc != zlib.crc32(data):
        raise node.fail(f"CRC-32 {crc} stated, {zlib.crc32(data)} computed: the samples "
                        "are damaged", "/LeadDataCRC32")
    scale = node.number("LeadAmplitudeUnitsPerBit")
    units_text = node.text("LeadAmplitudeUnits", "MICROVOLTS").upper()
    units = _UNITS.get(units_text)
    if units is None or scale is None or not 0 < scale < 1e6:
        raise node.fail(f"amplitude {scale!r} {units_text!r} a bit; expected a positive "
                        f"scale in {', '.join(_UNITS)}", "/LeadAmplitudeUnitsPerBit")
    samples = np.frombuffer(data, dtype="<i2").astype(np.int64)
    return lead, samples, Channel(label=lead, lead=lead, units=units, sensitivity=scale)


def _group(waveform: Node, kind: str) -> WaveformGroup:
    label, originality = _GROUPS[kind]
    rate = waveform.number("SampleBase")
    exponent = int(waveform.number("SampleExponent", int) or 0)
    if rate is None or not -6 <= exponent <= 6 or not 0 < rate * 10.0**exponent <= 1e6:
        raise waveform.fail(f"sampling rate {rate!r} x 10^{exponent} is not a rate",
                            "/SampleBase")
    leads = [_lead(n) for n in waveform.all("LeadData")]
    stated = waveform.number("NumberofLeads", int)
    if stated is not None and stated != len(leads):
        raise waveform.fail(f"says {stated} leads, {len(leads)} LeadData are present",
                            "/NumberofLeads")
    names = [name for name, _, _ in leads]
    if len(set(names)) != len(names):
        raise waveform.fail(f"a lead is stored twice: {names}", "/LeadData")
    rows = {name: samples for name, samples, _ in leads}
    channels = {name: channel for name, _, channel in leads}
    if "I" in rows and "II" in rows and len(rows["I"]) == len(rows["II"]):
        one, two = channels["I"], channels["II"]
        if one.sensitivity == two.sensitivity and one.units == two.units:
            for name, (a, b, div) in _DERIVED.items():
                if name not in rows:
                    rows[name] = a * rows["I"] + b * rows["II"]
                    channels[name] = Channel(label=name, lead=name, units=one.units,
                                             sensitivity=one.sensitivity / div)
    order = sorted(rows, key=_lead_order)
    return int16_group(FORMAT, f"{waveform.path} ({kind})", label,
                       rate * 10.0**exponent, [channels[n] for n in order],
                       [rows[n] for n in order], originality=originality)


def _lead_order(name: str) -> int:
    return LEADS.index(name)


def read(data: bytes) -> Reading:
    root = Node(FORMAT, parse(FORMAT, data))
    if root.el.tag != "RestingECG":
        raise root.fail("the root element is not RestingECG")
    groups: dict[str, WaveformGroup] = {}
    for waveform in root.all("Waveform"):
        kind = waveform.text("WaveformType").upper()
        if kind not in _GROUPS:
            raise waveform.fail(f"{kind!r} is not one of {', '.join(_GROUPS)}",
                                "/WaveformType")
        if kind in groups:
            raise waveform.fail(f"a second {kind} waveform", "/WaveformType")
        groups[kind] = _group(waveform, kind)
    if "RHYTHM" not in groups:
        raise root.fail("no Rhythm waveform", "/Waveform")

    patient = root.find("PatientDemographics")
    test = root.find("TestDemographics")
    when = None
    if test is not None:
        day = date(FORMAT, "TestDemographics/AcquisitionDate", test.text("AcquisitionDate"),
                   _DATES)
        clock = time(FORMAT, "TestDemographics/AcquisitionTime", test.text("AcquisitionTime"),
                     _TIMES)
        if day is not None:
            when = dt.datetime.combine(day, clock or dt.time())
    measurements = []
    found = root.find("RestingECGMeasurements")
    for name, concept, units in _MEASUREMENTS:
        value = found.number(name) if found is not None else None
        if value is not None:
            measurements.append(measurement(name, value, units, concept))
    statements = tuple(
        text for s in root.all("Diagnosis/DiagnosisStatement") if (text := s.text("StmtText"))
    )
    last = patient.text("PatientLastName") if patient is not None else ""
    first = patient.text("PatientFirstName") if patient is not None else ""
    return Reading(
        groups=tuple(groups[k] for k in _GROUPS if k in groups),
        acquisition_datetime=when,
        patient_id=patient.text("PatientID") if patient is not None else "",
        patient_name="^".join(p for p in (last, first) if p) if first else last,
        birth_date=date(FORMAT, "PatientDemographics/DateofBirth",
                        patient.text("DateofBirth"), _DATES) if patient is not None else None,
        sex=_SEX.get(patient.text("Gender").upper(), "") if patient is not None else "",
        model=test.text("AcquisitionDevice") if test is not None else "",
        software_versions=test.text("AcquisitionSoftwareVersion") if test is not None else "",
        institution=test.text("SiteName") if test is not None else "",
        measurements=tuple(measurements),
        statements=statements,
    )


READER = Reader(FORMAT, "GE MUSE XML", recognises, read, "TestDemographics/AcquisitionDate")
