"""The carts' own files from ../shared/data/other: oracles, measurements, DICOM, determinism."""

from __future__ import annotations

import datetime as dt
import io
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.conftest import shared
from waveform.dicom.decode import decode
from waveform.errors import InvalidArgument, InvalidFile, UnknownFormat
from waveform.formats import FORMATS, Converted, convert, recognise
from waveform.formats.base import derived_uid

# file -> format
FILES: dict[str, str] = {
    "braveheart_gemuse_example1.xml": "ge-muse-xml",
    "braveheart_gemuse_example2.xml": "ge-muse-xml",
    "braveheart_gemuse_example3.xml": "ge-muse-xml",
    "introecg_MUSE_20200923_093504_79000_example.xml": "ge-muse-xml",
    "sierra_129DYPRG.XML": "philips-sierra-xml",
    "sierra_2020-5-18_15-48-11.xml": "philips-sierra-xml",
    "sierra_3191723_ZZDEMOPTONLY_1-04_orig.xml": "philips-sierra-xml",
    "sierra_ad4d3d80-d165_1-04_orig.xml": "philips-sierra-xml",
    "ecgkit_ecg_hl7.xml": "hl7-aecg",
    "ecgtoolkit_Example.xml": "hl7-aecg",
    "fda_minimum_aecg.xml": "hl7-aecg",
    "jhu_hl7aecg-Example2.xml": "hl7-aecg",
    "liryc_hl7aecg_example.xml": "hl7-aecg",
    "cabolabs_Example.scp": "scp-ecg",
    "ecgtoolkit_Example.scp": "scp-ecg",
    "pixelmed_PFE105_high.scp": "scp-ecg",
}
# The anonymised MUSE exports state no acquisition date: refused (see docs/formats.md).
UNDATED = {"braveheart_gemuse_example1.xml", "braveheart_gemuse_example2.xml",
           "braveheart_gemuse_example3.xml"}
TWELVE_LEAD = "1.2.840.10008.5.1.4.1.1.9.1.1"
GENERAL_ECG = "1.2.840.10008.5.1.4.1.1.9.1.2"

_CACHE: dict[str, Converted] = {}


def _read(name: str) -> bytes:
    return shared("other", name).read_bytes()


def _converted(name: str) -> Converted:
    if name not in _CACHE:
        _CACHE[name] = convert(_read(name))
    return _CACHE[name]


def _values(c: Converted) -> dict[str, float]:
    return {m.name: m.value for m in c.measurements}


@pytest.mark.parametrize("name", sorted(FILES))
def test_recognised_by_content(name: str) -> None:
    assert recognise(_read(name)) == FILES[name]
    assert FILES[name] in FORMATS


@pytest.mark.parametrize(
    ("content", "looks"),
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(40), "a PNG image"),
        (b"%PDF-1.7\n", "a PDF document"),
        (b'<?xml version="1.0"?>\n<!-- c --><svg xmlns="x"/>', "XML with root element <svg>"),
        (b"", "it is empty"),
        (b"\x00\x01\x02\x03\x04\x05\x06\x07\x08", "starts with bytes 00 01 02"),
    ],
    ids=["png", "pdf", "other-xml", "empty", "binary"],
)
def test_unknown_content_says_what_it_looks_like(content: bytes, looks: str) -> None:
    with pytest.raises(UnknownFormat, match=looks):
        recognise(content)


@pytest.mark.parametrize("name", sorted(set(FILES) - UNDATED))
def test_conversion_is_deterministic_and_round_trips(name: str) -> None:
    data = _read(name)
    c = _converted(name)
    again = convert(bytes(data))
    assert c.dicom == again.dicom  # byte for byte: the archive's idempotence
    assert c.original == data and c.format == FILES[name]
    back = decode(c.dicom)
    assert back.sop_instance_uid == c.ecg.sop_instance_uid
    assert len(back.groups) == len(c.ecg.groups)
    for mine, theirs in zip(c.ecg.groups, back.groups, strict=True):
        assert theirs.raw.dtype == np.int16 and np.array_equal(mine.raw, theirs.raw)
        assert [(x.lead, x.sensitivity, x.baseline, x.units) for x in mine.channels] == [
            (x.lead, x.sensitivity, x.baseline, x.units) for x in theirs.channels]
        assert mine.sampling_frequency == theirs.sampling_frequency
    texts = [a.text for a in back.annotations if a.text]
    assert texts == [s[:1024] for s in c.statements]
    numeric = [(a.concept.value if a.concept else "", a.value, a.units)
               for a in back.annotations if a.value is not None]
    assert numeric == [(m.code.value, m.value, m.units) for m in c.measurements]


def test_uids_come_from_the_file() -> None:
    aecg = _converted("ecgtoolkit_Example.xml")
    assert aecg.ecg.sop_instance_uid == (
        f"2.25.{uuid.UUID('61d1a24f-b47e-41aa-ae95-f8ac302f4eeb').int}")
    data = _read("ecgtoolkit_Example.scp")
    scp = _converted("ecgtoolkit_Example.scp")
    assert scp.ecg.sop_instance_uid == derived_uid(data, "instance")
    assert scp.ecg.study_instance_uid == derived_uid(data, "study")
    assert len(scp.ecg.sop_instance_uid) <= 64


def _dciodvfy_errors(data: bytes, where: Path) -> list[str]:
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.fail("dciodvfy is not installed: `make test` installs it (Debian dicom3tools)")
    where.write_bytes(data)
    out = subprocess.run([tool, str(where)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if "Error" in line]


@pytest.mark.parametrize("name", sorted(set(FILES) - UNDATED))
def test_dciodvfy_reports_no_errors(name: str, tmp_path: Path) -> None:
    assert _dciodvfy_errors(_converted(name).dicom, tmp_path / "x.dcm") == []


MUSE_FILES = sorted(n for n, f in FILES.items() if f == "ge-muse-xml")


@pytest.mark.parametrize("name", MUSE_FILES)
def test_muse_file_validates_or_is_refused_for_its_missing_date(name: str,
                                                                tmp_path: Path) -> None:
    """Every MUSE file either gives an object dciodvfy finds no error in, or (the
    anonymised BRAVEHEART exports, which hold no date-like element at all) is
    refused: Acquisition DateTime and Content Date/Time are Type 1 and no date is
    invented."""
    if name not in UNDATED:
        assert _dciodvfy_errors(_converted(name).dicom, tmp_path / "x.dcm") == []
        return
    with pytest.raises(InvalidFile) as info:
        convert(_read(name))
    assert isinstance(info.value, InvalidArgument)
    assert (info.value.format, info.value.field) == (
        "ge-muse-xml", "TestDemographics/AcquisitionDate")
    assert str(info.value).startswith(
        "ge-muse-xml: TestDemographics/AcquisitionDate: absent: the file states no "
        "acquisition date")
    assert b"Date>" not in _read(name) and b"<TestDemographics>" not in _read(name)


@pytest.mark.parametrize(
    ("name", "sop_class", "shapes"),
    [
        ("introecg_MUSE_20200923_093504_79000_example.xml", TWELVE_LEAD,
         [("RHYTHM", 12, 5000, 500.0), ("MEDIAN BEAT", 12, 600, 500.0)]),
        ("sierra_2020-5-18_15-48-11.xml", TWELVE_LEAD,
         [("RHYTHM", 12, 5500, 500.0), ("MEDIAN BEAT", 12, 1200, 1000.0)]),
        ("jhu_hl7aecg-Example2.xml", TWELVE_LEAD,
         [("RHYTHM", 12, 10000, 1000.0), ("MEDIAN BEAT", 12, 1200, 1000.0)]),
        # 100 Hz is below the 12-lead IOD's 200 Hz: General ECG.
        ("liryc_hl7aecg_example.xml", GENERAL_ECG,
         [("RHYTHM", 12, 1000, 100.0), ("MEDIAN BEAT", 12, 500, 100.0)]),
        ("fda_minimum_aecg.xml", TWELVE_LEAD, [("RHYTHM", 1, 13, 500.0)]),
    ],
    ids=["muse", "sierra-1000Hz-median", "aecg-1000Hz", "aecg-100Hz", "aecg-minimum"],
)
def test_sop_class_and_groups(name: str, sop_class: str,
                              shapes: list[tuple[str, int, int, float]]) -> None:
    c = _converted(name)
    assert c.ecg.sop_class_uid == sop_class
    assert [(g.label, g.n_channels, g.n_samples, g.sampling_frequency)
            for g in c.ecg.groups] == shapes


# ---------------------------------------------------------------------------
# Oracles


def test_ecg_toolkit_example_same_integers_in_dicom_scp_and_aecg() -> None:
    """One recording in three formats: the same integers at the same 2.5 µV a unit."""
    dicom = decode(shared("dicom", "ecgtoolkit_Example.dcm").read_bytes())
    reference = dicom.groups[0]
    for name in ("ecgtoolkit_Example.scp", "cabolabs_Example.scp", "ecgtoolkit_Example.xml",
                 "ecgkit_ecg_hl7.xml"):
        rhythm = _converted(name).ecg.groups[0]
        rows = [rhythm.leads.index(lead) for lead in reference.leads]
        assert np.array_equal(rhythm.raw[rows], reference.raw), name
        assert {c.sensitivity for c in rhythm.channels} == {2.5}
        assert {c.sensitivity for c in reference.channels} == {2.5}
        # The median beat: the DICOM's 600th sample is its -32768 filler, unset elsewhere.
        median = _converted(name).ecg.groups[1]
        assert median.n_samples == 599
        assert np.array_equal(median.raw[rows], dicom.groups[1].raw[:, :599]), name


def test_sierra_samples_equal_sierraecg() -> None:
    sierraecg = pytest.importorskip("sierraecg", reason="the sierraecg oracle is a dev extra")
    for name in sorted(n for n, f in FILES.items() if f == "philips-sierra-xml"):
        path = shared("other", name)
        theirs = sierraecg.read_file(str(path), include_repbeats=True)
        rhythm = _converted(name).ecg.groups[0]
        assert list(rhythm.leads) == [lead.label for lead in theirs.leads]
        for i, lead in enumerate(theirs.leads):
            assert np.array_equal(rhythm.raw[i], lead.samples), (name, lead.label)
        if theirs.repbeats:
            median = _converted(name).ecg.groups[1]
            for i, lead in enumerate(median.leads):
                assert np.array_equal(median.raw[i], theirs.repbeats[lead].samples)


# PixelMed's PFE105_high.scp: Section 4's protected zones (first, last sample).
PFE105_PROTECTED = ((261, 359), (604, 699), (768, 876), (1285, 1382), (1631, 1727),
                    (1800, 1905), (2314, 2409), (2654, 2752), (2997, 3093), (3338, 3434),
                    (3679, 3774), (4019, 4114), (4187, 4290), (4695, 4796))


def test_pixelmed_bimodal_rhythm_against_pfe105_dat() -> None:
    """PFE105_high.scp (bimodal compression: 20 µV residual, decimated by 4 outside
    14 protected zones) rebuilt by the standard's decoder, against the acquired
    samples of PFE105.dat (8 leads I, II, V1-V6, 5000 x int16 interleaved, 1 µV,
    500 Hz, per its readme). The readme states no precision; the reconstruction is
    lossy by design, so what is asserted is the error it has, lead by lead."""
    c = _converted("pixelmed_PFE105_high.scp")
    assert c.ecg.sop_class_uid == TWELVE_LEAD
    rhythm, median = c.ecg.groups
    assert (rhythm.label, rhythm.originality, rhythm.sampling_frequency) == (
        "RHYTHM", "DERIVED", 500.0)
    assert list(rhythm.leads) == ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"]
    # 20 µV residual plus 5 µV reference beats: integers of 5 µV.
    assert [ch.sensitivity for ch in rhythm.channels] == [5.0] * 8
    assert (median.label, median.n_samples, median.sampling_frequency) == (
        "MEDIAN BEAT", 495, 500.0)
    assert any("bimodal compression" in w for w in c.ecg.warnings)
    dat = np.frombuffer(_read("pixelmed_PFE105.dat"), dtype="<i2").reshape(5000, 8).T
    diff = rhythm.raw.astype(np.int64) * 5 - dat.astype(np.int64)
    # Sample 1 carries the start-up transient of the cart's filter (V1: 1787, 993,
    # 679, 523 µV), which one decimated value cannot hold.
    assert np.abs(diff).max(axis=1).tolist() == [171, 309, 687, 238, 370, 436, 412, 329]
    assert [int(np.argmax(np.abs(d))) for d in diff] == [0] * 8
    after = diff[:, 10:]
    assert np.abs(after).max(axis=1).tolist() == [49, 47, 92, 39, 104, 115, 93, 87]
    rms = np.sqrt((after.astype(float) ** 2).mean(axis=1))
    assert np.all((rms > 8.4) & (rms < 9.3)), rms
    # Inside the protected zones only quantisation remains (20 µV steps).
    inside = np.zeros(5000, dtype=bool)
    for first, last in PFE105_PROTECTED:
        inside[first - 1:last] = True
    assert inside.sum() == 1392
    assert np.abs(diff[:, inside]).max() == 17


def _expand_reference(values: list[int], n: int, zones: list[tuple[int, int]],
                      factor: int) -> list[int]:
    """Sample by sample, as the OpenECG reference decoder's Interpolate (factor 4)."""
    out: list[int] = []
    pos = 0
    starts = [1] + [last + 1 for _, last in zones]
    ends = [first - 1 for first, _ in zones] + [n]
    for k, (a, b) in enumerate(zip(starts, ends, strict=True)):
        count = b - a + 1
        if count > 0:
            decimated, kept = divmod(count, factor)
            if decimated:
                out += [values[pos]] * (factor // 2)
                for _ in range(decimated - 1):
                    step = (values[pos + 1] - values[pos]) / factor
                    out += [int(values[pos] + j * step) for j in range(factor)]
                    pos += 1
                out += [values[pos]] * (factor - factor // 2)
                pos += 1
            out += values[pos:pos + kept]
            pos += kept
        if k < len(zones):
            first, last = zones[k]
            out += values[pos:pos + last - first + 1]
            pos += last - first + 1
    assert pos == len(values) and len(out) == n
    return out


def _smooth_reference(x: list[int], zones: list[tuple[int, int]],
                      subtraction: list[tuple[int, int]]) -> list[int]:
    """As the reference decoder's DoFilter: stretches split at subtraction zones."""
    out = list(x)

    def run(a: int, b: int) -> None:  # 1-based, inclusive; ends unchanged
        for i in range(a + 1, b):
            total = x[i - 2] + x[i - 1] + x[i]
            out[i - 1] = int((total + (1 if total >= 0 else -1)) / 3)

    bounds = [1] + [v for z in zones for v in z] + [len(x)]
    for lo, hi in zip(bounds[::2], bounds[1::2], strict=True):
        cuts = sorted({c for s, e in subtraction for c in (s, e + 1) if lo < c <= hi})
        for a, b in zip([lo, *cuts], [*cuts, hi + 1], strict=True):
            run(a, b - 1)
    return out


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_bimodal_kernels_equal_a_sample_by_sample_reference(factor: int) -> None:
    from waveform.formats.bimodal import Zone, expand, smooth, stored_count

    rng = np.random.default_rng(factor)
    n = 997
    zones = [(101, 160), (402, 470), (471, 530), (990, 997)]
    subtraction = [(80, 200), (380, 470), (471, 560)]
    stored = stored_count(n, [Zone(*z) for z in zones], factor)
    values = rng.integers(-3000, 3000, stored)
    mine = expand(values, n, [Zone(*z) for z in zones], factor)
    theirs = _expand_reference(values.tolist(), n, zones, factor)
    assert mine.tolist() == theirs
    cuts = [c for s, e in subtraction for c in (s, e + 1)]
    assert smooth(mine, [Zone(*z) for z in zones], cuts).tolist() == _smooth_reference(
        theirs, zones, subtraction)


# ---------------------------------------------------------------------------
# Measurements, statements, patient and device: what the files state.


def test_muse_measurements_statements_and_demographics() -> None:
    c = _converted("introecg_MUSE_20200923_093504_79000_example.xml")
    assert _values(c) == {
        "VentricularRate": 56, "AtrialRate": 56, "PRInterval": 330, "QRSDuration": 94,
        "QTInterval": 434, "QTCorrected": 418, "QTcFrederica": 424, "PAxis": 6,
        "RAxis": -22, "TAxis": 2,
    }
    assert c.statements == (
        "Sinus bradycardia", "with sinus arrhythmia", "with 1st degree A-V block",
        "Otherwise normal ECG", "Confirmed by Garg, Ruchira M.D.")
    e = c.ecg
    assert (e.patient_id, e.patient_name, e.birth_date, e.sex) == (
        "201700237", "MUSE^TESTONE", dt.date(1980, 6, 10), "M")
    assert e.acquisition_datetime == dt.datetime(2020, 9, 22, 9, 3, 32)
    assert (e.model, e.institution) == ("MAC55", "CEDARS-SINAI MEDICAL CENTER")
    g = e.groups[0]
    i, ii = g.raw[0].astype(np.int64), g.raw[1].astype(np.int64)
    assert np.array_equal(g.raw[2], ii - i)  # III, derived exactly
    assert g.channels[3].sensitivity == pytest.approx(4.88 / 2)


def test_sierra_measurements_statements_and_demographics() -> None:
    c = _converted("sierra_3191723_ZZDEMOPTONLY_1-04_orig.xml")
    values = _values(c)
    assert {k: values[k] for k in ("heartrate", "rrint", "print", "qrsdur", "qtint", "qtcb",
                                   "pfrontaxis", "qrsfrontaxis", "tfrontaxis")} == {
        "heartrate": 84, "rrint": 714, "print": 144, "qrsdur": 84, "qtint": 352,
        "qtcb": 417, "pfrontaxis": 81, "qrsfrontaxis": 78, "tfrontaxis": 67}
    assert c.statements[0] == "SINUS RHYTHM (normal P axis, V-rate 60-99)"
    assert c.statements[-1] == "- ABNORMAL ECG -"
    e = c.ecg
    assert (e.patient_id, e.patient_name, e.birth_date, e.sex) == (
        "9999", "ZZDEMOPTONLY^ADULT", dt.date(1950, 1, 1), "M")
    assert e.acquisition_datetime == dt.datetime(2010, 1, 19, 15, 19, 22)
    assert (e.manufacturer, e.model, e.device_serial_number) == (
        "Philips Medical Products", "PageWriter Touch", "EKG1715")
    old = _converted("sierra_129DYPRG.XML")  # 1.03: interpretationmeasurements
    assert {k: _values(old)[k] for k in ("heartrate", "meanprint", "meanqrsdur", "meanqtint",
                                         "meanqtc")} == {
        "heartrate": 41, "meanprint": 151, "meanqrsdur": 135, "meanqtint": 476, "meanqtc": 393}
    assert "sthorizaxis" not in _values(old)  # the cart wrote "Failed"


def test_aecg_and_scp_measurements_agree_with_the_files() -> None:
    """The ECG Toolkit recording states PR 148, QRS 120, QT 420, QTc 443 ms and axes
    44/-61/86 in its aECG annotations; its SCP-ECG Section 7 holds the same fiducials."""
    aecg = _converted("ecgtoolkit_Example.xml")
    expected = {"pr": 148, "qrs": 120, "qt": 420, "qtc": 443, "p_axis": 44,
                "qrs_axis": -61, "t_axis": 86}
    by_code = {m.code.value: m.value for m in aecg.measurements}
    codes = {"pr": "5.13.5-7", "qrs": "5.13.5-9", "qt": "5.13.5-11", "qtc": "5.10.2.5-5",
             "p_axis": "5.10.3-11", "qrs_axis": "5.10.3-13", "t_axis": "5.10.3-15"}
    assert {k: by_code[codes[k]] for k in expected} == expected
    assert _values(aecg)["MDC_ECG_TIME_PD_P"] == 102
    assert aecg.statements == ("Sinus Rhythm",)
    scp = _converted("ecgtoolkit_Example.scp")
    by_code = {m.code.value: m.value for m in scp.measurements}
    assert {k: by_code[codes[k]] for k in expected} == expected
    e = scp.ecg
    assert (e.patient_name, e.patient_id, e.birth_date, e.sex) == (
        "Clark", "SBJ-123", dt.date(1953, 5, 8), "M")
    assert e.acquisition_datetime == aecg.ecg.acquisition_datetime == dt.datetime(
        2002, 11, 22, 9, 10)
    assert e.model == aecg.ecg.model == "ELI250"
    liryc = _converted("liryc_hl7aecg_example.xml")
    assert _values(liryc)["MDC_ECG_HEART_RATE"] == 57
    assert _values(liryc)["MINDRAY_ECG_TIME_PD_QTcH"] == 413
    assert liryc.statements[0] == "Rythme sinusal avec ESA"


def test_annotations_written_as_a_mortara_cart_writes_them() -> None:
    c = _converted("ecgtoolkit_Example.scp")
    ds = pydicom.dcmread(io.BytesIO(c.dicom))
    items = list(ds.WaveformAnnotationSequence)
    qt = next(a for a in items if "ConceptNameCodeSequence" in a
              and a.ConceptNameCodeSequence[0].CodeValue == "5.13.5-11")
    assert qt.ConceptNameCodeSequence[0].CodingSchemeDesignator == "SCPECG"
    assert qt.NumericValue == 420
    assert qt.MeasurementUnitsCodeSequence[0].CodeValue == "ms"
    muse = _converted("introecg_MUSE_20200923_093504_79000_example.xml")
    ds = pydicom.dcmread(io.BytesIO(muse.dicom))
    texts = [a.UnformattedTextValue for a in ds.WaveformAnnotationSequence
             if "UnformattedTextValue" in a]
    assert texts[0] == "Sinus bradycardia"


def test_dicom_passes_through_unchanged() -> None:
    data = shared("dicom", "marcodebe_anonymous_ecg.dcm").read_bytes()
    c = convert(data)
    assert c.format == "dicom" and c.dicom is not None and c.dicom == data
    assert c.original == data and c.ecg.groups
