"""The synthetic ECG generator: physiology (Einthoven, heart rate) and storage ranges."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.signal import find_peaks

from waveform.dicom.codes import SOP_CLASSES
from waveform.dicom.synthetic import (
    GENERAL_ECG,
    TWELVE_LEAD,
    _g711_a,
    _g711_mu,
    synthetic_ecg,
)
from waveform.errors import InvalidArgument
from waveform.model import SAMPLE_DTYPES, WaveformGroup

GENERAL_32 = "1.2.840.10008.5.1.4.1.1.9.1.4"
BODY_POSITION = "1.2.840.10008.5.1.4.1.1.9.8.1"


def _physical(g: WaveformGroup) -> np.ndarray:
    """raw * sensitivity * correction + baseline, computed here (not by the decoder)."""
    out = g.raw.astype(np.float64)
    for i, c in enumerate(g.channels):
        out[i] = out[i] * c.sensitivity * c.correction + c.baseline
    return out


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("interpretation", ["SS", "SB"])
def test_einthoven_and_goldberger_hold(seed: int, interpretation: str) -> None:
    ecg = synthetic_ecg(sop_class_uid=GENERAL_ECG, seed=seed, interpretation=interpretation)
    g = ecg.groups[0]
    x = _physical(g)
    lead = {name: x[g.lead_index(name)] for name in ("I", "II", "III", "aVR", "aVL", "aVF")}
    lsb = g.channels[0].sensitivity
    # Each side is quantised once: they agree to within rounding of three values.
    tol = 1.5 * lsb + 1e-9
    assert np.max(np.abs(lead["III"] - (lead["II"] - lead["I"]))) <= tol
    assert np.max(np.abs(lead["aVR"] + (lead["I"] + lead["II"]) / 2)) <= tol
    assert np.max(np.abs(lead["aVL"] - (lead["I"] - lead["II"] / 2))) <= tol
    assert np.max(np.abs(lead["aVF"] - (lead["II"] - lead["I"] / 2))) <= tol


def test_looks_like_an_ecg() -> None:
    ecg = synthetic_ecg()
    g = ecg.groups[0]
    x = _physical(g) / 1000.0  # uV -> mV
    ii = x[g.lead_index("II")]
    # R waves of about 1 mV in lead II; aVR is mostly negative; V1 has a deep S.
    assert 0.7 < ii.max() < 2.0
    assert x[g.lead_index("aVR")].min() < -0.5
    assert x[g.lead_index("V1")].min() < -0.5
    assert x[g.lead_index("V5")].max() > x[g.lead_index("V1")].max()


@pytest.mark.parametrize("heart_rate", [45.0, 60.0, 72.0, 100.0, 150.0])
@pytest.mark.parametrize("fs", [250.0, 500.0, 1000.0])
def test_heart_rate_as_asked(heart_rate: float, fs: float) -> None:
    ecg = synthetic_ecg(heart_rate=heart_rate, fs=fs, duration_s=10.0, seed=3)
    g = ecg.groups[0]
    ii = _physical(g)[g.lead_index("II")]
    peaks, _ = find_peaks(ii, height=0.5 * ii.max(), distance=int(0.25 * fs))
    measured = 60.0 / (np.median(np.diff(peaks)) / fs)
    assert measured == pytest.approx(heart_rate, rel=0.03)


def _t_peak_after_r(heart_rate: float) -> float:
    """Median time (s) from each R peak of lead II to the T wave's peak after it."""
    fs = 1000.0
    ecg = synthetic_ecg(heart_rate=heart_rate, fs=fs, duration_s=10.0, seed=5)
    g = ecg.groups[0]
    ii = _physical(g)[g.lead_index("II")]
    r, _ = find_peaks(ii, height=0.5 * ii.max(), distance=int(0.25 * fs))
    lags = [np.argmax(ii[a + int(0.12 * fs):b - int(0.2 * fs)]) / fs + 0.12
            for a, b in itertools.pairwise(r)]
    return float(np.median(lags))


def test_qt_follows_the_rate_as_fridericia_has_it() -> None:
    """The T wave's time from the QRS onset (45 ms before the R peak) scales as
    RR^(1/3): from 60/min to 120/min by 2^(-1/3). At 72/min it peaks 250 ms
    after the R peak, so at 60/min 295 ms x 1.2^(1/3) after the onset."""
    slow, fast = _t_peak_after_r(60.0), _t_peak_after_r(120.0)
    assert slow + 0.045 == pytest.approx(0.295 * 1.2 ** (1 / 3), abs=0.004)
    assert (fast + 0.045) / (slow + 0.045) == pytest.approx(2.0 ** (-1 / 3), rel=0.02)


@pytest.mark.parametrize(("bits", "interp"), sorted(SAMPLE_DTYPES))
def test_dtype_and_range_respected(bits: int, interp: str) -> None:
    sop = BODY_POSITION  # allows every interpretation
    ecg = synthetic_ecg(sop_class_uid=sop, interpretation=interp, n_channels=3,
                        duration_s=2.0, fs=250.0)
    g = ecg.groups[0]
    assert g.raw.dtype == SAMPLE_DTYPES[(bits, interp)]
    assert g.interpretation == interp
    assert all(c.bits_stored == bits for c in g.channels)
    assert g.raw.min() != g.raw.max()


@pytest.mark.parametrize(("interp", "bits_stored"), [("SS", 12), ("SB", 6), ("SL", 24),
                                                    ("SV", 40), ("US", 12), ("UB", 7)])
def test_bits_stored_bounds_the_values(interp: str, bits_stored: int) -> None:
    ecg = synthetic_ecg(sop_class_uid=BODY_POSITION, interpretation=interp,
                        bits_stored=bits_stored, n_channels=2, duration_s=1.0)
    raw = ecg.groups[0].raw.astype(np.int64)
    if raw.dtype.kind == "i" and interp.startswith("S"):
        assert raw.min() >= -(2 ** (bits_stored - 1)) and raw.max() < 2 ** (bits_stored - 1)
    else:
        assert raw.min() >= 0 and raw.max() < 2**bits_stored
    assert ecg.groups[0].channels[0].bits_stored == bits_stored


@pytest.mark.parametrize(("interp", "padding"), [("SS", -32768), ("US", 65535), ("SB", -128),
                                                ("UB", 255), ("MB", 255), ("SL", -(2**31))])
def test_padding_marks_only_the_tail(interp: str, padding: int) -> None:
    ecg = synthetic_ecg(sop_class_uid=BODY_POSITION, interpretation=interp, padding=padding,
                        n_channels=2, duration_s=1.0)
    g = ecg.groups[0]
    pad = np.array(padding).astype(g.raw.dtype)
    is_pad = g.raw == pad
    assert is_pad[-1, -1] and not is_pad[:-1].any()
    tail = int(is_pad[-1].sum())
    assert is_pad[-1, -tail:].all()
    assert all(c.padding == padding for c in g.channels)


def test_median_beat_and_more_groups() -> None:
    ecg = synthetic_ecg(sop_class_uid=TWELVE_LEAD, groups=3, duration_s=4.0,
                        group_offset_ms=250.0)
    labels = [g.label for g in ecg.groups]
    assert labels == ["RHYTHM", "MEDIAN BEAT", "RHYTHM"]
    assert ecg.groups[1].originality == "DERIVED"
    assert ecg.groups[1].duration_s == pytest.approx(1.2)
    assert [g.time_offset for g in ecg.groups] == [0.0, 0.0, 250.0]


def test_calibration_step() -> None:
    ecg = synthetic_ecg(step_mv=1.0, units="uV")
    g = ecg.groups[0]
    x = _physical(g)
    fs = g.sampling_frequency
    on = x[:, int(0.15 * fs): int(0.25 * fs)]
    off = x[:, : int(0.05 * fs)]
    assert np.allclose(on, 1000.0, atol=g.channels[0].sensitivity)
    assert np.allclose(off, 0.0, atol=g.channels[0].sensitivity)


def test_deterministic() -> None:
    assert synthetic_ecg(seed=5, duration_s=1.0) == synthetic_ecg(seed=5, duration_s=1.0)
    assert synthetic_ecg(seed=5, duration_s=1.0) != synthetic_ecg(seed=6, duration_s=1.0)


def test_wide_ecg_has_24_channels() -> None:
    ecg = synthetic_ecg(sop_class_uid=GENERAL_32, n_channels=24, interpretation="SL")
    g = ecg.groups[0]
    assert g.n_channels == 24
    assert g.leads[:12] == ("I", "II", "III", "aVR", "aVL", "aVF",
                            "V1", "V2", "V3", "V4", "V5", "V6")
    assert len({c.source for c in g.channels}) == 24


def test_g711_matches_the_reference() -> None:
    audioop = pytest.importorskip("audioop")  # the stdlib G.711 codec (Python < 3.13)
    linear = np.arange(-32768, 32768, 7, dtype=np.int16)
    assert bytes(_g711_mu(linear)) == audioop.lin2ulaw(linear.tobytes(), 2)
    assert bytes(_g711_a(linear)) == audioop.lin2alaw(linear.tobytes(), 2)


def test_refuses_what_the_class_does_not_allow() -> None:
    with pytest.raises(InvalidArgument, match="does not allow interpretation 'SL'"):
        synthetic_ecg(sop_class_uid=TWELVE_LEAD, interpretation="SL")
    with pytest.raises(InvalidArgument, match="at most 13 channels, not 14"):
        synthetic_ecg(sop_class_uid=TWELVE_LEAD, n_channels=14)
    with pytest.raises(InvalidArgument, match="at most 16384 samples"):
        synthetic_ecg(sop_class_uid=TWELVE_LEAD, fs=2000.0, duration_s=10.0)
    with pytest.raises(InvalidArgument, match="at most 1 groups"):
        synthetic_ecg(sop_class_uid="1.2.840.10008.5.1.4.1.1.9.1.3", groups=2)
    assert set(SOP_CLASSES)  # the table the checks come from
