"""The encoder: dciodvfy finds no errors, and pydicom reads back what was written."""

from __future__ import annotations

import io
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.waveforms.numpy_handler import multiplex_array

from waveform.dicom.codes import SOP_CLASSES, TRANSFER_SYNTAXES
from waveform.dicom.encode import MODALITIES, encode, lead_code
from waveform.dicom.synthetic import GENERAL_ECG, TWELVE_LEAD, corpus, synthetic_ecg
from waveform.errors import InvalidArgument
from waveform.model import Ecg

CORPUS: list[tuple[str, Ecg, str]] = list(corpus())
BY_ID = {name: (ecg, ts) for name, ecg, ts in CORPUS}
DEFLATED = "1.2.840.10008.1.2.1.99"
BIG_ENDIAN = "1.2.840.10008.1.2.2"

# SOP classes newer than the IODs this dicom3tools knows: dciodvfy answers
# "Information Object Not found" for them and checks only the encoding and VRs.
_UNKNOWN_TO_DCIODVFY = {
    "1.2.840.10008.5.1.4.1.1.9.1.4",  # General 32-bit ECG
    "1.2.840.10008.5.1.4.1.1.9.5.1",  # Arterial Pulse
    "1.2.840.10008.5.1.4.1.1.9.6.1",  # Respiratory
    "1.2.840.10008.5.1.4.1.1.9.6.2",  # Multi-channel Respiratory
    "1.2.840.10008.5.1.4.1.1.9.8.1",  # Body Position
}
_NOT_FOUND = "Error - Information Object Not found"


@pytest.fixture(scope="module")
def encoded() -> dict[str, bytes]:
    return {name: encode(ecg, ts) for name, ecg, ts in CORPUS}


def _dciodvfy() -> str:
    path = shutil.which("dciodvfy")
    if path is None:
        pytest.fail(
            "dciodvfy is not installed: `make test` installs it (Debian package dicom3tools); "
            "encoded objects must be validated, so this test does not skip"
        )
    return path


def _errors(tool: str, data: bytes, ts: str, where: Path) -> list[str]:
    if ts == DEFLATED:
        # This dciodvfy cannot inflate: validate the same data set as Explicit VR LE
        # (pydicom has read the deflated stream, which checks the deflation).
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        data = buf.getvalue()
    where.write_bytes(data)
    out = subprocess.run([tool, str(where)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if "Error" in line]


_BY_CLASS_AND_SYNTAX: dict[tuple[str, str], list[str]] = defaultdict(list)
for _name, _ecg, _ts in CORPUS:
    _BY_CLASS_AND_SYNTAX[(_ecg.sop_class_uid, _ts)].append(_name)


@pytest.mark.parametrize(
    ("sop_class", "ts"),
    sorted(_BY_CLASS_AND_SYNTAX),
    ids=[f"{SOP_CLASSES[s].name.replace(' Waveform Storage', '')}-{TRANSFER_SYNTAXES[t].name}"
         for s, t in sorted(_BY_CLASS_AND_SYNTAX)],
)
def test_dciodvfy_reports_no_errors(
    sop_class: str, ts: str, encoded: dict[str, bytes], tmp_path: Path
) -> None:
    tool = _dciodvfy()
    allowed = {_NOT_FOUND} if sop_class in _UNKNOWN_TO_DCIODVFY else set()
    failures = {}
    for name in _BY_CLASS_AND_SYNTAX[(sop_class, ts)]:
        errors = [e for e in _errors(tool, encoded[name], ts, tmp_path / "x.dcm")
                  if e not in allowed]
        if errors:
            failures[name] = errors
    assert not failures, f"dciodvfy errors: {failures}"


def test_corpus_covers_every_class_syntax_and_interpretation() -> None:
    seen = {(e.sop_class_uid, ts, g.interpretation) for _, e, ts in CORPUS for g in e.groups}
    for sop in SOP_CLASSES.values():
        for ts in TRANSFER_SYNTAXES:
            for interp in sop.interpretations:
                assert (sop.uid, ts, interp) in seen, (sop.name, ts, interp)
    counts = {g.n_channels for _, e, _ in CORPUS for g in e.groups}
    assert set(range(1, 25)) <= counts
    rates = {g.sampling_frequency for _, e, _ in CORPUS for g in e.groups}
    assert {200.0, 250.0, 257.0, 360.0, 500.0, 1000.0} <= rates
    assert any(len(e.groups) > 1 for _, e, _ in CORPUS)
    assert any(c.padding is not None for _, e, _ in CORPUS for g in e.groups for c in g.channels)
    assert any(
        c.bits_stored is not None and c.bits_stored < g.bits_allocated
        for _, e, _ in CORPUS for g in e.groups for c in g.channels
    )


def _values_from_pydicom(ds: pydicom.Dataset, index: int, big_endian: bool) -> np.ndarray:
    arr = multiplex_array(ds, index, as_raw=True)
    # pydicom reads Waveform Data in native (little endian) order whatever the syntax.
    return arr.byteswap() if big_endian else arr


@pytest.mark.parametrize("name", [n for n, _, _ in CORPUS])
def test_pydicom_reads_back_what_was_written(name: str, encoded: dict[str, bytes]) -> None:
    ecg, ts = BY_ID[name]
    ds = pydicom.dcmread(io.BytesIO(encoded[name]))
    assert ds.file_meta.TransferSyntaxUID == ts
    assert ds.SOPClassUID == ecg.sop_class_uid
    assert ds.SOPInstanceUID == ecg.sop_instance_uid
    assert ds.Modality == MODALITIES[ecg.sop_class_uid]
    assert ds.PatientID == ecg.patient_id
    assert ds.IssuerOfPatientID == ecg.patient_id_issuer
    assert str(ds.PatientName) == ecg.patient_name
    assert ecg.acquisition_datetime is not None
    assert ds.AcquisitionDateTime == ecg.acquisition_datetime.strftime("%Y%m%d%H%M%S")
    assert ds.ContentDate == ds.StudyDate == ecg.acquisition_datetime.strftime("%Y%m%d")
    assert ds.ContentTime == ds.StudyTime == ecg.acquisition_datetime.strftime("%H%M%S")
    assert len(ds.WaveformSequence) == len(ecg.groups)
    for i, group in enumerate(ecg.groups):
        item = ds.WaveformSequence[i]
        assert item.NumberOfWaveformChannels == group.n_channels
        assert item.NumberOfWaveformSamples == group.n_samples
        assert float(item.SamplingFrequency) == group.sampling_frequency
        assert item.WaveformSampleInterpretation == group.interpretation
        assert item.WaveformBitsAllocated == group.bits_allocated
        assert item["WaveformData"].VR == ("OB" if group.bits_allocated == 8 else "OW") or (
            ts == "1.2.840.10008.1.2"
        )
        got = _values_from_pydicom(ds, i, ts == BIG_ENDIAN)
        assert got.dtype == group.raw.dtype
        assert np.array_equal(got, group.raw.T)
        for ch, cd in zip(group.channels, item.ChannelDefinitionSequence, strict=True):
            assert float(cd.ChannelSensitivity) == ch.sensitivity
            assert float(cd.ChannelBaseline) == ch.baseline
            assert cd.ChannelSensitivityUnitsSequence[0].CodeValue == ch.units
            assert cd.WaveformBitsStored == ch.bits_stored
            assert ch.source is not None
            assert cd.ChannelSourceSequence[0].CodeValue == ch.source.value
        pad = group.channels[0].padding
        if pad is None:
            assert "WaveformPaddingValue" not in item
        else:
            dtype = group.raw.dtype.newbyteorder(">" if ts == BIG_ENDIAN else "<")
            value = np.frombuffer(item.WaveformPaddingValue[: dtype.itemsize], dtype)[0]
            assert int(value) == pad


def test_big_endian_samples_are_big_endian_values() -> None:
    ecg = synthetic_ecg(sop_class_uid=GENERAL_ECG, duration_s=0.5, n_channels=3)
    le = pydicom.dcmread(io.BytesIO(encode(ecg, "1.2.840.10008.1.2.1")))
    be = pydicom.dcmread(io.BytesIO(encode(ecg, BIG_ENDIAN)))
    raw = ecg.groups[0].raw
    assert le.WaveformSequence[0].WaveformData == raw.T.astype("<i2").tobytes()
    assert be.WaveformSequence[0].WaveformData == raw.T.astype(">i2").tobytes()


def test_dcmdump_reads_big_endian_and_deflated(tmp_path: Path) -> None:
    dcmdump = shutil.which("dcmdump")
    if dcmdump is None:
        pytest.skip("dcmdump (dcmtk) is not installed")
    ecg = synthetic_ecg(duration_s=0.5)
    first = int(ecg.groups[0].raw[0, 0]) & 0xFFFF
    for ts in (BIG_ENDIAN, DEFLATED):
        path = tmp_path / "x.dcm"
        path.write_bytes(encode(ecg, ts))
        out = subprocess.run([dcmdump, str(path)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        line = next(x for x in out.stdout.splitlines() if "WaveformData" in x)
        assert line.split()[2].startswith(f"{first:04x}"), line


def test_acquisition_datetime_with_offset_and_fraction() -> None:
    import datetime as dt

    when = dt.datetime(2024, 2, 3, 4, 5, 6, 250000, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    ecg = synthetic_ecg(duration_s=0.5).replace(acquisition_datetime=when)
    ds = pydicom.dcmread(io.BytesIO(encode(ecg)))
    assert ds.AcquisitionDateTime == "20240203040506.250000-0500"
    assert ds.ContentTime == "040506.250000"


def test_non_ascii_text_gets_utf8() -> None:
    ecg = synthetic_ecg(duration_s=0.5).replace(patient_name="Müller^Jürgen")
    ds = pydicom.dcmread(io.BytesIO(encode(ecg)))
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "Müller^Jürgen"


def test_offset_groups_write_a_synchronization_module() -> None:
    ecg = synthetic_ecg(sop_class_uid=GENERAL_ECG, groups=3, duration_s=1.0,
                        group_offset_ms=500.0)
    ds = pydicom.dcmread(io.BytesIO(encode(ecg)))
    assert ds.AcquisitionTimeSynchronized == "Y"
    assert [float(i.MultiplexGroupTimeOffset) for i in ds.WaveformSequence] == [0, 0, 500]


def test_offset_groups_dciodvfy_false_positive(tmp_path: Path) -> None:
    """dciodvfy looks for Acquisition Time Synchronized inside the Waveform Sequence item
    rather than in the data set, so it calls the (standard) Multiplex Group Time Offset
    of a synchronised object an error. That is the only error it reports."""
    tool = _dciodvfy()
    ecg = synthetic_ecg(sop_class_uid=GENERAL_ECG, groups=3, duration_s=1.0,
                        group_offset_ms=500.0)
    errors = set(_errors(tool, encode(ecg), "1.2.840.10008.1.2.1", tmp_path / "x.dcm"))
    assert errors <= {
        "Error - Attribute present when condition unsatisfied (which may not be present "
        "otherwise) Type 1C Conditional Element=<MultiplexGroupTimeOffset> Module=<Waveform>"
    }


def test_lead_code() -> None:
    assert lead_code("I").value == "2:1"
    assert lead_code("aVF").value == "2:64"
    with pytest.raises(InvalidArgument, match="lead 'V9' has no MDC code"):
        lead_code("V9")


def test_refuses_what_it_cannot_write() -> None:
    ecg = synthetic_ecg(duration_s=0.5)
    with pytest.raises(InvalidArgument, match=r"transfer syntax '1\.2\.840\.10008\.1\.2\.4\.50'"):
        encode(ecg, "1.2.840.10008.1.2.4.50")
    with pytest.raises(InvalidArgument, match=r"SOP class '1\.2\.3' is not a waveform class"):
        encode(ecg.replace(sop_class_uid="1.2.3"))
    with pytest.raises(InvalidArgument, match="no multiplex group"):
        encode(ecg.replace(groups=()))
    g = ecg.groups[0]
    bad = type(g)(g.label, g.sampling_frequency, g.channels, g.raw.astype(np.int32), "SS")
    with pytest.raises(InvalidArgument, match=r"dtype int32 .* cannot be written as 'SS'"):
        encode(ecg.replace(groups=(bad,)))


def test_default_is_explicit_little_endian() -> None:
    ecg = synthetic_ecg(sop_class_uid=TWELVE_LEAD, duration_s=0.5).replace(transfer_syntax_uid="")
    ds = pydicom.dcmread(io.BytesIO(encode(ecg)))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert encode(ecg)[128:132] == b"DICM"
