"""Broken and hostile objects get a typed error whose message says what and where."""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from waveform.dicom import decode
from waveform.dicom.samples import ALAW, ULAW
from waveform.dicom.tokenize import MAX_DEPTH
from waveform.errors import InvalidDicom, LimitExceeded, UnsupportedObject, WaveformError

SRC = Path(str(get_testdata_file("waveform_ecg.dcm"))).read_bytes()


def _edit(change: Callable[[Dataset], None]) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(SRC))
    change(ds)
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _group0(ds: Dataset) -> Dataset:
    return ds.WaveformSequence[0]


CASES = [
    ("channel count", lambda ds: setattr(_group0(ds), "NumberOfWaveformChannels", 13),
     InvalidDicom, r"multiplex group 1: Number of Waveform Channels \(003A,0005\) is 13 but the "
                   r"Channel Definition Sequence \(003A,0200\) holds 12 items"),
    ("short data", lambda ds: setattr(_group0(ds), "WaveformData", _group0(ds).WaveformData[:1000]),
     InvalidDicom, r"Waveform Data \(5400,1010\) holds 1000 bytes but 12 channels x 10000 samples "
                   r"x 2 bytes need 240000"),
    ("sample limit", lambda ds: setattr(_group0(ds), "NumberOfWaveformSamples", 20000),
     LimitExceeded, r"Number of Waveform Samples \(003A,0010\) is 20000, more than the 16384 the "
                    r"12-lead ECG Waveform Storage IOD allows"),
    ("bits vs interpretation", lambda ds: setattr(_group0(ds), "WaveformBitsAllocated", 8),
     InvalidDicom, r"Waveform Sample Interpretation \(5400,1006\) 'SS' with Waveform Bits "
                   r"Allocated \(5400,1004\) 8 is not allowed"),
    ("no sampling frequency", lambda ds: delattr(_group0(ds), "SamplingFrequency"),
     InvalidDicom, r"multiplex group 1: Sampling Frequency \(003A,001A\) is missing"),
    ("zero sampling frequency", lambda ds: setattr(_group0(ds), "SamplingFrequency", "0"),
     InvalidDicom, r"Sampling Frequency \(003A,001A\) is 0.0, expected a positive number"),
    ("no waveform", lambda ds: delattr(ds, "WaveformSequence"),
     InvalidDicom, r"no Waveform Sequence \(5400,0100\)"),
    ("no SOP instance", lambda ds: setattr(ds, "SOPInstanceUID", ""),
     InvalidDicom, r"SOP Instance UID \(0008,0018\) is missing or empty"),
    ("image class", lambda ds: setattr(ds, "SOPClassUID", "1.2.840.10008.5.1.4.1.1.7"),
     UnsupportedObject, r"1\.2\.840\.10008\.5\.1\.4\.1\.1\.7 \(Secondary Capture Image Storage\) "
                        r"is not a waveform storage class"),
    ("audio class", lambda ds: setattr(ds, "SOPClassUID", "1.2.840.10008.5.1.4.1.1.9.4.1"),
     UnsupportedObject, r"Basic Voice Audio Waveform Storage"),
]


@pytest.mark.parametrize(("name", "change", "error", "message"), CASES, ids=[c[0] for c in CASES])
def test_named_error(name: str, change: Callable[[Dataset], None], error: type[Exception],
                     message: str) -> None:
    with pytest.raises(error, match=message):
        decode(_edit(change))


def test_bad_decimal_string() -> None:
    tag = bytes.fromhex("3a001002") + b"DS"
    pos = -1
    for _ in range(3):  # the third channel's sensitivity
        pos = SRC.index(tag, pos + 1)
    n = struct.unpack("<H", SRC[pos + 6:pos + 8])[0]
    bad = SRC[:pos + 8] + b"abc".ljust(n) + SRC[pos + 8 + n:]
    with pytest.raises(InvalidDicom, match=r"multiplex group 1 channel 3 sensitivity holds "
                                           r"b'abc', expected a decimal number"):
        decode(bad)


def test_invalid_dicom_is_a_value_error() -> None:
    assert issubclass(InvalidDicom, ValueError)
    assert issubclass(LimitExceeded, InvalidDicom)
    assert issubclass(UnsupportedObject, WaveformError)


def test_unsupported_transfer_syntax() -> None:
    data = bytearray(SRC)
    pos = data.index(b"1.2.840.10008.1.2.1\x00")
    data[pos:pos + 20] = b"1.2.840.10008.1.2.4."  # JPEG Baseline family, same length
    with pytest.raises(UnsupportedObject, match=r"Transfer Syntax UID \(0002,0010\) is "
                                                r"'1\.2\.840\.10008\.1\.2\.4\.'"):
        decode(bytes(data))


def test_truncated_object() -> None:
    with pytest.raises(InvalidDicom, match=r"at byte \d+: .*(truncated|past the end)"):
        decode(SRC[: len(SRC) // 2])


def test_length_past_the_end() -> None:
    data = bytearray(SRC)
    pos = data.index(bytes.fromhex("00541010") + b"OW")
    data[pos + 8:pos + 12] = struct.pack("<I", 0x7FFFFFF0)
    with pytest.raises(InvalidDicom, match=r"element \(5400,1010\) at byte \d+: its value runs "
                                           r"past the end of the data"):
        decode(bytes(data))


def _element(tag: tuple[int, int], vr: bytes, value: bytes, *, undefined: bool = False) -> bytes:
    head = struct.pack("<HH", *tag) + vr
    if vr in (b"SQ", b"OB", b"OW", b"UN", b"UT"):
        length = 0xFFFFFFFF if undefined else len(value)
        return head + b"\0\0" + struct.pack("<I", length) + value
    return head + struct.pack("<H", len(value)) + value


def _dataset(body: bytes) -> bytes:
    """A bare explicit VR LE data set (no meta) that starts like a 12-lead ECG."""
    sop = b"1.2.840.10008.5.1.4.1.1.9.1.1\x00"
    return _element((0x0008, 0x0016), b"UI", sop) + _element((0x0008, 0x0018), b"UI",
                                                              b"1.2.3.4\x00") + body


def test_undefined_length_where_none_is_allowed() -> None:
    bad = _dataset(_element((0x0010, 0x1040), b"UT", b"x", undefined=True))
    with pytest.raises(InvalidDicom, match=r"element \(0010,1040\) at byte \d+: undefined length "
                                           r"\(FFFFFFFF\) is allowed only for sequences"):
        decode(bad)


def test_nesting_limit() -> None:
    inner = b""
    for _ in range(MAX_DEPTH):
        item = b"\xfe\xff\x00\xe0" + struct.pack("<I", len(inner)) + inner
        inner = _element((0x0040, 0xA730), b"SQ", item)
    with pytest.raises(LimitExceeded, match=f"nested deeper than {MAX_DEPTH} levels"):
        decode(_dataset(inner))


def test_duplicate_element_is_refused() -> None:
    # Channel Sensitivity of the first channel twice (the items have undefined length,
    # so a copy can be inserted without touching any other length).
    sens = SRC.index(bytes.fromhex("3a001002") + b"DS")
    n = struct.unpack("<H", SRC[sens + 6:sens + 8])[0]
    element = SRC[sens:sens + 8 + n]
    dup = SRC[:sens] + element + SRC[sens:]
    with pytest.raises(InvalidDicom, match=r"\(003A,0210\) \(sensitivity\) appears more than once"):
        decode(dup)


def test_warnings_record_deviations() -> None:
    ecg = decode(_edit(lambda ds: delattr(ds, "ReferringPhysicianName")))
    assert any("Referring Physician's Name (0008,0090) is absent" in w for w in ecg.warnings)


def _drop_channel_attr(name: str, channel: int) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        for group in ds.WaveformSequence:
            delattr(group.ChannelDefinitionSequence[channel], name)
    return change


def test_uncalibrated_and_unitless_channels_are_recorded() -> None:
    ecg = decode(_edit(_drop_channel_attr("ChannelSensitivity", 1)))
    # Type 1C: an ECG's samples are voltages, so an ECG channel needs a sensitivity.
    missing = [w for w in ecg.warnings if "Channel Sensitivity (003A,0210) is missing" in w]
    assert [w.split(":")[0] for w in missing] == [
        "multiplex group 1 channel 2", "multiplex group 2 channel 2"]
    assert ecg.groups[0].channels[1].sensitivity == 1.0
    assert ecg.groups[0].channels[0].sensitivity != 1.0
    ecg = decode(_edit(_drop_channel_attr("ChannelSensitivityUnitsSequence", 3)))
    assert any(w.startswith("multiplex group 1 channel 4: Channel Sensitivity Units Sequence "
                            "(003A,0211) is missing; units unknown") for w in ecg.warnings)
    assert not any("(003A,0210)" in w for w in ecg.warnings)
    assert not any("(003A,0210)" in w or "(003A,0211)" in w for w in decode(SRC).warnings)


def test_a_respiratory_channel_may_be_in_arbitrary_units() -> None:
    from waveform.dicom import encode
    from waveform.dicom.synthetic import synthetic_ecg

    resp = synthetic_ecg(sop_class_uid="1.2.840.10008.5.1.4.1.1.9.6.1", n_channels=1,
                         interpretation="SS", seed=4)
    ds = pydicom.dcmread(io.BytesIO(encode(resp)))
    _drop_channel_attr("ChannelSensitivity", 0)(ds)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    assert not any("(003A,0210)" in w for w in decode(out.getvalue()).warnings)


def test_g711_tables_match_the_reference_codec() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
    codes = bytes(range(256))
    assert np.array_equal(ULAW, np.frombuffer(audioop.ulaw2lin(codes, 2), "<i2"))
    assert np.array_equal(ALAW, np.frombuffer(audioop.alaw2lin(codes, 2), "<i2"))
