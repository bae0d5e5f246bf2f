"""Philips Sierra XML (``<restingecgdata>``, document versions 1.03, 1.04, 1.04.01, 1.04.02).

``parsedwaveforms`` holds base64 samples, XLI-compressed (`waveform.formats.xli`)
or plain little-endian int16 lead after lead. The cart stores III, aVR, aVL and
aVF as residuals from the values derived from I and II; they are restored as
Philips defines them (the open reader sierra-ecg-tools does the same), in exact
integers: III = II - I - r3, aVR = -r4 - floor((I + II) / 2), aVL = floor((I - III)
/ 2) - r5, aVF = floor((II + III) / 2) - r6. XLI data may carry more chunks than
leads (16 for 12 leads in the files we have); the leads named are the first ones.
``repbeats`` (base64 int16, one per lead) become the MEDIAN BEAT group.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np

from waveform.dicom.codes import lead_from_text
from waveform.formats.base import Measurement, Reader, Reading, int16_group, measurement
from waveform.formats.xli import decode_xli
from waveform.formats.xmltree import Node, date, parse, root_name, time
from waveform.model import Channel, WaveformGroup

__all__ = ["READER"]

FORMAT = "philips-sierra-xml"

_VERSIONS = frozenset({"1.03", "1.04", "1.04.01", "1.04.02"})
_TYPES = frozenset({"SierraECG", "PhilipsECG"})

# Lead names in channel order when ``leadlabels`` is absent (1.03, acquisitiontype STD-12).
_STD12 = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")

# Global measurements: element -> (concept, UCUM units). 1.04 writes them under
# globalmeasurements, 1.03 under interpretationmeasurements with "mean" names.
_MEASUREMENTS: dict[str, tuple[str | None, str]] = {
    "heartrate": ("heart_rate", "/min"),
    "rrint": ("rr", "ms"),
    "atrialrate": (None, "/min"),
    "pdur": (None, "ms"),
    "print": ("pr", "ms"),
    "meanprint": ("pr", "ms"),
    "qrsdur": ("qrs", "ms"),
    "meanqrsdur": ("qrs", "ms"),
    "qtint": ("qt", "ms"),
    "meanqtint": ("qt", "ms"),
    "qtcb": ("qtc", "ms"),
    "meanqtc": ("qtc", "ms"),
    "qtcf": (None, "ms"),
    "pfrontaxis": ("p_axis", "deg"),
    "qrsfrontaxis": ("qrs_axis", "deg"),
    "tfrontaxis": ("t_axis", "deg"),
    "i40frontaxis": (None, "deg"),
    "t40frontaxis": (None, "deg"),
    "stfrontaxis": (None, "deg"),
    "phorizaxis": (None, "deg"),
    "qrshorizaxis": (None, "deg"),
    "thorizaxis": (None, "deg"),
}
_SEX = {"MALE": "M", "FEMALE": "F"}


def recognises(data: bytes) -> bool:
    return root_name(data) == "restingecgdata"


def _restore_limb_leads(rows: dict[str, np.ndarray]) -> None:
    one, two = rows["I"], rows["II"]
    rows["III"] = two - one - rows["III"]
    three = rows["III"]
    rows["aVR"] = -rows["aVR"] - np.floor_divide(one + two, 2)
    rows["aVL"] = np.floor_divide(one - three, 2) - rows["aVL"]
    rows["aVF"] = np.floor_divide(two + three, 2) - rows["aVF"]


def _labels(waveforms: Node, signal: Node) -> list[str]:
    text = waveforms.attr("leadlabels", "")
    if text:
        count = waveforms.integer("@numberofleads")
        labels = text.split()
        if count != len(labels):
            raise waveforms.fail(f"numberofleads says {count}, leadlabels names {len(labels)}",
                                 "@numberofleads")
        return labels
    count = signal.integer("numberchannelsallocated")
    kind = signal.text("acquisitiontype")
    if kind not in ("STD-12", "10-WIRE") or count > len(_STD12):
        raise signal.fail(f"acquisitiontype {kind!r} with {count} channels names no leads",
                          "/acquisitiontype")
    return list(_STD12[:count])


def _rhythm(root: Node) -> WaveformGroup:
    signal = root.need("dataacquisition/signalcharacteristics")
    waveforms = root.need("waveforms/parsedwaveforms")
    rate = waveforms.attr_number("samplespersecond") or signal.integer("samplingrate")
    resolution = waveforms.attr_number("resolution") or signal.number("signalresolution") or 0
    if not 0 < rate <= 1e6:
        raise waveforms.fail(f"sampling rate {rate!r} is not a rate", "@samplespersecond")
    if not 0 < resolution < 1e6:
        raise signal.fail(f"resolution {resolution!r} µV is not a positive scale",
                          "/signalresolution")
    duration = waveforms.integer("@durationperchannel")
    count = duration * rate / 1000.0
    if not count.is_integer() or not 0 < count <= 10_000_000:
        raise waveforms.fail(f"{duration} ms at {rate} Hz is not a whole, sane sample count",
                             "@durationperchannel")
    labels = _labels(waveforms, signal)
    if waveforms.attr("dataencoding", "Base64") != "Base64":
        raise waveforms.fail(f"encoding {waveforms.attr('dataencoding')!r}; only Base64 is "
                             "defined", "@dataencoding")
    data = waveforms.base64()
    method = waveforms.attr("compressmethod", "") or waveforms.attr("compression", "")
    if method == "XLI":
        leads = decode_xli(data, FORMAT, waveforms.path)
    elif method in ("", "Uncompressed", "None"):
        per = int(count)
        if len(data) < 2 * per * len(labels):
            raise waveforms.fail(f"{len(data)} bytes hold fewer than {len(labels)} leads of "
                                 f"{per} samples", "")
        all_samples = np.frombuffer(data[:2 * per * len(labels)], dtype="<i2").astype(np.int64)
        leads = [all_samples[i * per:(i + 1) * per] for i in range(len(labels))]
    else:
        raise waveforms.fail(f"compression {method!r}; XLI or none is defined", "@compression")
    if len(leads) < len(labels):
        raise waveforms.fail(f"{len(labels)} leads named, the data holds {len(leads)}", "")
    names = []
    for label in labels:
        lead = lead_from_text(label)
        if lead is None:
            raise waveforms.fail(f"lead {label!r} is not a standard lead", "@leadlabels")
        names.append(lead)
    rows = dict(zip(names, leads, strict=False))
    if len(rows) != len(names):
        raise waveforms.fail(f"a lead is named twice: {names}", "@leadlabels")
    if {"I", "II", "III", "aVR", "aVL", "aVF"} <= rows.keys():
        if len({len(rows[n]) for n in ("I", "II", "III", "aVR", "aVL", "aVF")}) != 1:
            raise waveforms.fail("limb leads of different lengths", "")
        _restore_limb_leads(rows)
    channels = [Channel(label=n, lead=n, units="uV", sensitivity=resolution) for n in names]
    return int16_group(FORMAT, waveforms.path, "RHYTHM", rate, channels,
                       [rows[n] for n in names])


def _median(root: Node) -> WaveformGroup | None:
    beats = root.find("waveforms/repbeats")
    if beats is None:
        return None
    rate = beats.attr_number("samplespersec", 0) or 0
    resolution = beats.attr_number("resolution", 0) or 0
    if rate <= 0 or resolution <= 0:
        return None  # 1.03 may omit both: such beats cannot be scaled
    if beats.attr("dataencoding", "Base64") != "Base64":
        raise beats.fail(f"encoding {beats.attr('dataencoding')!r}", "@dataencoding")
    channels, rows = [], []
    for beat in beats.all("repbeat"):
        label = beat.attr("leadname")
        lead = lead_from_text(label)
        if lead is None:
            raise beat.fail(f"lead {label!r} is not a standard lead", "@leadname")
        holder = beat.find("waveform") or beat
        data = holder.base64()
        if len(data) % 2:
            raise holder.fail(f"{len(data)} bytes: not whole 16-bit samples")
        rows.append(np.frombuffer(data, dtype="<i2").astype(np.int64))
        channels.append(Channel(label=lead, lead=lead, units="uV", sensitivity=resolution))
    if not rows:
        return None
    return int16_group(FORMAT, beats.path, "MEDIAN BEAT", rate, channels, rows,
                       originality="DERIVED")


def _measurements(interpretation: Node | None) -> tuple[Measurement, ...]:
    if interpretation is None:
        return ()
    holder = (interpretation.find("globalmeasurements")
              or interpretation.find("interpretationmeasurements"))
    if holder is None:
        return ()
    out = []
    for child in holder.el:
        if child.tag in _MEASUREMENTS:
            text = (child.text or "").strip()
            try:
                value = float(text)
            except ValueError:
                continue  # the cart writes "Failed" where it could not measure
            if not math.isfinite(value):
                continue
            concept, units = _MEASUREMENTS[child.tag]
            out.append(measurement(child.tag, value, units, concept))
    return tuple(out)


def _statements(interpretation: Node | None) -> tuple[str, ...]:
    if interpretation is None:
        return ()
    out = []
    for s in interpretation.all("statement"):
        left, right = s.text("leftstatement"), s.text("rightstatement")
        if left or right:
            out.append(f"{left} ({right})" if left and right else left or right)
    severity = interpretation.text("severity")
    if severity:
        out.append(severity)
    return tuple(out)


def read(data: bytes) -> Reading:
    root = Node(FORMAT, parse(FORMAT, data))
    if root.el.tag != "restingecgdata":
        raise root.fail("the root element is not restingecgdata")
    kind = root.text("documentinfo/documenttype")
    version = root.text("documentinfo/documentversion")
    if kind not in _TYPES or version not in _VERSIONS:
        raise root.fail(f"{kind!r} version {version!r}; we read "
                        f"{'/'.join(sorted(_TYPES))} {', '.join(sorted(_VERSIONS))}",
                        "/documentinfo")
    groups = [_rhythm(root)]
    median = _median(root)
    if median is not None:
        groups.append(median)

    acquisition = root.need("dataacquisition")
    day = date(FORMAT, "dataacquisition@date", acquisition.attr("date", ""), ("%Y-%m-%d",))
    clock = time(FORMAT, "dataacquisition@time", acquisition.attr("time", ""), ("%H:%M:%S",))
    when = dt.datetime.combine(day, clock or dt.time()) if day else None
    machine = acquisition.find("machine")
    detail = machine.attr("detaildescription", "").split(":") if machine is not None else []
    patient = root.find("patient/generalpatientdata")
    last = patient.text("name/lastname") if patient is not None else ""
    first = patient.text("name/firstname") if patient is not None else ""
    interpretation = root.find("interpretations/interpretation")
    return Reading(
        groups=tuple(groups),
        acquisition_datetime=when,
        patient_id=patient.text("patientid") if patient is not None else "",
        patient_name="^".join((last, first)) if first else last,
        birth_date=date(FORMAT, "patient/generalpatientdata/age/dateofbirth",
                        patient.text("age/dateofbirth"), ("%Y-%m-%d",))
        if patient is not None else None,
        sex=_SEX.get(patient.text("sex").upper(), "") if patient is not None else "",
        manufacturer=detail[0] if detail and detail[0] else "Philips",
        model=machine.text() if machine is not None else "",
        software_versions=detail[-1] if len(detail) > 1 else "",
        device_serial_number=machine.attr("machineid", "") if machine is not None else "",
        institution=root.text("dataacquisition/acquirer/institutionname"),
        measurements=_measurements(interpretation),
        statements=_statements(interpretation),
    )


READER = Reader(FORMAT, "Philips Sierra XML", recognises, read, "dataacquisition@date")
