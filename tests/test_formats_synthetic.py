"""The cart formats written here from a synthetic ECG, then read back exactly.

These need no third-party files: each builder writes a file the way the cart
format defines it (SCP-ECG with CRCs, Huffman codes, differences and reference
beat subtraction; MUSE XML with base64 and CRC-32; Sierra XML with its limb-lead
residuals; aECG digits), and the reader must give back the very integers.
The builders are also the mutation tests' inputs (test_formats_errors.py).
"""

from __future__ import annotations

import base64
import datetime as dt
import struct
import uuid
import zlib

import numpy as np
import pytest

from waveform.dicom.decode import decode
from waveform.dicom.synthetic import synthetic_ecg
from waveform.errors import InvalidFile
from waveform.formats import convert, recognise
from waveform.formats.huffman import DEFAULT_TABLE, Code
from waveform.formats.scp import crc_ccitt
from waveform.model import LEADS

WHEN = dt.datetime(2024, 3, 5, 14, 7, 9)
AECG_UUID = "8a4c1b3e-2f6d-4e8a-9b1c-0d2e3f405162"


def _raw12() -> np.ndarray:
    """(12, 5000) int64: a synthetic 12-lead rhythm at 500 Hz, leads in `LEADS` order."""
    g = synthetic_ecg(n_channels=12, fs=500.0, duration_s=10.0, seed=3).groups[0]
    rows = [g.raw[g.lead_index(lead)] for lead in LEADS]
    return np.vstack(rows).astype(np.int64)


RAW = _raw12()
# Limb leads consistent with I and II (as a cart records them): III = II - I.
RAW[2] = RAW[1] - RAW[0]


# ---------------------------------------------------------------------------
# SCP-ECG


def scp_section(number: int, body: bytes) -> bytes:
    """One section: CRC, identifier, length, version 2.0 and reserved bytes, body."""
    rest = struct.pack("<HIBB", number, 16 + len(body), 20, 20) + b"SCPECG" + body
    return struct.pack("<H", crc_ccitt(rest)) + rest


def scp_record(bodies: dict[int, bytes]) -> bytes:
    """A whole record from section bodies (0 is made here), every CRC and pointer right."""
    pointers = []
    index = 7 + 16 + 10 * 12
    for number in range(12):
        if number == 0:
            pointers.append(struct.pack("<HII", 0, 16 + 10 * 12, 7))
        elif number in bodies:
            pointers.append(struct.pack("<HII", number, 16 + len(bodies[number]), index))
            index += 16 + len(bodies[number])
        else:
            pointers.append(struct.pack("<HII", number, 0, 0))
    sections = scp_section(0, b"".join(pointers)) + b"".join(
        scp_section(n, bodies[n]) for n in sorted(bodies) if n != 0)
    rest = struct.pack("<I", 6 + len(sections)) + sections
    return struct.pack("<H", crc_ccitt(rest)) + rest


def scp_bodies(data: bytes) -> dict[int, bytes]:
    """The section bodies of a record (Section 0 excluded), read with struct alone."""
    zero_len = struct.unpack_from("<I", data, 6 + 4)[0]
    out = {}
    for i in range((zero_len - 16) // 10):
        number, size, index = struct.unpack_from("<HII", data, 6 + 16 + 10 * i)
        if size and number:
            out[number] = data[index - 1 + 16:index - 1 + size]
    return out


def huffman_bits(values: np.ndarray, table: tuple[Code, ...] = DEFAULT_TABLE) -> bytes:
    """``values`` Huffman coded with ``table`` (a value table without switches)."""
    direct = {c.value: c for c in table if c.total_bits == c.prefix_bits}
    escapes = sorted((c for c in table if c.total_bits > c.prefix_bits),
                     key=lambda c: c.total_bits)
    bits: list[str] = []
    for v in values.tolist():
        c = direct.get(v)
        if c is not None:
            bits.append(format(c.prefix, f"0{c.prefix_bits}b"))
            continue
        for e in escapes:
            width = e.total_bits - e.prefix_bits
            if -(1 << (width - 1)) <= v < 1 << (width - 1):
                bits.append(format(e.prefix, f"0{e.prefix_bits}b")
                            + format(v & ((1 << width) - 1), f"0{width}b"))
                break
        else:
            raise ValueError(f"{v} has no code")
    text = "".join(bits)
    return np.packbits(np.array([int(b) for b in text], dtype=np.uint8)).tobytes()


def second_differences(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x[:2], x[2:] - 2 * x[1:-1] + x[:-2]])


def custom_table_body(table: tuple[Code, ...]) -> bytes:
    """Section 2 holding ``table`` explicitly (prefixes stored least significant bit first)."""
    out = struct.pack("<HH", 1, len(table))
    for c in table:
        stored = int(format(c.prefix, f"0{c.prefix_bits}b")[::-1], 2)
        out += struct.pack("<BBBhI", c.prefix_bits, c.total_bits, c.mode, c.value, stored)
    return out


SCP_LEADS = (1, 2, 61, 62, 63, 64, 3, 4, 5, 6, 7, 8)  # SCP lead codes in `LEADS` order


def scp_tags() -> bytes:
    def tag(n: int, value: bytes) -> bytes:
        return struct.pack("<BH", n, len(value)) + value

    return b"".join((
        tag(0, b"Doe\0"), tag(1, b"Jane\0"), tag(2, b"P-42\0"),
        tag(5, struct.pack("<HBB", 1961, 7, 14)), tag(8, b"\x02"),
        tag(25, struct.pack("<HBB", WHEN.year, WHEN.month, WHEN.day)),
        tag(26, bytes((WHEN.hour, WHEN.minute, WHEN.second))),
        tag(255, b""),
    ))


def synthetic_scp(*, subtract: bool = False, table: bytes | None = None,
                  huffman: bool = True) -> bytes:
    """A 12-lead SCP-ECG record of `RAW` (second differences, 2500 nV, 500 Hz)."""
    n = RAW.shape[1]
    rhythm = RAW.copy()
    bodies: dict[int, bytes] = {1: scp_tags()}
    flags = 0b01100100 | (1 if subtract else 0)  # 12 simultaneous leads
    bodies[3] = bytes((12, flags)) + b"".join(
        struct.pack("<IIB", 1, n, code) for code in SCP_LEADS)
    if subtract:
        # One reference beat of 300 ms (150 samples), fiducial at sample 50; three
        # QRS complexes whose subtraction zones hold it, the last one cut short.
        beat = RAW[:, 1000:1150].copy()
        zones = [(1001, 1050, 1150), (2001, 2050, 2150), (3001, 3050, 3100)]
        for start, fid, end in zones:
            lo = fid - 50 + 1
            rhythm[:, start - 1:end] -= beat[:, start - lo:end - lo + 1]
        bodies[4] = struct.pack("<HHH", 300, 50, len(zones)) + b"".join(
            struct.pack("<HIII", 0, s, f, e) for s, f, e in zones) + b"".join(
            struct.pack("<II", s, e) for s, _, e in zones)
        coded5 = [huffman_bits(second_differences(row)) for row in beat]
        bodies[5] = struct.pack("<HHBB", 2500, 2000, 2, 0) + struct.pack(
            "<12H", *map(len, coded5)) + b"".join(coded5)
    if huffman:
        bodies[2] = table if table is not None else struct.pack("<H", 19999)
        coded = [huffman_bits(second_differences(row)) for row in rhythm]
        bodies[6] = struct.pack("<HHBB", 2500, 2000, 2, 0) + struct.pack(
            "<12H", *map(len, coded)) + b"".join(coded)
    else:
        plain = [row.astype("<i2").tobytes() for row in rhythm]
        bodies[6] = struct.pack("<HHBB", 2500, 2000, 0, 0) + struct.pack(
            "<12H", *map(len, plain)) + b"".join(plain)
    return scp_record(bodies)


# ---------------------------------------------------------------------------
# XML formats


def synthetic_muse() -> bytes:
    """MUSE XML of I, II, V1-V6 of `RAW` (4.88 µV a bit), with measurements and statements."""
    leads = []
    for name in ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6"):
        data = RAW[LEADS.index(name)].astype("<i2").tobytes()
        leads.append(
            f"<LeadData><LeadByteCountTotal>{len(data)}</LeadByteCountTotal>"
            f"<LeadSampleCountTotal>{len(data) // 2}</LeadSampleCountTotal>"
            "<LeadAmplitudeUnitsPerBit>4.88</LeadAmplitudeUnitsPerBit>"
            "<LeadAmplitudeUnits>MICROVOLTS</LeadAmplitudeUnits>"
            f"<LeadID>{name}</LeadID><LeadSampleSize>2</LeadSampleSize>"
            f"<LeadDataCRC32>{zlib.crc32(data)}</LeadDataCRC32>"
            f"<WaveFormData>{base64.encodebytes(data).decode()}</WaveFormData></LeadData>")
    return (
        '<?xml version="1.0" encoding="ISO-8859-1"?>\n'
        '<!DOCTYPE RestingECG SYSTEM "restecg.dtd">\n<RestingECG>'
        "<PatientDemographics><PatientID>M-7</PatientID><DateofBirth>02-28-1970</DateofBirth>"
        "<Gender>FEMALE</Gender><PatientLastName>ROE</PatientLastName>"
        "<PatientFirstName>ANN</PatientFirstName></PatientDemographics>"
        "<TestDemographics><AcquisitionDevice>MAC5500</AcquisitionDevice>"
        f"<AcquisitionTime>{WHEN:%H:%M:%S}</AcquisitionTime>"
        f"<AcquisitionDate>{WHEN:%m-%d-%Y}</AcquisitionDate></TestDemographics>"
        "<RestingECGMeasurements><VentricularRate>71</VentricularRate>"
        "<PRInterval>160</PRInterval><QRSDuration>92</QRSDuration>"
        "<QTInterval>380</QTInterval><QTCorrected>412</QTCorrected><PAxis>50</PAxis>"
        "<RAxis>30</RAxis><TAxis>40</TAxis></RestingECGMeasurements>"
        "<Diagnosis><DiagnosisStatement><StmtText>Normal sinus rhythm</StmtText>"
        "</DiagnosisStatement><DiagnosisStatement><StmtText>Normal ECG</StmtText>"
        "</DiagnosisStatement></Diagnosis>"
        "<Waveform><WaveformType>Rhythm</WaveformType><NumberofLeads>8</NumberofLeads>"
        "<SampleBase>500</SampleBase><SampleExponent>0</SampleExponent>"
        + "".join(leads) + "</Waveform></RestingECG>"
    ).encode("latin-1")


def sierra_residuals(raw: np.ndarray) -> np.ndarray:
    """What a Sierra cart stores for III, aVR, aVL, aVF: residuals from I and II."""
    one, two, three, avr, avl, avf = raw[:6]
    out = raw.copy()
    out[2] = two - one - three
    out[3] = -avr - np.floor_divide(one + two, 2)
    out[4] = np.floor_divide(one - three, 2) - avl
    out[5] = np.floor_divide(two + three, 2) - avf
    return out


def synthetic_sierra() -> bytes:
    """Sierra XML 1.04, uncompressed, UTF-16 as the carts write it."""
    data = base64.b64encode(sierra_residuals(RAW).astype("<i2").tobytes()).decode()
    return (
        '<?xml version="1.0" encoding="utf-16"?>\n'
        '<restingecgdata xmlns="http://www3.medical.philips.com">'
        "<documentinfo><documenttype>PhilipsECG</documenttype>"
        "<documentversion>1.04</documentversion></documentinfo>"
        f'<dataacquisition date="{WHEN:%Y-%m-%d}" time="{WHEN:%H:%M:%S}">'
        '<machine machineid="EKG9" detaildescription="Philips Medical Products:860306:B.01">'
        "PageWriter TC50</machine><signalcharacteristics><samplingrate>500</samplingrate>"
        "<signalresolution>5</signalresolution><acquisitiontype>STD-12</acquisitiontype>"
        "<numberchannelsallocated>12</numberchannelsallocated></signalcharacteristics>"
        "</dataacquisition><patient><generalpatientdata><patientid>S-1</patientid>"
        "<name><lastname>Poe</lastname><firstname>Al</firstname></name>"
        "<age><dateofbirth>1955-05-05</dateofbirth></age><sex>Male</sex>"
        "</generalpatientdata></patient>"
        '<interpretations><interpretation><globalmeasurements><heartrate>66</heartrate>'
        "<qtint>400</qtint><qtcb>Failed</qtcb></globalmeasurements>"
        "<statement><leftstatement>Sinus rhythm</leftstatement><rightstatement/></statement>"
        "</interpretation></interpretations>"
        '<waveforms><parsedwaveforms dataencoding="Base64" compression="None" '
        'numberofleads="12" leadlabels="I II III aVR aVL aVF V1 V2 V3 V4 V5 V6" '
        'durationperchannel="10000" samplespersecond="500" resolution="5">'
        f"{data}</parsedwaveforms></waveforms></restingecgdata>"
    ).encode("utf-16")


def synthetic_aecg() -> bytes:
    """An aECG of `RAW` (scale 2.5 µV, origin 0) with measurements and a statement."""
    sequences = "".join(
        f'<component><sequence><code code="MDC_ECG_LEAD_{name.upper()}"/>'
        '<value xsi:type="SLIST_PQ"><origin value="0" unit="uV"/>'
        '<scale value="2.5" unit="uV"/>'
        f"<digits>{' '.join(map(str, RAW[i].tolist()))}</digits></value></sequence></component>"
        for i, name in enumerate(LEADS))
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<AnnotatedECG xmlns="urn:hl7-org:v3" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        f'<id root="{AECG_UUID}"/><effectiveTime><center value="{WHEN:%Y%m%d%H%M%S}"/>'
        "</effectiveTime><componentOf><timepointEvent><componentOf><subjectAssignment>"
        '<subject><trialSubject><id root="1.2.3" extension="T-9"/><subjectDemographicPerson>'
        '<name>Smith</name><administrativeGenderCode code="M"/><birthTime value="19800101"/>'
        "</subjectDemographicPerson></trialSubject></subject></subjectAssignment>"
        "</componentOf></timepointEvent></componentOf>"
        '<component><series><code code="RHYTHM"/>'
        '<author><seriesAuthor><manufacturedSeriesDevice><manufacturerModelName>ELI 280'
        "</manufacturerModelName></manufacturedSeriesDevice><manufacturerOrganization>"
        "<name>Mortara</name></manufacturerOrganization></seriesAuthor></author>"
        '<component><sequenceSet><component><sequence><code code="TIME_RELATIVE"/>'
        '<value xsi:type="GLIST_PQ"><head value="0" unit="s"/>'
        '<increment value="0.002" unit="s"/></value></sequence></component>'
        f"{sequences}</sequenceSet></component>"
        "<subjectOf><annotationSet><component><annotation>"
        '<code code="MDC_ECG_TIME_PD_QT"/><value xsi:type="PQ" value="396" unit="ms"/>'
        "</annotation></component><component><annotation>"
        '<code code="MDC_ECG_INTERPRETATION_STATEMENT"/><value xsi:type="ST">Normal ECG</value>'
        "</annotation></component></annotationSet></subjectOf></series></component>"
        "</AnnotatedECG>"
    ).encode()


# ---------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("variant", ["default-table", "custom-table", "subtracted",
                                     "uncompressed"])
def test_scp_gives_the_integers_back(variant: str) -> None:
    data = {
        "default-table": lambda: synthetic_scp(),
        "custom-table": lambda: synthetic_scp(table=custom_table_body(DEFAULT_TABLE)),
        "subtracted": lambda: synthetic_scp(subtract=True),
        "uncompressed": lambda: synthetic_scp(huffman=False),
    }[variant]()
    assert recognise(data) == "scp-ecg"
    c = convert(data)
    rhythm = c.ecg.groups[0]
    assert rhythm.leads == LEADS
    assert np.array_equal(rhythm.raw, RAW)
    assert {ch.sensitivity for ch in rhythm.channels} == {2.5}
    assert c.ecg.patient_name == "Doe^Jane" and c.ecg.patient_id == "P-42"
    assert c.ecg.sex == "F" and c.ecg.birth_date == dt.date(1961, 7, 14)
    assert c.ecg.acquisition_datetime == WHEN
    if variant == "subtracted":
        assert np.array_equal(c.ecg.groups[1].raw, RAW[:, 1000:1150])


def test_scp_table_switch_and_custom_codes() -> None:
    # A two-table set: table 1 codes 0 as "0", switches to table 2 on "1"; table 2
    # codes every value as "0" + 16 bits and switches back on "1".
    t1 = (Code(1, 1, 1, 0, 0b0), Code(1, 1, 0, 2, 0b1))
    t2 = (Code(1, 17, 1, 0, 0b0), Code(1, 1, 0, 1, 0b1))
    values = [0, 0, 7, -300, 0]  # second differences of one lead
    bits = "00" + "1" + "0" + format(7, "016b") + "0" + format(-300 & 0xFFFF, "016b") + "1" + "0"
    body = struct.pack("<H", 2)
    for t in (t1, t2):
        body += struct.pack("<H", len(t)) + b"".join(
            struct.pack("<BBBhI", c.prefix_bits, c.total_bits, c.mode, c.value, c.prefix)
            for c in t)
    coded = np.packbits(np.array([int(b) for b in bits], dtype=np.uint8)).tobytes()
    record = scp_record({
        1: scp_tags(), 2: body,
        3: bytes((1, 0b00001100)) + struct.pack("<IIB", 1, 5, 1),
        6: struct.pack("<HHBB", 5000, 2000, 0, 0) + struct.pack("<H", len(coded)) + coded,
    })
    c = convert(record)
    assert c.ecg.groups[0].raw.tolist() == [values]
    assert c.ecg.sop_class_uid == "1.2.840.10008.5.1.4.1.1.9.1.1"


def test_muse_reads_stored_leads_exactly_and_derives_the_others() -> None:
    data = synthetic_muse()
    c = convert(data)
    assert c.format == "ge-muse-xml"
    g = c.ecg.groups[0]
    assert g.leads == LEADS
    for lead in ("I", "II", "V1", "V6"):
        assert np.array_equal(g.raw[g.lead_index(lead)], RAW[LEADS.index(lead)])
    one, two = RAW[0], RAW[1]
    # III = II - I at 4.88 µV; the augmented leads exactly, as integers of 2.44 µV.
    assert np.array_equal(g.raw[2], two - one) and g.channels[2].sensitivity == 4.88
    assert np.array_equal(g.raw[3], -(one + two)) and g.channels[3].sensitivity == 2.44
    assert np.array_equal(g.raw[4], 2 * one - two) and np.array_equal(g.raw[5], 2 * two - one)
    assert [m.name for m in c.measurements] == [
        "VentricularRate", "PRInterval", "QRSDuration", "QTInterval", "QTCorrected",
        "PAxis", "RAxis", "TAxis"]
    assert c.statements == ("Normal sinus rhythm", "Normal ECG")
    assert (c.ecg.patient_name, c.ecg.sex, c.ecg.birth_date) == (
        "ROE^ANN", "F", dt.date(1970, 2, 28))


def test_sierra_uncompressed_restores_the_limb_leads() -> None:
    c = convert(synthetic_sierra())
    assert c.format == "philips-sierra-xml"
    assert np.array_equal(c.ecg.groups[0].raw, RAW)
    assert c.ecg.manufacturer == "Philips Medical Products"
    assert (c.ecg.model, c.ecg.device_serial_number, c.ecg.software_versions) == (
        "PageWriter TC50", "EKG9", "B.01")
    # "Failed" (not measured) is left out, not an error.
    assert [(m.name, m.value) for m in c.measurements] == [("heartrate", 66.0), ("qtint", 400.0)]
    assert c.statements == ("Sinus rhythm",)


def test_aecg_digits_are_the_samples_and_the_uuid_the_uid() -> None:
    c = convert(synthetic_aecg())
    assert c.format == "hl7-aecg"
    assert np.array_equal(c.ecg.groups[0].raw, RAW)
    assert c.ecg.sop_instance_uid == f"2.25.{uuid.UUID(AECG_UUID).int}"
    assert (c.ecg.manufacturer, c.ecg.model, c.ecg.patient_id) == ("Mortara", "ELI 280", "T-9")
    assert [(m.code.value, m.value, m.units) for m in c.measurements] == [
        ("5.13.5-11", 396.0, "ms")]
    assert c.statements == ("Normal ECG",)


@pytest.mark.parametrize("build", [synthetic_scp, synthetic_muse, synthetic_sierra,
                                   synthetic_aecg], ids=lambda f: f.__name__)
def test_synthetic_round_trip_and_determinism(build: object) -> None:
    data = build()  # type: ignore[operator]
    first, second = convert(data), convert(bytes(data))
    assert first.dicom == second.dicom
    assert first.original == data
    back = decode(first.dicom)
    for mine, theirs in zip(first.ecg.groups, back.groups, strict=True):
        assert np.array_equal(mine.raw, theirs.raw)
        assert [c.sensitivity for c in mine.channels] == [c.sensitivity for c in theirs.channels]
    assert back.acquisition_datetime == WHEN


def test_scp_reference_beat_flag_without_beats_is_refused() -> None:
    bodies = scp_bodies(synthetic_scp())
    bodies[3] = bytes((bodies[3][0], bodies[3][1] | 1)) + bodies[3][2:]
    with pytest.raises(InvalidFile, match=r"scp-ecg: Section 3 flags: .*Sections 4 and 5"):
        convert(scp_record(bodies))
