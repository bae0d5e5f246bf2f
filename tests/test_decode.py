"""decode() against pydicom, the oracle, on real objects and their re-encodings."""

from __future__ import annotations

import dataclasses
import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)
from pydicom.waveforms.numpy_handler import multiplex_array

from tests.conftest import SHARED_DICOM
from waveform.dicom import decode, encode, join, split
from waveform.dicom.synthetic import synthetic_ecg
from waveform.errors import InvalidDicom, UnsupportedObject

PYDICOM_ECG = Path(str(get_testdata_file("waveform_ecg.dcm")))
REAL = [PYDICOM_ECG, *SHARED_DICOM]
IDS = [p.name for p in REAL]


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value)


@pytest.fixture(params=REAL, ids=IDS)
def real(request: pytest.FixtureRequest) -> tuple[bytes, pydicom.Dataset]:
    data = Path(request.param).read_bytes()
    return data, pydicom.dcmread(io.BytesIO(data))


with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # G.711 reference codec of the standard library (through Python 3.12)


def test_samples_equal_pydicom(real: tuple[bytes, pydicom.Dataset]) -> None:
    data, ds = real
    ecg = decode(data)
    assert len(ecg.groups) == len(ds.WaveformSequence)
    for i, (group, item) in enumerate(zip(ecg.groups, ds.WaveformSequence, strict=True)):
        ref = multiplex_array(ds, i, as_raw=True).T
        assert group.raw.dtype == ref.dtype
        assert np.array_equal(group.raw, ref)
        assert not group.raw.flags.writeable
        phys = group.physical()
        ref_phys = multiplex_array(ds, i, as_raw=False).T
        pad = item.get("WaveformPaddingValue")
        if pad is not None and group.channels[0].padding is not None:
            padval = np.frombuffer(pad, ref.dtype)[0]
            assert np.array_equal(np.isnan(phys), ref == padval)
        elif pad is not None:  # a value the signal takes: samples, and said so
            assert not np.isnan(phys).any()
            assert any("lies inside the signal" in w for w in ecg.warnings)
        keep = ~np.isnan(phys)
        if group.interpretation == "MB":
            # pydicom scales the mu-law codes themselves; the standard means G.711.
            lin = np.frombuffer(audioop.ulaw2lin(ref.astype(np.uint8).tobytes(), 2), "<i2")
            sens = np.array([c.sensitivity * c.correction for c in group.channels])[:, None]
            base = np.array([c.baseline for c in group.channels])[:, None]
            assert np.array_equal(phys, lin.reshape(ref.shape) * sens + base)
        elif group.interpretation == "AB":
            lin = np.frombuffer(audioop.alaw2lin(ref.astype(np.uint8).tobytes(), 2), "<i2")
            assert np.array_equal(phys[keep], (lin.reshape(ref.shape) * 1.0)[keep])
        else:
            # To the last bit of float64.
            assert np.array_equal(phys[keep], ref_phys[keep])


def test_metadata_equal_pydicom(real: tuple[bytes, pydicom.Dataset]) -> None:
    data, ds = real
    ecg = decode(data)
    assert ecg.sop_class_uid == ds.SOPClassUID
    assert ecg.sop_instance_uid == ds.SOPInstanceUID
    assert ecg.study_instance_uid == _text(ds.get("StudyInstanceUID"))
    assert ecg.series_instance_uid == _text(ds.get("SeriesInstanceUID"))
    for ours, keyword in [
        ("patient_id", "PatientID"), ("patient_name", "PatientName"), ("sex", "PatientSex"),
        ("accession_number", "AccessionNumber"), ("institution", "InstitutionName"),
        ("manufacturer", "Manufacturer"), ("model", "ManufacturerModelName"),
        ("software_versions", "SoftwareVersions"), ("operator", "OperatorsName"),
        ("reading_physician", "NameOfPhysiciansReadingStudy"),
        ("referring_physician", "ReferringPhysicianName"),
        ("study_description", "StudyDescription"),
    ]:
        assert getattr(ecg, ours) == _text(ds.get(keyword)).strip(), keyword
    if ds.get("PatientBirthDate"):
        assert ecg.birth_date is not None
        assert ecg.birth_date.strftime("%Y%m%d") == ds.PatientBirthDate
    if ds.get("AcquisitionDateTime"):
        assert ecg.acquisition_datetime is not None
        assert ecg.acquisition_datetime.strftime("%Y%m%d%H%M%S").startswith(
            str(ds.AcquisitionDateTime)[:14])
    for group, item in zip(ecg.groups, ds.WaveformSequence, strict=True):
        assert group.sampling_frequency == float(item.SamplingFrequency)
        assert group.label == _text(item.get("MultiplexGroupLabel"))
        assert group.interpretation == item.WaveformSampleInterpretation
        for ch, defn in zip(group.channels, item.ChannelDefinitionSequence, strict=True):
            assert ch.label == _text(defn.get("ChannelLabel"))
            assert ch.sensitivity == float(defn.get("ChannelSensitivity", 1.0))
            assert ch.correction == float(defn.get("ChannelSensitivityCorrectionFactor", 1.0))
            assert ch.baseline == float(defn.get("ChannelBaseline", 0.0))
            src = defn.ChannelSourceSequence[0]
            assert ch.source is not None
            assert (ch.source.scheme, ch.source.value, ch.source.meaning) == (
                src.CodingSchemeDesignator, src.CodeValue, src.CodeMeaning)
            units = defn.get("ChannelSensitivityUnitsSequence")
            assert ch.units == (units[0].CodeValue if units else None)
            for ours, keyword in [("filter_low_hz", "FilterLowFrequency"),
                                  ("filter_high_hz", "FilterHighFrequency"),
                                  ("notch_hz", "NotchFilterFrequency")]:
                ref = defn.get(keyword)
                assert getattr(ch, ours) == (None if ref in (None, "") else float(ref)), keyword


def test_annotations_equal_pydicom(real: tuple[bytes, pydicom.Dataset]) -> None:
    data, ds = real
    ecg = decode(data)
    items = ds.get("WaveformAnnotationSequence", [])
    assert len(ecg.annotations) == len(items)
    for ann, item in zip(ecg.annotations, items, strict=True):
        assert ann.text == (None if "UnformattedTextValue" not in item
                            else str(item.UnformattedTextValue).strip())
        if "NumericValue" in item:
            nv = item.NumericValue
            first = nv[0] if isinstance(nv, pydicom.multival.MultiValue) else nv
            assert ann.value == float(first)
        if "ConceptNameCodeSequence" in item:
            assert ann.concept is not None
            assert ann.concept.value == item.ConceptNameCodeSequence[0].CodeValue
        if "ReferencedWaveformChannels" in item:
            flat = [v for pair in ann.channels for v in pair]
            assert flat == list(item.ReferencedWaveformChannels)


def test_leads_are_recognised_in_real_twelve_lead_files(real: tuple[bytes, pydicom.Dataset]
                                                        ) -> None:
    data, _ = real
    ecg = decode(data)
    rhythm = ecg.rhythm
    assert rhythm is not None
    if rhythm.n_channels == 12:
        assert set(rhythm.leads) == {"I", "II", "III", "aVR", "aVL", "aVF",
                                     "V1", "V2", "V3", "V4", "V5", "V6"}


def test_split_join_is_byte_exact(real: tuple[bytes, pydicom.Dataset]) -> None:
    data, _ = real
    header, groups = split(data)
    assert join(header, groups) == data
    ecg = decode(data)
    assert [bytes(g) for g in groups] == [g.raw.T.tobytes() for g in ecg.groups]
    # The header is the rest of the object plus a 16-byte locator per group and 12 bytes.
    assert len(header) == len(data) - sum(len(g) for g in groups) + 16 * len(groups) + 12


def _reencode(data: bytes, syntax: str) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    big = syntax == ExplicitVRBigEndian
    if big:  # pydicom writes OW bytes as given: hand it big endian samples
        for item in ds.WaveformSequence:
            dtype = np.dtype(f"<i{item.WaveformBitsAllocated // 8}")
            item.WaveformData = np.frombuffer(item.WaveformData, dtype).astype(
                dtype.newbyteorder(">")).tobytes()
    ds.file_meta.TransferSyntaxUID = syntax
    out = io.BytesIO()
    if big:
        pydicom.dcmwrite(out, ds, implicit_vr=False, little_endian=False, force_encoding=True)
    else:
        pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian,
                                    DeflatedExplicitVRLittleEndian], ids=lambda s: s.name)
def test_every_transfer_syntax_decodes_the_same(syntax: str) -> None:
    src = PYDICOM_ECG.read_bytes()
    data = _reencode(src, syntax)
    ref, ecg = decode(src), decode(data)
    assert ecg.transfer_syntax_uid == syntax
    assert ecg.groups == ref.groups
    assert ecg.annotations == ref.annotations
    assert ecg.replace(transfer_syntax_uid=ref.transfer_syntax_uid) == ref
    header, groups = split(data)
    assert join(header, groups) == data


def test_without_preamble_or_meta() -> None:
    src = PYDICOM_ECG.read_bytes()
    ref = decode(src)
    assert decode(src[128:]) == ref  # "DICM" + meta, no preamble
    ds = pydicom.dcmread(io.BytesIO(src))
    for implicit in (True, False):
        out = io.BytesIO()
        ds2 = pydicom.Dataset(ds)  # data set only: no preamble, no meta
        ds2.file_meta = pydicom.dataset.FileMetaDataset()
        pydicom.dcmwrite(out, ds2, implicit_vr=implicit, little_endian=True, force_encoding=True)
        body = out.getvalue()
        assert body[:4] != b"DICM" and body[128:132] != b"DICM"
        ecg = decode(body)
        assert ecg.groups == ref.groups
        assert ecg.patient_id == ref.patient_id


def test_memoryview_input_is_viewed_not_copied() -> None:
    buf = bytearray(PYDICOM_ECG.read_bytes())
    ecg = decode(memoryview(buf))
    raw = ecg.groups[0].raw
    assert np.shares_memory(raw, np.frombuffer(buf, np.uint8))
    assert not raw.flags.writeable


def test_a_padding_value_the_signal_takes_is_a_sample() -> None:
    """ECG Toolkit's example declares padding 0, and its leads cross zero: those
    1,269 zeros are measurements, the decoder says so, and nothing is NaN."""
    path = Path(__file__).resolve().parents[2] / "shared/data/dicom/ecgtoolkit_Example.dcm"
    if not path.exists():
        pytest.skip("../shared/data is absent")
    ecg = decode(path.read_bytes())
    rhythm = ecg.groups[0]
    assert all(c.padding is None for c in rhythm.channels)
    [note] = [w for w in ecg.warnings if "Waveform Padding Value" in w]
    assert note.startswith("multiplex group 1: Waveform Padding Value (5400,100A) 0 lies "
                           "inside the signal (1,269 samples hold it")
    assert int((rhythm.raw == 0).sum()) == 1269
    assert not np.isnan(rhythm.physical()).any()
    assert not np.isnan(rhythm.microvolts()).any()


def test_padding_at_the_types_extreme_is_nan_everywhere() -> None:
    ecg = synthetic_ecg(seed=7, duration_s=1.0)
    g = ecg.groups[0]
    raw = np.array(g.raw)
    raw[:, :50] = -32768  # the start not recorded
    channels = tuple(dataclasses.replace(c, padding=-32768) for c in g.channels)
    group = dataclasses.replace(g, raw=raw, channels=channels)
    back = decode(encode(ecg.replace(groups=(group,))))
    rhythm = back.groups[0]
    assert {c.padding for c in rhythm.channels} == {-32768}
    assert not any("Padding" in w for w in back.warnings)
    assert np.array_equal(np.isnan(rhythm.physical()), raw == -32768)
    assert np.array_equal(np.isnan(rhythm.microvolts()), raw == -32768)


def test_refuses_images_naming_the_class() -> None:
    data = Path(str(get_testdata_file("CT_small.dcm"))).read_bytes()
    with pytest.raises(UnsupportedObject, match=r"1\.2\.840\.10008\.5\.1\.4\.1\.1\.2 \(CT Image"):
        decode(data)


def test_refuses_non_bytes() -> None:
    with pytest.raises(InvalidDicom, match="expected bytes, got str"):
        decode("not bytes")  # type: ignore[arg-type]
